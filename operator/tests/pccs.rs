//! The PCCS client of `kubectl oauth3 verify --pccs-url` against a stand-in PCCS over real
//! HTTPS serving the real sample collateral: what it fetches verifies the sample quote; each
//! way a PCCS can misbehave (errors, a missing issuer chain, redirects, slowness, oversize
//! answers, tampered TCB info, an untrusted certificate) ends in an error naming the URL and
//! what was wrong, or in a verification that fails, never in one that passes; the collateral
//! cache is reused until its nextUpdate and refetched after it or when damaged.

use std::time::Duration;

use oauth3_operator::verify::pccs::{PccsClient, next_update, platform_of};
use oauth3_test_support::pccs::{Pccs, PccsFault};
use oauth3_test_support::tdx::{
    SAMPLE_AT, SAMPLE_COLLATERAL, SAMPLE_FMSPC, SAMPLE_PCK_CA, SAMPLE_QUOTE,
};

fn client(pccs: &Pccs) -> PccsClient {
    PccsClient::new(&pccs.url(), Some(&pccs.ca_pem), Duration::from_secs(5)).expect("client")
}

fn sample() -> dcap_qvl::QuoteCollateralV3 {
    serde_json::from_str(SAMPLE_COLLATERAL).expect("sample collateral")
}

fn verifies(c: &dcap_qvl::QuoteCollateralV3) -> Result<(), String> {
    dcap_qvl::verify::QuoteVerifier::new_prod()
        .verify(SAMPLE_QUOTE, c, SAMPLE_AT)
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("oauth3-pccs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_platform_is_read_from_the_quotes_pck_certificate() {
    assert_eq!(
        platform_of(SAMPLE_QUOTE).expect("platform"),
        (SAMPLE_FMSPC.to_owned(), SAMPLE_PCK_CA)
    );
    let err = platform_of(&SAMPLE_QUOTE[..100])
        .expect_err("a cut quote")
        .to_string();
    assert!(err.contains("does not name its platform"), "{err}");
}

#[tokio::test]
async fn collateral_from_a_pccs_verifies_the_sample_quote() {
    let pccs = Pccs::start().await;
    let got = client(&pccs)
        .collateral_for(SAMPLE_QUOTE, SAMPLE_AT)
        .await
        .expect("collateral");
    verifies(&got).expect("the fetched collateral verifies the quote");
    let want = sample();
    assert_eq!(got.tcb_info, want.tcb_info, "TCB info kept byte for byte");
    assert_eq!(got.qe_identity, want.qe_identity);
    assert_eq!(got.pck_crl, want.pck_crl);
    assert_eq!(got.root_ca_crl, want.root_ca_crl, "hex root CA CRL decoded");
    assert_eq!(got.tcb_info_issuer_chain, want.tcb_info_issuer_chain);
    assert_eq!(
        pccs.requests(),
        [
            format!("/sgx/certification/v4/pckcrl?ca={SAMPLE_PCK_CA}&encoding=der"),
            format!("/tdx/certification/v4/tcb?fmspc={SAMPLE_FMSPC}"),
            "/tdx/certification/v4/qe/identity".to_owned(),
            "/sgx/certification/v4/rootcacrl".to_owned(),
        ]
    );

    // The API's own prefix in the URL is accepted, and the same requests are made.
    let prefixed = PccsClient::new(
        &format!("{}/sgx/certification/v4/", pccs.url()),
        Some(&pccs.ca_pem),
        Duration::from_secs(5),
    )
    .expect("client");
    prefixed
        .collateral_for(SAMPLE_QUOTE, SAMPLE_AT)
        .await
        .expect("collateral through the prefixed URL");
    assert_eq!(pccs.requests().len(), 8);
}

#[tokio::test]
async fn a_misbehaving_pccs_ends_in_an_error_that_names_the_url_and_the_fault() {
    let pccs = Pccs::start().await;
    let tcb_url = format!(
        "{}/tdx/certification/v4/tcb?fmspc={SAMPLE_FMSPC}",
        pccs.url()
    );
    let pck_url = format!(
        "{}/sgx/certification/v4/pckcrl?ca={SAMPLE_PCK_CA}&encoding=der",
        pccs.url()
    );
    for (fault, url, why) in [
        (PccsFault::ServerError, &pck_url, "answered 500"),
        (
            PccsFault::MissingIssuerChain,
            &tcb_url,
            "the TCB-Info-Issuer-Chain header is missing",
        ),
        (PccsFault::Redirect, &pck_url, "redirects are not followed"),
        (PccsFault::Oversize, &tcb_url, "larger than 4194304 bytes"),
    ] {
        pccs.set_fault(fault);
        let err = client(&pccs)
            .collateral_for(SAMPLE_QUOTE, SAMPLE_AT)
            .await
            .expect_err(&format!("{fault:?} must fail"))
            .to_string();
        assert!(err.contains(url.as_str()), "{fault:?}: {err}");
        assert!(err.contains(why), "{fault:?}: {err}");
    }

    pccs.set_fault(PccsFault::Slow(Duration::from_secs(3)));
    let impatient = PccsClient::new(&pccs.url(), Some(&pccs.ca_pem), Duration::from_millis(300))
        .expect("client");
    let err = impatient
        .collateral_for(SAMPLE_QUOTE, SAMPLE_AT)
        .await
        .expect_err("a slow PCCS times out")
        .to_string();
    assert!(err.contains(&pck_url) && err.contains("timed out"), "{err}");
}

#[tokio::test]
async fn tampered_collateral_from_a_pccs_cannot_make_the_quote_verify() {
    let pccs = Pccs::start().await;
    pccs.set_fault(PccsFault::TamperedTcbInfo);
    let got = client(&pccs)
        .collateral_for(SAMPLE_QUOTE, SAMPLE_AT)
        .await
        .expect("the PCCS answered");
    assert_ne!(got.tcb_info, sample().tcb_info);
    let err = verifies(&got).expect_err("tampered TCB info must not verify");
    assert!(err.to_lowercase().contains("tcb"), "{err}");
}

#[tokio::test]
async fn a_pccs_whose_certificate_is_not_trusted_is_refused() {
    let pccs = Pccs::start().await;
    let untrusting = PccsClient::new(&pccs.url(), None, Duration::from_secs(5)).expect("client");
    let err = untrusting
        .collateral_for(SAMPLE_QUOTE, SAMPLE_AT)
        .await
        .expect_err("untrusted certificate")
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(
        pccs.requests().is_empty(),
        "no request was made over the untrusted connection"
    );
}

#[tokio::test]
async fn the_collateral_cache_is_reused_until_next_update_and_refetched_when_damaged() {
    let pccs = Pccs::start().await;
    let dir = temp_dir("cache");
    let cached = client(&pccs).with_cache(&dir);
    let first = cached
        .collateral_for(SAMPLE_QUOTE, SAMPLE_AT)
        .await
        .expect("first fetch");
    assert_eq!(pccs.requests().len(), 4);
    let file = dir.join(format!("tdx-{SAMPLE_FMSPC}-{SAMPLE_PCK_CA}.json"));
    assert!(file.exists(), "cache file written");

    let again = cached
        .collateral_for(SAMPLE_QUOTE, SAMPLE_AT)
        .await
        .expect("from the cache");
    assert_eq!(pccs.requests().len(), 4, "served from the cache");
    verifies(&again).expect("the cached collateral verifies");
    assert_eq!(again.tcb_info, first.tcb_info);

    let expiry = next_update(&first).expect("nextUpdate");
    cached
        .collateral_for(SAMPLE_QUOTE, expiry)
        .await
        .expect("refetch after nextUpdate");
    assert_eq!(pccs.requests().len(), 8, "refetched once nextUpdate passed");

    std::fs::write(&file, b"{ not json").expect("damage");
    cached
        .collateral_for(SAMPLE_QUOTE, SAMPLE_AT)
        .await
        .expect("refetch over a damaged entry");
    assert_eq!(pccs.requests().len(), 12, "a damaged entry is refetched");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// `kubectl oauth3 seal --attestation --pccs-url`: the collateral comes from the PCCS (the
/// signature check passes on it), the sample key is still refused (its quote does not bind
/// the key), and a PCCS that fails or a URL that is not allowed ends in a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_takes_the_collateral_from_the_pccs() {
    use base64::Engine as _;
    let pccs = Pccs::start().await;
    let dir = temp_dir("seal");
    std::fs::create_dir_all(&dir).expect("dir");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    };
    let quote = base64::engine::general_purpose::STANDARD.encode(SAMPLE_QUOTE);
    let attestation = write(
        "key.json",
        serde_json::json!({"publicKey": hex::encode([3u8; 32]), "attestation": {"kind": "tdx",
            "provider": "dstack", "quote": quote}})
        .to_string()
        .as_bytes(),
    );
    let policy = write(
        "policy.yaml",
        format!("mrtd: [{}]\n", oauth3_test_support::tdx::sample_mrtd()).as_bytes(),
    );
    let ca = write("pccs-ca.pem", &pccs.ca_pem);
    let cache = dir.join("cache");
    let seal = |url: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-oauth3"))
            .args(["seal", "GITHUB_TOKEN", "--from-literal", "ghp_secret_value"])
            .arg("--attestation")
            .arg(&attestation)
            .arg("--policy")
            .arg(&policy)
            .args(["--pccs-url", url, "--pccs-ca"])
            .arg(&ca)
            .arg("--collateral-cache")
            .arg(&cache)
            .args(["--at", "2025-07-01T00:00:00Z"])
            .output()
            .expect("runs")
    };

    let out = seal(&pccs.url());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing to seal"), "{stderr}");
    assert!(
        stderr.contains("pass         signature"),
        "the PCCS's collateral was used: {stderr}"
    );
    assert!(stderr.contains("FAIL         binding"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("oauth3-sealed"));
    assert!(!stderr.contains("ghp_secret_value"));
    assert_eq!(pccs.requests().len(), 4);
    assert!(
        cache
            .join(format!("tdx-{SAMPLE_FMSPC}-{SAMPLE_PCK_CA}.json"))
            .exists()
    );

    pccs.set_fault(PccsFault::ServerError);
    std::fs::remove_dir_all(&cache).expect("empty the cache");
    let out = seal(&pccs.url());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("fetching the quote's collateral: PCCS request GET https://127.0.0.1:")
            && stderr.contains("answered 500"),
        "{stderr}"
    );

    let out = seal("http://pccs.example.com");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "--pccs-url http://pccs.example.com: plain http is accepted only to a loopback address"
        ),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
