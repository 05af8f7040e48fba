//! Who may connect, see and write what: JWT verification for Socket.IO handshakes and admin
//! REST calls, device scopes ([`scope`]), API and scoped ingest keys ([`ingest_keys`]), token
//! minting.
//!
//! The seed's handshake took any token and never checked it. Here a token must verify against
//! the configured HS256 secret or PEM public key (RS*/ES*), carry `sub` and `exp`, and not be
//! expired; the algorithm is fixed by the key, so `alg: none` or an HS256 token forged with a
//! public key as secret never verify.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod ingest_keys;
pub mod scope;

use crate::config::Config;
pub use scope::Scope;

/// Longest token accepted, in bytes, checked before anything is decoded.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest `sub`, in bytes.
pub const MAX_SUB_BYTES: usize = 256;
/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// The claims logstream reads. Everything else in the token is kept in `extra`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Device patterns this token may see (see [`Scope`]); absent = the configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Claims {
    pub fn is_admin(&self) -> bool {
        self.role.as_deref() == Some("admin")
    }

    /// The devices this token may see: all for an admin, its `devices` claim, or `default`.
    pub fn scope(
        &self,
        default: &std::sync::Arc<Scope>,
    ) -> Result<std::sync::Arc<Scope>, AuthError> {
        if self.is_admin() {
            return Ok(std::sync::Arc::new(Scope::all()));
        }
        match &self.devices {
            None => Ok(default.clone()),
            Some(patterns) => Scope::parse(patterns)
                .map(std::sync::Arc::new)
                .map_err(|e| AuthError::Malformed(format!("devices claim: {e}"))),
        }
    }
}

/// Why a token was refused. The client only ever sees the seed's two messages; the reason
/// ([`AuthError::reason`]) goes to the server's log.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("Authentication required")]
    Missing,
    #[error("Authentication failed")]
    Expired,
    /// Wrong signature, a key that does not match, or an algorithm no key accepts.
    #[error("Authentication failed")]
    InvalidSignature,
    /// Not a JWT, or claims that do not hold (no `sub`, no `exp`, wrong types).
    #[error("Authentication failed")]
    Malformed(String),
}

impl AuthError {
    /// A short code for logs: `missing`, `expired`, `invalid_signature`, `malformed`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::InvalidSignature => "invalid_signature",
            AuthError::Malformed(_) => "malformed",
        }
    }

    fn from_jwt(e: jsonwebtoken::errors::Error) -> AuthError {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_) => AuthError::InvalidSignature,
            _ => AuthError::Malformed(e.to_string()),
        }
    }
}

/// What may be changed while the server runs (re-read on SIGHUP): the scoped ingest keys and
/// the default device scope of tokens.
#[derive(Debug, Clone)]
pub struct Access {
    pub ingest_keys: Vec<ingest_keys::IngestKey>,
    pub default_scope: std::sync::Arc<Scope>,
}

impl Access {
    pub fn from_config(config: &Config) -> anyhow::Result<Access> {
        Ok(Access {
            ingest_keys: ingest_keys::parse_all(&config.auth.ingest_keys)
                .map_err(|e| anyhow::anyhow!("config key `{e}`"))?,
            default_scope: std::sync::Arc::new(
                Scope::parse(&config.auth.default_device_scope)
                    .map_err(|e| anyhow::anyhow!("default_device_scope: {e}"))?,
            ),
        })
    }
}

/// Keys in force for this process.
pub struct Keys {
    hs256: Option<(DecodingKey, EncodingKey)>,
    public: Option<(DecodingKey, Vec<Algorithm>)>,
    pub api_key: String,
    pub admin_key: String,
}

/// What was generated because the configuration left it unset (printed at start-up).
#[derive(Debug, Default)]
pub struct Generated {
    pub jwt_secret: Option<String>,
    pub api_key: Option<String>,
    pub admin_key: Option<String>,
}

impl Generated {
    pub fn any(&self) -> bool {
        self.jwt_secret.is_some() || self.api_key.is_some() || self.admin_key.is_some()
    }
}

/// A random URL-safe secret of 32 bytes.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Keys {
    /// Build the keys from configuration, generating whatever is missing.
    pub fn from_config(config: &Config) -> anyhow::Result<(Keys, Generated)> {
        let mut generated = Generated::default();
        let public = match &config.auth.jwt_public_key {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading jwt_public_key {}", path.display()))?;
                Some(parse_public_key(&pem).with_context(|| {
                    format!(
                        "jwt_public_key {} is not an RSA or EC public key in PEM form",
                        path.display()
                    )
                })?)
            }
        };
        let secret = match (&config.auth.jwt_secret, &public) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(_)) => None,
            (None, None) => {
                let s = random_secret();
                generated.jwt_secret = Some(s.clone());
                Some(s)
            }
        };
        let key_or_generate = |value: &Option<String>, slot: &mut Option<String>| {
            value.clone().unwrap_or_else(|| {
                let k = random_secret();
                *slot = Some(k.clone());
                k
            })
        };
        let api_key = key_or_generate(&config.auth.api_key, &mut generated.api_key);
        let admin_key = key_or_generate(&config.auth.admin_key, &mut generated.admin_key);
        let hs256 = secret.map(|s| {
            (
                DecodingKey::from_secret(s.as_bytes()),
                EncodingKey::from_secret(s.as_bytes()),
            )
        });
        Ok((
            Keys {
                hs256,
                public,
                api_key,
                admin_key,
            },
            generated,
        ))
    }

    /// Verify a client token: signature, algorithm bound to the key, `exp`, `sub`.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed(format!(
                "{} bytes; tokens are at most {MAX_TOKEN_BYTES}",
                token.len()
            )));
        }
        let header = jsonwebtoken::decode_header(token).map_err(AuthError::from_jwt)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref().map(|(d, _)| d),
            alg => self
                .public
                .as_ref()
                .filter(|(_, algs)| algs.contains(&alg))
                .map(|(d, _)| d),
        }
        .ok_or(AuthError::InvalidSignature)?;
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(AuthError::from_jwt)?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > MAX_SUB_BYTES {
            return Err(AuthError::Malformed(format!(
                "sub must be 1 to {MAX_SUB_BYTES} bytes"
            )));
        }
        let now = jsonwebtoken::get_current_timestamp();
        if data.claims.iat.is_some_and(|iat| iat > now + LEEWAY_SECS) {
            return Err(AuthError::Malformed("issued in the future (iat)".into()));
        }
        Ok(data.claims)
    }

    /// Mint an HS256 token with the configured secret.
    pub fn mint(
        &self,
        sub: &str,
        ttl: Duration,
        claims: &HashMap<String, Value>,
    ) -> anyhow::Result<String> {
        let Some((_, enc)) = &self.hs256 else {
            bail!(
                "no jwt_secret is configured (set LOGSTREAM_JWT_SECRET); tokens for a public key are minted by whoever holds the private key"
            );
        };
        mint_with(enc, sub, ttl, claims)
    }
}

fn mint_with(
    key: &EncodingKey,
    sub: &str,
    ttl: Duration,
    extra: &HashMap<String, Value>,
) -> anyhow::Result<String> {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = Map::new();
    for (k, v) in extra {
        claims.insert(k.clone(), v.clone());
    }
    claims.insert("sub".into(), Value::String(sub.to_owned()));
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        key,
    )?)
}

fn parse_public_key(pem: &[u8]) -> anyhow::Result<(DecodingKey, Vec<Algorithm>)> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((
            k,
            vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        ));
    }
    let k = DecodingKey::from_ec_pem(pem)?;
    Ok((k, vec![Algorithm::ES256, Algorithm::ES384]))
}

/// Parse `90`, `45s`, `30m`, `1h`, `7d`.
pub fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .with_context(|| format!("ttl {text:?} must look like 90, 45s, 30m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("ttl {text:?}: unknown unit {unit:?}; use s, m, h or d"),
    };
    if secs == 0 {
        bail!("ttl must be positive");
    }
    Ok(Duration::from_secs(secs))
}

/// Parse `k=v` claims for `logstream token`; values that are JSON stay JSON, the rest are strings.
pub fn parse_claim(text: &str) -> anyhow::Result<(String, Value)> {
    let (k, v) = text
        .split_once('=')
        .with_context(|| format!("claim {text:?} must be key=value"))?;
    if k.is_empty() || matches!(k, "sub" | "exp" | "iat") {
        bail!("claim key {k:?} is empty or reserved");
    }
    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
    Ok((k.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        let mut config = Config::default();
        config.auth.jwt_secret = Some("0123456789abcdef-test".into());
        Keys::from_config(&config).unwrap().0
    }

    #[test]
    fn verifies_own_tokens_and_rejects_forgeries() {
        let k = keys();
        let t = k
            .mint("alice", Duration::from_secs(60), &HashMap::new())
            .unwrap();
        assert_eq!(k.verify(&t).unwrap().sub, "alice");
        assert!(matches!(k.verify(""), Err(AuthError::Missing)));
        // Signed with another secret.
        let other = EncodingKey::from_secret(b"another-secret-of-length");
        let forged = mint_with(&other, "alice", Duration::from_secs(60), &HashMap::new()).unwrap();
        assert!(matches!(
            k.verify(&forged),
            Err(AuthError::InvalidSignature)
        ));
        // alg: none.
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"alice","exp":9999999999}"#)
        );
        assert!(k.verify(&none).is_err());
        assert!(matches!(k.verify("garbage"), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn checks_nbf_iat_sizes_and_the_devices_claim() {
        let k = keys();
        let (_, enc) = k.hs256.as_ref().unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, enc).unwrap()
        };
        let later = sign(serde_json::json!({"sub": "a", "exp": now + 600, "nbf": now + 300}));
        assert!(k.verify(&later).is_err(), "not before");
        let future = sign(serde_json::json!({"sub": "a", "exp": now + 600, "iat": now + 300}));
        assert!(matches!(k.verify(&future), Err(AuthError::Malformed(_))));
        let huge =
            sign(serde_json::json!({"sub": "a", "exp": now + 600, "pad": "x".repeat(800_000)}));
        assert!(matches!(k.verify(&huge), Err(AuthError::Malformed(_))));
        let long_sub = sign(serde_json::json!({"sub": "s".repeat(300), "exp": now + 600}));
        assert!(k.verify(&long_sub).is_err());
        let bad_devices =
            sign(serde_json::json!({"sub": "a", "exp": now + 600, "devices": "plant-a/*"}));
        assert!(matches!(
            k.verify(&bad_devices),
            Err(AuthError::Malformed(_))
        ));
        let scoped =
            sign(serde_json::json!({"sub": "a", "exp": now + 600, "devices": ["plant-a/*"]}));
        let default = std::sync::Arc::new(Scope::all());
        let scope = k.verify(&scoped).unwrap().scope(&default).unwrap();
        assert!(scope.matches("plant-a/1") && !scope.matches("plant-b/1"));
        let admin =
            sign(serde_json::json!({"sub": "a", "exp": now + 600, "role": "admin", "devices": []}));
        assert!(k.verify(&admin).unwrap().scope(&default).unwrap().is_all());
        let empty_pattern =
            sign(serde_json::json!({"sub": "a", "exp": now + 600, "devices": [""]}));
        assert!(k.verify(&empty_pattern).unwrap().scope(&default).is_err());
    }

    #[test]
    fn rejects_expired() {
        let k = keys();
        let (_, enc) = k.hs256.as_ref().unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({"sub": "a", "exp": now - 3600});
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, enc).unwrap();
        assert!(matches!(k.verify(&t), Err(AuthError::Expired)));
    }

    #[test]
    fn ttl_and_claims_parse() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert!(parse_ttl("1y").is_err());
        assert_eq!(
            parse_claim("role=admin").unwrap().1,
            Value::String("admin".into())
        );
        assert_eq!(parse_claim("n=3").unwrap().1, Value::from(3));
        assert!(parse_claim("exp=1").is_err());
    }
}
