//! History: what was accepted recently, kept so that a client can ask for what it missed
//! (`since`), for the last few logs (`tail`), or resume a session after a reconnect.
//!
//! Every accepted log gets a [`Position`] in one history and an offset text
//! `"<epoch>:<major>-<minor>"`. The epoch names the history: kept on disk with the history on
//! the embedded bus ([`disk`]; a new one for each process start when the history is only in
//! memory), one per Redis stream (kept in Redis) with Redis. An offset from another epoch, or
//! older than what is kept, cannot be replayed exactly: the client is told
//! (`recovered: false`), never given a wrong replay.
//!
//! The router reads the history through a [`store::History`]: a [`ring::Ring`] it owns
//! (appended as logs pass through), alone or as the cache in front of the files of [`disk`];
//! replays read it in bounded slices.

pub mod disk;
pub mod ring;
pub mod store;

use crate::log_entry::Position;

/// Limits of the kept history.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub max_logs: usize,
    pub max_bytes: usize,
    pub max_age: std::time::Duration,
}

impl From<&crate::config::HistoryConfig> for HistoryLimits {
    fn from(config: &crate::config::HistoryConfig) -> HistoryLimits {
        HistoryLimits {
            max_logs: config.history_max_logs,
            max_bytes: config.history_max_bytes,
            max_age: std::time::Duration::from_secs(config.history_max_age_s),
        }
    }
}

/// A fresh epoch for an embedded history: 8 random hex digits.
pub fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Whether `text` has the shape of an offset: `<hex epoch>:<digits>-<digits>`.
pub fn is_offset(text: &str) -> bool {
    parse(text).is_some()
}

/// `(epoch, position)` of an offset text.
pub fn parse(text: &str) -> Option<(&str, Position)> {
    let (epoch, rest) = text.split_once(':')?;
    let (major, minor) = rest.split_once('-')?;
    let hex = |s: &str| !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !hex(epoch) || !digits(major) || !digits(minor) {
        return None;
    }
    Some((
        epoch,
        Position {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_entry::Stamp;

    #[test]
    fn offsets_round_trip_and_bad_ones_are_refused() {
        let stamp = Stamp::new(
            "1a2b",
            Position {
                major: 17,
                minor: 3,
            },
        );
        let text: String = serde_json::from_str(stamp.offset.get()).unwrap();
        assert_eq!(text, "1a2b:17-3");
        assert_eq!(
            parse(&text),
            Some((
                "1a2b",
                Position {
                    major: 17,
                    minor: 3
                }
            ))
        );
        for bad in [
            "",
            "x:1-2",
            "1a2b:1",
            "1a2b:-2",
            "1a2b:1-x",
            ":1-2",
            "1a2b:1-2-3",
        ] {
            assert!(!is_offset(bad), "{bad}");
        }
        assert!(
            Position { major: 2, minor: 0 } > Position { major: 1, minor: 9 },
            "ordered like ingest"
        );
    }
}
