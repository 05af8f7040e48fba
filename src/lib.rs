//! # logstream
//!
//! A real-time log push server. Logs come in over HTTP (and Redis), are matched against every
//! connected client's subscription by filter plugins (WebAssembly components, see `wit/`), and
//! are pushed over Socket.IO v4.
//!
//! The modules follow the data:
//!
//! - [`ingest`]: `POST /api/logs` and device status, validated by [`log_entry`].
//! - [`bus`]: hands accepted records to the router (embedded queue, or Redis).
//! - [`router`]: one thread that owns subscriptions, cuts batches, runs each filter once per
//!   batch (through the [`engine`] traits), and hands matches to [`delivery`].
//! - [`history`]: recent logs with their offsets, for `since`, `tail` and resumed sessions.
//! - [`delivery`]: per-client rate limit, pause buffer, batch window, socket queue, drop
//!   reports.
//! - [`socket`]: the Socket.IO face: handshake auth and the client events.
//! - [`edge`]: every TCP connection before HTTP: per-address limits before authentication,
//!   and the bytes written per socket (what makes socket queues bounded in bytes).
//!
//! For people at a terminal: [`cli`] (`logstream tail`, `logstream ship`: clients of the
//! protocol, not of the internals).
//!
//! Beside them: [`plugins`] (the wasmtime host behind the engine traits), [`protocol`] (every
//! event name, payload and error code: the wire contract), [`api`] (admin REST, extractors,
//! the one REST error), [`cluster`] (admin across instances over Redis), [`server`] (assembly,
//! start and shutdown in named steps), and the supporting cast: [`config`], [`auth`],
//! [`devmode`], [`sessions`], [`app`], [`connections`], [`metrics`] (the counters, read by
//! `/api/ws/stats`, `system:stats` and Prometheus), [`system_stats`] (`system:stats` rounds),
//! [`rate_limit`], [`subscription`], [`shutdown`].

pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod delivery;
pub mod devmode;
pub mod edge;
pub mod engine;
pub mod history;
pub mod ingest;
pub mod log_entry;
pub mod metrics;
pub mod plugins;
pub mod protocol;
pub mod publish_key;
pub mod rate_limit;
pub mod router;
pub mod server;
pub mod sessions;
pub mod shards;
pub mod shutdown;
pub mod socket;
pub mod subscription;
pub mod system_stats;

pub use server::serve;
