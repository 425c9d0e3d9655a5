//! Skill code (the SDK/CLI dialect's `skill_code`), checked before anything is created (pure).
//!
//! A skill is TypeScript with `// @name value` metadata comments (`@skill`, `@description`,
//! `@secrets NAME`, `@network host`, `@timeout seconds`; the repeatable ones may appear many
//! times). It runs as written: the Execution says `language: typescript` and the runner removes
//! the types with a real TypeScript parser (oxc) inside the sandbox, so the owner approves the
//! skill as its author wrote it. Top-level `await` and `return` work (the sandbox runs the code
//! as the body of an async function). Checked here with the same parser:
//! - a call of the global `fetch` needs a fetch capability in the Permit (a session made from
//!   `@network` hosts has one); without one it is refused with an error naming `fetch`;
//! - `import` / `export`, `import()` and `require()` are refused: there is no module loader in
//!   the sandbox.
//!
//! `Deno.env.get(NAME)` and `process.env.NAME` are the sandbox's: an arg as a string, or, for a
//! secret the fetch capability binds, a placeholder the runner replaces by the secret only in
//! requests to the bound hosts; the code never holds a secret.

use oauth3_typescript::{Language, PrepareError, prepare};

/// Why a skill cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkillError {
    /// The TypeScript does not parse; the first error, with its position.
    #[error("does not parse as TypeScript: {0}")]
    Syntax(String),
    /// The code uses the global `fetch`, but the Permit has no fetch capability.
    #[error(
        "calls fetch, but the Permit has no fetch capability: name the hosts the skill calls \
         with // @network host (a session made from them lets fetch reach them), or call the \
         Permit's capability functions (e.g. github('GET', '/repos/o/r/issues'))"
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

/// Checks the TypeScript `code` as above; `has_fetch` is whether the Permit it runs under has
/// a fetch capability.
///
/// # Errors
/// [`SkillError`] saying what is wrong.
pub fn check(code: &str, has_fetch: bool) -> Result<(), SkillError> {
    let prepared = prepare(code, Language::TypeScript).map_err(|e| match e {
        PrepareError::Syntax { message, .. } => SkillError::Syntax(message),
        PrepareError::Module(_) => SkillError::Module,
        PrepareError::Transform(m) => SkillError::Transform(m),
    })?;
    if prepared.globals.contains("fetch") && !has_fetch {
        return Err(SkillError::Fetch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typescript_with_types_is_accepted_as_written() {
        let ts = r#"// @skill greet
interface Greeting { text: string }
const name: string = Deno.env.get("NAME")!;
const g = { text: `hello ${name}` } as Greeting;
function shout<T extends string>(s: T): T { return s.toUpperCase() as T; }
console.log(shout(g.text satisfies string));
await Promise.resolve(1);
return g.text;
"#;
        assert_eq!(check(ts, false), Ok(()));
        assert!(matches!(
            check("const x: = 1;", false),
            Err(SkillError::Syntax(_))
        ));
    }

    #[test]
    fn fetch_needs_a_fetch_capability_but_a_local_fetch_is_fine() {
        let code = "const r = await fetch('https://api.github.com/user');";
        let e = check(code, false).expect_err("refused");
        assert_eq!(e, SkillError::Fetch);
        assert!(e.to_string().contains("@network"), "{e}");
        assert_eq!(check(code, true), Ok(()));
        assert_eq!(
            check("const f = globalThis.fetch;", false),
            Ok(()),
            "a property read is not a reference to the global"
        );
        assert_eq!(
            check("const fetch = (u: string) => u; fetch('x');", false),
            Ok(())
        );
    }

    #[test]
    fn modules_and_bad_syntax_are_refused() {
        assert_eq!(
            check("import x from 'npm:lodash'; x();", true),
            Err(SkillError::Module)
        );
        assert_eq!(check("export const a = 1;", true), Err(SkillError::Module));
        assert!(matches!(
            check("const = ;", true),
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
