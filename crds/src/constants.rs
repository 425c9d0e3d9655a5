//! The one place for names shared across oauth3: API group, field managers, finalizers,
//! label and annotation keys, Secret types.

/// API group of every oauth3 resource.
pub const GROUP: &str = "oauth3.dev";
/// API version of the resources in this crate.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` string of the resources in this crate.
pub const API_VERSION: &str = "oauth3.dev/v1alpha1";
/// Server-side apply field manager used by the operator for everything it writes.
pub const FIELD_MANAGER: &str = "oauth3-operator";
/// Finalizer the operator puts on Executions whose pod or process it still has to clean up.
pub const EXECUTION_FINALIZER: &str = "oauth3.dev/execution-cleanup";
/// Label on objects created for an Execution (pods, network policies), naming it.
pub const LABEL_EXECUTION: &str = "oauth3.dev/execution";
/// Label on objects created for an Execution, naming its Permit.
pub const LABEL_PERMIT: &str = "oauth3.dev/permit";
/// Annotation on a sandbox's bundle Secret and egress policy: the digest of the callback token
/// of the launch that wrote them (the launch record's `tokenDigest`), so a launch that lost the
/// lock can tell its own objects from the winner's.
pub const ANNOTATION_LAUNCH: &str = "oauth3.dev/launch-token-sha256";
/// Label `app.kubernetes.io/managed-by` value of objects the operator creates.
pub const MANAGED_BY: &str = "oauth3-operator";
/// Kubernetes Secret `type` of a sealed secret (a sealed box only a TEE key can open).
pub const SEALED_SECRET_TYPE: &str = "oauth3.dev/sealed";
/// Key inside a sealed Secret's `data` that holds the sealed envelope.
pub const SEALED_SECRET_KEY: &str = "sealed";
/// Annotation on a sealed Secret naming the secret as Permits refer to it (e.g. `GITHUB_TOKEN`).
pub const ANNOTATION_SECRET_NAME: &str = "oauth3.dev/secret-name";
/// Pattern every Permit secret name must match.
pub const SECRET_NAME_PATTERN: &str = "^[A-Z]([A-Z0-9_]{0,61}[A-Z0-9])?$";
/// Default `validFor` of a Permit approval.
pub const DEFAULT_VALID_FOR: &str = "24h";
/// Default `timeoutSeconds` of an Execution.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 30;
/// Default `body.maxBytes` of a scoped-fetch capability.
pub const DEFAULT_BODY_MAX_BYTES: i32 = 65_536;
/// Upper bound on `Execution.spec.code`, in characters (256 KiB).
pub const MAX_CODE_LEN: usize = 262_144;
/// Upper bound on the number of capabilities in one Permit.
pub const MAX_CAPABILITIES: usize = 128;
/// Upper bound on the number of secrets in one Permit.
pub const MAX_SECRETS: usize = 32;

/// Label on Permits and Executions the gateway creates: the request id clients use
/// (`permit_<16 hex>`, `exec_<16 hex>`), by which the gateway finds the object again.
pub const LABEL_REQUEST_ID: &str = "oauth3.dev/request-id";
/// Annotation on gateway-made objects: hex SHA-256 of the read-only token in `status_url`.
pub const ANNOTATION_STATUS_TOKEN: &str = "oauth3.dev/status-token-sha256";
/// Annotation on gateway-made Permits: hex SHA-256 of the reference in `approval_url` (it only
/// opens the approval page; deciding needs an owner's credential).
pub const ANNOTATION_APPROVAL_REF: &str = "oauth3.dev/approval-ref-sha256";
/// Annotation on gateway-made Permits: the positional argument order (JSON object of
/// capability name to parameter names) of capabilities requested in the `api-gateway` form.
pub const ANNOTATION_POSITIONAL_PARAMS: &str = "oauth3.dev/positional-params";
/// Annotation on a Permit with `spec.pinnedCode`: the text of the pinned code, so the owner can
/// read what they approve. Shown only when its digest is one of the pinned ones.
pub const ANNOTATION_PINNED_CODE: &str = "oauth3.dev/pinned-code";
/// The most bytes of code kept in [`ANNOTATION_PINNED_CODE`].
pub const MAX_PINNED_CODE_ANNOTATION: usize = 64 * 1024;
/// Annotation on gateway-made Executions run from skill code: `sha256:` + hex SHA-256 of the
/// skill's bytes exactly as the agent sent them (before its TypeScript types were removed).
pub const ANNOTATION_SOURCE_DIGEST: &str = "oauth3.dev/source-digest";
/// Annotation on gateway-made Executions: the client's `action_id`.
pub const ANNOTATION_ACTION_ID: &str = "oauth3.dev/action-id";
/// Field manager of the operator's writes to `status.proxy` (kept apart from the Permit
/// controller's status apply, which does not own that field).
pub const PROXY_FIELD_MANAGER: &str = "oauth3-operator-proxy";
/// Annotation on a Permit asking its stopped (idle) credential proxy to start again: an RFC
/// 3339 time later than `status.proxy.stoppedAt`. The gateway sets it when a call arrives for
/// an idle proxy; `kubectl oauth3 proxy start` sets it by hand.
pub const ANNOTATION_PROXY_WAKE: &str = "oauth3.dev/proxy-wake";
/// Label on objects of a Permit's credential proxy (Pod, Service, policy, bundle Secret),
/// naming the Permit: its value is [`proxy_object_name`] of the Permit (the Service's and the
/// policy's selector).
pub const LABEL_PROXY: &str = "oauth3.dev/proxy";
/// Annotation on a credential proxy's Pod (pod launcher): the spec digest it enforces (with
/// [`ANNOTATION_LAUNCH`], its callback token's digest, what the operator reads back after a
/// restart instead of remembering it).
pub const ANNOTATION_PROXY_SPEC_DIGEST: &str = "oauth3.dev/proxy-spec-digest";
/// Annotation on a credential proxy's Pod (pod launcher): the PEM certificate its HTTPS
/// endpoint presents (public; copied to `status.proxy.certificate`).
pub const ANNOTATION_PROXY_CERTIFICATE: &str = "oauth3.dev/proxy-certificate";
/// The name of the ConfigMap holding the audit log of a Permit's proxied calls (the latest
/// [`MAX_PROXY_AUDIT_LINES`] lines, JSON per line), owned by the Permit.
pub fn proxy_audit_object_name(permit: &str) -> String {
    short_object_name("oauth3-proxy-log-", permit)
}

/// Name of the Pod, Service, bundle Secret and egress policy of a Permit's credential proxy.
pub fn proxy_object_name(permit: &str) -> String {
    short_object_name("oauth3-proxy-", permit)
}

/// `prefix` + `name`, cut to 63 characters (a DNS label: Pod host names and Service names
/// need it) with a hash of `name` keeping cut names unique.
pub fn short_object_name(prefix: &str, name: &str) -> String {
    let full = format!("{prefix}{name}");
    if full.len() <= 63 {
        return full;
    }
    let digest = crate::code_digest(name);
    let hash = &digest["sha256:".len().."sha256:".len() + 10];
    format!("{}-{hash}", full[..52].trim_end_matches('-'))
}
/// Label on a SandboxPool's member Pods (and its standby policy's selector): the pool's name.
pub const LABEL_POOL: &str = "oauth3.dev/pool";
/// Label on a SandboxPool's member Pods: [`POOL_MEMBER_IDLE`] until an Execution claims it,
/// then [`POOL_MEMBER_CLAIMED`] (never back).
pub const LABEL_POOL_MEMBER: &str = "oauth3.dev/pool-member";
/// [`LABEL_POOL_MEMBER`] of a member waiting for a run.
pub const POOL_MEMBER_IDLE: &str = "idle";
/// [`LABEL_POOL_MEMBER`] of a member an Execution claimed.
pub const POOL_MEMBER_CLAIMED: &str = "claimed";
/// Annotation on a pool member's Pod: `sha256:<hex>` of the token it asks for its run with
/// (the token itself is only in the member's Secret).
pub const ANNOTATION_STANDBY_TOKEN: &str = "oauth3.dev/standby-token-sha256";
/// Annotation on a pool member's Pod: when its runner first asked for a run with the member's
/// token (written by the replica that answered). Only a member that checked in is claimed;
/// one that has not within the pool's check-in time of its creation is replaced.
pub const ANNOTATION_STANDBY_CHECKED_IN: &str = "oauth3.dev/standby-checked-in";
/// Annotation on a pool member's Pod: when a replica that did not launch its run handed it its
/// bundle (read from the API), so the leader does not take it for a member that never asked.
pub const ANNOTATION_BUNDLE_TAKEN: &str = "oauth3.dev/bundle-taken";
/// Annotation on a sandbox Pod: the name of the Execution it runs.
pub const ANNOTATION_EXECUTION_NAME: &str = "oauth3.dev/execution-name";
/// Name prefix of a SandboxPool's member Pods (`oauth3-pool-<pool>-<random>`, cut to fit).
pub fn pool_member_prefix(pool: &str) -> String {
    let prefix = short_object_name("oauth3-pool-", pool);
    format!("{}-", &prefix[..prefix.len().min(56)].trim_end_matches('-'))
}
/// Name of a SandboxPool's standby egress policy.
pub fn pool_policy_name(pool: &str) -> String {
    short_object_name("oauth3-pool-", pool)
}
/// Key of the audit log in its ConfigMap.
pub const PROXY_AUDIT_KEY: &str = "calls.jsonl";
/// The most proxied calls kept in a Permit's audit log (older lines are dropped).
pub const MAX_PROXY_AUDIT_LINES: usize = 2000;
/// Field manager of what the gateway creates and writes.
pub const GATEWAY_FIELD_MANAGER: &str = "oauth3-gateway";

/// The Kubernetes Secret name a Permit secret name maps to: lower case, `_` becomes `-`.
///
/// `GITHUB_TOKEN` is stored in the Secret `github-token` (type [`SEALED_SECRET_TYPE`]), because
/// Permit secret names are environment-variable style while Secret names are DNS labels. The
/// schema's [`SECRET_NAME_PATTERN`] (a letter first, a letter or digit last, no `-`) makes this
/// mapping one-to-one and always a valid DNS label.
pub fn secret_object_name(secret: &str) -> String {
    secret.to_ascii_lowercase().replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_object_name_is_a_dns_label_of_the_secret_name() {
        assert_eq!(secret_object_name("GITHUB_TOKEN"), "github-token");
        assert_eq!(secret_object_name("A__B9"), "a--b9");
    }
}
