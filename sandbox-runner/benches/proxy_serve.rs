//! The credential proxy (`oauth3-sandbox-runner serve`, the real binary, a separate process)
//! against the same local HTTPS upstream: per-call overhead (a direct GET and a proxied GET
//! timed alternately in one loop, so both see the same machine load), proxied requests per
//! second with 32 concurrent clients, and the proxy's resident memory with 1,000 concurrent
//! event streams open through it.
//!
//! `cargo bench -p oauth3-sandbox-runner --bench proxy_serve` (options: `--calls N`,
//! `--streams N`, `--seconds N`).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use oauth3_crds::PermitSpec;
use oauth3_sandbox_runner::proxy::auth::TokenFile;
use oauth3_sandbox_runner::secrets::{DevKey, DevProvider, seal};
use oauth3_test_support::sse::EventStream;
use oauth3_test_support::{Upstream, free_port};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use serde_json::json;
use zeroize::Zeroizing;

const SECRET: &str = "bench-token-0123456789";
const CLIENT_TOKEN: &str = "bench-client-token";
const DEV_KEY: [u8; 32] = [5u8; 32];

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn client(ca_pems: &[&[u8]]) -> reqwest::Client {
    let roots = oauth3_sandbox_runner::fetch::web_pki_roots_and(ca_pems).expect("roots");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .pool_max_idle_per_host(2048)
        .build()
        .expect("client")
}

/// A running `serve` process and how to reach it.
struct Served {
    child: tokio::process::Child,
    base: String,
    ca: String,
    _dir: PathBuf,
}

impl Served {
    fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

async fn serve(origin: &str, upstream_ca: &[u8], max_concurrent: u32) -> Served {
    let spec: PermitSpec = serde_json::from_value(json!({
        "description": "bench",
        "secrets": ["API_TOKEN"],
        "capabilities": [{
            "name": "api",
            "baseUrl": format!("{origin}/v1"),
            "paths": ["/items", "/stream"],
            "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }],
        "proxy": {"enabled": true, "callers": ["bench"], "maxConcurrentCalls": max_concurrent}
    }))
    .expect("spec");
    let provider = DevProvider::new(DevKey::Hex(Zeroizing::new(hex::encode(DEV_KEY))), true)
        .expect("dev provider");
    let envelope = seal(&provider.public_key(), "bench", "API_TOKEN", SECRET).expect("sealed");
    let bundle = json!({
        "namespace": "bench",
        "permit": {"name": "p", "specDigest": oauth3_crds::spec_digest(&spec).expect("digest"),
                   "spec": spec},
        "sealedSecrets": [{"name": "API_TOKEN", "envelope": envelope}]
    });
    let dir = std::env::temp_dir().join(format!(
        "oauth3-bench-serve-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    let port = free_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_oauth3-sandbox-runner"))
        .arg("serve")
        .arg("--bundle")
        .arg(file("bundle.json", bundle.to_string().as_bytes()))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(file("tls.crt", leaf.pem().as_bytes()))
        .arg("--tls-key")
        .arg(file("tls.key", leaf_key.serialize_pem().as_bytes()))
        .arg("--client-token-file")
        .arg(file(
            "tokens",
            TokenFile::line_for(CLIENT_TOKEN, "bench").as_bytes(),
        ))
        .args(["--key-provider", "dev", "--insecure-dev-key"])
        .arg("--dev-key-file")
        .arg(file("dev.key", hex::encode(DEV_KEY).as_bytes()))
        .arg("--ca-file")
        .arg(file("ca.pem", upstream_ca))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("serve starts");
    let served = Served {
        child,
        base: format!("https://127.0.0.1:{port}"),
        ca: ca.pem(),
        _dir: dir,
    };
    let probe = client(&[served.ca.as_bytes()]);
    let started = Instant::now();
    while probe
        .get(format!("{}/api/items", served.base))
        .send()
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn overhead(up: &Upstream, served: &Served, calls: usize) {
    let direct = client(&[&up.ca_pem]);
    let proxied = client(&[served.ca.as_bytes()]);
    let direct_url = format!("{}/v1/items", up.origin());
    let proxied_url = format!("{}/api/items", served.base);
    let get = |c: &reqwest::Client, url: &str, token: &str| {
        let req = c.get(url).bearer_auth(token);
        async move {
            let r = req.send().await.expect("request");
            assert!(r.status().is_success(), "{}", r.status());
            r.bytes().await.expect("body");
        }
    };
    for _ in 0..200 {
        get(&direct, &direct_url, SECRET).await;
        get(&proxied, &proxied_url, CLIENT_TOKEN).await;
    }
    let (mut d, mut p, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..calls {
        // Alternate which goes first, so neither always sees a warmer cache.
        let (a, b) = if i % 2 == 0 {
            let t = Instant::now();
            get(&direct, &direct_url, SECRET).await;
            let a = micros(t.elapsed());
            let t = Instant::now();
            get(&proxied, &proxied_url, CLIENT_TOKEN).await;
            (a, micros(t.elapsed()))
        } else {
            let t = Instant::now();
            get(&proxied, &proxied_url, CLIENT_TOKEN).await;
            let b = micros(t.elapsed());
            let t = Instant::now();
            get(&direct, &direct_url, SECRET).await;
            (micros(t.elapsed()), b)
        };
        d.push(a);
        p.push(b);
        diff.push(b - a);
    }
    for v in [&mut d, &mut p, &mut diff] {
        v.sort_by(f64::total_cmp);
    }
    println!("per-call latency over {calls} interleaved pairs (us):");
    println!(
        "  direct   p50 {:8.1}  p99 {:8.1}",
        percentile(&d, 0.5),
        percentile(&d, 0.99)
    );
    println!(
        "  proxied  p50 {:8.1}  p99 {:8.1}",
        percentile(&p, 0.5),
        percentile(&p, 0.99)
    );
    println!(
        "  overhead (proxied - direct, paired) p50 {:8.1}  p99 {:8.1}",
        percentile(&diff, 0.5),
        percentile(&diff, 0.99)
    );
}

async fn throughput(url: String, token: &'static str, ca: Vec<u8>, seconds: u64, what: &str) {
    let c = client(&[&ca]);
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (c, url, done) = (c.clone(), url.clone(), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let r = c
                    .get(&url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("request");
                assert!(r.status().is_success(), "{}", r.status());
                r.bytes().await.expect("body");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "{what}: {n} requests in {seconds} s = {:.0} requests/s (32 concurrent clients)",
        n as f64 / seconds as f64
    );
}

async fn streams(count: usize) {
    let events = EventStream::start(3600, Duration::from_secs(1)).await;
    let served = serve(
        &events.origin(),
        &events.ca_pem,
        u32::try_from(count + 16).unwrap_or(10_000),
    )
    .await;
    let idle = served.rss_kib();
    let c = client(&[served.ca.as_bytes()]);
    let url = format!("{}/api/stream", served.base);
    let mut open = Vec::with_capacity(count);
    for _ in 0..count {
        let c = c.clone();
        let url = url.clone();
        open.push(tokio::spawn(async move {
            let mut r = c
                .get(&url)
                .bearer_auth(CLIENT_TOKEN)
                .send()
                .await
                .expect("stream");
            assert!(r.status().is_success(), "{}", r.status());
            let first = r.chunk().await.expect("chunk").expect("an event");
            assert!(!first.is_empty());
            r
        }));
    }
    let mut responses = Vec::with_capacity(count);
    for t in open {
        responses.push(t.await.expect("stream task"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = served.rss_kib();
    println!(
        "proxy RSS: {idle} KiB idle, {loaded} KiB with {count} streams open ({:.1} KiB per stream)",
        (loaded.saturating_sub(idle)) as f64 / count as f64
    );
    drop(responses);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("proxy_serve: benchmark");
        return;
    }
    let calls = arg("--calls", 3000);
    let stream_count = arg("--streams", 1000);
    let seconds = u64::try_from(arg("--seconds", 5)).unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let up = Upstream::start().await;
        let served = serve(&up.origin(), &up.ca_pem, 256).await;
        overhead(&up, &served, calls).await;
        throughput(
            format!("{}/v1/items", up.origin()),
            SECRET,
            up.ca_pem.clone(),
            seconds,
            "direct",
        )
        .await;
        throughput(
            format!("{}/api/items", served.base),
            CLIENT_TOKEN,
            served.ca.as_bytes().to_vec(),
            seconds,
            "proxied",
        )
        .await;
        drop(served);
        streams(stream_count).await;
    });
}
