//! The owner's measurement policy: which TDX measurements (MRTD, RTMR0-3), dstack apps
//! (compose hash, app id) and TCB statuses `kubectl oauth3 verify` and `seal --attestation`
//! accept. A YAML (or JSON) file; unknown fields are errors.
//!
//! ```yaml
//! mrtd: ["<96 hex>"]            # any one of these; omit a register to leave it unchecked
//! rtmr0: ["<96 hex>"]
//! rtmr1: ["<96 hex>"]
//! rtmr2: ["<96 hex>"]
//! rtmr3: ["<96 hex>"]
//! dstack:                       # from the event log, after it replays to RTMR3
//!   composeHash: ["<64 hex>"]
//!   appId: ["<40 hex>"]
//! tcb:
//!   allowStatus: [UpToDate]     # the default
//!   rejectAdvisories: [INTEL-SA-00837]
//! ```

use serde::Deserialize;

/// A parsed measurement policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeasurementPolicy {
    /// Accepted MRTD values (the TD's initial contents: firmware).
    #[serde(default)]
    pub mrtd: Vec<String>,
    /// Accepted RTMR0 values (firmware configuration).
    #[serde(default)]
    pub rtmr0: Vec<String>,
    /// Accepted RTMR1 values (the kernel).
    #[serde(default)]
    pub rtmr1: Vec<String>,
    /// Accepted RTMR2 values (kernel command line, initrd).
    #[serde(default)]
    pub rtmr2: Vec<String>,
    /// Accepted RTMR3 values (runtime: under dstack, the app's events).
    #[serde(default)]
    pub rtmr3: Vec<String>,
    /// Accepted dstack apps.
    #[serde(default)]
    pub dstack: DstackPolicy,
    /// Accepted platform TCB.
    #[serde(default)]
    pub tcb: TcbPolicy,
}

/// dstack app identities, read from the event log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DstackPolicy {
    /// Accepted `compose-hash` events: SHA-256 of the normalized `app-compose.json`.
    #[serde(default)]
    pub compose_hash: Vec<String>,
    /// Accepted `app-id` events.
    #[serde(default)]
    pub app_id: Vec<String>,
}

/// Which TCB statuses and advisories are acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcbPolicy {
    /// Accepted TCB statuses (`UpToDate`, `SWHardeningNeeded`, `ConfigurationNeeded`,
    /// `ConfigurationAndSWHardeningNeeded`, `OutOfDate`, ...). Default: `[UpToDate]`.
    #[serde(default = "up_to_date")]
    pub allow_status: Vec<String>,
    /// Advisories that make a quote unacceptable whatever its status.
    #[serde(default)]
    pub reject_advisories: Vec<String>,
}

fn up_to_date() -> Vec<String> {
    vec!["UpToDate".to_owned()]
}

impl Default for TcbPolicy {
    fn default() -> Self {
        Self {
            allow_status: up_to_date(),
            reject_advisories: Vec::new(),
        }
    }
}

/// Why a policy file is unusable; names the field and the rule.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not valid YAML/JSON for the schema above.
    #[error("measurement policy: {0}")]
    Parse(String),
    /// A value is not hex of the right length.
    #[error("measurement policy: {field}[{index}] must be {len} hex characters, got {got:?}")]
    Value {
        /// The field.
        field: &'static str,
        /// Index in its list.
        index: usize,
        /// Expected number of hex characters.
        len: usize,
        /// The value.
        got: String,
    },
    /// Nothing would be checked.
    #[error(
        "measurement policy: it checks no measurement; list at least mrtd, an rtmr, or \
         dstack.composeHash"
    )]
    Empty,
}

impl MeasurementPolicy {
    /// Parses and checks a policy file's text.
    ///
    /// # Errors
    /// [`PolicyError`] naming the field and the rule.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let mut policy: Self =
            serde_yaml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        for (field, list, len) in [
            ("mrtd", &mut policy.mrtd, 96),
            ("rtmr0", &mut policy.rtmr0, 96),
            ("rtmr1", &mut policy.rtmr1, 96),
            ("rtmr2", &mut policy.rtmr2, 96),
            ("rtmr3", &mut policy.rtmr3, 96),
            ("dstack.composeHash", &mut policy.dstack.compose_hash, 64),
            ("dstack.appId", &mut policy.dstack.app_id, 40),
        ] {
            for (index, value) in list.iter_mut().enumerate() {
                let v = value.trim().trim_start_matches("0x").to_ascii_lowercase();
                if v.len() != len || hex::decode(&v).is_err() {
                    return Err(PolicyError::Value {
                        field,
                        index,
                        len,
                        got: value.clone(),
                    });
                }
                *value = v;
            }
        }
        if policy.registers().iter().all(|(_, l)| l.is_empty())
            && policy.dstack.compose_hash.is_empty()
            && policy.dstack.app_id.is_empty()
        {
            return Err(PolicyError::Empty);
        }
        Ok(policy)
    }

    /// The register lists by name, in order.
    pub fn registers(&self) -> [(&'static str, &[String]); 5] {
        [
            ("MRTD", &self.mrtd),
            ("RTMR0", &self.rtmr0),
            ("RTMR1", &self.rtmr1),
            ("RTMR2", &self.rtmr2),
            ("RTMR3", &self.rtmr3),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_normalises_hex_and_defaults_the_tcb_to_up_to_date() {
        let p = MeasurementPolicy::parse(&format!("mrtd: [\"0x{}\"]\n", "AB".repeat(48)))
            .expect("valid");
        assert_eq!(p.mrtd, ["ab".repeat(48)]);
        assert_eq!(p.tcb.allow_status, ["UpToDate"]);
    }

    #[test]
    fn bad_policies_name_the_field_and_the_rule() {
        let err = MeasurementPolicy::parse("rtmr1: [abc]").expect_err("short");
        assert!(err.to_string().contains("rtmr1[0] must be 96 hex"), "{err}");
        let err = MeasurementPolicy::parse("mrtdd: []").expect_err("unknown");
        assert!(err.to_string().contains("mrtdd"), "{err}");
        let err = MeasurementPolicy::parse("tcb: {allowStatus: [UpToDate]}").expect_err("empty");
        assert!(err.to_string().contains("checks no measurement"), "{err}");
        let err = MeasurementPolicy::parse("dstack: {composeHash: [zz]}").expect_err("hex");
        assert!(err.to_string().contains("dstack.composeHash[0]"), "{err}");
    }
}
