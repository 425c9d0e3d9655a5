//! Egress compiled from the Permit: the network policy of a sandbox Pod lets it reach only the
//! hosts (and ports) its Permit names, DNS and the operator's result callback.
//!
//! The targets come from one pure function of the spec ([`targets`]); the same function gives
//! the words shown to the owner ([`describe`]). Modes (`--egress-policy`):
//! - `cilium`: a `CiliumNetworkPolicy` allowing the hosts by name (`toFQDNs` `matchName`), with
//!   the DNS rule that lets Cilium's DNS proxy see the lookups;
//! - `kubernetes`: a `NetworkPolicy` whose `ipBlock`s are the addresses the hosts resolve to at
//!   launch, public addresses only ([`check_address`]);
//! - `open`: any public address on TCP 443 (the runner's checks are the only wall);
//! - `auto`: `cilium` when the API server serves `cilium.io/v2` `CiliumNetworkPolicy`, else
//!   `kubernetes` (decided once at start-up).

use std::collections::BTreeSet;
use std::net::IpAddr;

use oauth3_crds::{CapabilityForm, PermitSpec};

/// How sandbox egress is enforced (the flag's value; `auto` is resolved at start-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum EgressChoice {
    /// `cilium` when the cluster has Cilium's CRDs, else `kubernetes`.
    #[default]
    Auto,
    /// CiliumNetworkPolicy with `toFQDNs`.
    Cilium,
    /// NetworkPolicy with the addresses resolved at launch.
    Kubernetes,
    /// Any public address on 443 (runner checks only).
    Open,
}

/// The enforced mode (after `auto` is resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressMode {
    /// CiliumNetworkPolicy with `toFQDNs`.
    Cilium,
    /// NetworkPolicy with the addresses resolved at launch.
    Kubernetes,
    /// Any public address on 443.
    Open,
}

impl EgressMode {
    /// The mode's flag name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cilium => "cilium",
            Self::Kubernetes => "kubernetes",
            Self::Open => "open",
        }
    }
}

/// One host and port a Permit's capabilities call.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// The host as written in the URL (lower case; an IP literal without brackets).
    pub host: String,
    /// The port (the scheme's default when none is written).
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Every host and port the Permit's capabilities may call, sorted and without duplicates
/// (pure). URLs that do not parse are skipped: the schema and the runner refuse them.
pub fn targets(spec: &PermitSpec) -> Vec<Target> {
    let mut out = BTreeSet::new();
    for cap in &spec.capabilities {
        let urls: Vec<String> = match cap.form() {
            Some(CapabilityForm::ScopedFetch { base_url, .. }) => vec![base_url.to_owned()],
            // Typed endpoints hold `{placeholders}` only in the path; the authority parses.
            Some(CapabilityForm::TypedEndpoint { endpoint, .. }) => {
                vec![endpoint.replace(['{', '}'], "")]
            }
            // Fetch hosts are `host` or `host:port`, reached over https (443 by default).
            Some(CapabilityForm::Fetch { hosts, .. }) => {
                hosts.iter().map(|h| format!("https://{h}/")).collect()
            }
            None => continue,
        };
        for url in urls {
            let Ok(parsed) = url::Url::parse(&url) else {
                continue;
            };
            let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default())
            else {
                continue;
            };
            out.insert(Target {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_ascii_lowercase(),
                port,
            });
        }
    }
    out.into_iter().collect()
}

/// The network rule in the owner's words (pure), e.g. "the sandbox may connect only to
/// api.github.com:443 (by name, Cilium)".
pub fn describe(spec: &PermitSpec, mode: Option<EgressMode>) -> String {
    let hosts: Vec<String> = targets(spec).iter().map(ToString::to_string).collect();
    let hosts = if hosts.is_empty() {
        "no host".to_owned()
    } else {
        hosts.join(", ")
    };
    match mode {
        Some(EgressMode::Open) => "any public host on 443 (runner checks only)".to_owned(),
        Some(EgressMode::Cilium) => format!("only {hosts} (by name), DNS and the operator"),
        Some(EgressMode::Kubernetes) => {
            format!("only {hosts} (the addresses they resolve to at launch), DNS and the operator")
        }
        None => format!(
            "only {hosts}, DNS and the operator (unless the operator runs with --egress-policy open)"
        ),
    }
}

/// The `status.network` text of a Permit under an operator whose sandboxes are walled in by
/// `mode` (`None`: the process launcher, no sandbox Pod at all).
pub fn network_text(spec: &PermitSpec, mode: Option<EgressMode>) -> String {
    match mode {
        None => "not walled in: the process launcher runs sandboxes as local processes (development only)".to_owned(),
        Some(mode) => describe(spec, Some(mode)),
    }
}

/// Resolves `auto` against the cluster: `cilium` when the API server serves `cilium.io/v2`
/// `CiliumNetworkPolicy`, else `kubernetes`.
pub async fn resolve(choice: EgressChoice, client: &kube::Client) -> EgressMode {
    match choice {
        EgressChoice::Cilium => EgressMode::Cilium,
        EgressChoice::Kubernetes => EgressMode::Kubernetes,
        EgressChoice::Open => EgressMode::Open,
        EgressChoice::Auto => match client.list_api_group_resources("cilium.io/v2").await {
            Ok(list)
                if list
                    .resources
                    .iter()
                    .any(|r| r.kind == "CiliumNetworkPolicy") =>
            {
                EgressMode::Cilium
            }
            _ => EgressMode::Kubernetes,
        },
    }
}

/// Why an address may not be an egress destination, if it may not: only public unicast
/// addresses are allowed (no private, loopback, link-local — which includes the cloud metadata
/// address 169.254.169.254 —, CGNAT, unspecified, multicast, documentation or reserved ranges).
pub fn check_address(ip: IpAddr) -> Result<(), &'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    let refused = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private (RFC 1918)")
            } else if v4.is_link_local() {
                Some("link-local (this includes the cloud metadata address 169.254.169.254)")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("shared (CGNAT, 100.64.0.0/10)")
            } else if v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
            {
                Some("not a unicast address")
            } else if v4.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) {
                Some("reserved for documentation or benchmarking")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("private (unique local, fc00::/7)")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast address")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("reserved for documentation")
            } else if s[0] == 0x64 && s[1] == 0xff9b {
                Some("NAT64, which reaches IPv4 addresses not checked here")
            } else {
                None
            }
        }
    };
    match refused {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// A host's addresses as they may appear in a NetworkPolicy, or why not (pure).
pub fn allowed_addresses(target: &Target, addresses: &[IpAddr]) -> Result<Vec<IpAddr>, String> {
    if addresses.is_empty() {
        return Err(format!("{target} does not resolve to any address"));
    }
    let mut out = BTreeSet::new();
    for ip in addresses {
        check_address(*ip).map_err(|why| format!("{target} resolves to {ip}, which is {why}"))?;
        out.insert(*ip);
    }
    Ok(out.into_iter().collect())
}

/// The CIDR of one address (`/32` or `/128`).
pub fn cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(caps: serde_json::Value) -> PermitSpec {
        serde_json::from_value(json!({"description": "d", "capabilities": caps})).expect("spec")
    }

    #[test]
    fn targets_cover_every_capability_form_once_with_default_and_explicit_ports() {
        let s = spec(json!([
            {"name": "a", "baseUrl": "https://API.github.com/v3", "paths": ["/x"], "methods": ["GET"]},
            {"name": "b", "baseUrl": "https://api.github.com", "paths": ["/y"], "methods": ["GET"]},
            {"name": "c", "endpoint": "https://uploads.example.com:8443/v1/{id}", "method": "PUT",
             "params": {"id": {"in": "path"}}},
            {"name": "d", "baseUrl": "http://127.0.0.1:9000", "paths": ["/z"], "methods": ["GET"]},
            {"name": "e", "baseUrl": "https://[2606:4700::1111]", "paths": ["/z"], "methods": ["GET"]}
        ]));
        let t: Vec<String> = targets(&s).iter().map(ToString::to_string).collect();
        assert_eq!(
            t,
            [
                "127.0.0.1:9000",
                "[2606:4700::1111]:443",
                "api.github.com:443",
                "uploads.example.com:8443"
            ]
        );
    }

    #[test]
    fn the_owner_reads_the_hosts_and_the_mode() {
        let s = spec(json!([
            {"name": "a", "baseUrl": "https://api.github.com", "paths": ["/x"], "methods": ["GET"]}
        ]));
        assert_eq!(
            describe(&s, Some(EgressMode::Cilium)),
            "only api.github.com:443 (by name), DNS and the operator"
        );
        assert!(describe(&s, Some(EgressMode::Kubernetes)).contains("resolve to at launch"));
        assert_eq!(
            describe(&s, Some(EgressMode::Open)),
            "any public host on 443 (runner checks only)"
        );
    }

    #[test]
    fn only_public_unicast_addresses_may_be_destinations() {
        for bad in [
            "10.0.0.1",
            "172.16.3.4",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            let ip: IpAddr = bad.parse().expect("ip");
            assert!(check_address(ip).is_err(), "{bad} allowed");
        }
        for good in ["140.82.112.6", "8.8.8.8", "2606:4700::1111"] {
            let ip: IpAddr = good.parse().expect("ip");
            assert_eq!(check_address(ip), Ok(()), "{good}");
        }
        let t = Target {
            host: "internal.example".into(),
            port: 443,
        };
        let err = allowed_addresses(
            &t,
            &[
                "140.82.112.6".parse().expect("ip"),
                "169.254.169.254".parse().expect("ip"),
            ],
        )
        .expect_err("refused");
        assert!(
            err.contains("169.254.169.254, which is link-local"),
            "{err}"
        );
    }
}
