//! dstack's event log (the `event_log` of `GetQuote`): replayed to RTMR3 so that its app
//! events (`compose-hash`, `app-id`) can be trusted as far as the quote's RTMR3 is.
//!
//! Replay: RTMR3 starts as 48 zero bytes; for each entry with `imr: 3`, `RTMR3 =
//! SHA-384(RTMR3 || digest)`. A dstack runtime event (`event_type` 0x08000001) must carry
//! `digest = SHA-384(event_type as 4 little-endian bytes || ":" || event || ":" || payload)`.

use serde::Deserialize;
use sha2::{Digest, Sha384};

/// dstack's runtime event type.
pub const DSTACK_RUNTIME_EVENT: u32 = 0x0800_0001;

/// One event log entry (other fields are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    /// The measurement register extended (3 = RTMR3).
    pub imr: u32,
    /// TCG event type.
    pub event_type: u32,
    /// Hex SHA-384 digest extended into the register.
    pub digest: String,
    /// Event name (`compose-hash`, `app-id`, ...).
    #[serde(default)]
    pub event: String,
    /// Hex payload.
    #[serde(default)]
    pub event_payload: String,
}

/// What a replayed event log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// RTMR3 after every `imr: 3` event, hex.
    pub rtmr3: String,
    /// The payloads of `compose-hash` events, hex.
    pub compose_hashes: Vec<String>,
    /// The payloads of `app-id` events, hex.
    pub app_ids: Vec<String>,
}

/// Replays `text` (the JSON event log).
///
/// # Errors
/// A message naming the entry that is malformed or whose digest does not match its event.
pub fn replay(text: &str) -> Result<Replayed, String> {
    let events: Vec<Event> =
        serde_json::from_str(text).map_err(|e| format!("the event log is not JSON: {e}"))?;
    let mut rtmr3 = [0u8; 48];
    let mut out = Replayed {
        rtmr3: String::new(),
        compose_hashes: Vec::new(),
        app_ids: Vec::new(),
    };
    for (i, e) in events.iter().enumerate().filter(|(_, e)| e.imr == 3) {
        let digest = hex::decode(&e.digest).map_err(|_| format!("event {i}: digest is not hex"))?;
        let payload = hex::decode(&e.event_payload)
            .map_err(|_| format!("event {i} ({}): payload is not hex", e.event))?;
        if e.event_type == DSTACK_RUNTIME_EVENT {
            let mut h = Sha384::new();
            h.update(e.event_type.to_le_bytes());
            h.update(b":");
            h.update(e.event.as_bytes());
            h.update(b":");
            h.update(&payload);
            if h.finalize().as_slice() != digest.as_slice() {
                return Err(format!(
                    "event {i} ({}): its digest does not match its name and payload",
                    e.event
                ));
            }
            match e.event.as_str() {
                "compose-hash" => out.compose_hashes.push(hex::encode(&payload)),
                "app-id" => out.app_ids.push(hex::encode(&payload)),
                _ => {}
            }
        }
        let mut h = Sha384::new();
        h.update(rtmr3);
        h.update(&digest);
        rtmr3.copy_from_slice(&h.finalize());
    }
    out.rtmr3 = hex::encode(rtmr3);
    Ok(out)
}

/// A runtime event entry as dstack writes it (for tests and documentation).
pub fn runtime_event(name: &str, payload: &[u8]) -> serde_json::Value {
    let mut h = Sha384::new();
    h.update(DSTACK_RUNTIME_EVENT.to_le_bytes());
    h.update(b":");
    h.update(name.as_bytes());
    h.update(b":");
    h.update(payload);
    serde_json::json!({"imr": 3, "event_type": DSTACK_RUNTIME_EVENT,
        "digest": hex::encode(h.finalize()), "event": name,
        "event_payload": hex::encode(payload)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_replays_to_the_chained_rtmr3_and_yields_its_app_events() {
        let log = serde_json::json!([
            {"imr": 0, "event_type": 1, "digest": "00", "event": "", "event_payload": ""},
            runtime_event("app-id", &[0xaa; 20]),
            runtime_event("compose-hash", &[0xcc; 32]),
        ])
        .to_string();
        let r = replay(&log).expect("replays");
        assert_eq!(r.compose_hashes, [hex::encode([0xcc; 32])]);
        assert_eq!(r.app_ids, [hex::encode([0xaa; 20])]);
        let mut rtmr = [0u8; 48];
        for e in [
            runtime_event("app-id", &[0xaa; 20]),
            runtime_event("compose-hash", &[0xcc; 32]),
        ] {
            let d = hex::decode(e["digest"].as_str().expect("digest")).expect("hex");
            let next = Sha384::digest([&rtmr[..], &d[..]].concat());
            rtmr.copy_from_slice(&next);
        }
        assert_eq!(r.rtmr3, hex::encode(rtmr));
    }

    #[test]
    fn an_event_whose_payload_was_swapped_is_refused() {
        let mut e = runtime_event("compose-hash", &[0xcc; 32]);
        e["event_payload"] = serde_json::json!(hex::encode([0xdd; 32]));
        let err = replay(&serde_json::json!([e]).to_string()).expect_err("forged");
        assert!(err.contains("compose-hash"), "{err}");
    }
}
