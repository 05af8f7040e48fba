//! Who may see which devices: a set of device patterns, where `*` matches any run of
//! characters (`plant-a/*`, `*-gateway`, `*`). Tokens carry one in their `devices` claim, scoped
//! ingest keys in their config; the host enforces it before any plugin runs.

use std::fmt;

/// Most patterns in one scope.
pub const MAX_PATTERNS: usize = 1000;
/// Longest pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// No `*`: the device id itself.
    Exact(String),
    /// `prefix*` (the common case): a prefix test.
    Prefix(String),
    /// Anything else with `*`, split at the stars.
    Glob(Vec<String>),
}

impl Pattern {
    fn parse(text: &str) -> Pattern {
        match text.find('*') {
            None => Pattern::Exact(text.to_owned()),
            Some(i) if i == text.len() - 1 => Pattern::Prefix(text[..i].to_owned()),
            Some(_) => Pattern::Glob(text.split('*').map(str::to_owned).collect()),
        }
    }

    fn matches(&self, device: &str) -> bool {
        match self {
            Pattern::Exact(d) => d == device,
            Pattern::Prefix(p) => device.starts_with(p.as_str()),
            Pattern::Glob(parts) => glob(parts, device),
        }
    }
}

/// `parts` are the pieces between stars: the first must start the text, the last end it,
/// the others appear in order in between (leftmost match is enough for `*`-only globs).
fn glob(parts: &[String], text: &str) -> bool {
    let (first, rest) = match parts.split_first() {
        Some(p) => p,
        None => return text.is_empty(),
    };
    let Some(mut remaining) = text.strip_prefix(first.as_str()) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for part in middle {
        match remaining.find(part.as_str()) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last.as_str())
}

/// A set of device patterns; a device is in scope if any pattern matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// As given, sorted and deduplicated: the canonical form.
    patterns: Vec<String>,
    compiled: Vec<Pattern>,
    /// Some pattern is `*`.
    all: bool,
}

impl Scope {
    /// Every device.
    pub fn all() -> Scope {
        Scope::parse(&["*".to_owned()]).expect("`*` is a valid scope")
    }

    /// Validate and compile `patterns`; the error names the offending one.
    pub fn parse(patterns: &[String]) -> Result<Scope, String> {
        if patterns.len() > MAX_PATTERNS {
            return Err(format!(
                "{} device patterns; at most {MAX_PATTERNS}",
                patterns.len()
            ));
        }
        for (i, p) in patterns.iter().enumerate() {
            if p.is_empty() || p.len() > MAX_PATTERN_LEN || p.chars().any(char::is_control) {
                return Err(format!(
                    "devices[{i}]: a pattern is 1 to {MAX_PATTERN_LEN} bytes without control characters"
                ));
            }
        }
        let mut sorted = patterns.to_vec();
        sorted.sort();
        sorted.dedup();
        Ok(Scope {
            all: sorted.iter().any(|p| p == "*"),
            compiled: sorted.iter().map(|p| Pattern::parse(p)).collect(),
            patterns: sorted,
        })
    }

    pub fn matches(&self, device: &str) -> bool {
        self.all || self.compiled.iter().any(|p| p.matches(device))
    }

    /// Whether every device is in scope (nothing to narrow).
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Whether no device is in scope.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.patterns.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(p: &[&str]) -> Scope {
        Scope::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn patterns_match_as_documented() {
        let s = scope(&["plant-a/*", "sensor-1", "*-gw", "x*y*z"]);
        for yes in [
            "plant-a/1",
            "plant-a/",
            "sensor-1",
            "north-gw",
            "-gw",
            "xyz",
            "x1y2z",
            "xzyz",
        ] {
            assert!(s.matches(yes), "{yes}");
        }
        for no in [
            "plant-b/1",
            "plant-a",
            "sensor-10",
            "gw",
            "xy",
            "xzy",
            "ax1y2z",
        ] {
            assert!(!s.matches(no), "{no}");
        }
        assert!(scope(&["*"]).is_all() && scope(&["*"]).matches("anything"));
        let none = scope(&[]);
        assert!(none.is_empty() && !none.matches("d"));
        assert_eq!(scope(&["b", "a", "b"]).patterns(), ["a", "b"]);
    }

    #[test]
    fn bad_patterns_are_named() {
        let e = Scope::parse(&["ok".into(), String::new()]).unwrap_err();
        assert!(e.starts_with("devices[1]"), "{e}");
        assert!(Scope::parse(&vec!["x".to_owned(); MAX_PATTERNS + 1]).is_err());
        assert!(Scope::parse(&["a\nb".into()]).is_err());
    }
}
