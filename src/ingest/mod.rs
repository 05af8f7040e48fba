//! Where logs come in. Every source validates entries into [`crate::log_entry::LogRecord`]s
//! and publishes them whole to the [`crate::bus::Bus`].

pub mod http;
