//! Who is calling, and what they may do, as the API server says.
//!
//! A Bearer token is accepted when the API server accepts it (a TokenReview; answers cached
//! for a short TTL under the token's SHA-256, never the token itself). The caller's namespace
//! is the service account's own (`system:serviceaccount:<ns>:<name>`), or the
//! `X-OAuth3-Namespace` header (required for identities that are not service accounts). What
//! the caller may do there is asked of the API server too (a SubjectAccessReview per right,
//! cached the same way): an agent needs to create Permits / Executions (the `oauth3-agent`
//! role), an owner to patch `permits/status` (the `oauth3-owner` role), a client of a
//! credential proxy `create` on `permits/proxy` for that Permit's name. The gateway then acts
//! with its own identity, only in that namespace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::ids::is_dns_label;

/// Header naming the namespace for identities that are not service accounts.
pub const NAMESPACE_HEADER: &str = "x-oauth3-namespace";

/// Most entries kept in each cache; expired ones are dropped first.
const CACHE_CAP: usize = 4096;

/// An authenticated caller, as the API server identified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User name (`system:serviceaccount:team-a:agent`, `alice@example.com`).
    pub user: String,
    /// User uid, when the API server gave one.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (bound-token claims), passed on to access reviews.
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
    /// The namespace the request acts in.
    pub namespace: String,
}

/// A right the gateway checks before acting for a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Create Permits (oauth3-agent).
    CreatePermits,
    /// Create Executions (oauth3-agent).
    CreateExecutions,
    /// Read Permits (agent or owner).
    ReadPermits,
    /// Read Executions (agent or owner).
    ReadExecutions,
    /// Record decisions: patch `permits/status` (oauth3-owner).
    DecidePermits,
    /// Create Secrets (an owner storing a sealed secret).
    CreateSecrets,
}

impl Right {
    fn attributes(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
    ) {
        match self {
            Self::CreatePermits => ("create", "oauth3.dev", "permits", None),
            Self::CreateExecutions => ("create", "oauth3.dev", "executions", None),
            Self::ReadPermits => ("get", "oauth3.dev", "permits", None),
            Self::ReadExecutions => ("get", "oauth3.dev", "executions", None),
            Self::DecidePermits => ("patch", "oauth3.dev", "permits", Some("status")),
            Self::CreateSecrets => ("patch", "oauth3.dev", "permits", Some("status")),
        }
    }

    /// What the right is, in words, for refusals.
    pub fn describe(self) -> &'static str {
        match self {
            Self::CreatePermits => "create permits (the oauth3-agent role)",
            Self::CreateExecutions => "create executions (the oauth3-agent role)",
            Self::ReadPermits => "read permits",
            Self::ReadExecutions => "read executions",
            Self::DecidePermits => "patch permits/status (the oauth3-owner role)",
            Self::CreateSecrets => {
                "store secrets, which needs the owner's right to patch permits/status (the oauth3-owner role)"
            }
        }
    }
}

struct Cache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Cache<K, V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_CAP {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= CACHE_CAP {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), value));
    }
}

/// An authenticated user before a namespace is chosen.
#[derive(Debug, Clone)]
struct Reviewed {
    user: String,
    uid: Option<String>,
    groups: Vec<String>,
    extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// TokenReview and SubjectAccessReview with short-lived caches.
#[derive(Clone)]
pub struct Identity {
    client: Client,
    tokens: Arc<Cache<[u8; 32], Reviewed>>,
    rights: Arc<Cache<(String, String, Right), bool>>,
    proxy_rights: Arc<Cache<(String, String, String), bool>>,
}

impl Identity {
    /// Reviews with `client`; answers are kept for `ttl` (zero: not cached).
    pub fn new(client: Client, ttl: Duration) -> Self {
        Self {
            client,
            tokens: Arc::new(Cache::new(ttl)),
            rights: Arc::new(Cache::new(ttl)),
            proxy_rights: Arc::new(Cache::new(ttl)),
        }
    }

    /// Authenticates `token`, acting in `namespace_header` or the service account's own
    /// namespace.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] when the API server does not accept the token;
    /// [`ApiError::BadRequest`] when no namespace can be chosen.
    pub async fn authenticate(
        &self,
        token: &str,
        namespace_header: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let reviewed = match self.tokens.get(&key) {
            Some(r) => r,
            None => {
                let r = self.review(token).await?;
                self.tokens.put(key, r.clone());
                r
            }
        };
        let namespace = match namespace_header {
            Some(ns) if is_dns_label(ns) => ns.to_owned(),
            Some(_) => {
                return Err(ApiError::bad(
                    "X-OAuth3-Namespace",
                    "must be a namespace name (lower-case letters, digits and -)",
                ));
            }
            None => service_account_namespace(&reviewed.user).ok_or_else(|| {
                ApiError::bad(
                    "X-OAuth3-Namespace",
                    "required: the caller is not a service account, so name the namespace to act in",
                )
            })?,
        };
        Ok(Caller {
            user: reviewed.user,
            uid: reviewed.uid,
            groups: reviewed.groups,
            extra: reviewed.extra,
            namespace,
        })
    }

    async fn review(&self, token: &str) -> Result<Reviewed, ApiError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(ApiError::kube("checking the token (TokenReview)"))?;
        let status = answer.status.unwrap_or_default();
        let user = status
            .user
            .filter(|_| status.authenticated == Some(true))
            .ok_or_else(|| {
                ApiError::Unauthorized("the token was not accepted by the API server".into())
            })?;
        let name = user
            .username
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("the token names no user".into()))?;
        Ok(Reviewed {
            user: name,
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        })
    }

    /// Whether `caller` has `right` in its namespace.
    ///
    /// # Errors
    /// Only when the API server cannot be asked.
    pub async fn allowed(&self, caller: &Caller, right: Right) -> Result<bool, ApiError> {
        let key = (caller.user.clone(), caller.namespace.clone(), right);
        if let Some(yes) = self.rights.get(&key) {
            return Ok(yes);
        }
        let (verb, group, resource, subresource) = right.attributes();
        let yes = self
            .access_review(caller, verb, group, resource, subresource, None)
            .await?;
        self.rights.put(key, yes);
        Ok(yes)
    }

    /// Whether `caller` may call the credential proxy of Permit `permit` in its namespace:
    /// `create` on `permits/proxy` for that name (what the proxy itself asks through the
    /// operator).
    ///
    /// # Errors
    /// Only when the API server cannot be asked.
    pub async fn may_call_proxy(&self, caller: &Caller, permit: &str) -> Result<bool, ApiError> {
        let key = (
            caller.user.clone(),
            caller.namespace.clone(),
            permit.to_owned(),
        );
        if let Some(yes) = self.proxy_rights.get(&key) {
            return Ok(yes);
        }
        let yes = self
            .access_review(
                caller,
                oauth3_protocol::proxy::PROXY_VERB,
                "oauth3.dev",
                "permits",
                Some(oauth3_protocol::proxy::PROXY_SUBRESOURCE),
                Some(permit),
            )
            .await?;
        self.proxy_rights.put(key, yes);
        Ok(yes)
    }

    /// One SubjectAccessReview for `caller` in its namespace.
    async fn access_review(
        &self,
        caller: &Caller,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: Option<&str>,
        name: Option<&str>,
    ) -> Result<bool, ApiError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                uid: caller.uid.clone(),
                groups: Some(caller.groups.clone()),
                extra: Some(caller.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(caller.namespace.clone()),
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    subresource: subresource.map(Into::into),
                    name: name.map(Into::into),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(ApiError::kube(
                "asking what the caller may do (SubjectAccessReview)",
            ))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    /// Fails unless `caller` has `right`.
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] naming the identity, namespace and right.
    pub async fn require(&self, caller: &Caller, right: Right) -> Result<(), ApiError> {
        if self.allowed(caller, right).await? {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "{} may not {} in namespace {}",
                caller.user,
                right.describe(),
                caller.namespace
            )))
        }
    }
}

/// The namespace of a service-account user name, if it is one.
pub fn service_account_namespace(user: &str) -> Option<String> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (is_dns_label(ns) && !name.is_empty()).then(|| ns.to_owned())
}

/// The Bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, token) = h.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_accounts_act_in_their_own_namespace() {
        assert_eq!(
            service_account_namespace("system:serviceaccount:team-a:agent").as_deref(),
            Some("team-a")
        );
        assert_eq!(service_account_namespace("alice@example.com"), None);
        assert_eq!(
            service_account_namespace("system:serviceaccount:Bad:x"),
            None
        );
        assert_eq!(service_account_namespace("system:serviceaccount:ns:"), None);
    }

    #[test]
    fn only_bearer_credentials_are_read() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn cached_answers_expire() {
        let c: Cache<u8, bool> = Cache::new(Duration::from_millis(30));
        c.put(1, true);
        assert_eq!(c.get(&1), Some(true));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get(&1), None);
        let off: Cache<u8, bool> = Cache::new(Duration::ZERO);
        off.put(1, true);
        assert_eq!(off.get(&1), None);
    }
}
