//! The credential template: filling the `{NAME}` placeholders of a capability's `auth.value`
//! from the opened secrets.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

/// A placeholder names a secret that was not opened (the value is never in the error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {name} is not available")]
pub struct MissingSecret {
    /// The secret the template names.
    pub name: String,
}

/// Fills `{NAME}` placeholders from the secrets; an unclosed `{` is kept as text.
///
/// # Errors
/// [`MissingSecret`] naming the first placeholder without a secret.
pub fn render_template(
    template: &str,
    secrets: &BTreeMap<String, Zeroizing<String>>,
) -> Result<Zeroizing<String>, MissingSecret> {
    let mut out = Zeroizing::new(String::with_capacity(template.len() + 32));
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                let value = secrets.get(name).ok_or_else(|| MissingSecret {
                    name: name.to_owned(),
                })?;
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_secrets_and_name_the_missing_one_without_values() {
        let secrets = BTreeMap::from([("TOKEN".to_owned(), Zeroizing::new("s3cr3t".to_owned()))]);
        assert_eq!(
            render_template("Bearer {TOKEN}", &secrets)
                .expect("filled")
                .as_str(),
            "Bearer s3cr3t"
        );
        assert_eq!(
            render_template("{TOKEN}:{OTHER}", &secrets)
                .expect_err("missing")
                .name,
            "OTHER"
        );
    }
}
