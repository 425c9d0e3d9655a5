//! The result endpoint under a flood of slow, unauthenticated clients, against the real
//! operator binary: 500 connections that announce 4 MiB bodies and trickle them, trickle their
//! headers, or ask for names that cannot exist. None of them gets its body read (each is
//! answered from its headers: 401, 404 or 409), the operator's resident memory stays bounded,
//! and its log (written to a file, not a terminal) carries no ANSI colour codes.
//!
//! `OAUTH3_FLOOD_OPERATOR=<path>` runs the same flood against another operator binary (to
//! measure a build before a change); the bound is then reported, not asserted.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use oauth3_crds::{Execution, Permit};
use oauth3_test_support::{ExecutionFixture, PermitFixture, free_port, wait_until};
use oauth3_tests::{client_or_skip, namespace, workspace_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 500;
/// How long each slow client keeps trickling.
const TRICKLE: Duration = Duration::from_secs(8);
/// The most the operator's resident memory may grow under the flood.
const RSS_BOUND_MIB: f64 = 64.0;

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// What one flooding client does.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Full headers with a wrong token and `Content-Length: 4 MiB`, then the body, slowly.
    SlowBodyBadToken,
    /// Full headers without a token, then the body, slowly.
    SlowBodyNoToken,
    /// The headers themselves, a few bytes at a time.
    SlowHeaders,
    /// A name that cannot exist, with a token and a slow body.
    ImpossibleName,
}

/// How one client's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ended {
    /// Answered with this status code.
    Answered(u16),
    /// Closed (or reset) by the server well before the client stopped trickling, without an
    /// answer it could read: a reset can discard an answer already sent.
    CutEarly,
    /// Still open, or closed late, without an answer.
    Held,
}

/// Runs one client and says how its connection ended.
async fn flood_client(addr: std::net::SocketAddr, ns: String, kind: Kind) -> Ended {
    let started = Instant::now();
    let code = flood_client_code(addr, ns, kind).await;
    match code {
        Some(c) => Ended::Answered(c),
        None if started.elapsed() < TRICKLE / 2 => Ended::CutEarly,
        None => Ended::Held,
    }
}

/// Runs one client; returns the status code it was answered with, if any.
async fn flood_client_code(addr: std::net::SocketAddr, ns: String, kind: Kind) -> Option<u16> {
    let mut conn = TcpStream::connect(addr).await.ok()?;
    let (path, auth) = match kind {
        Kind::SlowBodyBadToken => (
            format!("/v1/results/{ns}/denied"),
            "Authorization: Bearer not-the-token\r\n",
        ),
        Kind::SlowBodyNoToken => (format!("/v1/results/{ns}/nothing-here"), ""),
        Kind::SlowHeaders => (
            format!("/v1/results/{ns}/denied"),
            "Authorization: Bearer slow\r\n",
        ),
        Kind::ImpossibleName => (
            format!("/v1/results/{ns}/%2e%2e"),
            "Authorization: Bearer x\r\n",
        ),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: operator\r\n{auth}Content-Type: application/json\r\nContent-Length: 4194304\r\n\r\n"
    );
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    match kind {
        Kind::SlowHeaders => {
            for chunk in head.as_bytes().chunks(4) {
                if conn.write_all(chunk).await.is_err() || started.elapsed() > TRICKLE {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        _ => {
            conn.write_all(head.as_bytes()).await.ok()?;
            let filler = vec![b' '; 16 * 1024];
            while started.elapsed() < TRICKLE {
                // Stop as soon as the server has answered.
                match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        answer.extend_from_slice(&buf[..n]);
                        break;
                    }
                    Err(_) => {}
                }
                if conn.write_all(&filler).await.is_err() {
                    break;
                }
            }
        }
    }
    if answer.is_empty()
        && let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await
    {
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer)
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|c| c.parse().ok())
}

#[tokio::test]
async fn the_result_endpoint_stays_bounded_under_five_hundred_slow_unauthenticated_clients() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "callback-flood").await;
    // A real Execution that is not running (its Permit is not approved), so requests naming it
    // get as far as the token check.
    let permits: Api<Permit> = Api::namespaced(client.clone(), &ns);
    permits
        .create(
            &PostParams::default(),
            &PermitFixture::api("https://api.example.com").permit("p"),
        )
        .await
        .expect("permit");
    let execs: Api<Execution> = Api::namespaced(client.clone(), &ns);
    execs
        .create(
            &PostParams::default(),
            &ExecutionFixture::under("p").execution("denied"),
        )
        .await
        .expect("execution");

    let measuring_other = std::env::var_os("OAUTH3_FLOOD_OPERATOR").map(PathBuf::from);
    let binary = measuring_other
        .clone()
        .unwrap_or_else(|| workspace_binary("oauth3-operator", "oauth3-operator"));
    let log_path = std::env::temp_dir().join(format!("oauth3-{ns}-operator.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let callback = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = tokio::process::Command::new(&binary)
        .env(
            "KUBECONFIG",
            std::env::var_os("TEST_KUBECONFIG").expect("TEST_KUBECONFIG"),
        )
        .env_remove("NO_COLOR")
        .args([
            "--namespace",
            &ns,
            "--lease-namespace",
            &ns,
            "--identity",
            "flood",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--callback-addr",
            &callback.to_string(),
            "--launcher",
            "process",
        ])
        .arg(format!(
            "--runner-binary={}",
            workspace_binary("oauth3-sandbox-runner", "oauth3-sandbox-runner").display()
        ))
        .args(["--log", "info"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting the operator");
    let pid = child.id().expect("pid");
    wait_until(
        "the callback accepts connections",
        Duration::from_secs(30),
        || async {
            TcpStream::connect(callback)
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    // The Execution has been decided (Denied) before the flood starts.
    wait_until(
        "the Execution is decided",
        Duration::from_secs(30),
        || async {
            match execs.get("denied").await {
                Ok(e) if e.status.as_ref().and_then(|s| s.phase).is_some() => Ok(()),
                other => Err(format!("{:?}", other.map(|e| e.status))),
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_mib(pid);

    let kinds = [
        Kind::SlowBodyBadToken,
        Kind::SlowBodyNoToken,
        Kind::SlowHeaders,
        Kind::ImpossibleName,
    ];
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(flood_client(callback, ns.clone(), kinds[i % kinds.len()])))
        .collect();
    let sampler = tokio::spawn(async move {
        let mut peak: f64 = 0.0;
        let until = Instant::now() + TRICKLE + Duration::from_secs(4);
        while Instant::now() < until {
            peak = peak.max(rss_mib(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    });
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for (i, c) in clients.into_iter().enumerate() {
        let code = c.await.expect("client task");
        let key = format!("{:?} -> {code:?}", kinds[i % kinds.len()]);
        *answers.entry(key).or_default() += 1;
    }
    let peak = sampler.await.expect("sampler");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mib(pid);
    println!(
        "callback flood: {CLIENTS} slow clients, operator RSS baseline {baseline:.1} MiB, peak {peak:.1} MiB (+{:.1}), after {after:.1} MiB; answers {answers:?}",
        peak - baseline
    );
    let alive = child.try_wait().expect("child state").is_none();
    let _ = child.kill().await;
    let mut text = String::new();
    std::fs::File::open(&log_path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .expect("operator log");
    if measuring_other.is_some() {
        return;
    }
    assert!(alive, "the operator survived the flood");
    assert!(
        peak - baseline < RSS_BOUND_MIB,
        "operator RSS grew from {baseline:.1} to {peak:.1} MiB under the flood"
    );
    // Every client that sent its headers was answered from them: 401 (wrong or no token),
    // 404 (no such name), 409 (not running); none was made to upload its body first.
    for (kind, expected) in [
        ("SlowBodyBadToken", 409),
        ("SlowBodyNoToken", 401),
        ("ImpossibleName", 404),
    ] {
        let count = |e: Ended| {
            answers
                .get(&format!("{kind} -> {e:?}"))
                .copied()
                .unwrap_or(0)
        };
        let answered = count(Ended::Answered(expected));
        assert_eq!(
            answered + count(Ended::CutEarly),
            CLIENTS / 4,
            "{kind}: every client answered from its headers or cut at once: {answers:?}"
        );
        assert!(answered >= CLIENTS / 4 - 5, "{kind}: {answers:?}");
    }
    // Logs to a file carry no colour codes.
    assert!(text.contains("serving the result callback"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape codes in a log that is not a terminal"
    );
}
