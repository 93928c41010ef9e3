//! OpenSSH pattern matching (match_pattern, match_pattern_list), for principals and namespaces.

/// The OpenSSH match_pattern: `*` any run of characters, `?` any one character, case-sensitive.
pub(super) fn match_pattern(text: &str, pattern: &str) -> bool {
    crate::spec::common::glob_matches(pattern, text)
}

/// The OpenSSH match_pattern_list: comma-separated patterns, `!pattern` excludes. True when some
/// pattern matches and no negated one does.
pub(super) fn match_pattern_list(text: &str, list: &str) -> bool {
    let mut positive = false;
    for pattern in list.split(',') {
        match pattern.strip_prefix('!') {
            Some(negated) if match_pattern(text, negated) => return false,
            Some(_) => {}
            None => positive |= match_pattern(text, pattern),
        }
    }
    positive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_openssh() {
        assert!(match_pattern_list("alice@example.com", "*@example.com"));
        assert!(match_pattern_list("alice@example.com", "bob,alice@example.com"));
        assert!(match_pattern_list("alice@example.com", "al?ce@*.com"));
        assert!(
            !match_pattern_list("alice@example.com", "Alice@example.com"),
            "case-sensitive"
        );
        assert!(!match_pattern_list("alice@example.com", "*@example.org"));
        assert!(!match_pattern_list("alice@example.com", "!alice@*,*"));
        assert!(
            !match_pattern_list("alice@example.com", "!bob@*"),
            "a negation alone allows nobody"
        );
        assert!(match_pattern_list("git", "*"));
        assert!(match_pattern("", "*"));
        assert!(!match_pattern("", "?"));
        assert!(match_pattern("aaaaaaaaaaaaaaaaaaaaaaaaaaaaab", "*a*a*a*a*a*a*a*b"));
        assert!(!match_pattern("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "*a*a*a*a*a*a*a*b"));
    }
}
