//! Path canonicalisation and glob matching for scoped-fetch capabilities.
//!
//! A raw path from JavaScript is validated textually first (anything a server or proxy could
//! read as a different path is refused), then joined under the base path with the `url`
//! crate, and the *canonical* result is split into segments and matched. The URL that is
//! matched is the URL that is sent.

use oauth3_crds::glob::{GlobSegment, PathGlob, parse_segment, pattern_matches};
use url::Url;

/// A path relative to the capability's base path, canonical and checked, borrowed from the
/// URL it was taken from. `/` (or empty) is no segments; a trailing slash is a final empty
/// segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelPath<'a> {
    text: &'a str,
}

impl<'a> RelPath<'a> {
    /// The path as `/a/b`.
    pub(crate) fn joined(&self) -> &'a str {
        if self.text.is_empty() { "/" } else { self.text }
    }

    /// The segments, borrowed, without allocating.
    pub(crate) fn segments(&self) -> Segments<'a> {
        Segments {
            rest: match self.text.strip_prefix('/') {
                None | Some("") => None,
                Some(rest) => Some(rest),
            },
        }
    }

    fn parse(rel: &'a str) -> Result<Self, String> {
        check_rel(rel)?;
        Ok(Self { text: rel })
    }
}

/// The segments of a [`RelPath`], in order (what `rest.split('/')` yields, as a cheap,
/// cloneable iterator so glob matching can backtrack without collecting).
#[derive(Debug, Clone)]
pub(crate) struct Segments<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match find_slash(rest, 0) {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Checks a relative path's segments without allocating: it starts with `/` (or is empty),
/// has no empty segment except a final one (a trailing slash), and every segment passes
/// [`check_segment`].
fn check_rel(rel: &str) -> Result<(), String> {
    if rel.is_empty() {
        return Ok(());
    }
    let rest = rel
        .strip_prefix('/')
        .ok_or_else(|| "path must start with /".to_owned())?;
    if rest.is_empty() {
        return Ok(());
    }
    let mut start = 0;
    loop {
        match find_slash(rest, start) {
            Some(end) => {
                if end == start {
                    return Err("empty path segments (//) are not allowed".to_owned());
                }
                check_segment(&rest[start..end])?;
                start = end + 1;
            }
            None => return check_segment(&rest[start..]),
        }
    }
}

/// The byte index of the first `/` in `text` at or after `from` (a plain byte scan: the
/// segments are short, so a generic substring search costs more than it saves).
fn find_slash(text: &str, from: usize) -> Option<usize> {
    text.as_bytes()
        .get(from..)?
        .iter()
        .position(|&b| b == b'/')
        .map(|i| from + i)
}

/// The outcome of resolving a raw path: the canonical URL, whose path past `base_len` bytes
/// is the checked path relative to the base.
#[derive(Debug)]
pub(crate) struct PathCheck {
    pub(crate) url: Url,
    base_len: usize,
}

impl PathCheck {
    /// The canonical path relative to the base path (checked by [`resolve`]).
    pub(crate) fn relative(&self) -> RelPath<'_> {
        RelPath {
            text: &self.url.path()[self.base_len..],
        }
    }
}

/// Rejects dot segments (raw or `%2e`), encoded slashes and backslashes, encoded control
/// characters and malformed escapes in one segment.
fn check_segment(seg: &str) -> Result<(), String> {
    let bytes = seg.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "malformed percent escape".to_owned())?;
            match hex {
                b'/' => return Err("encoded slashes (%2f) are not allowed".to_owned()),
                b'\\' => return Err("encoded backslashes (%5c) are not allowed".to_owned()),
                0..=0x1f | 0x7f => {
                    return Err("encoded control characters are not allowed".to_owned());
                }
                _ => {}
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    if is_dot_segment(seg) {
        return Err(". and .. segments (raw or %2e) are not allowed".to_owned());
    }
    Ok(())
}

/// Whether `haystack` contains `needle` (ASCII), ignoring ASCII case, without allocating.
pub(crate) fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Whether a segment is `.` or `..`, with any dot written as `%2e`/`%2E`.
pub(crate) fn is_dot_segment(seg: &str) -> bool {
    // The longest dot segment is `%2e%2e`.
    if seg.is_empty() || seg.len() > 6 {
        return false;
    }
    let mut rest = seg;
    let mut dots = 0;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Textual checks on a raw path before the URL parser sees it.
fn validate_raw(raw: &str) -> Result<(), String> {
    if !raw.starts_with('/') {
        return Err("path must start with / (relative to the capability's baseUrl)".to_owned());
    }
    if raw.starts_with("//") {
        return Err("scheme-relative targets (//host) are not allowed".to_owned());
    }
    // One pass over the bytes finds every candidate; the precise (and ordered) reasons are
    // only worked out when something was found. Unicode control characters are C0, DEL and
    // C1; C1 characters are encoded as 0xC2 0x80..=0x9F, so 0xC2 marks a candidate.
    let (mut control, mut question, mut hash, mut backslash) = (false, false, false, false);
    for b in raw.bytes() {
        match b {
            0..=0x1f | 0x7f | 0xc2 => control = true,
            b'?' => question = true,
            b'#' => hash = true,
            b'\\' => backslash = true,
            _ => {}
        }
    }
    if control && let Some(c) = raw.chars().find(|c| c.is_control()) {
        return Err(format!(
            "control character U+{:04X} is not allowed",
            u32::from(c)
        ));
    }
    if question {
        return Err("a ? is not allowed in the path; pass parameters in query".to_owned());
    }
    if hash {
        return Err("fragments (#) are not allowed".to_owned());
    }
    if backslash {
        return Err("backslashes are not allowed".to_owned());
    }
    check_rel(raw)
}

/// Extracts the canonical path of `url` relative to `base_path`, re-checking every segment.
pub(crate) fn check_canonical<'u>(url: &'u Url, base_path: &str) -> Result<RelPath<'u>, String> {
    let path = url.path();
    let rel = path
        .strip_prefix(base_path)
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .ok_or_else(|| format!("resolves outside the base path {base_path}/"))?;
    RelPath::parse(rel)
}

/// Joins `raw` under the base, canonicalises it and checks that it stays at the base's
/// origin and under its path.
pub(crate) fn resolve(base: &Url, base_path: &str, raw: &str) -> Result<PathCheck, String> {
    validate_raw(raw)?;
    let mut full = String::with_capacity(base_path.len() + raw.len());
    full.push_str(base_path);
    full.push_str(raw);
    let mut url = base.clone();
    url.set_path(&full);
    // The same comparison as `url.origin() != base.origin()` for http(s) (the only schemes a
    // capability may have), without building two owned origins.
    if url.scheme() != base.scheme()
        || url.host() != base.host()
        || url.port_or_known_default() != base.port_or_known_default()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err("resolves outside the capability's origin".to_owned());
    }
    check_canonical(&url, base_path)?;
    Ok(PathCheck {
        url,
        base_len: base_path.len(),
    })
}

/// A compiled path glob, matched against [`RelPath`] segments.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    source: String,
    segs: Vec<GlobSegment>,
}

impl Glob {
    /// Compiles `glob` (relative to the base path), canonicalising its literal segments the
    /// way request paths are canonicalised.
    ///
    /// The grammar is [`oauth3_crds::glob`]'s, checked on the glob as written and again on every
    /// canonical segment: `**` inside a segment fails closed (it is refused, never widened).
    pub(crate) fn compile(base: &Url, base_path: &str, glob: &str) -> Result<Glob, String> {
        PathGlob::parse(glob).map_err(|e| e.to_string())?;
        let checked = resolve(base, base_path, glob)?;
        let segs = checked
            .relative()
            .segments()
            .map(|s| parse_segment(s).map_err(|e| e.to_string()))
            .collect::<Result<_, String>>()?;
        Ok(Glob {
            source: glob.to_owned(),
            segs,
        })
    }

    /// The glob as written in the Permit.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Whether the canonical relative path matches.
    pub(crate) fn matches(&self, path: &RelPath<'_>) -> bool {
        match_segs(&self.segs, path.segments())
    }
}

/// Matches glob segments against path segments; `**` backtracks by cloning the iterator
/// (it tries every suffix of the remaining path, including the empty one).
fn match_segs<'a>(glob: &[GlobSegment], mut path: impl Iterator<Item = &'a str> + Clone) -> bool {
    match glob.split_first() {
        None => path.next().is_none(),
        Some((GlobSegment::AnyDepth, rest)) => loop {
            if match_segs(rest, path.clone()) {
                return true;
            }
            if path.next().is_none() {
                return false;
            }
        },
        Some((seg, rest)) => match path.next() {
            None => false,
            Some(p) => {
                let ok = match seg {
                    GlobSegment::One => !p.is_empty(),
                    GlobSegment::Literal(l) => l == p,
                    GlobSegment::Pattern(parts) => !p.is_empty() && pattern_matches(parts, p),
                    GlobSegment::AnyDepth => false,
                };
                ok && match_segs(rest, path)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{RelPath, contains_ignore_ascii_case, is_dot_segment};

    /// The segments as the straightforward definition gives them.
    fn split_segments(text: &str) -> Vec<&str> {
        match text.strip_prefix('/') {
            None | Some("") => Vec::new(),
            Some(rest) => rest.split('/').collect(),
        }
    }

    #[test]
    fn segments_of_root_are_none_and_a_trailing_slash_is_a_final_empty_segment() {
        fn seg(text: &str) -> Vec<&str> {
            RelPath { text }.segments().collect()
        }
        assert!(seg("").is_empty());
        assert!(seg("/").is_empty());
        assert_eq!(seg("/a"), ["a"]);
        assert_eq!(seg("/a/"), ["a", ""]);
        assert_eq!(seg("/a/b/c"), ["a", "b", "c"]);
    }

    #[test]
    fn encoded_separators_are_found_in_any_case_and_dot_segments_in_any_spelling() {
        assert!(contains_ignore_ascii_case("a%2Fb", "%2f"));
        assert!(contains_ignore_ascii_case("%5c", "%5c"));
        assert!(!contains_ignore_ascii_case("a%2eb", "%2f"));
        assert!(!contains_ignore_ascii_case("%2", "%2f"));
        for dot in [".", "..", "%2e", "%2E.", "%2e%2E"] {
            assert!(is_dot_segment(dot), "{dot} is a dot segment");
        }
        for not_dot in ["", "...", ".a", "%2e%2e%2e", "%2f"] {
            assert!(!is_dot_segment(not_dot), "{not_dot} is not a dot segment");
        }
    }

    proptest! {
        #[test]
        fn segments_iterate_exactly_what_split_collects(text in "(/[a-z%.]{0,3}){0,5}/?") {
            let iterated: Vec<&str> = RelPath { text: &text }.segments().collect();
            prop_assert_eq!(iterated, split_segments(&text));
        }
    }
}
