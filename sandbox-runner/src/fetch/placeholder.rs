//! Secret placeholders: what `Deno.env.get('NAME')` and `process.env.NAME` give the code for
//! a secret a fetch capability binds, and where the runner puts the real value instead.
//!
//! A placeholder is `OAUTH3_SECRET_<NAME>_<24 random base62 characters>`, new for every run,
//! so it tells the code nothing and cannot be guessed or carried into another run. After the
//! policy allowed a request, [`Placeholders::substitute`] looks for placeholders in every
//! part of it and replaces each by its secret only where the capability's binding for that
//! secret allows: to one of the binding's hosts, in a header (`Authorization: Basic` built
//! with `btoa(user + ':' + placeholder)` included), a query value or the body as the binding
//! says; never in the URL path or a header name. Anything else refuses the whole request
//! before it is sent, and so does a placeholder that is not as written: cut, reversed,
//! lower-cased, percent-, hex- or base64-encoded (other than in `Basic`). Such a form could
//! never be turned into the secret by the upstream (the placeholder is not derived from the
//! secret); refusing it keeps the rule simple to state: a placeholder leaves the sandbox
//! only replaced, where the owner allowed.

use std::collections::BTreeMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use oauth3_crds::SecretLocation;
use rand::Rng as _;
use zeroize::Zeroizing;

use crate::policy::{CompiledBinding, PreparedRequest};

/// The start of every placeholder.
pub const PREFIX: &str = "OAUTH3_SECRET_";
/// Random characters at the end of a placeholder.
pub const RANDOM_LEN: usize = 24;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

struct Entry {
    secret: String,
    token: String,
}

/// The run's placeholders, one per bound secret.
pub struct Placeholders {
    entries: Vec<Entry>,
    /// The forms of placeholders that are not as written (and of the prefix), searched in
    /// what remains once the placeholders as written are taken out.
    disguises: Option<AhoCorasick>,
}

impl std::fmt::Debug for Placeholders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placeholders")
            .field(
                "secrets",
                &self.entries.iter().map(|e| &e.secret).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The request being sent and what decides where its placeholders may go.
struct Place<'a> {
    req: &'a PreparedRequest,
    bindings: &'a [CompiledBinding],
    secrets: &'a BTreeMap<String, Zeroizing<String>>,
}

/// The secret as it is.
fn raw(s: &str) -> Zeroizing<String> {
    Zeroizing::new(s.to_owned())
}

/// The secret as a JSON string's content.
fn json_escaped(s: &str) -> Zeroizing<String> {
    let quoted = Zeroizing::new(serde_json::to_string(s).unwrap_or_default());
    Zeroizing::new(quoted[1..quoted.len() - 1].to_owned())
}

/// How a placeholder was found in one part of a request.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// As written: the indices of the entries, once each, in order of first appearance.
    Tokens(Vec<usize>),
    /// Transformed (or the prefix alone).
    Disguised,
}

const DISGUISED: &str = "a secret placeholder is in it in another form than as written (cut, reversed, lower-cased or encoded other than in Authorization: Basic); a placeholder may be sent only as Deno.env/process.env gave it, where its binding allows";

fn reversed(s: &str) -> String {
    s.chars().rev().collect()
}

impl Placeholders {
    /// No placeholders (a Permit without fetch bindings).
    pub fn none() -> Self {
        Self {
            entries: Vec::new(),
            disguises: None,
        }
    }

    /// New random placeholders for `secrets`.
    pub fn generate<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut rng = rand::rngs::OsRng;
        let mut entries = Vec::new();
        let marker = PREFIX.trim_end_matches('_');
        let mut patterns: Vec<String> = crate::redact::forms(marker)
            .into_iter()
            .map(|f| f.to_string())
            .collect();
        patterns.push(reversed(marker));
        for secret in secrets {
            let random: String = (0..RANDOM_LEN)
                .map(|_| char::from(BASE62[rng.gen_range(0..BASE62.len())]))
                .collect();
            patterns.extend(
                crate::redact::forms(&random)
                    .into_iter()
                    .map(|f| f.to_string()),
            );
            patterns.push(reversed(&random));
            entries.push(Entry {
                secret: secret.to_owned(),
                token: format!("{PREFIX}{secret}_{random}"),
            });
        }
        patterns.sort();
        patterns.dedup();
        let disguises = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&patterns)
            .ok();
        Self { entries, disguises }
    }

    /// `(secret, placeholder)` for each bound secret.
    pub fn environment(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|e| (e.secret.as_str(), e.token.as_str()))
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn disguised(&self, text: &str) -> bool {
        let upper = text.to_ascii_uppercase();
        if upper.contains(PREFIX.trim_end_matches('_')) {
            return true;
        }
        self.disguises.as_ref().is_some_and(|d| d.is_match(text))
    }

    /// Finds the placeholders in `text` (and in its percent-decoding).
    fn scan(&self, text: &str) -> Option<Found> {
        if self.is_empty() {
            return None;
        }
        let mut found = Vec::new();
        let mut rest = text.to_owned();
        for (i, e) in self.entries.iter().enumerate() {
            if rest.contains(&e.token) {
                found.push(i);
                rest = rest.replace(&e.token, "");
            }
        }
        let decoded = percent_encoding::percent_decode_str(&rest).decode_utf8_lossy();
        if self.disguised(&rest) || (decoded != rest && self.disguised(&decoded)) {
            return Some(Found::Disguised);
        }
        (!found.is_empty()).then_some(Found::Tokens(found))
    }

    /// Refuses `text` if any placeholder is in it, in any form (capability calls, which take
    /// no placeholder: their secrets are injected by `auth`).
    pub fn check_free(&self, text: &str, what: &str) -> Result<(), String> {
        match self.scan(text) {
            None => Ok(()),
            Some(Found::Tokens(t)) => Err(format!(
                "{what} carries the placeholder of {}: placeholders are replaced only in fetch() requests a secretBindings entry allows; nothing was sent",
                self.entries[t[0]].secret
            )),
            Some(Found::Disguised) => Err(format!("{what}: {DISGUISED}; nothing was sent")),
        }
    }

    fn value<'s>(
        &self,
        i: usize,
        secrets: &'s BTreeMap<String, Zeroizing<String>>,
    ) -> Result<&'s Zeroizing<String>, String> {
        let secret = &self.entries[i].secret;
        secrets
            .get(secret)
            .ok_or_else(|| format!("secret {secret} is not available"))
    }

    /// Checks that the binding of `secret` in `bindings` allows `location` toward `req`'s
    /// host.
    fn allowed(
        req: &PreparedRequest,
        bindings: &[CompiledBinding],
        secret: &str,
        location: SecretLocation,
        header: Option<&str>,
    ) -> Result<(), String> {
        let host = crate::policy::authority(&req.url);
        let mine: Vec<&CompiledBinding> = bindings.iter().filter(|b| b.secret == secret).collect();
        if mine.is_empty() {
            return Err(format!(
                "{secret} is not bound by capability {} (its secretBindings list where each secret may go)",
                req.capability
            ));
        }
        if mine.iter().any(|b| b.allows(&req.url, location, header)) {
            return Ok(());
        }
        let places: Vec<String> = mine
            .iter()
            .map(|b| {
                let parts: Vec<String> = b
                    .locations
                    .iter()
                    .map(|l| match l {
                        SecretLocation::Header => format!(
                            "header {}",
                            b.headers.iter().cloned().collect::<Vec<_>>().join("/")
                        ),
                        other => other.as_str().to_owned(),
                    })
                    .collect();
                format!("to {} in {}", b.host_list().join(", "), parts.join(", "))
            })
            .collect();
        let place = match header {
            Some(h) => format!("header {h}"),
            None => format!("the {}", location.as_str()),
        };
        Err(format!(
            "{secret} may not be sent to {host} in {place}; its binding allows it only {}",
            places.join("; ")
        ))
    }

    /// The request as it is sent: every placeholder replaced by its secret where `bindings`
    /// allow, or the reason nothing may be sent. Call only after the policy allowed `req`.
    ///
    /// # Errors
    /// A placeholder where no binding allows it, in another form than as written, in the URL
    /// path or a header name, or of a secret that is not available.
    pub(crate) fn substitute(
        &self,
        req: &PreparedRequest,
        bindings: &[CompiledBinding],
        secrets: &BTreeMap<String, Zeroizing<String>>,
    ) -> Result<Option<PreparedRequest>, String> {
        if self.is_empty() {
            return Ok(None);
        }
        let place = Place {
            req,
            bindings,
            secrets,
        };
        let mut out: Option<PreparedRequest> = None;
        if self.scan(req.url.path()).is_some() {
            return Err(
                "a secret placeholder is in the URL path, where no secret may go".to_owned(),
            );
        }
        if let Some(query) = req.url.query() {
            let form = |s: &str| {
                Zeroizing::new(url::form_urlencoded::byte_serialize(s.as_bytes()).collect())
            };
            if let Some(q) = self.replace(
                &place,
                "the query",
                query,
                SecretLocation::Query,
                None,
                &form,
            )? {
                let mut next = req.clone();
                next.url.set_query(Some(&q));
                out = Some(next);
            }
        }
        let mut headers = Vec::with_capacity(req.headers.len());
        let mut changed = false;
        for (name, v) in &req.headers {
            if self.scan(name).is_some() {
                return Err("a secret placeholder is in a header name".to_owned());
            }
            let what = format!("header {name}");
            let replaced = match self.basic(&place, name, v)? {
                Some(basic) => Some(basic),
                None => self.replace(&place, &what, v, SecretLocation::Header, Some(name), &raw)?,
            };
            match replaced {
                Some(text) => {
                    headers.push((name.clone(), text.to_string()));
                    changed = true;
                }
                None => headers.push((name.clone(), v.clone())),
            }
        }
        if changed {
            out.get_or_insert_with(|| req.clone()).headers = headers;
        }
        if let Some(body) = &req.body {
            let text = String::from_utf8_lossy(body);
            if let std::borrow::Cow::Owned(lossy) = &text {
                if self.scan(lossy).is_some() {
                    return Err(
                        "a secret placeholder is in a body that is not UTF-8 text".to_owned()
                    );
                }
                return Ok(out);
            }
            let ct = req
                .content_type
                .as_deref()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let encode: &dyn Fn(&str) -> Zeroizing<String> = if ct.contains("json") {
                &json_escaped
            } else if ct.starts_with("application/x-www-form-urlencoded") {
                &|s: &str| {
                    Zeroizing::new(url::form_urlencoded::byte_serialize(s.as_bytes()).collect())
                }
            } else {
                &raw
            };
            if let Some(text) = self.replace(
                &place,
                "the body",
                &text,
                SecretLocation::Body,
                None,
                encode,
            )? {
                out.get_or_insert_with(|| req.clone()).body = Some(text.as_bytes().to_vec());
            }
        }
        Ok(out)
    }

    /// `text` (one part of the request, `what`) with each placeholder in it replaced by
    /// `encode(secret)`, once the binding of its secret allows `location` (`header`) toward
    /// the request's host; `None` when it holds none.
    fn replace(
        &self,
        place: &Place<'_>,
        what: &str,
        text: &str,
        location: SecretLocation,
        header: Option<&str>,
        encode: &dyn Fn(&str) -> Zeroizing<String>,
    ) -> Result<Option<Zeroizing<String>>, String> {
        let found = match self.scan(text) {
            None => return Ok(None),
            Some(Found::Disguised) => return Err(format!("{what}: {DISGUISED}")),
            Some(Found::Tokens(found)) => found,
        };
        let mut out = Zeroizing::new(text.to_owned());
        for i in found {
            let entry = &self.entries[i];
            Self::allowed(place.req, place.bindings, &entry.secret, location, header)
                .map_err(|e| format!("{what}: {e}"))?;
            let secret = self.value(i, place.secrets)?;
            out = Zeroizing::new(out.replace(&entry.token, &encode(secret)));
        }
        Ok(Some(out))
    }

    /// `Authorization: Basic <base64(user:password)>` whose decoding carries placeholders:
    /// the header with them replaced, re-encoded. `None` when it is not such a header.
    fn basic(
        &self,
        place: &Place<'_>,
        name: &str,
        value: &str,
    ) -> Result<Option<Zeroizing<String>>, String> {
        if !name.eq_ignore_ascii_case("authorization") {
            return Ok(None);
        }
        let Some((scheme, encoded)) = value.split_once(' ') else {
            return Ok(None);
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return Ok(None);
        }
        let Ok(decoded) = STANDARD.decode(encoded.trim()) else {
            return Ok(None);
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return Ok(None);
        };
        let decoded = Zeroizing::new(decoded);
        let what = format!("header {name}");
        let Some(text) = self.replace(
            place,
            &what,
            &decoded,
            SecretLocation::Header,
            Some(name),
            &raw,
        )?
        else {
            return Ok(None);
        };
        Ok(Some(Zeroizing::new(format!(
            "{scheme} {}",
            STANDARD.encode(text.as_bytes())
        ))))
    }
}
