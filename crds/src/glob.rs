//! The path-glob grammar of scoped-fetch capabilities (`capabilities[].paths`), in one place:
//! the CRD's CEL rule, the sandbox runner's compiler and the text shown to the owner
//! (`kubectl oauth3 get`, Telegram) all follow what is written here.
//!
//! A glob is `/` followed by segments separated by `/`. Each segment is exactly one of:
//!
//! - `**` (the whole segment): any number of path segments, including none. `/a/**` matches
//!   `/a`, `/a/b` and `/a/b/c`.
//! - `*` (the whole segment): exactly one non-empty path segment.
//! - a segment with single `*`s inside (`*.json`, `v*`, `a*b`): one path segment in which each
//!   `*` stands for any run of characters other than `/` (possibly empty).
//! - anything else: that segment literally (after the runner's canonicalisation).
//!
//! `**` anywhere but as a whole segment (`issues**`, `***`, `a**b`) is refused: it would read
//! as "this segment" to an owner while a matcher could take it as "any depth".

use std::fmt;

/// The CEL rule on `paths` that refuses `**` inside a segment (see the module docs).
pub const GLOB_DOUBLE_STAR_RULE: &str = "self.all(p, !p.matches('[^/][*][*]|[*][*][^/]'))";

/// The message that goes with [`GLOB_DOUBLE_STAR_RULE`].
pub const GLOB_DOUBLE_STAR_MESSAGE: &str = "** must be a whole path segment (e.g. /repos/o/r/issues/**, which matches /repos/o/r/issues and everything below it); within a segment use a single * (e.g. /files/*.json)";

/// One segment of a parsed glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobSegment {
    /// `**`: any number of segments, including none.
    AnyDepth,
    /// `*`: exactly one non-empty segment.
    One,
    /// A segment with `*` inside: the literal pieces between the `*`s (at least two pieces).
    Pattern(Vec<String>),
    /// A literal segment.
    Literal(String),
}

/// Why a path glob is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// The glob does not start with `/`.
    #[error("must start with /")]
    NotAbsolute,
    /// `**` appears inside a segment.
    #[error(
        "segment {segment:?}: ** must be a whole path segment; within a segment use a single *"
    )]
    DoubleStarInSegment {
        /// The offending segment.
        segment: String,
    },
}

/// A glob parsed by the grammar of the module docs. Literal segments are kept as written;
/// the runner canonicalises them against the capability's base URL when it compiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    segments: Vec<GlobSegment>,
}

/// Parses one segment (no `/` inside).
pub fn parse_segment(segment: &str) -> Result<GlobSegment, GlobError> {
    Ok(match segment {
        "**" => GlobSegment::AnyDepth,
        "*" => GlobSegment::One,
        s if s.contains("**") => {
            return Err(GlobError::DoubleStarInSegment {
                segment: s.to_owned(),
            });
        }
        s if s.contains('*') => GlobSegment::Pattern(s.split('*').map(str::to_owned).collect()),
        s => GlobSegment::Literal(s.to_owned()),
    })
}

impl PathGlob {
    /// Parses `glob` (as written in a Permit).
    pub fn parse(glob: &str) -> Result<PathGlob, GlobError> {
        let rest = glob.strip_prefix('/').ok_or(GlobError::NotAbsolute)?;
        let segments = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/')
                .map(parse_segment)
                .collect::<Result<_, _>>()?
        };
        Ok(PathGlob { segments })
    }

    /// The parsed segments.
    pub fn segments(&self) -> &[GlobSegment] {
        &self.segments
    }

    /// Whether a path (`/`-separated, leading `/`) matches, by the grammar as documented. This
    /// is the reading shown to the owner; the runner matches canonical paths with its own
    /// compiled form, which tests check against this one.
    pub fn matches(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let segs: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        match_segments(&self.segments, &segs)
    }

    /// The glob in plain words, for the owner: `/repos/o/r/issues/**` reads
    /// "/repos/o/r/issues and every path below it".
    pub fn explain(&self) -> String {
        Explained(self).to_string()
    }
}

/// Whether `seg` matches a pattern segment's pieces (`*` = any run of non-`/` characters).
pub fn pattern_matches(pieces: &[String], seg: &str) -> bool {
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return false;
    };
    if pieces.len() < 2
        || seg.contains('/')
        || seg.len() < first.len() + last.len()
        || !seg.starts_with(first.as_str())
        || !seg.ends_with(last.as_str())
    {
        return false;
    }
    let mut rest = &seg[first.len()..seg.len() - last.len()];
    for mid in &pieces[1..pieces.len() - 1] {
        match rest.find(mid.as_str()) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn match_segments(glob: &[GlobSegment], path: &[&str]) -> bool {
    match glob.split_first() {
        None => path.is_empty(),
        Some((GlobSegment::AnyDepth, rest)) => {
            (0..=path.len()).any(|i| match_segments(rest, &path[i..]))
        }
        Some((GlobSegment::One, rest)) => {
            matches!(path.first(), Some(s) if !s.is_empty()) && match_segments(rest, &path[1..])
        }
        Some((GlobSegment::Pattern(pieces), rest)) => {
            matches!(path.first(), Some(s) if pattern_matches(pieces, s))
                && match_segments(rest, &path[1..])
        }
        Some((GlobSegment::Literal(l), rest)) => {
            path.first() == Some(&l.as_str()) && match_segments(rest, &path[1..])
        }
    }
}

struct Explained<'a>(&'a PathGlob);

impl fmt::Display for Explained<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let segs = &self.0.segments;
        // A trailing `**` reads as "this path and everything below it".
        let (body, below) = match segs.split_last() {
            Some((GlobSegment::AnyDepth, body)) => (body, true),
            _ => (segs.as_slice(), false),
        };
        if body.is_empty() {
            f.write_str("/")?;
        }
        for seg in body {
            f.write_str("/")?;
            match seg {
                GlobSegment::AnyDepth => f.write_str("<any number of segments>")?,
                GlobSegment::One => f.write_str("<one segment>")?,
                GlobSegment::Pattern(pieces) => {
                    f.write_str("<one segment: ")?;
                    let mut words = Vec::new();
                    for (i, piece) in pieces.iter().enumerate() {
                        if !piece.is_empty() {
                            words.push(format!("{piece:?}"));
                        }
                        if i + 1 < pieces.len() {
                            words.push("anything".to_owned());
                        }
                    }
                    f.write_str(&words.join(" + "))?;
                    f.write_str(">")?;
                }
                GlobSegment::Literal(l) => f.write_str(l)?,
            }
        }
        if below {
            f.write_str(" and every path below it")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_star_only_as_a_whole_segment() {
        for bad in [
            "/repos/o/r/issues**",
            "/repos/***",
            "/a/**b",
            "/a/b**/c",
            "/**x",
            "/x**",
            "/a/****",
        ] {
            assert!(
                matches!(
                    PathGlob::parse(bad),
                    Err(GlobError::DoubleStarInSegment { .. })
                ),
                "{bad} was accepted"
            );
        }
        for good in [
            "/",
            "/**",
            "/a/**",
            "/a/**/b",
            "/a/*",
            "/a/*.json",
            "/a/v*/b*c*d",
        ] {
            assert!(PathGlob::parse(good).is_ok(), "{good} was refused");
        }
        assert_eq!(PathGlob::parse("a/b"), Err(GlobError::NotAbsolute));
    }

    #[test]
    fn matching_follows_the_documented_grammar() {
        let g = PathGlob::parse("/repos/o/r/issues/**").expect("parses");
        assert!(g.matches("/repos/o/r/issues"));
        assert!(g.matches("/repos/o/r/issues/1/comments"));
        assert!(!g.matches("/repos/o/r"));
        assert!(!g.matches("/repos/o/r/issuesX"));
        let g = PathGlob::parse("/files/*.json").expect("parses");
        assert!(g.matches("/files/a.json"));
        assert!(g.matches("/files/.json"));
        assert!(!g.matches("/files/a/b.json"));
        assert!(!g.matches("/files/a.jsonx"));
        let g = PathGlob::parse("/a/*").expect("parses");
        assert!(g.matches("/a/b"));
        assert!(!g.matches("/a/"));
        assert!(!g.matches("/a"));
    }

    #[test]
    fn explanations_say_what_matches() {
        let say = |g: &str| PathGlob::parse(g).expect("parses").explain();
        assert_eq!(
            say("/repos/o/r/issues/**"),
            "/repos/o/r/issues and every path below it"
        );
        assert_eq!(say("/**"), "/ and every path below it");
        assert_eq!(say("/a/*/b"), "/a/<one segment>/b");
        assert_eq!(
            say("/files/*.json"),
            "/files/<one segment: anything + \".json\">"
        );
        assert_eq!(say("/v*/x"), "/<one segment: \"v\" + anything>/x");
        assert_eq!(say("/a/**/b"), "/a/<any number of segments>/b");
    }
}
