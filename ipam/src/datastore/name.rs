//! Name, kind and label rules every backend applies on write: those of Kubernetes, so
//! that whatever SQLite accepts a Kubernetes API server accepts too.

use super::{DatastoreError, Labels, Result};

/// Longest object name (a DNS-1123 subdomain).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label value, and longest label key name part.
const MAX_LABEL_LEN: usize = 63;

fn alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Why `name` is not a DNS-1123 subdomain (`None`: it is one): at most 253 characters
/// of lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit,
/// each `.`-separated part non-empty and starting and ending with a letter or digit.
pub fn dns1123_subdomain_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".to_string());
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(alnum_lower(*c) || *c == '-' || *c == '.'))
    {
        return Some(format!(
            "{c:?} is not allowed: a name is lowercase letters, digits, '-' and '.'"
        ));
    }
    for part in name.split('.') {
        let ok = part.starts_with(alnum_lower) && part.ends_with(alnum_lower);
        if !ok {
            return Some(
                "it must start and end with a letter or digit, and so must each '.'-separated part"
                    .to_string(),
            );
        }
    }
    None
}

/// Checks an object name (a DNS-1123 subdomain, as for most Kubernetes objects).
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    match dns1123_subdomain_problem(name) {
        None => Ok(()),
        Some(reason) => Err(DatastoreError::invalid(
            kind,
            name,
            format!("invalid object name: {reason}"),
        )),
    }
}

/// Checks a kind: 1 to 63 ASCII letters and digits, starting with a letter (a
/// Kubernetes kind, e.g. `IPAMBlock`).
pub fn validate_kind(kind: &str) -> Result<()> {
    let ok = kind.len() <= MAX_LABEL_LEN
        && kind.starts_with(|c: char| c.is_ascii_alphabetic())
        && kind.chars().all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(DatastoreError::invalid(
            kind,
            "",
            "a kind is 1 to 63 ASCII letters and digits, starting with a letter",
        ))
    }
}

/// Why `s` is not a label name part / value (`None`: valid): at most 63 characters of
/// letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
/// `empty_ok`: a label value may be empty.
fn label_part_problem(s: &str, empty_ok: bool) -> Option<String> {
    if s.is_empty() {
        return (!empty_ok).then(|| "it is empty".to_string());
    }
    if s.len() > MAX_LABEL_LEN {
        return Some(format!("it is longer than {MAX_LABEL_LEN} characters"));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !s.starts_with(alnum) || !s.ends_with(alnum) {
        return Some("it must start and end with a letter or digit".to_string());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        return Some(format!(
            "{c:?} is not allowed (letters, digits, '-', '_', '.')"
        ));
    }
    None
}

/// Why `key` is not a label key (`None`: valid): an optional DNS-1123 subdomain prefix
/// and `/`, then a name part.
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if let Some(why) = dns1123_subdomain_problem(p) {
            return Some(format!("its prefix {p:?} is not valid: {why}"));
        }
    }
    label_part_problem(name, false).map(|why| format!("its name part is not valid: {why}"))
}

pub(crate) fn label_value_problem(value: &str) -> Option<String> {
    label_part_problem(value, true)
}

/// Checks labels with the Kubernetes rules.
pub fn validate_labels(kind: &str, name: &str, labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        if let Some(why) = label_key_problem(k) {
            return Err(DatastoreError::invalid(
                kind,
                name,
                format!("label key {k:?}: {why}"),
            ));
        }
        if let Some(why) = label_value_problem(v) {
            return Err(DatastoreError::invalid(
                kind,
                name,
                format!("label {k:?} value {v:?}: {why}"),
            ));
        }
    }
    Ok(())
}

/// The checks every backend makes on a write: kind, name and labels.
pub fn validate_object(kind: &str, object: &super::Object) -> Result<()> {
    validate_kind(kind)?;
    validate_name(kind, &object.name)?;
    validate_labels(kind, &object.name, &object.labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_names() {
        for ok in [
            "a",
            "node1",
            "10-244-1-0-26",
            "abc.eth0",
            "a.b-c.d",
            &"a".repeat(253),
        ] {
            assert_eq!(dns1123_subdomain_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "A",
            "c1:eth0",
            "10.244.1.0/26",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a_b",
            &"a".repeat(254),
        ] {
            assert!(dns1123_subdomain_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn kinds_and_labels() {
        assert!(validate_kind("IPAMBlock").is_ok());
        assert!(validate_kind("").is_err());
        assert!(validate_kind("a-b").is_err());
        let mut l = Labels::new();
        l.insert("ferrovia.io/node".into(), "node1".into());
        l.insert("empty".into(), String::new());
        assert!(validate_labels("K", "n", &l).is_ok());
        for bad in ["", "/x", "Bad_/x", "x/", "-x", "a/b/c"] {
            let mut l = Labels::new();
            l.insert(bad.into(), "v".into());
            assert!(validate_labels("K", "n", &l).is_err(), "{bad}");
        }
        let mut l = Labels::new();
        l.insert("k".into(), "bad value".into());
        assert!(validate_labels("K", "n", &l).is_err());
    }
}
