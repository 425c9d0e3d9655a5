//! Execution code made ready for the sandbox (pure): TypeScript types are removed by a real
//! parser and transformer (oxc), never by patterns on the text; JavaScript is parsed the same
//! way, so both get the same checks before anything runs.
//!
//! The code is the body of an async function (top-level `await` and `return` work). There is
//! no module loader: `import`/`export` statements, dynamic `import()` and calls of an
//! undeclared `require` are refused with an error that says so, instead of failing later with
//! a bare `ReferenceError`.
//!
//! What the owner approves is always the source as written: the digest is of those bytes, and
//! the removal of types happens where the code runs.

use std::collections::BTreeSet;
use std::path::Path;

use oxc::allocator::Allocator;
use oxc::ast::ast::{Expression, Statement};
use oxc::ast_visit::{Visit, walk};
use oxc::codegen::Codegen;
use oxc::parser::{ParseOptions, Parser};
use oxc::semantic::SemanticBuilder;
use oxc::span::SourceType;
use oxc::transformer::{TransformOptions, Transformer};

/// The language of a piece of code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Language {
    /// JavaScript (run as written).
    #[default]
    JavaScript,
    /// TypeScript (types removed first).
    TypeScript,
}

/// Why code cannot be prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// It does not parse; the first error, with its position.
    #[error("does not parse as {language}: {message}")]
    Syntax {
        /// `TypeScript` or `JavaScript`.
        language: &'static str,
        /// The parser's message.
        message: String,
    },
    /// It imports or exports modules.
    #[error(
        "uses {0}, but the sandbox has no module loader: inline what the code needs (the Permit's capabilities are globals)"
    )]
    Module(&'static str),
    /// The transformer failed.
    #[error("could not remove the TypeScript types: {0}")]
    Transform(String),
}

/// Code ready for the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The JavaScript to run.
    pub code: String,
    /// Globals the code refers to without declaring them (e.g. `fetch`, `Deno`, a
    /// capability's name).
    pub globals: BTreeSet<String>,
}

fn language_name(language: Language) -> &'static str {
    match language {
        Language::JavaScript => "JavaScript",
        Language::TypeScript => "TypeScript",
    }
}

/// Finds dynamic `import()` anywhere in the program.
#[derive(Default)]
struct DynamicImport(bool);

impl<'a> Visit<'a> for DynamicImport {
    fn visit_expression(&mut self, expr: &Expression<'a>) {
        if matches!(expr, Expression::ImportExpression(_)) {
            self.0 = true;
            return;
        }
        walk::walk_expression(self, expr);
    }
}

/// Parses `code` as `language`, refuses module use and, for TypeScript, removes the types.
/// JavaScript comes back unchanged (byte for byte) once it has passed the checks.
///
/// # Errors
/// [`PrepareError`] saying what is wrong and where.
pub fn prepare(code: &str, language: Language) -> Result<Prepared, PrepareError> {
    let allocator = Allocator::default();
    let (source_type, file) = match language {
        Language::TypeScript => (SourceType::ts().with_module(true), "code.ts"),
        Language::JavaScript => (SourceType::mjs(), "code.js"),
    };
    let syntax = |message: String| PrepareError::Syntax {
        language: language_name(language),
        message,
    };
    let parsed = Parser::new(&allocator, code, source_type)
        .with_options(ParseOptions {
            allow_return_outside_function: true,
            ..ParseOptions::default()
        })
        .parse();
    if let Some(e) = parsed.errors.first() {
        return Err(syntax(e.to_string()));
    }
    let mut program = parsed.program;
    if let Some(what) = program.body.iter().find_map(module_item) {
        return Err(PrepareError::Module(what));
    }
    let mut dynamic = DynamicImport::default();
    dynamic.visit_program(&program);
    if dynamic.0 {
        return Err(PrepareError::Module("import()"));
    }
    let semantic = SemanticBuilder::new().build(&program);
    if let Some(e) = semantic.errors.first() {
        return Err(syntax(e.to_string()));
    }
    let scoping = semantic.semantic.into_scoping();
    let globals: BTreeSet<String> = scoping
        .root_unresolved_references()
        .keys()
        .map(|k| k.to_string())
        .collect();
    if globals.contains("require") {
        return Err(PrepareError::Module("require()"));
    }
    if language == Language::JavaScript {
        return Ok(Prepared {
            code: code.to_owned(),
            globals,
        });
    }
    let options = TransformOptions::from_target("esnext").map_err(PrepareError::Transform)?;
    let transformed = Transformer::new(&allocator, Path::new(file), &options)
        .build_with_scoping(scoping, &mut program);
    if let Some(e) = transformed.errors.first() {
        return Err(PrepareError::Transform(e.to_string()));
    }
    Ok(Prepared {
        code: Codegen::new().build(&program).code,
        globals,
    })
}

fn module_item(stmt: &Statement<'_>) -> Option<&'static str> {
    match stmt {
        Statement::ImportDeclaration(_) | Statement::TSImportEqualsDeclaration(_) => Some("import"),
        Statement::ExportAllDeclaration(_)
        | Statement::ExportDefaultDeclaration(_)
        | Statement::ExportNamedDeclaration(_)
        | Statement::TSExportAssignment(_)
        | Statement::TSNamespaceExportDeclaration(_) => Some("export"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_removed_by_the_parser_not_by_patterns() {
        let ts = r#"interface Repo { name: string; stars?: number }
type Id = string | number;
enum Color { Red, Green }
const token: string = Deno.env.get("GITHUB_TOKEN")!;
const r = { name: "x" } as Repo;
function first<T extends Repo>(xs: T[]): T | undefined { return xs[0]; }
// a comment that says : string and <T> stays harmless
console.log(first([r])!.name satisfies string, Color.Green);
await Promise.resolve(1);
return r.name;
"#;
        let out = prepare(ts, Language::TypeScript).expect("strips");
        for gone in [
            "interface Repo",
            "token: string",
            " as Repo",
            "<T extends",
            "(xs: T[])",
            "satisfies",
            "type Id",
        ] {
            assert!(!out.code.contains(gone), "{gone:?} left in:\n{}", out.code);
        }
        for kept in [
            "Deno.env.get(\"GITHUB_TOKEN\")",
            "await Promise.resolve(1)",
            "return r.name",
            "Color",
        ] {
            assert!(
                out.code.contains(kept),
                "{kept:?} missing in:\n{}",
                out.code
            );
        }
        assert!(out.globals.contains("Deno") && out.globals.contains("console"));
        assert!(
            !out.globals.contains("first"),
            "declared names are not globals"
        );
    }

    #[test]
    fn javascript_is_checked_but_kept_byte_for_byte() {
        let js = "const a = 1;   // spacing kept\nreturn a + args.n;";
        let out = prepare(js, Language::JavaScript).expect("valid");
        assert_eq!(out.code, js);
        assert!(out.globals.contains("args"));
        let e = prepare("const x: number = 1;", Language::JavaScript).expect_err("not JS");
        assert!(
            e.to_string().starts_with("does not parse as JavaScript"),
            "{e}"
        );
    }

    #[test]
    fn modules_are_refused_with_a_clear_error() {
        for (code, what) in [
            ("import x from 'npm:lodash'; x();", "import"),
            ("import * as fs from 'node:fs';", "import"),
            ("export const a = 1;", "export"),
            ("const m = await import('https://esm.sh/x');", "import()"),
            ("const fs = require('fs');", "require()"),
        ] {
            for language in [Language::TypeScript, Language::JavaScript] {
                let e = prepare(code, language).expect_err(code);
                assert_eq!(e, PrepareError::Module(what), "{code}");
                assert!(e.to_string().contains("no module loader"), "{e}");
            }
        }
        assert!(
            prepare(
                "const require = (m: string) => m; require('x');",
                Language::TypeScript
            )
            .is_ok(),
            "a local function named require is fine"
        );
        assert!(matches!(
            prepare("const = ;", Language::TypeScript),
            Err(PrepareError::Syntax { .. })
        ));
    }
}
