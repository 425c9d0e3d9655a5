//! Redaction: the one engine that scrubs every known encoding of every secret from what the
//! runner emits. One [`Redactor`] is built per run from the opened secrets and shared by
//! every emitter: the response values and error messages the scoped fetch hands into the
//! sandbox, console capture, the result JSON, stdout, stderr, the error text and the call log.
//!
//! For each secret the [`Redactor`] precomputes the forms a value commonly takes on its way into
//! output: raw; JSON-escaped; percent-encoded (upper- and lower-case hex, space as `%20` or `+`,
//! for the common "safe character" sets); hex (lower and upper case); and base64 (standard and
//! URL-safe, padded and unpadded, plus the stable core of the encoding at each of the three
//! byte alignments, so a secret embedded inside a longer base64 string is caught too). All forms
//! are searched at once with Aho-Corasick (leftmost-longest) and replaced by `[REDACTED]`.
//!
//! JSON values are redacted in their strings, their object keys and their numbers: a number
//! whose decimal text contains a secret, or that equals a secret read as a number (a PIN
//! echoed as `{"pin": 123456}`, `123456.0` or `1.23456e5`), becomes the string `[REDACTED]`.
//!
//! Text that is cut to a size is redacted first and cut afterwards ([`Redactor::redact_capped`]),
//! so a secret straddling the cut is replaced whole instead of leaving its prefix behind.
//!
//! Secrets shorter than [`MIN_SECRET_LEN`] bytes are ignored: replacing every occurrence of a
//! one- to three-byte string would shred unrelated output without protecting anything (such a
//! value cannot be a credential worth hiding).
//!
//! A body streamed in chunks is redacted by [`StreamRedactor`] with the same patterns.

mod stream;

pub use stream::StreamRedactor;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

/// What every occurrence of a secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";
/// Secrets shorter than this many bytes are not redacted (see the module docs).
pub const MIN_SECRET_LEN: usize = 4;
/// Fallback markers, used when a secret's forms occur inside `[REDACTED]` itself.
const MARKERS: [&str; 3] = [REDACTED, "<redacted>", "***"];
/// Replacement rounds before giving up and withholding the whole text.
const MAX_ROUNDS: usize = 4;

/// The compiled patterns of one set of secrets.
struct Table {
    matcher: Option<AhoCorasick>,
    patterns: Vec<Zeroizing<String>>,
    /// The secrets that read as finite numbers, as numbers (matched against JSON numbers).
    numbers: Zeroizing<Vec<f64>>,
    /// Length in bytes of the longest form searched for.
    longest: usize,
    marker: &'static str,
}

/// Replaces secret values (in all their encodings) in text and JSON. Built once per run; a
/// secret that appears during the run (an access token refreshed inside the TEE) is added with
/// [`Redactor::add_secrets`], after which every text is redacted for it too.
pub struct Redactor {
    table: std::sync::RwLock<std::sync::Arc<Table>>,
    sources: std::sync::Mutex<Vec<Zeroizing<String>>>,
}

/// Text redacted and then cut to a size (see [`Redactor::redact_capped`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capped {
    /// The redacted text, at most the requested number of bytes, cut at a character boundary.
    pub text: String,
    /// Whether the redacted text was longer and has been cut.
    pub cut: bool,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("patterns", &self.table().patterns.len())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// Builds a redactor for `secrets`; values shorter than [`MIN_SECRET_LEN`] are ignored.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let sources: Vec<Zeroizing<String>> = secrets
            .into_iter()
            .map(|s| Zeroizing::new(s.to_owned()))
            .collect();
        Self {
            table: std::sync::RwLock::new(std::sync::Arc::new(Table::new(
                sources.iter().map(|s| s.as_str()),
            ))),
            sources: std::sync::Mutex::new(sources),
        }
    }

    fn table(&self) -> std::sync::Arc<Table> {
        let guard = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::sync::Arc::clone(&guard)
    }

    /// Adds secrets that appeared during the run: every later text is redacted for them too.
    pub fn add_secrets<'a>(&self, secrets: impl IntoIterator<Item = &'a str>) {
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sources.extend(secrets.into_iter().map(|s| Zeroizing::new(s.to_owned())));
        let table = Table::new(sources.iter().map(|s| s.as_str()));
        *self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(table);
    }

    /// A redactor with no secrets: every text passes unchanged.
    pub fn none() -> Self {
        Self::new([])
    }

    /// A redactor for the values of a run's opened secrets, of every cookie in those that are
    /// cookie jars (a cookie echoed alone is as secret as the jar), and of every token of
    /// those that are oauth2 token sets.
    pub fn for_secrets(secrets: &crate::run::Secrets) -> Self {
        let jars: Vec<oauth3_protocol::cookies::CookieJar> = secrets
            .values()
            .filter(|s| s.trim_start().starts_with(['{', '[']))
            .filter_map(|s| oauth3_protocol::cookies::CookieJar::parse(s).ok())
            .collect();
        let cookie_values: Vec<zeroize::Zeroizing<String>> = jars
            .iter()
            .flat_map(|j| j.values().map(|v| zeroize::Zeroizing::new(v.to_owned())))
            .collect();
        let token_sets: Vec<oauth3_protocol::oauth2::TokenSet> = secrets
            .values()
            .filter(|s| oauth3_protocol::oauth2::TokenSet::looks_like(s))
            .filter_map(|s| oauth3_protocol::oauth2::TokenSet::parse(s).ok())
            .collect();
        Self::new(
            secrets
                .values()
                .map(|s| s.as_str())
                .chain(cookie_values.iter().map(|v| v.as_str()))
                .chain(token_sets.iter().flat_map(|t| t.secret_values())),
        )
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.table().is_empty()
    }

    /// Length in bytes of the longest form searched for (0 when there is nothing to redact):
    /// any occurrence of a secret in any form is at most this long.
    pub fn longest_form(&self) -> usize {
        self.table().longest
    }

    /// Replaces every form of every secret in `text` with `[REDACTED]`.
    ///
    /// Replacement is repeated until no form remains (a replacement can join its neighbours
    /// into a new occurrence); if that does not settle, the whole text is withheld.
    pub fn redact(&self, text: &str) -> String {
        self.table().redact(text)
    }

    /// Redacts `text`, then cuts the result to at most `max_bytes` bytes (at a character
    /// boundary). Redacting first means a secret straddling the cut is replaced whole: the
    /// kept part never ends in a prefix of a secret that the uncut text held complete.
    pub fn redact_capped(&self, text: &str, max_bytes: usize) -> Capped {
        let mut text = self.redact(text);
        if text.len() <= max_bytes {
            return Capped { text, cut: false };
        }
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        Capped { text, cut: true }
    }

    /// Redacts every string, object key and number in a JSON value. A number whose decimal
    /// text contains a secret, or that equals a secret read as a number, becomes the string
    /// `[REDACTED]`.
    pub fn redact_json(&self, value: &serde_json::Value) -> serde_json::Value {
        self.table().redact_json(value)
    }
}

impl Table {
    fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut patterns: Vec<Zeroizing<String>> = Vec::new();
        let mut numbers = Zeroizing::new(Vec::new());
        for secret in secrets {
            if secret.len() >= MIN_SECRET_LEN {
                if let Ok(n) = secret.trim().parse::<f64>()
                    && n.is_finite()
                {
                    numbers.push(n);
                }
                for form in forms(secret) {
                    if form.len() >= MIN_SECRET_LEN {
                        patterns.push(form);
                    }
                }
            }
        }
        patterns.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        patterns.dedup_by(|a, b| a.as_str() == b.as_str());
        let marker = MARKERS
            .iter()
            .copied()
            .find(|m| !patterns.iter().any(|p| m.contains(p.as_str())))
            .unwrap_or("#");
        let matcher = if patterns.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(patterns.iter().map(|p| p.as_bytes()))
                .ok()
        };
        let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        Self {
            matcher,
            patterns,
            numbers,
            longest,
            marker,
        }
    }

    fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Replaces every form of every secret in `text` with `[REDACTED]`.
    ///
    /// Replacement is repeated until no form remains (a replacement can join its neighbours
    /// into a new occurrence); if that does not settle, the whole text is withheld.
    fn redact(&self, text: &str) -> String {
        let Some(matcher) = &self.matcher else {
            if self.patterns.is_empty() {
                return text.to_owned();
            }
            return self.marker.to_owned();
        };
        let mut current = text.to_owned();
        for _ in 0..MAX_ROUNDS {
            if !matcher.is_match(&current) {
                return current;
            }
            let replacements = vec![self.marker; self.patterns.len()];
            current = matcher.replace_all(&current, &replacements);
        }
        if matcher.is_match(&current) {
            self.marker.to_owned()
        } else {
            current
        }
    }

    /// Redacts every string, object key and number in a JSON value. A number whose decimal
    /// text contains a secret, or that equals a secret read as a number, becomes the string
    /// `[REDACTED]`.
    fn redact_json(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        if self.is_empty() {
            return value.clone();
        }
        match value {
            Value::String(s) => Value::String(self.redact(s)),
            Value::Number(n) => {
                let text = n.to_string();
                let equal = n.as_f64().is_some_and(|f| self.numbers.contains(&f));
                if equal || self.redact(&text) != text {
                    Value::String(self.marker.to_owned())
                } else {
                    Value::Number(n.clone())
                }
            }
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.redact_json(v)).collect())
            }
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (key, item) in map {
                    let mut new_key = self.redact(key);
                    let mut n = 2;
                    while out.contains_key(&new_key) {
                        new_key = format!("{}#{n}", self.redact(key));
                        n += 1;
                    }
                    out.insert(new_key, self.redact_json(item));
                }
                Value::Object(out)
            }
            Value::Null | Value::Bool(_) => value.clone(),
        }
    }
}

/// Characters left unencoded by common percent-encoders, besides ASCII alphanumerics:
/// RFC 3986 unreserved, JavaScript `encodeURIComponent`, HTML form encoding, `encodeURI`.
const PERCENT_SAFE_SETS: [&str; 4] = ["-._~", "-_.!~*'()", "*-._", "-_.!~*'();,/?:@&=+$#"];

/// Every encoded form of `secret` that is redacted (pure). Public for tests and tooling.
pub fn forms(secret: &str) -> Vec<Zeroizing<String>> {
    let bytes = secret.as_bytes();
    let mut out: Vec<Zeroizing<String>> = vec![Zeroizing::new(secret.to_owned())];
    // JSON-escaped: as serde_json writes it, with non-ASCII as `\u` escapes, and either of
    // those with `/` escaped as `\/`.
    let json = Zeroizing::new(serde_json::to_string(secret).unwrap_or_default());
    let json_inner = Zeroizing::new(
        json.get(1..json.len().saturating_sub(1))
            .unwrap_or_default()
            .to_owned(),
    );
    let ascii = Zeroizing::new(json_ascii_escape(secret));
    for escaped in [&json_inner, &ascii] {
        out.push(Zeroizing::new(escaped.replace('/', "\\/")));
        out.push(escaped.clone());
    }
    // Percent-encoded.
    for safe in PERCENT_SAFE_SETS {
        for upper in [true, false] {
            for plus_for_space in [false, true] {
                out.push(percent_encode(bytes, safe, upper, plus_for_space));
            }
        }
    }
    // Hex.
    let lower = Zeroizing::new(hex::encode(bytes));
    out.push(Zeroizing::new(lower.to_ascii_uppercase()));
    out.push(lower);
    // Base64, whole.
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(Zeroizing::new(engine.encode(bytes)));
    }
    // Base64, the characters determined by the secret alone at each alignment.
    for offset in 0..3usize {
        let mut shifted = Zeroizing::new(vec![0u8; offset]);
        shifted.extend_from_slice(bytes);
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = Zeroizing::new(engine.encode(&shifted[..]));
            let start = (offset * 8).div_ceil(6);
            let end = ((offset + bytes.len()) * 8) / 6;
            if let Some(core) = encoded.get(start..end) {
                out.push(Zeroizing::new(core.to_owned()));
            }
        }
    }
    out
}

fn json_ascii_escape(secret: &str) -> String {
    let mut out = String::new();
    for c in secret.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out
}

fn percent_encode(
    bytes: &[u8],
    safe: &str,
    upper: bool,
    plus_for_space: bool,
) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(bytes.len() * 3));
    for &b in bytes {
        if b.is_ascii_alphanumeric() || safe.as_bytes().contains(&b) {
            out.push(char::from(b));
        } else if b == b' ' && plus_for_space {
            out.push('+');
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "s3cr3t/Tok+en value?&é";

    fn redactor() -> Redactor {
        Redactor::new([SECRET])
    }

    fn assert_scrubbed(output: &str, secret: &str) {
        for form in forms(secret) {
            assert!(
                !output.contains(form.as_str()),
                "output {output:?} still contains form {:?}",
                form.as_str()
            );
        }
    }

    #[test]
    fn a_secret_added_during_the_run_is_redacted_from_then_on_beside_the_first_ones() {
        let r = Redactor::new(["first-secret-1"]);
        assert_eq!(r.redact("x new-token-2 y"), "x new-token-2 y");
        r.add_secrets(["new-token-2"]);
        assert_eq!(
            r.redact("first-secret-1 new-token-2"),
            "[REDACTED] [REDACTED]"
        );
        assert_eq!(
            r.longest_form(),
            Redactor::new(["first-secret-1", "new-token-2"]).longest_form()
        );
    }

    #[test]
    fn raw_secret_mid_string_is_replaced() {
        let out = redactor().redact(&format!("token={SECRET}; done"));
        assert_eq!(out, "token=[REDACTED]; done");
    }

    #[test]
    fn base64_forms_standard_and_url_safe_with_and_without_padding_are_replaced() {
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(SECRET);
            let out = redactor().redact(&format!("Basic {encoded}!"));
            assert_eq!(out, "Basic [REDACTED]!", "{encoded}");
        }
    }

    #[test]
    fn secret_inside_a_longer_base64_string_is_caught_at_every_alignment() {
        for prefix in ["", "a", "ab", "abc", "user:"] {
            for suffix in ["", "x", "xy", ":more"] {
                let blob = STANDARD.encode(format!("{prefix}{SECRET}{suffix}"));
                let out = redactor().redact(&blob);
                assert!(out.contains(REDACTED), "{prefix}|{suffix}: {out}");
                assert_scrubbed(&out, SECRET);
                let url_blob = URL_SAFE_NO_PAD.encode(format!("{prefix}{SECRET}{suffix}"));
                assert!(redactor().redact(&url_blob).contains(REDACTED));
            }
        }
    }

    #[test]
    fn percent_encoded_forms_in_both_cases_and_plus_for_space_are_replaced() {
        let r = Redactor::new(["my secret/value"]);
        for encoded in [
            "my%20secret%2Fvalue",
            "my%20secret%2fvalue",
            "my+secret%2Fvalue",
            "my+secret%2fvalue",
            "my%20secret/value",
        ] {
            assert_eq!(r.redact(&format!("?q={encoded}&x=1")), "?q=[REDACTED]&x=1");
        }
    }

    #[test]
    fn json_escaped_forms_are_replaced() {
        let secret = "pa\"ss\\word/é";
        let r = Redactor::new([secret]);
        let in_json = serde_json::to_string(&serde_json::json!({ "p": secret })).expect("json");
        assert_eq!(r.redact(&in_json), r#"{"p":"[REDACTED]"}"#);
        assert_eq!(r.redact(r#"pa\"ss\\word\/\u00e9"#), REDACTED);
    }

    #[test]
    fn hex_forms_in_lower_and_upper_case_are_replaced() {
        let r = Redactor::new(["hexsecret"]);
        let lower = hex::encode("hexsecret");
        assert_eq!(r.redact(&format!("0x{lower}")), "0x[REDACTED]");
        assert_eq!(
            r.redact(&format!("0x{}", lower.to_ascii_uppercase())),
            "0x[REDACTED]"
        );
    }

    #[test]
    fn secrets_shorter_than_four_bytes_are_ignored() {
        let r = Redactor::new(["abc", ""]);
        assert!(r.is_empty());
        assert_eq!(r.redact("abc abc"), "abc abc");
    }

    #[test]
    fn overlapping_secrets_leave_neither_behind() {
        let r = Redactor::new(["abcdef", "defghi", "cdefgh"]);
        let out = r.redact("xxabcdefghiyy");
        for secret in ["abcdef", "defghi", "cdefgh"] {
            assert!(!out.contains(secret), "{out}");
        }
        let nested = Redactor::new(["token", "tokenvalue"]);
        assert_eq!(
            nested.redact("a tokenvalue b token"),
            "a [REDACTED] b [REDACTED]"
        );
    }

    #[test]
    fn secret_that_appears_in_the_marker_uses_another_marker() {
        let r = Redactor::new(["REDACTED"]);
        let out = r.redact("x REDACTED y");
        assert!(!out.contains("REDACTED"), "{out}");
    }

    #[test]
    fn redact_json_scrubs_nested_strings_keys_and_numbers() {
        let r = Redactor::new(["topsecret", "987654321"]);
        let value = serde_json::json!({
            "ok": true,
            "list": [1, "a topsecret b", {"topsecret": null}],
            "nested": {"deep": {"b64": STANDARD.encode("topsecret"), "n": 987654321}},
            "n": 42
        });
        let out = r.redact_json(&value);
        assert_eq!(
            out,
            serde_json::json!({
                "ok": true,
                "list": [1, "a [REDACTED] b", {"[REDACTED]": null}],
                "nested": {"deep": {"b64": "[REDACTED]", "n": "[REDACTED]"}},
                "n": 42
            })
        );
        let text = out.to_string();
        assert!(!text.contains("topsecret") && !text.contains("987654321"));
    }

    #[test]
    fn a_number_equal_to_a_digits_only_secret_becomes_the_marker_in_any_notation() {
        let r = Redactor::new(["48213597"]);
        for text in [
            r#"{"pin": 48213597}"#,
            r#"{"pin": 48213597.0}"#,
            r#"{"pin": 4.8213597e7}"#,
            r#"{"pin": -48213597}"#,
            r#"{"pin": 1482135970}"#,
        ] {
            let value: serde_json::Value = serde_json::from_str(text).expect("json");
            let out = r.redact_json(&value);
            assert_eq!(out, serde_json::json!({"pin": REDACTED}), "{text}");
        }
        assert_eq!(
            r.redact_json(&serde_json::json!({"n": 4821359})),
            serde_json::json!({"n": 4821359}),
            "a number that is not the secret stays a number"
        );
    }

    #[test]
    fn a_long_digits_only_secret_is_caught_even_when_the_number_lost_precision() {
        let secret = "1234567890123456789012345";
        let r = Redactor::new([secret]);
        let value: serde_json::Value =
            serde_json::from_str(&format!(r#"{{"pin": {secret}}}"#)).expect("json");
        assert!(!value.to_string().contains(secret), "parsing rounded it");
        assert_eq!(r.redact_json(&value), serde_json::json!({"pin": REDACTED}));
    }

    #[test]
    fn a_secret_used_as_a_key_is_redacted_in_every_form_at_every_depth() {
        let secret = "48213597";
        let r = Redactor::new([secret]);
        let value = serde_json::json!({
            secret: {hex::encode(secret): [{STANDARD.encode(secret): secret}]}
        });
        let out = r.redact_json(&value);
        assert_eq!(
            out,
            serde_json::json!({REDACTED: {REDACTED: [{REDACTED: REDACTED}]}})
        );
    }

    #[test]
    fn redacting_before_cutting_leaves_no_prefix_of_a_secret_straddling_the_cut() {
        let secret = "sk-live-4b1d9c";
        let r = Redactor::new([secret]);
        for before in 0..20 {
            let text = format!("{}{secret} and more", "x".repeat(before));
            for cap in before + 1..before + secret.len() {
                let capped = r.redact_capped(&text, cap);
                assert!(capped.cut && capped.text.len() <= cap, "{capped:?}");
                assert!(
                    !capped.text.contains("sk-"),
                    "{cap}: {capped:?} keeps a prefix of the secret"
                );
            }
        }
        assert_eq!(
            r.redact_capped(&format!("a {secret}"), 100),
            Capped {
                text: "a [REDACTED]".to_owned(),
                cut: false
            }
        );
        assert_eq!(
            r.redact_capped("éé", 3).text,
            "é",
            "cut at a character boundary"
        );
    }

    #[test]
    fn scrub_removes_every_secret_occurrence() {
        let r = Redactor::new(["sk-1"]);
        assert_eq!(r.redact("a sk-1 b sk-1"), "a [REDACTED] b [REDACTED]");
        assert_eq!(
            r.redact_json(&serde_json::json!({"sk-1": ["x sk-1"]})),
            serde_json::json!({"[REDACTED]": ["x [REDACTED]"]})
        );
    }

    #[test]
    fn redaction_reaches_every_string_in_a_result_keys_included() {
        let r = Redactor::new(["tok-value"]);
        let v =
            serde_json::json!({"tok-value": ["a tok-value", {"n": 1, "tok-value2": "tok-value"}]});
        let out = r.redact_json(&v);
        assert!(!out.to_string().contains("tok-value"), "{out}");
        assert_eq!(out[REDACTED][1]["n"], 1);
    }

    #[test]
    fn redact_json_keeps_keys_that_collide_after_redaction() {
        let r = Redactor::new(["key-one", "key-two"]);
        let out = r.redact_json(&serde_json::json!({"key-one": 1, "key-two": 2}));
        assert_eq!(out.as_object().map(serde_json::Map::len), Some(2));
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        assert!(!format!("{:?}", redactor()).contains("s3cr3t"));
    }

    proptest! {
        #[test]
        fn output_never_contains_any_form_of_any_secret(
            secrets in proptest::collection::vec("[ -~éü€]{4,24}", 1..4),
            before in "[ -~é]{0,30}",
            middle in "[ -~]{0,10}",
            after in "[ -~é]{0,30}",
            which in 0usize..6,
        ) {
            let r = Redactor::new(secrets.iter().map(String::as_str));
            let s0 = &secrets[0];
            let encoded = match which {
                0 => s0.clone(),
                1 => STANDARD.encode(format!("{before}{s0}{after}")),
                2 => URL_SAFE_NO_PAD.encode(s0),
                3 => percent_encode(s0.as_bytes(), "-._~", before.len() % 2 == 0, true).to_string(),
                4 => hex::encode(s0),
                _ => serde_json::to_string(s0).expect("json"),
            };
            let last = secrets.last().expect("non-empty");
            let text = format!("{before}{encoded}{middle}{last}{after}");
            let out = r.redact(&text);
            for secret in &secrets {
                for form in forms(secret) {
                    prop_assert!(!out.contains(form.as_str()), "{:?} in {:?}", form.as_str(), out);
                }
            }
        }
    }
}
