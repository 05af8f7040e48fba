//! Where logs come in: request bodies, the queue ahead of the router, OTLP mapping.

use super::group::{config_group, positive};

config_group! {
    /// Ingest over HTTP and OTLP.
    pub struct IngestConfig {
        /// Largest HTTP request body, in bytes (ingest answers 413 past it).
        max_body_bytes: usize = 1_000_000, positive;
        /// Ingest requests queued ahead of the router; past it ingest answers 503.
        ingest_queue: usize = 1024, positive;
        /// OTLP log ingest (`POST /v1/logs`): the resource attributes that give a record's
        /// `deviceId`, the first present wins.
        otlp_device_attributes: Vec<String> = vec![
            "device.id".into(),
            "host.name".into(),
            "service.name".into(),
        ];
        /// OTLP log ingest: the log attribute that gives a record's `tags`.
        otlp_tags_attribute: String = "tags".into();
    }
}
