//! What the bot has sent and how far it has read (pure data, serialised into the
//! `oauth3-telegram-state` ConfigMap in the operator's namespace, which agents cannot write).
//!
//! An open [`Request`] is a message with live buttons. A tap counts only on the message of an
//! open request, so a second tap, or a tap on an older message for the same subject, finds
//! nothing to act on. After a restart the record says what was already sent: nothing is sent
//! twice and taps on earlier messages still count.

use serde::{Deserialize, Serialize};

use super::callback_data::{Tap, digest_matches, uid_tag};

/// Closed requests are kept this long (seconds) after their message was edited, then dropped.
const CLOSED_RETENTION_SECS: i64 = 86_400;
/// At most this many closed requests are kept.
const MAX_CLOSED: usize = 200;
/// At most this many requests are open at once (each keeps its text, up to 4096 characters,
/// and the record must stay well within a ConfigMap's 1 MiB).
pub const MAX_OPEN: usize = 150;

/// What a request asks the owner to decide.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RequestKind {
    /// Approve or deny a Permit's spec.
    Permit,
    /// Trust or refuse a code digest under a perCode Permit.
    Code,
}

/// A message sent to the owner.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Permit or code.
    pub kind: RequestKind,
    /// Namespace of the Permit.
    pub namespace: String,
    /// Name of the Permit.
    pub name: String,
    /// uid of the Permit.
    pub uid: String,
    /// Spec digest (Permit) or code digest (code) the message shows.
    pub digest: String,
    /// Chat the message is in.
    pub chat_id: i64,
    /// The message.
    pub message_id: i32,
    /// When it was sent (Unix seconds).
    pub sent_at: i64,
    /// The text as sent.
    pub text: String,
    /// Set once decided, timed out or outdated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<Closed>,
}

/// How a request ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Closed {
    /// When (Unix seconds).
    pub at: i64,
    /// The line appended to the message (decision, who, when; or why it is outdated).
    pub note: String,
    /// Whether the message has been edited to show it.
    pub edited: bool,
}

/// Everything the bot remembers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The next `getUpdates` offset (updates below it were handled).
    #[serde(default)]
    pub offset: i32,
    /// Sent messages, oldest first.
    #[serde(default)]
    pub requests: Vec<Request>,
}

impl State {
    /// The open request for this subject, if any.
    pub fn open(&self, kind: RequestKind, uid: &str, digest: &str) -> Option<&Request> {
        self.requests
            .iter()
            .find(|r| r.closed.is_none() && r.kind == kind && r.uid == uid && r.digest == digest)
    }

    /// Index of the open request whose message was tapped and whose subject the button names.
    pub fn tapped(&self, chat_id: i64, message_id: i32, tap: &Tap) -> Option<usize> {
        self.requests.iter().position(|r| {
            r.closed.is_none()
                && r.chat_id == chat_id
                && r.message_id == message_id
                && (r.kind == RequestKind::Code) == tap.action.is_code()
                && uid_tag(&r.uid) == tap.uid_tag
                && digest_matches(&r.digest, &tap.digest_prefix)
        })
    }

    /// Closes request `i` with `note` at `now` (the message still has to be edited).
    pub fn close(&mut self, i: usize, note: String, now: i64) {
        if let Some(r) = self.requests.get_mut(i) {
            r.closed = Some(Closed {
                at: now,
                note,
                edited: false,
            });
        }
    }

    /// How many requests are open.
    pub fn open_count(&self) -> usize {
        self.requests.iter().filter(|r| r.closed.is_none()).count()
    }

    /// Drops closed requests whose message was edited more than a day ago, and the oldest
    /// closed ones beyond a cap; forgets the text of edited ones. Open requests are always
    /// kept.
    pub fn prune(&mut self, now: i64) {
        for r in &mut self.requests {
            if r.closed.as_ref().is_some_and(|c| c.edited) {
                r.text.clear();
            }
        }
        self.requests.retain(|r| {
            r.closed
                .as_ref()
                .is_none_or(|c| !c.edited || now - c.at < CLOSED_RETENTION_SECS)
        });
        let closed = self.requests.iter().filter(|r| r.closed.is_some()).count();
        let mut excess = closed.saturating_sub(MAX_CLOSED);
        self.requests.retain(|r| {
            if excess > 0 && r.closed.as_ref().is_some_and(|c| c.edited) {
                excess -= 1;
                return false;
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telegram::callback_data::{Action, decode, encode};

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn request(message_id: i32, digest: &str) -> Request {
        Request {
            kind: RequestKind::Permit,
            namespace: "ns".into(),
            name: "p".into(),
            uid: "uid-1".into(),
            digest: digest.into(),
            chat_id: 5,
            message_id,
            sent_at: 100,
            text: "t".into(),
            closed: None,
        }
    }

    fn tap(action: Action, digest: &str) -> Tap {
        decode(&encode(action, "uid-1", digest)).expect("tap")
    }

    #[test]
    fn a_tap_counts_only_on_the_open_message_it_was_made_for() {
        let mut s = State {
            offset: 0,
            requests: vec![request(10, D1)],
        };
        assert_eq!(s.tapped(5, 10, &tap(Action::ApprovePermit, D1)), Some(0));
        assert_eq!(
            s.tapped(6, 10, &tap(Action::ApprovePermit, D1)),
            None,
            "other chat"
        );
        assert_eq!(
            s.tapped(5, 11, &tap(Action::ApprovePermit, D1)),
            None,
            "other message"
        );
        assert_eq!(
            s.tapped(5, 10, &tap(Action::ApprovePermit, D2)),
            None,
            "other digest"
        );
        assert_eq!(
            s.tapped(5, 10, &tap(Action::TrustOnce, D1)),
            None,
            "code button"
        );
        s.close(0, "Approved".into(), 200);
        assert_eq!(
            s.tapped(5, 10, &tap(Action::ApprovePermit, D1)),
            None,
            "a second tap after the decision finds nothing"
        );
        assert!(s.open(RequestKind::Permit, "uid-1", D1).is_none());
    }

    #[test]
    fn pruning_keeps_open_and_unedited_requests() {
        let mut s = State {
            offset: 3,
            requests: vec![request(1, D1), request(2, D2), request(3, D1)],
        };
        s.close(0, "done".into(), 0);
        s.requests[0].closed.as_mut().expect("closed").edited = true;
        s.close(1, "done".into(), 0);
        s.prune(CLOSED_RETENTION_SECS + 1);
        let ids: Vec<i32> = s.requests.iter().map(|r| r.message_id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(s.open_count(), 1);
        s.requests[0].closed.as_mut().expect("closed").edited = true;
        s.prune(0);
        assert!(
            s.requests[0].text.is_empty(),
            "an edited message's text is not kept"
        );
        assert_eq!(s.requests[1].text, "t");
    }

    #[test]
    fn the_state_survives_a_round_trip_through_json() {
        let s = State {
            offset: 7,
            requests: vec![request(1, D1)],
        };
        let text = serde_json::to_string(&s).expect("json");
        assert_eq!(serde_json::from_str::<State>(&text).expect("parse"), s);
    }
}
