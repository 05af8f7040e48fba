//! The seed's Redis channel (`redis_log_channel`): the rest of the seed's backend publishes
//! log entries there (a JSON object or an array of them). Every instance reads every message
//! (the bus's subscriber hands them here, in order); each is validated like HTTP ingest and
//! accepted with the message's digest as its key, so the first instance to publish it puts
//! it into the stream once for the cluster, and all deliver it from there. The same bytes
//! published again within [`SAME_MESSAGE_WITHIN`] count as the same message.
//!
//! Order: messages are accepted one at a time, each tried up to [`TRIES`] times before the
//! next, so the stream keeps the order they were published in (see `bus::stream`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::accept::{Source, accept};
use crate::app::AppState;
use crate::bus::PublishKey;
use crate::bus::redis::RedisBus;
use crate::log_entry::parse_entries;

/// How long the same bytes on the channel count as the same message.
pub const SAME_MESSAGE_WITHIN: Duration = Duration::from_secs(10);
/// Tries to put a message into the stream, and the first pause between two.
const TRIES: u32 = 4;
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Whose keys the seed channel's messages are.
const OWNER: &str = "seed-channel";

/// Accept the messages `messages` brings, in order, until `stop`.
pub async fn run(
    app: AppState,
    redis: Arc<RedisBus>,
    mut messages: mpsc::Receiver<Vec<u8>>,
    stop: CancellationToken,
) {
    loop {
        let payload = tokio::select! {
            () = stop.cancelled() => return,
            message = messages.recv() => match message {
                Some(payload) => payload,
                None => return,
            },
        };
        on_message(&app, &redis, &payload).await;
    }
}

async fn on_message(app: &AppState, redis: &RedisBus, payload: &[u8]) {
    let channel = &redis.channels.logs;
    let value: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return redis.status.malformed(channel, &format!("not JSON: {e}")),
    };
    let records = match parse_entries(value, |i| id_from_message(payload, i)) {
        Ok(r) => r,
        Err(e) => return redis.status.malformed(channel, &e.to_string()),
    };
    let key = PublishKey {
        owner: OWNER.into(),
        key: format!("{:x}", Sha256::digest(payload)),
        ttl: SAME_MESSAGE_WITHIN,
    };
    let n = records.len();
    let mut pause = RETRY_FIRST;
    for attempt in 1..=TRIES {
        match accept(app, Source::SeedChannel, records.clone(), Some(&key)).await {
            // Published here, or by another instance (or an earlier try).
            Ok(_) => return,
            Err(e) if attempt == TRIES => {
                redis
                    .status
                    .bridge_failed
                    .fetch_add(n as u64, Ordering::Relaxed);
                tracing::warn!(error = %e, entries = n, tries = TRIES, "could not put a seed-channel message into the stream (another instance may have)");
            }
            Err(e) => {
                tracing::debug!(error = %e, attempt, "a seed-channel message could not be put into the stream; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}

/// The id of entry `index` of a message that gave none: the same on every instance (a
/// UUID-shaped digest of the message's bytes and the position).
pub fn id_from_message(payload: &[u8], index: usize) -> String {
    let digest = Sha256::new()
        .chain_update(payload)
        .chain_update((index as u64).to_le_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_from_a_message_are_the_same_everywhere_and_differ_by_position() {
        let a = super::id_from_message(b"[{}, {}]", 0);
        assert_eq!(a, super::id_from_message(b"[{}, {}]", 0));
        assert_ne!(a, super::id_from_message(b"[{}, {}]", 1));
        assert_eq!(a.len(), 36);
    }
}
