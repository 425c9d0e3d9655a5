//! Proxying overhead per call: the same GET against a local HTTPS upstream, sent directly
//! with a plain `reqwest` client, through [`ScopedFetch`] as a capability call via the
//! [`CapabilityHost`] trait (policy decision, rate and call budget, credential injection,
//! scrubbing, call record), and as the code's `fetch()` of a fetch capability (the URL checked
//! as written, the placeholder found and replaced by the secret, a WHATWG-shaped response with
//! headers and a base64 body).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use oauth3_crds::PermitSpec;
use oauth3_sandbox_runner::fetch::{FetchConfig, ScopedFetch};
use oauth3_sandbox_runner::host::{CallOutcome, CapabilityCall, CapabilityHost};
use oauth3_sandbox_runner::policy::Policy;
use oauth3_sandbox_runner::redact::Redactor;
use oauth3_test_support::Upstream;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use zeroize::Zeroizing;

const TOKEN: &str = "bench-token-0123456789";

fn permit(up: &Upstream) -> PermitSpec {
    serde_json::from_value(json!({
        "description": "proxy bench",
        "secrets": ["API_TOKEN"],
        "capabilities": [{
            "name": "api",
            "baseUrl": format!("{}/v1", up.origin()),
            "paths": ["/items", "/items/*"],
            "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }, {
            "name": "web",
            "hosts": [format!("127.0.0.1:{}", up.addr.port())],
            "paths": ["/v1/items", "/v1/items/*"],
            "methods": ["GET"],
            "secretBindings": [{"secret": "API_TOKEN", "hosts": [format!("127.0.0.1:{}", up.addr.port())]}]
        }]
    }))
    .expect("valid permit")
}

/// A plain client that trusts only the upstream's CA, speaking HTTP/1.1 like the fetch.
fn direct_client(up: &Upstream) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&up.ca_pem) {
        roots.add(cert.expect("CA PEM")).expect("CA added");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()
        .expect("direct client")
}

async fn direct_get(client: &reqwest::Client, url: &str) -> Value {
    let response = client
        .get(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .expect("direct request");
    assert!(response.status().is_success(), "upstream answered 2xx");
    let bytes = response.bytes().await.expect("direct body");
    serde_json::from_slice(&bytes).expect("JSON body")
}

async fn proxied_get(host: &dyn CapabilityHost) -> Value {
    let outcome = host
        .call(CapabilityCall {
            capability: "api".to_owned(),
            args: vec![json!("GET"), json!("/items")],
        })
        .await;
    match outcome {
        CallOutcome::Value(v) => v,
        CallOutcome::Error(e) => panic!("proxied call failed: {e}"),
    }
}

/// The shim's JSON for `fetch(url, {headers: {Authorization: 'Bearer ' + placeholder}})`.
fn fetch_request(url: &str, placeholder: &str) -> Value {
    json!({"url": url, "method": "GET",
           "headers": [["authorization", format!("Bearer {placeholder}")]]})
}

async fn fetched_get(host: &dyn CapabilityHost, request: &Value) -> Value {
    match host.fetch(request.clone()).await {
        CallOutcome::Value(v) => {
            use base64::Engine as _;
            let body = v["bodyBase64"].as_str().expect("a body");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(body)
                .expect("base64");
            serde_json::from_slice(&bytes).expect("JSON body")
        }
        CallOutcome::Error(e) => panic!("fetch failed: {e}"),
    }
}

fn proxy(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let up = rt.block_on(Upstream::start());
    let url = format!("{}/v1/items", up.origin());
    let client = direct_client(&up);
    let secrets = BTreeMap::from([("API_TOKEN".to_owned(), Zeroizing::new(TOKEN.to_owned()))]);
    let redactor = Arc::new(Redactor::for_secrets(&secrets));
    let fetch = ScopedFetch::new(
        Policy::compile(&permit(&up)).expect("policy compiles"),
        secrets,
        redactor,
        FetchConfig {
            extra_root_certs_pem: vec![up.ca_pem.clone()],
            max_calls: usize::MAX,
            ..FetchConfig::default()
        },
    )
    .expect("scoped fetch builds");

    // Both paths must reach the same upstream route with the credential before timing.
    let direct = rt.block_on(direct_get(&client, &url));
    let proxied = rt.block_on(proxied_get(&fetch));
    assert_eq!(direct, proxied, "both paths get the same answer");
    let placeholder = fetch.environment()["API_TOKEN"].clone();
    let request = fetch_request(&url, &placeholder);
    let fetched = rt.block_on(fetched_get(&fetch, &request));
    assert_eq!(direct, fetched, "fetch() gets the same answer");
    let sent = up.requests();
    assert!(
        sent.iter()
            .all(|r| r.header_values("authorization") == [format!("Bearer {TOKEN}")]),
        "both paths carry the credential"
    );

    let mut group = c.benchmark_group("proxy GET over loopback HTTPS");
    group.bench_function("direct reqwest", |b| {
        b.iter(|| rt.block_on(direct_get(&client, black_box(&url))))
    });
    group.bench_function("through ScopedFetch", |b| {
        b.iter(|| rt.block_on(proxied_get(black_box(&fetch))))
    });
    group.bench_function("fetch() with a placeholder through ScopedFetch", |b| {
        b.iter(|| rt.block_on(fetched_get(black_box(&fetch), black_box(&request))))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = proxy
}
criterion_main!(benches);
