//! From an HTTP request to the capability call it stands for (pure): the call convention of
//! [`crate::policy`] filled from the method, the path after `/<capability>`, the query string,
//! the client's headers and the body. The policy then decides the call exactly as if code had
//! made it; this module only translates and never allows anything itself.

use serde_json::{Map, Value};

use crate::policy::CallShape;

/// Request headers that belong to the hop between the client and the proxy, not to the call:
/// never passed on (the policy would refuse most of them; these are set by HTTP clients and
/// intermediaries on their own, so refusing them would refuse every call). The header that
/// carried the client's token is removed too (see [`token_of`]).
pub const HOP_HEADERS: [&str; 13] = [
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "accept-encoding",
    "forwarded",
    "x-real-ip",
    "via",
];

/// What the proxy read from a client request.
#[derive(Debug)]
pub struct ClientRequest<'a> {
    /// The method, as sent.
    pub method: &'a str,
    /// The path after `/<capability>` (percent-encoded as received; empty when none).
    pub rest: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// Headers as (name lower case, value); the token header already removed.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: &'a [u8],
}

/// The client's token: `Authorization: Bearer <token>`, else `X-Api-Key: <token>`, with the
/// name of the header it came in (removed before the call is decided).
pub fn token_of(headers: &[(String, String)]) -> Option<(&'static str, &str)> {
    let bearer = headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str());
    if let Some(v) = bearer {
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))?;
        return Some(("authorization", token.trim()));
    }
    headers
        .iter()
        .find(|(k, _)| k == "x-api-key")
        .map(|(_, v)| ("x-api-key", v.trim()))
}

/// Whether a header is one of [`HOP_HEADERS`], a `Proxy-*` or an `X-Forwarded-*` header.
pub fn is_hop_header(name: &str) -> bool {
    HOP_HEADERS.contains(&name) || name.starts_with("proxy-") || name.starts_with("x-forwarded-")
}

fn is_json_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// The query string as the policy's `query` object: each name once, repeated names as
/// arrays, `+` and percent escapes decoded (the policy encodes them again).
fn query_object(query: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let v = Value::String(v.into_owned());
        match out.get_mut(k.as_ref()) {
            None => {
                out.insert(k.into_owned(), v);
            }
            Some(Value::Array(items)) => items.push(v),
            Some(first) => {
                let first = first.take();
                out.insert(k.into_owned(), Value::Array(vec![first, v]));
            }
        }
    }
    out
}

/// The body as the policy takes it: the text (JSON is checked against the body rules; other
/// text only passes with `body.allowRaw`). Empty is none.
fn body_value(capability: &str, body: &[u8]) -> Result<Option<Value>, String> {
    if body.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(body).map_err(|_| {
        format!(
            "the body for {capability} is not UTF-8 text; the proxy passes JSON and (with body.allowRaw) text bodies"
        )
    })?;
    Ok(Some(Value::String(text.to_owned())))
}

/// The call arguments `request` stands for under `shape` (`None`: a capability the Permit does
/// not have, translated as a scoped fetch so the policy names what is available). The error
/// says what is wrong with the request's shape.
pub fn call_args(
    capability: &str,
    shape: Option<&CallShape>,
    request: &ClientRequest<'_>,
) -> Result<Vec<Value>, String> {
    match shape {
        None | Some(CallShape::Scoped) => Ok(scoped_args(capability, request)?),
        Some(CallShape::Typed {
            method,
            path_params,
        }) => typed_args(capability, method.as_str(), path_params, request),
        Some(CallShape::Fetch) => Err(format!(
            "{capability} is a fetch capability; the proxy serves scoped-fetch (baseUrl) and typed-endpoint capabilities only"
        )),
    }
}

fn scoped_args(capability: &str, request: &ClientRequest<'_>) -> Result<Vec<Value>, String> {
    let path = if request.rest.is_empty() {
        "/"
    } else {
        request.rest
    };
    let mut options = Map::new();
    if let Some(q) = request.query.filter(|q| !q.is_empty()) {
        options.insert("query".to_owned(), Value::Object(query_object(q)));
    }
    let body = body_value(capability, request.body)?;
    let json_body = body.is_some()
        && request
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .is_none_or(|(_, v)| is_json_type(v));
    let mut headers = Map::new();
    for (k, v) in &request.headers {
        if is_hop_header(k) || (k == "content-type" && (json_body || body.is_none())) {
            continue;
        }
        headers.insert(k.clone(), Value::String(v.clone()));
    }
    if !headers.is_empty() {
        options.insert("headers".to_owned(), Value::Object(headers));
    }
    if let Some(b) = body {
        options.insert("body".to_owned(), b);
    }
    Ok(vec![
        Value::String(request.method.to_owned()),
        Value::String(path.to_owned()),
        Value::Object(options),
    ])
}

fn typed_args(
    capability: &str,
    method: &str,
    path_params: &[String],
    request: &ClientRequest<'_>,
) -> Result<Vec<Value>, String> {
    if request.method != "POST" || !request.rest.is_empty() || request.query.is_some() {
        return Err(format!(
            "{capability} is a typed endpoint ({method}); call it as POST /{capability} with a JSON object of its params"
        ));
    }
    let params = if request.body.is_empty() {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(request.body) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(format!(
                    "the body for {capability} must be a JSON object of its params"
                ));
            }
        }
    };
    let mut rest = params;
    let mut args = Vec::with_capacity(path_params.len() + 1);
    for name in path_params {
        // A missing path param is passed as null: the policy names it as missing.
        args.push(rest.remove(name).unwrap_or(Value::Null));
    }
    args.push(Value::Object(rest));
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oauth3_crds::HttpMethod;
    use serde_json::json;

    fn req<'a>(
        method: &'a str,
        rest: &'a str,
        query: Option<&'a str>,
        headers: &[(&str, &str)],
        body: &'a [u8],
    ) -> ClientRequest<'a> {
        ClientRequest {
            method,
            rest,
            query,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body,
        }
    }

    #[test]
    fn a_scoped_request_becomes_the_call_code_would_make() {
        let r = req(
            "POST",
            "/v1/chat/completions",
            Some("q=a+b&tag=x&tag=y"),
            &[
                ("content-type", "application/json"),
                ("host", "proxy"),
                ("accept-encoding", "gzip"),
                ("x-forwarded-for", "10.0.0.1"),
                ("openai-beta", "assistants=v2"),
            ],
            br#"{"model":"m"}"#,
        );
        let args = call_args("chat", Some(&CallShape::Scoped), &r).expect("args");
        assert_eq!(
            Value::Array(args),
            json!(["POST", "/v1/chat/completions", {
                "query": {"q": "a b", "tag": ["x", "y"]},
                "headers": {"openai-beta": "assistants=v2"},
                "body": "{\"model\":\"m\"}"
            }])
        );
    }

    #[test]
    fn a_non_json_content_type_is_left_for_the_policy_to_judge() {
        let r = req("PUT", "", None, &[("content-type", "text/csv")], b"a,b");
        let args = call_args("files", Some(&CallShape::Scoped), &r).expect("args");
        assert_eq!(
            Value::Array(args),
            json!(["PUT", "/", {"headers": {"content-type": "text/csv"}, "body": "a,b"}])
        );
    }

    #[test]
    fn the_token_header_is_found_in_either_form() {
        let h = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert_eq!(
            token_of(&h("authorization", "Bearer abc")),
            Some(("authorization", "abc"))
        );
        assert_eq!(token_of(&h("x-api-key", "abc")), Some(("x-api-key", "abc")));
        assert_eq!(token_of(&h("authorization", "Basic abc")), None);
        assert_eq!(token_of(&[]), None);
    }

    #[test]
    fn a_typed_request_passes_path_params_positionally_and_the_rest_as_an_object() {
        let shape = CallShape::Typed {
            method: HttpMethod::POST,
            path_params: vec!["owner".into(), "repo".into()],
        };
        let r = req(
            "POST",
            "",
            None,
            &[],
            br#"{"repo":"r","title":"t","owner":"o"}"#,
        );
        let args = call_args("createIssue", Some(&shape), &r).expect("args");
        assert_eq!(Value::Array(args), json!(["o", "r", {"title": "t"}]));
        let wrong = req("GET", "/x", None, &[], b"");
        assert!(
            call_args("createIssue", Some(&shape), &wrong)
                .expect_err("refused")
                .contains("POST /createIssue")
        );
        let not_object = req("POST", "", None, &[], b"[1]");
        assert!(
            call_args("createIssue", Some(&shape), &not_object)
                .expect_err("refused")
                .contains("JSON object")
        );
    }

    #[test]
    fn binary_bodies_and_fetch_capabilities_are_refused_with_the_reason() {
        let r = req("POST", "/x", None, &[], &[0xff, 0xfe]);
        assert!(
            call_args("api", Some(&CallShape::Scoped), &r)
                .expect_err("refused")
                .contains("not UTF-8")
        );
        let r = req("GET", "/x", None, &[], b"");
        assert!(
            call_args("web", Some(&CallShape::Fetch), &r)
                .expect_err("refused")
                .contains("fetch capability")
        );
    }
}
