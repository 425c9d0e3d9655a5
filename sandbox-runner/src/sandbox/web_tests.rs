//! Tests of the web-standard helpers against reference implementations.

use std::sync::Arc;
use std::time::Duration;

use oauth3_crds::CallRecord;
use serde_json::{Value, json};

use super::{Limits, Outcome, run};
use crate::host::{BoxFuture, CallOutcome, CapabilityCall, CapabilityHost};
use crate::redact::Redactor;

/// A host with no capabilities.
struct NoHost;

impl CapabilityHost for NoHost {
    fn capabilities(&self) -> Vec<String> {
        Vec::new()
    }

    fn call(&self, _call: CapabilityCall) -> BoxFuture<'_, CallOutcome> {
        Box::pin(async { CallOutcome::Error("no capabilities".to_owned()) })
    }

    fn calls(&self) -> Vec<CallRecord> {
        Vec::new()
    }
}

fn limits() -> Limits {
    Limits {
        wall_time: Duration::from_secs(5),
        memory_bytes: 64 * 1024 * 1024,
        stack_bytes: 256 * 1024,
        max_output_bytes: 1 << 20,
        max_calls: 10,
    }
}

/// A small deterministic generator (xorshift64), so the differential tests need no seed file.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::try_from(self.next() % from.len() as u64).unwrap_or(0)]
    }
}

/// `TextDecoder` (the engine's fast path for valid UTF-8 and the exact decoder for the rest)
/// decodes like the WHATWG UTF-8 decoder, which Rust's `from_utf8_lossy` also implements
/// (one U+FFFD per maximal invalid subpart); `fatal` throws exactly on invalid input.
#[tokio::test]
async fn text_decoder_matches_a_reference_utf8_decoder() {
    let interesting: &[u8] = &[
        0x00, 0x25, 0x41, 0x7f, 0x80, 0x8f, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1,
        0xed, 0xee, 0xef, 0xbb, 0xf0, 0xf1, 0xf4, 0xf5, 0xff,
    ];
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut cases: Vec<Vec<u8>> = (0..3000)
        .map(|_| {
            let len = rng.next() % 12;
            (0..len).map(|_| rng.pick(interesting)).collect()
        })
        .collect();
    cases.push("héllo €𝄞 \u{feff}x".as_bytes().to_vec());
    cases.push(vec![0xef, 0xbb, 0xbf, 0xef, 0xbb, 0xbf, 0x41]);
    cases.push([b"a".repeat(9000), vec![0xff], "é".repeat(5000).into_bytes()].concat());
    let out = run(
        r#"
        const d = new TextDecoder();
        const f = new TextDecoder('utf-8', {fatal: true});
        return args.map((a) => {
            const bytes = new Uint8Array(a);
            let fatal;
            try { f.decode(bytes); fatal = false; } catch (e) { fatal = e instanceof TypeError; }
            return [d.decode(bytes), fatal];
        });
        "#,
        &json!(cases),
        Arc::new(NoHost),
        &limits(),
        Arc::new(Redactor::none()),
    )
    .await
    .expect("starts");
    let Outcome::Returned(Value::Array(got)) = out.outcome else {
        panic!("{:?}", out.outcome)
    };
    assert_eq!(got.len(), cases.len());
    for (bytes, got) in cases.iter().zip(got) {
        let body = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(bytes);
        let want = json!([
            String::from_utf8_lossy(body),
            std::str::from_utf8(body).is_err()
        ]);
        assert_eq!(got, want, "bytes {bytes:02x?}");
    }
}

/// `TextEncoder` writes UTF-8 with each lone surrogate as U+FFFD (a USVString).
#[tokio::test]
async fn text_encoder_matches_a_reference_utf8_encoder() {
    let units: &[u16] = &[
        0x41, 0x7f, 0x80, 0x7ff, 0x800, 0xd7ff, 0xd800, 0xdbff, 0xdc00, 0xdfff, 0xe000, 0xffff,
    ];
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    let cases: Vec<Vec<u16>> = (0..2000)
        .map(|_| {
            let len = rng.next() % 8;
            (0..len).map(|_| rng.pick(units)).collect()
        })
        .collect();
    let out = run(
        "const e = new TextEncoder(); return args.map((u) => Array.from(e.encode(String.fromCharCode(...u))));",
        &json!(cases),
        Arc::new(NoHost),
        &limits(),
        Arc::new(Redactor::none()),
    )
    .await
    .expect("starts");
    let Outcome::Returned(Value::Array(got)) = out.outcome else {
        panic!("{:?}", out.outcome)
    };
    for (units, got) in cases.iter().zip(got) {
        let text: String = char::decode_utf16(units.iter().copied())
            .map(|c| c.unwrap_or('\u{fffd}'))
            .collect();
        assert_eq!(got, json!(text.as_bytes()), "units {units:04x?}");
    }
}
