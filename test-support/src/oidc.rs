//! A real OpenID provider on loopback for the oauth2 tests: the example provider of the
//! published `github.com/zitadel/oidc/v3` Go module (device grant, rotating refresh tokens
//! that are deleted when used), built by `.ci/oidc/build.sh` into a cache outside
//! the repository and started here as a child process. [`OidcProvider::approve`] plays the
//! user at the provider's own device-verification pages.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

/// The provider's public device client (device_code and refresh_token grants, no secret).
pub const CLIENT_ID: &str = "oauth3-cli";
/// The password of the provider's built-in test user.
const PASSWORD: &str = "verysecure";

/// A running provider; killed on drop.
pub struct OidcProvider {
    /// The issuer, `http://127.0.0.1:PORT/`.
    pub issuer: String,
    /// The provider's discovery document.
    pub discovery: Value,
    child: tokio::process::Child,
    http: reqwest::Client,
}

/// The binary: `$OAUTH3_OIDC_PROVIDER`, else what `.ci/oidc/build.sh` prints (cached builds
/// answer at once).
fn binary() -> String {
    if let Ok(p) = std::env::var("OAUTH3_OIDC_PROVIDER") {
        return p;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/oidc/build.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("running .ci/oidc/build.sh");
    assert!(out.status.success(), ".ci/oidc/build.sh failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("build.sh prints the binary")
        .trim()
        .to_owned()
}

impl OidcProvider {
    /// Starts a provider with the default device grant.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a provider with extra environment (`OIDC_SLOW_DOWN_POLLS`,
    /// `OIDC_DEVICE_LIFETIME`, see `.ci/oidc/main.go`).
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let port = crate::free_port();
        let mut cmd = tokio::process::Command::new(binary());
        cmd.env("OIDC_PORT", port.to_string())
            .env("OIDC_CLIENT_ID", CLIENT_ID)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("the OpenID provider starts");
        let issuer = format!("http://127.0.0.1:{port}/");
        // reqwest may be built without a default TLS provider in this workspace.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("client");
        let url = format!("{issuer}.well-known/openid-configuration");
        let discovery = crate::wait_until(
            "the OpenID provider answers",
            Duration::from_secs(20),
            || {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
                    r.json::<Value>().await.map_err(|e| e.to_string())
                }
            },
        )
        .await;
        Self {
            issuer,
            discovery,
            child,
            http,
        }
    }

    /// An endpoint from discovery (`token_endpoint`, `device_authorization_endpoint`, ...).
    pub fn endpoint(&self, field: &str) -> String {
        self.discovery[field]
            .as_str()
            .unwrap_or_else(|| panic!("discovery has no {field}"))
            .to_owned()
    }

    async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        cookie: Option<&str>,
    ) -> reqwest::Response {
        let body = form
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send().await.expect("the provider answers")
    }

    /// Plays the user: signs in at the verification page with `user_code` and allows (or
    /// denies) the device.
    pub async fn approve(&self, user_code: &str, allow: bool) {
        let login = format!("{}device/login", self.issuer);
        let r = self
            .post_form(
                &login,
                &[
                    ("user_code", user_code),
                    ("username", "test-user@127.0.0.1"),
                    ("password", PASSWORD),
                ],
                None,
            )
            .await;
        assert!(r.status().is_success(), "device login: {}", r.status());
        let cookie = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .collect::<Vec<_>>()
            .join("; ");
        let action = if allow { "allowed" } else { "denied" };
        let r = self
            .http
            .get(format!("{}device/confirm?action={action}", self.issuer))
            .header("cookie", cookie)
            .send()
            .await
            .expect("confirm answers");
        let text = r.text().await.unwrap_or_default();
        assert!(
            text.contains(&format!("Device authorization {action}")),
            "{text}"
        );
    }

    /// A whole device sign-in as a client would do it, approved at once: the token response.
    pub async fn sign_in(&self) -> Value {
        let r = self
            .post_form(
                &self.endpoint("device_authorization_endpoint"),
                &[("client_id", CLIENT_ID), ("scope", "openid offline_access")],
                None,
            )
            .await;
        let auth: Value = r.json().await.expect("device authorization JSON");
        self.approve(auth["user_code"].as_str().expect("user_code"), true)
            .await;
        let r = self
            .post_form(
                &self.endpoint("token_endpoint"),
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    (
                        "device_code",
                        auth["device_code"].as_str().expect("device_code"),
                    ),
                    ("client_id", CLIENT_ID),
                ],
                None,
            )
            .await;
        let tokens: Value = r.json().await.expect("token JSON");
        assert!(tokens["refresh_token"].is_string(), "{tokens}");
        tokens
    }

    /// Whether `access_token` is valid now (the provider's userinfo endpoint accepts it).
    pub async fn token_is_valid(&self, access_token: &str) -> bool {
        self.http
            .get(self.endpoint("userinfo_endpoint"))
            .bearer_auth(access_token)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Uses a refresh token once (as another client holding it would), returning the answer's
    /// HTTP status and JSON.
    pub async fn refresh(&self, refresh_token: &str) -> (u16, Value) {
        let r = self
            .post_form(
                &self.endpoint("token_endpoint"),
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                    ("client_id", CLIENT_ID),
                ],
                None,
            )
            .await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
