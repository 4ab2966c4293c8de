//! The `debug`-style namespace filter (F1.8 in the Phase 1 plan), shared by both adapters.
//!
//! A filter is a comma- or space-separated list of namespace patterns; `*` matches any run of
//! characters; a leading `-` excludes. A namespace is enabled when some inclusion matches and no
//! exclusion does: `protocol:*,-protocol:bus` enables `protocol:client` and
//! `protocol:reconnect` but not `protocol:bus`.

/// The namespaces the client core logs under (its `tracing` targets).
pub const NAMESPACES: [&str; 3] = ["protocol:client", "protocol:bus", "protocol:reconnect"];

/// Whether `namespace` is enabled by `filter`.
pub fn namespace_enabled(filter: &str, namespace: &str) -> bool {
    let mut included = false;
    for item in filter.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()) {
        match item.strip_prefix('-') {
            Some(excluded) if glob(excluded, namespace) => return false,
            Some(_) => {}
            None => included |= glob(item, namespace),
        }
    }
    included
}

/// `*` matches any run of characters (including none); everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_style_filters() {
        assert!(namespace_enabled("protocol:*", "protocol:client"));
        assert!(namespace_enabled("*", "protocol:bus"));
        assert!(!namespace_enabled("", "protocol:bus"));
        assert!(namespace_enabled("protocol:client,protocol:bus", "protocol:bus"));
        assert!(namespace_enabled("protocol:client protocol:bus", "protocol:client"));
        assert!(!namespace_enabled("protocol:client", "protocol:bus"));
        assert!(!namespace_enabled("protocol:*,-protocol:bus", "protocol:bus"));
        assert!(namespace_enabled("protocol:*,-protocol:bus", "protocol:reconnect"));
        assert!(
            !namespace_enabled("-protocol:bus", "protocol:client"),
            "exclusions alone enable nothing"
        );
        assert!(namespace_enabled("*:client", "protocol:client"));
        assert!(namespace_enabled("p*l:c*t", "protocol:client"));
        assert!(!namespace_enabled("p*l:c*x", "protocol:client"));
        assert!(!namespace_enabled("protocol", "protocol:client"));
    }
}
