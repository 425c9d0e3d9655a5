//! What the owner sees on Telegram (pure): the request messages, derived from the same spec
//! the sandbox enforces (through [`crate::describe`]), their inline keyboards, the line that
//! shows a decision, and the `/pending` list. Every text fits Telegram's 4096-character limit:
//! a longer one is cut with a note saying how to see everything.

use oauth3_crds::permit::TrustedCode;
use oauth3_crds::{Approval, ApprovalDecision, ApprovalVia, Permit, TrustLevel};
use teloxide::types::{InlineKeyboardButton, InlineKeyboardMarkup};

use super::callback_data::{Action, encode};
use super::state::{Request, RequestKind};
use crate::describe::{SecretFacts, describe_permit_facts};

/// Telegram's limit on a message's text, in UTF-16 code units.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Lines of code shown in a code request before it is cut.
pub const CODE_PREVIEW_LINES: usize = 40;

fn len16(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Cuts `text` so that it plus `suffix` fits in `limit` UTF-16 units, on a character
/// boundary, preferring a line boundary.
fn cut(text: &str, limit: usize) -> &str {
    if len16(text) <= limit {
        return text;
    }
    let mut used = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        used += c.len_utf16();
        if used > limit {
            break;
        }
        end = i + c.len_utf8();
    }
    let head = &text[..end];
    match head.rfind('\n') {
        Some(nl) if nl > end / 2 => &head[..nl],
        _ => head,
    }
}

/// `text` cut to fit Telegram's limit together with `tail`, with a note on how to see
/// everything (`see_all`) when something had to be cut.
pub fn fit(text: &str, tail: &str, see_all: &str) -> String {
    if len16(text) + len16(tail) <= MAX_MESSAGE_LEN {
        return format!("{text}{tail}");
    }
    let note = format!("\n\n[cut to fit Telegram; see everything with: {see_all}]");
    let room = MAX_MESSAGE_LEN.saturating_sub(len16(&note) + len16(tail));
    format!("{}{note}{tail}", cut(text, room))
}

/// The command that shows a Permit in full.
pub fn get_command(namespace: &str, name: &str) -> String {
    format!("kubectl oauth3 get {name} -n {namespace}")
}

fn permit_text(permit: &Permit, digest: &str, facts: &SecretFactsAt<'_>) -> String {
    format!(
        "oauth3: approval requested\n\n{}\nApprove to allow exactly this for {}; Deny to refuse it.",
        describe_permit_facts(permit, digest, facts.0, facts.1).trim_end(),
        permit.spec.valid_for
    )
}

/// The message asking the owner to approve a Permit's spec with `digest`. When it is too long
/// for Telegram, the agent's description is shortened first, so the rules that will be
/// enforced stay visible; only then is the tail cut.
pub fn permit_request_text(permit: &Permit, digest: &str) -> String {
    permit_request_text_facts(
        permit,
        digest,
        &std::collections::BTreeMap::new(),
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    )
}

/// What the sealed Secrets say of themselves, and when.
type SecretFactsAt<'a> = (
    &'a std::collections::BTreeMap<String, SecretFacts>,
    k8s_openapi::jiff::Timestamp,
);

/// [`permit_request_text`] with what the Permit's sealed Secrets say of themselves at `now`
/// (an oauth2 credential reads "GITHUB (OAuth, expires in 41 min, refreshed in the TEE)").
pub fn permit_request_text_facts(
    permit: &Permit,
    digest: &str,
    facts: &std::collections::BTreeMap<String, SecretFacts>,
    now: k8s_openapi::jiff::Timestamp,
) -> String {
    let facts = (facts, now);
    let ns = permit.metadata.namespace.as_deref().unwrap_or("?");
    let name = permit.metadata.name.as_deref().unwrap_or("?");
    let mut text = permit_text(permit, digest, &facts);
    let over = len16(&text).saturating_sub(MAX_MESSAGE_LEN - 200);
    if over > 0 {
        let mut shorter = permit.clone();
        let description = &permit.spec.description;
        let keep = len16(description).saturating_sub(over + 64);
        let usable = permit.usable_draft().is_some();
        shorter.spec.description = format!(
            "{} [... description shortened; see everything with: {}]",
            cut(description, keep),
            get_command(ns, name)
        );
        // The shortened copy is only shown: its draft still describes the same rules.
        if usable
            && let Some(d) = shorter.status.as_mut().and_then(|s| s.draft.as_mut())
            && let Ok(digest) = oauth3_crds::spec_digest(&shorter.spec)
        {
            d.source_digest = digest;
        }
        text = permit_text(&shorter, digest, &facts);
    }
    fit(&text, "", &get_command(ns, name))
}

/// The message asking the owner to trust a piece of code (in `language`) under a perCode
/// Permit.
pub fn code_request_text(
    permit: &Permit,
    code_digest: &str,
    code: &str,
    language: oauth3_crds::CodeLanguage,
    executions: &[String],
) -> String {
    let language = match language {
        oauth3_crds::CodeLanguage::JavaScript => "JavaScript",
        oauth3_crds::CodeLanguage::TypeScript => "TypeScript",
    };
    let ns = permit.metadata.namespace.as_deref().unwrap_or("?");
    let name = permit.metadata.name.as_deref().unwrap_or("?");
    let lines: Vec<&str> = code.lines().collect();
    let shown = lines.len().min(CODE_PREVIEW_LINES);
    let first = executions.first().map(String::as_str).unwrap_or("?");
    let see_code = format!("kubectl get execution {first} -n {ns} -o jsonpath='{{.spec.code}}'");
    let mut text = format!(
        "oauth3: new code wants to run under Permit {name} (namespace {ns})\n\n\
         Executions waiting: {}\nCode digest: {code_digest}\n",
        executions.join(", ")
    );
    if shown < lines.len() {
        text.push_str(&format!(
            "Code ({language}, first {shown} of {} lines; all of it: {see_code}):\n",
            lines.len()
        ));
    } else {
        text.push_str(&format!("Code ({language}, {} lines):\n", lines.len()));
    }
    text.push_str("-----\n");
    text.push_str(&lines[..shown].join("\n"));
    text.push_str("\n-----\nIt can call only what Permit ");
    text.push_str(&format!(
        "{name} allows ({}). Approve once (this Execution), for 24h, or always (until revoked); one byte of change needs approval again.",
        get_command(ns, name)
    ));
    fit(&text, "", &see_code)
}

/// The label of the button that asks for a web sign-in link.
pub const OPEN_WEB_LABEL: &str = "Open on the web";

/// The buttons under a Permit request; with `web`, a row asking for a sign-in link.
pub fn permit_keyboard(
    uid: &str,
    digest: &str,
    valid_for: &str,
    web: bool,
) -> InlineKeyboardMarkup {
    let mut rows = vec![vec![
        InlineKeyboardButton::callback(
            format!("Approve ({valid_for})"),
            encode(Action::ApprovePermit, uid, digest),
        ),
        InlineKeyboardButton::callback("Deny", encode(Action::DenyPermit, uid, digest)),
    ]];
    if web {
        rows.push(vec![InlineKeyboardButton::callback(
            OPEN_WEB_LABEL,
            encode(Action::OpenWebPermit, uid, digest),
        )]);
    }
    InlineKeyboardMarkup::new(rows)
}

/// The buttons under a code request; with `web`, a row asking for a sign-in link.
pub fn code_keyboard(uid: &str, digest: &str, web: bool) -> InlineKeyboardMarkup {
    let mut rows = vec![
        vec![
            InlineKeyboardButton::callback("Approve once", encode(Action::TrustOnce, uid, digest)),
            InlineKeyboardButton::callback("Approve 24h", encode(Action::TrustDay, uid, digest)),
        ],
        vec![
            InlineKeyboardButton::callback("Always", encode(Action::TrustAlways, uid, digest)),
            InlineKeyboardButton::callback("Deny", encode(Action::DenyCode, uid, digest)),
        ],
    ];
    if web {
        rows.push(vec![InlineKeyboardButton::callback(
            OPEN_WEB_LABEL,
            encode(Action::OpenWebCode, uid, digest),
        )]);
    }
    InlineKeyboardMarkup::new(rows)
}

/// The label of the button that opens a sign-in link.
pub const SIGN_IN_LABEL: &str = "Sign in and decide";

/// The message carrying a one-time sign-in link for the request on Permit `namespace/name`.
pub fn sign_in_text(namespace: &str, name: &str, code: bool, minutes: u64) -> String {
    let what = if code {
        "the code waiting under Permit"
    } else {
        "Permit request"
    };
    format!(
        "oauth3: sign-in link for {what} {name} (namespace {namespace})\n\n\
         It opens the whole request on the approval page and lets you decide there without a \
         Kubernetes token. It works once, for {minutes} minutes, and only for this request; do \
         not forward it. Tap \"{OPEN_WEB_LABEL}\" again for a new one."
    )
}

/// The button that opens `link`, when it is a URL Telegram accepts.
pub fn sign_in_keyboard(link: &str) -> Option<InlineKeyboardMarkup> {
    let url = url::Url::parse(link).ok()?;
    Some(InlineKeyboardMarkup::new([[InlineKeyboardButton::url(
        SIGN_IN_LABEL,
        url,
    )]]))
}

fn via_word(v: ApprovalVia) -> &'static str {
    match v {
        ApprovalVia::Telegram => "telegram",
        ApprovalVia::Kubectl => "kubectl",
        ApprovalVia::Web => "web",
    }
}

/// The line that shows a recorded Permit decision: what, who, how, when, and why.
pub fn decided_note(a: &Approval) -> String {
    let word = match a.decision {
        ApprovalDecision::Approved => "Approved",
        ApprovalDecision::Denied => "Denied",
        ApprovalDecision::Revoked => "Revoked",
    };
    let until = a
        .expires_at
        .as_ref()
        .map(|e| format!(" until {}", e.0))
        .unwrap_or_default();
    let why = a
        .reason
        .as_ref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    format!(
        "{word} by {} via {} at {}{until}{why}",
        a.by,
        via_word(a.via),
        a.at.0
    )
}

/// The name of a trust level as the owner reads it.
pub fn level_word(l: TrustLevel) -> &'static str {
    match l {
        TrustLevel::Once => "once",
        TrustLevel::Day => "for 24h",
        TrustLevel::Always => "always",
    }
}

/// The line that shows a recorded code trust.
pub fn trust_note(t: &TrustedCode) -> String {
    let until = t
        .expires_at
        .as_ref()
        .map(|e| format!(" until {}", e.0))
        .unwrap_or_default();
    format!(
        "Code trusted {} by {} at {}{until}",
        level_word(t.level),
        t.by,
        t.at.0
    )
}

/// A request's message after it closed: the original text and the note, within the limit.
pub fn closed_text(req: &Request, note: &str) -> String {
    fit(
        &req.text,
        &format!("\n\n>> {note}"),
        &get_command(&req.namespace, &req.name),
    )
}

/// The answer to `/pending`.
pub fn pending_text(open: &[&Request]) -> String {
    if open.is_empty() {
        return "Nothing is waiting for your decision.".into();
    }
    let mut out = format!("Waiting for your decision ({}):\n", open.len());
    for r in open {
        let what = match r.kind {
            RequestKind::Permit => format!("Permit {} (namespace {})", r.name, r.namespace),
            RequestKind::Code => format!(
                "code {} under Permit {} (namespace {})",
                r.digest, r.name, r.namespace
            ),
        };
        out.push_str(&format!("- {what}, asked at {}\n", unix(r.sent_at)));
    }
    fit(&out, "", "kubectl get permits -A")
}

fn unix(secs: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

/// The answer to `/help` and to unknown commands.
pub const HELP: &str = "oauth3 approvals.\n\
/pending - list requests waiting for your decision\n\
/revoke <namespace>/<permit> - withdraw a Permit's approval\n\
/revoke <namespace>/<permit> sha256:<digest> - stop trusting a piece of code";

#[cfg(test)]
mod tests {
    use super::*;
    use oauth3_crds::PermitSpec;
    use serde_json::json;

    fn permit() -> Permit {
        let spec: PermitSpec = serde_json::from_value(json!({
            "description": "Triage issues",
            "capabilities": [{"name": "github", "baseUrl": "https://api.github.com",
                "paths": ["/repos/o/r/issues/*"], "methods": ["GET", "POST"],
                "query": {"allow": ["state"]},
                "body": {"allowKeys": ["title"], "maxBytes": 2048},
                "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"},
                "rateLimit": {"requests": 30, "perSeconds": 60}}],
            "secrets": ["GITHUB_TOKEN"], "validFor": "7d", "codeReview": "perCode"
        }))
        .expect("spec");
        let mut p = Permit::new("triage", spec);
        p.metadata.namespace = Some("agents".into());
        p
    }

    #[test]
    fn the_request_shows_an_oauth2_secret_with_its_expiry_and_where_it_was_refreshed() {
        let now: k8s_openapi::jiff::Timestamp = "2026-12-03T12:00:00Z".parse().expect("time");
        let facts = std::collections::BTreeMap::from([(
            "GITHUB_TOKEN".to_owned(),
            SecretFacts::OAuth2 {
                expires_at: Some("2026-12-03T12:41:00Z".parse().expect("time")),
                refreshed_in_tee: true,
            },
        )]);
        let text = permit_request_text_facts(&permit(), "sha256:abc", &facts, now);
        assert!(
            text.contains("GITHUB_TOKEN (OAuth, expires in 41 min, refreshed in the TEE)"),
            "{text}"
        );
    }

    #[test]
    fn a_permit_request_shows_every_rule_that_will_be_enforced() {
        let text = permit_request_text(&permit(), "sha256:abc");
        for needle in [
            "Permit triage (namespace agents)",
            "The agent says: \"Triage issues\"",
            "methods: GET, POST",
            "https://api.github.com/repos/o/r/issues/*",
            "query:   only state",
            "only keys title",
            "at most 2048 bytes",
            "30 calls per 60 s",
            "Secrets: GITHUB_TOKEN",
            "Lifetime: 7d after approval",
            "Spec digest: sha256:abc",
            "for 7d",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn a_long_description_is_shortened_before_any_rule_is_cut() {
        let mut p = permit();
        p.spec.description = "Trust me. ".repeat(200);
        for i in 0..6 {
            let mut cap = p.spec.capabilities[0].clone();
            cap.name = format!("github{i}");
            p.spec.capabilities.push(cap);
        }
        let text = permit_request_text(&p, "sha256:abc");
        assert!(len16(&text) <= MAX_MESSAGE_LEN, "{}", len16(&text));
        assert!(text.contains(
            "description shortened; see everything with: kubectl oauth3 get triage -n agents"
        ));
        assert!(
            text.contains("Spec digest: sha256:abc"),
            "the rules and digest stay: {text}"
        );
        assert!(
            text.contains("github5("),
            "the last capability stays visible"
        );
    }

    #[test]
    fn a_huge_permit_is_cut_to_fit_with_a_note_on_how_to_see_all() {
        let mut p = permit();
        p.spec.description = "é".repeat(3000) + &"\u{1F600}".repeat(1000);
        let text = permit_request_text(&p, "sha256:abc");
        assert!(len16(&text) <= MAX_MESSAGE_LEN, "{}", len16(&text));
        assert!(text.contains("see everything with: kubectl oauth3 get triage -n agents"));
    }

    #[test]
    fn a_code_request_shows_the_code_its_digest_and_how_to_see_all() {
        let code = (1..=100)
            .map(|i| format!("line{i}();"))
            .collect::<Vec<_>>()
            .join("\n");
        let text = code_request_text(
            &permit(),
            "sha256:c0de",
            &code,
            oauth3_crds::CodeLanguage::JavaScript,
            &["run-1".into()],
        );
        assert!(text.contains("Code digest: sha256:c0de"));
        assert!(text.contains("line1();\nline2();"));
        assert!(text.contains("line40();") && !text.contains("line41();"));
        assert!(text.contains("first 40 of 100 lines"));
        assert!(text.contains("kubectl get execution run-1 -n agents -o jsonpath='{.spec.code}'"));
        let short = code_request_text(
            &permit(),
            "sha256:c0de",
            "a();",
            oauth3_crds::CodeLanguage::TypeScript,
            &["run-1".into()],
        );
        assert!(short.contains("Code (TypeScript, 1 lines):\n-----\na();\n-----"));
    }

    #[test]
    fn permit_and_code_requests_carry_their_buttons() {
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let labels = |k: InlineKeyboardMarkup| -> Vec<String> {
            k.inline_keyboard
                .into_iter()
                .flatten()
                .map(|b| b.text)
                .collect()
        };
        assert_eq!(
            labels(permit_keyboard("u", digest, "7d", false)),
            ["Approve (7d)", "Deny"]
        );
        assert_eq!(
            labels(code_keyboard("u", digest, false)),
            ["Approve once", "Approve 24h", "Always", "Deny"]
        );
        assert_eq!(
            labels(permit_keyboard("u", digest, "7d", true)),
            ["Approve (7d)", "Deny", OPEN_WEB_LABEL]
        );
        assert_eq!(
            labels(code_keyboard("u", digest, true))
                .last()
                .map(String::as_str),
            Some(OPEN_WEB_LABEL)
        );
        let k = sign_in_keyboard("https://gw.example/signin/a/p?code=ab").expect("a URL button");
        assert_eq!(labels(k), [SIGN_IN_LABEL]);
        assert!(sign_in_keyboard("not a url").is_none());
        let text = sign_in_text("agents", "triage", false, 15);
        assert!(
            text.contains("Permit request triage (namespace agents)")
                && text.contains("once, for 15 minutes"),
            "{text}"
        );
    }

    #[test]
    fn a_closed_message_keeps_its_text_and_shows_the_decision_within_the_limit() {
        let req = Request {
            kind: RequestKind::Permit,
            namespace: "agents".into(),
            name: "triage".into(),
            uid: "u".into(),
            digest: "d".into(),
            chat_id: 1,
            message_id: 1,
            sent_at: 0,
            text: "x".repeat(MAX_MESSAGE_LEN),
            closed: None,
        };
        let text = closed_text(&req, "Approved by telegram:42 via telegram at T");
        assert!(len16(&text) <= MAX_MESSAGE_LEN);
        assert!(text.ends_with("\n\n>> Approved by telegram:42 via telegram at T"));
    }
}
