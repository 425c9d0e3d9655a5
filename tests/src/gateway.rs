//! The gateway run in-process for tests (the same `app` and `serve` as the binary, on a
//! loopback port), tenants made of real ServiceAccounts with real bound tokens (TokenRequest;
//! the control plane signs them with its service-account key), and a small JSON client.

use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use oauth3_gateway::{Config, Gateway, app, serve};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::{bind, install_user_roles, namespace};

/// A running gateway.
pub struct InProcessGateway {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
}

impl InProcessGateway {
    /// Starts a gateway acting as `client` with these extra flags (`--public-url` is set to its
    /// own address unless given).
    ///
    /// # Panics
    /// When the flags are refused or the listener cannot be bound.
    pub async fn start(client: &Client, flags: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("gateway listener");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let mut args = vec!["oauth3-gateway".to_owned()];
        if !flags.iter().any(|f| f.starts_with("--public-url")) {
            args.push(format!("--public-url={base}"));
        }
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let config = Config::try_parse_from(&args).unwrap_or_else(|e| panic!("gateway flags: {e}"));
        let gateway = Gateway::new(client.clone(), &config).expect("gateway set up");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            serve(listener, app(gateway), shutdown)
                .await
                .expect("gateway serves");
        });
        Self {
            base,
            stop: Some(stop),
        }
    }

    /// The absolute URL of `path` (returned as is when it is already absolute).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }
}

impl Drop for InProcessGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A namespace with an agent (`oauth3-agent`) and an owner (`oauth3-owner`), each a real
/// ServiceAccount with a bound token.
pub struct Tenant {
    /// The namespace.
    pub ns: String,
    /// The agent's token.
    pub agent: String,
    /// The owner's token.
    pub owner: String,
}

impl Tenant {
    /// Creates the namespace (name starting with `prefix`), the roles, both accounts and their
    /// bindings, and mints a one-hour token for each.
    ///
    /// # Panics
    /// When any of it is refused.
    pub async fn new(client: &Client, prefix: &str) -> Self {
        install_user_roles(client).await;
        let ns = namespace(client, prefix).await;
        for (sa, role) in [("agent", "oauth3-agent"), ("owner", "oauth3-owner")] {
            bind(
                client,
                &ns,
                role,
                json!({"kind": "ServiceAccount", "name": sa, "namespace": ns}),
            )
            .await;
        }
        let agent = service_account_token(client, &ns, "agent").await;
        let owner = service_account_token(client, &ns, "owner").await;
        Self { ns, agent, owner }
    }
}

/// Creates ServiceAccount `name` in `ns` (if missing) and returns a bound token for it from
/// the TokenRequest API, valid for an hour.
///
/// # Panics
/// When the API server refuses.
pub async fn service_account_token(client: &Client, ns: &str, name: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}
    }))
    .expect("service account");
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(e) => panic!("creating ServiceAccount {ns}/{name}: {e}"),
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        }),
        ..Default::default()
    };
    api.create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{name}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest status")
}

/// An answer: status code, headers and body (parsed as JSON when it is JSON, else a string).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Headers, names lower case.
    pub headers: Vec<(String, String)>,
    /// The body as JSON, or a JSON string of the text.
    pub body: Value,
    /// The raw body text.
    pub text: String,
}

impl Answer {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP client for the gateway.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    /// A client with a 150 s timeout (longer than any long-poll hold).
    ///
    /// # Panics
    /// When the client cannot be built.
    pub fn new() -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(150))
                .build()
                .expect("http client"),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("gateway answers");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    /// `GET url` with an optional Bearer token.
    pub async fn get(&self, url: &str, token: Option<&str>) -> Answer {
        let mut req = self.client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    /// `GET url` with these headers.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.client.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    /// `POST url` with a JSON body and an optional Bearer token.
    pub async fn post(&self, url: &str, token: Option<&str>, body: &Value) -> Answer {
        self.post_raw(
            url,
            token,
            "application/json",
            body.to_string().into_bytes(),
            &[],
        )
        .await
    }

    /// `POST url` with raw bytes, a content type, an optional Bearer token and extra headers.
    pub async fn post_raw(
        &self,
        url: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self
            .client
            .post(url)
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }
}

/// What the gateway's end-to-end tests share: a tenant, a recording HTTPS upstream, a gateway
/// holding long-polls for `hold` with the dev enclave key of `dev_key`, and (on request) an
/// operator with the process launcher and the real runner on the tenant's namespace.
pub struct GatewayEnv {
    /// The control plane's admin.
    pub admin: Client,
    /// The tenant.
    pub tenant: Tenant,
    /// The upstream.
    pub up: oauth3_test_support::Upstream,
    /// The gateway.
    pub gw: InProcessGateway,
    /// A client.
    pub http: Http,
    /// The operator, when started.
    pub op: Option<crate::operator::InProcessOperator>,
}

impl GatewayEnv {
    /// Starts it all, or `None` without a control plane.
    ///
    /// # Panics
    /// When any part fails to start.
    pub async fn new(
        prefix: &str,
        operator: bool,
        dev_key: [u8; 32],
        hold: Duration,
    ) -> Option<Self> {
        let admin = crate::client_or_skip().await?;
        let tenant = Tenant::new(&admin, prefix).await;
        let up = oauth3_test_support::Upstream::start().await;
        let hold = format!("--long-poll={}s", hold.as_secs());
        let key = format!(
            "--enclave-public-key={}",
            hex::encode(crypto_box::SecretKey::from(dev_key).public_key().as_bytes())
        );
        let gw = InProcessGateway::start(&admin, &[&hold, &key, "--auth-cache-ttl=0s"]).await;
        let op = if operator {
            let dir = std::env::temp_dir().join(format!("oauth3-gw-{}", tenant.ns));
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::write(dir.join("dev.key"), hex::encode(dev_key)).expect("key");
            std::fs::write(dir.join("ca.pem"), &up.ca_pem).expect("ca");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            Some(crate::operator::InProcessOperator::start(
                &admin,
                &tenant.ns,
                listener,
                crate::operator::Launcher::Process(crate::operator::dev_runner(&dir)),
                Duration::from_secs(30),
                Duration::from_secs(3600),
            ))
        } else {
            None
        };
        Some(Self {
            admin,
            tenant,
            up,
            gw,
            http: Http::new(),
            op,
        })
    }

    /// The tenant's Permits.
    ///
    /// # Panics
    /// When the list fails.
    pub async fn permits(&self) -> Vec<oauth3_crds::Permit> {
        Api::<oauth3_crds::Permit>::namespaced(self.admin.clone(), &self.tenant.ns)
            .list(&kube::api::ListParams::default())
            .await
            .expect("list")
            .items
    }

    /// Stops the operator, if one runs.
    pub async fn stop(mut self) {
        if let Some(op) = self.op.take() {
            op.stop().await;
        }
    }
}
