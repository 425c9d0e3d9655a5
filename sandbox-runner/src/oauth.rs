//! oauth2 credentials inside the TEE: the current access token of each `oauth2` sealed
//! credential, refreshed before a call when it is expired or about to be, re-sealed to the
//! runner's own enclave key and handed back as [`SealedUpdate`]s.
//!
//! A refresh obeys its own fixed rules, not the Permit's, and is invisible to the code: it goes
//! only to the sealed `token_endpoint` (checked by
//! [`oauth3_protocol::oauth2::check_token_endpoint`]: https, http only on loopback), redirects
//! are not followed, DNS answers and IP literals in private ranges are refused unless the
//! endpoint's host is loopback, the request is the form-encoded `refresh_token` grant, and the
//! exchange is bounded by [`REFRESH_TIMEOUT`] and [`MAX_TOKEN_RESPONSE_BYTES`]. Refreshes of one
//! credential are serialised within the run (one lock per credential) and, across runs, by the
//! operator's refresh lease when a [`RefreshCoordinator`] is configured.
//!
//! New tokens are added to the run's [`Redactor`] before anything can echo them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use oauth3_protocol::envelope::seal;
use oauth3_protocol::oauth2::TokenAnswer;
use oauth3_protocol::oauth2::{SealedUpdate, TokenSet, envelope_digest, is_loopback_endpoint};
use zeroize::Zeroizing;

use crate::fetch::guard::{GuardedResolver, is_restricted, literal_ip};
use crate::host::BoxFuture;
use crate::redact::Redactor;
use crate::secrets::KeyProvider;

/// Default lead: a token expiring within this many seconds is refreshed before a call.
pub const DEFAULT_REFRESH_LEAD_SECONDS: i64 = 120;
/// Whole refresh exchange time limit.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(20);
/// Connect time limit of a refresh.
pub const REFRESH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token endpoint answer read.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// Why a credential could not be refreshed. Names the credential, never a token.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The provider refused the refresh token (`invalid_grant`): revoked, expired or used.
    #[error(
        "oauth2 credential {name}: the provider refused its refresh token (invalid_grant); sign in again and seal the new token set as {name}"
    )]
    SignInAgain {
        /// The credential.
        name: String,
    },
    /// The access token is expired and there is no refresh token.
    #[error(
        "oauth2 credential {name}: the access token has expired and no refresh token was sealed; sign in again and seal the new token set as {name}"
    )]
    NoRefreshToken {
        /// The credential.
        name: String,
    },
    /// The token endpoint answered with an error.
    #[error("oauth2 credential {name}: refreshing at {endpoint} failed: {reason}")]
    Refresh {
        /// The credential.
        name: String,
        /// The sealed token endpoint.
        endpoint: String,
        /// What went wrong (HTTP status and OAuth error code; never a token).
        reason: String,
    },
    /// Re-sealing the new token set failed.
    #[error("oauth2 credential {name}: re-sealing the refreshed token set failed: {reason}")]
    Reseal {
        /// The credential.
        name: String,
        /// Why.
        reason: String,
    },
    /// The operator's refresh lease could not be obtained.
    #[error("oauth2 credential {name}: {reason}")]
    Coordination {
        /// The credential.
        name: String,
        /// Why.
        reason: String,
    },
}

/// What the operator answers a lease request with.
pub enum LeaseAnswer {
    /// This run holds the credential's refresh lease: refresh, then [`RefreshCoordinator::publish`].
    Granted,
    /// Another run refreshed already: the newest envelope of the credential.
    Newer(String),
    /// Another run holds the lease: ask again after this long.
    Wait(Duration),
}

/// Serialises refreshes of one credential across concurrent runs (the operator, over the
/// run's authenticated callback channel).
pub trait RefreshCoordinator: Send + Sync {
    /// Asks for the refresh lease of `name`, this run holding the envelope whose digest is
    /// `held`.
    fn lease<'a>(
        &'a self,
        name: &'a str,
        held: &'a str,
    ) -> BoxFuture<'a, Result<LeaseAnswer, String>>;
    /// Hands the operator a refreshed, re-sealed credential at once (and ends the lease).
    fn publish<'a>(&'a self, update: &'a SealedUpdate) -> BoxFuture<'a, Result<(), String>>;
}

/// One credential's state. No `Debug`: it holds the tokens.
struct Credential {
    set: TokenSet,
    /// Digest of the envelope `set` was opened from (or sealed into).
    envelope: String,
}

/// The run's oauth2 credentials. Deliberately not `Debug`.
pub struct OAuthCredentials {
    namespace: String,
    lead_seconds: i64,
    creds: BTreeMap<String, tokio::sync::Mutex<Credential>>,
    keys: Arc<dyn KeyProvider>,
    redactor: Arc<Redactor>,
    public_client: reqwest::Client,
    loopback_client: reqwest::Client,
    coordinator: Option<Arc<dyn RefreshCoordinator>>,
    updates: std::sync::Mutex<Vec<SealedUpdate>>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn client(tls: &rustls::ClientConfig, allow_private: bool) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .no_proxy()
        .connect_timeout(REFRESH_CONNECT_TIMEOUT)
        .timeout(REFRESH_TIMEOUT)
        .dns_resolver(GuardedResolver {
            allow_private,
            overrides: Arc::new(Vec::new()),
        })
        .build()
        .map_err(|e| e.to_string())
}

impl OAuthCredentials {
    /// The oauth2 credentials among the run's opened `secrets` (by the envelopes in
    /// `envelopes`, name to envelope), or `None` when there are none. The token sets were
    /// checked when the secrets were opened.
    ///
    /// # Errors
    /// A token set that does not check out (the message names the credential and the rule),
    /// or the HTTP clients could not be built.
    pub fn from_secrets(
        namespace: &str,
        secrets: &crate::run::Secrets,
        envelopes: &BTreeMap<String, String>,
        keys: Arc<dyn KeyProvider>,
        redactor: Arc<Redactor>,
        extra_root_certs_pem: &[Vec<u8>],
    ) -> Result<Option<Self>, String> {
        let mut creds: BTreeMap<String, tokio::sync::Mutex<Credential>> = BTreeMap::new();
        for (name, value) in secrets.iter().filter(|(_, v)| TokenSet::looks_like(v)) {
            // Fail closed: a token set that does not check out is never used as a plain value.
            let set =
                TokenSet::parse(value).map_err(|e| format!("oauth2 credential {name}: {e}"))?;
            let envelope = envelope_digest(envelopes.get(name).map_or("", String::as_str));
            creds.insert(
                name.clone(),
                tokio::sync::Mutex::new(Credential { set, envelope }),
            );
        }
        if creds.is_empty() {
            return Ok(None);
        }
        let tls =
            crate::fetch::tls::client_config(extra_root_certs_pem).map_err(|e| e.to_string())?;
        Ok(Some(Self {
            namespace: namespace.to_owned(),
            lead_seconds: DEFAULT_REFRESH_LEAD_SECONDS,
            creds,
            keys,
            redactor,
            public_client: client(&tls, false)?,
            loopback_client: client(&tls, true)?,
            coordinator: None,
            updates: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// The same credentials refreshing `lead_seconds` before expiry.
    #[must_use]
    pub fn with_lead(mut self, lead_seconds: i64) -> Self {
        self.lead_seconds = lead_seconds.max(0);
        self
    }

    /// The same credentials coordinating refreshes through `coordinator`.
    #[must_use]
    pub fn with_coordinator(mut self, coordinator: Option<Arc<dyn RefreshCoordinator>>) -> Self {
        self.coordinator = coordinator;
        self
    }

    /// Whether `name` is an oauth2 credential of this run.
    pub fn has(&self, name: &str) -> bool {
        self.creds.contains_key(name)
    }

    /// The names of the oauth2 credentials.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.creds.keys().map(String::as_str)
    }

    /// The re-sealed credentials of this run, in the order they were refreshed.
    pub fn updates(&self) -> Vec<SealedUpdate> {
        self.updates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The current access token of `name`, refreshed first when it is due.
    ///
    /// # Errors
    /// [`OAuthError`] naming the credential.
    pub async fn access_token(&self, name: &str) -> Result<Zeroizing<String>, OAuthError> {
        let Some(cred) = self.creds.get(name) else {
            return Err(OAuthError::Coordination {
                name: name.to_owned(),
                reason: "not an oauth2 credential of this run".into(),
            });
        };
        let mut cred = cred.lock().await;
        if cred.set.is_due(now_unix(), self.lead_seconds) {
            self.refresh_coordinated(name, &mut cred).await?;
        }
        Ok(cred.set.access_token.clone())
    }

    /// Refreshes under the operator's lease (when coordinated): a newer envelope another run
    /// wrote is adopted instead of refreshing with a refresh token that may be spent.
    async fn refresh_coordinated(
        &self,
        name: &str,
        cred: &mut Credential,
    ) -> Result<(), OAuthError> {
        let Some(coordinator) = &self.coordinator else {
            return self.refresh(name, cred).await;
        };
        let deadline = tokio::time::Instant::now() + REFRESH_TIMEOUT * 3;
        loop {
            let answer = coordinator
                .lease(name, &cred.envelope)
                .await
                .map_err(|reason| OAuthError::Coordination {
                    name: name.to_owned(),
                    reason: format!("asking the operator for the refresh lease: {reason}"),
                })?;
            match answer {
                LeaseAnswer::Granted => {
                    self.refresh(name, cred).await?;
                    let update = self.updates().last().cloned();
                    if let Some(update) = update {
                        coordinator.publish(&update).await.map_err(|reason| {
                            OAuthError::Coordination {
                                name: name.to_owned(),
                                reason: format!(
                                    "handing the refreshed credential to the operator: {reason}"
                                ),
                            }
                        })?;
                    }
                    return Ok(());
                }
                LeaseAnswer::Newer(envelope) => {
                    self.adopt(name, cred, &envelope).await?;
                    if !cred.set.is_due(now_unix(), self.lead_seconds) {
                        return Ok(());
                    }
                }
                LeaseAnswer::Wait(d) => {
                    if tokio::time::Instant::now() + d > deadline {
                        return Err(OAuthError::Coordination {
                            name: name.to_owned(),
                            reason: "another run held the refresh lease for too long".into(),
                        });
                    }
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// Opens a newer envelope of `name` (written by another run) and uses its tokens.
    async fn adopt(
        &self,
        name: &str,
        cred: &mut Credential,
        envelope: &str,
    ) -> Result<(), OAuthError> {
        let bad = |reason: String| OAuthError::Coordination {
            name: name.to_owned(),
            reason,
        };
        let key = self
            .keys
            .secret_key()
            .await
            .map_err(|e| bad(format!("fetching the enclave key: {e}")))?;
        let value = oauth3_protocol::envelope::unseal(&key, envelope, &self.namespace, name)
            .map_err(|e| bad(format!("opening the newer envelope: {e}")))?;
        let set = TokenSet::parse(&value).map_err(|e| bad(format!("the newer envelope: {e}")))?;
        self.redactor.add_secrets(set.secret_values());
        cred.set = set;
        cred.envelope = envelope_digest(envelope);
        Ok(())
    }

    /// One refresh-token grant against the sealed endpoint; the new set is re-sealed and
    /// recorded as an update.
    async fn refresh(&self, name: &str, cred: &mut Credential) -> Result<(), OAuthError> {
        let set = &cred.set;
        let endpoint = set.token_endpoint.clone();
        let fail = |reason: String| OAuthError::Refresh {
            name: name.to_owned(),
            endpoint: endpoint.clone(),
            reason,
        };
        let Some(refresh_token) = set.refresh_token.clone() else {
            return Err(OAuthError::NoRefreshToken {
                name: name.to_owned(),
            });
        };
        let url = oauth3_protocol::oauth2::check_token_endpoint(&endpoint)
            .map_err(|e| fail(e.to_string()))?;
        let loopback = is_loopback_endpoint(&url);
        if let Some(ip) = literal_ip(&url)
            && is_restricted(ip)
            && !loopback
        {
            return Err(fail(format!(
                "{ip} is in a private or otherwise non-public range"
            )));
        }
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
            ("client_id", set.client_id.as_str()),
        ];
        if let Some(secret) = &set.client_secret {
            form.push(("client_secret", secret.as_str()));
        }
        let body = Zeroizing::new(
            form.iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&"),
        );
        let client = if loopback {
            &self.loopback_client
        } else {
            &self.public_client
        };
        let response = client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body.as_bytes().to_vec())
            .send()
            .await
            .map_err(|e| fail(format!("the request failed: {}", describe(&e))))?;
        let status = response.status().as_u16();
        let bytes = read_capped(response)
            .await
            .map_err(|reason| fail(reason.to_owned()))?;
        let answer: Option<TokenAnswer> = serde_json::from_slice(&bytes).ok();
        let error_code = answer.as_ref().and_then(|a| a.error.clone());
        if error_code.as_deref() == Some("invalid_grant") {
            return Err(OAuthError::SignInAgain {
                name: name.to_owned(),
            });
        }
        if !(200..300).contains(&status) {
            let code = error_code
                .filter(|c| c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            return Err(fail(format!(
                "the token endpoint answered HTTP {status}{code}"
            )));
        }
        let Some(answer) = answer else {
            return Err(fail("the answer is not a JSON token response".into()));
        };
        let Some(access_token) = answer.access_token.filter(|t| !t.is_empty()) else {
            return Err(fail("the answer has no access_token".into()));
        };
        let mut next = set.clone();
        next.access_token = access_token;
        if let Some(rt) = answer.refresh_token.filter(|t| !t.is_empty()) {
            next.refresh_token = Some(rt);
        }
        next.expires_at = answer
            .expires_in
            .map(|s| now_unix().saturating_add(s.max(0)));
        if let Some(scope) = answer.scope {
            next.scopes = scope.split_whitespace().map(str::to_owned).collect();
        }
        self.redactor.add_secrets(next.secret_values());
        let envelope = self.reseal(name, &next).await?;
        let update = SealedUpdate {
            name: name.to_owned(),
            envelope: envelope.clone(),
            expires_at: next.expires_at,
            replaces: cred.envelope.clone(),
        };
        cred.set = next;
        cred.envelope = envelope_digest(&envelope);
        self.updates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(update);
        Ok(())
    }

    async fn reseal(&self, name: &str, set: &TokenSet) -> Result<String, OAuthError> {
        let bad = |reason: String| OAuthError::Reseal {
            name: name.to_owned(),
            reason,
        };
        let key = self
            .keys
            .secret_key()
            .await
            .map_err(|e| bad(format!("fetching the enclave key: {e}")))?;
        seal(
            key.public_key().as_bytes(),
            &self.namespace,
            name,
            &set.to_json(),
        )
        .map_err(|e| bad(e.to_string()))
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn urlencode(value: &str) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
}

/// A transport error's kind, without the URL's query or anything the server said.
fn describe(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "connecting failed (or the address is refused)"
    } else if e.is_redirect() {
        "the endpoint redirected"
    } else {
        "the exchange failed"
    }
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, &'static str> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| "reading the answer failed")?
    {
        if body.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
            return Err("the answer is larger than the token response cap");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
