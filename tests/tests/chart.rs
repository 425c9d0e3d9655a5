//! The Helm chart (`charts/oauth3`) for real: its README documents every value, bad values fail
//! rendering with a message naming the value, every rendered object (default and everything-on
//! values) passes server-side dry-run on a real kube-apiserver, and the operator binary, run
//! as a process under the chart's ServiceAccount (kubeconfig impersonation), takes a Permit
//! through approval and an Execution to Succeeded with exactly the chart's RBAC and nothing
//! more, while the same identity is refused what it must never do. The gateway, run in-process
//! as the chart's gateway ServiceAccount, serves the permit dialect with exactly its RBAC and
//! cannot read Secrets.
//!
//! helm is found through `OAUTH3_HELM` (set by `make test` from `.ci/k8s/build-helm.sh`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::discovery::{Scope, pinned_kind};
use oauth3_crds::constants::{LABEL_EXECUTION, LABEL_PROXY};
use oauth3_crds::{Execution, ExecutionPhase, ExecutionSpec, Permit, PermitPhase, PermitSpec};
use oauth3_operator::launcher::pod::{PodLaunchConfig, desired_network_policy, desired_pod};
use oauth3_operator::proxy::pods::{ProxyStart, proxy_objects, proxy_tls};
use oauth3_test_support::Upstream;
use oauth3_tests::{
    TEST_FIELD_MANAGER, apply_dev_sealed_secret, callback_certificate, client_as, client_or_skip,
    namespace, repo_root,
};
use serde_json::{Value, json};

const SECRET: &str = "sk-chart-rbac-5d1e";
const DEV_KEY: [u8; 32] = [7u8; 32];
/// Kinds that make up the operator's identity and rights.
const IDENTITY_KINDS: [&str; 7] = [
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

fn chart_dir() -> PathBuf {
    repo_root().join("charts/oauth3")
}

/// The helm binary, or `None` (test skipped) when `OAUTH3_HELM` is unset outside `REQUIRE_K8S=1`.
fn helm_or_skip() -> Option<PathBuf> {
    match std::env::var_os("OAUTH3_HELM") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "OAUTH3_HELM={} is not a file: build helm with `bash .ci/k8s/build-helm.sh`",
                p.display()
            );
            Some(p)
        }
        None => {
            assert!(
                std::env::var("REQUIRE_K8S").as_deref() != Ok("1"),
                "REQUIRE_K8S=1 but OAUTH3_HELM is not set: run the tests through `make test`, \
                 which builds helm with .ci/k8s/build-helm.sh and sets it"
            );
            eprintln!("skipping: OAUTH3_HELM not set (run `make test`)");
            None
        }
    }
}

/// `helm template <release> charts/oauth3 -n <ns> <extra>`: the rendered objects, or helm's
/// error text.
fn try_render(helm: &Path, release: &str, ns: &str, extra: &[&str]) -> Result<Vec<Value>, String> {
    let out = std::process::Command::new(helm)
        .arg("template")
        .arg(release)
        .arg(chart_dir())
        .args(["-n", ns])
        .args(extra)
        .output()
        .expect("running helm");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(doc).expect("rendered YAML parses");
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn render(helm: &Path, release: &str, ns: &str, extra: &[&str]) -> Vec<Value> {
    try_render(helm, release, ns, extra).unwrap_or_else(|e| panic!("helm template failed: {e}"))
}

fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().expect("rendered object has a kind")
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"]
        .as_str()
        .expect("rendered object has a name")
}

fn gvk(obj: &Value) -> GroupVersionKind {
    let api_version = obj["apiVersion"].as_str().expect("apiVersion");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, kind(obj))
}

/// Server-side applies `obj` (as the harness's admin, or as `client`'s identity), for real or
/// as a dry run.
async fn apply(client: &kube::Client, obj: &Value, dry_run: bool) -> Result<(), kube::Error> {
    let (resource, caps) = pinned_kind(client, &gvk(obj)).await?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or_else(|| panic!("{} {} has no namespace", kind(obj), name(obj)));
            Api::namespaced_with(client.clone(), ns, &resource)
        }
    };
    let mut pp = PatchParams::apply(TEST_FIELD_MANAGER).force();
    if dry_run {
        pp = pp.dry_run();
    }
    api.patch(name(obj), &pp, &Patch::Apply(obj)).await?;
    Ok(())
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(ref s)) if s.is_forbidden())
}

/// Every value's dotted path in `values` (pre-order), and which of them are leaves (not a
/// non-empty mapping).
fn value_paths(values: &serde_yaml::Value, prefix: &str, out: &mut Vec<(String, bool)>) {
    if let serde_yaml::Value::Mapping(map) = values {
        for (k, v) in map {
            let key = k.as_str().expect("values keys are strings");
            let path = if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            };
            let leaf = !matches!(v, serde_yaml::Value::Mapping(m) if !m.is_empty());
            out.push((path.clone(), leaf));
            value_paths(v, &path, out);
        }
    }
}

/// The keys in the first column of the README's values table (rows `| `key` | ...` after the
/// `## Values` heading, up to the next heading).
fn documented_keys(readme: &str) -> BTreeSet<String> {
    readme
        .lines()
        .skip_while(|l| l.trim() != "## Values")
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// Values not covered by the table (a leaf is covered by its own row or an ancestor's), and
/// table rows that name no value.
fn undocumented_and_stale(values: &str, readme: &str) -> (Vec<String>, Vec<String>) {
    let tree: serde_yaml::Value = serde_yaml::from_str(values).expect("values.yaml parses");
    let mut paths = Vec::new();
    value_paths(&tree, "", &mut paths);
    let documented = documented_keys(readme);
    let covered = |p: &str| {
        documented.contains(p)
            || documented
                .iter()
                .any(|d| p.starts_with(d.as_str()) && p[d.len()..].starts_with('.'))
    };
    let undocumented = paths
        .iter()
        .filter(|(p, leaf)| *leaf && !covered(p))
        .map(|(p, _)| p.clone())
        .collect();
    let known: BTreeSet<&str> = paths.iter().map(|(p, _)| p.as_str()).collect();
    let stale = documented
        .iter()
        .filter(|d| !known.contains(d.as_str()))
        .cloned()
        .collect();
    (undocumented, stale)
}

#[test]
fn the_values_check_finds_missing_and_stale_rows() {
    let values = "a: 1\nb:\n  c: x\n  d: {}\ne: {f: 1, g: 2}\n";
    let readme = "| `rbac` | | other table |\n## Values\n| `a` | 1 | doc |\n| `b.c` | x | doc |\n\
                  | `e` | | doc |\n| `z` | | doc |\n## Next\n| `q` | | other table |\n";
    let (undocumented, stale) = undocumented_and_stale(values, readme);
    assert_eq!(undocumented, ["b.d"]);
    assert_eq!(stale, ["z"]);
}

#[test]
fn the_chart_readme_documents_every_value_and_no_other() {
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml");
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("chart README");
    let (undocumented, stale) = undocumented_and_stale(&values, &readme);
    assert!(
        undocumented.is_empty(),
        "values missing from the table in charts/oauth3/README.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "rows in charts/oauth3/README.md that are not in values.yaml: {stale:?}"
    );
}

#[test]
fn bad_values_fail_rendering_with_a_message_naming_the_value() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    for (set, expected) in [
        ("launcher=vm", "launcher: must be pod or process"),
        (
            "sandbox.keyProvider=dev",
            "sandbox.keyProvider: must be kbs or dstack",
        ),
        ("telegram.enabled=true", "telegram.existingSecret: required"),
        (
            "leaderElection.enabled=false",
            "leaderElection.enabled: must be true when replicaCount is more than 1",
        ),
    ] {
        let err = try_render(&helm, "bad", "oauth3-system", &["--set", set])
            .expect_err("bad values must not render");
        assert!(err.contains(expected), "--set {set}: {err}");
    }
}

/// The operator's "Open on the web" links point at the gateway: `telegram.webUrl`, else the
/// gateway's `publicUrl` when the gateway is on; no flag (no button) otherwise.
#[test]
fn telegram_sign_in_links_point_at_the_gateways_public_url() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let web_flag = |extra: &[&str]| -> Option<String> {
        let objects = render(&helm, "tg", "oauth3-system", extra);
        let operator = objects
            .iter()
            .filter(|o| kind(o) == "Deployment")
            .map(|d| d["spec"]["template"]["spec"]["containers"][0]["args"].clone())
            .find(|args| {
                args.as_array().is_some_and(|a| {
                    a.iter().any(|v| {
                        v.as_str() == Some("--telegram-token-file=/etc/oauth3/telegram/token")
                    })
                })
            })
            .expect("the operator Deployment, with Telegram on");
        operator
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .find_map(|a| a.strip_prefix("--telegram-web-url=").map(str::to_owned))
    };
    let tg = [
        "--set",
        "telegram.enabled=true",
        "--set",
        "telegram.existingSecret=tg",
    ];
    assert_eq!(web_flag(&tg), None, "no gateway, no webUrl: no button");
    let mut with_gateway = tg.to_vec();
    with_gateway.extend([
        "--set",
        "gateway.enabled=true",
        "--set",
        "gateway.publicUrl=https://gw.example",
    ]);
    assert_eq!(
        web_flag(&with_gateway).as_deref(),
        Some("https://gw.example")
    );
    let mut explicit = with_gateway.clone();
    explicit.extend(["--set", "telegram.webUrl=https://approve.example"]);
    assert_eq!(
        web_flag(&explicit).as_deref(),
        Some("https://approve.example")
    );
    let binary = oauth3_tests::workspace_binary("oauth3-operator", "oauth3-operator");
    assert!(operator_flags(&binary).contains("--telegram-web-url"));
}

/// With default values the operator's Pods accept ingress only on the callback port, only from
/// Pods labelled as the operator labels sandbox Pods, and nothing on the metrics port.
#[test]
fn by_default_only_sandbox_pods_may_reach_the_operator_callback() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let objects = render(&helm, "np", "oauth3-system", &[]);
    let policy = objects
        .iter()
        .find(|o| kind(o) == "NetworkPolicy" && name(o).ends_with("-operator"))
        .expect("an operator NetworkPolicy with default values");
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let ingress = policy["spec"]["ingress"].as_array().expect("ingress rules");
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    let from = &ingress[0]["from"][0]["podSelector"]["matchLabels"];
    assert_eq!(from["app.kubernetes.io/name"], "oauth3-sandbox");
    assert_eq!(from["app.kubernetes.io/managed-by"], "oauth3-operator");
    let ports = ingress[0]["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1, "{ports:?}");
    let deployment = objects
        .iter()
        .find(|o| kind(o) == "Deployment")
        .expect("the operator Deployment");
    let callback_port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "callback"))
        .map(|p| p["containerPort"].clone())
        .expect("a callback container port");
    assert_eq!(ports[0]["port"], callback_port);
}

#[tokio::test]
async fn every_rendered_object_passes_server_side_dry_run_with_default_and_everything_on_values() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "chart-dry").await;
    let agents = namespace(&client, "chart-dry-agents").await;
    let everything = chart_dir().join("ci/everything-values.yaml");
    let everything = everything.to_string_lossy();
    let ns_list = format!("sandbox.defaultDenyNetworkPolicy.namespaces={{{agents}}}");
    let watch = format!("watchNamespace={agents}");
    for (label, extra) in [
        ("default values", vec!["--include-crds"]),
        (
            "everything on",
            vec![
                "--include-crds",
                "-f",
                &everything,
                "--set",
                &ns_list,
                "--set",
                &watch,
            ],
        ),
    ] {
        let objects = render(&helm, &ns, &ns, &extra);
        let kinds: BTreeSet<&str> = objects.iter().map(kind).collect();
        for expected in [
            "CustomResourceDefinition",
            "Deployment",
            "ServiceAccount",
            "ClusterRole",
            "Role",
            "Service",
        ] {
            assert!(kinds.contains(expected), "{label}: no {expected} rendered");
        }
        for obj in &objects {
            apply(&client, obj, true).await.unwrap_or_else(|e| {
                panic!(
                    "{label}: {} {} rejected by the API server: {e}",
                    kind(obj),
                    name(obj)
                )
            });
        }
        eprintln!(
            "{label}: {} objects passed server-side dry-run: {kinds:?}",
            objects.len()
        );
    }
    // The dry run created nothing.
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    assert!(
        bindings
            .get_opt(&format!("{ns}-oauth3-operator"))
            .await
            .expect("read")
            .is_none()
    );
}

/// Installs the operator's identity and rights as the chart renders them for `release` in
/// `ns`; returns the rendered objects and the ServiceAccount's user name.
async fn install_identity(
    client: &kube::Client,
    helm: &Path,
    release: &str,
    ns: &str,
    extra: &[&str],
) -> (Vec<Value>, String) {
    let objects = render(helm, release, ns, extra);
    let mut sa = None;
    for obj in objects.iter().filter(|o| IDENTITY_KINDS.contains(&kind(o))) {
        if kind(obj) == "ServiceAccount" {
            sa = Some(name(obj).to_owned());
        }
        apply(client, obj, false)
            .await
            .unwrap_or_else(|e| panic!("applying {} {}: {e}", kind(obj), name(obj)));
    }
    let sa = sa.expect("the chart renders a ServiceAccount");
    (objects, format!("system:serviceaccount:{ns}:{sa}"))
}

/// Writes a copy of the harness kubeconfig whose user impersonates `user` (`as:`).
fn impersonating_kubeconfig(dir: &Path, user: &str) -> PathBuf {
    let path = std::env::var("TEST_KUBECONFIG").expect("TEST_KUBECONFIG");
    let text = std::fs::read_to_string(path).expect("kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    let users = config["users"]
        .as_sequence_mut()
        .expect("kubeconfig has users");
    for u in users {
        u["user"]["as"] = serde_yaml::Value::from(user);
    }
    let out = dir.join("operator.kubeconfig");
    std::fs::write(&out, serde_yaml::to_string(&config).expect("YAML")).expect("write");
    out
}

/// The operator process, killed when dropped.
struct OperatorProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl OperatorProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The flags `oauth3-operator --help` lists.
fn operator_flags(binary: &Path) -> BTreeSet<String> {
    let out = std::process::Command::new(binary)
        .arg("--help")
        .output()
        .expect("oauth3-operator --help");
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(']').to_owned())
        .collect()
}

fn flag_name(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(f, _)| f)
}

async fn wait_until<T>(
    what: &str,
    op: &OperatorProcess,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    for _ in 0..600 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what} did not happen within 60s; operator log:\n{}",
        op.log()
    );
}

#[tokio::test]
async fn the_operator_works_with_exactly_the_charts_rbac_and_is_refused_the_rest() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "chart-op").await;
    let agents = namespace(&client, "chart-op-agents").await;
    // The chart as a development install would render it: the process launcher (the runner is
    // a child process of the operator) and a short TTL, so deletion is exercised too.
    let (objects, user) = install_identity(
        &client,
        &helm,
        &ns,
        &ns,
        &[
            "--set",
            "launcher=process",
            "--set",
            "sandbox.executionTTL=2s",
        ],
    )
    .await;

    let dir = std::env::temp_dir().join(format!("oauth3-chart-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let up = Upstream::start().await;
    std::fs::write(dir.join("dev.key"), hex::encode(DEV_KEY)).expect("key");
    std::fs::write(dir.join("ca.pem"), &up.ca_pem).expect("ca");
    let kubeconfig = impersonating_kubeconfig(&dir, &user);

    // The Deployment's own arguments, minus what only makes sense in a Pod (addresses, the
    // in-cluster callback URL). Every flag the chart passes must exist: an unknown one would
    // crash-loop the operator.
    let binary = oauth3_tests::workspace_binary("oauth3-operator", "oauth3-operator");
    let runner = oauth3_tests::workspace_binary("oauth3-sandbox-runner", "oauth3-sandbox-runner");
    let known = operator_flags(&binary);
    let deployment = objects
        .iter()
        .find(|o| kind(o) == "Deployment")
        .expect("a Deployment");
    let rendered: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("operator args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect();
    let replaced = ["--metrics-addr", "--callback-addr", "--callback-url"];
    let (kept, dropped): (Vec<String>, Vec<String>) = rendered
        .into_iter()
        .filter(|a| !replaced.contains(&flag_name(a)))
        .partition(|a| known.contains(flag_name(a)));
    assert!(
        dropped.is_empty(),
        "the chart passes flags the operator does not have: {dropped:?}"
    );
    assert!(
        kept.iter().any(|a| a == "--launcher=process"),
        "the chart passes --launcher: {kept:?}"
    );
    // The callback TLS Secret's mount, with a certificate for the loopback address the test's
    // runners use (the chart's own is for the in-cluster Service name).
    let tls_dir = dir.join("callback-tls");
    callback_certificate(&tls_dir);
    let kept: Vec<String> = kept
        .into_iter()
        .map(|a| a.replace("/etc/oauth3/callback-tls", &tls_dir.to_string_lossy()))
        .collect();
    assert!(
        kept.iter().any(|a| a.starts_with("--callback-tls-cert=")),
        "the chart serves the callback over HTTPS: {kept:?}"
    );
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let log = dir.join("operator.log");
    let child = std::process::Command::new(&binary)
        .args(&kept)
        .args(["--namespace", &agents])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--callback-addr",
            "127.0.0.1:0",
        ])
        .arg(format!("--runner-binary={}", runner.display()))
        .args([
            "--runner-arg=--key-provider",
            "--runner-arg=dev",
            &format!("--runner-arg=--dev-key-file={}", d("dev.key")),
            "--runner-arg=--insecure-dev-key",
            &format!("--runner-arg=--ca-file={}", d("ca.pem")),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", &ns)
        .env("POD_NAME", "chart-test-operator")
        .env_remove("TEST_KUBECONFIG")
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.join("operator.err")).expect("log"))
        .spawn()
        .expect("starting oauth3-operator");
    let op = OperatorProcess {
        child,
        log: dir.join("operator.err"),
    };

    // It wins the Lease in its own namespace.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    wait_until("the operator taking the Lease", &op, async || {
        let lease = leases.get_opt("oauth3-operator").await.ok()??;
        (lease.spec?.holder_identity.as_deref() == Some("chart-test-operator")).then_some(())
    })
    .await;

    // The owner's sealed token, a Permit, the owner's approval.
    apply_dev_sealed_secret(&client, &agents, "api-token", "API_TOKEN", SECRET, DEV_KEY).await;
    let spec: PermitSpec = serde_json::from_value(json!({
        "description": "chart rbac",
        "capabilities": [{"name": "api", "baseUrl": format!("{}/v1", up.origin()),
            "paths": ["/items"], "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}}],
        "secrets": ["API_TOKEN"], "validFor": "1h"
    }))
    .expect("spec");
    let permits: Api<Permit> = Api::namespaced(client.clone(), &agents);
    permits
        .create(&PostParams::default(), &Permit::new("items", spec))
        .await
        .expect("permit");
    let permit_phase = |want: PermitPhase| {
        let permits = permits.clone();
        async move || {
            let p = permits.get("items").await.ok()?;
            (p.status.as_ref()?.phase == Some(want)).then_some(())
        }
    };
    wait_until("Permit Pending", &op, permit_phase(PermitPhase::Pending)).await;
    let approve = std::process::Command::new(oauth3_tests::workspace_binary(
        "oauth3-operator",
        "kubectl-oauth3",
    ))
    .env(
        "KUBECONFIG",
        std::env::var("TEST_KUBECONFIG").expect("kubeconfig"),
    )
    .args(["-n", &agents, "approve", "items"])
    .output()
    .expect("plugin runs");
    assert!(
        approve.status.success(),
        "{}",
        String::from_utf8_lossy(&approve.stderr)
    );
    wait_until("Permit Approved", &op, permit_phase(PermitPhase::Approved)).await;

    // An Execution runs to Succeeded with the credential injected, then is deleted at its TTL.
    let exec_spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": "items",
        "code": "const r = await api('GET', '/items'); return r.path;",
        "timeoutSeconds": 20
    }))
    .expect("spec");
    let execs: Api<Execution> = Api::namespaced(client.clone(), &agents);
    execs
        .create(&PostParams::default(), &Execution::new("run-1", exec_spec))
        .await
        .expect("execution");
    let done = wait_until("Execution finished", &op, async || {
        let e = execs.get_opt("run-1").await.ok()??;
        e.status
            .as_ref()?
            .phase
            .is_some_and(ExecutionPhase::is_terminal)
            .then_some(e)
    })
    .await;
    let status = done.status.expect("status");
    assert_eq!(
        status.phase,
        Some(ExecutionPhase::Succeeded),
        "{status:?}\n{}",
        op.log()
    );
    assert_eq!(status.result, Some(json!("/v1/items")));
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].header_values("authorization"),
        [format!("Bearer {SECRET}").as_str()]
    );
    wait_until("Execution deleted after its TTL", &op, async || {
        matches!(execs.get_opt("run-1").await, Ok(None)).then_some(())
    })
    .await;
    // Events were published about it.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &agents);
    let ours = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("oauth3-operator"))
        .count();
    assert!(ours > 0, "the operator published no Events");

    // Nothing the operator tried was refused: its rights are enough.
    let log = op.log();
    for refusal in ["forbidden", "Forbidden", " 403"] {
        assert!(
            !log.contains(refusal),
            "the operator was refused something with the chart's RBAC:\n{log}"
        );
    }
    assert!(!log.contains(SECRET), "the secret must not reach the log");

    // And the same identity is refused what the operator must never do.
    let sa = client_as(&user, &[]).await;
    let all_secrets: Api<Secret> = Api::all(sa.clone());
    assert!(forbidden(all_secrets.list(&ListParams::default()).await));
    let sa_permits: Api<Permit> = Api::namespaced(sa.clone(), &agents);
    assert!(forbidden(
        sa_permits
            .patch(
                "items",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"validFor": "7d"}})),
            )
            .await
    ));
    assert!(forbidden(
        sa_permits.delete("items", &DeleteParams::default()).await
    ));
    let other_leases: Api<Lease> = Api::namespaced(sa.clone(), &agents);
    assert!(forbidden(other_leases.get_opt("oauth3-operator").await));
    let bindings: Api<ClusterRoleBinding> = Api::all(sa);
    assert!(forbidden(bindings.list(&ListParams::default()).await));
    drop(op);
}

#[tokio::test]
async fn the_default_operator_identity_can_launch_sandboxes_but_cannot_read_secrets_or_change_permits()
 {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "chart-pod").await;
    let agents = namespace(&client, "chart-pod-agents").await;
    let (_, user) = install_identity(&client, &helm, &ns, &ns, &[]).await;

    // A real Execution to build the pod launcher's objects from (no operator runs here).
    let spec: PermitSpec = serde_json::from_value(json!({
        "description": "pods",
        "capabilities": [{"name": "api", "baseUrl": "https://api.example.com",
            "paths": ["/x"], "methods": ["GET"]}]
    }))
    .expect("spec");
    let permit = Api::<Permit>::namespaced(client.clone(), &agents)
        .create(&PostParams::default(), &Permit::new("p", spec))
        .await
        .expect("permit");
    let exec_spec: ExecutionSpec =
        serde_json::from_value(json!({"permitRef": "p", "code": "return 1"})).expect("spec");
    let exec = Api::<Execution>::namespaced(client.clone(), &agents)
        .create(&PostParams::default(), &Execution::new("e", exec_spec))
        .await
        .expect("execution");
    Api::<Secret>::namespaced(client.clone(), &agents)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "someone-elses"}, "stringData": {"k": "v"}
            }))
            .expect("secret"),
        )
        .await
        .expect("a Secret");

    // The cluster has the confidential runtime the chart defaults to (admission checks it).
    let runtime_class = json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": "kata-qemu-tdx"}, "handler": "kata-qemu-tdx"
    });
    apply(&client, &runtime_class, false)
        .await
        .expect("RuntimeClass kata-qemu-tdx");
    let config = PodLaunchConfig {
        operator_namespace: ns.clone(),
        ..PodLaunchConfig::default()
    };
    let sa = client_as(&user, &[]).await;
    // What the pod launcher applies: a Pod, its NetworkPolicy and its bundle Secret.
    let pod =
        serde_json::to_value(desired_pod(&exec, &permit, &config).expect("pod")).expect("json");
    let rules = oauth3_operator::launcher::pod::EgressRules::Addresses(vec![(
        oauth3_operator::egress::Target {
            host: "api.github.com".into(),
            port: 443,
        },
        vec!["140.82.112.6".parse().expect("ip")],
    )]);
    let policy =
        serde_json::to_value(desired_network_policy(&exec, &config, &rules).expect("policy"))
            .expect("json");
    let bundle = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name(&pod), "namespace": agents},
        "type": "Opaque", "stringData": {"bundle.json": "{}"}
    });
    for obj in [&pod, &policy, &bundle] {
        apply(&sa, obj, true).await.unwrap_or_else(|e| {
            panic!(
                "the operator identity cannot apply {} {}: {e}",
                kind(obj),
                name(obj)
            )
        });
    }
    // And a credential proxy's (a proxied Permit's): its Pod, bundle Secret, Service and
    // NetworkPolicy, owned by the Permit with blockOwnerDeletion; it reads the Pod by name and
    // watches the labelled ones.
    let tls = proxy_tls("oauth3-proxy-p", &agents).expect("tls");
    let proxy = proxy_objects(
        &permit,
        &config,
        &ProxyStart {
            bundle_json: zeroize::Zeroizing::new("{}".into()),
            tls: &tls,
            token_digest: "sha256:t",
            spec_digest: "sha256:s",
            rules: &rules,
        },
    )
    .expect("proxy objects");
    let as_json = |o: serde_json::Result<Value>| o.expect("json");
    let mut secret = as_json(serde_json::to_value(&proxy.secret));
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    for obj in [
        as_json(serde_json::to_value(&proxy.pod)),
        secret,
        as_json(serde_json::to_value(&proxy.service)),
        as_json(serde_json::to_value(&proxy.policy)),
    ] {
        apply(&sa, &obj, true).await.unwrap_or_else(|e| {
            panic!(
                "the operator identity cannot apply the proxy's {} {}: {e}",
                kind(&obj),
                name(&obj)
            )
        });
    }
    Api::<Pod>::all(sa.clone())
        .list(&ListParams::default().labels(LABEL_PROXY))
        .await
        .expect("the operator identity can list (and so watch) proxy Pods");
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(sa.clone(), &agents)
        .get_opt("oauth3-proxy-p")
        .await
        .expect("the operator identity can read a proxy's Service");
    // It watches the sandbox Pods (how a run ended, why one does not start).
    let pods: Api<Pod> = Api::all(sa.clone());
    pods.list(&ListParams::default().labels(LABEL_EXECUTION))
        .await
        .expect("the operator identity can list (and so watch) sandbox Pods");
    // (The applies above were dry runs: the Pod does not exist, and reading it is allowed.)
    let read = Api::<Pod>::namespaced(sa.clone(), &agents)
        .get_opt(name(&pod))
        .await
        .expect("the operator identity can read a sandbox Pod");
    assert!(read.is_none());
    // What it must not do: read Secrets (by name or listing), change Permits.
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), &agents);
    assert!(forbidden(secrets.get("someone-elses").await));
    assert!(forbidden(secrets.list(&ListParams::default()).await));
    let all_secrets: Api<Secret> = Api::all(sa.clone());
    assert!(forbidden(all_secrets.list(&ListParams::default()).await));
    let permits: Api<Permit> = Api::namespaced(sa.clone(), &agents);
    assert!(forbidden(
        permits
            .patch(
                "p",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"validFor": "7d"}})),
            )
            .await
    ));
    assert!(forbidden(
        permits
            .create(
                &PostParams::default(),
                &Permit::new("mine", permit.spec.clone())
            )
            .await
    ));
    // Without Telegram it has no ConfigMap rights at all, even in its own namespace.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(sa, &ns);
    assert!(forbidden(cms.list(&ListParams::default()).await));
}

#[tokio::test]
async fn with_pools_the_operator_identity_can_run_a_sandbox_pool_and_reads_secrets_only_by_name() {
    use oauth3_operator::pool::{
        PoolConfig, desired_member, desired_member_secret, desired_pool_policy,
    };
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "chart-pool").await;
    let agents = namespace(&client, "chart-pool-agents").await;
    let (_, user) = install_identity(
        &client,
        &helm,
        &ns,
        &ns,
        &["--set", "sandbox.pools.enabled=true"],
    )
    .await;
    let pools: Api<oauth3_crds::SandboxPool> = Api::namespaced(client.clone(), &agents);
    let pool = pools
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "oauth3.dev/v1alpha1", "kind": "SandboxPool",
                "metadata": {"name": "warm"}, "spec": {"replicas": 1}
            }))
            .expect("pool"),
        )
        .await
        .expect("a pool");
    let runtime_class = json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": "kata-qemu-tdx"}, "handler": "kata-qemu-tdx"
    });
    apply(&client, &runtime_class, false)
        .await
        .expect("RuntimeClass kata-qemu-tdx");
    let config = PoolConfig {
        pod: PodLaunchConfig {
            operator_namespace: ns.clone(),
            ..PodLaunchConfig::default()
        },
        callback_base_url: "https://oauth3-callback.oauth3-system.svc:8443".into(),
        callback_ca_pem: None,
        check_in_within: Duration::from_secs(120),
    };
    let sa = client_as(&user, &[]).await;
    // What the pool controller writes: a member Pod, its Secret, the standby policy, status.
    let as_json = |o: serde_json::Result<Value>| o.expect("json");
    let member =
        desired_member(&pool, &config, "oauth3-pool-warm-bcd23", "sha256:t").expect("member");
    let mut stored = member.clone();
    stored.metadata.uid = Some("0a7d3a3e-0000-4000-8000-000000000001".into());
    let mut secret = as_json(serde_json::to_value(
        desired_member_secret(&stored, &config, "token").expect("secret"),
    ));
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    let policy = desired_pool_policy(&pool, &config.pod).expect("policy");
    for obj in [
        as_json(serde_json::to_value(&member)),
        secret,
        as_json(serde_json::to_value(&policy)),
    ] {
        apply(&sa, &obj, true).await.unwrap_or_else(|e| {
            panic!(
                "the operator identity cannot apply the pool's {} {}: {e}",
                kind(&obj),
                name(&obj)
            )
        });
    }
    let sa_pools: Api<oauth3_crds::SandboxPool> = Api::all(sa.clone());
    sa_pools
        .list(&ListParams::default())
        .await
        .expect("the operator identity can list (and so watch) SandboxPools");
    Api::<oauth3_crds::SandboxPool>::namespaced(sa.clone(), &agents)
        .patch_status(
            "warm",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": 0, "starting": 1, "claimed": 0}})),
        )
        .await
        .expect("the operator identity writes a pool's status");
    // It reads single Secrets by name (sealed ciphertext for a member's bundle), never lists.
    Api::<Secret>::namespaced(client.clone(), &agents)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "api-token"}, "type": "oauth3.dev/sealed",
                "stringData": {"sealed": "oauth3-sealed:v1:x"}
            }))
            .expect("secret"),
        )
        .await
        .expect("a sealed Secret");
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), &agents);
    secrets
        .get("api-token")
        .await
        .expect("the operator identity reads a sealed Secret by name with pools on");
    assert!(forbidden(secrets.list(&ListParams::default()).await));
    // And reads a claimed member's policy.
    Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(sa.clone(), &agents)
        .get_opt("oauth3-run-x")
        .await
        .expect("the operator identity can read an egress policy");
    // It still cannot change a pool's spec (admins own it).
    assert!(forbidden(
        Api::<oauth3_crds::SandboxPool>::namespaced(sa, &agents)
            .patch(
                "warm",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 50}})),
            )
            .await
    ));
}

#[tokio::test]
async fn the_gateway_works_with_exactly_the_charts_rbac_and_cannot_read_secrets() {
    use oauth3_tests::gateway::{Http, InProcessGateway, Tenant};
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "chart-gw").await;
    let tenant = Tenant::new(&client, "chart-gw-tenant").await;
    let key = hex::encode(crypto_box::SecretKey::from(DEV_KEY).public_key().as_bytes());
    let key_value = format!("gateway.enclavePublicKey={key}");
    let prefix = format!("{ns}-t-");
    let prefix_value = format!("gateway.signup.namespacePrefix={prefix}");
    let objects = render(
        &helm,
        &ns,
        &ns,
        &[
            "--set",
            "gateway.enabled=true",
            "--set",
            &key_value,
            "--set",
            "gateway.signup.enabled=true",
            "--set",
            &prefix_value,
        ],
    );
    let mut sa = None;
    for obj in objects
        .iter()
        .filter(|o| IDENTITY_KINDS.contains(&kind(o)) && name(o).contains("-gateway"))
    {
        if kind(obj) == "ServiceAccount" {
            sa = Some(name(obj).to_owned());
        }
        apply(&client, obj, false)
            .await
            .unwrap_or_else(|e| panic!("applying {} {}: {e}", kind(obj), name(obj)));
    }
    let sa = sa.expect("the chart renders the gateway's ServiceAccount");
    let groups = format!("system:serviceaccounts:{ns}");
    let identity = client_as(
        &format!("system:serviceaccount:{ns}:{sa}"),
        &["system:serviceaccounts", &groups, "system:authenticated"],
    )
    .await;
    let key_flag = format!("--enclave-public-key={key}");
    let prefix_flag = format!("--signup-namespace-prefix={prefix}");
    let gw = InProcessGateway::start(
        &identity,
        &[
            "--auth-cache-ttl=0s",
            "--long-poll=1s",
            &key_flag,
            &prefix_flag,
        ],
    )
    .await;
    let http = Http::new();
    // Self-service signup works with exactly these rights, and never makes an owner.
    let owner_try = http
        .post(
            &gw.url("/signup"),
            None,
            &json!({"name": "x", "role": "owner"}),
        )
        .await;
    assert_eq!(owner_try.status, 403, "{}", owner_try.text);
    let signed = http
        .post(&gw.url("/signup"), None, &json!({"name": "agent"}))
        .await;
    assert_eq!(signed.status, 200, "{}", signed.text);
    let token = signed.body["jwt"].as_str().expect("jwt");
    assert_eq!(signed.body["token"], token);
    assert_eq!(signed.body["api_key"], token);
    let tenant_ns = signed.body["tenant_id"].as_str().expect("tenant");
    assert!(tenant_ns.starts_with(&prefix), "{tenant_ns}");
    let me = http.get(&gw.url("/me"), Some(token)).await;
    assert_eq!(me.body["role"], "agent", "{}", me.text);
    assert_eq!(me.body["tenant_id"], tenant_ns);
    let asked = http
        .post(
            &gw.url("/permit"),
            Some(&tenant.agent),
            &json!({"description": "read issues", "capabilities": [{"type": "scoped-fetch",
                "name": "github", "base_url": "https://api.github.com", "scope": ["repos/o/r/issues"],
                "methods": ["GET"], "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"}}]}),
        )
        .await;
    assert_eq!(asked.status, 200, "{}", asked.text);
    let id = asked.body["request_id"].as_str().expect("id");
    let permit = asked.body["permit_id"].as_str().expect("permit");
    let sealed = http
        .post(
            &gw.url("/secrets"),
            Some(&tenant.owner),
            &json!({"name": "GITHUB_TOKEN", "value": SECRET}),
        )
        .await;
    assert_eq!(sealed.status, 200, "{}", sealed.text);
    // The long-poll's watch works under the chart's rights (held for the 1 s bound).
    let held = http
        .get(
            &gw.url(&format!("/execute/{id}/status?wait=true")),
            Some(&tenant.agent),
        )
        .await;
    assert_eq!(held.body["status"], "pending", "{}", held.text);
    let decided = http
        .post(
            &gw.url(&format!("/approve/{id}")),
            Some(&tenant.owner),
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!(decided.status, 200, "{}", decided.text);
    let run = http
        .post(
            &gw.url("/execute"),
            Some(&tenant.agent),
            &json!({"permit_id": permit, "code": "return 1"}),
        )
        .await;
    assert_eq!(run.status, 200, "{}", run.text);
    let actions = http
        .get(
            &gw.url(&format!("/session/{permit}/actions")),
            Some(&tenant.agent),
        )
        .await;
    assert_eq!(actions.status, 200, "{}", actions.text);
    // A Telegram sign-in link decides under the gateway's own identity: its permits/status
    // patch is what records the owner's decision and clears the link.
    let second = http
        .post(
            &gw.url("/permit"),
            Some(&tenant.agent),
            &json!({"description": "read pulls", "capabilities": [{"type": "scoped-fetch",
                "name": "github", "base_url": "https://api.github.com", "scope": ["repos/o/r/pulls"],
                "methods": ["GET"]}]}),
        )
        .await;
    assert_eq!(second.status, 200, "{}", second.text);
    let second = second.body["permit_id"]
        .as_str()
        .expect("permit")
        .to_owned();
    let admin_permits: Api<Permit> = Api::namespaced(client.clone(), &tenant.ns);
    let current = admin_permits.get(&second).await.expect("permit");
    let digest = oauth3_crds::spec_digest(&current.spec).expect("digest");
    let (code, record) = oauth3_operator::web_sign_in::mint(
        "telegram:7",
        oauth3_crds::WebSignInRequest::Permit,
        &digest,
        k8s_openapi::jiff::Timestamp::now(),
    );
    admin_permits
        .patch_status(
            &second,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"webSignIn": record}})),
        )
        .await
        .expect("sign-in record");
    let signed_in = http
        .post(
            &gw.url(&format!("/signin/{}/{second}", tenant.ns)),
            None,
            &json!({"action": "approve", "code": code}),
        )
        .await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.text);
    assert_eq!(signed_in.body["by"], "telegram:7", "{}", signed_in.text);
    // What the gateway's identity must never do: read Secrets, or change a Permit's spec.
    let secrets: Api<Secret> = Api::namespaced(identity.clone(), &tenant.ns);
    assert!(forbidden(secrets.get("github-token").await));
    assert!(forbidden(secrets.list(&ListParams::default()).await));
    // It may patch a Permit only to set the proxy wake annotation (the admission policy
    // refuses everything else; policies take effect a moment after they are created).
    let permits: Api<Permit> = Api::namespaced(identity.clone(), &tenant.ns);
    let refused = |r: Result<Permit, kube::Error>| matches!(r, Err(kube::Error::Api(ref s)) if s.is_forbidden() || s.is_invalid());
    oauth3_test_support::wait_until(
        "the gateway's identity is refused a spec change",
        Duration::from_secs(30),
        || {
            let permits = permits.clone();
            async move {
                let r = permits
                    .patch(
                        permit,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"spec": {"description": "changed"}})),
                    )
                    .await;
                if refused(r) { Ok(()) } else { Err("accepted") }
            }
        },
    )
    .await;
    for change in [
        json!({"metadata": {"labels": {"oauth3.dev/request-id": "forged"}}}),
        json!({"metadata": {"annotations": {"oauth3.dev/other": "x"}}}),
    ] {
        let r = permits
            .patch(permit, &PatchParams::default(), &Patch::Merge(&change))
            .await;
        assert!(refused(r), "the gateway's identity changed {change}");
    }
    let woken = permits
        .patch(
            permit,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {
                oauth3_crds::constants::ANNOTATION_PROXY_WAKE: "2030-01-01T00:00:00Z"}}})),
        )
        .await
        .expect("the gateway may set the wake annotation");
    assert_ne!(
        woken.spec.description, "changed",
        "the spec was never changed"
    );
}
