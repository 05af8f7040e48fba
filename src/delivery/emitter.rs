//! Putting packets in the sockets' queues, from a task on the async runtime.
//!
//! The router is its own OS thread (plugin code never runs on the runtime's workers). It
//! hands everything one turn of its loop produced, in order, to one task on the runtime as
//! one job; the task emits it, so the socket writers it wakes land in its own worker's queue
//! rather than crossing cores through the runtime's shared inject queue for every packet
//! (BENCHMARKS.md §8 measured that hand-off at 0.6 µs per delivery at 10 000 clients).
//!
//! How the accounting stays exact:
//! - A socket that refuses a packet (its queue of packets, `socket_queue`, is full) is known
//!   only when the task emits it. The task keeps each refusal ([`Refused`]) for the router,
//!   which takes them at the start of its next turn ([`Emitter::take_refused`]) and counts
//!   them like a refusal seen at once: the logs as `slow_consumer` drops, the bytes off the
//!   client's queue estimate, a refused `log:dropped` reported again.
//! - Deliveries are counted where a socket takes them: by the task, or by the router for
//!   what it sends directly.
//! - Order per socket is kept: one task runs the jobs in order. An answer to a socket handler
//!   (which may emit after it) is itself a job ([`Emitter::then`]), so it goes after what
//!   was handed before without the router waiting. Replays, which must stop at a full
//!   socket, send directly, after waiting for what was handed before ([`Emitter::settle`]).
//! - The job queue is bounded: a router that outruns the task waits for it. What the jobs
//!   carry counts against the clients' queue bounds (`socket_queue_bytes`,
//!   `max_queued_bytes`) from the moment the router hands it on. The task yields to the
//!   worker's other tasks every [`YIELD_EVERY_PACKETS`] packets or [`YIELD_EVERY_BYTES`].
//! - A socket not marked connected yet refuses packets as if it were closed, and a full
//!   socket refuses answers (`log:subscribed`, …) that must not be lost: the task parks
//!   those, and every later packet for that socket, until it can take them (`waiting`);
//!   except logs behind an answer that waits for room, which the full queue refuses and
//!   which are counted at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::sync::{mpsc, oneshot};

use super::packet::{Packet, Unsent, emit};
use super::waiting::{Blocked, PARK_AT_MOST, ParkedMarks, RECHECK_EVERY, Released, Waiting};
use crate::metrics::Metrics;
use crate::protocol::DropReason;

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

/// Emptied job buffers kept for reuse, so that a turn does not allocate on the router's
/// thread what a worker frees (cross-thread frees churn the allocator).
const SPARE_BUFFERS: usize = 8;
/// Largest buffer kept (in packets).
const SPARE_MAX_PACKETS: usize = 16 * 1024;

/// What the router and the task share.
struct Shared {
    metrics: Arc<Metrics>,
    /// How long an answer waits for room in a full socket (`slow_consumer_timeout_ms`).
    answers_wait: Duration,
    /// Refusals not yet taken by the router.
    refused: Mutex<Vec<Refused>>,
    /// Emptied job buffers, back from the task.
    spare: Mutex<Vec<Vec<Queued>>>,
    /// Sockets the task has packets parked for (see `waiting`).
    marks: Arc<ParkedMarks>,
}

impl Shared {
    /// Emit packets in order: count the logs the sockets took, keep what they refused, park
    /// what must wait (and what follows it for the same socket).
    fn emit_all(&self, batch: impl Iterator<Item = Queued>, waiting: &mut Waiting<SocketRef>) {
        let mut delivered = 0u64;
        let mut lost = Vec::new();
        let mut released = Released::default();
        for q in batch {
            let sid = q.socket.id;
            // What the socket has parked goes first (the clock is read only then).
            let blocked = if waiting.has_parked(sid) {
                let now = Instant::now();
                waiting
                    .blocked(sid, now, self.answers_wait, &mut released)
                    .map(|why| (why, now))
            } else {
                None
            };
            let refused = match blocked {
                None => match emit(&q.socket, &q.packet) {
                    Ok(()) => {
                        delivered += u64::from(q.packet.logs);
                        None
                    }
                    // Logs are refused by a full queue.
                    Err(Unsent::Full) if !q.packet.waits_for_room() => Some(q.packet),
                    // An answer waits for room; anything waits for a socket not connected
                    // yet (or closed: parked until given up on; a closed socket's client is
                    // being removed, nothing of it is counted).
                    Err(_) => waiting.park(q.socket, q.packet, Instant::now()).err(),
                },
                // Logs behind an answer that waits for room in the full queue: refused like
                // any the full queue refuses (counted now, not parked uncounted behind it).
                Some((Blocked::AwaitsRoom, _)) if !q.packet.waits_for_room() => Some(q.packet),
                // Anything else waits behind what the socket has parked.
                Some((_, now)) => waiting.park(q.socket, q.packet, now).err(),
            };
            if let Some(packet) = refused {
                lost.push(refusal(sid, &packet));
            }
        }
        self.metrics.delivered(delivered);
        self.refused(lost);
        self.account_released(released);
    }

    /// Try again what sockets have parked.
    fn release(&self, waiting: &mut Waiting<SocketRef>) {
        if !waiting.is_empty() {
            self.account_released(waiting.release(Instant::now(), self.answers_wait));
        }
    }

    /// Count what parked packets came to.
    fn account_released(&self, released: Released) {
        if released.given_up > 0 {
            tracing::debug!(
                packets = released.given_up,
                within = ?PARK_AT_MOST,
                "let go of packets for sockets that did not take them in time (not connected, or closing)"
            );
        }
        if released.delivered > 0 {
            self.metrics.delivered(released.delivered);
        }
        self.refused(
            released
                .refused
                .iter()
                .map(|(sid, packet)| refusal(*sid, packet))
                .collect(),
        );
    }

    fn refused(&self, lost: Vec<Refused>) {
        if !lost.is_empty() {
            lock(&self.refused).extend(lost);
        }
    }
}

fn refusal(sid: Sid, packet: &Packet) -> Refused {
    Refused {
        sid,
        logs: packet.logs,
        bytes: packet.bytes,
        report: packet.report,
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
    /// `answers_wait`: how long an answer waits for room in a full socket.
    pub fn new(metrics: Arc<Metrics>, answers_wait: Duration) -> (Arc<Emitter>, EmitterTask) {
        let (jobs, rx) = mpsc::channel(JOBS);
        let shared = Arc::new(Shared {
            metrics,
            answers_wait,
            refused: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
            marks: Arc::new(ParkedMarks::default()),
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
    /// sockets' queues (or parked for a socket that cannot take it yet, see `waiting`).
    pub fn settle(&self) {
        self.flush();
        if !self.unsettled.swap(false, Ordering::Relaxed) {
            return;
        }
        let (done, wait) = oneshot::channel();
        self.hand(Job::Then(Box::new(move || {
            let _ = done.send(());
        })));
        // An error means the task is gone, and with it everything it parked.
        let _ = wait.blocking_recv();
    }

    /// Whether the task has packets parked for `sid` (see `waiting`): a packet put in its queue
    /// directly now would overtake them.
    pub fn has_parked(&self, sid: Sid) -> bool {
        self.shared.marks.has_parked(sid)
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
            Err(mpsc::error::SendError(Job::Emit(batch))) => {
                // The runtime is ending: a socket not connected by now never will be.
                let marks = Arc::new(ParkedMarks::default());
                self.shared
                    .emit_all(batch.into_iter(), &mut Waiting::new(marks));
            }
            Err(mpsc::error::SendError(Job::Then(f))) => f(),
        }
    }
}

impl EmitterTask {
    /// Run the jobs in order until the [`Emitter`] is dropped.
    pub async fn run(mut self) {
        let mut waiting = Waiting::new(self.shared.marks.clone());
        let mut last_release = Instant::now();
        loop {
            let job = if waiting.is_empty() {
                self.jobs.recv().await
            } else {
                tokio::select! {
                    job = self.jobs.recv() => job,
                    () = tokio::time::sleep(RECHECK_EVERY) => {
                        self.shared.release(&mut waiting);
                        last_release = Instant::now();
                        continue;
                    }
                }
            };
            let Some(job) = job else {
                break;
            };
            if !waiting.is_empty() && last_release.elapsed() >= RECHECK_EVERY {
                self.shared.release(&mut waiting);
                last_release = Instant::now();
            }
            match job {
                Job::Then(f) => f(),
                Job::Emit(mut batch) => {
                    let mut items = batch.drain(..);
                    loop {
                        let (mut packets, mut bytes) = (0, 0);
                        let chunk = std::iter::from_fn(|| {
                            if packets >= YIELD_EVERY_PACKETS || bytes >= YIELD_EVERY_BYTES {
                                return None;
                            }
                            let q = items.next()?;
                            packets += 1;
                            bytes += q.packet.payload_len();
                            Some(q)
                        });
                        self.shared.emit_all(chunk, &mut waiting);
                        if items.len() == 0 {
                            break;
                        }
                        // A large job must not hold this worker from its other tasks.
                        tokio::task::yield_now().await;
                    }
                    drop(items);
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
