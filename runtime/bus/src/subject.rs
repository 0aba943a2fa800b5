//! NATS subject syntax, shared by both backends so a subject that works in the micro cloud works
//! unchanged against a real `nats-server`.
//!
//! A subject is dot-separated tokens (`router.register`, `executor.start.e1`). A subscription
//! pattern may use `*` (exactly one token) and `>` (one or more tokens, last position only).
//! Published subjects are literal: no wildcards. The invariant kept here: every subject or
//! pattern that passes validation is one `nats-server` also accepts, and [`matches()`] agrees with
//! the server's routing for it.

use crate::Error;

/// Longest subject or pattern accepted, in bytes. Control-plane subjects are a few dozen bytes;
/// the bound keeps a hostile subject from costing more than a line of memory.
pub const MAX_SUBJECT_BYTES: usize = 512;

/// Longest queue group name accepted, in bytes.
pub const MAX_GROUP_BYTES: usize = 128;

/// Does `subject` (literal) match `pattern` (may hold `*` and a trailing `>`)?
///
/// Walks both strings once without allocating. Invalid input simply does not match.
#[must_use]
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(pt), Some(st)) if pt == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Checks a subject to publish to: non-empty tokens, no whitespace, no wildcards.
pub(crate) fn validate_publish(subject: &str) -> Result<(), Error> {
    check_tokens(subject)?;
    if subject.split('.').any(|t| t == "*" || t == ">") {
        return Err(invalid(
            subject,
            "a published subject cannot contain the wildcards `*` or `>`",
        ));
    }
    Ok(())
}

/// Checks a subscription pattern: non-empty tokens, no whitespace, `>` only as the last token.
pub(crate) fn validate_pattern(pattern: &str) -> Result<(), Error> {
    check_tokens(pattern)?;
    let mut tokens = pattern.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token == ">" && tokens.peek().is_some() {
            return Err(invalid(pattern, "`>` may only be the last token"));
        }
    }
    Ok(())
}

/// Checks a queue group name: non-empty, short, printable, no whitespace.
pub(crate) fn validate_group(group: &str) -> Result<(), Error> {
    if group.is_empty() || group.len() > MAX_GROUP_BYTES {
        return Err(Error::InvalidGroup {
            group: group.chars().take(MAX_GROUP_BYTES).collect(),
            reason: "must be 1 to 128 bytes long",
        });
    }
    if group.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::InvalidGroup {
            group: group.escape_debug().to_string(),
            reason: "must not contain whitespace or control characters",
        });
    }
    Ok(())
}

fn check_tokens(subject: &str) -> Result<(), Error> {
    if subject.is_empty() {
        return Err(invalid(subject, "is empty"));
    }
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err(invalid(subject, "is longer than 512 bytes"));
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            subject,
            "must not contain whitespace or control characters",
        ));
    }
    if subject.split('.').any(str::is_empty) {
        return Err(invalid(
            subject,
            "has an empty token (leading, trailing or doubled `.`)",
        ));
    }
    Ok(())
}

fn invalid(subject: &str, reason: &'static str) -> Error {
    // Subjects can come from the wire; keep the echoed text short and printable.
    let shown: String = subject.chars().take(64).collect();
    Error::InvalidSubject {
        subject: shown.escape_debug().to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_patterns_match_only_themselves() {
        assert!(matches("router.register", "router.register"));
        assert!(!matches("router.register", "router.unregister"));
        assert!(!matches("router.register", "router.register.x"));
        assert!(!matches("router.register.x", "router.register"));
        assert!(!matches("router", "router.register"));
    }

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(matches("router.*", "router.register"));
        assert!(matches("router.*", "router.start"));
        assert!(!matches("router.*", "router"));
        assert!(!matches("router.*", "router.a.b"));
        assert!(matches("executor.*.e1", "executor.start.e1"));
        assert!(!matches("executor.*.e1", "executor.start.e2"));
        assert!(matches("*.*", "a.b"));
        assert!(matches("*", "a"));
        assert!(!matches("*", "a.b"));
    }

    #[test]
    fn gt_matches_one_or_more_trailing_tokens() {
        assert!(matches("executor.>", "executor.heartbeat"));
        assert!(matches("executor.>", "executor.start.e1"));
        assert!(!matches("executor.>", "executor"));
        assert!(!matches("executor.>", "router.start"));
        assert!(matches(">", "anything.at.all"));
        assert!(matches("*.>", "a.b"));
        assert!(!matches("*.>", "a"));
    }

    #[test]
    fn wildcard_characters_inside_a_token_are_literal() {
        assert!(!matches("a*", "ab"));
        assert!(matches("a*", "a*"));
        assert!(!matches("a.b>", "a.bc"));
    }

    #[test]
    fn publish_subjects_must_be_literal_and_well_formed() {
        assert!(validate_publish("router.register").is_ok());
        assert!(validate_publish("_INBOX.abc123").is_ok());
        for bad in [
            "", ".a", "a.", "a..b", "a b", "a\tb", "a\nb", "a.*", ">", "a.>.b",
        ] {
            assert!(
                matches!(validate_publish(bad), Err(Error::InvalidSubject { .. })),
                "{bad:?} should be rejected"
            );
        }
        assert!(validate_publish(&"a".repeat(MAX_SUBJECT_BYTES)).is_ok());
        assert!(validate_publish(&"a".repeat(MAX_SUBJECT_BYTES + 1)).is_err());
    }

    #[test]
    fn patterns_allow_wildcards_in_the_right_places() {
        for good in ["a", "a.*", "*.b", "a.>", ">", "*.*.>", "a*b.c"] {
            assert!(
                validate_pattern(good).is_ok(),
                "{good:?} should be accepted"
            );
        }
        for bad in ["", "a.>.b", ">.a", "a..b", "a. b", "a."] {
            assert!(validate_pattern(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn group_names_are_checked() {
        assert!(validate_group("executors").is_ok());
        assert!(validate_group("hm.workers-1").is_ok());
        assert!(validate_group("").is_err());
        assert!(validate_group("a b").is_err());
        assert!(validate_group(&"g".repeat(MAX_GROUP_BYTES + 1)).is_err());
    }

    #[test]
    fn error_messages_name_the_subject_and_the_fix() {
        let err = validate_publish("router..register")
            .map(|()| "ok")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("router..register"), "{text}");
        assert!(text.contains("empty token"), "{text}");
    }
}
