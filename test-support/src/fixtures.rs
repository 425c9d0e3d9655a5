//! Builders for the objects tests need, so a test states only what matters to it:
//! `PermitFixture::api("https://api.example").rate_limited(5, 60).secret("API_TOKEN")
//! .permit("p")`, `ExecutionFixture::under("p").code("return 1").execution("run-1")`.

use oauth3_crds::{Execution, ExecutionSpec, Permit, PermitSpec};
use serde_json::{Value, json};

/// A Permit spec with one capability named `api`, built up step by step.
#[derive(Debug, Clone)]
pub struct PermitFixture {
    spec: Value,
}

impl PermitFixture {
    /// One scoped-fetch capability `api` on `base_url` allowing `GET /` and everything below it.
    pub fn api(base_url: &str) -> Self {
        Self {
            spec: json!({
                "description": "test Permit",
                "capabilities": [{"name": "api", "baseUrl": base_url,
                    "paths": ["/**"], "methods": ["GET"]}],
            }),
        }
    }

    fn capability(&mut self) -> &mut serde_json::Map<String, Value> {
        self.spec["capabilities"][0]
            .as_object_mut()
            .expect("the fixture always has one capability")
    }

    /// Sets fields of the capability (`paths`, `methods`, `auth`, `query`, ...).
    pub fn with(mut self, fields: Value) -> Self {
        if let Some(fields) = fields.as_object() {
            self.capability().extend(fields.clone());
        }
        self
    }

    /// Sets top-level spec fields (`validFor`, `maxExecutions`, `codeReview`, ...).
    pub fn spec_fields(mut self, fields: Value) -> Self {
        if let (Some(spec), Some(fields)) = (self.spec.as_object_mut(), fields.as_object()) {
            spec.extend(fields.clone());
        }
        self
    }

    /// Injects `secret` as `Authorization: Bearer {secret}` and lists it in `spec.secrets`.
    pub fn secret(self, secret: &str) -> Self {
        self.with(
            json!({"auth": {"header": "Authorization", "value": format!("Bearer {{{secret}}}")}}),
        )
        .spec_fields(json!({"secrets": [secret]}))
    }

    /// A rate limit of `requests` per `per_seconds` on the capability.
    pub fn rate_limited(self, requests: i32, per_seconds: i32) -> Self {
        self.with(json!({"rateLimit": {"requests": requests, "perSeconds": per_seconds}}))
    }

    /// At most `max` Executions per approval.
    pub fn max_executions(self, max: i64) -> Self {
        self.spec_fields(json!({"maxExecutions": max}))
    }

    /// Each new code digest needs the owner's trust.
    pub fn per_code(self) -> Self {
        self.spec_fields(json!({"codeReview": "perCode"}))
    }

    /// Every result must be backed by a TDX quote (`requireAttestation: tdx`).
    pub fn require_attestation(self) -> Self {
        self.spec_fields(json!({"requireAttestation": "tdx"}))
    }

    /// The spec.
    pub fn spec(&self) -> PermitSpec {
        serde_json::from_value(self.spec.clone()).expect("a PermitFixture is a valid spec")
    }

    /// A Permit of `name` with the spec (no status).
    pub fn permit(&self, name: &str) -> Permit {
        Permit::new(name, self.spec())
    }
}

/// An Execution spec under a Permit.
#[derive(Debug, Clone)]
pub struct ExecutionFixture {
    spec: Value,
}

impl ExecutionFixture {
    /// `return 1` under the Permit `permit`, 30 s.
    pub fn under(permit: &str) -> Self {
        Self {
            spec: json!({"permitRef": permit, "code": "return 1"}),
        }
    }

    /// The code.
    pub fn code(mut self, code: &str) -> Self {
        self.spec["code"] = json!(code);
        self
    }

    /// The time limit.
    pub fn timeout(mut self, seconds: i32) -> Self {
        self.spec["timeoutSeconds"] = json!(seconds);
        self
    }

    /// The spec.
    pub fn spec(&self) -> ExecutionSpec {
        serde_json::from_value(self.spec.clone()).expect("an ExecutionFixture is a valid spec")
    }

    /// An Execution of `name` with the spec (no status).
    pub fn execution(&self, name: &str) -> Execution {
        Execution::new(name, self.spec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permit_fixture_builds_the_spec_it_says() {
        let spec = PermitFixture::api("https://api.example")
            .secret("API_TOKEN")
            .rate_limited(5, 60)
            .max_executions(3)
            .per_code()
            .spec();
        let cap = &spec.capabilities[0];
        assert_eq!(cap.name, "api");
        assert_eq!(
            cap.rate_limit.as_ref().map(|r| (r.requests, r.per_seconds)),
            Some((5, 60))
        );
        assert_eq!(spec.secrets, ["API_TOKEN"]);
        assert_eq!(spec.max_executions, Some(3));
        assert_eq!(
            cap.auth.as_ref().map(|a| a.value.as_str()),
            Some("Bearer {API_TOKEN}")
        );
    }

    #[test]
    fn an_execution_fixture_builds_the_spec_it_says() {
        let e = ExecutionFixture::under("p")
            .code("return 2")
            .timeout(5)
            .execution("run");
        assert_eq!(e.spec.permit_ref, "p");
        assert_eq!(e.spec.code, "return 2");
        assert_eq!(e.spec.timeout_seconds, 5);
    }
}
