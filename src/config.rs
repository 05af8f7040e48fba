//! One typed configuration, assembled in layers: built-in defaults, then a TOML file, then
//! `LOGSTREAM_*` environment variables, then command-line flags. Later layers win.
//!
//! Every knob is a flat key. The TOML key, the environment variable and `--set KEY=VALUE`
//! all use the same name (`rate_limit` ⇔ `LOGSTREAM_RATE_LIMIT`), so one table in the README
//! documents all three. [`Config::validate`] rejects nonsense at start-up with a message that
//! names the key, rather than failing later on the hot path.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Environment variables are `LOGSTREAM_` + the upper-cased key.
pub const ENV_PREFIX: &str = "LOGSTREAM_";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to bind.
    pub host: String,
    /// One port serves Socket.IO and the REST API.
    pub port: u16,

    /// HS256 secret for client JWTs. Unset (and no public key) = development mode: a random
    /// secret is generated and a ready-to-use token is printed.
    pub jwt_secret: Option<String>,
    /// Path to a PEM public key (RSA or EC P-256) accepting RS256 / ES256 tokens.
    pub jwt_public_key: Option<PathBuf>,
    /// Key for `POST /api/logs` and device status (`X-API-Key`). Generated when unset.
    pub api_key: Option<String>,
    /// Key for the admin REST API under `/api/ws` (`X-API-Key`). Generated when unset.
    pub admin_key: Option<String>,

    /// Socket.IO connections accepted by this instance.
    pub max_connections: usize,
    /// Connections one user (JWT `sub`) may hold at once.
    pub max_connections_per_user: usize,
    /// Largest Socket.IO message a client may send, in bytes.
    pub max_message_bytes: u64,
    /// Largest HTTP request body, in bytes (ingest answers 413 past it).
    pub max_body_bytes: usize,
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    /// Allowed CORS origins; empty = any origin.
    pub cors_origins: Vec<String>,

    /// Logs per second delivered to one client; a subscription may ask for less.
    pub rate_limit: u32,
    /// Client → server events per second one socket may send (burst: twice that).
    pub events_per_second: u32,
    /// Logs held for a paused client before the overflow is dropped and reported.
    pub pause_buffer: usize,
    /// Packets queued for one socket before a slow client's overflow is dropped and reported.
    pub socket_queue: usize,

    /// Most logs in one evaluation batch and in one `log:batch` message.
    pub batch_max_logs: usize,
    /// A `batch: true` client gets at most one `log:batch` per this window (unless
    /// `batch_max_logs` are waiting); the first after a quiet window goes out at once.
    pub batch_max_delay_ms: u64,
    /// Ingest requests queued ahead of the router; past it ingest answers 503.
    pub ingest_queue: usize,

    /// Period of the `system:stats` event.
    pub stats_interval_ms: u64,
    /// How long a graceful shutdown may take before the process exits anyway.
    pub shutdown_timeout_ms: u64,

    /// Directory of filter plugins (`*.wasm`, named by file stem).
    pub plugins_dir: PathBuf,
    /// CPU budget of one plugin call, in milliseconds (epoch deadline).
    pub plugin_timeout_ms: u64,
    /// Linear memory one plugin instance may grow to, in MiB.
    pub plugin_memory_mb: u64,
    /// Consecutive failures after which a plugin is disabled.
    pub plugin_max_failures: u32,
    /// `host.log` lines per second one plugin may write; the rest are counted and dropped.
    pub plugin_log_per_second: u32,
    /// Largest answer one plugin call may return (filter indices at 4 bytes each, transform
    /// entries by their text); a larger one is a failure of that call.
    pub plugin_max_output_bytes: usize,
    /// Where compiled plugins are cached (keyed by content and engine); empty = no cache.
    pub plugin_cache_dir: PathBuf,

    /// Redis URL; unset = embedded in-process bus.
    pub redis_url: Option<String>,
    /// Channel carrying log entries (a JSON object or array), as the seed publishes them.
    pub redis_log_channel: String,
    /// Channel carrying `{ deviceId, status }`.
    pub redis_status_channel: String,
    /// Channel for cluster-wide admin operations between logstream instances.
    pub redis_admin_channel: String,
    /// This instance's name in cluster views; empty = generated at start.
    pub instance_id: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "0.0.0.0".into(),
            port: 3000,
            jwt_secret: None,
            jwt_public_key: None,
            api_key: None,
            admin_key: None,
            max_connections: 10_000,
            max_connections_per_user: 100,
            max_message_bytes: 1_000_000,
            max_body_bytes: 1_000_000,
            ping_interval_ms: 25_000,
            ping_timeout_ms: 60_000,
            cors_origins: Vec::new(),
            rate_limit: 100,
            events_per_second: 20,
            pause_buffer: 1000,
            socket_queue: 1024,
            batch_max_logs: 50,
            batch_max_delay_ms: 100,
            ingest_queue: 1024,
            stats_interval_ms: 5000,
            shutdown_timeout_ms: 5000,
            plugins_dir: PathBuf::from("./plugins"),
            plugin_timeout_ms: 50,
            plugin_memory_mb: 64,
            plugin_max_failures: 3,
            plugin_log_per_second: 20,
            plugin_max_output_bytes: 16 << 20,
            plugin_cache_dir: default_cache_dir(),
            redis_url: None,
            redis_log_channel: "log:new".into(),
            redis_status_channel: "device:status".into(),
            redis_admin_channel: "logstream:admin".into(),
            instance_id: String::new(),
        }
    }
}

impl Config {
    /// Defaults, then `file` (or `LOGSTREAM_CONFIG`), then the environment, then `overrides`
    /// (`key=value` pairs from the command line).
    pub fn load(file: Option<&Path>, overrides: &[(String, String)]) -> anyhow::Result<Config> {
        let mut table = toml::Table::try_from(Config::default())?;
        let env_file = std::env::var_os(format!("{ENV_PREFIX}CONFIG")).map(PathBuf::from);
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let from_file: toml::Table = text
                .parse()
                .with_context(|| format!("parsing config file {}", path.display()))?;
            for (key, value) in from_file {
                table.insert(key, value);
            }
        }
        let mut layered: Vec<(String, String, String)> = Vec::new();
        for key in Config::keys() {
            let var = format!("{ENV_PREFIX}{}", key.to_uppercase());
            if let Ok(value) = std::env::var(&var) {
                layered.push((key.clone(), value, var));
            }
        }
        for (key, value) in overrides {
            layered.push((key.clone(), value.clone(), format!("--set {key}")));
        }
        for (key, raw, origin) in layered {
            let value = coerce(&key, &raw).with_context(|| format!("{origin}={raw:?}"))?;
            table.insert(key, value);
        }
        let config: Config = table
            .try_into()
            .context("configuration has an unknown key or a value of the wrong type")?;
        config.validate()?;
        Ok(config)
    }

    /// Every configuration key, in declaration order.
    pub fn keys() -> Vec<String> {
        let table = toml::Table::try_from(Config::default()).unwrap_or_default();
        let mut keys: Vec<String> = table.keys().cloned().collect();
        // Optional keys are absent from a serialized default; list them too.
        for k in [
            "jwt_secret",
            "jwt_public_key",
            "api_key",
            "admin_key",
            "redis_url",
        ] {
            if !keys.iter().any(|x| x == k) {
                keys.push(k.to_owned());
            }
        }
        keys
    }

    /// Reject values that cannot work, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive: [(&str, u64); 12] = [
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_user",
                self.max_connections_per_user as u64,
            ),
            ("max_message_bytes", self.max_message_bytes),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("rate_limit", self.rate_limit as u64),
            ("events_per_second", self.events_per_second as u64),
            ("socket_queue", self.socket_queue as u64),
            ("batch_max_logs", self.batch_max_logs as u64),
            ("ingest_queue", self.ingest_queue as u64),
            ("stats_interval_ms", self.stats_interval_ms),
            ("plugin_timeout_ms", self.plugin_timeout_ms),
            (
                "plugin_max_output_bytes",
                self.plugin_max_output_bytes as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("config key `{key}` must be greater than 0");
            }
        }
        if self.ping_interval_ms == 0 || self.ping_timeout_ms == 0 {
            bail!("config keys `ping_interval_ms` and `ping_timeout_ms` must be greater than 0");
        }
        for (key, value) in [
            ("redis_log_channel", &self.redis_log_channel),
            ("redis_status_channel", &self.redis_status_channel),
            ("redis_admin_channel", &self.redis_admin_channel),
        ] {
            if value.is_empty() {
                bail!("config key `{key}` must not be empty");
            }
        }
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
        {
            bail!("config key `redis_url` must start with redis://, rediss:// or unix://");
        }
        if self.plugin_memory_mb == 0 || self.plugin_memory_mb > 4096 {
            bail!("config key `plugin_memory_mb` must be between 1 and 4096");
        }
        if matches!(&self.jwt_secret, Some(s) if s.len() < 16) {
            bail!("config key `jwt_secret` must be at least 16 bytes long");
        }
        for (key, value) in [("api_key", &self.api_key), ("admin_key", &self.admin_key)] {
            if matches!(value, Some(v) if v.is_empty()) {
                bail!("config key `{key}` must not be empty");
            }
        }
        Ok(())
    }
}

/// `$XDG_CACHE_HOME/logstream`, else `$HOME/.cache/logstream`, else none: a directory only
/// this user can write, since cached artifacts are native code.
fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("logstream"))
        .unwrap_or_default()
}

/// Turn an environment / flag string into the TOML value the key's type expects.
fn coerce(key: &str, raw: &str) -> anyhow::Result<toml::Value> {
    let defaults = toml::Table::try_from(Config::default())?;
    Ok(match defaults.get(key) {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            raw.trim()
                .parse()
                .with_context(|| format!("`{key}` expects a whole number"))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
            raw.trim()
                .parse()
                .with_context(|| format!("`{key}` expects true or false"))?,
        ),
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        Some(_) => toml::Value::String(raw.to_owned()),
        None if Config::keys().iter().any(|k| k == key) => toml::Value::String(raw.to_owned()),
        None => bail!("unknown configuration key `{key}`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds() {
        let c = Config::default();
        assert_eq!(
            (c.port, c.max_connections, c.rate_limit),
            (3000, 10_000, 100)
        );
        assert_eq!((c.batch_max_logs, c.batch_max_delay_ms), (50, 100));
        assert_eq!((c.ping_interval_ms, c.ping_timeout_ms), (25_000, 60_000));
        c.validate().unwrap();
    }

    #[test]
    fn overrides_are_typed_and_named() {
        let c = Config::load(
            None,
            &[
                ("port".into(), "4000".into()),
                ("cors_origins".into(), "http://a, http://b".into()),
                ("redis_url".into(), "redis://x".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.port, 4000);
        assert_eq!(c.cors_origins, vec!["http://a", "http://b"]);
        assert_eq!(c.redis_url.as_deref(), Some("redis://x"));
        let err = Config::load(None, &[("port".into(), "many".into())]).unwrap_err();
        assert!(format!("{err:#}").contains("port"), "{err:#}");
        let err = Config::load(None, &[("colour".into(), "red".into())]).unwrap_err();
        assert!(format!("{err:#}").contains("colour"), "{err:#}");
        let err = Config::load(None, &[("rate_limit".into(), "0".into())]).unwrap_err();
        assert!(format!("{err:#}").contains("rate_limit"), "{err:#}");
    }

    #[test]
    fn every_key_is_documented_in_the_readme() {
        let readme = include_str!("../README.md");
        for key in Config::keys() {
            assert!(readme.contains(&format!("`{key}`")), "README lacks `{key}`");
        }
    }
}
