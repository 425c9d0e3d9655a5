//! Token-bucket rate limiting per capability, with the clock injected so it stays pure.

use std::collections::BTreeMap;
use std::time::Instant;

use oauth3_protocol::rate::TokenBucket;

use super::Policy;

#[derive(Debug, Clone)]
struct Bucket {
    limit: TokenBucket,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn tokens_at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.limit.refill(self.tokens, elapsed)
    }
}

/// One token bucket per capability that has a `rateLimit`: `requests` tokens, refilled at
/// `requests / perSeconds` per second. Capabilities without a limit are never limited.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    buckets: BTreeMap<String, Bucket>,
}

impl RateLimiter {
    /// Starts the buckets from a carried-over budget (remaining tokens per capability, as
    /// returned by [`RateLimiter::budget`] in an earlier Execution); capabilities missing
    /// from it start full. Values are clamped to `[0, requests]`.
    pub fn new(policy: &Policy, start_budget: &BTreeMap<String, f64>, now: Instant) -> Self {
        let buckets = policy
            .rate_limited()
            .map(|(name, (requests, per_seconds))| {
                let start = start_budget
                    .get(name)
                    .copied()
                    .filter(|t| t.is_finite())
                    .unwrap_or(requests)
                    .clamp(0.0, requests);
                (
                    name.to_owned(),
                    Bucket {
                        limit: TokenBucket::new(requests, per_seconds),
                        tokens: start,
                        at: now,
                    },
                )
            })
            .collect();
        Self { buckets }
    }

    /// Takes one token for `capability`; `Err` is the denial reason.
    pub fn try_acquire(&mut self, capability: &str, now: Instant) -> Result<(), String> {
        let Some(b) = self.buckets.get_mut(capability) else {
            return Ok(());
        };
        let tokens = b.tokens_at(now);
        b.at = now.max(b.at);
        if tokens >= 1.0 {
            b.tokens = tokens - 1.0;
            Ok(())
        } else {
            b.tokens = tokens;
            let wait = b.limit.wait_for_one(tokens);
            Err(format!(
                "rate limit of {} requests per {} s exceeded for {capability}; retry in {wait:.1} s",
                b.limit.requests, b.limit.per_seconds
            ))
        }
    }

    /// Lowers each bucket to `shared` (the Permit's budget as the operator counts it, with the
    /// calls of its Executions) where that is lower than what the bucket holds at `now`.
    pub fn cap(&mut self, shared: &BTreeMap<String, f64>, now: Instant) {
        for (name, b) in &mut self.buckets {
            let Some(limit) = shared.get(name).copied().filter(|t| t.is_finite()) else {
                continue;
            };
            let tokens = b.tokens_at(now);
            b.at = now.max(b.at);
            b.tokens = tokens.min(limit.max(0.0));
        }
    }

    /// Remaining tokens per rate-limited capability at `now`, to carry over.
    pub fn budget(&self, now: Instant) -> BTreeMap<String, f64> {
        self.buckets
            .iter()
            .map(|(k, b)| (k.clone(), b.tokens_at(now)))
            .collect()
    }
}
