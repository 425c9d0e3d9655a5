//! oauth3 agent gateway: the HTTP API agents already speak (the permit dialect of the curl
//! flows: `POST /permit`, `POST /execute`, `GET /execute/:id/status?wait=true`, ...),
//! translated to Permits and Executions in the caller's namespace, and the web approval page.
//!
//! Stateless: every request becomes Kubernetes API calls and every answer comes from the
//! objects (request ids are labels, tokens are stored only as digests in annotations), so any
//! number of replicas serve the same clients without coordination. Long-polls wake on a
//! watch of the one object.
//!
//! Modules: `answer` (what clients read about a request, pure), `approve` (the web approval
//! page and `POST /approve/:id`), `capability` (capability JSON forms to a Permit spec, pure),
//! `config` (flags), `error` (the one error type), `identity` (TokenReview and
//! SubjectAccessReview), `ids` (request ids and tokens), `mcp` (the MCP server), `proxy`
//! (calls without code forwarded to a Permit's credential proxy), `routes` (the permit dialect's
//! handlers, and skill code under a Permit), `secrets` (`POST /secrets`: sealed on arrival),
//! `sessions` (`/sessions`, `/me`, `/history`), `signup` (self-service agent tenants, off by
//! default), `skill` (skill code to sandbox JavaScript:
//! TypeScript types removed with oxc), `store` (every Kubernetes call).

pub mod answer;
pub mod approve;
pub mod capability;
pub mod config;
pub mod error;
pub mod identity;
pub mod ids;
pub mod mcp;
pub mod proxy;
pub mod routes;
pub mod scope;
pub mod secrets;
pub mod sessions;
pub mod signin;
pub mod signup;
pub mod skill;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};

pub use config::Config;
pub use error::{ApiError, ApiResult};

use crate::identity::Identity;
use crate::store::Store;

/// Shared state of every handler.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    identity: Identity,
    public_url: Option<String>,
    long_poll: Duration,
    execution_timeout: i32,
    max_body_bytes: usize,
    signup: Option<signup::SignupConfig>,
    enclave_key: Option<[u8; 32]>,
    drafting: Option<Arc<oauth3_operator::draft::Drafting>>,
    mcp_sessions: mcp::Sessions,
    mcp_authorization_servers: Vec<String>,
    service_account_issuer: tokio::sync::OnceCell<Option<String>>,
    proxies: proxy::Proxies,
}

/// Why the gateway could not be set up from its flags.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `--enclave-public-key` is not 64 hex characters.
    #[error("--enclave-public-key: {0}")]
    EnclaveKey(String),
    /// A `--draft-*` flag has a bad value.
    #[error(transparent)]
    Draft(#[from] oauth3_operator::config::ConfigError),
    /// A `--proxy-*` flag has a bad value.
    #[error(transparent)]
    Proxy(#[from] proxy::ProxySetupError),
}

impl Gateway {
    /// A gateway acting with `client` (its own identity) as `config` says.
    ///
    /// # Errors
    /// [`SetupError`] for an unusable flag value.
    pub fn new(client: kube::Client, config: &Config) -> Result<Self, SetupError> {
        let enclave_key = config
            .enclave_public_key
            .as_deref()
            .map(oauth3_operator::plugin::parse_public_key)
            .transpose()
            .map_err(|e| SetupError::EnclaveKey(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                store: Store::new(client.clone()),
                identity: Identity::new(client, config.auth_cache_ttl),
                public_url: config.public_url.clone(),
                long_poll: config.long_poll,
                execution_timeout: config.execution_timeout,
                max_body_bytes: config.max_body_bytes,
                signup: config
                    .signup_namespace_prefix
                    .clone()
                    .map(|prefix| signup::SignupConfig {
                        prefix,
                        token_lifetime: config.signup_token_lifetime,
                    }),
                enclave_key,
                drafting: config.draft.drafting()?.map(Arc::new),
                mcp_sessions: mcp::Sessions::default(),
                mcp_authorization_servers: config.mcp_authorization_servers.clone(),
                service_account_issuer: tokio::sync::OnceCell::new(),
                proxies: proxy::Proxies::new(
                    config.proxy_ca_file.as_deref(),
                    config.proxy_wake_timeout,
                )?,
            }),
        })
    }

    /// The Kubernetes access.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Token and access reviews.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The public base URL, if configured.
    pub fn public_url(&self) -> Option<&str> {
        self.inner.public_url.as_deref()
    }

    /// The long-poll hold.
    pub fn long_poll(&self) -> Duration {
        self.inner.long_poll
    }

    /// `timeoutSeconds` of new Executions.
    pub fn execution_timeout(&self) -> i32 {
        self.inner.execution_timeout
    }

    /// Largest request body accepted.
    pub fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    /// Self-service signup, when on.
    pub fn signup(&self) -> Option<&signup::SignupConfig> {
        self.inner.signup.as_ref()
    }

    /// The enclave key secrets are sealed to, if configured.
    pub fn enclave_key(&self) -> Option<&[u8; 32]> {
        self.inner.enclave_key.as_ref()
    }

    /// The MCP sessions of this replica.
    pub fn mcp_sessions(&self) -> &mcp::Sessions {
        &self.inner.mcp_sessions
    }

    /// `--mcp-authorization-server`, or else the issuer of the cluster's service-account
    /// tokens (asked of the API server once: `/.well-known/openid-configuration`).
    pub async fn mcp_authorization_servers(&self) -> Vec<String> {
        if !self.inner.mcp_authorization_servers.is_empty() {
            return self.inner.mcp_authorization_servers.clone();
        }
        let issuer = self
            .inner
            .service_account_issuer
            .get_or_init(|| async {
                let request = match axum::http::Request::get("/.well-known/openid-configuration")
                    .body(Vec::new())
                {
                    Ok(r) => r,
                    Err(_) => return None,
                };
                match self.store().client().request::<serde_json::Value>(request).await {
                    Ok(doc) => doc.get("issuer").and_then(|i| i.as_str()).map(str::to_owned),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the service-account issuer for the MCP metadata");
                        None
                    }
                }
            })
            .await;
        issuer.iter().cloned().collect()
    }

    /// The forwarding to credential proxies.
    pub fn proxies(&self) -> &proxy::Proxies {
        &self.inner.proxies
    }

    /// The drafter `POST /draft` previews with, if configured.
    pub fn drafting(&self) -> Option<&oauth3_operator::draft::Drafting> {
        self.inner.drafting.as_deref()
    }
}

/// The gateway's routes, with request bodies capped at `--max-body-bytes`.
pub fn app(gateway: Gateway) -> Router {
    let max_body_bytes = gateway.max_body_bytes();
    Router::new()
        .route("/", get(routes::discovery))
        .route("/health", get(routes::health))
        .route("/plugins", get(routes::plugins))
        .route("/permit", post(routes::create_permit))
        .route("/draft", post(routes::draft))
        .route("/execute", post(routes::execute))
        .route("/execute/{id}/status", get(routes::status))
        .route("/execute/{id}/stdout", get(routes::stdout))
        .route("/session/{id}/actions", get(routes::session_actions))
        .route("/approve/{id}", get(approve::page).post(approve::decide))
        .route(
            "/signin/{namespace}/{permit}",
            get(signin::page).post(signin::decide),
        )
        .route("/scope", post(scope::scope))
        .route("/secrets", post(secrets::store))
        .route("/cookies/upload", post(secrets::upload_cookies))
        .route("/signup", post(signup::signup))
        .route("/sessions", get(sessions::sessions))
        .route("/me", get(sessions::me))
        .route("/history", get(sessions::history))
        .route(
            mcp::PATH,
            post(mcp::post).get(mcp::stream).delete(mcp::delete),
        )
        .route("/proxy/{*rest}", any(proxy::forward))
        .route(mcp::METADATA_PATH, get(mcp::resource_metadata))
        .route(
            "/.well-known/oauth-protected-resource",
            get(mcp::resource_metadata),
        )
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(gateway)
}

/// Serves `app` on `listener` until `shutdown` resolves. Answers are small and a held
/// long-poll must leave at once when it wakes, so connections are `TCP_NODELAY`.
///
/// # Errors
/// When serving fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
