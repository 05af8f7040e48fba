//! The last stage before the wire: per-client pause, rate limit, batch window and emit,
//! with every log that is matched but not delivered counted and reported back to the client
//! as `log:dropped { count, reason }`.
//!
//! Invariant, per client: `matched = delivered + dropped` where dropped is split by reason.
//! Order of checks: rate limit at admission, then pause (held logs were already admitted,
//! so resuming never drops them for rate), then the socket's bounded queue.
//!
//! The per-client state ([`Client`]) is owned by the router thread and needs no lock; its
//! packets reach the sockets through the [`Emitter`], whose task on the async runtime puts
//! them in the sockets' queues and reports refusals back. The one thing shared with other
//! threads is the admin view in [`crate::connections::ConnectionInfo`] (an atomic counter,
//! and the displayed subscription behind a mutex the router takes only when a subscription
//! changes).

pub mod client;
pub mod emitter;
pub mod outlet;
pub mod waiting;

pub use client::{Client, DeliveryLimits, to_raw};
pub use emitter::{Emitter, EmitterTask, Refused};
pub use outlet::{Outlet, Unsent};
