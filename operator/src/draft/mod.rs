//! Drafting a Permit's capabilities from its intent (`spec.intent` -> `status.draft`).
//!
//! The drafter is trusted: it reads only the intent's goal and the API documents it fetched
//! from the admin's allowed doc hosts ([`fetch`]), never agent code. Whatever a drafter
//! proposes passes one validator ([`validate`]) that narrows it to what the intent asked for
//! and refuses what the schema would; the owner then approves the Permit with the drafted
//! capabilities like any other. A drafter never approves.
//!
//! Drafters (`--drafter`): `openapi` ([`openapi`], deterministic, the default) and `llm`
//! ([`llm`], an Anthropic Messages or OpenAI Chat Completions compatible endpoint).

pub mod fetch;
pub mod llm;
pub mod openapi;
pub mod validate;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use oauth3_crds::{Capability, Draft, DraftDocument, DraftSource, PermitSpec, spec_digest};

use fetch::{DocFetcher, Fetched};

/// What a drafter proposes for a spec, before validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proposal {
    /// The proposed capabilities.
    pub capabilities: Vec<Capability>,
    /// Where each came from.
    pub sources: Vec<DraftSource>,
    /// Why, one line per decision.
    pub rationale: Vec<String>,
    /// What was left out or narrowed.
    pub not_allowed: Vec<String>,
}

/// The documents fetched for a spec's intents: per intent, its documents in order.
#[derive(Debug, Clone, Default)]
pub struct Documents {
    /// `docs[i]` are the documents of `spec.intent[i]`.
    pub docs: Vec<Vec<Fetched>>,
}

/// One drafter: proposes capabilities for a spec from its intents and their documents.
pub trait Drafter {
    /// The drafter's name as `status.draft.drafter` records it.
    fn name(&self) -> &'static str;
    /// Proposes capabilities for every intent of `spec`.
    ///
    /// # Errors
    /// The reasons, each naming the field.
    fn propose(
        &self,
        spec: &PermitSpec,
        docs: &Documents,
    ) -> impl std::future::Future<Output = Result<Proposal, Vec<String>>> + Send;
}

/// The `openapi` drafter.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenApiDrafter;

impl Drafter for OpenApiDrafter {
    fn name(&self) -> &'static str {
        "openapi"
    }

    async fn propose(&self, spec: &PermitSpec, docs: &Documents) -> Result<Proposal, Vec<String>> {
        let mut all = Proposal::default();
        let mut errors = Vec::new();
        for (i, intent) in spec.intent.iter().enumerate() {
            let fetched = docs.docs.get(i).map(Vec::as_slice).unwrap_or_default();
            let mut parsed = Vec::new();
            for f in fetched {
                match openapi::parse(&f.url, &f.bytes) {
                    Ok(d) => parsed.push((f.url.as_str(), d)),
                    Err(e) => errors.push(format!("intent[{i}].docUrls: {e}")),
                }
            }
            let views: Vec<(&str, &openapi::ApiDoc)> =
                parsed.iter().map(|(u, d)| (*u, d)).collect();
            match openapi::draft_intent(i, intent, &views) {
                Ok(p) => {
                    all.capabilities.extend(p.capabilities);
                    all.sources.extend(p.sources);
                    all.rationale.extend(p.rationale);
                    all.not_allowed.extend(p.not_allowed);
                }
                Err(e) => errors.push(e.0),
            }
        }
        if errors.is_empty() {
            Ok(all)
        } else {
            Err(errors)
        }
    }
}

/// The configured drafter.
#[derive(Debug)]
pub enum AnyDrafter {
    /// `--drafter openapi`.
    OpenApi(OpenApiDrafter),
    /// `--drafter llm`.
    Llm(llm::LlmDrafter),
}

impl Drafter for AnyDrafter {
    fn name(&self) -> &'static str {
        match self {
            Self::OpenApi(d) => d.name(),
            Self::Llm(d) => d.name(),
        }
    }

    async fn propose(&self, spec: &PermitSpec, docs: &Documents) -> Result<Proposal, Vec<String>> {
        match self {
            Self::OpenApi(d) => d.propose(spec, docs).await,
            Self::Llm(d) => d.propose(spec, docs).await,
        }
    }
}

/// Drafting as the operator runs it: a fetcher and a drafter.
#[derive(Debug)]
pub struct Drafting {
    /// Fetches the documents.
    pub fetcher: DocFetcher,
    /// Proposes the capabilities.
    pub drafter: AnyDrafter,
}

impl Drafting {
    /// The draft for `spec` at `now`: its documents fetched, capabilities proposed and
    /// validated. Failures are recorded in the draft's `errors` (never partly approved).
    pub async fn draft(&self, spec: &PermitSpec, now: Timestamp) -> Draft {
        let source_digest = spec_digest(spec).unwrap_or_default();
        let mut draft = Draft {
            drafter: self.drafter.name().to_owned(),
            source_digest,
            capabilities: Vec::new(),
            sources: Vec::new(),
            documents: Vec::new(),
            rationale: None,
            not_allowed: Vec::new(),
            errors: Vec::new(),
            at: Time(now),
        };
        let mut docs = Documents::default();
        for (i, intent) in spec.intent.iter().enumerate() {
            let mut fetched = Vec::new();
            for (j, url) in intent.doc_urls.iter().enumerate() {
                match self.fetcher.fetch(url).await {
                    Ok(f) => {
                        if !draft.documents.iter().any(|d| d.url == f.url) {
                            draft.documents.push(DraftDocument {
                                url: f.url.clone(),
                                digest: f.digest.clone(),
                            });
                        }
                        fetched.push(f);
                    }
                    Err(e) => draft.errors.push(format!("intent[{i}].docUrls[{j}]: {e}")),
                }
            }
            docs.docs.push(fetched);
        }
        if !draft.errors.is_empty() {
            return draft;
        }
        let proposal = match self.drafter.propose(spec, &docs).await {
            Ok(p) => p,
            Err(errors) => {
                draft.errors = errors;
                return draft;
            }
        };
        let mut origins: Vec<String> = Vec::new();
        for f in docs.docs.iter().flatten() {
            if let Some(o) = openapi::server_origin(&f.url, &f.bytes)
                && !origins.contains(&o)
            {
                origins.push(o);
            }
        }
        match validate::narrow(spec, &origins, proposal) {
            Ok(p) => {
                draft.capabilities = p.capabilities;
                draft.sources = p.sources;
                draft.rationale = Some(p.rationale.join("\n")).filter(|r| !r.is_empty());
                draft.not_allowed = p.not_allowed;
            }
            Err((p, errors)) => {
                draft.not_allowed = p.not_allowed;
                draft.errors = errors;
            }
        }
        draft
    }
}

/// Whether `spec` needs a (new) draft given the one in status (pure): it has intents and the
/// draft was made for another spec, or failed more than `retry` before `now`.
pub fn needs_draft(
    spec: &PermitSpec,
    current: Option<&Draft>,
    now: Timestamp,
    retry: std::time::Duration,
) -> bool {
    if spec.intent.is_empty() {
        return false;
    }
    let Some(d) = current else { return true };
    let digest = spec_digest(spec).unwrap_or_default();
    if d.source_digest != digest {
        return true;
    }
    let retry = k8s_openapi::jiff::SignedDuration::try_from(retry).unwrap_or_default();
    !d.errors.is_empty() && d.at.0.checked_add(retry).is_ok_and(|t| t <= now)
}
