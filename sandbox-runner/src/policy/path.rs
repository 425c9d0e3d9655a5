//! Path canonicalisation and glob matching for scoped-fetch capabilities.
//!
//! A raw path from JavaScript is validated textually first (anything a server or proxy could
//! read as a different path is refused), then joined under the base path with the `url`
//! crate, and the *canonical* result is split into segments and matched. The URL that is
//! matched is the URL that is sent.

use url::Url;

/// A path relative to the capability's base path, canonical and checked. `/` (or empty) is
/// no segments; a trailing slash is a final empty segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelPath {
    text: String,
}

impl RelPath {
    /// The path as `/a/b`.
    pub(crate) fn joined(&self) -> String {
        if self.text.is_empty() {
            "/".to_owned()
        } else {
            self.text.clone()
        }
    }

    /// The segments, borrowed.
    pub(crate) fn segments(&self) -> Vec<&str> {
        match self.text.strip_prefix('/') {
            None | Some("") => Vec::new(),
            Some(rest) => rest.split('/').collect(),
        }
    }

    fn parse(rel: &str) -> Result<Self, String> {
        check_rel(rel)?;
        Ok(Self {
            text: rel.to_owned(),
        })
    }
}

/// Checks a relative path's segments without allocating.
fn check_rel(rel: &str) -> Result<(), String> {
    {
        let rest = if rel.is_empty() {
            ""
        } else {
            rel.strip_prefix('/')
                .ok_or_else(|| "path must start with /".to_owned())?
        };
        if !rest.is_empty() {
            let mut segments = rest.split('/').peekable();
            while let Some(s) = segments.next() {
                if s.is_empty() && segments.peek().is_some() {
                    return Err("empty path segments (//) are not allowed".to_owned());
                }
                check_segment(s)?;
            }
        }
        Ok(())
    }
}

/// The outcome of resolving a raw path: the canonical URL and its path relative to the base.
#[derive(Debug)]
pub(crate) struct PathCheck {
    pub(crate) url: Url,
    pub(crate) relative: RelPath,
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

/// Whether a segment is `.` or `..`, with any dot written as `%2e`/`%2E`.
fn is_dot_segment(seg: &str) -> bool {
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
    if let Some(c) = raw.chars().find(|c| c.is_control()) {
        return Err(format!(
            "control character U+{:04X} is not allowed",
            u32::from(c)
        ));
    }
    for (c, what) in [
        (
            '?',
            "a ? is not allowed in the path; pass parameters in query",
        ),
        ('#', "fragments (#) are not allowed"),
        ('\\', "backslashes are not allowed"),
    ] {
        if raw.contains(c) {
            return Err(what.to_owned());
        }
    }
    check_rel(raw)
}

/// Extracts the canonical path of `url` relative to `base_path`, re-checking every segment.
pub(crate) fn check_canonical(url: &Url, base_path: &str) -> Result<RelPath, String> {
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
    let mut url = base.clone();
    url.set_path(&format!("{base_path}{raw}"));
    if url.origin() != base.origin()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err("resolves outside the capability's origin".to_owned());
    }
    let relative = check_canonical(&url, base_path)?;
    Ok(PathCheck { url, relative })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// `**`: any number of segments, including none.
    Many,
    /// `*`: exactly one (non-empty) segment.
    One,
    /// A segment with `*` inside (`*.json`): one segment matching the pattern.
    Partial(Vec<String>),
    /// A canonical literal segment.
    Literal(String),
}

/// A compiled path glob, matched against [`RelPath`] segments.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    source: String,
    segs: Vec<Seg>,
}

impl Glob {
    /// Compiles `glob` (relative to the base path), canonicalising its literal segments the
    /// way request paths are canonicalised.
    pub(crate) fn compile(base: &Url, base_path: &str, glob: &str) -> Result<Glob, String> {
        let checked = resolve(base, base_path, glob)?;
        let segs = checked
            .relative
            .segments()
            .into_iter()
            .map(|s| match s {
                "**" => Seg::Many,
                "*" => Seg::One,
                s if s.contains('*') => {
                    if s.contains("**") {
                        Seg::Many
                    } else {
                        Seg::Partial(s.split('*').map(str::to_owned).collect())
                    }
                }
                s => Seg::Literal(s.to_owned()),
            })
            .collect();
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
    pub(crate) fn matches(&self, path: &RelPath) -> bool {
        self.matches_segments(&path.segments())
    }

    /// Whether the segments of a canonical relative path match.
    pub(crate) fn matches_segments(&self, segments: &[&str]) -> bool {
        match_segs(&self.segs, segments)
    }
}

fn match_partial(parts: &[String], seg: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if seg.len() < first.len() + last.len() || !seg.starts_with(first.as_str()) {
        return false;
    }
    if !seg.ends_with(last.as_str()) {
        return false;
    }
    let mut rest = &seg[first.len()..seg.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid.as_str()) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn match_segs(glob: &[Seg], path: &[&str]) -> bool {
    match glob.split_first() {
        None => path.is_empty(),
        Some((Seg::Many, rest)) => (0..=path.len()).any(|skip| match_segs(rest, &path[skip..])),
        Some((seg, rest)) => match path.split_first() {
            None => false,
            Some((p, prest)) => {
                let ok = match seg {
                    Seg::One => !p.is_empty(),
                    Seg::Literal(l) => l == p,
                    Seg::Partial(parts) => !p.is_empty() && match_partial(parts, p),
                    Seg::Many => false,
                };
                ok && match_segs(rest, prest)
            }
        },
    }
}
