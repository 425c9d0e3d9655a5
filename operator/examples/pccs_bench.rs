//! Benchmark of `kubectl oauth3 verify --pccs-url`'s collateral step (see BENCHMARKS.md): what
//! one `verify` adds before the checks, on the real sample TDX quote against the stand-in PCCS
//! over loopback HTTPS:
//! - **fetch**: a fresh client (as each `verify` process makes), TLS handshake, the four PCCS
//!   requests, the answers parsed into collateral;
//! - **cache hit**: `--collateral-cache` holding a current entry (one file read and parse);
//! - **file**: `--collateral FILE` (read and parse), the path without a PCCS.
//!
//! ```sh
//! cargo run --release -p oauth3-operator --example pccs_bench -- 300
//! ```

use std::time::{Duration, Instant};

use oauth3_operator::verify::pccs::PccsClient;
use oauth3_test_support::pccs::Pccs;
use oauth3_test_support::tdx::{SAMPLE_AT, SAMPLE_COLLATERAL, SAMPLE_QUOTE};

fn summary(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let n = times.len();
    let pct = |p: usize| times[(n * p / 100).min(n - 1)];
    let mean = times.iter().sum::<Duration>() / u32::try_from(n).unwrap_or(u32::MAX);
    println!(
        "{what:<10} over {n} runs: mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms",
        mean.as_secs_f64() * 1e3,
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3
    );
}

async fn timed<F, Fut>(n: usize, mut step: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..5 {
        step().await;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        step().await;
        times.push(start.elapsed());
    }
    times
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let pccs = Pccs::start().await;
        let client = || {
            PccsClient::new(&pccs.url(), Some(&pccs.ca_pem), Duration::from_secs(10))
                .expect("client")
        };
        let fetch = timed(n, || async {
            let c = client()
                .collateral_for(SAMPLE_QUOTE, SAMPLE_AT)
                .await
                .expect("fetch");
            std::hint::black_box(c);
        })
        .await;
        let dir = std::env::temp_dir().join(format!("oauth3-pccs-bench-{}", std::process::id()));
        let cached = client().with_cache(&dir);
        cached
            .collateral_for(SAMPLE_QUOTE, SAMPLE_AT)
            .await
            .expect("fill the cache");
        let before = pccs.requests().len();
        let hit = timed(n, || async {
            let c = cached
                .collateral_for(SAMPLE_QUOTE, SAMPLE_AT)
                .await
                .expect("cache hit");
            std::hint::black_box(c);
        })
        .await;
        assert_eq!(pccs.requests().len(), before, "every cache run was a hit");
        let file = dir.join("collateral.json");
        std::fs::write(&file, SAMPLE_COLLATERAL).expect("write");
        let from_file = timed(n, || async {
            let text = std::fs::read_to_string(&file).expect("read");
            let c: dcap_qvl::QuoteCollateralV3 = serde_json::from_str(&text).expect("parse");
            std::hint::black_box(c);
        })
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        summary("fetch", fetch);
        summary("cache hit", hit);
        summary("file", from_file);
    });
}
