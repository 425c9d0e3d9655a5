//! `kubectl oauth3`: the owner's and operator's command line. Approve, deny or revoke a Permit
//! (and, with `codeReview: perCode`, trust code digests), show exactly what a Permit allows,
//! seal a secret for the enclave, and show an Execution's output and call log.
//!
//! Decisions are recorded in the Permit's **status** (`status.approval`,
//! `status.trustedCode`), which only identities with RBAC on `permits/status` can write:
//! owners and the operator, never agents. The decision is bound to the spec digest computed
//! here from the spec as read; a spec edited afterwards voids it. Every write carries the
//! resourceVersion that was read, so a concurrent change fails the command instead of being
//! overwritten.

use std::fmt::Write as _;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use oauth3_crds::constants::{
    ANNOTATION_SECRET_NAME, SEALED_SECRET_KEY, SEALED_SECRET_TYPE, secret_object_name,
};
use oauth3_crds::{Approval, ApprovalVia, CodeReview, Execution, Permit, TrustLevel, spec_digest};
use serde_json::json;

pub use crate::approval::Decision;
use crate::approval::{approval_for, trust_code};
use crate::status_write::{Guarded, write_status};

/// Field manager of status writes made by the plugin.
pub const PLUGIN_FIELD_MANAGER: &str = "kubectl-oauth3";
/// Field manager of decisions recorded through the gateway's web approval page.
pub const WEB_FIELD_MANAGER: &str = oauth3_crds::constants::GATEWAY_FIELD_MANAGER;

/// Why a plugin command failed. Messages name the object and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Wrong combination of flags.
    #[error("{0}")]
    Usage(String),
    /// The object does not exist.
    #[error("{kind} {name} not found in namespace {namespace}")]
    NotFound {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// Namespace.
        namespace: String,
    },
    /// The object changed between read and write.
    #[error("{0} changed while the decision was being recorded; run the command again")]
    Conflict(String),
    /// Any other API error, with the step that failed.
    #[error("{step}: {source}")]
    Api {
        /// What was being done.
        step: String,
        /// The error.
        source: kube::Error,
    },
    /// A local step failed (reading a file, sealing, serialising).
    #[error("{0}")]
    Local(String),
    /// The decision could not be built from the Permit.
    #[error(transparent)]
    Approval(#[from] crate::approval::ApprovalError),
}

impl PluginError {
    /// Exit code: 2 for usage errors and missing objects, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::NotFound { .. } => 2,
            _ => 1,
        }
    }
}

fn api_err(step: impl Into<String>) -> impl FnOnce(kube::Error) -> PluginError {
    let step = step.into();
    move |source| PluginError::Api { step, source }
}

/// A connected plugin: client, namespace, and who the caller is.
pub struct Plugin {
    client: Client,
    namespace: String,
}

impl Plugin {
    /// Uses `client` in `namespace`.
    pub fn new(client: Client, namespace: String) -> Self {
        Self { client, namespace }
    }

    fn permits(&self) -> Api<Permit> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn permit(&self, name: &str) -> Result<Permit, PluginError> {
        self.permits()
            .get_opt(name)
            .await
            .map_err(api_err(format!("reading Permit {name}")))?
            .ok_or_else(|| PluginError::NotFound {
                kind: "Permit",
                name: name.to_owned(),
                namespace: self.namespace.clone(),
            })
    }

    /// Reads an Execution of the plugin's namespace.
    ///
    /// # Errors
    /// [`PluginError::NotFound`], or the API error.
    pub async fn execution(&self, name: &str) -> Result<Execution, PluginError> {
        Api::<Execution>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await
            .map_err(api_err(format!("reading Execution {name}")))?
            .ok_or_else(|| PluginError::NotFound {
                kind: "Execution",
                name: name.to_owned(),
                namespace: self.namespace.clone(),
            })
    }

    /// The caller's user name, as the API server authenticated it.
    pub async fn whoami(&self) -> Result<String, PluginError> {
        let review: SelfSubjectReview = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"
        }))
        .map_err(|e| PluginError::Local(e.to_string()))?;
        let answer = Api::<SelfSubjectReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(api_err(
                "asking the API server who you are (SelfSubjectReview)",
            ))?;
        answer
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .ok_or_else(|| PluginError::Local("the API server did not say who you are".into()))
    }

    async fn patch_status(
        &self,
        permit: &Permit,
        status: serde_json::Value,
    ) -> Result<(), PluginError> {
        let name = permit.name_any();
        match write_status(&self.permits(), permit, &status, Some(PLUGIN_FIELD_MANAGER)).await {
            Ok(Guarded::Written) => Ok(()),
            Ok(Guarded::Conflict) => Err(PluginError::Conflict(format!("Permit {name}"))),
            Ok(Guarded::Gone) => Err(PluginError::NotFound {
                kind: "Permit",
                name,
                namespace: permit.namespace().unwrap_or_default(),
            }),
            Err(source) => Err(PluginError::Api {
                step: format!("recording the decision on Permit {name}"),
                source,
            }),
        }
    }

    /// Records a decision on the Permit's current spec. Returns a one-line summary.
    pub async fn decide(&self, name: &str, decision: Decision) -> Result<String, PluginError> {
        let by = self.whoami().await?;
        let approval = record_decision(
            &self.client,
            &self.namespace,
            name,
            decision,
            &by,
            ApprovalVia::Kubectl,
        )
        .await?;
        Ok(match decision {
            Decision::Approve => format!(
                "Permit {name} approved by {by} for spec {} until {}",
                approval.spec_digest,
                approval
                    .expires_at
                    .map(|t| t.0.to_string())
                    .unwrap_or_default()
            ),
            Decision::Deny => format!("Permit {name} denied by {by}"),
            Decision::Revoke => format!("Permit {name} revoked by {by}"),
        })
    }

    /// Resolves `code` (an Execution name or a `sha256:` digest) to a code digest.
    async fn code_digest_of(&self, code: &str) -> Result<String, PluginError> {
        if let Some(hex) = code.strip_prefix("sha256:") {
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(PluginError::Usage(format!(
                    "--code {code}: a digest is sha256: followed by 64 hex characters"
                )));
            }
            return Ok(code.to_ascii_lowercase());
        }
        Ok(self.execution(code).await?.spec.code_digest())
    }

    /// Trusts (or with `None`, stops trusting) a code digest under a perCode Permit.
    pub async fn trust(
        &self,
        name: &str,
        code: &str,
        level: Option<TrustLevel>,
    ) -> Result<String, PluginError> {
        let permit = self.permit(name).await?;
        if permit.spec.code_review != CodeReview::PerCode {
            return Err(PluginError::Usage(format!(
                "Permit {name} has codeReview: none, so its code needs no approval; approve the Permit itself"
            )));
        }
        let digest = self.code_digest_of(code).await?;
        let by = self.whoami().await?;
        let current = permit
            .status
            .as_ref()
            .map(|s| s.trusted_code.clone())
            .unwrap_or_default();
        let list = match level {
            Some(level) => trust_code(&current, &digest, level, &by, Timestamp::now()),
            None => {
                if !current.iter().any(|t| t.code_digest == digest) {
                    return Err(PluginError::Usage(format!(
                        "code {digest} is not trusted by Permit {name}"
                    )));
                }
                current
                    .into_iter()
                    .filter(|t| t.code_digest != digest)
                    .collect()
            }
        };
        self.patch_status(&permit, json!({"trustedCode": list}))
            .await?;
        Ok(match level {
            Some(l) => format!(
                "code {digest} trusted by {by} ({}) under Permit {name}",
                level_name(l)
            ),
            None => format!("trust in code {digest} removed from Permit {name} by {by}"),
        })
    }

    /// A readable summary of exactly what the Permit allows, with its decision state.
    pub async fn get(&self, name: &str) -> Result<String, PluginError> {
        let permit = self.permit(name).await?;
        let facts = secret_facts(&self.client, &self.namespace, &permit.spec.secrets).await;
        render_permit_facts(&permit, &facts, Timestamp::now())
    }

    /// An Execution's phase, output, result and call log.
    pub async fn logs(&self, name: &str) -> Result<String, PluginError> {
        let exec = self.execution(name).await?;
        Ok(render_logs(&exec))
    }

    /// The audit log of Permit `name`'s proxied calls (the last `tail` when given).
    pub async fn proxy_logs(&self, name: &str, tail: Option<usize>) -> Result<String, PluginError> {
        use k8s_openapi::api::core::v1::ConfigMap;
        use oauth3_crds::constants::{PROXY_AUDIT_KEY, proxy_audit_object_name};
        let permit = self.permit(name).await?;
        let object = proxy_audit_object_name(name);
        let cm = Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(&object)
            .await
            .map_err(|source| PluginError::Api {
                step: format!("reading the audit log ConfigMap {object}"),
                source,
            })?;
        let log = cm
            .and_then(|c| c.data)
            .and_then(|d| d.get(PROXY_AUDIT_KEY).cloned())
            .unwrap_or_default();
        Ok(render_proxy_logs(&permit, &log, tail))
    }
}

/// The audit log lines as a table, with a head naming the proxy's state (pure).
pub fn render_proxy_logs(permit: &Permit, log: &str, tail: Option<usize>) -> String {
    use oauth3_protocol::proxy::ProxyCall;
    let name = permit.metadata.name.as_deref().unwrap_or_default();
    let mut out = String::new();
    let enabled = permit.spec.proxy.as_ref().is_some_and(|p| p.enabled);
    match permit.status.as_ref().and_then(|s| s.proxy.as_ref()) {
        Some(p) => {
            let _ = writeln!(
                out,
                "Proxy of Permit {name}: {:?}{}{}",
                p.phase,
                p.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                p.endpoint
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default(),
            );
            if let Some(m) = &p.message {
                let _ = writeln!(out, "  {m}");
            }
        }
        None if enabled => {
            let _ = writeln!(
                out,
                "Proxy of Permit {name}: not started (the Permit is not approved)"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "Permit {name} has no credential proxy (spec.proxy.enabled is not true)"
            );
        }
    }
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        out.push_str("No proxied calls recorded.\n");
        return out;
    }
    let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
    let _ = writeln!(
        out,
        "TIME                      CALLER  DECISION  STATUS  CALL"
    );
    for line in &lines[skip..] {
        if let Ok(c) = serde_json::from_str::<ProxyCall>(line) {
            let at = Timestamp::from_millisecond(c.at_ms)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| c.at_ms.to_string());
            let status = c.status.map_or("-".to_owned(), |s| s.to_string());
            let _ = write!(
                out,
                "{at}  {}  {:?}  {status}  {} {} ({}, {} ms)",
                c.identity, c.decision, c.method, c.url, c.capability, c.duration_ms
            );
            if let Some(r) = &c.reason {
                let _ = write!(out, ": {r}");
            }
            out.push('\n');
        } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(n) = v.get("dropped").and_then(serde_json::Value::as_u64)
        {
            let _ = writeln!(
                out,
                "({n} call(s) not recorded: the proxy's buffer was full)"
            );
        }
    }
    out
}

/// Reads quote collateral (the JSON `dcap-qvl` and PCCS clients write: TCB info, QE
/// identity, CRLs and their issuer chains).
///
/// # Errors
/// [`PluginError::Usage`] naming the file and what is wrong.
pub fn load_collateral(path: &std::path::Path) -> Result<dcap_qvl::QuoteCollateralV3, PluginError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PluginError::Usage(format!("reading --collateral {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        PluginError::Usage(format!(
            "--collateral {}: not quote collateral JSON: {e}",
            path.display()
        ))
    })
}

/// Reads a measurement policy file (see [`crate::verify::policy`]).
///
/// # Errors
/// [`PluginError::Usage`] naming the file, the field and the rule.
pub fn load_policy(
    path: &std::path::Path,
) -> Result<crate::verify::MeasurementPolicy, PluginError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PluginError::Usage(format!("reading --policy {}: {e}", path.display())))?;
    crate::verify::MeasurementPolicy::parse(&text)
        .map_err(|e| PluginError::Usage(format!("--policy {}: {e}", path.display())))
}

/// What `oauth3-sandbox-runner public-key --attest` prints.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyAttestation {
    /// The X25519 public key, hex.
    pub public_key: String,
    /// Its quote.
    pub attestation: oauth3_crds::Attestation,
}

/// Reads a key attestation file.
///
/// # Errors
/// [`PluginError::Usage`] naming the file and what is wrong.
pub fn load_key_attestation(path: &std::path::Path) -> Result<KeyAttestation, PluginError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PluginError::Usage(format!("reading --attestation {}: {e}", path.display()))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        PluginError::Usage(format!(
            "--attestation {}: not the output of `oauth3-sandbox-runner public-key --attest`: {e}",
            path.display()
        ))
    })
}

/// Parses `--at`: Unix seconds or an RFC 3339 time (`2025-07-01T00:00:00Z`).
///
/// # Errors
/// [`PluginError::Usage`] naming the accepted forms.
pub fn parse_time(text: &str) -> Result<u64, PluginError> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    text.parse::<Timestamp>()
        .ok()
        .and_then(|t| u64::try_from(t.as_second()).ok())
        .ok_or_else(|| {
            PluginError::Usage(format!(
                "--at {text:?}: expected Unix seconds or an RFC 3339 time such as \
                 2025-07-01T00:00:00Z"
            ))
        })
}

fn level_name(level: TrustLevel) -> &'static str {
    match level {
        TrustLevel::Once => "once",
        TrustLevel::Day => "24h",
        TrustLevel::Always => "always",
    }
}

/// How many times [`record_decision`] reads and writes before it reports a conflict.
pub const DECISION_TRIES: usize = 5;

/// Records `decision` on the current spec of Permit `name` in `namespace`, made by `by`
/// through `via` (the identity the API server authenticated, never a name the caller chose),
/// with the guarded status write. When another writer changed the Permit between the read
/// and the write (409 Conflict, e.g. the operator updating its conditions), it reads again and
/// retries, up to [`DECISION_TRIES`] times, but only while the spec is still the one first
/// read: a decision is never moved onto a spec the decider did not see. A changed spec, or
/// conflicts on every try, fail with [`PluginError::Conflict`] instead of overwriting. Every
/// approval channel that is not the operator itself (this plugin, the gateway's web page)
/// records decisions here.
///
/// # Errors
/// [`PluginError`] naming the Permit when it is missing, changed meanwhile, or the write fails.
pub async fn record_decision(
    client: &Client,
    namespace: &str,
    name: &str,
    decision: Decision,
    by: &str,
    via: ApprovalVia,
) -> Result<Approval, PluginError> {
    let permits: Api<Permit> = Api::namespaced(client.clone(), namespace);
    let field_manager = match via {
        ApprovalVia::Web => WEB_FIELD_MANAGER,
        _ => PLUGIN_FIELD_MANAGER,
    };
    let gone = || PluginError::NotFound {
        kind: "Permit",
        name: name.to_owned(),
        namespace: namespace.to_owned(),
    };
    let mut seen_spec: Option<String> = None;
    for _ in 0..DECISION_TRIES {
        let permit = permits
            .get_opt(name)
            .await
            .map_err(api_err(format!("reading Permit {name}")))?
            .ok_or_else(gone)?;
        let digest = spec_digest(&permit.effective_spec())
            .map_err(|e| PluginError::Local(format!("Permit {name}: {e}")))?;
        match &seen_spec {
            Some(first) if *first != digest => {
                return Err(PluginError::Conflict(format!(
                    "Permit {name} (its spec changed)"
                )));
            }
            Some(_) => {}
            None => seen_spec = Some(digest),
        }
        let approval = approval_for(&permit, decision, by, via, Timestamp::now())?;
        match write_status(
            &permits,
            &permit,
            &json!({"approval": approval}),
            Some(field_manager),
        )
        .await
        {
            Ok(Guarded::Written) => return Ok(approval),
            Ok(Guarded::Conflict) => {
                tracing::debug!(permit = %name, "Permit changed while recording a decision; reading again");
            }
            Ok(Guarded::Gone) => return Err(gone()),
            Err(source) => {
                return Err(PluginError::Api {
                    step: format!("recording the decision on Permit {name}"),
                    source,
                });
            }
        }
    }
    Err(PluginError::Conflict(format!("Permit {name}")))
}

/// Trusts code `digest` at `level` under the perCode Permit `name` in `namespace`, as `by`
/// (the identity the API server authenticated), with the one guarded status write. The
/// gateway's web page records code approvals here, as `kubectl oauth3 approve --code` does.
///
/// # Errors
/// [`PluginError::Usage`] when the Permit does not review code; otherwise as
/// [`record_decision`].
pub async fn record_trust(
    client: &Client,
    namespace: &str,
    name: &str,
    digest: &str,
    level: TrustLevel,
    by: &str,
) -> Result<(), PluginError> {
    let permits: Api<Permit> = Api::namespaced(client.clone(), namespace);
    let permit = permits
        .get_opt(name)
        .await
        .map_err(api_err(format!("reading Permit {name}")))?
        .ok_or_else(|| PluginError::NotFound {
            kind: "Permit",
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })?;
    if permit.spec.code_review != CodeReview::PerCode {
        return Err(PluginError::Usage(format!(
            "Permit {name} has codeReview: none, so its code needs no approval"
        )));
    }
    let current = permit
        .status
        .as_ref()
        .map(|s| s.trusted_code.clone())
        .unwrap_or_default();
    let list = trust_code(&current, digest, level, by, Timestamp::now());
    match write_status(
        &permits,
        &permit,
        &json!({"trustedCode": list}),
        Some(WEB_FIELD_MANAGER),
    )
    .await
    {
        Ok(Guarded::Written) => Ok(()),
        Ok(Guarded::Conflict) => Err(PluginError::Conflict(format!("Permit {name}"))),
        Ok(Guarded::Gone) => Err(PluginError::NotFound {
            kind: "Permit",
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        }),
        Err(source) => Err(PluginError::Api {
            step: format!("recording the code trust on Permit {name}"),
            source,
        }),
    }
}

/// What `kubectl oauth3 get` prints for a Permit (pure): exactly what it allows
/// ([`describe_permit`]), then its decision and trusted code. The gateway's web approval page
/// shows this same text.
///
/// # Errors
/// [`PluginError::Local`] when the spec cannot be digested (the schema prevents it).
pub fn render_permit(permit: &Permit) -> Result<String, PluginError> {
    render_permit_facts(
        permit,
        &std::collections::BTreeMap::new(),
        Timestamp::UNIX_EPOCH,
    )
}

/// What the sealed Secrets named in `secrets` say of themselves (an oauth2 credential's kind,
/// expiry and where it was refreshed); a Secret that cannot be read is left out.
pub async fn secret_facts(
    client: &Client,
    namespace: &str,
    secrets: &[String],
) -> std::collections::BTreeMap<String, crate::describe::SecretFacts> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut facts = std::collections::BTreeMap::new();
    for name in secrets {
        if let Ok(Some(secret)) = api.get_opt(&secret_object_name(name)).await
            && let Some(f) = crate::describe::SecretFacts::of(&secret)
        {
            facts.insert(name.clone(), f);
        }
    }
    facts
}

/// [`render_permit`] with what the Permit's sealed Secrets say of themselves at `now`.
///
/// # Errors
/// The spec digest cannot be computed.
pub fn render_permit_facts(
    permit: &Permit,
    facts: &std::collections::BTreeMap<String, crate::describe::SecretFacts>,
    now: Timestamp,
) -> Result<String, PluginError> {
    let digest =
        spec_digest(&permit.effective_spec()).map_err(|e| PluginError::Local(e.to_string()))?;
    let mut out = crate::describe::describe_permit_facts(permit, &digest, facts, now);
    let status = permit.status.clone().unwrap_or_default();
    if let Some(a) = &status.approval {
        let current = if a.spec_digest == digest {
            ""
        } else {
            " (for an older spec: void)"
        };
        let _ = writeln!(
            out,
            "Decision: {:?} by {} via {:?} at {}{current}",
            a.decision, a.by, a.via, a.at.0
        );
        if let Some(reason) = &a.reason {
            let _ = writeln!(out, "Reason: {reason}");
        }
    }
    for t in &status.trusted_code {
        let until = t
            .expires_at
            .as_ref()
            .map(|e| format!(" until {}", e.0))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "Trusted code: {} ({}{until}) by {}",
            t.code_digest,
            level_name(t.level),
            t.by
        );
    }
    Ok(out)
}

/// Renders an Execution's status for people (pure).
pub fn render_logs(exec: &Execution) -> String {
    let s = exec.status.clone().unwrap_or_default();
    let mut out = String::new();
    let phase = s
        .phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "New".into());
    let _ = writeln!(
        out,
        "Execution {} (Permit {}): {phase}",
        exec.name_any(),
        exec.spec.permit_ref
    );
    if let Some(r) = &s.reason {
        let _ = writeln!(out, "Reason: {r}: {}", s.message.as_deref().unwrap_or(""));
    }
    if let Some(d) = s.duration_ms {
        let _ = writeln!(out, "Duration: {d} ms");
    }
    for (title, text) in [("stdout", &s.stdout), ("stderr", &s.stderr)] {
        if let Some(t) = text.as_ref().filter(|t| !t.is_empty()) {
            let _ = writeln!(out, "--- {title}\n{}", t.trim_end());
        }
    }
    if let Some(r) = &s.result {
        let _ = writeln!(
            out,
            "--- result\n{}",
            serde_json::to_string_pretty(r).unwrap_or_default()
        );
    }
    if !s.calls.is_empty() {
        let _ = writeln!(out, "--- calls");
        for c in &s.calls {
            let status = c
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into());
            let why = c
                .reason
                .as_ref()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<8} {:<7} {:<4} {} {}  {}ms{why}",
                format!("{:?}", c.decision).to_lowercase(),
                c.method,
                status,
                c.capability,
                c.url,
                c.duration_ms
            );
        }
    }
    out
}

/// A sealed Secret manifest for `name` in `namespace`, sealed to `public_key` (pure apart from
/// the sealing randomness). The value never appears in the result except inside the box.
///
/// # Errors
/// [`PluginError::Usage`] for a name that is not a valid Permit secret name.
pub fn sealed_secret(
    namespace: &str,
    name: &str,
    value: &str,
    public_key: &[u8; 32],
) -> Result<Secret, PluginError> {
    check_secret_name(name)?;
    let envelope = oauth3_protocol::envelope::seal(public_key, namespace, name, value)
        .map_err(|e| PluginError::Local(format!("sealing {name}: {e}")))?;
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_object_name(name),
            "namespace": namespace,
            "annotations": {ANNOTATION_SECRET_NAME: name,
                "oauth3.dev/key-id": oauth3_protocol::envelope::key_id(public_key)},
        },
        "type": SEALED_SECRET_TYPE,
        "stringData": {SEALED_SECRET_KEY: envelope},
    }))
    .map_err(|e| PluginError::Local(e.to_string()))
}

/// Checks a Permit secret name against the schema's pattern.
///
/// # Errors
/// [`PluginError::Usage`] naming the rule.
pub fn check_secret_name(name: &str) -> Result<(), PluginError> {
    let pattern_ok = name.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && name.len() <= 63;
    if !pattern_ok {
        return Err(PluginError::Usage(format!(
            "secret name {name:?} must match {} (e.g. GITHUB_TOKEN)",
            oauth3_crds::constants::SECRET_NAME_PATTERN
        )));
    }
    Ok(())
}

/// The sealed Secret of an oauth2 credential `name`: `token_set` (the token set's JSON, checked
/// by [`oauth3_protocol::oauth2::TokenSet::parse`]) sealed to `public_key`, annotated as an
/// oauth2 credential with its expiry (non-secret facts `kubectl oauth3 get` shows).
///
/// # Errors
/// A bad name, a token set that does not check out (naming the field and the rule), sealing.
pub fn sealed_oauth2_secret(
    namespace: &str,
    name: &str,
    token_set: &str,
    public_key: &[u8; 32],
) -> Result<Secret, PluginError> {
    use oauth3_protocol::oauth2 as o;
    let set = o::TokenSet::parse(token_set)
        .map_err(|e| PluginError::Usage(format!("oauth2 credential {name}: {e}")))?;
    let mut secret = sealed_secret(namespace, name, token_set, public_key)?;
    let ann = secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    ann.insert(
        o::ANNOTATION_CREDENTIAL_KIND.to_owned(),
        o::OAUTH2_TYPE.to_owned(),
    );
    ann.insert(o::ANNOTATION_REFRESHED_BY.to_owned(), "login".to_owned());
    ann.insert(o::ANNOTATION_GENERATION.to_owned(), "0".to_owned());
    if let Some(at) = set.expires_at.and_then(|s| Timestamp::from_second(s).ok()) {
        ann.insert(o::ANNOTATION_EXPIRES_AT.to_owned(), at.to_string());
    }
    Ok(secret)
}

/// Parses a 32-byte X25519 public key from 64 hex characters (whitespace around is ignored).
///
/// # Errors
/// [`PluginError::Usage`] naming the expected form.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], PluginError> {
    let bad = || {
        PluginError::Usage(
            "the enclave public key must be 64 hex characters (32 bytes, X25519)".into(),
        )
    };
    let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secret_manifest_carries_only_the_envelope() {
        let secret =
            sealed_secret("team-a", "GITHUB_TOKEN", "ghp_supersecret", &[9u8; 32]).expect("secret");
        let text = serde_json::to_string(&secret).expect("json");
        assert!(!text.contains("ghp_supersecret"));
        assert_eq!(secret.metadata.name.as_deref(), Some("github-token"));
        assert_eq!(secret.type_.as_deref(), Some(SEALED_SECRET_TYPE));
        let envelope = &secret.string_data.expect("data")[SEALED_SECRET_KEY];
        assert!(envelope.starts_with("oauth3-sealed:v1:"));
        for bad in ["github_token", "_X", "X_", ""] {
            assert!(
                matches!(
                    sealed_secret("ns", bad, "v", &[9u8; 32]),
                    Err(PluginError::Usage(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn times_are_unix_seconds_or_rfc3339() {
        assert_eq!(parse_time("1751328000").expect("secs"), 1_751_328_000);
        assert_eq!(
            parse_time("2025-07-01T00:00:00Z").expect("rfc3339"),
            1_751_328_000
        );
        let err = parse_time("yesterday").expect_err("bad");
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }

    #[test]
    fn public_keys_must_be_32_bytes_of_hex() {
        assert_eq!(
            parse_public_key(&format!(" {} \n", "ab".repeat(32))).expect("key"),
            [0xab; 32]
        );
        assert!(parse_public_key("abcd").is_err());
        assert!(parse_public_key(&"zz".repeat(32)).is_err());
    }
}
