//! The one way logs are accepted, whatever they came by: a publish permit (shutdown and
//! concurrency), the publish itself (whole, and at most once per key), and the counters
//! (accepted per source; refused requests). Every source decodes and validates its entries
//! first, then calls [`accept`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::app::AppState;
use crate::bus::{PublishError, PublishKey, Published};
use crate::log_entry::LogRecord;

/// Where logs came from (`logs_ingested_total{source}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /api/logs`.
    Http,
    /// `POST /v1/logs`.
    Otlp,
    /// The seed's Redis channel (`redis_log_channel`), bridged by this instance.
    SeedChannel,
}

/// What became of accepted logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Published now.
    Published(usize),
    /// Their key was published before: nothing new was published.
    Duplicate(usize),
}

/// Publish `records` from `source` (with `key`, at most once per key), counted.
pub async fn accept(
    app: &AppState,
    source: Source,
    records: Vec<Arc<LogRecord>>,
    key: Option<&PublishKey>,
) -> Result<Accepted, PublishError> {
    let n = records.len();
    let published = async {
        let _permit = app.ingest_permit()?;
        app.bus.publish_logs(records, key).await
    }
    .await;
    match published {
        Ok(Published::Appended) => {
            let counter = match source {
                Source::Http => &app.metrics.ingested_http,
                Source::Otlp => &app.metrics.ingested_otlp,
                Source::SeedChannel => &app.metrics.ingested_seed_channel,
            };
            counter.fetch_add(n as u64, Ordering::Relaxed);
            Ok(Accepted::Published(n))
        }
        Ok(Published::AlreadyPublished) => Ok(Accepted::Duplicate(n)),
        Err(e) => {
            // A seed-channel message is tried again, and counted by the bridge if it never
            // lands; a request's refusal is final.
            if source != Source::SeedChannel {
                app.metrics
                    .ingest_rejected
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e)
        }
    }
}
