//! Name rules for switches and tokens. Names appear in URLs, logs, Slack messages and metric
//! labels, so they are kept to a boring, URL-safe alphabet.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name must not be empty")]
    Empty,
    #[error("name must be at most {max} characters")]
    TooLong { max: usize },
    #[error("name must start with a lowercase letter or digit")]
    BadStart,
    #[error("name may only contain lowercase letters, digits, '-' and '_' (found {found:?})")]
    BadChar { found: char },
}

/// Switch names: `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn validate_switch_name(name: &str) -> Result<(), NameError> {
    validate(name, 63)
}

/// Token names: same alphabet, plus '.' and '@' so they can be people's handles.
pub fn validate_token_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > 64 {
        return Err(NameError::TooLong { max: 64 });
    }
    let first = name.chars().next().ok_or(NameError::Empty)?;
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(NameError::BadStart);
    }
    for c in name.chars() {
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.@".contains(c)) {
            return Err(NameError::BadChar { found: c });
        }
    }
    Ok(())
}

fn validate(name: &str, max: usize) -> Result<(), NameError> {
    let first = name.chars().next().ok_or(NameError::Empty)?;
    if name.chars().count() > max {
        return Err(NameError::TooLong { max });
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(NameError::BadStart);
    }
    for c in name.chars() {
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') {
            return Err(NameError::BadChar { found: c });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_names() {
        assert_eq!(validate_switch_name("workers"), Ok(()));
        assert_eq!(validate_switch_name("kill-search_2"), Ok(()));
        assert_eq!(validate_switch_name(""), Err(NameError::Empty));
        assert_eq!(validate_switch_name("-x"), Err(NameError::BadStart));
        assert_eq!(validate_switch_name("Workers"), Err(NameError::BadStart));
        assert_eq!(
            validate_switch_name("a/b"),
            Err(NameError::BadChar { found: '/' })
        );
        assert_eq!(
            validate_switch_name(&"a".repeat(64)),
            Err(NameError::TooLong { max: 63 })
        );
    }

    #[test]
    fn token_names() {
        assert_eq!(validate_token_name("alice@ops"), Ok(()));
        assert_eq!(validate_token_name("office.button"), Ok(()));
        assert!(validate_token_name("a b").is_err());
        assert!(validate_token_name("").is_err());
    }
}
