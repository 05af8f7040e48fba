//! Putting packets in the sockets' queues, from a task on the async runtime.
//!
//! Why: the router is its own OS thread (plugin code never runs on the runtime's workers).
//! When it put every packet in a socket's queue itself, each packet's queue slot, the
//! queue's semaphore and the writer task's state were written on the router's core and read
//! on a worker's, and each woken writer went through the runtime's shared inject queue: at
//! 10 000 clients that hand-off was 0.6 µs of CPU per delivery (BENCHMARKS.md §8). The router
//! now hands everything one turn of its loop produced, in order, to one task on the runtime
//! as one job; the task emits it, so the writers it wakes land in its own worker's queue.
//!
//! What that changes, and how the accounting stays exact:
//! - A socket that refuses a packet (its queue of packets, `socket_queue`, is full) is known
//!   only when the task emits it. The task reports each refusal back ([`Refused`]), and the
//!   router counts it as it did when it saw it at once: the logs as `slow_consumer` drops,
//!   the bytes off the client's queue estimate, a refused `log:dropped` reported again.
//! - Deliveries are counted by the task, when a socket takes them.
//! - Order per socket is kept: one task runs the jobs in order. Before the router sends
//!   anything directly (replays, which must stop at a full socket) or answers a socket
//!   handler (which may emit after the answer), it waits for what it handed before to be
//!   out ([`Emitter::settle`]).
//! - The job queue is bounded: a router that outruns the task waits for it. What the jobs
//!   hold counts against the clients' queue bounds (`socket_queue_bytes`,
//!   `max_queued_bytes`) from the moment the router hands it on, as it did in the sockets'
//!   queues. A large job yields to the worker's other tasks every [`YIELD_EVERY`] packets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::sync::{mpsc, oneshot};

use super::outlet::{Packet, Unsent, emit};
use crate::protocol::DropReason;
use crate::stats::Metrics;

/// Jobs (turns of the router's loop) that may wait for the task.
const JOBS: usize = 256;

/// Packets emitted between two yields to the runtime's other tasks.
const YIELD_EVERY: usize = 512;

/// A packet a socket refused, for the router's accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub sid: Sid,
    /// Logs the packet carried (dropped as `slow_consumer`).
    pub logs: u32,
    /// Bytes that were counted against the client's queue for it.
    pub bytes: u64,
    /// The `log:dropped` report it was, to report again.
    pub report: Option<(DropReason, u64)>,
}

struct Queued {
    socket: SocketRef,
    packet: Packet,
}

enum Job {
    Emit(Vec<Queued>),
    /// Answered once every job before it is done.
    Mark(oneshot::Sender<()>),
}

/// The router's side: packets pushed during a turn, handed over at its end.
///
/// `flush` and `settle` block, and are called from the router's thread only (never from a
/// task on the runtime).
pub struct Emitter {
    pending: Mutex<Vec<Queued>>,
    jobs: mpsc::Sender<Job>,
    /// Something was handed to the task since the last [`Emitter::settle`].
    unsettled: AtomicBool,
}

/// The runtime's side: run it with [`EmitterTask::run`].
pub struct EmitterTask {
    jobs: mpsc::Receiver<Job>,
}

impl Emitter {
    pub fn new() -> (Arc<Emitter>, EmitterTask) {
        let (jobs, rx) = mpsc::channel(JOBS);
        let emitter = Emitter {
            pending: Mutex::new(Vec::new()),
            jobs,
            unsettled: AtomicBool::new(false),
        };
        (Arc::new(emitter), EmitterTask { jobs: rx })
    }

    /// Queue `packet` for `socket`, after everything queued before.
    pub fn push(&self, socket: SocketRef, packet: Packet) {
        self.lock().push(Queued { socket, packet });
    }

    /// Hand what was queued to the task. Once the task is gone (the runtime is shutting
    /// down), emit it here instead.
    pub fn flush(&self) {
        let batch = std::mem::take(&mut *self.lock());
        if batch.is_empty() {
            return;
        }
        match self.jobs.blocking_send(Job::Emit(batch)) {
            Ok(()) => self.unsettled.store(true, Ordering::Relaxed),
            Err(mpsc::error::SendError(Job::Emit(batch))) => {
                for q in batch {
                    let _ = emit(&q.socket, &q.packet);
                }
            }
            Err(_) => {}
        }
    }

    /// Hand what was queued to the task and wait until everything handed so far is in the
    /// sockets' queues.
    pub fn settle(&self) {
        self.flush();
        if !self.unsettled.swap(false, Ordering::Relaxed) {
            return;
        }
        let (done, wait) = oneshot::channel();
        if self.jobs.blocking_send(Job::Mark(done)).is_ok() {
            // An error means the task is gone, and with it everything it held.
            let _ = wait.blocking_recv();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Queued>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EmitterTask {
    /// Emit every job's packets in order; count what the sockets took, and give what they
    /// refused to `refused` (once per job that had refusals). Ends when the [`Emitter`] is
    /// dropped.
    pub async fn run(mut self, metrics: Arc<Metrics>, refused: impl Fn(Vec<Refused>)) {
        while let Some(job) = self.jobs.recv().await {
            match job {
                Job::Mark(done) => {
                    let _ = done.send(());
                }
                Job::Emit(batch) => {
                    let mut lost = Vec::new();
                    for (i, chunk) in batch.chunks(YIELD_EVERY).enumerate() {
                        if i > 0 {
                            // A large job must not hold this worker from its other tasks.
                            tokio::task::yield_now().await;
                        }
                        metrics.delivered(emit_all(chunk, &mut lost));
                    }
                    if !lost.is_empty() {
                        refused(lost);
                    }
                }
            }
        }
    }
}

/// Emit packets; the logs the sockets took (what they refused is added to `lost`).
fn emit_all(batch: &[Queued], lost: &mut Vec<Refused>) -> u64 {
    let mut delivered = 0u64;
    for q in batch {
        match emit(&q.socket, &q.packet) {
            Ok(()) => delivered += u64::from(q.packet.logs),
            Err(Unsent::Full) => lost.push(Refused {
                sid: q.socket.id,
                logs: q.packet.logs,
                bytes: q.packet.bytes,
                report: q.packet.report,
            }),
            // A closed socket's client is being removed; nothing of it is counted.
            Err(Unsent::Closed) => {}
        }
    }
    delivered
}
