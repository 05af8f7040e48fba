//! Clients of our own protocol, for people at a terminal: `logstream tail` follows logs,
//! `logstream ship` sends a file's lines. They talk to a server over the network like any
//! other client (Socket.IO, the REST API), never through the server's internals.

pub mod checkpoint;
pub mod ship;
pub mod sio;
pub mod tail;
pub mod tls;
