//! One typed configuration, assembled in layers: built-in defaults, then a TOML file, then
//! `LOGSTREAM_*` environment variables, then command-line flags. Later layers win.
//!
//! Every knob is a flat key. The TOML key, the environment variable and `--set KEY=VALUE`
//! all use the same name (`rate_limit` ⇔ `LOGSTREAM_RATE_LIMIT`), so one table in the README
//! documents all three. [`Config::validate`] rejects nonsense at start-up with a message that
//! names the key, rather than failing later on the hot path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One `[[ingest_keys]]` entry: a named ingest key limited to some devices. (Checked, with
/// the device scopes, when the server puts them in force: see `auth::Access`.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IngestKeyConfig {
    /// Who this key is, in logs and the audit trail.
    pub name: String,
    /// SHA-256 of the key, lower-case hex.
    pub key_sha256: String,
    /// Device patterns the key may write.
    pub devices: Vec<String>,
}

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
    /// Key for `GET /metrics` only (`Authorization: Bearer` or `X-API-Key`), for a Prometheus
    /// scraper that should not hold the admin key. Unset: the admin key or an admin token.
    pub metrics_key: Option<String>,
    /// OTLP log ingest (`POST /v1/logs`): the resource attributes that give a record's
    /// `deviceId`, the first present wins.
    pub otlp_device_attributes: Vec<String>,
    /// OTLP log ingest: the log attribute that gives a record's `tags`.
    pub otlp_tags_attribute: String,
    /// Named ingest keys, each limited to the devices its patterns match (stored hashed).
    pub ingest_keys: Vec<IngestKeyConfig>,
    /// Device patterns of a token without a `devices` claim; `[]` = deny by default.
    pub default_device_scope: Vec<String>,
    /// How long before its token expires a connection receives `auth:expired`.
    pub auth_expiry_notice_ms: u64,

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
    /// Bytes of logs held for a paused client (with `pause_buffer`, whichever is hit first).
    pub pause_buffer_bytes: usize,
    /// Packets queued for one socket before a slow client's overflow is dropped and reported.
    pub socket_queue: usize,
    /// Bytes queued for one socket (sent to it, not yet written to the network) before a slow
    /// client's overflow is dropped and reported (with `socket_queue`, whichever is hit first).
    pub socket_queue_bytes: usize,
    /// Bytes queued in the socket queues of all clients of this instance together; past it,
    /// logs for any client are dropped as `slow_consumer`.
    pub max_queued_bytes: usize,
    /// A client that stays over its socket queue bound this long is disconnected.
    pub slow_consumer_timeout_ms: u64,
    /// Connections from one IP address that have not (yet) authenticated; more are closed
    /// at once.
    pub max_unauthenticated_per_ip: usize,
    /// Bytes a Socket.IO connection may send before it has authenticated; more closes it.
    pub max_unauthenticated_bytes: usize,
    /// A connection that has not authenticated within this time is closed.
    pub unauthenticated_timeout_ms: u64,

    /// Most logs in one `log:batch` message, and in one plugin call.
    pub batch_max_logs: usize,
    /// Most logs the router evaluates (and hands to clients) at once when ingest is backed
    /// up; an idle router evaluates whatever has arrived.
    pub evaluation_batch_max_logs: usize,
    /// A `batch: true` client gets a `log:batch` at most once per this window (unless
    /// `batch_max_logs` are waiting, or a log has waited 4/5 of it since it was received,
    /// and then not within half a window of the last); the first after a quiet window goes
    /// out at once.
    pub batch_max_delay_ms: u64,
    /// Ingest requests queued ahead of the router; past it ingest answers 503.
    pub ingest_queue: usize,

    /// Most logs kept in history (for `since`, `tail` and resumed sessions).
    pub history_max_logs: usize,
    /// Most bytes of logs kept in history.
    pub history_max_bytes: usize,
    /// Oldest log kept in history, in seconds.
    pub history_max_age_s: u64,
    /// Largest subscription, in bytes of its params and transform chain (its cost).
    pub max_subscription_bytes: usize,
    /// Most subscription bytes one user (`sub`) may hold across all its connections.
    pub max_user_subscription_bytes: usize,
    /// Most logs one replay (`since`, a resumed session) sends; past it `recovered: false`.
    pub replay_max_logs: usize,
    /// Largest `tail` a subscription may ask for.
    pub tail_max: usize,
    /// How long a resumable subscription's session outlives its connection.
    pub session_ttl_ms: u64,

    /// Period of the `system:stats` event.
    pub stats_interval_ms: u64,
    /// How long a graceful shutdown may take before the process exits anyway.
    pub shutdown_timeout_ms: u64,

    /// Directory of plugins (`*.wasm`, named by file stem). Relative paths given in a config
    /// file are relative to that file.
    pub plugins_dir: PathBuf,
    /// Follow symbolic links in the plugins directory (off: a link is refused, so the server
    /// never reads a file an operator did not put there).
    pub plugins_follow_symlinks: bool,
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
    /// Redis Stream holding every accepted log (the cluster's history and durable bus).
    pub redis_stream: String,
    /// This instance's name in cluster views; empty = generated at start.
    pub instance_id: String,

    /// Where state that must survive restarts is kept (development keys); empty = nowhere.
    pub data_dir: PathBuf,
    /// `text` (human, coloured on a terminal) or `json` (one object per line) for the
    /// server's own log on stderr.
    pub log_format: String,
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
            metrics_key: None,
            otlp_device_attributes: vec![
                "device.id".into(),
                "host.name".into(),
                "service.name".into(),
            ],
            otlp_tags_attribute: "tags".into(),
            ingest_keys: Vec::new(),
            default_device_scope: vec!["*".into()],
            auth_expiry_notice_ms: 5000,
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
            pause_buffer_bytes: 8 << 20,
            socket_queue: 1024,
            socket_queue_bytes: 4 << 20,
            max_queued_bytes: 256 << 20,
            slow_consumer_timeout_ms: 10_000,
            max_unauthenticated_per_ip: 64,
            max_unauthenticated_bytes: 64 << 10,
            unauthenticated_timeout_ms: 30_000,
            batch_max_logs: 50,
            evaluation_batch_max_logs: 256,
            batch_max_delay_ms: 100,
            ingest_queue: 1024,
            history_max_logs: 100_000,
            history_max_bytes: 64 << 20,
            history_max_age_s: 3600,
            replay_max_logs: 10_000,
            max_subscription_bytes: 64 << 10,
            max_user_subscription_bytes: 256 << 10,
            tail_max: 1000,
            session_ttl_ms: 120_000,
            stats_interval_ms: 5000,
            shutdown_timeout_ms: 5000,
            plugins_dir: PathBuf::from("./plugins"),
            plugins_follow_symlinks: false,
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
            redis_stream: "logstream:logs".into(),
            instance_id: String::new(),
            data_dir: default_data_dir(),
            log_format: "text".into(),
        }
    }
}

impl Config {
    /// Defaults, then `file` (or `LOGSTREAM_CONFIG`), then the environment, then `overrides`
    /// (`key=value` pairs from the command line).
    pub fn load(file: Option<&Path>, overrides: &[(String, String)]) -> anyhow::Result<Config> {
        let mut table = toml::Table::try_from(Config::default())?;
        // Where each key's value came from, to name it in errors.
        let mut origins: HashMap<String, String> = HashMap::new();
        let env_file = std::env::var_os(format!("{ENV_PREFIX}CONFIG")).map(PathBuf::from);
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let from_file: toml::Table = text
                .parse()
                .with_context(|| format!("parsing config file {}", path.display()))?;
            let base = path.parent().unwrap_or(Path::new("."));
            for (key, mut value) in from_file {
                if let Some(closest) = unknown_key(&key) {
                    bail!(
                        "config file {}: unknown key `{key}`{closest}",
                        path.display()
                    );
                }
                // Paths in a file are relative to the file, not to wherever the server starts.
                if RELATIVE_TO_FILE.contains(&key.as_str())
                    && let toml::Value::String(p) = &value
                    && Path::new(p).is_relative()
                {
                    value = toml::Value::String(base.join(p).display().to_string());
                }
                origins.insert(key.clone(), format!("config file {}", path.display()));
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
            origins.insert(key.clone(), format!("{origin}={raw:?}"));
            table.insert(key, value);
        }
        let config: Config = match table.clone().try_into() {
            Ok(c) => c,
            Err(e) => return Err(explain(&table, &origins, e)),
        };
        config.validate()?;
        Ok(config)
    }

    /// `LOGSTREAM_*` variables that are not configuration keys (most likely typos), each with
    /// the closest key. The caller logs them once logging is set up.
    pub fn unknown_env_warnings() -> Vec<String> {
        let mut warnings = Vec::new();
        for (var, _) in std::env::vars_os() {
            let Some(var) = var.to_str() else { continue };
            let Some(key) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // Variables of this project's own tools and build, not configuration.
            if matches!(
                key,
                "CONFIG"
                    | "BUILT_PLUGINS"
                    | "TEST_PLUGINS_DIR"
                    | "BIN"
                    | "PUBSUB_BIN"
                    | "SERVER"
                    | "TOKEN"
            ) {
                continue;
            }
            let key = key.to_lowercase();
            if Config::keys().contains(&key) {
                continue;
            }
            let hint = closest_key(&key)
                .map(|k| format!("; did you mean {ENV_PREFIX}{}?", k.to_uppercase()))
                .unwrap_or_default();
            warnings.push(format!(
                "environment variable {var} is not a configuration key and is ignored{hint}"
            ));
        }
        warnings.sort();
        warnings
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
            "metrics_key",
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
        let positive: [(&str, u64); 28] = [
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
            ("socket_queue_bytes", self.socket_queue_bytes as u64),
            ("max_queued_bytes", self.max_queued_bytes as u64),
            ("pause_buffer_bytes", self.pause_buffer_bytes as u64),
            ("slow_consumer_timeout_ms", self.slow_consumer_timeout_ms),
            (
                "max_unauthenticated_per_ip",
                self.max_unauthenticated_per_ip as u64,
            ),
            (
                "max_unauthenticated_bytes",
                self.max_unauthenticated_bytes as u64,
            ),
            (
                "unauthenticated_timeout_ms",
                self.unauthenticated_timeout_ms,
            ),
            ("batch_max_logs", self.batch_max_logs as u64),
            (
                "evaluation_batch_max_logs",
                self.evaluation_batch_max_logs as u64,
            ),
            ("ingest_queue", self.ingest_queue as u64),
            ("stats_interval_ms", self.stats_interval_ms),
            ("plugin_timeout_ms", self.plugin_timeout_ms),
            ("history_max_logs", self.history_max_logs as u64),
            ("history_max_bytes", self.history_max_bytes as u64),
            ("history_max_age_s", self.history_max_age_s),
            ("replay_max_logs", self.replay_max_logs as u64),
            ("max_subscription_bytes", self.max_subscription_bytes as u64),
            (
                "max_user_subscription_bytes",
                self.max_user_subscription_bytes as u64,
            ),
            ("tail_max", self.tail_max as u64),
            ("session_ttl_ms", self.session_ttl_ms),
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
            ("redis_stream", &self.redis_stream),
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
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!("config key `log_format` must be \"text\" or \"json\"");
        }
        if self.plugin_memory_mb == 0 || self.plugin_memory_mb > 4096 {
            bail!("config key `plugin_memory_mb` must be between 1 and 4096");
        }
        if self.batch_max_delay_ms > 60_000 {
            bail!("config key `batch_max_delay_ms` must be at most 60000");
        }
        if !(100..=86_400_000).contains(&self.stats_interval_ms) {
            bail!(
                "config key `stats_interval_ms` must be between 100 and 86400000 (a day): every client gets a message each interval"
            );
        }
        if self.evaluation_batch_max_logs > 65_536 {
            bail!("config key `evaluation_batch_max_logs` must be between 1 and 65536");
        }
        if matches!(&self.jwt_secret, Some(s) if s.len() < 16) {
            bail!("config key `jwt_secret` must be at least 16 bytes long");
        }
        for (key, value) in [
            ("api_key", &self.api_key),
            ("admin_key", &self.admin_key),
            ("metrics_key", &self.metrics_key),
        ] {
            if matches!(value, Some(v) if v.is_empty()) {
                bail!("config key `{key}` must not be empty");
            }
        }
        Ok(())
    }
}

/// Keys whose relative paths, given in a config file, are relative to that file.
const RELATIVE_TO_FILE: [&str; 2] = ["plugins_dir", "jwt_public_key"];

/// `$XDG_CACHE_HOME/logstream`, else `$HOME/.cache/logstream`, else none: a directory only
/// this user can write, since cached artifacts are native code.
fn default_cache_dir() -> PathBuf {
    xdg_dir("XDG_CACHE_HOME", ".cache")
}

/// `$XDG_STATE_HOME/logstream`, else `$HOME/.local/state/logstream`, else none.
fn default_data_dir() -> PathBuf {
    xdg_dir("XDG_STATE_HOME", ".local/state")
}

fn xdg_dir(var: &str, under_home: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(under_home)))
        .map(|d| d.join("logstream"))
        .unwrap_or_default()
}

/// `None` if `key` is a configuration key, else a hint naming the closest one.
fn unknown_key(key: &str) -> Option<String> {
    if Config::keys().iter().any(|k| k == key) {
        return None;
    }
    Some(
        closest_key(key)
            .map(|k| format!("; did you mean `{k}`?"))
            .unwrap_or_default(),
    )
}

/// The configuration key nearest to `key`, if any is near.
fn closest_key(key: &str) -> Option<String> {
    Config::keys()
        .into_iter()
        .map(|k| (edit_distance(&k, key), k))
        .min()
        .filter(|(d, _)| *d <= 3 || key.len() > 6 && *d <= key.len() / 3)
        .map(|(_, k)| k)
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The configuration did not deserialize: find the key at fault and say what it expects, in
/// words and naming where the value came from (rather than serde's "expected u32").
fn explain(
    table: &toml::Table,
    origins: &HashMap<String, String>,
    error: toml::de::Error,
) -> anyhow::Error {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    for (key, value) in table {
        let mut single = defaults.clone();
        single.insert(key.clone(), value.clone());
        if let Err(e) = single.try_into::<Config>() {
            let origin = origins
                .get(key)
                .cloned()
                .unwrap_or_else(|| format!("config key `{key}`"));
            return anyhow::anyhow!("{origin}: `{key}` must be {}", expected(&e.to_string()));
        }
    }
    anyhow::anyhow!("invalid configuration: {error}")
}

/// serde's expectation in words.
fn expected(serde_message: &str) -> &'static str {
    let after = serde_message
        .split("expected ")
        .nth(1)
        .unwrap_or_default()
        .trim();
    match after.split_whitespace().next().unwrap_or_default() {
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number, 0 or more",
        "a" if after.contains("boolean") => "true or false",
        "a" if after.contains("string") => "text",
        "a" if after.contains("sequence") => "a list",
        _ => "a value of another kind (see the README's configuration table)",
    }
}

/// Turn an environment / flag string into the TOML value the key's type expects.
fn coerce(key: &str, raw: &str) -> anyhow::Result<toml::Value> {
    if key == "ingest_keys" {
        // A list of tables: JSON in the environment and on the command line.
        let value: serde_json::Value = serde_json::from_str(raw).with_context(
            || "`ingest_keys` expects a JSON array of {name, key_sha256, devices} objects",
        )?;
        return Ok(toml::Value::try_from(value)?);
    }
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
        assert_eq!(c.evaluation_batch_max_logs, 256);
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
        // The stats rounds' clock adds intervals to instants (a day at most), and every
        // client gets a message each interval (a tenth of a second at least).
        for bad in [u64::MAX.to_string(), "99".into()] {
            let err = Config::load(None, &[("stats_interval_ms".into(), bad)]).unwrap_err();
            assert!(format!("{err:#}").contains("stats_interval_ms"), "{err:#}");
        }
        let err = Config::load(None, &[("rate_limit".into(), "-1".into())]).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("--set rate_limit")
                && text.contains("whole number")
                && !text.contains("u32"),
            "{text}"
        );
    }

    #[test]
    fn typos_get_the_closest_key() {
        assert_eq!(unknown_key("rate_limit"), None);
        assert_eq!(
            unknown_key("rate_limt").as_deref(),
            Some("; did you mean `rate_limit`?")
        );
        assert_eq!(unknown_key("zzzzzzzzzzzzzzzzzz").as_deref(), Some(""));
    }

    #[test]
    fn paths_in_a_config_file_are_relative_to_it() {
        let dir = std::env::temp_dir().join(format!("logstream-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("logstream.toml");
        std::fs::write(&file, "plugins_dir = \"my-plugins\"\nrate_limit = 7\n").unwrap();
        let c = Config::load(Some(&file), &[]).unwrap();
        assert_eq!(c.plugins_dir, dir.join("my-plugins"));
        assert_eq!(c.rate_limit, 7);
        std::fs::write(&file, "rate_limt = 7\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&file), &[]).unwrap_err());
        assert!(err.contains("did you mean `rate_limit`"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_key_is_documented_in_the_readme() {
        let readme = include_str!("../README.md");
        for key in Config::keys() {
            assert!(readme.contains(&format!("`{key}`")), "README lacks `{key}`");
        }
    }
}
