//! The token bucket both sides of the run contract count with: the runner spends tokens on
//! calls, the operator refills what a run left for the time until the next launch.

use oauth3_crds::RateLimit;

/// A capability's `rateLimit` as a token bucket: `requests` tokens at most, refilled at
/// `requests / perSeconds` tokens per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    /// Capacity: the most tokens the bucket holds.
    pub requests: f64,
    /// The window the capacity refills over, in seconds (at least 1).
    pub per_seconds: f64,
}

impl TokenBucket {
    /// The bucket of a Permit's `rateLimit`.
    pub fn of(limit: &RateLimit) -> Self {
        Self::new(f64::from(limit.requests), f64::from(limit.per_seconds))
    }

    /// A bucket of `requests` tokens per `per_seconds` seconds (a window below 1 s counts as 1 s).
    pub fn new(requests: f64, per_seconds: f64) -> Self {
        Self {
            requests,
            per_seconds: per_seconds.max(1.0),
        }
    }

    /// Tokens refilled per second.
    pub fn per_second(&self) -> f64 {
        self.requests / self.per_seconds
    }

    /// `tokens` left earlier, after `elapsed_seconds` more of refill; never above capacity and
    /// never below zero.
    pub fn refill(&self, tokens: f64, elapsed_seconds: f64) -> f64 {
        (tokens.max(0.0) + elapsed_seconds.max(0.0) * self.per_second()).min(self.requests)
    }

    /// Seconds until a bucket holding `tokens` has one whole token.
    pub fn wait_for_one(&self, tokens: f64) -> f64 {
        ((1.0 - tokens) / self.per_second()).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_capacity() {
        let b = TokenBucket::new(30.0, 60.0);
        assert!((b.refill(0.0, 10.0) - 5.0).abs() < 1e-9);
        assert!((b.refill(29.0, 3600.0) - 30.0).abs() < 1e-9);
        assert!((b.refill(-4.0, 0.0)).abs() < 1e-9, "never below zero");
    }

    #[test]
    fn the_wait_for_one_token_follows_the_rate() {
        let b = TokenBucket::new(5.0, 60.0);
        assert!((b.wait_for_one(0.0) - 12.0).abs() < 1e-9);
        assert!(b.wait_for_one(2.0).abs() < 1e-9);
        assert!((TokenBucket::new(1.0, 0.0).per_seconds - 1.0).abs() < 1e-9);
    }
}
