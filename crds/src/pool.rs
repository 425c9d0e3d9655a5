//! The `SandboxPool` resource: booted, idle sandbox runners kept ready so an Execution does not
//! wait for a confidential guest to boot.
//!
//! Each member is a sandbox Pod in `standby` mode: no bundle, no secrets, no Permit, and egress
//! only to the cluster DNS and the operator's callback. An Execution in the pool's namespace
//! claims one idle member (one Execution per member, never reused); the operator binds the
//! Execution's egress policy to it, then hands it the run bundle when it asks. The member runs
//! it, reports and exits; its Pod is deleted and the pool starts a new member.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Booted, idle sandbox runners that Executions in this namespace start on instead of a fresh
/// Pod.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "oauth3.dev",
    version = "v1alpha1",
    kind = "SandboxPool",
    doc = "Booted, idle sandbox runners (standby members) that Executions in this namespace claim instead of waiting for a fresh confidential Pod; one Execution per member, never reused.",
    plural = "sandboxpools",
    singular = "sandboxpool",
    shortname = "sbpool",
    category = "oauth3",
    namespaced,
    status = "SandboxPoolStatus",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas","description":"Idle members wanted"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.ready","description":"Idle members booted and ready to be claimed"}"#,
    printcolumn = r#"{"name":"Starting","type":"integer","jsonPath":".status.starting","description":"Idle members not ready yet"}"#,
    printcolumn = r#"{"name":"Claimed","type":"integer","jsonPath":".status.claimed","description":"Members running an Execution now"}"#,
    printcolumn = r#"{"name":"RuntimeClass","type":"string","jsonPath":".spec.runtimeClassName","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.minReady) || self.minReady <= self.replicas").message("minReady must be at most replicas").field_path(".minReady"))]
#[serde(rename_all = "camelCase")]
pub struct SandboxPoolSpec {
    /// RuntimeClass of the members' Pods. Defaults to the operator's (`kata-qemu-tdx` unless
    /// the chart sets `sandbox.runtimeClassName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub runtime_class_name: Option<String>,

    /// Runner image of the members. Defaults to the operator's sandbox image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,

    /// CPU and memory of each member (limit and request). Default to the operator's sandbox
    /// resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<PoolResources>,

    /// How many idle members to keep (0 to 100). A claimed member is replaced at once.
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// The pool reports `Ready` (condition) while at least this many idle members are ready.
    /// Defaults to 1 (0 when `replicas` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub min_ready: Option<i32>,

    /// At most this many members are being started (created, not ready yet) at once; refills
    /// beyond it wait. Defaults to 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_surge: Option<i32>,
}

/// CPU and memory of a pool's members.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PoolResources {
    /// CPU, as Kubernetes quantities (`500m`, `1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), pattern(r"^[0-9]+(\.[0-9]+)?m?$"))]
    pub cpu: Option<String>,
    /// Memory, as Kubernetes quantities (`256Mi`, `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 32),
        pattern(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
    )]
    pub memory: Option<String>,
}

impl SandboxPoolSpec {
    /// `minReady`, defaulted.
    pub fn effective_min_ready(&self) -> i32 {
        self.min_ready.unwrap_or(self.replicas.min(1))
    }

    /// `maxSurge`, defaulted.
    pub fn effective_max_surge(&self) -> i32 {
        self.max_surge.unwrap_or(DEFAULT_MAX_SURGE)
    }
}

/// `maxSurge` when unset.
pub const DEFAULT_MAX_SURGE: i32 = 4;

/// Observed state of a SandboxPool, written only by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SandboxPoolStatus {
    /// Idle members booted, ready, and checked in (their runner has asked for a run): what a
    /// claim takes.
    #[serde(default)]
    pub ready: i32,
    /// Idle members started and not ready or not checked in yet.
    #[serde(default)]
    pub starting: i32,
    /// Members running an Execution now (they leave the pool when it ends).
    #[serde(default)]
    pub claimed: i32,
    /// Claims this operator served from the pool since it started leading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<i64>,
    /// Executions this operator started on a fresh Pod because no member was idle, since it
    /// started leading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misses: Option<i64>,
    /// Milliseconds from the last claimed Execution's creation to its bundle being handed to
    /// its member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_claim_latency_ms: Option<i64>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: at least `minReady` idle members are ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
