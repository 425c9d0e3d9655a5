//! Test support for tiers that need a Kubernetes API server: a client for the local control
//! plane started by `tests/cluster/control-plane.sh`, a fresh namespace per test, and CRD
//! installation (server-side apply, then wait until Established).
//!
//! Tests find the cluster through `TEST_KUBECONFIG`. Without it they skip with a message, unless
//! `REQUIRE_K8S=1` is set (as `make test` and CI do), in which case a missing cluster fails the
//! test instead of passing silently.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use tokio::sync::OnceCell;

pub mod bench;
pub mod gateway;
pub mod kwok;
pub mod node;
pub mod operator;
pub mod proxy;
pub mod telegram;

/// Field manager the test harness uses for what it applies.
pub const TEST_FIELD_MANAGER: &str = "oauth3-tests";

/// A client for the local control plane, or `None` (test skipped) when none is configured.
///
/// # Panics
/// When `REQUIRE_K8S=1` and `TEST_KUBECONFIG` is unset or unusable: a required tier must never
/// be skipped silently.
pub async fn client_or_skip() -> Option<Client> {
    let required = std::env::var("REQUIRE_K8S").is_ok_and(|v| v == "1");
    let Some(path) = std::env::var_os("TEST_KUBECONFIG") else {
        assert!(
            !required,
            "REQUIRE_K8S=1 but TEST_KUBECONFIG is not set: start the control plane with \
             `make cluster-up` or run tests through `make test`"
        );
        eprintln!("skipping: TEST_KUBECONFIG not set (run `make test` to start a control plane)");
        return None;
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("reading TEST_KUBECONFIG {}: {e}", path.to_string_lossy()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("building a client config from TEST_KUBECONFIG");
    let client = Client::try_from(config).expect("building a client");
    install_crds(&client).await;
    Some(client)
}

/// A client for the same cluster that acts as `user` (and `groups`) through impersonation, so a
/// test can show what an agent's or owner's identity can and cannot do under RBAC.
///
/// # Panics
/// Without `TEST_KUBECONFIG` (call [`client_or_skip`] first).
pub async fn client_as(user: &str, groups: &[&str]) -> Client {
    let path = std::env::var_os("TEST_KUBECONFIG").expect("TEST_KUBECONFIG");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    config.auth_info.impersonate = Some(user.to_owned());
    config.auth_info.impersonate_groups =
        (!groups.is_empty()).then(|| groups.iter().map(|g| (*g).to_owned()).collect());
    Client::try_from(config).expect("impersonating client")
}

static CRDS: OnceCell<()> = OnceCell::const_new();

/// Installs (server-side apply, forced) every oauth3 CRD once per test process and waits until
/// each is Established.
pub async fn install_crds(client: &Client) {
    CRDS.get_or_init(|| async {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let pp = PatchParams::apply(TEST_FIELD_MANAGER).force();
        for crd in oauth3_crds::crds() {
            let name = crd.metadata.name.clone().expect("CRD has a name");
            api.patch(&name, &pp, &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
            let established = await_condition(api.clone(), &name, conditions::is_crd_established());
            tokio::time::timeout(Duration::from_secs(60), established)
                .await
                .unwrap_or_else(|_| panic!("CRD {name} not Established within 60s"))
                .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"));
        }
        // Discovery of a new group can lag Established by a moment; wait until the API serves it.
        let permits: Api<oauth3_crds::Permit> = Api::all(client.clone());
        for _ in 0..100 {
            if permits.list(&Default::default()).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("oauth3.dev resources not served within 10s of being Established");
    })
    .await;
}

/// Creates a namespace with a unique name starting with `prefix` and returns its name.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let suffix: u32 = rand::random();
    let name = format!("{prefix}-{suffix:08x}");
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("oauth3.dev/test".to_owned(), "true".to_owned())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    name
}

/// One `npm ci` at a time in this process.
static NPM: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Installs the npm packages of `dir` (a directory under `tests/` with a lock file) with
/// `npm ci`, unless `node_modules/<package>/package.json` is there already.
///
/// # Panics
/// When npm fails.
pub fn npm_ci_once(dir: &std::path::Path, package: &str) {
    let _guard = NPM.lock().unwrap_or_else(|e| e.into_inner());
    if dir
        .join("node_modules")
        .join(package)
        .join("package.json")
        .exists()
    {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("running npm ci (node and npm must be installed)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// Where the repository's top-level directory is.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives in the repository")
        .to_path_buf()
}

static BUILD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Path of a binary of this workspace (e.g. `oauth3-sandbox-runner` of package
/// `oauth3-sandbox-runner`), built on first use if it is missing, in the same profile and
/// target directory as the running test.
///
/// # Panics
/// When the binary cannot be built.
pub fn workspace_binary(package: &str, bin: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<bin>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile directory");
    let path = dir.join(bin);
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-q", "-p", package, "--bin", bin])
            .current_dir(repo_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building {bin} failed");
    }
    path
}

/// A CA and a leaf for 127.0.0.1 written as `tls.crt`, `tls.key` and `ca.crt` (the layout of a
/// cert-manager `kubernetes.io/tls` Secret) under `dir`.
///
/// # Panics
/// When the files cannot be written.
pub fn callback_certificate(dir: &std::path::Path) {
    callback_certificate_for(dir, "127.0.0.1");
}

/// [`callback_certificate`] for the address or name `name`.
///
/// # Panics
/// When the files cannot be written.
pub fn callback_certificate_for(dir: &std::path::Path, name: &str) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "oauth3 callback CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec![name.to_owned()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf cert");
    std::fs::create_dir_all(dir).expect("tls dir");
    std::fs::write(dir.join("tls.crt"), leaf.pem()).expect("tls.crt");
    std::fs::write(dir.join("tls.key"), leaf_key.serialize_pem()).expect("tls.key");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("ca.crt");
}

/// Seals `value` as the sandbox secret `name` of namespace `ns` to the development enclave key
/// `dev_key` (what `kubectl oauth3 seal` does for an owner) and applies it as the Kubernetes
/// Secret `secret`.
///
/// # Panics
/// When sealing or the apply fails.
pub async fn apply_dev_sealed_secret(
    client: &Client,
    ns: &str,
    secret: &str,
    name: &str,
    value: &str,
    dev_key: [u8; 32],
) {
    let public = crypto_box::SecretKey::from(dev_key).public_key();
    let sealed =
        oauth3_operator::plugin::sealed_secret(ns, name, value, public.as_bytes()).expect("sealed");
    apply_secret_as(client, ns, secret, sealed).await;
}

/// Applies the sealed Secret of the oauth2 credential `name` (object name `secret`): the token
/// set `token_set` sealed to the public key of the development key `dev_key`.
///
/// # Panics
/// When the token set does not check out or the API server refuses it.
pub async fn apply_dev_oauth2_secret(
    client: &Client,
    ns: &str,
    secret: &str,
    name: &str,
    token_set: &str,
    dev_key: [u8; 32],
) {
    let public = crypto_box::SecretKey::from(dev_key).public_key();
    let sealed =
        oauth3_operator::plugin::sealed_oauth2_secret(ns, name, token_set, public.as_bytes())
            .expect("sealed");
    apply_secret_as(client, ns, secret, sealed).await;
}

/// Applies `sealed` as the Secret `secret` of `ns` (server-side, as the test harness).
async fn apply_secret_as(
    client: &Client,
    ns: &str,
    secret: &str,
    mut sealed: k8s_openapi::api::core::v1::Secret,
) {
    sealed.metadata.name = Some(secret.to_owned());
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .patch(
            secret,
            &PatchParams::apply(TEST_FIELD_MANAGER),
            &Patch::Apply(&sealed),
        )
        .await
        .expect("sealed secret applied");
}

/// Applies (server-side, forced) a RuntimeClass `name` whose handler is `name`, so Pods naming
/// it are admitted.
///
/// # Panics
/// When the API server refuses it.
pub async fn ensure_runtime_class(client: &Client, name: &str) {
    use k8s_openapi::api::node::v1::RuntimeClass;
    let rc: RuntimeClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": name}, "handler": name
    }))
    .expect("runtime class");
    Api::<RuntimeClass>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply(TEST_FIELD_MANAGER).force(),
            &Patch::Apply(&rc),
        )
        .await
        .unwrap_or_else(|e| panic!("applying RuntimeClass {name}: {e}"));
}

/// A minimal HTTP/1.1 POST of `body` as JSON to a plain-HTTP loopback `url`, with
/// `Authorization: Bearer <token>` unless `token` is empty; returns the status code.
///
/// # Panics
/// When `url` is not `http://host:port/path` or the exchange fails.
pub async fn post_json(url: &str, token: &str, body: &serde_json::Value) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let body = body.to_string();
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    let req = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("read");
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code")
}

/// Creates Execution `name` with `spec` (JSON of an `ExecutionSpec`) in `ns` and waits (at
/// most a minute) until it has ended; returns it as it ended.
///
/// # Panics
/// When the spec is not an ExecutionSpec, the API server refuses, or it does not end in time.
pub async fn run_execution(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> oauth3_crds::Execution {
    use oauth3_crds::{Execution, ExecutionSpec};
    let spec: ExecutionSpec = serde_json::from_value(spec).expect("an ExecutionSpec");
    let api: Api<Execution> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &Execution::new(name, spec))
        .await
        .expect("execution created");
    wait_ended(client, ns, name).await
}

/// Waits (at most a minute) until Execution `name` in `ns` has ended; returns it as it ended.
///
/// # Panics
/// When it does not end in time.
pub async fn wait_ended(client: &Client, ns: &str, name: &str) -> oauth3_crds::Execution {
    use oauth3_crds::{Execution, ExecutionPhase};
    let api: Api<Execution> = Api::namespaced(client.clone(), ns);
    oauth3_test_support::wait_until(
        &format!("Execution {name} ended"),
        std::time::Duration::from_secs(60),
        || async {
            match api.get(name).await {
                Ok(e)
                    if e.status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .is_some_and(ExecutionPhase::is_terminal) =>
                {
                    Ok(e)
                }
                Ok(e) => Err(format!("{:?}", e.status)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

/// The Permit `name` in `ns` (one capability `api`: `GET https://api.github.com/repos/o/r/issues`
/// with the sealed `API_TOKEN`), approved by the owner with the plugin.
///
/// # Panics
/// When it cannot be created or is not approved within 30 s.
pub async fn approved_permit(client: &Client, ns: &str, name: &str) {
    let permits: Api<oauth3_crds::Permit> = Api::namespaced(client.clone(), ns);
    let spec: oauth3_crds::PermitSpec = serde_json::from_value(serde_json::json!({
        "description": "issues on GitHub",
        "capabilities": [{"name": "api", "baseUrl": "https://api.github.com",
            "paths": ["/repos/o/r/issues"], "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}}],
        "secrets": ["API_TOKEN"], "validFor": "1h"
    }))
    .expect("an approved Permit");
    permits
        .create(
            &kube::api::PostParams::default(),
            &oauth3_crds::Permit::new(name, spec),
        )
        .await
        .expect("an approved Permit");
    let phase = |want: oauth3_crds::PermitPhase| {
        let permits = permits.clone();
        async move {
            for _ in 0..300 {
                let p = permits.get(name).await.expect("an approved Permit");
                if p.status.as_ref().and_then(|s| s.phase) == Some(want) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("Permit not {want:?} within 30 s");
        }
    };
    phase(oauth3_crds::PermitPhase::Pending).await;
    let out = std::process::Command::new(workspace_binary("oauth3-operator", "kubectl-oauth3"))
        .env(
            "KUBECONFIG",
            std::env::var("TEST_KUBECONFIG").expect("an approved Permit"),
        )
        .args(["-n", ns, "approve", name])
        .output()
        .expect("an approved Permit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    phase(oauth3_crds::PermitPhase::Approved).await;
}

/// Runs the `kubectl oauth3` plugin binary in namespace `ns` against the test cluster
/// (`TEST_KUBECONFIG`), as an owner at a terminal would.
///
/// # Panics
/// When the binary cannot be run or the harness set no kubeconfig.
pub fn plugin(ns: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(workspace_binary("oauth3-operator", "kubectl-oauth3"))
        .env(
            "KUBECONFIG",
            std::env::var("TEST_KUBECONFIG").expect("kubeconfig"),
        )
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("plugin runs")
}

/// Applies the chart's user roles (`oauth3-agent`, `oauth3-owner`) exactly as they ship.
///
/// # Panics
/// When the file cannot be read or the API server refuses a role.
pub async fn install_user_roles(client: &Client) {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use serde::Deserialize as _;
    let text =
        std::fs::read_to_string(repo_root().join("charts/oauth3/templates/user-clusterroles.yaml"))
            .expect("roles file");
    let api: Api<ClusterRole> = Api::all(client.clone());
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let role = ClusterRole::deserialize(doc).expect("a ClusterRole");
        let name = role.metadata.name.clone().expect("name");
        api.patch(
            &name,
            &PatchParams::apply(TEST_FIELD_MANAGER).force(),
            &Patch::Apply(&role),
        )
        .await
        .expect("role applied");
    }
}

/// Binds the ClusterRole `role` to `subject` in `ns` (a RoleBinding named after the role).
///
/// # Panics
/// When the API server refuses the binding.
pub async fn bind(client: &Client, ns: &str, role: &str, subject: serde_json::Value) {
    bind_named(client, ns, role, role, subject).await;
}

/// Binds the ClusterRole `role` to `subject` in `ns` with a RoleBinding named `binding`.
///
/// # Panics
/// When the API server refuses the binding.
pub async fn bind_named(
    client: &Client,
    ns: &str,
    binding: &str,
    role: &str,
    subject: serde_json::Value,
) {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let rb: RoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": binding, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [subject]
    }))
    .expect("binding");
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &rb)
        .await
        .expect("binding created");
}
