//! Credential proxies under the pod launcher (kwok tier): on a real kube-apiserver with a
//! kwok-managed fake Node, an approved proxied Permit gets its Pod, bundle Secret, Service and
//! NetworkPolicy, each as designed and owned by the Permit; the Pod going Ready shows
//! `status.proxy` Ready with the Service endpoint and the certificate the proxy presents; an
//! operator restarted adopts the running proxy (no second Pod, same token); a revocation
//! deletes everything; a proxy Pod that ends after its idle timeout shows `Idle` and leaves
//! nothing behind.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use oauth3_crds::constants::{LABEL_PROXY, proxy_object_name};
use oauth3_crds::{Permit, PermitPhase, ProxyPhase, ProxyStatus};
use oauth3_operator::launcher::pod::{PodLaunchConfig, RUNNER_UID};
use oauth3_operator::proxy::pods::{PROXY_PORT, TLS_CERT_FILE, TLS_KEY_FILE};
use oauth3_protocol::callback::token_digest;
use oauth3_protocol::proxy::EXIT_IDLE;
use oauth3_test_support::{PermitFixture, wait_until};
use oauth3_tests::kwok::{Kwok, bind_pod};
use oauth3_tests::operator::{InProcessOperator, Launcher};
use oauth3_tests::{
    apply_dev_sealed_secret, client_or_skip, ensure_runtime_class, namespace, workspace_binary,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// The operator's leader-election Lease in the namespace it runs on.
const LEASE: &str = "oauth3-operator";
const SECRET: &str = "sk-proxy-pods-91c3";

struct Env {
    client: kube::Client,
    kwok: Kwok,
    ns: String,
    config: PodLaunchConfig,
}

impl Env {
    async fn new(tag: &str) -> Option<Env> {
        let client = client_or_skip().await?;
        let kwok = Kwok::start(&client, tag).await?;
        let ns = namespace(&client, tag).await;
        let config = PodLaunchConfig::default();
        ensure_runtime_class(&client, &config.runtime_class_name).await;
        apply_dev_sealed_secret(&client, &ns, "api-token", "API_TOKEN", SECRET, [5u8; 32]).await;
        Some(Env {
            client,
            kwok,
            ns,
            config,
        })
    }

    async fn operator(&self) -> InProcessOperator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        InProcessOperator::start(
            &self.client,
            &self.ns,
            listener,
            Launcher::Pod(Box::new(self.config.clone())),
            Duration::from_secs(30),
            Duration::from_secs(3600),
        )
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn plugin(&self, args: &[&str]) {
        let out = std::process::Command::new(workspace_binary("oauth3-operator", "kubectl-oauth3"))
            .env(
                "KUBECONFIG",
                std::env::var("TEST_KUBECONFIG").expect("kubeconfig"),
            )
            .args(["-n", &self.ns])
            .args(args)
            .output()
            .expect("plugin runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates proxied Permit `name` and approves it as its owner.
    async fn proxied_permit(&self, name: &str) -> Permit {
        let permit = PermitFixture::api("https://api.example.com/v1")
            .with(json!({"paths": ["/items"]}))
            .secret("API_TOKEN")
            .spec_fields(json!({"description": "proxy pods", "validFor": "1h",
                "proxy": {"enabled": true, "callers": ["system:serviceaccount:x:coder"]}}))
            .permit(name);
        self.api::<Permit>()
            .create(&PostParams::default(), &permit)
            .await
            .expect("permit");
        self.wait_permit(name, "Pending", |p| phase(p) == Some(PermitPhase::Pending))
            .await;
        self.plugin(&["approve", name]);
        self.wait_permit(name, "Approved", |p| {
            phase(p) == Some(PermitPhase::Approved)
        })
        .await
    }

    async fn wait_permit(&self, name: &str, what: &str, pred: impl Fn(&Permit) -> bool) -> Permit {
        let api: Api<Permit> = self.api();
        wait_until(&format!("Permit {name} {what}"), WAIT, || async {
            match api.get(name).await {
                Ok(p) if pred(&p) => Ok(p),
                Ok(p) => Err(format!("{:?}", p.status)),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    async fn pod_created(&self, object: &str) -> Pod {
        let pods: Api<Pod> = self.api();
        wait_until("the proxy Pod created", WAIT, || async {
            pods.get_opt(object)
                .await
                .expect("read pod")
                .ok_or("no Pod")
        })
        .await
    }

    /// Binds the proxy Pod to the kwok Node (the test is the scheduler) and waits until it is
    /// Running and Ready.
    async fn run_pod(&self, object: &str) {
        bind_pod(&self.client, &self.ns, object, &self.kwok.node).await;
        let pods: Api<Pod> = self.api();
        wait_until("the proxy Pod Running and Ready", WAIT, || async {
            let status = pods.get(object).await.ok().and_then(|p| p.status);
            let ready = status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let running = status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running && ready {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        })
        .await;
    }

    /// Waits until the Pod, bundle Secret, Service and NetworkPolicy are all gone.
    async fn objects_gone(&self, object: &str) {
        let (pods, secrets, services, policies) = (
            self.api::<Pod>(),
            self.api::<Secret>(),
            self.api::<Service>(),
            self.api::<NetworkPolicy>(),
        );
        wait_until("the proxy's objects deleted", WAIT, || async {
            let pod = pods.get_opt(object).await.expect("pod");
            let secret = secrets.get_opt(object).await.expect("secret");
            let service = services.get_opt(object).await.expect("service");
            let policy = policies.get_opt(object).await.expect("policy");
            let left = [
                pod.is_some().then_some("Pod"),
                secret.is_some().then_some("Secret"),
                service.is_some().then_some("Service"),
                policy.is_some().then_some("NetworkPolicy"),
            ];
            let left: Vec<&str> = left.into_iter().flatten().collect();
            if left.is_empty() { Ok(()) } else { Err(left) }
        })
        .await;
    }

    async fn events(&self, name: &str) -> Vec<Event> {
        self.api::<Event>()
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect()
    }
}

fn phase(p: &Permit) -> Option<PermitPhase> {
    p.status.as_ref().and_then(|s| s.phase)
}

fn proxy(p: &Permit) -> Option<ProxyStatus> {
    p.status.as_ref().and_then(|s| s.proxy.clone())
}

fn owner_is(meta: &kube::api::ObjectMeta, permit: &Permit) {
    let owners = meta.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owners
            .iter()
            .map(|o| (o.kind.as_str(), o.uid.as_str(), o.controller))
            .collect::<Vec<_>>(),
        [(
            "Permit",
            permit.metadata.uid.as_deref().expect("uid"),
            Some(true)
        )],
        "{:?} is owned by its Permit",
        meta.name
    );
}

/// The serve bundle in the proxy's bundle Secret (what the proxy in the Pod reads).
async fn bundle(env: &Env, object: &str) -> (Value, Secret) {
    let secret = env
        .api::<Secret>()
        .get(object)
        .await
        .expect("bundle secret");
    let data = secret.data.clone().expect("data");
    let bundle = serde_json::from_slice(&data["bundle.json"].0).expect("bundle json");
    (bundle, secret)
}

/// A TLS handshake between a server with `cert_pem` + `key_pem` and a client trusting only
/// `trusted_pem`, for `name`.
async fn handshake(
    cert_pem: &str,
    key_pem: &str,
    trusted_pem: &str,
    name: &str,
) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trusted_pem.as_bytes()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let served = tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let connected = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
        .connect(server_name, tcp)
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    served.abort();
    connected
}

#[tokio::test]
async fn an_approved_proxied_permit_gets_a_hardened_pod_behind_a_service_that_survives_an_operator_restart_and_goes_with_the_revocation()
 {
    let Some(env) = Env::new("proxy-pods").await else {
        return;
    };
    let op = env.operator().await;
    let permit = env.proxied_permit("issues").await;
    let object = proxy_object_name("issues");
    let pod = env.pod_created(&object).await;

    // The Pod: the hardened confidential sandbox, running `serve` over HTTPS, no deadline.
    let spec = pod.spec.clone().expect("pod spec");
    assert_eq!(
        spec.runtime_class_name.as_deref(),
        Some(env.config.runtime_class_name.as_str())
    );
    assert_eq!(
        spec.active_deadline_seconds, None,
        "a proxy runs until stopped"
    );
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.enable_service_links, Some(false));
    let psc = spec.security_context.clone().expect("pod security context");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(RUNNER_UID));
    let container = &spec.containers[0];
    let sc = container
        .security_context
        .clone()
        .expect("security context");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    let args = container.args.clone().expect("args");
    assert_eq!(args[0], "serve", "{args:?}");
    for pair in [
        ["--listen", "0.0.0.0:8443"],
        ["--tls-cert", "/var/run/oauth3/bundle/tls.crt"],
        ["--tls-key", "/var/run/oauth3/bundle/tls.key"],
        ["--sealed-dir", "/var/run/oauth3/sealed"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    assert!(
        container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.tcp_socket.as_ref())
            .is_some(),
        "ready when it listens"
    );
    let volumes = spec.volumes.clone().unwrap_or_default();
    let sealed: Vec<_> = volumes
        .iter()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.secret.as_ref().map(|s| s.name.clone()))
        .collect();
    assert_eq!(sealed, ["api-token"], "only the Permit's sealed Secret");
    owner_is(&pod.metadata, &permit);

    // The bundle Secret: the serve bundle with a callback token (only its digest in status),
    // and the proxy's TLS key and certificate.
    let (serve, secret) = bundle(&env, &object).await;
    owner_is(&secret.metadata, &permit);
    assert_eq!(serve["permit"]["name"], "issues");
    let token = serve["callback"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let data = secret.data.clone().expect("data");
    let key_pem = String::from_utf8(data[TLS_KEY_FILE].0.clone()).expect("key");
    let cert_pem = String::from_utf8(data[TLS_CERT_FILE].0.clone()).expect("cert");
    assert!(key_pem.contains("PRIVATE KEY"));

    // The Service in front of it, selecting exactly the Pod's label.
    let service = env.api::<Service>().get(&object).await.expect("service");
    owner_is(&service.metadata, &permit);
    let sspec = service.spec.clone().expect("service spec");
    assert_eq!(sspec.type_.as_deref(), Some("ClusterIP"));
    let selector = sspec.selector.clone().expect("selector");
    assert_eq!(selector.get(LABEL_PROXY), Some(&object));
    let pod_labels = pod.metadata.labels.clone().expect("labels");
    for (k, v) in &selector {
        assert_eq!(pod_labels.get(k), Some(v), "the Service selects the Pod");
    }
    let ports = sspec.ports.clone().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, PROXY_PORT);

    // The NetworkPolicy: ingress on 8443 from the gateway's Pods and the Permit's namespace,
    // egress as a run's.
    let policy = env
        .api::<NetworkPolicy>()
        .get(&object)
        .await
        .expect("network policy");
    owner_is(&policy.metadata, &permit);
    let np = serde_json::to_value(policy.spec.expect("policy spec")).expect("json");
    assert_eq!(np["podSelector"]["matchLabels"][LABEL_PROXY], object);
    assert_eq!(
        np["ingress"],
        json!([{"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.config.operator_namespace}},
             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "oauth3-gateway"}}},
            {"podSelector": {}}],
            "ports": [{"protocol": "TCP", "port": 8443}]}])
    );
    assert_eq!(
        np["egress"].as_array().map(Vec::len),
        Some(3),
        "DNS, the callback, public 443: {np}"
    );

    // Starting until the node runs it, then Ready with the endpoint and the certificate.
    let starting =
        proxy(&env.api::<Permit>().get("issues").await.expect("permit")).expect("status.proxy");
    assert_eq!(starting.phase, ProxyPhase::Starting);
    env.run_pod(&object).await;
    let ready = env
        .wait_permit("issues", "proxy Ready", |p| {
            proxy(p).is_some_and(|s| s.phase == ProxyPhase::Ready)
        })
        .await;
    let status = proxy(&ready).expect("status.proxy");
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("https://{object}.{}.svc:8443", env.ns).as_str())
    );
    assert_eq!(status.certificate.as_deref(), Some(cert_pem.as_str()));
    assert_eq!(
        status.handle.as_deref(),
        Some(format!("pod/{object}").as_str())
    );
    assert_eq!(
        status.token_digest.as_deref(),
        Some(token_digest(&token).as_str())
    );
    // The certificate in status is what a client trusts: it verifies the key in the bundle
    // Secret for the Service's names (a TLS handshake), and for no other name.
    for name in [
        format!("{object}.{}.svc", env.ns),
        format!("{object}.{}.svc.cluster.local", env.ns),
    ] {
        handshake(
            &cert_pem,
            &key_pem,
            &status.certificate.clone().expect("certificate"),
            &name,
        )
        .await
        .unwrap_or_else(|e| panic!("TLS to {name}: {e}"));
    }
    assert!(
        handshake(&cert_pem, &key_pem, &cert_pem, "api.example.com")
            .await
            .is_err(),
        "not valid for another name"
    );
    // No secret (the sealed one's plaintext, the callback token, the TLS key) in status or
    // Events.
    let events = env.events("issues").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("ProxyStarted")),
        "{events:?}"
    );
    let shown = format!(
        "{}{}",
        serde_json::to_string(&ready.status).expect("json"),
        serde_json::to_string(&events).expect("json")
    );
    for secret in [SECRET, token.as_str(), key_pem.trim()] {
        assert!(!shown.contains(secret), "a secret in status or Events");
    }

    // The operator restarts: it adopts the running proxy (same Pod, same token), makes no
    // second one and leaves the status as it was.
    let leases: Api<Lease> = env.api();
    let holder = |lease: &Lease| lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
    let before = holder(&leases.get(LEASE).await.expect("the operator's Lease"));
    op.stop().await;
    let op = env.operator().await;
    // Once the new operator leads, its proxy controller has looked at every Permit.
    wait_until("the restarted operator leading", WAIT, || async {
        let now = leases.get(LEASE).await.ok().and_then(|l| holder(&l));
        if now.is_some() && now != before {
            Ok(())
        } else {
            Err(now)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = env
        .api::<Pod>()
        .get(&object)
        .await
        .expect("pod still there");
    assert_eq!(after.metadata.uid, pod.metadata.uid, "the same Pod");
    assert_eq!(after.metadata.deletion_timestamp, None);
    let pods = env
        .api::<Pod>()
        .list(&ListParams::default().labels(LABEL_PROXY))
        .await
        .expect("pods");
    assert_eq!(pods.items.len(), 1, "no second proxy Pod");
    let (serve_after, _) = bundle(&env, &object).await;
    assert_eq!(
        serve_after["callback"]["token"],
        token.as_str(),
        "the same token"
    );
    let still = env.api::<Permit>().get("issues").await.expect("permit");
    assert_eq!(proxy(&still), Some(status), "status unchanged");

    // The owner revokes: Pod, Secret, Service and policy are deleted, status says why.
    env.plugin(&["revoke", "issues"]);
    let revoked = env
        .wait_permit("issues", "proxy Stopped Revoked", |p| {
            proxy(p).is_some_and(|s| {
                s.phase == ProxyPhase::Stopped && s.reason.as_deref() == Some("Revoked")
            })
        })
        .await;
    let status = proxy(&revoked).expect("status.proxy");
    assert_eq!(status.token_digest, None, "the token is no longer accepted");
    assert_eq!(status.endpoint, None);
    env.objects_gone(&object).await;

    op.stop().await;
    env.kwok.stop().await;
}

#[tokio::test]
async fn a_proxy_pod_that_idled_out_shows_idle_and_leaves_nothing_behind() {
    let Some(env) = Env::new("proxy-pods-idle").await else {
        return;
    };
    let op = env.operator().await;
    env.proxied_permit("sleepy").await;
    let object = proxy_object_name("sleepy");
    env.pod_created(&object).await;
    env.run_pod(&object).await;
    env.wait_permit("sleepy", "proxy Ready", |p| {
        proxy(p).is_some_and(|s| s.phase == ProxyPhase::Ready)
    })
    .await;

    // The proxy exits after its idle timeout (the test writes what the kubelet would).
    let status = json!({"status": {"phase": "Succeeded", "containerStatuses": [{
        "name": "runner", "image": env.config.image, "imageID": "", "ready": false,
        "restartCount": 0,
        "state": {"terminated": {"exitCode": i32::from(EXIT_IDLE), "reason": "Completed",
            "message": "stopped: no call for 900 s"}}}]}});
    env.api::<Pod>()
        .patch_status(&object, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .expect("pod status");
    let idle = env
        .wait_permit("sleepy", "proxy Stopped Idle", |p| {
            proxy(p).is_some_and(|s| s.phase == ProxyPhase::Stopped)
        })
        .await;
    let status = proxy(&idle).expect("status.proxy");
    assert_eq!(status.reason.as_deref(), Some("Idle"), "{status:?}");
    assert_eq!(status.token_digest, None);
    env.objects_gone(&object).await;
    // Not started again until woken.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.api::<Pod>()
            .get_opt(&object)
            .await
            .expect("read pod")
            .is_none(),
        "an idle proxy stays stopped"
    );
    let events = env.events("sleepy").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("ProxyStopped")),
        "{events:?}"
    );
    op.stop().await;
    env.kwok.stop().await;
}
