//! The last stage before the wire: per-client pause, rate limit, batch window and emit,
//! with every log that is matched but not delivered counted and reported back to the client
//! as `log:dropped { count, reason }`.
//!
//! Invariant, per client: `matched = delivered + dropped` where dropped is split by reason.
//!
//! The per-client state ([`Client`]) is owned by the router thread and needs no lock; it
//! composes one part per promise: [`pause_buffer`], [`batch_outbox`], [`queue_meter`] and
//! [`drops`]. Its packets ([`packet`]) reach the sockets through the [`Emitter`], whose task
//! on the async runtime puts them in the sockets' queues, parks what a socket cannot take
//! yet ([`waiting`]) and reports refusals back. The one thing shared with other threads is
//! the admin view in [`crate::connections::ConnectionInfo`] (an atomic counter, and the
//! displayed subscription behind a mutex the router takes only when a subscription
//! changes).
//!
//! Imports inside the folder go one way: `client` → (`pause_buffer`, `batch_outbox`,
//! `queue_meter`, `drops`, `outlet`) → `emitter` → `waiting` → `packet`, which imports no
//! sibling.

pub mod batch_outbox;
pub mod client;
pub mod drops;
pub mod emitter;
pub mod gzip_batches;
pub mod outlet;
pub mod packet;
pub mod pause_buffer;
pub mod queue_meter;
pub mod waiting;

pub use client::{Client, DeliveryOptions};
pub use emitter::{Emitter, EmitterTask, Refused};
pub use outlet::Outlet;
pub use packet::Unsent;
pub use packet::to_raw;
