//! Checking an Execution's `args` against its Permit's `spec.argRules` (pure). The operator
//! does it before a sandbox starts; the gateway before it creates an Execution, to answer a
//! refusal at once. Both use this one function.

use serde_json::Value;

use crate::permit::{ArgOp, ArgRule};

/// The longest piece of an arg value quoted in a refusal.
const QUOTE_MAX: usize = 64;

/// The value as text for `regex`, `prefix`, `suffix` and string equality: a string as it is,
/// a number or boolean as its JSON text; `None` for null, lists and objects.
fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The value as a number: a JSON number, or a string that is one.
fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// Equal as JSON, or as numbers, or as text (`"5"` equals `5`: command-line clients send every
/// arg as a string).
fn same(a: &Value, b: &Value) -> bool {
    a == b
        || matches!((as_number(a), as_number(b)), (Some(x), Some(y)) if x == y)
        || matches!((as_text(a), as_text(b)), (Some(x), Some(y)) if x == y)
}

fn quoted(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= QUOTE_MAX {
        text
    } else {
        format!("{}…", text.chars().take(QUOTE_MAX).collect::<String>())
    }
}

/// The rule in words, as the owner reads it: `owner matches ^(?:amiller)$`, `count <= 10`.
#[must_use]
pub fn describe_rule(rule: &ArgRule) -> String {
    let what = match (&rule.regex, rule.op, &rule.value) {
        (Some(re), _, _) => format!("must match ^(?:{re})$ (the whole value)"),
        (None, Some(op), Some(v)) => {
            let v = v.to_string();
            match op {
                ArgOp::Eq => format!("must equal {v}"),
                ArgOp::Ne => format!("must not equal {v}"),
                ArgOp::Lt => format!("must be a number < {v}"),
                ArgOp::Le => format!("must be a number <= {v}"),
                ArgOp::Gt => format!("must be a number > {v}"),
                ArgOp::Ge => format!("must be a number >= {v}"),
                ArgOp::In => format!("must be one of {v}"),
                ArgOp::NotIn => format!("must not be any of {v}"),
                ArgOp::Prefix => format!("must start with {v}"),
                ArgOp::Suffix => format!("must end with {v}"),
            }
        }
        _ => "is an incomplete rule (set regex, or op and value)".to_owned(),
    };
    format!("args.{} {what}", rule.arg)
}

/// Checks `args` against every rule, in order. `Err` names the first rule broken (its index
/// and words) and the value found.
///
/// # Errors
/// The first broken rule, in words.
pub fn check_args(rules: &[ArgRule], args: Option<&Value>) -> Result<(), String> {
    for (i, rule) in rules.iter().enumerate() {
        let fail = |why: String| format!("argRules[{i}]: {}: {why}", describe_rule(rule));
        let Some(value) = args.and_then(|a| a.get(&rule.arg)) else {
            return Err(fail(format!("args has no {:?}", rule.arg)));
        };
        let ok = match (&rule.regex, rule.op, &rule.value) {
            (Some(re), _, _) => {
                let re = regex::Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| fail(format!("the regex does not compile: {e}")))?;
                let text = as_text(value)
                    .ok_or_else(|| fail(format!("{} is not a string or number", quoted(value))))?;
                re.is_match(&text)
            }
            (None, Some(op), Some(want)) => match op {
                ArgOp::Eq => same(value, want),
                ArgOp::Ne => !same(value, want),
                ArgOp::Lt | ArgOp::Le | ArgOp::Gt | ArgOp::Ge => {
                    let got = as_number(value)
                        .ok_or_else(|| fail(format!("{} is not a number", quoted(value))))?;
                    let limit = as_number(want)
                        .ok_or_else(|| fail("the rule's value is not a number".to_owned()))?;
                    match op {
                        ArgOp::Lt => got < limit,
                        ArgOp::Le => got <= limit,
                        ArgOp::Gt => got > limit,
                        _ => got >= limit,
                    }
                }
                ArgOp::In | ArgOp::NotIn => {
                    let list = want
                        .as_array()
                        .ok_or_else(|| fail("the rule's value is not a list".to_owned()))?;
                    list.iter().any(|w| same(value, w)) == (op == ArgOp::In)
                }
                ArgOp::Prefix | ArgOp::Suffix => {
                    let got = as_text(value)
                        .ok_or_else(|| fail(format!("{} is not a string", quoted(value))))?;
                    let affix = as_text(want)
                        .ok_or_else(|| fail("the rule's value is not a string".to_owned()))?;
                    if op == ArgOp::Prefix {
                        got.starts_with(&affix)
                    } else {
                        got.ends_with(&affix)
                    }
                }
            },
            _ => return Err(fail("set regex, or op and value".to_owned())),
        };
        if !ok {
            return Err(fail(format!("got {}", quoted(value))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> ArgRule {
        serde_json::from_value(v).expect("rule")
    }

    fn check(r: Value, args: Value) -> Result<(), String> {
        check_args(&[rule(r)], Some(&args))
    }

    #[test]
    fn regex_rules_match_the_whole_value() {
        let r = json!({"arg": "owner", "regex": "amiller"});
        assert!(check(r.clone(), json!({"owner": "amiller"})).is_ok());
        let e = check(r.clone(), json!({"owner": "amiller-evil"})).expect_err("prefix only");
        assert!(
            e.contains("argRules[0]: args.owner must match ^(?:amiller)$"),
            "{e}"
        );
        assert!(e.contains("got \"amiller-evil\""), "{e}");
        assert!(check(r.clone(), json!({"owner": "evil/amiller"})).is_err());
        // An alternation cannot escape the anchors.
        let alt = json!({"arg": "owner", "regex": "a|b"});
        assert!(check(alt.clone(), json!({"owner": "b"})).is_ok());
        assert!(check(alt, json!({"owner": "xb"})).is_err());
        assert!(check(r.clone(), json!({"owner": ["amiller"]})).is_err());
        assert!(check(json!({"arg": "n", "regex": "[0-9]+"}), json!({"n": 42})).is_ok());
        let e = check(json!({"arg": "n", "regex": "("}), json!({"n": 1})).expect_err("bad regex");
        assert!(e.contains("does not compile"), "{e}");
    }

    #[test]
    fn a_missing_arg_breaks_its_rule() {
        let r = json!({"arg": "owner", "regex": "amiller"});
        assert!(check(r.clone(), json!({})).is_err());
        let e = check_args(&[rule(r)], None).expect_err("no args");
        assert!(e.contains("args has no \"owner\""), "{e}");
    }

    #[test]
    fn comparisons() {
        let le = json!({"arg": "count", "op": "le", "value": 10});
        assert!(check(le.clone(), json!({"count": 10})).is_ok());
        assert!(
            check(le.clone(), json!({"count": "7"})).is_ok(),
            "strings that are numbers"
        );
        assert!(check(le.clone(), json!({"count": 11})).is_err());
        assert!(check(le.clone(), json!({"count": "ten"})).is_err());
        assert!(check(le, json!({"count": "NaN"})).is_err());
        let eq = json!({"arg": "state", "op": "eq", "value": "open"});
        assert!(check(eq.clone(), json!({"state": "open"})).is_ok());
        assert!(check(eq, json!({"state": "closed"})).is_err());
        let one_of = json!({"arg": "repo", "op": "in", "value": ["a", "b"]});
        assert!(check(one_of.clone(), json!({"repo": "b"})).is_ok());
        assert!(check(one_of, json!({"repo": "c"})).is_err());
        let none_of = json!({"arg": "repo", "op": "notIn", "value": ["secret"]});
        assert!(check(none_of.clone(), json!({"repo": "public"})).is_ok());
        assert!(check(none_of, json!({"repo": "secret"})).is_err());
        let prefix = json!({"arg": "path", "op": "prefix", "value": "/repos/amiller/"});
        assert!(check(prefix.clone(), json!({"path": "/repos/amiller/x"})).is_ok());
        assert!(check(prefix, json!({"path": "/repos/other/x"})).is_err());
        let suffix = json!({"arg": "host", "op": "suffix", "value": ".example.com"});
        assert!(check(suffix.clone(), json!({"host": "api.example.com"})).is_ok());
        assert!(check(suffix, json!({"host": "evilexample.com"})).is_err());
        let ne = json!({"arg": "n", "op": "ne", "value": 0});
        assert!(
            check(ne.clone(), json!({"n": "0"})).is_err(),
            "\"0\" equals 0"
        );
        assert!(check(ne, json!({"n": 1})).is_ok());
    }

    #[test]
    fn every_rule_is_checked_in_order() {
        let rules = [
            rule(json!({"arg": "a", "op": "eq", "value": 1})),
            rule(json!({"arg": "b", "op": "eq", "value": 2})),
        ];
        assert!(check_args(&rules, Some(&json!({"a": 1, "b": 2}))).is_ok());
        let e = check_args(&rules, Some(&json!({"a": 1, "b": 3}))).expect_err("second");
        assert!(e.starts_with("argRules[1]: args.b must equal 2"), "{e}");
    }

    #[test]
    fn long_values_are_cut_in_refusals() {
        let e = check(
            json!({"arg": "a", "op": "eq", "value": "x"}),
            json!({"a": "y".repeat(1000)}),
        )
        .expect_err("refused");
        assert!(e.len() < 300, "{e}");
    }
}
