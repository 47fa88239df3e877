//! Label selectors: the equality and existence subset of the Kubernetes syntax
//! (`k=v`, `k==v`, `k!=v`, `k`, `!k`, joined by `,`). `Display` writes the same syntax,
//! so a Kubernetes backend passes it on as `labelSelector`.

use super::name::{label_key_problem, label_value_problem};
use super::Labels;
use std::fmt;
use std::str::FromStr;

/// One requirement on an object's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// The label is present with this value.
    Equals(String, String),
    /// The label is absent, or present with another value.
    NotEquals(String, String),
    /// The label is present.
    Exists(String),
    /// The label is absent.
    DoesNotExist(String),
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

/// Every requirement must hold; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// A selector that does not parse, with the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid label selector {selector:?}: {reason} (write requirements like \
     \"key=value,other!=value,present,!absent\")"
)]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

impl Selector {
    /// Matches every object.
    pub fn everything() -> Self {
        Selector::default()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Adds a requirement (builder style).
    pub fn and(mut self, r: Requirement) -> Self {
        self.requirements.push(r);
        self
    }

    /// `key=value`.
    pub fn eq(key: impl Into<String>, value: impl Into<String>) -> Self {
        Selector::everything().and(Requirement::Equals(key.into(), value.into()))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Parses the Kubernetes equality/existence syntax.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let err = |reason: String| SelectorError {
            selector: text.to_string(),
            reason,
        };
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(Selector { requirements });
        }
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("an empty requirement (two commas in a row?)".into()));
            }
            if part.contains(['(', ')']) || part.contains(" in ") || part.contains(" notin ") {
                return Err(err(format!(
                    "{part:?}: set-based requirements (in, notin) are not supported"
                )));
            }
            if part.contains(char::is_whitespace) {
                return Err(err(format!(
                    "{part:?}: a requirement has no spaces inside it"
                )));
            }
            let key_ok = |k: &str| match label_key_problem(k) {
                None => Ok(k.to_string()),
                Some(why) => Err(err(format!("label key {k:?}: {why}"))),
            };
            let value_ok = |v: &str| match label_value_problem(v) {
                None => Ok(v.to_string()),
                Some(why) => Err(err(format!("label value {v:?}: {why}"))),
            };
            let r = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(key_ok(k.trim())?, value_ok(v.trim())?)
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(key_ok(k.trim())?, value_ok(v.trim())?)
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(key_ok(k.trim())?, value_ok(v.trim())?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key_ok(k.trim())?)
            } else {
                Requirement::Exists(key_ok(part)?)
            };
            requirements.push(r);
        }
        Ok(Selector { requirements })
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches() {
        let s = Selector::parse("ferrovia.io/node=n1, tier!=db,present,!absent").expect("parses");
        assert_eq!(s.requirements().len(), 4);
        assert!(s.matches(&labels(&[("ferrovia.io/node", "n1"), ("present", "")])));
        assert!(s.matches(&labels(&[
            ("ferrovia.io/node", "n1"),
            ("present", "x"),
            ("tier", "web")
        ])));
        assert!(!s.matches(&labels(&[("ferrovia.io/node", "n2"), ("present", "")])));
        assert!(!s.matches(&labels(&[
            ("ferrovia.io/node", "n1"),
            ("present", ""),
            ("tier", "db")
        ])));
        assert!(!s.matches(&labels(&[("ferrovia.io/node", "n1")])));
        assert!(!s.matches(&labels(&[
            ("ferrovia.io/node", "n1"),
            ("present", ""),
            ("absent", "")
        ])));
        assert_eq!(
            s.to_string(),
            "ferrovia.io/node=n1,tier!=db,present,!absent"
        );
        assert_eq!(Selector::parse(&s.to_string()), Ok(s));
        assert_eq!(
            Selector::parse("a==b"),
            Ok(Selector::eq("a", "b")),
            "== is ="
        );
        assert!(Selector::parse("").expect("empty").is_everything());
        assert!(Selector::everything().matches(&Labels::new()));
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        for (text, says) in [
            ("a=b,,c", "empty requirement"),
            ("env in (a,b)", "set-based"),
            ("Bad Key=x", "no spaces"),
            ("-a=b", "label key"),
            ("a=b c", "no spaces"),
            ("env notin (a)", "set-based"),
            ("a=-b", "label value"),
            ("!", "label key"),
        ] {
            let e = Selector::parse(text).expect_err(text);
            assert!(e.to_string().contains(says), "{text}: {e}");
            assert!(e.to_string().contains("key=value"), "{e}");
        }
    }
}
