//! Skill code (the SDK/CLI dialect's `skill_code`) made into sandbox JavaScript (pure).
//!
//! A skill is TypeScript with `// @name value` metadata comments (`@skill`, `@description`,
//! `@secrets NAME`, `@network host`, `@timeout seconds`; the repeatable ones may appear many
//! times). The types are removed by a real TypeScript parser and transformer (oxc), never by
//! patterns on the text. Top-level `await` and `return` work (the sandbox runs the code as the
//! body of an async function). The result is checked before anything is created:
//! - a reference to the global `fetch` is refused with an error naming `fetch`: the sandbox
//!   calls APIs only through the Permit's capabilities (a fetch capability comes later);
//! - `import` / `export`, `import()` and `require()` are refused: there is no module loader in
//!   the sandbox.
//!
//! `Deno.env.get(NAME)` of an arg returns the arg as a string (how skills read their
//! arguments); of anything else, `undefined`: secrets never reach the code.

use oauth3_typescript::{Language, PrepareError, prepare};

/// Why a skill cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkillError {
    /// The TypeScript does not parse; the first error, with its position.
    #[error("does not parse as TypeScript: {0}")]
    Syntax(String),
    /// The code uses the global `fetch`.
    #[error(
        "calls fetch, which the oauth3 sandbox does not provide: call the Permit's capability \
         functions instead (e.g. github('GET', '/repos/o/r/issues'))"
    )]
    Fetch,
    /// The code imports or exports modules.
    #[error("uses import/export, but the sandbox has no module loader: inline what it needs")]
    Module,
    /// The transformer failed.
    #[error("could not remove the TypeScript types: {0}")]
    Transform(String),
}

/// The metadata comments of a skill.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkillMeta {
    /// `@skill`.
    pub skill: Option<String>,
    /// `@description`.
    pub description: Option<String>,
    /// Every `@secrets` name.
    pub secrets: Vec<String>,
    /// Every `@network` host.
    pub networks: Vec<String>,
    /// `@timeout` in seconds.
    pub timeout: Option<i32>,
}

/// Reads the `// @name value` comment lines of `code`.
pub fn metadata(code: &str) -> SkillMeta {
    let mut meta = SkillMeta::default();
    for line in code.lines() {
        let Some(rest) = line.trim_start().strip_prefix("//") else {
            continue;
        };
        let Some(tag) = rest.trim_start().strip_prefix('@') else {
            continue;
        };
        let (name, value) = tag.split_once(char::is_whitespace).unwrap_or((tag, ""));
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match name {
            "skill" => meta.skill = Some(value.to_owned()),
            "description" => meta.description = Some(value.to_owned()),
            "secrets" => meta.secrets.extend(
                value
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            "network" => meta.networks.extend(
                value
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            "timeout" => meta.timeout = value.parse().ok(),
            _ => {}
        }
    }
    meta
}

/// The TypeScript `code` as JavaScript for the sandbox, after the checks above.
///
/// # Errors
/// [`SkillError`] saying what is wrong.
pub fn to_javascript(code: &str) -> Result<String, SkillError> {
    let prepared = prepare(code, Language::TypeScript).map_err(|e| match e {
        PrepareError::Syntax { message, .. } => SkillError::Syntax(message),
        PrepareError::Module(_) => SkillError::Module,
        PrepareError::Transform(m) => SkillError::Transform(m),
    })?;
    if prepared.globals.contains("fetch") {
        return Err(SkillError::Fetch);
    }
    Ok(prepared.code)
}

/// What skill code gets in front of it: `Deno.env.get` over `args` only (no authority).
pub const PRELUDE: &str = "// oauth3-gateway: Deno.env.get reads args (never secrets)\n\
const Deno = Object.freeze({ env: Object.freeze({ get: (name) => (args !== null && typeof args === 'object' && Object.prototype.hasOwnProperty.call(args, name)) ? String(args[name]) : undefined }) });\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_removed_by_the_parser_not_by_patterns() {
        let ts = r#"// @skill greet
// @description Say hello
interface Greeting { text: string }
const name: string = Deno.env.get("NAME")!;
const g = { text: `hello ${name}` } as Greeting;
function shout<T extends string>(s: T): T { return s.toUpperCase() as T; }
// a comment that says : string and <T> stays harmless
console.log(shout(g.text satisfies string));
await Promise.resolve(1);
return g.text;
"#;
        let js = to_javascript(ts).expect("strips");
        for gone in [
            "interface Greeting",
            "name: string",
            " as Greeting",
            "<T extends",
            "(s: T)",
            "!;",
            "satisfies",
        ] {
            assert!(!js.contains(gone), "{gone:?} left in:\n{js}");
        }
        for kept in [
            "Deno.env.get(\"NAME\")",
            "await Promise.resolve(1)",
            "return g.text",
            "// a comment that says : string and <T> stays harmless",
        ] {
            assert!(js.contains(kept), "{kept:?} missing in:\n{js}");
        }
    }

    #[test]
    fn fetch_is_refused_naming_fetch_but_a_local_fetch_is_fine() {
        let e = to_javascript("const r = await fetch('https://api.github.com/user');")
            .expect_err("refused");
        assert_eq!(e, SkillError::Fetch);
        assert!(e.to_string().contains("fetch"));
        assert_eq!(
            to_javascript("const f = globalThis.fetch;").map(|_| ()),
            Ok(()),
            "a property read is not a call of the global (and finds nothing in the sandbox)"
        );
        assert!(to_javascript("const fetch = (u: string) => u; fetch('x');").is_ok());
    }

    #[test]
    fn modules_and_bad_syntax_are_refused() {
        assert_eq!(
            to_javascript("import x from 'npm:lodash'; x();"),
            Err(SkillError::Module)
        );
        assert_eq!(
            to_javascript("export const a = 1;"),
            Err(SkillError::Module)
        );
        assert!(matches!(
            to_javascript("const = ;"),
            Err(SkillError::Syntax(_))
        ));
    }

    #[test]
    fn metadata_comments_are_read_and_repeatable() {
        let meta = metadata(
            "// @skill github-api\n// @description Call GitHub\n// @secrets GITHUB_TOKEN\n\
             //   @secrets OTHER_KEY\n// @network api.github.com\n// @timeout 45\nconst x = 1; // @secrets NOT_A_LINE_COMMENT_START\n",
        );
        assert_eq!(meta.skill.as_deref(), Some("github-api"));
        assert_eq!(meta.description.as_deref(), Some("Call GitHub"));
        assert_eq!(meta.secrets, ["GITHUB_TOKEN", "OTHER_KEY"]);
        assert_eq!(meta.networks, ["api.github.com"]);
        assert_eq!(meta.timeout, Some(45));
    }
}
