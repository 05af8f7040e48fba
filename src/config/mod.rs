//! One typed configuration, assembled in layers: built-in defaults, then a TOML file, then
//! `LOGSTREAM_*` environment variables, then command-line flags. Later layers win.
//!
//! Every knob is a flat key. The TOML key, the environment variable and `--set KEY=VALUE`
//! all use the same name (`rate_limit` ⇔ `LOGSTREAM_RATE_LIMIT`), so one table in the README
//! documents all three. In the code the keys live in groups, one per subsystem, each declared
//! with its defaults and checks in one place ([`group::config_group!`]): adding a key is one
//! line in its group plus its README row. [`Config::validate`] rejects nonsense at start-up
//! with a message that names the key, rather than failing later on the hot path.

pub mod auth;
pub mod delivery;
pub mod edge;
pub mod group;
pub mod history;
pub mod ingest;
pub mod plugins;
pub mod redis;
pub mod routing;
pub mod server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

pub use auth::{AuthConfig, IngestKeyConfig};
pub use delivery::DeliveryConfig;
pub use edge::EdgeConfig;
pub use history::{Fsync, HistoryConfig};
pub use ingest::IngestConfig;
pub use plugins::PluginsConfig;
pub use redis::RedisConfig;
pub use routing::RoutingConfig;
pub use server::ServerConfig;

/// Environment variables are `LOGSTREAM_` + the upper-cased key.
pub const ENV_PREFIX: &str = "LOGSTREAM_";

/// Every key, grouped by the subsystem that uses it; users see the keys flat.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Config {
    #[serde(flatten)]
    pub server: ServerConfig,
    #[serde(flatten)]
    pub auth: AuthConfig,
    #[serde(flatten)]
    pub edge: EdgeConfig,
    #[serde(flatten)]
    pub ingest: IngestConfig,
    #[serde(flatten)]
    pub routing: RoutingConfig,
    #[serde(flatten)]
    pub delivery: DeliveryConfig,
    #[serde(flatten)]
    pub history: HistoryConfig,
    #[serde(flatten)]
    pub plugins: PluginsConfig,
    #[serde(flatten)]
    pub redis: RedisConfig,
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
            // Anything else (a FIFO, a device) could block the read for ever.
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            if !meta.is_file() {
                bail!(
                    "config file {} is not a regular file (a FIFO, a device or a directory cannot be a configuration)",
                    path.display()
                );
            }
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
            if let Some(closest) = unknown_key(key) {
                bail!("--set {key}={value:?}: unknown key `{key}`{closest}");
            }
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
                    | "BEFORE_BIN"
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

    /// Every configuration key, group by group.
    pub fn keys() -> Vec<String> {
        [
            ServerConfig::KEYS,
            AuthConfig::KEYS,
            EdgeConfig::KEYS,
            IngestConfig::KEYS,
            RoutingConfig::KEYS,
            DeliveryConfig::KEYS,
            HistoryConfig::KEYS,
            PluginsConfig::KEYS,
            RedisConfig::KEYS,
        ]
        .concat()
        .into_iter()
        .map(str::to_owned)
        .collect()
    }

    /// Reject values that cannot work, naming the key (each group checks its own).
    pub fn validate(&self) -> anyhow::Result<()> {
        let checks = [
            self.server.validate(),
            self.auth.validate(),
            self.edge.validate(),
            self.ingest.validate(),
            self.routing.validate(),
            self.delivery.validate(),
            self.history.validate(),
            self.plugins.validate(),
            self.redis.validate(),
        ];
        for check in checks {
            check.map_err(anyhow::Error::msg)?;
        }
        if self.edge.tls_cert.is_some() != self.edge.tls_key.is_some() {
            bail!("config keys `tls_cert` and `tls_key` go together: set both, or neither");
        }
        Ok(())
    }
}

/// Keys a SIGHUP puts in force while the server runs; a change to any other key is reported
/// as waiting for a restart.
pub const RELOADABLE: [&str; 6] = [
    "ingest_keys",
    "default_device_scope",
    "tls_cert",
    "tls_key",
    "rate_limit",
    "max_client_rate_limit",
];

impl Config {
    /// The keys whose values differ between `self` and `other`, in key order.
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
            (serde_json::to_value(self), serde_json::to_value(other))
        else {
            return Vec::new();
        };
        Config::keys()
            .into_iter()
            .filter(|k| a.get(k) != b.get(k))
            .collect()
    }

    /// Take the values of the [`RELOADABLE`] keys from `newer` (what a SIGHUP applied);
    /// `tls_cert` and `tls_key` only `with_tls` (the certificate was put in force).
    pub fn take_reloadable(&mut self, newer: &Config, with_tls: bool) {
        self.auth.ingest_keys = newer.auth.ingest_keys.clone();
        self.auth.default_device_scope = newer.auth.default_device_scope.clone();
        if with_tls {
            self.edge.tls_cert = newer.edge.tls_cert.clone();
            self.edge.tls_key = newer.edge.tls_key.clone();
        }
        self.delivery.rate_limit = newer.delivery.rate_limit;
        self.delivery.max_client_rate_limit = newer.delivery.max_client_rate_limit;
    }
}

/// Keys whose relative paths, given in a config file, are relative to that file.
const RELATIVE_TO_FILE: [&str; 5] = [
    "plugins_dir",
    "jwt_public_key",
    "tls_cert",
    "tls_key",
    "history_dir",
];

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
            (c.server.port, c.edge.max_connections, c.delivery.rate_limit),
            (3000, 10_000, 100)
        );
        assert_eq!(
            (c.delivery.batch_max_logs, c.delivery.batch_max_delay_ms),
            (50, 100)
        );
        assert_eq!(c.routing.evaluation_batch_max_logs, 256);
        assert_eq!(
            (c.edge.ping_interval_ms, c.edge.ping_timeout_ms),
            (25_000, 60_000)
        );
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
        assert_eq!(c.server.port, 4000);
        assert_eq!(c.edge.cors_origins, vec!["http://a", "http://b"]);
        assert_eq!(c.redis.redis_url.as_deref(), Some("redis://x"));
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
    fn changed_keys_are_named_and_the_reloadable_ones_taken() {
        let old = Config::default();
        let mut new = Config::default();
        new.server.port = 3099;
        new.delivery.rate_limit = 5;
        new.auth.default_device_scope = vec!["plant-a/*".into()];
        assert_eq!(
            old.changed_keys(&new),
            ["port", "default_device_scope", "rate_limit"]
        );
        new.delivery.max_client_rate_limit = 7;
        new.edge.tls_cert = Some("c.pem".into());
        new.edge.tls_key = Some("k.pem".into());
        new.auth.ingest_keys = vec![IngestKeyConfig {
            name: "a".into(),
            key_sha256: "0".repeat(64),
            devices: vec!["a/*".into()],
        }];
        let mut changed = old.changed_keys(&new);
        changed.sort();
        let mut expected: Vec<String> = RELOADABLE.iter().map(|k| k.to_string()).collect();
        expected.push("port".into());
        expected.sort();
        assert_eq!(changed, expected, "each reloadable key changed");
        let mut in_force = old.clone();
        in_force.take_reloadable(&new, false);
        assert_eq!(
            in_force.changed_keys(&new),
            ["port", "tls_cert", "tls_key"],
            "without TLS in force, the certificate keys wait"
        );
        in_force.take_reloadable(&new, true);
        assert_eq!(in_force.changed_keys(&new), ["port"], "and each taken");
    }

    #[test]
    fn a_mistyped_set_is_refused_with_the_closest_key() {
        let err = Config::load(None, &[("rate_limt".into(), "5".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `rate_limit`"), "{err}");
        let ok = Config::load(None, &[("rate_limit".into(), "5".into())]).unwrap();
        assert_eq!(ok.delivery.rate_limit, 5);
    }

    #[test]
    fn paths_in_a_config_file_are_relative_to_it() {
        let dir = std::env::temp_dir().join(format!("logstream-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("logstream.toml");
        std::fs::write(&file, "plugins_dir = \"my-plugins\"\nrate_limit = 7\n").unwrap();
        let c = Config::load(Some(&file), &[]).unwrap();
        assert_eq!(c.plugins.plugins_dir, dir.join("my-plugins"));
        assert_eq!(c.delivery.rate_limit, 7);
        std::fs::write(&file, "rate_limt = 7\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&file), &[]).unwrap_err());
        assert!(err.contains("did you mean `rate_limit`"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_key_belongs_to_one_group() {
        let keys = Config::keys();
        let unique: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "a key is declared in two groups");
        // What a serialized default holds is what the groups declare (unset keys aside).
        let table = toml::Table::try_from(Config::default()).unwrap();
        for key in table.keys() {
            assert!(keys.contains(key), "`{key}` is serialized but not declared");
        }
    }

    #[test]
    fn every_key_is_documented_in_the_readme() {
        let readme = include_str!("../../README.md");
        for key in Config::keys() {
            assert!(readme.contains(&format!("`{key}`")), "README lacks `{key}`");
        }
    }
}
