//! Redaction of a body that arrives in chunks (a proxied response streamed to its client):
//! the same patterns as [`Redactor::redact`], applied across chunk boundaries.
//!
//! Invariant: no byte is emitted that could be the start of a form of a secret whose end has
//! not arrived yet. After each chunk, the tail that is a proper prefix of some form (at most
//! [`Redactor::longest_form`]` - 1` bytes, usually none) is held back and searched again with
//! the next chunk; everything before it is emitted at once, with complete forms replaced. So a
//! secret split across chunks is replaced whole, and a stream that holds no secret is passed
//! on without delay (a held tail is a few bytes that look like a secret's beginning).

use std::sync::Arc;

use super::{Redactor, Table};

/// Redacts one streamed body. Build one per response; feed it every chunk with
/// [`StreamRedactor::push`] and end with [`StreamRedactor::finish`].
pub struct StreamRedactor {
    redactor: Arc<Redactor>,
    carry: Vec<u8>,
}

impl std::fmt::Debug for StreamRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRedactor")
            .field("held", &self.carry.len())
            .finish()
    }
}

impl StreamRedactor {
    /// A stream redactor for the secrets `redactor` knows (including those added later).
    pub fn new(redactor: Arc<Redactor>) -> Self {
        Self {
            redactor,
            carry: Vec::new(),
        }
    }

    /// Bytes held back, waiting for the next chunk.
    pub fn held(&self) -> usize {
        self.carry.len()
    }

    /// Takes the next chunk and returns what may be emitted now, redacted.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let table = self.redactor.table();
        if table.matcher.is_none() && self.carry.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let hold = held_from(&table, &buf);
        let (out, end) = replace_before(&table, &buf, hold);
        self.carry = buf[end..].to_vec();
        out
    }

    /// Ends the stream: the held tail, redacted (it can no longer grow into a secret).
    pub fn finish(&mut self) -> Vec<u8> {
        let table = self.redactor.table();
        let buf = std::mem::take(&mut self.carry);
        replace_before(&table, &buf, buf.len()).0
    }
}

/// Where the held tail of `buf` starts: the earliest position in its last
/// `longest - 1` bytes from which the rest is a proper prefix of a form; `buf.len()` if none.
fn held_from(table: &Table, buf: &[u8]) -> usize {
    let keep = table.longest.saturating_sub(1);
    let start = buf.len().saturating_sub(keep);
    (start..buf.len())
        .find(|&i| is_proper_prefix_of_a_form(table, &buf[i..]))
        .unwrap_or(buf.len())
}

/// Whether `tail` is a proper prefix of one of the (sorted) forms.
fn is_proper_prefix_of_a_form(table: &Table, tail: &[u8]) -> bool {
    let at = table.patterns.partition_point(|p| p.as_bytes() < tail);
    table.patterns[at..]
        .iter()
        .take_while(|p| p.as_bytes().starts_with(tail))
        .any(|p| p.len() > tail.len())
}

/// `buf` up to `hold` (or past it, to the end of a form that starts before it) with every
/// form replaced by the marker, and where that output ends in `buf`.
fn replace_before(table: &Table, buf: &[u8], hold: usize) -> (Vec<u8>, usize) {
    let Some(matcher) = &table.matcher else {
        if table.patterns.is_empty() {
            return (buf[..hold].to_vec(), hold);
        }
        // Patterns that could not be compiled: withhold everything rather than leak.
        return (table.marker.as_bytes().to_vec(), buf.len());
    };
    let mut out = Vec::with_capacity(hold);
    let mut last = 0;
    for m in matcher.find_iter(buf) {
        if m.start() >= hold {
            break;
        }
        out.extend_from_slice(&buf[last..m.start()]);
        out.extend_from_slice(table.marker.as_bytes());
        last = m.end();
    }
    let end = hold.max(last);
    out.extend_from_slice(&buf[last..end]);
    (out, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "sk-live-5a0f9e7d";

    fn stream(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut s = StreamRedactor::new(Arc::new(Redactor::new([SECRET])));
        let mut emitted = Vec::new();
        for c in chunks {
            emitted.push(s.push(c));
        }
        let tail = s.finish();
        (emitted, tail)
    }

    #[test]
    fn a_secret_split_at_every_position_is_replaced_whole() {
        let text = format!("data: {{\"k\": \"{SECRET}\"}}\n\nafter {SECRET} end");
        let whole = Redactor::new([SECRET]).redact(&text);
        for cut in 0..=text.len() {
            let (a, b) = text.as_bytes().split_at(cut);
            let (emitted, tail) = stream(&[a, b]);
            let mut all: Vec<u8> = emitted.concat();
            all.extend(tail);
            let all = String::from_utf8(all).expect("utf-8");
            assert_eq!(all, whole, "cut at {cut}");
            for part in &emitted {
                let part = String::from_utf8_lossy(part);
                assert!(!part.contains("5a0f"), "cut at {cut}: {part}");
            }
        }
    }

    #[test]
    fn a_secret_arriving_byte_by_byte_never_shows_a_prefix() {
        let text = format!("x{SECRET}y");
        let bytes: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        let (emitted, tail) = stream(&bytes);
        let mut all = emitted.concat();
        all.extend(tail);
        assert_eq!(String::from_utf8(all).expect("utf-8"), "x[REDACTED]y");
    }

    #[test]
    fn text_that_cannot_begin_a_secret_is_emitted_at_once() {
        let event = b"data: {\"delta\": \"hello\"}\n\n";
        let (emitted, tail) = stream(&[event]);
        assert_eq!(emitted[0], event.to_vec(), "nothing held back");
        assert!(tail.is_empty());
    }

    #[test]
    fn encoded_forms_split_across_chunks_are_replaced_too() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
        let text = format!("token={b64};");
        let (a, b) = text.as_bytes().split_at(10);
        let (emitted, tail) = stream(&[a, b]);
        let mut all = emitted.concat();
        all.extend(tail);
        let all = String::from_utf8(all).expect("utf-8");
        assert!(!all.contains(&b64[..8]), "{all}");
        assert!(all.contains("[REDACTED]"), "{all}");
    }
}
