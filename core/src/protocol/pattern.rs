//! Type patterns: how handlers and subscribers say which message types they want.
//!
//! One pure function, [`type_matches`], decides for both the server's router and the client's
//! message bus, so the two can never disagree. The semantics:
//!
//! - `*` matches every type;
//! - a pattern ending in `.*` matches every type that starts with the text before the `*`,
//!   at any depth: `data.*` matches `data.message.send` and `data.widget.form.submit`, and
//!   `data.widget.*` matches `data.widget.submit` but not `data.widgets.submit` or
//!   `data.widget` itself;
//! - anything else matches exactly that type.
//!
//! A `*` anywhere else is not a wildcard; [`TypePattern::new`] refuses such patterns.

use std::fmt;

/// Whether `message_type` matches `pattern` (see [`TypePattern`]).
pub fn type_matches(pattern: &str, message_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('.') => {
            message_type.len() > prefix.len() && message_type.starts_with(prefix)
        }
        _ => pattern == message_type,
    }
}

/// Why a string is not a usable type pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a pattern must not be empty")]
    Empty,
    #[error("'*' may only stand alone or as the whole last segment ('data.*')")]
    MisplacedWildcard,
}

/// A validated type pattern, ordered by how specific it is.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TypePattern(String);

/// How specific a pattern is; the bus and the router try more specific patterns first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Specificity {
    /// `*`.
    Any,
    /// `a.b.*`: a longer prefix is more specific.
    Prefix(usize),
    /// An exact type.
    Exact,
}

impl TypePattern {
    /// Validates a pattern.
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        let body = match pattern.strip_suffix(".*") {
            Some(prefix) => prefix,
            None if pattern == "*" => "",
            None => pattern,
        };
        if body.contains('*') {
            return Err(PatternError::MisplacedWildcard);
        }
        Ok(TypePattern(pattern.to_owned()))
    }

    /// Whether `message_type` matches.
    pub fn matches(&self, message_type: &str) -> bool {
        type_matches(&self.0, message_type)
    }

    /// How specific the pattern is.
    pub fn specificity(&self) -> Specificity {
        if self.0 == "*" {
            Specificity::Any
        } else if self.0.ends_with(".*") {
            Specificity::Prefix(self.0.len() - 1)
        } else {
            Specificity::Exact
        }
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for TypePattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TypePattern::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn semantics() {
        let cases = [
            ("*", "system.ping.x", true),
            ("control.*", "control.flow.pause", true),
            ("control.*", "control.a.b.c.d", true),
            ("control.*", "data.flow.pause", false),
            ("control.*", "controls.flow.pause", false),
            ("data.widget.*", "data.widget.submit", true),
            ("data.widget.*", "data.widget.form.submit", true),
            ("data.widget.*", "data.widgets.submit", false),
            ("data.widget.*", "data.widget", false),
            ("data.widget.*", "data.widget.", false),
            ("data.message.send", "data.message.send", true),
            ("data.message.send", "data.message.sent", false),
            ("data.message.send", "data.message.send.x", false),
            ("data*", "data.message.send", false),
        ];
        for (pattern, ty, want) in cases {
            assert_eq!(type_matches(pattern, ty), want, "{pattern} vs {ty}");
        }
    }

    #[test]
    fn validation_and_specificity() {
        assert_eq!(TypePattern::new(""), Err(PatternError::Empty));
        assert_eq!(TypePattern::new("data.*.send"), Err(PatternError::MisplacedWildcard));
        assert_eq!(TypePattern::new("data*"), Err(PatternError::MisplacedWildcard));
        assert_eq!(TypePattern::new("**"), Err(PatternError::MisplacedWildcard));
        let any = TypePattern::new("*").unwrap();
        let data = TypePattern::new("data.*").unwrap();
        let widget = TypePattern::new("data.widget.*").unwrap();
        let exact = TypePattern::new("data.widget.submit").unwrap();
        assert!(any.specificity() < data.specificity());
        assert!(data.specificity() < widget.specificity());
        assert!(widget.specificity() < exact.specificity());
    }

    proptest! {
        #[test]
        fn a_prefix_pattern_matches_exactly_the_types_below_it(
            prefix in "[a-z]{1,6}(\\.[a-z]{1,6}){0,2}",
            ty in "[a-z]{1,6}(\\.[a-z]{1,6}){2,4}",
        ) {
            let pattern = format!("{prefix}.*");
            prop_assert_eq!(type_matches(&pattern, &ty), ty.starts_with(&format!("{prefix}.")));
            prop_assert!(type_matches("*", &ty));
            prop_assert!(type_matches(&ty, &ty));
        }
    }
}
