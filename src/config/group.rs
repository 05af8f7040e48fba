//! How a group of configuration keys is declared: one line per key, carrying its type, its
//! default, its check and its doc ([`config_group!`]); and the checks those lines use.
//!
//! The keys users see stay flat (`rate_limit` in TOML, `LOGSTREAM_RATE_LIMIT`,
//! `--set rate_limit=…`): a group is only where the code keeps them, beside the other keys of
//! its subsystem.

use std::path::PathBuf;

/// Declare a group of configuration keys:
///
/// ```ignore
/// config_group! {
///     /// What the group is for.
///     pub struct DeliveryConfig {
///         /// Logs per second delivered to one client.
///         rate_limit: u32 = 100, positive;
///     }
/// }
/// ```
///
/// gives the struct (serde, every field defaulted), its `Default`, `KEYS` (the keys in
/// declaration order) and `validate()` (each key's check, failing with a message that names
/// the key). A key is one line here plus its row in the README's configuration table.
macro_rules! config_group {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $key:ident : $ty:ty = $default:expr $(, $check:expr)? ;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(default)]
        pub struct $name {
            $(
                $(#[$field_meta])*
                #[serde(skip_serializing_if = "crate::config::group::Unset::is_unset")]
                pub $key: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $key: $default, )* }
            }
        }

        impl $name {
            /// This group's keys, in declaration order.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];

            /// Each key's check; the first that fails names its key.
            pub fn validate(&self) -> Result<(), String> {
                $($(
                    ($check)(&self.$key)
                        .map_err(|why| format!("config key `{}` {why}", stringify!($key)))?;
                )?)*
                Ok(())
            }
        }
    };
}

pub(crate) use config_group;

/// Whether a value is left out of a serialized configuration (an unset optional key: TOML
/// has no null).
pub trait Unset {
    fn is_unset(&self) -> bool {
        false
    }
}

impl<T> Unset for Option<T> {
    fn is_unset(&self) -> bool {
        self.is_none()
    }
}

impl Unset for bool {}
impl Unset for u16 {}
impl Unset for u32 {}
impl Unset for u64 {}
impl Unset for usize {}
impl Unset for String {}
impl Unset for PathBuf {}
impl<T> Unset for Vec<T> {}

/// A whole number a check can compare.
pub trait Number: Copy {
    fn value(self) -> u64;
}

impl Number for u16 {
    fn value(self) -> u64 {
        u64::from(self)
    }
}
impl Number for u32 {
    fn value(self) -> u64 {
        u64::from(self)
    }
}
impl Number for u64 {
    fn value(self) -> u64 {
        self
    }
}
impl Number for usize {
    fn value(self) -> u64 {
        self as u64
    }
}

pub type Check = Result<(), String>;

/// Greater than 0.
pub fn positive<N: Number>(v: &N) -> Check {
    if v.value() == 0 {
        return Err("must be greater than 0".into());
    }
    Ok(())
}

/// Between `low` and `high`, both included; `why` says what the bounds protect.
pub fn between<N: Number>(low: u64, high: u64, why: &'static str) -> impl Fn(&N) -> Check {
    move |v| {
        if (low..=high).contains(&v.value()) {
            return Ok(());
        }
        Err(format!("must be between {low} and {high}{why}"))
    }
}

/// At most `high`.
pub fn at_most<N: Number>(high: u64) -> impl Fn(&N) -> Check {
    move |v| {
        if v.value() <= high {
            return Ok(());
        }
        Err(format!("must be at most {high}"))
    }
}

/// Not empty text.
pub fn non_empty(v: &str) -> Check {
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(())
}

/// Unset, or not empty.
pub fn unset_or_non_empty(v: &Option<String>) -> Check {
    match v {
        Some(s) if s.is_empty() => Err("must not be empty".into()),
        _ => Ok(()),
    }
}

/// One of `choices`.
pub fn one_of(choices: &'static [&'static str]) -> impl Fn(&str) -> Check {
    move |v| {
        if choices.contains(&v) {
            return Ok(());
        }
        let quoted: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
        Err(format!("must be {}", quoted.join(" or ")))
    }
}

/// `$XDG_<var>/logstream`, else `$HOME/<under_home>/logstream`, else empty (none).
pub fn xdg_dir(var: &str, under_home: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(under_home)))
        .map(|d| d.join("logstream"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    config_group! {
        /// A group for the tests.
        pub struct Sample {
            /// Must be set.
            count: u32 = 1, positive;
            /// Bounded.
            window_ms: u64 = 100, between(10, 1000, " (a window)");
            /// Unchecked.
            name: Option<String> = None;
        }
    }

    #[test]
    fn a_group_lists_defaults_and_checks_its_keys() {
        assert_eq!(Sample::KEYS, ["count", "window_ms", "name"]);
        let mut s = Sample::default();
        assert_eq!((s.count, s.window_ms, s.name.clone()), (1, 100, None));
        s.validate().unwrap();
        s.window_ms = 5;
        assert_eq!(
            s.validate().unwrap_err(),
            "config key `window_ms` must be between 10 and 1000 (a window)"
        );
        s.window_ms = 10;
        s.count = 0;
        assert_eq!(
            s.validate().unwrap_err(),
            "config key `count` must be greater than 0"
        );
        // An unset optional key is left out of the serialized form (TOML has no null).
        let table = toml::Table::try_from(Sample::default()).unwrap();
        assert!(table.contains_key("count") && !table.contains_key("name"));
    }
}
