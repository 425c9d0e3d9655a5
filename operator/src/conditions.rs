//! The one helper that writes status conditions (`type`, `status`, `reason`, `message`,
//! `observedGeneration`, `lastTransitionTime`) for every oauth3 resource.
//!
//! Invariant enforced here: `lastTransitionTime` changes only when a condition's `status`
//! changes (or the condition is new); reason, message and observed generation are always
//! brought up to date.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The three values of a condition's `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The controller cannot tell.
    Unknown,
}

impl ConditionStatus {
    /// The API spelling: `True`, `False` or `Unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(holds: bool) -> Self {
        if holds { Self::True } else { Self::False }
    }
}

/// What a controller wants a condition to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCondition {
    /// Condition type, e.g. `Ready`.
    pub type_: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// Machine-readable reason in `PascalCase`.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
}

impl NewCondition {
    /// A condition of `type_` with the given status, reason and message.
    pub fn new(
        type_: impl Into<String>,
        status: impl Into<ConditionStatus>,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The condition of `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Sets `new` in `conditions`, replacing any condition of the same type (conditions of other
/// types are left alone, in order; a new type is appended). `lastTransitionTime` becomes `now`
/// only if the condition is new or its status changed; otherwise the old time is kept.
///
/// Returns whether anything observable changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    new: NewCondition,
    observed_generation: Option<i64>,
    now: Time,
) -> bool {
    let status = new.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            let before = existing.clone();
            if existing.status != status {
                existing.status = status.to_owned();
                existing.last_transition_time = now;
            }
            existing.reason = new.reason;
            existing.message = new.message;
            existing.observed_generation = observed_generation;
            *existing != before
        }
        None => {
            conditions.push(Condition {
                type_: new.type_,
                status: status.to_owned(),
                reason: new.reason,
                message: new.message,
                observed_generation,
                last_transition_time: now,
            });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).expect("valid second"))
    }

    fn ready(status: bool, reason: &str) -> NewCondition {
        NewCondition::new("Ready", status, reason, format!("because {reason}"))
    }

    #[test]
    fn a_new_condition_is_appended_with_now_as_transition_time() {
        let mut conds = Vec::new();
        assert!(set_condition(
            &mut conds,
            ready(true, "Fine"),
            Some(3),
            at(100)
        ));
        assert_eq!(conds.len(), 1);
        let c = &conds[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Ready", "True", "Fine")
        );
        assert_eq!(c.message, "because Fine");
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(c.last_transition_time, at(100));
    }

    #[test]
    fn transition_time_is_kept_when_status_is_unchanged_but_reason_and_generation_update() {
        let mut conds = Vec::new();
        set_condition(&mut conds, ready(false, "Waiting"), Some(1), at(100));
        assert!(set_condition(
            &mut conds,
            ready(false, "StillWaiting"),
            Some(2),
            at(200)
        ));
        assert_eq!(conds[0].last_transition_time, at(100));
        assert_eq!(conds[0].reason, "StillWaiting");
        assert_eq!(conds[0].message, "because StillWaiting");
        assert_eq!(conds[0].observed_generation, Some(2));
    }

    #[test]
    fn transition_time_moves_to_now_when_status_changes() {
        let mut conds = Vec::new();
        set_condition(&mut conds, ready(false, "Waiting"), Some(1), at(100));
        set_condition(&mut conds, ready(true, "Fine"), Some(1), at(300));
        assert_eq!(conds[0].status, "True");
        assert_eq!(conds[0].last_transition_time, at(300));
    }

    #[test]
    fn setting_an_identical_condition_changes_nothing() {
        let mut conds = Vec::new();
        set_condition(&mut conds, ready(true, "Fine"), Some(1), at(100));
        let before = conds.clone();
        assert!(!set_condition(
            &mut conds,
            ready(true, "Fine"),
            Some(1),
            at(999)
        ));
        assert_eq!(conds, before);
    }

    #[test]
    fn other_condition_types_are_left_alone_and_in_order() {
        let mut conds = Vec::new();
        set_condition(&mut conds, ready(true, "Fine"), None, at(1));
        set_condition(
            &mut conds,
            NewCondition::new("Approved", false, "Pending", "waiting"),
            None,
            at(2),
        );
        set_condition(&mut conds, ready(false, "Broken"), None, at(3));
        let types: Vec<_> = conds.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Approved"]);
        let approved = find_condition(&conds, "Approved").expect("approved present");
        assert_eq!(approved.last_transition_time, at(2));
        assert_eq!(approved.reason, "Pending");
        assert!(find_condition(&conds, "Missing").is_none());
    }
}
