//! Development mode: a server started without keys generates them, keeps them in a state
//! file (`<data_dir>/dev-keys.json`, readable by this user only) so that tokens and keys keep
//! working across restarts, and prints ready-to-paste settings. `logstream token` reads the
//! same file, so minting a token needs no copying of secrets by hand.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::auth::random_secret;
use crate::config::Config;

/// The file's name inside `data_dir`.
pub const FILE: &str = "dev-keys.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DevKeys {
    jwt_secret: String,
    api_key: String,
    admin_key: String,
}

impl DevKeys {
    fn random() -> DevKeys {
        DevKeys {
            jwt_secret: random_secret(),
            api_key: random_secret(),
            admin_key: random_secret(),
        }
    }
}

/// Which keys development mode supplied, and where they are kept.
#[derive(Debug, Clone, Default)]
pub struct DevState {
    /// The state file, or `None` when it could not be written (keys live for this run only).
    pub file: Option<PathBuf>,
    /// Whether the file existed before this start.
    pub reused: bool,
    /// Config keys that came from development mode: `jwt_secret`, `api_key`, `admin_key`.
    pub supplied: Vec<&'static str>,
}

impl DevState {
    pub fn active(&self) -> bool {
        !self.supplied.is_empty()
    }
}

fn load_or_create(dir: &Path) -> anyhow::Result<(DevKeys, PathBuf, bool)> {
    let path = dir.join(FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let keys: DevKeys = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a development key file", path.display()))?;
        return Ok((keys, path, true));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let keys = DevKeys::random();
    let text = serde_json::to_string_pretty(&keys)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(text.as_bytes())?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok((keys, path, false))
}

/// Fill the keys `config` leaves unset from the development state file (creating it). A
/// configuration with all keys set is returned unchanged. A JWT secret is only supplied when
/// no public key is configured either.
pub fn fill(mut config: Config) -> (Config, DevState) {
    let wants_secret = config.auth.jwt_secret.is_none() && config.auth.jwt_public_key.is_none();
    if !wants_secret && config.auth.api_key.is_some() && config.auth.admin_key.is_some() {
        return (config, DevState::default());
    }
    let (keys, file, reused) = if config.server.data_dir.as_os_str().is_empty() {
        (DevKeys::random(), None, false)
    } else {
        match load_or_create(&config.server.data_dir) {
            Ok((keys, path, reused)) => (keys, Some(path), reused),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "development keys are not kept across restarts");
                (DevKeys::random(), None, false)
            }
        }
    };
    let mut supplied = Vec::new();
    if wants_secret {
        config.auth.jwt_secret = Some(keys.jwt_secret);
        supplied.push("jwt_secret");
    }
    if config.auth.api_key.is_none() {
        config.auth.api_key = Some(keys.api_key);
        supplied.push("api_key");
    }
    if config.auth.admin_key.is_none() {
        config.auth.admin_key = Some(keys.admin_key);
        supplied.push("admin_key");
    }
    (
        config,
        DevState {
            file,
            reused,
            supplied,
        },
    )
}

/// The start-up banner of development mode: settings to paste, a token, a working request.
pub fn banner(state: &DevState, config: &Config, token: Option<&str>, base_url: &str) -> String {
    let mut out = String::new();
    out.push_str("WARNING: development mode: ");
    match &state.file {
        Some(path) if state.reused => out.push_str(&format!(
            "using the development keys kept in {}\n",
            path.display()
        )),
        Some(path) => out.push_str(&format!(
            "generated development keys and saved them in {} (kept across restarts; delete it for new ones)\n",
            path.display()
        )),
        None => out.push_str("generated keys for this run only\n"),
    }
    out.push_str("Set your own keys for production. To reuse these elsewhere, paste:\n\n");
    let values = [
        ("jwt_secret", config.auth.jwt_secret.as_deref()),
        ("api_key", config.auth.api_key.as_deref()),
        ("admin_key", config.auth.admin_key.as_deref()),
    ];
    for (key, value) in values {
        if state.supplied.contains(&key)
            && let Some(v) = value
        {
            out.push_str(&format!("  export LOGSTREAM_{}={v}\n", key.to_uppercase()));
        }
    }
    out.push('\n');
    out.push_str(&format!(
        "  the page: {base_url}/   (its \"development token\" button works on this address)\n"
    ));
    if let Some(token) = token {
        out.push_str(&format!(
            "  a client token (sub=dev, 24 h), for logstream tail:\n    export LOGSTREAM_TOKEN={token}\n    logstream tail --server {base_url}\n"
        ));
        out.push_str("  more tokens: logstream token --sub alice --ttl 1h\n");
    }
    if let Some(k) = config.auth.api_key.as_deref() {
        out.push_str(&format!(
            "  api key    : {k}   (X-API-Key for POST /api/logs)\n"
        ));
    }
    if let Some(k) = config.auth.admin_key.as_deref() {
        out.push_str(&format!(
            "  admin key  : {k}   (X-API-Key or Authorization: Bearer, for /api/ws/* and /metrics)\n"
        ));
        out.push_str(&format!(
            "  metrics    : curl -H 'Authorization: Bearer {k}' {base_url}/metrics\n"
        ));
    }
    if let Some(k) = config.auth.api_key.as_deref() {
        out.push_str(&format!(
            "\n  try it:\n  curl -X POST {base_url}/api/logs -H 'Content-Type: application/json' -H 'X-API-Key: {k}' -d '{{\"deviceId\":\"device-001\",\"level\":\"ERROR\",\"message\":\"hello from curl\"}}'\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_across_starts_and_only_unset_ones_are_filled() {
        let dir = std::env::temp_dir().join(format!("logstream-devmode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = Config::default();
        config.server.data_dir = dir.clone();
        let (first, state) = fill(config.clone());
        assert_eq!(state.supplied, ["jwt_secret", "api_key", "admin_key"]);
        assert!(!state.reused);
        let (second, state) = fill(config.clone());
        assert!(state.reused);
        assert_eq!(first.auth.jwt_secret, second.auth.jwt_secret);
        assert_eq!(first.auth.api_key, second.auth.api_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "only the owner may read the keys");
        }
        let mut configured = config;
        configured.auth.api_key = Some("mine".into());
        let (third, state) = fill(configured);
        assert_eq!(third.auth.api_key.as_deref(), Some("mine"));
        assert!(!state.supplied.contains(&"api_key"));
        let text = banner(&state, &third, Some("tok"), "http://127.0.0.1:1");
        assert!(text.contains("export LOGSTREAM_JWT_SECRET="));
        assert!(!text.contains("export LOGSTREAM_API_KEY"));
        assert!(text.contains("curl -X POST http://127.0.0.1:1/api/logs"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
