//! `kubectl oauth3 login`: the OAuth 2.0 Device Authorization Grant (RFC 8628) from the
//! owner's terminal, ending in an oauth2 token set that is sealed to the enclave key and never
//! written to disk in the clear.
//!
//! Endpoints come from a provider preset ([`Preset`]) or from OpenID Connect discovery of
//! `--issuer` ([`discover`]); both must obey the token endpoint rule of
//! [`oauth3_protocol::oauth2::check_token_endpoint`] (https, http only to loopback). Polling
//! follows the server: every `interval` seconds (5 when absent), 5 s more after each
//! `slow_down`, on until `authorization_pending` stops; `access_denied` and `expired_token`
//! end the flow with what to do. Each answer is classified by the pure [`classify`]. Token
//! values live in zeroize-on-drop strings and appear in no message.

use oauth3_protocol::oauth2::TokenAnswer;
use std::time::Duration;

use oauth3_protocol::oauth2::{OAUTH2_TYPE, TokenSet, check_token_endpoint};
use serde::Deserialize;
use zeroize::Zeroizing;

/// How long one HTTP exchange with the provider may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest provider answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Polling interval when the server names none (RFC 8628 §3.2).
pub const DEFAULT_INTERVAL: u64 = 5;
/// Seconds added to the interval after `slow_down` (RFC 8628 §3.5).
pub const SLOW_DOWN_STEP: u64 = 5;

/// Why the sign-in failed. Never carries a token or a device code.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// An endpoint breaks the rules.
    #[error("{0}")]
    Endpoint(String),
    /// An exchange failed.
    #[error("{step}: {reason}")]
    Exchange {
        /// What was being done.
        step: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The user denied the request at the provider.
    #[error("the sign-in was denied at the provider (access_denied); nothing was sealed")]
    Denied,
    /// The code expired before the user approved.
    #[error("the code expired before it was approved (expired_token); run login again")]
    Expired,
    /// The provider answered with another OAuth error.
    #[error("the provider refused the sign-in ({code}){description}")]
    Refused {
        /// The OAuth error code.
        code: String,
        /// `: <description>` or empty.
        description: String,
    },
}

/// A provider's known device-flow endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// GitHub (OAuth apps and GitHub Apps with device flow enabled).
    Github,
    /// Google (OAuth clients of type "TVs and Limited Input devices").
    Google,
    /// Microsoft identity platform (the `common` tenant).
    Microsoft,
}

/// Where the device flow goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The device authorization endpoint.
    pub device_authorization: String,
    /// The token endpoint (sealed with the tokens: where the runner refreshes).
    pub token: String,
    /// The issuer, recorded in the token set.
    pub issuer: String,
    /// Scopes asked for when `--scope` is not given.
    pub default_scopes: Vec<String>,
}

impl Preset {
    /// The preset's endpoints (pure).
    pub fn endpoints(self) -> Endpoints {
        let (device, token, issuer, scopes): (&str, &str, &str, &[&str]) = match self {
            Self::Github => (
                "https://github.com/login/device/code",
                "https://github.com/login/oauth/access_token",
                "https://github.com",
                &[],
            ),
            Self::Google => (
                "https://oauth2.googleapis.com/device/code",
                "https://oauth2.googleapis.com/token",
                "https://accounts.google.com",
                &["openid", "email"],
            ),
            Self::Microsoft => (
                "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
                "https://login.microsoftonline.com/common/oauth2/v2.0/token",
                "https://login.microsoftonline.com/common/v2.0",
                &["openid", "offline_access"],
            ),
        };
        Endpoints {
            device_authorization: device.to_owned(),
            token: token.to_owned(),
            issuer: issuer.to_owned(),
            default_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// The device authorization answer (RFC 8628 §3.2). `device_code` is a credential: no `Debug`.
#[derive(Deserialize)]
pub struct DeviceAuthorization {
    /// The code the client polls with.
    pub device_code: Zeroizing<String>,
    /// The code the user types.
    pub user_code: String,
    /// Where the user goes (`verification_url` in Google's answers).
    #[serde(alias = "verification_url")]
    pub verification_uri: String,
    /// The same with the code filled in, if the provider offers it.
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    /// Seconds until the codes expire.
    pub expires_in: u64,
    /// Seconds between polls.
    #[serde(default)]
    pub interval: Option<u64>,
}

/// What one poll of the token endpoint means (pure classification of [`classify`]).
pub enum Poll {
    /// Signed in.
    Tokens(Box<TokenSet>),
    /// Not yet approved: poll again after the interval.
    Pending,
    /// Polling too fast: add [`SLOW_DOWN_STEP`] to the interval.
    SlowDown,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Classifies a token endpoint answer (pure but for the clock that turns `expires_in` into
/// `expires_at`). Providers answer errors with 400, GitHub with 200: the `error` field decides.
///
/// # Errors
/// [`LoginError::Denied`], [`LoginError::Expired`], [`LoginError::Refused`], or a malformed
/// answer.
pub fn classify(
    status: u16,
    body: &[u8],
    endpoints: &Endpoints,
    client_id: &str,
    client_secret: Option<&Zeroizing<String>>,
    scopes: &[String],
) -> Result<Poll, LoginError> {
    let answer: TokenAnswer = serde_json::from_slice(body).map_err(|_| LoginError::Exchange {
        step: "polling the token endpoint",
        reason: format!("HTTP {status}: the answer is not a JSON token response"),
    })?;
    if let Some(code) = answer.error {
        return Err(match code.as_str() {
            "authorization_pending" => return Ok(Poll::Pending),
            "slow_down" => return Ok(Poll::SlowDown),
            "access_denied" => LoginError::Denied,
            "expired_token" => LoginError::Expired,
            _ => LoginError::Refused {
                code: code
                    .chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(64)
                    .collect(),
                description: answer
                    .error_description
                    .map(|d| format!(": {}", d.chars().take(200).collect::<String>()))
                    .unwrap_or_default(),
            },
        });
    }
    let Some(access_token) = answer.access_token.filter(|t| !t.is_empty()) else {
        return Err(LoginError::Exchange {
            step: "polling the token endpoint",
            reason: format!("HTTP {status}: the answer has no access_token"),
        });
    };
    Ok(Poll::Tokens(Box::new(TokenSet {
        kind: OAUTH2_TYPE.to_owned(),
        access_token,
        refresh_token: answer.refresh_token.filter(|t| !t.is_empty()),
        expires_at: answer
            .expires_in
            .map(|s| now_unix().saturating_add(s.max(0))),
        token_endpoint: endpoints.token.clone(),
        client_id: client_id.to_owned(),
        client_secret: client_secret.cloned(),
        scopes: answer.scope.map_or_else(
            || scopes.to_vec(),
            |s| {
                s.split([' ', ','])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            },
        ),
        issuer: Some(endpoints.issuer.clone()),
    })))
}

/// The HTTP client of the sign-in: web PKI roots (plus `extra_ca_pem`), no redirects, no proxy.
///
/// # Errors
/// TLS or client set-up failures.
pub fn client(extra_ca_pem: Option<&[u8]>) -> Result<reqwest::Client, LoginError> {
    let bad = |reason: String| LoginError::Exchange {
        step: "setting up HTTPS",
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        use rustls::pki_types::pem::PemObject as _;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| bad(format!("--ca-file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("--ca-file: {e}")))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(EXCHANGE_TIMEOUT)
        .build()
        .map_err(|e| bad(e.to_string()))
}

/// Checks every endpoint against the token endpoint rule.
///
/// # Errors
/// [`LoginError::Endpoint`] naming the endpoint and the rule.
pub fn check_endpoints(endpoints: &Endpoints) -> Result<(), LoginError> {
    for (what, url) in [
        (
            "device_authorization_endpoint",
            &endpoints.device_authorization,
        ),
        ("token_endpoint", &endpoints.token),
    ] {
        check_token_endpoint(url).map_err(|e| {
            LoginError::Endpoint(format!("{what}: {e}").replace("token_endpoint \"", "\""))
        })?;
    }
    Ok(())
}

/// The endpoints of `issuer` from its OpenID Connect discovery document; the document's
/// `issuer` must be `issuer` and it must offer the device grant.
///
/// # Errors
/// Discovery failing, a mismatching issuer, no device endpoint, or endpoints breaking the rule.
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Endpoints, LoginError> {
    #[derive(Deserialize)]
    struct Discovery {
        issuer: String,
        token_endpoint: String,
        device_authorization_endpoint: Option<String>,
    }
    check_token_endpoint(issuer).map_err(|e| {
        LoginError::Endpoint(format!("--issuer: {e}").replace("token_endpoint ", ""))
    })?;
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let (status, body) = get(http, &url, "reading the issuer's discovery document").await?;
    if status != 200 {
        return Err(LoginError::Exchange {
            step: "reading the issuer's discovery document",
            reason: format!("{url} answered HTTP {status}"),
        });
    }
    let doc: Discovery = serde_json::from_slice(&body).map_err(|e| LoginError::Exchange {
        step: "reading the issuer's discovery document",
        reason: format!("{url}: {e}"),
    })?;
    if doc.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(LoginError::Endpoint(format!(
            "--issuer {issuer}: the discovery document names issuer {:?}",
            doc.issuer
        )));
    }
    let device = doc.device_authorization_endpoint.ok_or_else(|| {
        LoginError::Endpoint(format!(
            "--issuer {issuer}: its discovery document has no device_authorization_endpoint (the provider does not offer the device grant)"
        ))
    })?;
    let endpoints = Endpoints {
        device_authorization: device,
        token: doc.token_endpoint,
        issuer: doc.issuer,
        default_scopes: vec!["openid".into(), "offline_access".into()],
    };
    check_endpoints(&endpoints)?;
    Ok(endpoints)
}

async fn read(
    response: reqwest::Response,
    step: &'static str,
) -> Result<(u16, Vec<u8>), LoginError> {
    let status = response.status().as_u16();
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| LoginError::Exchange {
        step,
        reason: e.without_url().to_string(),
    })? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(LoginError::Exchange {
                step,
                reason: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

async fn get(
    http: &reqwest::Client,
    url: &str,
    step: &'static str,
) -> Result<(u16, Vec<u8>), LoginError> {
    let response = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| LoginError::Exchange {
            step,
            reason: e.without_url().to_string(),
        })?;
    read(response, step).await
}

async fn post_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
    step: &'static str,
) -> Result<(u16, Vec<u8>), LoginError> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let body = Zeroizing::new(
        form.iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
            .collect::<Vec<_>>()
            .join("&"),
    );
    let response = http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body.as_bytes().to_vec())
        .send()
        .await
        .map_err(|e| LoginError::Exchange {
            step,
            reason: e.without_url().to_string(),
        })?;
    read(response, step).await
}

/// Starts the device flow: the codes and where the user goes.
///
/// # Errors
/// The provider refusing or answering something else than a device authorization.
pub async fn start(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    client_id: &str,
    client_secret: Option<&Zeroizing<String>>,
    scopes: &[String],
) -> Result<DeviceAuthorization, LoginError> {
    let step = "asking the provider for a device code";
    let scope = scopes.join(" ");
    let mut form = vec![("client_id", client_id)];
    if !scope.is_empty() {
        form.push(("scope", scope.as_str()));
    }
    if let Some(secret) = client_secret {
        form.push(("client_secret", secret.as_str()));
    }
    let (status, body) = post_form(http, &endpoints.device_authorization, &form, step).await?;
    if let Ok(err) = serde_json::from_slice::<TokenAnswer>(&body)
        && let Some(code) = err.error
    {
        return Err(LoginError::Refused {
            code,
            description: err
                .error_description
                .map(|d| format!(": {}", d.chars().take(200).collect::<String>()))
                .unwrap_or_default(),
        });
    }
    serde_json::from_slice(&body).map_err(|_| LoginError::Exchange {
        step,
        reason: format!("HTTP {status}: the answer is not a device authorization"),
    })
}

/// Polls the token endpoint until the user approved (or denied, or the code expired),
/// honouring `interval` and `slow_down`. `progress` hears of each interval change.
///
/// # Errors
/// [`LoginError`]: denied, expired, refused or a failed exchange.
pub async fn poll(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    device: &DeviceAuthorization,
    client_id: &str,
    client_secret: Option<&Zeroizing<String>>,
    scopes: &[String],
    progress: &mut dyn FnMut(&str),
) -> Result<TokenSet, LoginError> {
    let mut interval = device.interval.unwrap_or(DEFAULT_INTERVAL).max(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(device.expires_in.max(1));
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if tokio::time::Instant::now() > deadline + Duration::from_secs(interval) {
            return Err(LoginError::Expired);
        }
        let mut form = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device.device_code.as_str()),
            ("client_id", client_id),
        ];
        if let Some(secret) = client_secret {
            form.push(("client_secret", secret.as_str()));
        }
        let (status, body) =
            post_form(http, &endpoints.token, &form, "polling the token endpoint").await?;
        match classify(status, &body, endpoints, client_id, client_secret, scopes)? {
            Poll::Tokens(set) => return Ok(*set),
            Poll::Pending => {}
            Poll::SlowDown => {
                interval += SLOW_DOWN_STEP;
                progress(&format!(
                    "the provider asked to slow down (slow_down): polling every {interval} s"
                ));
            }
        }
    }
}

/// `url` as a QR code drawn with Unicode half blocks (two modules per character, light modules
/// drawn, for a dark terminal), with the quiet zone, for a phone to scan; `None` when it is too
/// long for a QR code (pure).
pub fn terminal_qr(url: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code =
        qrcode::QrCode::with_error_correction_level(url.as_bytes(), qrcode::EcLevel::L).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// The terminal lines that tell the user where to go (pure).
pub fn instructions(device: &DeviceAuthorization, name: &str) -> String {
    let mut text = format!(
        "To sign in {name}, open {} and enter the code {}\n",
        device.verification_uri, device.user_code
    );
    if let Some(complete) = &device.verification_uri_complete {
        text.push_str(&format!("or open {complete}\n"));
    }
    text.push_str(&format!(
        "The code expires in {} min. Waiting for the approval...\n",
        device.expires_in.div_ceil(60)
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Endpoints {
        Preset::Github.endpoints()
    }

    fn poll_of(status: u16, body: &str) -> Result<Poll, LoginError> {
        classify(
            status,
            body.as_bytes(),
            &endpoints(),
            "cid",
            None,
            &["repo".into()],
        )
    }

    #[test]
    fn every_rfc_8628_answer_is_classified() {
        assert!(matches!(
            poll_of(400, r#"{"error":"authorization_pending"}"#),
            Ok(Poll::Pending)
        ));
        assert!(matches!(
            poll_of(200, r#"{"error":"slow_down"}"#),
            Ok(Poll::SlowDown)
        ));
        assert!(matches!(
            poll_of(400, r#"{"error":"access_denied"}"#),
            Err(LoginError::Denied)
        ));
        assert!(matches!(
            poll_of(400, r#"{"error":"expired_token"}"#),
            Err(LoginError::Expired)
        ));
        let other = poll_of(
            400,
            r#"{"error":"invalid_client","error_description":"no"}"#,
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(
            other.contains("invalid_client") && other.contains(": no"),
            "{other}"
        );
        let Ok(Poll::Tokens(set)) = poll_of(
            200,
            r#"{"access_token":"gho_abc123xyz","refresh_token":"ghr_def456","expires_in":28800,"scope":"repo,gist","token_type":"bearer"}"#,
        ) else {
            panic!("tokens");
        };
        assert_eq!(
            set.token_endpoint,
            "https://github.com/login/oauth/access_token"
        );
        assert_eq!(set.scopes, ["repo", "gist"]);
        assert!(set.expires_at.expect("expiry") > now_unix());
        assert!(
            TokenSet::parse(&set.to_json()).is_ok(),
            "what is sealed parses back"
        );
    }

    #[test]
    fn the_terminal_qr_code_draws_exactly_the_modules_of_the_url() {
        let url = "https://github.com/login/device?user_code=WDJB-MJHT";
        let drawn = terminal_qr(url).expect("fits");
        let code = qrcode::QrCode::with_error_correction_level(url.as_bytes(), qrcode::EcLevel::L)
            .expect("code");
        let (w, quiet) = (code.width(), 4);
        let colors = code.to_colors();
        // Back from half blocks to modules: upper and lower halves are one row each; a drawn
        // (filled) half is a light module.
        let rows: Vec<Vec<char>> = drawn.lines().map(|l| l.chars().collect()).collect();
        assert_eq!(rows.len(), (w + 2 * quiet).div_ceil(2));
        for y in 0..w {
            for x in 0..w {
                let (row, col) = ((y + quiet) / 2, x + quiet);
                let ch = rows[row][col];
                let upper = (y + quiet) % 2 == 0;
                let filled = match ch {
                    '█' => true,
                    '▀' => upper,
                    '▄' => !upper,
                    ' ' => false,
                    other => panic!("unexpected {other:?}"),
                };
                let dark = colors[y * w + x] == qrcode::Color::Dark;
                assert_eq!(filled, !dark, "module {x},{y}");
            }
        }
        assert!(
            terminal_qr(&"x".repeat(8000)).is_none(),
            "too long for any QR code"
        );
    }

    #[test]
    fn presets_obey_the_endpoint_rule_and_plain_http_elsewhere_is_refused() {
        for p in [Preset::Github, Preset::Google, Preset::Microsoft] {
            check_endpoints(&p.endpoints()).expect("https presets");
        }
        let mut e = endpoints();
        e.token = "http://10.0.0.1/token".into();
        let err = check_endpoints(&e).expect_err("refused").to_string();
        assert!(
            err.contains("token_endpoint") && err.contains("must be https"),
            "{err}"
        );
    }
}
