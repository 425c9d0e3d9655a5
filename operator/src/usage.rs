//! The informational usage counters of Permits (`status.usage`: Executions started, capability
//! calls made, the rate-limit tokens carried from one run to the next), written in batches.
//!
//! Every launch and every result changes the counters of one Permit. Written one by one, with
//! the optimistic concurrency a shared counter needs, a burst of Executions under one Permit
//! turns into a storm of conflicting status writes (each retried, each re-read) that starves
//! the API server. The ledger instead collects the changes in memory and one flush per Permit
//! and [`FLUSH_DELAY`] writes them with a single guarded merge patch, retried on conflict; a
//! flush that fails keeps its changes for the next one.
//!
//! Reads that must see the counters (the rate budget handed to the next runner) see the
//! Permit from the API server with the unflushed changes laid over it ([`UsageLedger::overlay`]).
//! Limits are not counted here: an Execution under a Permit with `maxExecutions`, or one that
//! consumes a `once` code trust, reserves its slot with its own serialised write before it is
//! launched. An operator that dies between two flushes loses at most [`FLUSH_DELAY`] of launch
//! counts (informational), never a limit. The calls of a result (and the rate
//! budget they spend) are not lost that way: the result's status write records
//! `usageCounted: false`, the flush that writes its calls marks it `true`, and an operator that
//! starts counts every Execution still at `false` again ([`UsageLedger::claim`] keeps one
//! process from counting a result twice).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use oauth3_crds::{Execution, Permit, PermitSpec, PermitUsage};
use serde_json::json;

use crate::status_write::{Guarded, write_status};

use k8s_openapi::jiff::Timestamp;

/// How long changes wait before they are written: the most a Permit's counters lag behind.
pub const FLUSH_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between flushes while writes keep failing.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(30);
/// Guarded writes tried per flush of one Permit before its changes wait for the next flush.
const FLUSH_ATTEMPTS: usize = 5;

/// Unwritten changes to one Permit's usage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageDelta {
    /// Executions started.
    pub executions: i64,
    /// Allowed capability calls.
    pub calls: i64,
    /// Remaining rate-limit tokens reported by the latest finished run, per capability.
    pub rate_budget: BTreeMap<String, f64>,
    /// When `rate_budget` was measured (the next launch refills it from then).
    pub budget_at: Option<Timestamp>,
    /// Rate-limit tokens to take off the budget, per capability, on top of `rate_budget`: the
    /// allowed calls of a run whose own remaining budget is stale (a result that arrived late,
    /// or one recounted after a restart).
    pub spent: BTreeMap<String, f64>,
}

impl UsageDelta {
    /// Folds `later` into `self`: counts add up, the later budget wins per capability.
    pub fn merge(&mut self, later: UsageDelta) {
        self.executions += later.executions;
        self.calls += later.calls;
        if !later.rate_budget.is_empty() {
            self.budget_at = later.budget_at.or(self.budget_at);
        }
        self.rate_budget.extend(later.rate_budget);
        for (cap, n) in later.spent {
            *self.spent.entry(cap).or_default() += n;
        }
    }

    /// `usage` with this delta applied. `at` moves only with a new budget: it is where the
    /// next refill of the budget starts.
    ///
    /// `spent` tokens come off the budget; a capability with no budget yet starts from its
    /// full `requests` in `spec` (as the next launch would).
    pub fn apply_to(&self, usage: &PermitUsage, spec: &PermitSpec) -> PermitUsage {
        let mut rate_budget = usage.rate_budget.clone();
        rate_budget.extend(self.rate_budget.clone());
        for (cap, n) in &self.spent {
            let full = spec
                .capabilities
                .iter()
                .find(|c| &c.name == cap)
                .and_then(|c| c.rate_limit.as_ref())
                .map(|r| f64::from(r.requests));
            if let Some(left) = rate_budget.get(cap).copied().or(full) {
                rate_budget.insert(cap.clone(), (left - n).max(0.0));
            }
        }
        let at = match self.budget_at {
            Some(t) if !self.rate_budget.is_empty() => Some(Time(t)),
            _ => usage.at.clone(),
        };
        PermitUsage {
            executions: usage.executions + self.executions,
            calls: usage.calls + self.calls,
            rate_budget,
            at,
        }
    }
}

type Key = (String, String);

#[derive(Default)]
struct State {
    pending: HashMap<Key, UsageDelta>,
    /// Executions (by name, in the Permit's namespace) whose results are in `pending`: marked
    /// `usageCounted: true` once their Permit's delta is written.
    marks: HashMap<Key, Vec<String>>,
    /// Uids of the Executions whose results this ledger has counted (or is counting), so a
    /// result is counted once per operator process however often it is seen.
    claimed: HashSet<String>,
    /// Whether a flush task is already scheduled.
    scheduled: bool,
}

/// Collects usage changes and writes them to the Permits in batches (see the module docs).
pub struct UsageLedger {
    client: kube::Client,
    state: Mutex<State>,
}

impl UsageLedger {
    /// A ledger writing with `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `delta` for Permit `namespace/permit` and makes sure a flush follows within
    /// [`FLUSH_DELAY`].
    pub fn record(self: &Arc<Self>, namespace: &str, permit: &str, delta: UsageDelta) {
        let schedule = {
            let mut state = self.lock();
            state
                .pending
                .entry((namespace.to_owned(), permit.to_owned()))
                .or_default()
                .merge(delta);
            !std::mem::replace(&mut state.scheduled, true)
        };
        if schedule {
            let ledger = self.clone();
            tokio::spawn(async move {
                let mut delay = FLUSH_DELAY;
                loop {
                    tokio::time::sleep(delay).await;
                    // While writes fail (API server away), retry less and less often.
                    delay = if ledger.flush().await {
                        FLUSH_DELAY
                    } else {
                        (delay * 2).min(RETRY_DELAY_MAX)
                    };
                    let mut state = ledger.lock();
                    if state.pending.is_empty() {
                        state.scheduled = false;
                        return;
                    }
                }
            });
        }
    }

    /// Claims the result of the Execution with `uid` for counting: `true` the first time,
    /// `false` when this process already counts it.
    pub fn claim(&self, uid: &str) -> bool {
        self.lock().claimed.insert(uid.to_owned())
    }

    /// Gives a claim back (the result was not recorded after all).
    pub fn unclaim(&self, uid: &str) {
        self.lock().claimed.remove(uid);
    }

    /// Records the usage of Execution `execution`'s result (claimed with [`Self::claim`]): once
    /// the Permit's delta holding it is written, the Execution is marked `usageCounted: true`.
    pub fn record_result(
        self: &Arc<Self>,
        namespace: &str,
        permit: &str,
        execution: &str,
        delta: UsageDelta,
    ) {
        self.lock()
            .marks
            .entry((namespace.to_owned(), permit.to_owned()))
            .or_default()
            .push(execution.to_owned());
        self.record(namespace, permit, delta);
    }

    /// The unwritten changes of Permit `namespace/permit`.
    pub fn pending(&self, namespace: &str, permit: &str) -> Option<UsageDelta> {
        self.lock()
            .pending
            .get(&(namespace.to_owned(), permit.to_owned()))
            .cloned()
    }

    /// Lays the unwritten changes of `permit` over its `status.usage`, so a reader sees the
    /// counters as they will be once written.
    pub fn overlay(&self, permit: &mut Permit) {
        let namespace = permit.namespace().unwrap_or_default();
        let Some(delta) = self.pending(&namespace, &permit.name_any()) else {
            return;
        };
        let status = permit.status.get_or_insert_with(Default::default);
        status.usage =
            Some(delta.apply_to(&status.usage.clone().unwrap_or_default(), &permit.spec));
    }

    /// Writes every pending change now (also called on shutdown); `false` if the API server
    /// refused or failed a write (not merely a conflict with another writer). Changes that could
    /// not be written stay pending.
    pub async fn flush(&self) -> bool {
        let (batch, mut marks) = {
            let mut state = self.lock();
            let batch: Vec<(Key, UsageDelta)> = state.pending.drain().collect();
            (batch, std::mem::take(&mut state.marks))
        };
        let mut all = true;
        for ((namespace, permit), delta) in batch {
            let written = self.write(&namespace, &permit, &delta).await;
            let key = (namespace.clone(), permit.clone());
            if matches!(written, Ok(true)) {
                for execution in marks.remove(&key).unwrap_or_default() {
                    self.mark_counted(&namespace, &execution).await;
                }
            } else if let Some(names) = marks.remove(&key) {
                self.lock().marks.entry(key).or_default().extend(names);
            }
            if !matches!(written, Ok(true)) {
                let key = format!("{namespace}/{permit}");
                match written {
                    Err(e) => {
                        all = false;
                        tracing::warn!(permit = %key, error = %e, "recording usage; kept for the next flush");
                    }
                    // A busy Permit: try again at the next flush, without backing off.
                    _ => {
                        tracing::debug!(permit = %key, "usage write conflicted; kept for the next flush")
                    }
                }
                let mut state = self.lock();
                let slot = state.pending.entry((namespace, permit)).or_default();
                // What arrived meanwhile is later than what failed: it goes on top.
                let later = std::mem::replace(slot, delta);
                slot.merge(later);
            }
        }
        all
    }

    /// Marks Execution `namespace/name` `usageCounted: true` (best effort: an Execution left
    /// at `false` is counted again only by an operator that restarts).
    async fn mark_counted(&self, namespace: &str, name: &str) {
        let api: Api<Execution> = Api::namespaced(self.client.clone(), namespace);
        let patch = json!({"status": {"usageCounted": true}});
        if let Err(e) = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            && !crate::status_write::is_not_found(&e)
        {
            tracing::warn!(execution = %format!("{namespace}/{name}"), error = %e, "marking usage as counted");
        }
    }

    /// Flushes until nothing is pending (conflicts retried), at most `rounds` times, for a
    /// shutdown; `true` when everything was written.
    pub async fn flush_all(&self, rounds: usize) -> bool {
        for _ in 0..rounds {
            self.flush().await;
            if self.lock().pending.is_empty() {
                return true;
            }
        }
        self.lock().pending.is_empty()
    }

    /// Applies `delta` to the Permit's stored usage with the guarded write; `Ok(false)` when
    /// other writers changed the Permit on every attempt.
    async fn write(
        &self,
        namespace: &str,
        permit: &str,
        delta: &UsageDelta,
    ) -> Result<bool, kube::Error> {
        let api: Api<Permit> = Api::namespaced(self.client.clone(), namespace);
        for _ in 0..FLUSH_ATTEMPTS {
            let Some(current) = api.get_opt(permit).await? else {
                // The Permit is gone, and its counters with it.
                return Ok(true);
            };
            let usage = current
                .status
                .as_ref()
                .and_then(|s| s.usage.clone())
                .unwrap_or_default();
            let change = json!({"usage": delta.apply_to(&usage, &current.spec)});
            match write_status(&api, &current, &change, None).await? {
                Guarded::Written | Guarded::Gone => return Ok(true),
                Guarded::Conflict => {
                    tokio::time::sleep(Duration::from_millis(u64::from(rand::random::<u8>() % 50)))
                        .await;
                }
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec with a rate-limited capability `fresh` (10 calls) and no `gone`.
    fn spec() -> PermitSpec {
        serde_json::from_value(serde_json::json!({
            "description": "d",
            "capabilities": [{"name": "fresh", "baseUrl": "https://a.example", "paths": ["/x"],
                              "methods": ["GET"], "rateLimit": {"requests": 10, "perSeconds": 60}}]
        }))
        .expect("spec")
    }

    fn budget(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn deltas_add_counts_and_keep_the_later_budget_per_capability() {
        let t = |s| Timestamp::from_second(s).expect("time");
        let mut d = UsageDelta {
            executions: 1,
            calls: 2,
            rate_budget: budget(&[("a", 1.0), ("b", 5.0)]),
            budget_at: Some(t(100)),
            ..UsageDelta::default()
        };
        d.merge(UsageDelta {
            executions: 1,
            ..UsageDelta::default()
        });
        assert_eq!(
            d.budget_at,
            Some(t(100)),
            "a launch does not move the budget's time"
        );
        d.merge(UsageDelta {
            executions: 0,
            calls: 3,
            rate_budget: budget(&[("a", 0.5)]),
            budget_at: Some(t(160)),
            ..UsageDelta::default()
        });
        assert_eq!(d.executions, 2);
        assert_eq!(d.calls, 5);
        assert_eq!(d.rate_budget, budget(&[("a", 0.5), ("b", 5.0)]));
        assert_eq!(d.budget_at, Some(t(160)));
    }

    #[test]
    fn a_delta_applies_on_top_of_the_written_usage() {
        let t = |s| Timestamp::from_second(s).expect("time");
        let written = PermitUsage {
            executions: 10,
            calls: 20,
            rate_budget: budget(&[("a", 3.0), ("c", 1.0)]),
            at: Some(Time(t(50))),
        };
        let launches = UsageDelta {
            executions: 2,
            ..UsageDelta::default()
        };
        assert_eq!(
            launches.apply_to(&written, &spec()).at,
            Some(Time(t(50))),
            "counting launches keeps the budget's time, or its refill would be lost"
        );
        let d = UsageDelta {
            executions: 2,
            calls: 1,
            rate_budget: budget(&[("a", 2.0)]),
            budget_at: Some(t(90)),
            ..UsageDelta::default()
        };
        let next = d.apply_to(&written, &spec());
        assert_eq!((next.executions, next.calls), (12, 21));
        assert_eq!(next.rate_budget, budget(&[("a", 2.0), ("c", 1.0)]));
        assert_eq!(next.at, Some(Time(t(90))));
    }

    #[test]
    fn spent_tokens_come_off_the_current_budget_never_below_zero() {
        let written = PermitUsage {
            rate_budget: budget(&[("a", 3.0), ("b", 1.0)]),
            ..PermitUsage::default()
        };
        let mut late = UsageDelta {
            calls: 3,
            spent: budget(&[("a", 2.0), ("b", 2.0), ("gone", 1.0), ("fresh", 1.0)]),
            ..UsageDelta::default()
        };
        late.merge(UsageDelta {
            spent: budget(&[("a", 0.5)]),
            ..UsageDelta::default()
        });
        let next = late.apply_to(&written, &spec());
        assert_eq!(
            next.rate_budget,
            budget(&[("a", 0.5), ("b", 0.0), ("fresh", 9.0)])
        );
        assert_eq!(next.calls, 3);
    }
}
