//! Log shards (`redis_stream_shards`): which shard a device's logs go to, and which shards a
//! subscription needs.
//!
//! A log goes to shard `hash(deviceId) mod N`, so one device's logs stay in order in one
//! stream. An instance reads only the shards its clients can match: the router keeps the
//! union of its subscriptions' shards ([`Wanted`]) and the Redis bus reads those. Both sides
//! need the same hash, and neither imports the other, so it lives here.
//!
//! The hash is the first 8 bytes of SHA-256 of the device id, big-endian, mod N: stable
//! across instances, versions and platforms (a rolling upgrade must not move a device).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::Scope;
use crate::subscription::DEFAULT_FILTER;

/// Most shards (a set of shards is one `u64`).
pub const MAX_SHARDS: usize = 64;

/// A set of shards: bit `i` is shard `i`.
pub type ShardMask = u64;

/// Every shard of `n`.
pub fn all(n: usize) -> ShardMask {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// The shard of `device` among `n`.
pub fn shard_of(device: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let digest = Sha256::digest(device.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % n as u64) as usize
}

/// The shards a subscription can match: those of the default filter's `deviceIds`; else
/// those of a scope made only of exact device ids; else all (a filter plugin may match any
/// device, and a pattern names no finite set).
pub fn needed_by(filter: &str, params: &Value, scope: &Scope, n: usize) -> ShardMask {
    if n <= 1 {
        return all(n);
    }
    let named: Vec<&str> = if filter == DEFAULT_FILTER {
        params
            .get("deviceIds")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    } else {
        Vec::new()
    };
    if !named.is_empty() {
        return named.iter().fold(0, |m, d| m | 1 << shard_of(d, n));
    }
    if scope.is_all() || scope.patterns().iter().any(|p| p.contains('*')) {
        return all(n);
    }
    scope
        .patterns()
        .iter()
        .fold(0, |m, d| m | 1 << shard_of(d, n))
}

/// The shards the router's subscriptions need, numbered so the bus can say which request
/// its answer ([`crate::router::Inbound::Shards`]) reflects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    pub mask: ShardMask,
    pub generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_device_always_lands_in_the_same_shard() {
        // Pinned: every instance and every version must agree.
        assert_eq!(shard_of("sensor-1", 8), shard_of("sensor-1", 8));
        assert_eq!(shard_of("anything", 1), 0);
        let spread: std::collections::BTreeSet<usize> =
            (0..200).map(|i| shard_of(&format!("d{i}"), 8)).collect();
        assert_eq!(spread.len(), 8, "200 devices cover all 8 shards");
        assert_eq!(shard_of("sensor-1", 8), 4, "pinned value");
        assert_eq!(shard_of("sensor-2", 8), 0, "pinned value");
    }

    #[test]
    fn subscriptions_need_the_shards_of_their_devices() {
        let n = 8;
        let everyone = Scope::all();
        let one = needed_by("default", &json!({"deviceIds": ["sensor-1"]}), &everyone, n);
        assert_eq!(one, 1 << shard_of("sensor-1", n));
        assert_eq!(needed_by("default", &json!({}), &everyone, n), all(n));
        // A plugin's params mean what the plugin says: all shards.
        assert_eq!(
            needed_by("grep", &json!({"deviceIds": ["sensor-1"]}), &everyone, n),
            all(n)
        );
        let exact = Scope::parse(&["sensor-2".to_owned()]).unwrap();
        assert_eq!(
            needed_by("grep", &json!({}), &exact, n),
            1 << shard_of("sensor-2", n)
        );
        let pattern = Scope::parse(&["sensor-*".to_owned()]).unwrap();
        assert_eq!(needed_by("default", &json!({}), &pattern, n), all(n));
        assert_eq!(all(64), u64::MAX);
        assert_eq!(all(1), 1);
    }
}
