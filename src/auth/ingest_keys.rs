//! Scoped ingest keys: besides the one `api_key` (which may write any device), named keys,
//! each allowed to write only the devices its patterns match. The configuration holds their
//! SHA-256, never the keys themselves; `logstream key new` makes one.

use sha2::{Digest, Sha256};

use super::Scope;
pub use crate::config::IngestKeyConfig;

/// A validated scoped key.
#[derive(Debug, Clone)]
pub struct IngestKey {
    pub name: String,
    hash: [u8; 32],
    pub scope: std::sync::Arc<Scope>,
}

/// SHA-256 of `key`.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// SHA-256 of `key`, lower-case hex (what the configuration stores).
pub fn digest_hex(key: &str) -> String {
    digest(key).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl IngestKey {
    /// Validate one configured key; the error names the field.
    pub fn from_config(i: usize, c: &IngestKeyConfig) -> Result<IngestKey, String> {
        let at = format!("ingest_keys[{i}]");
        if c.name.is_empty() || c.name.len() > 64 || c.name.chars().any(char::is_control) {
            return Err(format!("{at}.name: 1 to 64 characters"));
        }
        let hash = parse_hex(&c.key_sha256.to_ascii_lowercase()).ok_or_else(|| {
            format!("{at}.key_sha256: 64 hexadecimal digits (SHA-256 of the key)")
        })?;
        let scope = Scope::parse(&c.devices).map_err(|e| format!("{at}.{e}"))?;
        Ok(IngestKey {
            name: c.name.clone(),
            hash,
            scope: std::sync::Arc::new(scope),
        })
    }

    /// Whether `presented` is this key (constant-time on the digests).
    pub fn is(&self, presented_digest: &[u8; 32]) -> bool {
        self.hash
            .iter()
            .zip(presented_digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// All configured keys, validated; names must be unique.
pub fn parse_all(configs: &[IngestKeyConfig]) -> Result<Vec<IngestKey>, String> {
    let keys = configs
        .iter()
        .enumerate()
        .map(|(i, c)| IngestKey::from_config(i, c))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, k) in keys.iter().enumerate() {
        if keys[..i].iter().any(|o| o.name == k.name) {
            return Err(format!("ingest_keys[{i}].name: {:?} is used twice", k.name));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_matched_by_digest_and_validated() {
        let c = IngestKeyConfig {
            name: "plant-a".into(),
            key_sha256: digest_hex("s3cret"),
            devices: vec!["plant-a/*".into()],
        };
        let keys = parse_all(std::slice::from_ref(&c)).unwrap();
        assert!(keys[0].is(&digest("s3cret")));
        assert!(!keys[0].is(&digest("s3cret ")));
        assert!(keys[0].scope.matches("plant-a/7"));
        let bad = IngestKeyConfig {
            key_sha256: "xyz".into(),
            ..c.clone()
        };
        assert!(
            parse_all(&[bad])
                .unwrap_err()
                .contains("ingest_keys[0].key_sha256")
        );
        assert!(
            parse_all(&[c.clone(), c])
                .unwrap_err()
                .contains("used twice")
        );
    }
}
