//! Who may do what: client tokens, ingest and admin keys, device scopes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::group::{Check, config_group, unset_or_non_empty};

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

impl super::group::Unset for IngestKeyConfig {}

config_group! {
    /// Tokens and keys.
    pub struct AuthConfig {
        /// HS256 secret for client JWTs. Unset (and no public key) = development mode: a
        /// random secret is generated and a ready-to-use token is printed.
        jwt_secret: Option<String> = None, secret_long_enough;
        /// Path to a PEM public key (RSA or EC P-256) accepting RS256 / ES256 tokens.
        jwt_public_key: Option<PathBuf> = None;
        /// Key for `POST /api/logs` and device status (`X-API-Key`). Generated when unset.
        api_key: Option<String> = None, unset_or_non_empty;
        /// Key for the admin REST API under `/api/ws` (`X-API-Key`). Generated when unset.
        admin_key: Option<String> = None, unset_or_non_empty;
        /// Key for `GET /metrics` only (`Authorization: Bearer` or `X-API-Key`), for a
        /// Prometheus scraper that should not hold the admin key. Unset: the admin key or
        /// an admin token.
        metrics_key: Option<String> = None, unset_or_non_empty;
        /// Named ingest keys, each limited to the devices its patterns match (stored hashed).
        ingest_keys: Vec<IngestKeyConfig> = Vec::new();
        /// Device patterns of a token without a `devices` claim; `[]` = deny by default.
        default_device_scope: Vec<String> = vec!["*".into()];
        /// How long before its token expires a connection receives `auth:expired`.
        auth_expiry_notice_ms: u64 = 5000;
    }
}

/// A configured JWT secret is at least 16 bytes.
fn secret_long_enough(secret: &Option<String>) -> Check {
    match secret {
        Some(s) if s.len() < 16 => Err("must be at least 16 bytes long".into()),
        _ => Ok(()),
    }
}
