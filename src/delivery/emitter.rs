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
//!   only when the task emits it. The task keeps each refusal ([`Refused`]) for the router,
//!   which takes them at the start of its next turn ([`Emitter::take_refused`]) and counts
//!   them as it did when it saw them at once: the logs as `slow_consumer` drops, the bytes
//!   off the client's queue estimate, a refused `log:dropped` reported again.
//! - Deliveries are counted where a socket takes them: by the task, or by the router for
//!   what it sends directly.
//! - Order per socket is kept: one task runs the jobs in order. An answer to a socket handler
//!   (which may emit after it) is itself a job ([`Emitter::then`]), so it goes after what
//!   was handed before without the router waiting. Replays, which must stop at a full
//!   socket, send directly, after waiting for what was handed before ([`Emitter::settle`]).
//! - The job queue is bounded: a router that outruns the task waits for it. What the jobs
//!   hold counts against the clients' queue bounds (`socket_queue_bytes`,
//!   `max_queued_bytes`) from the moment the router hands it on, as it did in the sockets'
//!   queues. The task yields to the worker's other tasks every [`YIELD_EVERY_PACKETS`]
//!   packets or [`YIELD_EVERY_BYTES`].

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

/// Packets and bytes of packets emitted between two yields to the runtime's other tasks.
const YIELD_EVERY_PACKETS: usize = 512;
const YIELD_EVERY_BYTES: usize = 256 << 10;

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
    /// Run once every job before it is done.
    Then(Box<dyn FnOnce() + Send>),
}

/// Emptied job buffers kept for reuse: without them every turn allocated one on the router's
/// thread and freed it on a worker's, churning the allocator (a profile showed heap growth
/// and page clearing from it).
const SPARE_BUFFERS: usize = 8;
/// Largest buffer kept (in packets).
const SPARE_MAX_PACKETS: usize = 16 * 1024;

/// What the router and the task share.
struct Shared {
    metrics: Arc<Metrics>,
    /// Refusals not yet taken by the router.
    refused: Mutex<Vec<Refused>>,
    /// Emptied job buffers, back from the task.
    spare: Mutex<Vec<Vec<Queued>>>,
}

impl Shared {
    /// Emit packets in order: count the logs the sockets took, keep what they refused.
    fn emit_all(&self, batch: &[Queued]) {
        let mut delivered = 0u64;
        let mut lost = Vec::new();
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
        self.metrics.delivered(delivered);
        if !lost.is_empty() {
            lock(&self.refused).extend(lost);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The router's side: packets pushed during a turn, handed over at its end.
///
/// `flush`, `then` and `settle` block, and are called from the router's thread only (never
/// from a task on the runtime, where blocking would panic).
pub struct Emitter {
    pending: Mutex<Vec<Queued>>,
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    /// Something was handed to the task since the last [`Emitter::settle`].
    unsettled: AtomicBool,
}

/// The runtime's side: run it with [`EmitterTask::run`].
pub struct EmitterTask {
    jobs: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
}

impl Emitter {
    pub fn new(metrics: Arc<Metrics>) -> (Arc<Emitter>, EmitterTask) {
        let (jobs, rx) = mpsc::channel(JOBS);
        let shared = Arc::new(Shared {
            metrics,
            refused: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
        });
        let emitter = Emitter {
            pending: Mutex::new(Vec::new()),
            jobs,
            shared: shared.clone(),
            unsettled: AtomicBool::new(false),
        };
        (Arc::new(emitter), EmitterTask { jobs: rx, shared })
    }

    /// Queue `packet` for `socket`, after everything queued before.
    pub fn push(&self, socket: SocketRef, packet: Packet) {
        lock(&self.pending).push(Queued { socket, packet });
    }

    /// Hand what was queued to the task.
    pub fn flush(&self) {
        let batch = {
            let mut pending = lock(&self.pending);
            if pending.is_empty() {
                return;
            }
            let spare = lock(&self.shared.spare).pop().unwrap_or_default();
            std::mem::replace(&mut *pending, spare)
        };
        self.hand(Job::Emit(batch));
    }

    /// Run `f` once everything queued so far is in the sockets' queues (answers to socket
    /// handlers), without waiting for it here.
    pub fn then(&self, f: impl FnOnce() + Send + 'static) {
        self.flush();
        self.hand(Job::Then(Box::new(f)));
    }

    /// Hand what was queued to the task and wait until everything handed so far is in the
    /// sockets' queues.
    pub fn settle(&self) {
        self.flush();
        if !self.unsettled.swap(false, Ordering::Relaxed) {
            return;
        }
        let (done, wait) = oneshot::channel();
        self.hand(Job::Then(Box::new(move || {
            let _ = done.send(());
        })));
        // An error means the task is gone, and with it everything it held.
        let _ = wait.blocking_recv();
    }

    /// Refusals the task met since the last call.
    pub fn take_refused(&self) -> Vec<Refused> {
        std::mem::take(&mut *lock(&self.shared.refused))
    }

    /// Give `job` to the task; once the task is gone (the runtime is shutting down), do it
    /// here instead.
    fn hand(&self, job: Job) {
        debug_assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "the emitter blocks: router thread only"
        );
        match self.jobs.blocking_send(job) {
            Ok(()) => self.unsettled.store(true, Ordering::Relaxed),
            Err(mpsc::error::SendError(Job::Emit(batch))) => self.shared.emit_all(&batch),
            Err(mpsc::error::SendError(Job::Then(f))) => f(),
        }
    }
}

impl EmitterTask {
    /// Run the jobs in order until the [`Emitter`] is dropped.
    pub async fn run(mut self) {
        while let Some(job) = self.jobs.recv().await {
            match job {
                Job::Then(f) => f(),
                Job::Emit(mut batch) => {
                    let mut from = 0;
                    while from < batch.len() {
                        if from > 0 {
                            // A large job must not hold this worker from its other tasks.
                            tokio::task::yield_now().await;
                        }
                        let mut bytes = 0;
                        let mut to = from;
                        while to < batch.len()
                            && bytes < YIELD_EVERY_BYTES
                            && to - from < YIELD_EVERY_PACKETS
                        {
                            bytes += batch[to].packet.data().get().len();
                            to += 1;
                        }
                        self.shared.emit_all(&batch[from..to]);
                        from = to;
                    }
                    batch.clear();
                    let mut spare = lock(&self.shared.spare);
                    // A buffer a burst made large is let go.
                    if spare.len() < SPARE_BUFFERS && batch.capacity() <= SPARE_MAX_PACKETS {
                        spare.push(batch);
                    }
                }
            }
        }
    }
}
