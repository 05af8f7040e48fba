//! The last stage before the wire: per-client pause, rate limit, and emit, with every log
//! that is matched but not delivered counted and reported back to the client as
//! `log:dropped { count, reason }`.
//!
//! Invariant, per client: `matched = delivered + dropped` where dropped is split by reason.
//! Order of checks: rate limit at admission, then pause (held logs were already admitted,
//! so resuming never drops them for rate), then the socket's bounded queue.
//!
//! Everything here is owned by the router thread; nothing is shared or locked.

pub mod client;
pub mod rate_limit;

pub use client::{Client, DropReason};
