//! Controller tier: the usage ledger against a real API server. A burst of usage changes
//! under one Permit (every launch and every result of a busy agent) is counted exactly, even
//! with another writer making its guarded writes conflict, in far fewer writes than changes;
//! unwritten changes are visible to readers and written on demand (shutdown).

use oauth3_test_support::wait_until;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use oauth3_crds::{Permit, PermitUsage};
use oauth3_operator::usage::{UsageDelta, UsageLedger};
use oauth3_tests::{client_or_skip, namespace};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

fn permit(name: &str) -> Permit {
    serde_json::from_value(json!({
        "apiVersion": "oauth3.dev/v1alpha1",
        "kind": "Permit",
        "metadata": {"name": name},
        "spec": {
            "description": "List issues",
            "capabilities": [{"name": "api", "baseUrl": "https://api.example.com",
                              "paths": ["/items"], "methods": ["GET"]}],
            "validFor": "1h"
        }
    }))
    .expect("a valid Permit")
}

/// A fresh namespace holding Permit `p`.
async fn setup(prefix: &str) -> Option<(kube::Client, String, Api<Permit>)> {
    let client = client_or_skip().await?;
    let ns = namespace(&client, prefix).await;
    let api: Api<Permit> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &permit("p"))
        .await
        .expect("create the Permit");
    Some((client, ns, api))
}

fn usage(p: &Permit) -> PermitUsage {
    p.status
        .as_ref()
        .and_then(|s| s.usage.clone())
        .unwrap_or_default()
}

async fn wait_usage(api: &Api<Permit>, ok: impl Fn(&PermitUsage) -> bool) -> PermitUsage {
    wait_until("the usage", DEADLINE, || async {
        let u = usage(&api.get("p").await.expect("read the Permit"));
        if ok(&u) { Ok(u) } else { Err(u) }
    })
    .await
}

#[tokio::test]
async fn a_burst_of_usage_under_one_permit_is_counted_exactly_in_few_writes() {
    let Some((client, ns, api)) = setup("usage-burst").await else {
        return;
    };

    // Count the writes that change the usage, from a watch.
    let usage_writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = {
        let (api, writes) = (api.clone(), usage_writes.clone());
        tokio::spawn(async move {
            let mut last: Option<PermitUsage> = None;
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(p)) = stream.next().await {
                let now = p.status.as_ref().and_then(|s| s.usage.clone());
                if now.is_some() && now != last {
                    writes.fetch_add(1, Ordering::SeqCst);
                }
                last = now;
            }
        })
    };

    // Another writer keeps changing the Permit, so guarded usage writes meet conflicts.
    let contending = Arc::new(AtomicBool::new(true));
    let contender = {
        let (api, on) = (api.clone(), contending.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while on.load(Ordering::SeqCst) {
                i += 1;
                let patch = json!({"metadata": {"labels": {"touched": i.to_string()}}});
                let _ = api
                    .patch("p", &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
                // Busy, not a livelock: guarded writes conflict often but can land.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let ledger = Arc::new(UsageLedger::new(client.clone()));
    const RUNS: i64 = 200;
    let recorders: Vec<_> = (0..RUNS)
        .map(|i| {
            let (ledger, ns) = (ledger.clone(), ns.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(u64::try_from(i).unwrap_or(0) * 5)).await;
                ledger.record(
                    &ns,
                    "p",
                    UsageDelta {
                        executions: 1,
                        ..UsageDelta::default()
                    },
                );
                ledger.record(
                    &ns,
                    "p",
                    UsageDelta {
                        executions: 0,
                        calls: 2,
                        rate_budget: BTreeMap::from([("api".to_owned(), (RUNS - i) as f64)]),
                        budget_at: Some(Timestamp::now()),
                        ..UsageDelta::default()
                    },
                );
            })
        })
        .collect();
    for r in recorders {
        r.await.expect("recorder");
    }

    // Before it is written, a reader sees the Permit with the pending changes laid over it.
    let mut read = api.get("p").await.expect("read");
    let written = usage(&read).executions;
    ledger.overlay(&mut read);
    let pending = ledger.pending(&ns, "p").map_or(0, |d| d.executions);
    assert_eq!(usage(&read).executions, written + pending);

    let done = wait_usage(&api, |u| u.executions >= RUNS).await;
    contending.store(false, Ordering::SeqCst);
    contender.await.expect("contender");
    assert_eq!(done.executions, RUNS, "every launch counted once");
    assert_eq!(done.calls, 2 * RUNS, "every call counted once");
    assert_eq!(
        done.rate_budget.get("api"),
        Some(&1.0),
        "the latest run's rate budget is carried forward"
    );
    assert!(done.at.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.abort();
    let writes = usage_writes.load(Ordering::SeqCst);
    assert!(
        (1..=(RUNS as usize) / 4).contains(&writes),
        "{} changes took {writes} writes; batching should need far fewer",
        2 * RUNS
    );
}

#[tokio::test]
async fn pending_usage_is_written_on_demand_and_dropped_for_a_deleted_permit() {
    let Some((client, ns, api)) = setup("usage-flush").await else {
        return;
    };
    let ledger = Arc::new(UsageLedger::new(client.clone()));
    let one = UsageDelta {
        executions: 1,
        calls: 3,
        ..UsageDelta::default()
    };
    ledger.record(&ns, "p", one.clone());
    // Shutdown: written now, not after the delay.
    assert!(ledger.flush().await, "everything written");
    assert_eq!(ledger.pending(&ns, "p"), None);
    let u = usage(&api.get("p").await.expect("read"));
    assert_eq!((u.executions, u.calls), (1, 3));

    // The counters of a Permit that is gone go with it: nothing is kept or retried forever.
    ledger.record(&ns, "gone", one);
    assert!(
        ledger.flush().await,
        "nothing left to write for a deleted Permit"
    );
    assert_eq!(ledger.pending(&ns, "gone"), None);
}
