//! Schema tier: the CRDs installed in a real kube-apiserver accept every example and reject bad
//! objects with a message that names the offending field and the rule.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use oauth3_crds::{Execution, Permit, SandboxPool};
use oauth3_tests::{TEST_FIELD_MANAGER, client_or_skip, namespace, repo_root};
use serde::Deserialize;
use serde_json::{Value, json};

fn valid_permit() -> Value {
    json!({
        "apiVersion": "oauth3.dev/v1alpha1",
        "kind": "Permit",
        "metadata": {"name": "p"},
        "spec": {
            "description": "List issues",
            "capabilities": [{
                "name": "github",
                "baseUrl": "https://api.github.com",
                "paths": ["/repos/o/r/issues"],
                "methods": ["GET"],
                "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"},
                "rateLimit": {"requests": 5, "perSeconds": 60}
            }],
            "secrets": ["GITHUB_TOKEN"]
        }
    })
}

fn valid_typed_permit() -> Value {
    let mut v = valid_permit();
    v["spec"]["capabilities"][0] = json!({
        "name": "createIssue",
        "endpoint": "https://api.github.com/repos/{owner}/{repo}/issues",
        "method": "POST",
        "params": {"owner": {"in": "path"}, "repo": {"in": "path"}, "title": {"in": "body"}}
    });
    v
}

fn fetch_permit() -> Value {
    let mut v = valid_permit();
    v["spec"]["capabilities"][0] = json!({
        "name": "fetch",
        "hosts": ["api.github.com"],
        "methods": ["GET"],
        "secretBindings": [{"secret": "GITHUB_TOKEN", "hosts": ["api.github.com"]}]
    });
    v
}

fn valid_execution() -> Value {
    json!({
        "apiVersion": "oauth3.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": "e"},
        "spec": {"permitRef": "p", "code": "return 1", "timeoutSeconds": 10}
    })
}

fn valid_pool() -> Value {
    json!({
        "apiVersion": "oauth3.dev/v1alpha1",
        "kind": "SandboxPool",
        "metadata": {"name": "warm"},
        "spec": {"replicas": 2, "minReady": 1, "maxSurge": 2,
            "resources": {"cpu": "500m", "memory": "256Mi"}}
    })
}

/// Sets (or with `Value::Null`, removes) the value at a JSON pointer, creating objects on the way.
fn set(mut v: Value, pointer: &str, new: Value) -> Value {
    let (parent, last) = pointer.rsplit_once('/').expect("pointer has a /");
    let target = v
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no parent at {parent}"));
    match target {
        Value::Object(map) if new.is_null() => {
            map.remove(last);
        }
        Value::Object(map) => {
            map.insert(last.to_owned(), new);
        }
        Value::Array(items) => {
            let i: usize = last.parse().expect("array index");
            if i == items.len() {
                items.push(new);
            } else {
                items[i] = new;
            }
        }
        other => panic!("cannot set {last} in {other}"),
    }
    v
}

struct Bad {
    what: &'static str,
    object: Value,
    field: &'static str,
    rule: &'static str,
}

fn bad(what: &'static str, object: Value, field: &'static str, rule: &'static str) -> Bad {
    Bad {
        what,
        object,
        field,
        rule,
    }
}

fn bad_objects() -> Vec<Bad> {
    let p = valid_permit;
    let t = valid_typed_permit;
    let e = valid_execution;
    let pool = valid_pool;
    let cap = "/spec/capabilities/0";
    let intent = || {
        json!({"name": "gh", "goal": "list my repos", "docUrls": ["https://docs.example/api.json"],
               "secretHints": ["GITHUB_TOKEN"], "operations": ["GET /user/repos"]})
    };
    let intent_only = || {
        let mut v = set(p(), "/spec/capabilities", json!([]));
        v["spec"]["intent"] = json!([intent()]);
        v["spec"]["secrets"] = json!(["GITHUB_TOKEN"]);
        v
    };
    vec![
        bad(
            "a pool's minReady above its replicas",
            set(pool(), "/spec/minReady", json!(3)),
            "spec.minReady",
            "minReady must be at most replicas",
        ),
        bad(
            "a pool of more than 100 members",
            set(pool(), "/spec/replicas", json!(101)),
            "spec.replicas",
            "should be less than or equal to 100",
        ),
        bad(
            "a pool with no surge",
            set(pool(), "/spec/maxSurge", json!(0)),
            "spec.maxSurge",
            "should be greater than or equal to 1",
        ),
        bad(
            "a pool's memory that is no quantity",
            set(pool(), "/spec/resources/memory", json!("lots")),
            "spec.resources.memory",
            "should match",
        ),
        bad(
            "a pool without replicas",
            set(pool(), "/spec/replicas", Value::Null),
            "spec.replicas",
            "Required value",
        ),
        bad(
            "intent and capabilities together",
            set(p(), "/spec/intent", json!([intent()])),
            "spec.intent",
            "set intent or capabilities, not both",
        ),
        bad(
            "an intent's secret hint not listed in secrets",
            set(intent_only(), "/spec/secrets", json!([])),
            "spec.secrets",
            "every intent[].secretHints entry must be listed in spec.secrets",
        ),
        bad(
            "an intent constraint that is no path segment",
            set(
                intent_only(),
                "/spec/intent/0/constraints",
                json!({"owner": "a/../b"}),
            ),
            "spec.intent[0].constraints.owner",
            "should match",
        ),
        bad(
            "an intent without docUrls",
            set(intent_only(), "/spec/intent/0/docUrls", json!([])),
            "spec.intent[0].docUrls",
            "should have at least 1 items",
        ),
        bad(
            "capability name not a JS identifier",
            set(p(), &format!("{cap}/name"), json!("my-api")),
            "spec.capabilities[0].name",
            "should match",
        ),
        bad(
            "capability name is a reserved word",
            set(p(), &format!("{cap}/name"), json!("delete")),
            "spec.capabilities[0].name",
            "must not be a JavaScript reserved word",
        ),
        bad(
            "capability name shadows a sandbox global",
            set(p(), &format!("{cap}/name"), json!("console")),
            "spec.capabilities[0].name",
            "a name the sandbox defines",
        ),
        bad(
            "duplicate capability names",
            set(
                p(),
                "/spec/capabilities/1",
                p()["spec"]["capabilities"][0].clone(),
            ),
            "spec.capabilities[1]",
            "Duplicate value",
        ),
        bad(
            "plain http to a public host",
            set(
                p(),
                &format!("{cap}/baseUrl"),
                json!("http://api.github.com"),
            ),
            "spec.capabilities[0].baseUrl",
            "must use https",
        ),
        bad(
            "http to a host that only starts like loopback",
            set(
                p(),
                &format!("{cap}/baseUrl"),
                json!("http://127.0.0.1.evil.example"),
            ),
            "spec.capabilities[0].baseUrl",
            "must use https",
        ),
        bad(
            "non-http scheme",
            set(p(), &format!("{cap}/baseUrl"), json!("ftp://files.example")),
            "spec.capabilities[0].baseUrl",
            "must use https",
        ),
        bad(
            "baseUrl without scheme",
            set(p(), &format!("{cap}/baseUrl"), json!("api.github.com")),
            "spec.capabilities[0].baseUrl",
            "must be an absolute URL",
        ),
        bad(
            "userinfo in baseUrl",
            set(
                p(),
                &format!("{cap}/baseUrl"),
                json!("https://user:pw@api.github.com"),
            ),
            "spec.capabilities[0].baseUrl",
            "userinfo",
        ),
        bad(
            "query in baseUrl",
            set(
                p(),
                &format!("{cap}/baseUrl"),
                json!("https://api.github.com/?x=1"),
            ),
            "spec.capabilities[0].baseUrl",
            "query",
        ),
        bad(
            "fragment in baseUrl",
            set(
                p(),
                &format!("{cap}/baseUrl"),
                json!("https://api.github.com/#frag"),
            ),
            "spec.capabilities[0].baseUrl",
            "fragment",
        ),
        bad(
            "lower-case method",
            set(p(), &format!("{cap}/methods"), json!(["get"])),
            "spec.capabilities[0].methods[0]",
            "Unsupported value",
        ),
        bad(
            "method outside the HTTP set",
            set(p(), &format!("{cap}/methods"), json!(["TRACE"])),
            "spec.capabilities[0].methods[0]",
            "Unsupported value",
        ),
        bad(
            "path without leading slash",
            set(p(), &format!("{cap}/paths"), json!(["repos/o/r"])),
            "spec.capabilities[0].paths[0]",
            "should match",
        ),
        bad(
            "dot-dot path segment",
            set(p(), &format!("{cap}/paths"), json!(["/repos/../admin"])),
            "spec.capabilities[0].paths",
            "must not contain . or .. segments",
        ),
        bad(
            "percent-encoded dot-dot segment",
            set(p(), &format!("{cap}/paths"), json!(["/repos/%2E%2e/admin"])),
            "spec.capabilities[0].paths",
            "must not contain . or .. segments",
        ),
        bad(
            "backslash in a path",
            set(p(), &format!("{cap}/paths"), json!(["/repos\\..\\admin"])),
            "spec.capabilities[0].paths[0]",
            "should match",
        ),
        bad(
            "auth placeholder not listed in secrets",
            set(p(), "/spec/secrets", json!(["OTHER_TOKEN"])),
            "spec.secrets",
            "must be listed in spec.secrets",
        ),
        bad(
            "secret name not in environment-variable style",
            set(
                p(),
                "/spec/secrets",
                json!(["GITHUB_TOKEN", "github_token"]),
            ),
            "spec.secrets[1]",
            "should match",
        ),
        bad(
            "secret name ending in underscore",
            set(p(), "/spec/secrets", json!(["GITHUB_TOKEN", "TOKEN_"])),
            "spec.secrets[1]",
            "should match",
        ),
        bad(
            "duplicate secret",
            set(
                p(),
                "/spec/secrets",
                json!(["GITHUB_TOKEN", "GITHUB_TOKEN"]),
            ),
            "spec.secrets[1]",
            "Duplicate value",
        ),
        bad(
            "rate limit of zero requests",
            set(p(), &format!("{cap}/rateLimit/requests"), json!(0)),
            "spec.capabilities[0].rateLimit.requests",
            "greater than or equal to 1",
        ),
        bad(
            "rate limit window of zero seconds",
            set(p(), &format!("{cap}/rateLimit/perSeconds"), json!(0)),
            "spec.capabilities[0].rateLimit.perSeconds",
            "greater than or equal to 1",
        ),
        bad(
            "both capability forms",
            set(
                p(),
                &format!("{cap}/endpoint"),
                json!("https://api.github.com/x"),
            ),
            "spec.capabilities[0]",
            "set exactly one of baseUrl",
        ),
        bad(
            "neither capability form",
            set(p(), &format!("{cap}/baseUrl"), Value::Null),
            "spec.capabilities[0]",
            "set exactly one of baseUrl",
        ),
        bad(
            "scoped fetch without methods",
            set(p(), &format!("{cap}/methods"), Value::Null),
            "spec.capabilities[0]",
            "needs paths and methods",
        ),
        bad(
            "endpoint placeholder not declared",
            set(t(), &format!("{cap}/params/repo"), Value::Null),
            "spec.capabilities[0].endpoint",
            "must be declared in params",
        ),
        bad(
            "path param missing from endpoint",
            set(t(), &format!("{cap}/params/number"), json!({"in": "path"})),
            "spec.capabilities[0].params",
            "must appear as {name} in endpoint",
        ),
        bad(
            "typed endpoint with http to a public host",
            set(
                t(),
                &format!("{cap}/endpoint"),
                json!("http://api.github.com/repos/{owner}/{repo}/issues"),
            ),
            "spec.capabilities[0].endpoint",
            "must use https",
        ),
        bad(
            "typed endpoint without method",
            set(t(), &format!("{cap}/method"), Value::Null),
            "spec.capabilities[0]",
            "needs method",
        ),
        bad(
            "auth with both header and query parameter",
            set(p(), &format!("{cap}/auth/queryParam"), json!("key")),
            "spec.capabilities[0].auth",
            "set exactly one of header or queryParam",
        ),
        bad(
            "auth value without a secret placeholder",
            set(p(), &format!("{cap}/auth/value"), json!("Bearer hardcoded")),
            "spec.capabilities[0].auth.value",
            "must contain at least one {SECRET_NAME} placeholder",
        ),
        bad(
            "validFor in words",
            set(p(), "/spec/validFor", json!("1 day")),
            "spec.validFor",
            "should match",
        ),
        bad(
            "unknown codeReview",
            set(p(), "/spec/codeReview", json!("always")),
            "spec.codeReview",
            "Unsupported value",
        ),
        bad(
            "empty description",
            set(p(), "/spec/description", json!("")),
            "spec.description",
            "should be at least 1 chars long",
        ),
        bad(
            "no capabilities",
            set(p(), "/spec/capabilities", json!([])),
            "spec.capabilities",
            "at least one capability is required",
        ),
        bad(
            "maxExecutions of zero",
            set(p(), "/spec/maxExecutions", json!(0)),
            "spec.maxExecutions",
            "greater than or equal to 1",
        ),
        bad(
            "unknown field in a capability",
            set(p(), &format!("{cap}/allowEverything"), json!(true)),
            "spec.capabilities[0].allowEverything",
            "unknown field",
        ),
        bad(
            "timeout of zero",
            set(e(), "/spec/timeoutSeconds", json!(0)),
            "spec.timeoutSeconds",
            "greater than or equal to 1",
        ),
        bad(
            "timeout over an hour",
            set(e(), "/spec/timeoutSeconds", json!(3601)),
            "spec.timeoutSeconds",
            "less than or equal to 3600",
        ),
        bad(
            "empty code",
            set(e(), "/spec/code", json!("")),
            "spec.code",
            "should be at least 1 chars long",
        ),
        bad(
            "code over 256 KiB",
            set(e(), "/spec/code", json!("x".repeat(262_145))),
            "spec.code",
            "Too long",
        ),
        bad(
            "an arg rule with both regex and op",
            set(
                p(),
                "/spec/argRules",
                json!([{"arg": "owner", "regex": "a", "op": "eq", "value": "a"}]),
            ),
            "spec.argRules[0]",
            "set exactly one of regex or op",
        ),
        bad(
            "an arg rule with an unknown op",
            set(
                p(),
                "/spec/argRules",
                json!([{"arg": "count", "op": ">=", "value": 1}]),
            ),
            "spec.argRules[0].op",
            "Unsupported value",
        ),
        bad(
            "a cookie jar not listed in secrets",
            set(p(), &format!("{cap}/cookies"), json!("COOKIES_EXAMPLE_COM")),
            "spec.secrets",
            "every capabilities[].cookies must be listed in spec.secrets",
        ),
        bad(
            "an enabled proxy without callers",
            set(p(), "/spec/proxy", json!({"enabled": true})),
            "spec.proxy.callers",
            "spec.proxy.callers must name at least one caller when the proxy is enabled",
        ),
        bad(
            "a proxy idle timeout that is no duration",
            set(
                p(),
                "/spec/proxy",
                json!({"enabled": true, "callers": ["a"], "idleTimeout": "soon"}),
            ),
            "spec.proxy.idleTimeout",
            "should match",
        ),
        bad(
            "a proxy with no room for a call",
            set(
                p(),
                "/spec/proxy",
                json!({"enabled": true, "callers": ["a"], "maxConcurrentCalls": 0}),
            ),
            "spec.proxy.maxConcurrentCalls",
            "should be greater than or equal to 1",
        ),
        bad(
            "a pinned code digest that is not sha256",
            set(p(), "/spec/pinnedCode", json!(["md5:abc"])),
            "spec.pinnedCode[0]",
            "should match",
        ),
        bad(
            "a fetch capability that also sets baseUrl",
            set(
                fetch_permit(),
                &format!("{cap}/baseUrl"),
                json!("https://api.github.com"),
            ),
            "spec.capabilities[0]",
            "set exactly one of baseUrl (scoped fetch), endpoint (typed endpoint) or hosts (fetch)",
        ),
        bad(
            "a fetch host written as a URL",
            set(
                fetch_permit(),
                &format!("{cap}/hosts/0"),
                json!("https://api.github.com"),
            ),
            "spec.capabilities[0].hosts",
            "each host must be a lower-case host name or IP address",
        ),
        bad(
            "a fetch host with a trailing dot",
            set(
                fetch_permit(),
                &format!("{cap}/hosts/0"),
                json!("api.github.com."),
            ),
            "spec.capabilities[0].hosts",
            "no scheme, path, wildcard, userinfo or trailing dot",
        ),
        bad(
            "a fetch host in upper case",
            set(
                fetch_permit(),
                &format!("{cap}/hosts/0"),
                json!("API.github.com"),
            ),
            "spec.capabilities[0].hosts",
            "lower-case host name",
        ),
        bad(
            "a fetch capability with auth",
            set(
                fetch_permit(),
                &format!("{cap}/auth"),
                json!({"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"}),
            ),
            "spec.capabilities[0]",
            "a fetch capability (hosts) needs methods and must not set method, params, auth or cookies",
        ),
        bad(
            "a bound secret not listed in secrets",
            set(
                fetch_permit(),
                &format!("{cap}/secretBindings/0/secret"),
                json!("OTHER_TOKEN"),
            ),
            "spec.secrets",
            "every capabilities[].secretBindings[].secret must be listed in spec.secrets",
        ),
        bad(
            "a binding host that is not one of the capability's",
            set(
                fetch_permit(),
                &format!("{cap}/secretBindings/0/hosts/0"),
                json!("evil.example"),
            ),
            "spec.capabilities[0].secretBindings",
            "every secretBindings[].hosts entry must be one of the capability's hosts",
        ),
        bad(
            "a binding into the URL path",
            set(
                fetch_permit(),
                &format!("{cap}/secretBindings/0/in"),
                json!(["path"]),
            ),
            "spec.capabilities[0].secretBindings[0].in[0]",
            "Unsupported value",
        ),
        bad(
            "secret bindings on a scoped-fetch capability",
            set(
                p(),
                &format!("{cap}/secretBindings"),
                json!([{"secret": "GITHUB_TOKEN", "hosts": ["api.github.com"]}]),
            ),
            "spec.capabilities[0].secretBindings",
            "secretBindings belong to fetch capabilities",
        ),
        bad(
            "missing permitRef",
            set(e(), "/spec/permitRef", Value::Null),
            "spec.permitRef",
            "Required value",
        ),
        bad(
            "permitRef that is not an object name",
            set(e(), "/spec/permitRef", json!("Github_Issues")),
            "spec.permitRef",
            "should match",
        ),
    ]
}

fn api_for(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let ar = match kind {
        "Permit" => ApiResource::erase::<Permit>(&()),
        "Execution" => ApiResource::erase::<Execution>(&()),
        "SandboxPool" => ApiResource::erase::<SandboxPool>(&()),
        other => panic!("unexpected kind {other}"),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Creates the object as `kubectl apply` / `kubectl create` do: a POST with strict field
/// validation, so unknown fields are errors rather than silently pruned.
async fn create(
    client: &kube::Client,
    ns: &str,
    obj: &DynamicObject,
) -> Result<DynamicObject, kube::Error> {
    let plural = match obj.types.as_ref().map(|t| t.kind.as_str()) {
        Some("Permit") => "permits",
        Some("Execution") => "executions",
        Some("SandboxPool") => "sandboxpools",
        other => panic!("unexpected kind {other:?}"),
    };
    let url = format!("/apis/oauth3.dev/v1alpha1/namespaces/{ns}/{plural}?fieldValidation=Strict");
    let body = serde_json::to_vec(obj).expect("object serialises");
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(body)
        .expect("request");
    client.request::<DynamicObject>(req).await
}

/// Creates the object as `kubectl apply --server-side` does.
async fn apply(api: Api<DynamicObject>, obj: &DynamicObject) -> Result<DynamicObject, kube::Error> {
    let name = obj.metadata.name.clone().expect("object has a name");
    let pp = PatchParams::apply(TEST_FIELD_MANAGER).validation_strict();
    api.patch(&name, &pp, &Patch::Apply(obj)).await
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "schema-examples").await;
    let dir = repo_root().join("examples");
    let mut seen = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let text = std::fs::read_to_string(&path).expect("readable example");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).expect("example is YAML");
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().expect("kind").to_owned();
            if !matches!(kind.as_str(), "Permit" | "Execution" | "SandboxPool") {
                continue;
            }
            let obj: DynamicObject = serde_json::from_value(value).expect("object");
            apply(api_for(&client, &ns, &kind), &obj)
                .await
                .unwrap_or_else(|e| panic!("{} was rejected: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 5,
        "expected at least 5 example objects, found {seen}"
    );
}

#[tokio::test]
async fn bad_objects_are_rejected_naming_field_and_rule() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "schema-bad").await;
    // The valid bases themselves must be accepted, or every rejection below proves nothing.
    for base in [
        valid_permit(),
        valid_typed_permit(),
        valid_execution(),
        valid_pool(),
    ] {
        let kind = base["kind"].as_str().expect("kind").to_owned();
        let mut obj: DynamicObject = serde_json::from_value(base).expect("object");
        obj.metadata.name = Some(format!("base-{}", kind.to_lowercase()));
        if kind == "Permit" && obj.data["spec"]["capabilities"][0]["endpoint"].is_string() {
            obj.metadata.name = Some("base-typed".into());
        }
        apply(api_for(&client, &ns, &kind), &obj)
            .await
            .unwrap_or_else(|e| panic!("valid base {kind} rejected: {e}"));
    }
    let cases = bad_objects();
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for (i, case) in cases.into_iter().enumerate() {
        let mut obj: DynamicObject = serde_json::from_value(case.object).expect("object");
        obj.metadata.name = Some(format!("bad-{i}"));
        match create(&client, &ns, &obj).await {
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
            Err(kube::Error::Api(status)) => {
                let msg = status.message.clone();
                if !(status.code == 422 || status.code == 400)
                    || !msg.contains(case.field)
                    || !msg.contains(case.rule)
                {
                    failures.push(format!(
                        "{}: expected {} naming {:?} and {:?}, got {}: {msg}",
                        case.what, 422, case.field, case.rule, status.code
                    ));
                }
            }
            Err(other) => failures.push(format!("{}: unexpected error {other}", case.what)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad objects misjudged:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn execution_spec_is_immutable_after_creation() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "schema-immutable").await;
    let api = api_for(&client, &ns, "Execution");
    let obj: DynamicObject = serde_json::from_value(valid_execution()).expect("object");
    let created = apply(api.clone(), &obj).await.expect("created");
    let mut changed = created.clone();
    changed.data["spec"]["code"] = json!("return 2");
    let err = api
        .replace("e", &PostParams::default(), &changed)
        .await
        .expect_err("must be refused");
    match err {
        kube::Error::Api(s) => assert!(
            s.message.contains("Execution spec is immutable"),
            "{}",
            s.message
        ),
        other => panic!("unexpected error {other}"),
    }
    let now = api.get("e").await.expect("still there");
    assert_eq!(
        now.data["spec"]["code"],
        json!("return 1"),
        "the stored spec must be unchanged"
    );
}

#[tokio::test]
async fn defaults_are_applied_by_the_api_server() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "schema-defaults").await;
    let permits: Api<Permit> = Api::namespaced(client.clone(), &ns);
    let mut v = valid_permit();
    v["spec"]["capabilities"][0]["body"] = json!({});
    let obj: DynamicObject = serde_json::from_value(v).expect("object");
    apply(api_for(&client, &ns, "Permit"), &obj)
        .await
        .expect("created");
    let stored = permits.get("p").await.expect("typed read");
    assert_eq!(stored.spec.valid_for, "24h");
    assert_eq!(stored.spec.code_review, oauth3_crds::CodeReview::None);
    assert_eq!(
        stored.spec.capabilities[0]
            .body
            .as_ref()
            .map(|b| b.max_bytes),
        Some(65_536)
    );

    // A secret binding goes in the Authorization header unless it says otherwise.
    let mut f = fetch_permit();
    f["metadata"]["name"] = json!("f");
    let obj: DynamicObject = serde_json::from_value(f).expect("object");
    apply(api_for(&client, &ns, "Permit"), &obj)
        .await
        .expect("created");
    let stored = permits.get("f").await.expect("typed read");
    let binding = &stored.spec.capabilities[0].secret_bindings[0];
    assert_eq!(binding.locations, [oauth3_crds::SecretLocation::Header]);
    assert_eq!(binding.headers, ["Authorization"]);

    let execs: Api<Execution> = Api::namespaced(client.clone(), &ns);
    let mut e = valid_execution();
    e["spec"] = json!({"permitRef": "p", "code": "return 1"});
    let obj: DynamicObject = serde_json::from_value(e).expect("object");
    apply(api_for(&client, &ns, "Execution"), &obj)
        .await
        .expect("created");
    assert_eq!(execs.get("e").await.expect("read").spec.timeout_seconds, 30);
}

/// One candidate spec change for [`every_spec_the_runner_refuses_is_refused_by_the_api_server`].
struct Probe {
    what: String,
    object: Value,
    /// The message the API server must answer with, when the change must be refused.
    refused_with: Option<&'static str>,
}

fn probe(what: impl Into<String>, object: Value, refused_with: Option<&'static str>) -> Probe {
    Probe {
        what: what.into(),
        object,
        refused_with,
    }
}

/// What the sandbox runner refuses of a spec: its policy compiler, and the names the sandbox
/// defines (the sandbox refuses a capability named like one at install time).
fn runner_refuses(spec: &Value) -> Option<String> {
    let spec: oauth3_crds::PermitSpec = match serde_json::from_value(spec.clone()) {
        Ok(s) => s,
        Err(e) => return Some(format!("does not parse: {e}")),
    };
    if let Err(e) = oauth3_sandbox_runner::policy::Policy::compile(&spec) {
        return Some(e.to_string());
    }
    spec.capabilities
        .iter()
        .find(|c| c.hosts.is_empty() && oauth3_crds::is_sandbox_name(&c.name))
        .map(|c| format!("capability name {} is taken in the sandbox", c.name))
}

fn probes() -> Vec<Probe> {
    use oauth3_crds::headers::{
        CREDENTIAL_HEADERS, RUNNER_SET_HEADER_PREFIXES, RUNNER_SET_HEADERS,
    };
    let p = valid_permit;
    let t = valid_typed_permit;
    let cap = "/spec/capabilities/0";
    let header_msg = "must not be a header the runner sets itself";
    let mut out = Vec::new();
    // auth.header: every header the runner sets, in three spellings; credential headers and an
    // ordinary API key header stay allowed.
    let prefixed: Vec<String> = RUNNER_SET_HEADER_PREFIXES
        .iter()
        .map(|p| format!("{p}authorization"))
        .collect();
    for h in RUNNER_SET_HEADERS
        .iter()
        .map(|h| (*h).to_owned())
        .chain(prefixed)
        .chain(["content-type".to_owned()])
    {
        let credential = CREDENTIAL_HEADERS.contains(&h.as_str());
        for spelling in [h.clone(), h.to_ascii_uppercase(), title_case(&h)] {
            out.push(probe(
                format!("auth.header {spelling}"),
                set(p(), &format!("{cap}/auth/header"), json!(spelling)),
                (!credential).then_some(header_msg),
            ));
            out.push(probe(
                format!("typed header param {spelling}"),
                set(
                    t(),
                    &format!("{cap}/params/{spelling}"),
                    json!({"in": "header"}),
                ),
                (h != "content-type")
                    .then_some("a param with in: header must not name a header the runner sets"),
            ));
        }
    }
    // secretBindings[].headers: the same rule as auth.header.
    for h in RUNNER_SET_HEADERS
        .iter()
        .chain(["content-type", "proxy-authorization", "X-Api-Key"].iter())
    {
        let refused = !CREDENTIAL_HEADERS.contains(h) && *h != "X-Api-Key";
        out.push(probe(
            format!("secretBindings header {h}"),
            set(
                fetch_permit(),
                &format!("{cap}/secretBindings/0/headers"),
                json!([title_case(h)]),
            ),
            refused.then_some(
                "secretBindings[].headers must not name a header the runner sets itself",
            ),
        ));
    }
    // A fetch capability installs no function: any name is fine.
    out.push(probe(
        "a fetch capability named console",
        set(fetch_permit(), &format!("{cap}/name"), json!("console")),
        None,
    ));
    out.push(probe(
        "auth.header X-Api-Key",
        set(p(), &format!("{cap}/auth/header"), json!("X-Api-Key")),
        None,
    ));
    // auth.value: control characters.
    for c in ['\r', '\n', '\0', '\t', '\u{7f}', '\u{85}', '\u{1b}'] {
        out.push(probe(
            format!("auth.value with U+{:04X}", u32::from(c)),
            set(
                p(),
                &format!("{cap}/auth/value"),
                json!(format!("Bearer {{GITHUB_TOKEN}}{c}X-Evil: 1")),
            ),
            Some("must not contain control characters"),
        ));
    }
    // Capability names the sandbox defines, and reserved words.
    for name in oauth3_crds::SANDBOX_GLOBALS
        .iter()
        .chain(oauth3_crds::OBJECT_PROTOTYPE_NAMES)
        .chain(oauth3_crds::SANDBOX_REMOVED_GLOBALS)
        .chain(oauth3_crds::JS_RESERVED_WORDS)
    {
        out.push(probe(
            format!("capability named {name}"),
            set(p(), &format!("{cap}/name"), json!(name)),
            Some("must not be a JavaScript reserved word or a name the sandbox defines"),
        ));
    }
    // validFor: at most 365 days in every unit.
    for (v, ok) in [
        ("365d", true),
        ("8760h", true),
        ("525600m", true),
        ("31536000s", false), // seven digits: refused by the pattern already
        ("366d", false),
        ("8761h", false),
        ("525601m", false),
        ("999999d", false),
    ] {
        out.push(probe(
            format!("validFor {v}"),
            set(p(), "/spec/validFor", json!(v)),
            (!ok).then_some(if v.len() > 7 {
                "should match"
            } else {
                "must be at most 365 days"
            }),
        ));
    }
    // Endpoints: a placeholder used twice.
    for endpoint in [
        "https://api.github.com/repos/{owner}{owner}/{repo}/issues",
        "https://api.github.com/repos/{owner}/{repo}/{owner}",
    ] {
        out.push(probe(
            format!("endpoint {endpoint}"),
            set(t(), &format!("{cap}/endpoint"), json!(endpoint)),
            Some("each {placeholder} may appear only once in endpoint"),
        ));
    }
    // Path globs: `**` only as a whole segment; `*` inside a segment stays allowed.
    for (glob, ok) in [
        ("/repos/o/r/issues**", false),
        ("/repos/***", false),
        ("/repos/**x/y", false),
        ("/repos/o/r/**", true),
        ("/repos/o/r/*.json", true),
        ("/repos/**/issues", true),
    ] {
        out.push(probe(
            format!("path {glob}"),
            set(p(), &format!("{cap}/paths/0"), json!(glob)),
            (!ok).then_some("** must be a whole path segment"),
        ));
    }
    out
}

fn title_case(h: &str) -> String {
    h.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The class check of the schema against the runner: a spec the runner would refuse at launch
/// never gets past the API server (so it can be neither approved nor run into an "exited
/// without a result"), with a message naming the field and the rule. The probes are generated
/// from the runner's own lists (headers it sets, names the sandbox defines), so a rule added
/// to the runner without the schema fails here.
#[tokio::test]
async fn every_spec_the_runner_refuses_is_refused_by_the_api_server() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "schema-runner").await;
    let probes = probes();
    assert!(probes.len() > 150, "{}", probes.len());
    let mut failures = Vec::new();
    let mut refused = 0;
    for (i, probe) in probes.into_iter().enumerate() {
        let runner = runner_refuses(&probe.object["spec"]);
        let mut obj: DynamicObject = serde_json::from_value(probe.object).expect("object");
        obj.metadata.name = Some(format!("probe-{i}"));
        let api = create(&client, &ns, &obj).await;
        match (&api, probe.refused_with, &runner) {
            (Ok(_), None, None) => {}
            (Ok(_), _, Some(why)) => failures.push(format!(
                "{}: the API server accepted what the runner refuses ({why})",
                probe.what
            )),
            (Ok(_), Some(rule), None) => {
                failures.push(format!("{}: accepted, expected {rule:?}", probe.what))
            }
            (Err(kube::Error::Api(status)), Some(rule), _) if status.message.contains(rule) => {
                refused += 1;
            }
            (Err(e), _, _) => failures.push(format!("{}: {e}", probe.what)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} probes misjudged:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(refused > 100, "only {refused} probes were refused");
}

#[tokio::test]
async fn code_is_limited_in_bytes_not_characters() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "schema-code-bytes").await;
    // 131073 characters of two bytes each: under the character limit, over the byte limit the
    // runner enforces.
    let mut obj: DynamicObject = serde_json::from_value(set(
        valid_execution(),
        "/spec/code",
        json!(format!("return '{}'", "\u{e9}".repeat(131_073))),
    ))
    .expect("object");
    obj.metadata.name = Some("too-many-bytes".into());
    let err = create(&client, &ns, &obj).await.expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("spec.code") && msg.contains("must be at most 262144 bytes of UTF-8"),
        "{msg}"
    );
    // At the byte limit exactly it is accepted.
    let code = format!("return '{}'", "a".repeat(262_144 - 9));
    assert_eq!(code.len(), 262_144);
    obj.data["spec"]["code"] = json!(code);
    obj.metadata.name = Some("at-the-limit".into());
    create(&client, &ns, &obj)
        .await
        .expect("accepted at the limit");
}
