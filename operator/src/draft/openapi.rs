//! The `openapi` drafter (deterministic, pure): from an OpenAPI 3.x or Swagger 2 JSON
//! description and an intent, the typed-endpoint capabilities for exactly the operations the
//! intent names: fixed path parameters as literal segments, the documented query parameters,
//! the request body's top-level properties as the allowed keys, the security scheme as the
//! credential template, read-only methods unless the intent names a write.
//!
//! Only the parts a draft needs are decoded (responses and examples, most of a large
//! document, are skipped without being kept in memory).

use std::collections::{BTreeMap, BTreeSet};

use oauth3_crds::{AuthSpec, BodyRules, Capability, HttpMethod, Intent, ParamLocation, ParamSpec};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::Proposal;
use oauth3_crds::DraftSource;

/// The most parameters one typed endpoint declares (the schema's `maxProperties`).
const MAX_PARAMS: usize = 32;

/// An API description, as far as drafting reads it.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ApiDoc {
    openapi: Option<String>,
    swagger: Option<String>,
    servers: Vec<Server>,
    host: Option<String>,
    #[serde(rename = "basePath")]
    base_path: Option<String>,
    schemes: Vec<String>,
    paths: BTreeMap<String, PathItem>,
    components: Components,
    parameters: BTreeMap<String, Parameter>,
    definitions: BTreeMap<String, Schema>,
    #[serde(rename = "securityDefinitions")]
    security_definitions: BTreeMap<String, SecurityScheme>,
    security: Option<Vec<BTreeMap<String, IgnoredAny>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Server {
    url: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Components {
    parameters: BTreeMap<String, Parameter>,
    #[serde(rename = "requestBodies")]
    request_bodies: BTreeMap<String, RequestBody>,
    schemas: BTreeMap<String, Schema>,
    #[serde(rename = "securitySchemes")]
    security_schemes: BTreeMap<String, SecurityScheme>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct PathItem {
    get: Option<Operation>,
    head: Option<Operation>,
    post: Option<Operation>,
    put: Option<Operation>,
    patch: Option<Operation>,
    delete: Option<Operation>,
    options: Option<Operation>,
    parameters: Vec<Parameter>,
}

impl PathItem {
    fn operations(&self) -> impl Iterator<Item = (HttpMethod, &Operation)> {
        [
            (HttpMethod::GET, &self.get),
            (HttpMethod::HEAD, &self.head),
            (HttpMethod::POST, &self.post),
            (HttpMethod::PUT, &self.put),
            (HttpMethod::PATCH, &self.patch),
            (HttpMethod::DELETE, &self.delete),
            (HttpMethod::OPTIONS, &self.options),
        ]
        .into_iter()
        .filter_map(|(m, o)| o.as_ref().map(|o| (m, o)))
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Operation {
    #[serde(rename = "operationId")]
    operation_id: Option<String>,
    tags: Vec<String>,
    parameters: Vec<Parameter>,
    #[serde(rename = "requestBody")]
    request_body: Option<RequestBody>,
    security: Option<Vec<BTreeMap<String, IgnoredAny>>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
struct Parameter {
    #[serde(rename = "$ref")]
    reference: Option<String>,
    name: String,
    #[serde(rename = "in")]
    location: String,
    required: bool,
    /// Swagger 2 `in: body`.
    schema: Option<Schema>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
struct RequestBody {
    #[serde(rename = "$ref")]
    reference: Option<String>,
    content: BTreeMap<String, MediaType>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
struct MediaType {
    schema: Option<Schema>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
struct Schema {
    #[serde(rename = "$ref")]
    reference: Option<String>,
    properties: BTreeMap<String, IgnoredAny>,
    required: Vec<String>,
    #[serde(rename = "allOf")]
    all_of: Vec<Schema>,
    #[serde(rename = "oneOf")]
    one_of: Vec<Schema>,
    #[serde(rename = "anyOf")]
    any_of: Vec<Schema>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
struct SecurityScheme {
    #[serde(rename = "type")]
    kind: String,
    scheme: Option<String>,
    name: Option<String>,
    #[serde(rename = "in")]
    location: Option<String>,
}

/// Why a document or an intent could not be drafted; each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OpenApiError(pub String);

/// Parses a JSON API description.
///
/// # Errors
/// When it is not JSON or neither OpenAPI 3.x nor Swagger 2.
pub fn parse(url: &str, bytes: &[u8]) -> Result<ApiDoc, OpenApiError> {
    let doc: ApiDoc = serde_json::from_slice(bytes)
        .map_err(|e| OpenApiError(format!("{url}: not an OpenAPI JSON document: {e}")))?;
    let v3 = doc.openapi.as_deref().is_some_and(|v| v.starts_with("3."));
    let v2 = doc.swagger.as_deref() == Some("2.0");
    if !v3 && !v2 {
        return Err(OpenApiError(format!(
            "{url}: neither OpenAPI 3.x (openapi: 3.x) nor Swagger 2 (swagger: \"2.0\")"
        )));
    }
    Ok(doc)
}

/// The origin (`scheme://host[:port]`) of the API a document describes, if it parses and
/// names a server.
pub fn server_origin(url: &str, bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Servers {
        servers: Vec<Server>,
        host: Option<String>,
        #[serde(rename = "basePath")]
        base_path: Option<String>,
        schemes: Vec<String>,
    }
    let s: Servers = serde_json::from_slice(bytes).ok()?;
    let doc = ApiDoc {
        servers: s.servers,
        host: s.host,
        base_path: s.base_path,
        schemes: s.schemes,
        ..ApiDoc::default()
    };
    let base = server_base(url, &doc).ok()?;
    url::Url::parse(&base)
        .ok()
        .map(|u| u.origin().ascii_serialization())
}

/// A resolved operation with the document it is in.
struct Chosen<'a> {
    url: &'a str,
    doc: &'a ApiDoc,
    op: Resolved<'a>,
}

/// One resolved operation.
struct Resolved<'a> {
    path: &'a str,
    method: HttpMethod,
    item: &'a PathItem,
    op: &'a Operation,
    /// Named explicitly (operationId or `METHOD /path`) rather than through a tag.
    named: bool,
}

impl Resolved<'_> {
    fn label(&self) -> String {
        match &self.op.operation_id {
            Some(id) => format!("{id}: {} {}", self.method, self.path),
            None => format!("{} {}", self.method, self.path),
        }
    }
}

fn resolve<'a>(doc: &'a ApiDoc, wanted: &str) -> Vec<Resolved<'a>> {
    let all = doc.paths.iter().flat_map(|(path, item)| {
        item.operations()
            .map(move |(method, op)| (path.as_str(), method, item, op))
    });
    if let Some(tag) = wanted.strip_prefix("tag:") {
        return all
            .filter(|(_, _, _, op)| op.tags.iter().any(|t| t == tag))
            .map(|(path, method, item, op)| Resolved {
                path,
                method,
                item,
                op,
                named: false,
            })
            .collect();
    }
    if let Some((m, p)) = wanted.split_once(' ')
        && let Some(method) = HttpMethod::parse(m.trim())
    {
        let p = p.trim();
        return all
            .filter(|(path, meth, _, _)| *path == p && *meth == method)
            .map(|(path, method, item, op)| Resolved {
                path,
                method,
                item,
                op,
                named: true,
            })
            .collect();
    }
    all.filter(|(_, _, _, op)| op.operation_id.as_deref() == Some(wanted))
        .map(|(path, method, item, op)| Resolved {
            path,
            method,
            item,
            op,
            named: true,
        })
        .collect()
}

/// Drafts intent `index` of a spec from `docs` (URL and parsed document, in the intent's
/// order), with `secrets` the spec's secret names (pure).
///
/// # Errors
/// [`OpenApiError`] naming the field (`intent[0].operations[1]`, `intent[0].constraints.x`).
pub fn draft_intent(
    index: usize,
    intent: &Intent,
    docs: &[(&str, &ApiDoc)],
) -> Result<Proposal, OpenApiError> {
    let field = format!("intent[{index}]");
    if intent.operations.is_empty() {
        return Err(OpenApiError(format!(
            "{field}.operations: the openapi drafter needs the operations wanted (an operationId such as issues/create, METHOD /path as the document writes it, or tag:NAME)"
        )));
    }
    let mut chosen: Vec<Chosen> = Vec::new();
    let mut proposal = Proposal::default();
    for (j, wanted) in intent.operations.iter().enumerate() {
        let found = docs.iter().find_map(|(url, doc)| {
            let r = resolve(doc, wanted);
            (!r.is_empty()).then_some((*url, *doc, r))
        });
        let Some((url, doc, resolved)) = found else {
            return Err(OpenApiError(format!(
                "{field}.operations[{j}]: {wanted:?} is not an operation of {} (no operationId, METHOD /path or tag:NAME matches)",
                docs.iter().map(|(u, _)| *u).collect::<Vec<_>>().join(", ")
            )));
        };
        for r in resolved {
            if !r.named && !is_read(r.method) {
                proposal.not_allowed.push(format!(
                    "{}: a write method reached only through {wanted}; name it in operations to ask for it",
                    r.label()
                ));
                continue;
            }
            if !chosen
                .iter()
                .any(|c| c.op.path == r.path && c.op.method == r.method)
            {
                chosen.push(Chosen { url, doc, op: r });
            }
        }
    }
    if chosen.is_empty() {
        return Err(OpenApiError(format!(
            "{field}.operations: nothing left to allow (only write methods matched, and none was named)"
        )));
    }
    let mut used_constraints = BTreeSet::new();
    let single = chosen.len() == 1;
    let mut names = BTreeSet::new();
    for c in &chosen {
        let r = &c.op;
        let name = if single {
            intent.name.clone()
        } else {
            format!("{}{}", intent.name, pascal(r))
        };
        if !names.insert(name.clone()) {
            return Err(OpenApiError(format!(
                "{field}: two operations give the capability name {name}"
            )));
        }
        let cap = capability(
            &field,
            intent,
            c,
            name.clone(),
            &mut used_constraints,
            &mut proposal,
        )?;
        proposal.sources.push(DraftSource {
            capability: name,
            document: c.url.to_owned(),
            operation: Some(r.label()),
        });
        proposal.capabilities.push(cap);
    }
    if let Some(unused) = intent
        .constraints
        .keys()
        .find(|k| !used_constraints.contains(*k))
    {
        return Err(OpenApiError(format!(
            "{field}.constraints.{unused}: no drafted operation has a path parameter {unused}"
        )));
    }
    proposal.rationale.push(format!(
        "{}: from the OpenAPI description{}, the operations {}",
        intent.name,
        if chosen.iter().any(|c| c.url != chosen[0].url) {
            "s"
        } else {
            ""
        },
        chosen
            .iter()
            .map(|c| c.op.label())
            .collect::<Vec<_>>()
            .join("; ")
    ));
    Ok(proposal)
}

fn is_read(method: HttpMethod) -> bool {
    matches!(
        method,
        HttpMethod::GET | HttpMethod::HEAD | HttpMethod::OPTIONS
    )
}

/// `IssuesCreate` from `issues/create`, or from the method and path.
fn pascal(r: &Resolved) -> String {
    let source =
        r.op.operation_id
            .clone()
            .unwrap_or_else(|| format!("{} {}", r.method.as_str().to_ascii_lowercase(), r.path));
    source
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn capability(
    field: &str,
    intent: &Intent,
    chosen: &Chosen,
    name: String,
    used_constraints: &mut BTreeSet<String>,
    proposal: &mut Proposal,
) -> Result<Capability, OpenApiError> {
    let (url, doc, r) = (chosen.url, chosen.doc, &chosen.op);
    let base = server_base(url, doc)
        .map_err(|why| OpenApiError(format!("{field}.docUrls: {url}: {why}")))?;
    let label = r.label();
    let mut params: BTreeMap<String, ParamSpec> = BTreeMap::new();
    let mut path = r.path.to_owned();
    let parameters = r.item.parameters.iter().chain(r.op.parameters.iter());
    let mut body_keys: Vec<String> = Vec::new();
    let mut body_required: Vec<String> = Vec::new();
    for p in parameters {
        let p = deref_param(doc, p);
        match p.location.as_str() {
            "path" => {
                let placeholder = format!("{{{}}}", p.name);
                if let Some(fixed) = intent.constraints.get(&p.name) {
                    path = path.replace(&placeholder, fixed);
                    used_constraints.insert(p.name.clone());
                } else if path.contains(&placeholder) {
                    params.insert(p.name.clone(), param(ParamLocation::Path, true));
                }
            }
            "query" => {
                params
                    .entry(p.name.clone())
                    .or_insert_with(|| param(ParamLocation::Query, p.required));
            }
            "body" => {
                if let Some(s) = &p.schema {
                    let (keys, required) = top_level_properties(doc, s, 0);
                    body_keys.extend(keys);
                    body_required.extend(required);
                }
            }
            other => proposal.not_allowed.push(format!(
                "{label}: the {other} parameter {} is not passed (the drafter allows path, query and body parameters)",
                p.name
            )),
        }
    }
    if let Some(rb) = &r.op.request_body {
        let rb = deref_body(doc, rb);
        if let Some(schema) = rb
            .content
            .iter()
            .find(|(k, _)| k.starts_with("application/json"))
            .and_then(|(_, m)| m.schema.as_ref())
        {
            let (keys, required) = top_level_properties(doc, schema, 0);
            body_keys.extend(keys);
            body_required.extend(required);
        } else if !rb.content.is_empty() {
            proposal.not_allowed.push(format!(
                "{label}: bodies other than JSON ({}) are not allowed",
                rb.content.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    body_keys.sort();
    body_keys.dedup();
    let mut allowed_body = Vec::new();
    for key in body_keys {
        if params.contains_key(&key) {
            proposal.not_allowed.push(format!(
                "{label}: body property {key} has the name of a path or query parameter and is left out"
            ));
            continue;
        }
        if params.len() >= MAX_PARAMS {
            proposal.not_allowed.push(format!(
                "{label}: body property {key} (past {MAX_PARAMS} parameters)"
            ));
            continue;
        }
        params.insert(
            key.clone(),
            param(ParamLocation::Body, body_required.contains(&key)),
        );
        allowed_body.push(key);
    }
    if path.contains('{') {
        // Placeholders without a declared parameter: refuse rather than guess.
        let undeclared: Vec<String> = crate::describe::path_placeholders(&path)
            .into_iter()
            .filter(|p| !params.contains_key(p))
            .collect();
        if !undeclared.is_empty() {
            return Err(OpenApiError(format!(
                "{field}: {label}: path parameters {} are not declared in the document",
                undeclared.join(", ")
            )));
        }
    }
    let auth = auth(doc, r.op, intent, &label, proposal);
    let body = (!is_read(r.method)).then(|| BodyRules {
        allow_keys: Some(allowed_body),
        deny_keys: Vec::new(),
        max_bytes: oauth3_crds::constants::DEFAULT_BODY_MAX_BYTES,
        allow_raw: false,
    });
    Ok(Capability {
        name,
        hosts: Vec::new(),
        secret_bindings: Vec::new(),
        base_url: None,
        paths: Vec::new(),
        methods: Vec::new(),
        query: None,
        body,
        auth,
        cookies: None,
        rate_limit: None,
        doc_url: Some(url.to_owned()),
        endpoint: Some(format!("{}{path}", base.trim_end_matches('/'))),
        method: Some(r.method),
        params,
    })
}

fn param(location: ParamLocation, required: bool) -> ParamSpec {
    ParamSpec {
        location,
        required: required || location == ParamLocation::Path,
        pattern: None,
    }
}

/// The API's base URL: the first server (relative ones resolved against the document's URL),
/// or Swagger 2's scheme, host and basePath.
fn server_base(doc_url: &str, doc: &ApiDoc) -> Result<String, String> {
    if let Some(server) = doc.servers.first() {
        if server.url.contains('{') {
            return Err(format!(
                "the server URL {} has variables, which the drafter does not fill in",
                server.url
            ));
        }
        let base = url::Url::parse(doc_url)
            .and_then(|u| u.join(&server.url))
            .map_err(|e| format!("the server URL {}: {e}", server.url))?;
        return Ok(base.as_str().trim_end_matches('/').to_owned());
    }
    if let Some(host) = &doc.host {
        let scheme = if doc.schemes.iter().any(|s| s == "https") || doc.schemes.is_empty() {
            "https"
        } else {
            return Err("the document offers no https scheme".to_owned());
        };
        return Ok(format!(
            "{scheme}://{host}{}",
            doc.base_path.as_deref().unwrap_or("").trim_end_matches('/')
        ));
    }
    Err("the document names no server (servers or host)".to_owned())
}

fn deref_param<'a>(doc: &'a ApiDoc, p: &'a Parameter) -> &'a Parameter {
    let Some(r) = &p.reference else { return p };
    let found = r
        .strip_prefix("#/components/parameters/")
        .and_then(|n| doc.components.parameters.get(n))
        .or_else(|| {
            r.strip_prefix("#/parameters/")
                .and_then(|n| doc.parameters.get(n))
        });
    found.unwrap_or(p)
}

fn deref_body<'a>(doc: &'a ApiDoc, b: &'a RequestBody) -> &'a RequestBody {
    let Some(r) = &b.reference else { return b };
    r.strip_prefix("#/components/requestBodies/")
        .and_then(|n| doc.components.request_bodies.get(n))
        .unwrap_or(b)
}

fn deref_schema<'a>(doc: &'a ApiDoc, s: &'a Schema) -> &'a Schema {
    let Some(r) = &s.reference else { return s };
    r.strip_prefix("#/components/schemas/")
        .and_then(|n| doc.components.schemas.get(n))
        .or_else(|| {
            r.strip_prefix("#/definitions/")
                .and_then(|n| doc.definitions.get(n))
        })
        .unwrap_or(s)
}

/// The top-level property names of a body schema (through `$ref`, `allOf`, `oneOf`, `anyOf`)
/// and the required ones.
fn top_level_properties(doc: &ApiDoc, s: &Schema, depth: usize) -> (Vec<String>, Vec<String>) {
    if depth > 8 {
        return (Vec::new(), Vec::new());
    }
    let s = deref_schema(doc, s);
    let mut keys: Vec<String> = s.properties.keys().cloned().collect();
    let mut required = s.required.clone();
    for sub in s.all_of.iter().chain(&s.one_of).chain(&s.any_of) {
        let (k, r) = top_level_properties(doc, sub, depth + 1);
        keys.extend(k);
        if !s.all_of.is_empty() {
            required.extend(r);
        }
    }
    (keys, required)
}

/// The credential template from the operation's (or the document's) security scheme, with the
/// intent's first secret hint.
fn auth(
    doc: &ApiDoc,
    op: &Operation,
    intent: &Intent,
    label: &str,
    proposal: &mut Proposal,
) -> Option<AuthSpec> {
    let secret = intent.secret_hints.first()?;
    let schemes: BTreeMap<&String, &SecurityScheme> = doc
        .components
        .security_schemes
        .iter()
        .chain(&doc.security_definitions)
        .collect();
    let required = op.security.as_ref().or(doc.security.as_ref());
    let scheme = required
        .and_then(|reqs| {
            reqs.iter()
                .flat_map(|r| r.keys())
                .find_map(|k| schemes.get(k))
        })
        .or_else(|| {
            (schemes.len() == 1)
                .then(|| schemes.values().next())
                .flatten()
        });
    let bearer = || AuthSpec {
        header: Some("Authorization".to_owned()),
        query_param: None,
        value: format!("Bearer {{{secret}}}"),
    };
    match scheme {
        None => {
            proposal.rationale.push(format!(
                "{label}: the document declares no security scheme; the credential {secret} is sent as Authorization: Bearer"
            ));
            Some(bearer())
        }
        Some(s) => match (s.kind.as_str(), s.scheme.as_deref(), s.location.as_deref()) {
            ("http", Some(b), _) if b.eq_ignore_ascii_case("bearer") => Some(bearer()),
            ("oauth2" | "openIdConnect", _, _) => Some(bearer()),
            ("apiKey", _, Some("header")) => s.name.as_ref().map(|h| AuthSpec {
                header: Some(h.clone()),
                query_param: None,
                value: format!("{{{secret}}}"),
            }),
            ("apiKey", _, Some("query")) => s.name.as_ref().map(|q| AuthSpec {
                header: None,
                query_param: Some(q.clone()),
                value: format!("{{{secret}}}"),
            }),
            (kind, scheme, _) => {
                proposal.not_allowed.push(format!(
                    "{label}: the security scheme {kind}{} is not one the drafter fills in; no credential is sent",
                    scheme.map(|s| format!(" {s}")).unwrap_or_default()
                ));
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Vec<u8> {
        json!({
            "openapi": "3.0.3",
            "servers": [{"url": "https://api.example.com/v1"}],
            "components": {"securitySchemes": {"key": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}},
                           "schemas": {"Pet": {"type": "object", "properties": {"name": {}, "tag": {}}, "required": ["name"]}}},
            "security": [{"key": []}],
            "paths": {
                "/pets": {"get": {"operationId": "listPets", "tags": ["pets"], "parameters": [{"name": "limit", "in": "query"}]},
                           "post": {"operationId": "createPet", "tags": ["pets"], "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}}}},
                "/pets/{petId}": {"parameters": [{"name": "petId", "in": "path", "required": true}],
                                  "get": {"operationId": "showPet", "tags": ["pets"]},
                                  "delete": {"operationId": "deletePet", "tags": ["pets"]}}
            }
        })
        .to_string()
        .into_bytes()
    }

    fn intent(ops: &[&str], constraints: &[(&str, &str)]) -> Intent {
        Intent {
            name: "pets".into(),
            goal: "manage pets".into(),
            doc_urls: vec!["https://docs.example/api.json".into()],
            secret_hints: vec!["PET_KEY".into()],
            operations: ops.iter().map(|s| (*s).to_owned()).collect(),
            constraints: constraints
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn run(i: &Intent) -> Result<Proposal, OpenApiError> {
        let bytes = doc();
        let d = parse("https://docs.example/api.json", &bytes).expect("doc");
        draft_intent(0, i, &[("https://docs.example/api.json", &d)])
    }

    #[test]
    fn a_named_write_gets_its_body_keys_and_the_api_key_scheme() {
        let p = run(&intent(&["createPet"], &[])).expect("draft");
        let c = &p.capabilities[0];
        assert_eq!(
            c.endpoint.as_deref(),
            Some("https://api.example.com/v1/pets")
        );
        assert_eq!(c.method, Some(HttpMethod::POST));
        assert_eq!(
            c.body.as_ref().and_then(|b| b.allow_keys.clone()),
            Some(vec!["name".into(), "tag".into()])
        );
        assert!(c.params["name"].required && !c.params["tag"].required);
        let auth = c.auth.as_ref().expect("auth");
        assert_eq!(
            (auth.header.as_deref(), auth.value.as_str()),
            (Some("X-Api-Key"), "{PET_KEY}")
        );
    }

    #[test]
    fn a_tag_allows_only_its_reads_and_says_which_writes_it_left_out() {
        let p = run(&intent(&["tag:pets"], &[])).expect("draft");
        let methods: Vec<_> = p.capabilities.iter().map(|c| c.method).collect();
        assert!(
            methods.iter().all(|m| *m == Some(HttpMethod::GET)),
            "{methods:?}"
        );
        assert_eq!(p.capabilities.len(), 2);
        assert!(
            p.not_allowed.iter().any(|n| n.contains("deletePet")),
            "{:?}",
            p.not_allowed
        );
        assert!(
            p.not_allowed.iter().any(|n| n.contains("createPet")),
            "{:?}",
            p.not_allowed
        );
        assert_eq!(p.capabilities[0].name, "petsListPets");
    }

    #[test]
    fn constraints_become_literal_segments_and_unused_ones_are_errors() {
        let p = run(&intent(&["GET /pets/{petId}"], &[("petId", "42")])).expect("draft");
        assert_eq!(
            p.capabilities[0].endpoint.as_deref(),
            Some("https://api.example.com/v1/pets/42")
        );
        assert!(p.capabilities[0].params.is_empty());
        let err = run(&intent(&["listPets"], &[("owner", "x")])).expect_err("unused");
        assert_eq!(
            err.0,
            "intent[0].constraints.owner: no drafted operation has a path parameter owner"
        );
    }

    #[test]
    fn an_unknown_operation_or_none_at_all_is_a_clear_error() {
        let err = run(&intent(&["pets/fly"], &[])).expect_err("unknown");
        assert!(err.0.starts_with("intent[0].operations[0]: \"pets/fly\" is not an operation of https://docs.example/api.json"), "{err}");
        let err = run(&intent(&[], &[])).expect_err("none");
        assert!(
            err.0
                .starts_with("intent[0].operations: the openapi drafter needs"),
            "{err}"
        );
        assert!(parse("u", b"{\"openapi\": \"1.0\"}").is_err());
        assert!(parse("u", b"<html>").is_err());
    }
}
