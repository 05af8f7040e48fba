//! Replays of history for one client (`since`, `tail`, a resumed session), run on the router
//! thread in bounded slices between live batches, so a long replay never stalls anyone else.
//!
//! The seam: a replay covers history up to the newest log the router had processed when the
//! subscription was installed; everything after it is live. Live logs matched for the client
//! meanwhile are held (like a pause) and follow the replay, so nothing is missed or repeated.
//! The client's `log:subscribed` (and acknowledgement) go out when the replay ends, with
//! `recovered` and the number of logs `replayed`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use socketioxide::socket::Sid;
use tokio::sync::oneshot;

use super::Router;
use crate::engine::RegistrationId;
use crate::log_entry::{LogRecord, Position};
use crate::protocol::{ClientError, Subscribed, event};

/// History entries evaluated per step.
pub const SLICE: usize = 256;

/// How often a paused client's replay looks again.
const PAUSED_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// How long a replay waits when its client's socket queue is full.
const FULL_BACKOFF: std::time::Duration = std::time::Duration::from_millis(2);

pub enum Plan {
    /// Everything after `after` up to `end`.
    Since { after: Position, end: Position },
    /// The last `n` matches up to `end`.
    Tail { n: usize, end: Position },
}

pub struct Replay {
    pub sid: Sid,
    pub registration: RegistrationId,
    pub filter: String,
    /// The history's epoch when the replay began; a change means it cannot be exact.
    pub epoch: String,
    pub plan: Plan,
    /// Tail: matches found so far, newest last.
    pub found: VecDeque<Arc<LogRecord>>,
    /// Tail: entries before this position are still to be looked at.
    pub back_from: Option<Position>,
    pub sent: usize,
    /// Replayed logs the client's socket could not take yet (sent before anything else).
    pub backlog: Vec<Arc<LogRecord>>,
    /// Not before this instant (the socket was full).
    pub retry_at: Option<Instant>,
    pub recovered: bool,
    /// Every log to replay is found; only the backlog remains.
    pub finished: bool,
    pub subscribed: Subscribed,
    pub reply: Option<oneshot::Sender<Result<Subscribed, ClientError>>>,
}

enum Step {
    More,
    Done,
}

fn position(record: &LogRecord) -> Position {
    record.stamp.get().map(|s| s.position).unwrap_or_default()
}

impl Router {
    /// When the next replay step may run (now, or when a full socket may have room).
    pub(super) fn next_replay_at(&self) -> Option<Instant> {
        self.replays
            .iter()
            .map(|r| r.retry_at.unwrap_or_else(Instant::now))
            .min()
    }

    /// Run one slice of the first replay that is ready; round-robin between clients.
    pub(super) fn replay_step(&mut self) {
        let now = Instant::now();
        let Some(i) = self
            .replays
            .iter()
            .position(|r| r.retry_at.is_none_or(|t| t <= now))
        else {
            return;
        };
        let Some(mut replay) = self.replays.remove(i) else {
            return;
        };
        replay.retry_at = None;
        // A paused client's replay waits: replayed and live logs must not mix in its buffer.
        if self.clients.get(&replay.sid).is_some_and(|c| c.is_paused()) {
            replay.retry_at = Some(now + PAUSED_RETRY);
            self.replays.push_back(replay);
            return;
        }
        // What the socket (or the client's replay budget) could not take last time goes
        // first.
        if !replay.backlog.is_empty() {
            let sent = match self.clients.get_mut(&replay.sid) {
                Some(client) => {
                    let sent = client.send_replayed(&replay.backlog, now);
                    self.followups.note(client);
                    sent
                }
                None => replay.backlog.len(),
            };
            replay.sent += sent;
            replay.backlog.drain(..sent);
            if !replay.backlog.is_empty() {
                replay.retry_at = Some(now + self.replay_backoff(&replay, now));
                self.replays.push_back(replay);
                return;
            }
            if replay.finished {
                return self.finish_replay(replay);
            }
        }
        let step = match replay.plan {
            Plan::Since { .. } => self.since_step(&mut replay),
            Plan::Tail { .. } => self.tail_step(&mut replay),
        };
        match step {
            Step::More => self.replays.push_back(replay),
            Step::Done if !replay.backlog.is_empty() => {
                replay.finished = true;
                replay.retry_at = Some(now + self.replay_backoff(&replay, now));
                self.replays.push_back(replay);
            }
            Step::Done => self.finish_replay(replay),
        }
    }

    /// How long `replay` waits with a backlog: until its client's budget holds a slice's
    /// worth (or what is left), at least `FULL_BACKOFF` (the socket was full).
    fn replay_backoff(&mut self, replay: &Replay, now: Instant) -> std::time::Duration {
        let wanted = replay.backlog.len().min(SLICE);
        let budget = self
            .clients
            .get_mut(&replay.sid)
            .map_or(std::time::Duration::ZERO, |c| c.replay_wait(wanted, now));
        budget.max(FULL_BACKOFF)
    }

    /// What `replay`'s registration receives of `slice`: its filter's matches, narrowed to
    /// its scope and through its transforms. `None` if the filter failed.
    fn replay_matches(
        &mut self,
        replay: &Replay,
        slice: &[Arc<LogRecord>],
    ) -> Option<Vec<Arc<LogRecord>>> {
        let mut out = Vec::new();
        self.registry
            .evaluate_one(&replay.filter, slice, &mut out)
            .ok()?;
        let Some(m) = out.iter().find(|m| m.registration == replay.registration) else {
            return Some(Vec::new());
        };
        self.registry.deliverable(m, slice).ok()
    }

    fn since_step(&mut self, replay: &mut Replay) -> Step {
        let Plan::Since { after, end } = replay.plan else {
            return Step::Done;
        };
        if replay.epoch != self.epoch {
            replay.recovered = false;
            return Step::Done;
        }
        // The history dropped what was left to replay: not exact.
        let Ok(slice) = self.history.read_after(after, SLICE) else {
            replay.recovered = false;
            return Step::Done;
        };
        let slice: Vec<Arc<LogRecord>> = slice.into_iter().filter(|r| position(r) <= end).collect();
        let Some(last) = slice.last().map(|r| position(r)) else {
            return Step::Done;
        };
        replay.plan = Plan::Since { after: last, end };
        let Some(mut logs) = self.replay_matches(replay, &slice) else {
            replay.recovered = false;
            return Step::Done;
        };
        let room = self
            .config
            .history
            .replay_max_logs
            .saturating_sub(replay.sent + replay.backlog.len());
        let truncated = logs.len() > room;
        logs.truncate(room);
        self.deliver_replayed(replay, &logs);
        if truncated {
            replay.recovered = false;
            return Step::Done;
        }
        if last >= end { Step::Done } else { Step::More }
    }

    fn tail_step(&mut self, replay: &mut Replay) -> Step {
        let Plan::Tail { n, end } = replay.plan else {
            return Step::Done;
        };
        let upto = replay.back_from.unwrap_or(Position {
            major: end.major,
            minor: end.minor.saturating_add(1),
        });
        let slice = self.history.before(upto, SLICE);
        let Some(first) = slice.first().map(|r| position(r)) else {
            return self.send_tail(replay);
        };
        replay.back_from = Some(first);
        let Some(logs) = self.replay_matches(replay, &slice) else {
            return self.send_tail(replay);
        };
        for log in logs.into_iter().rev() {
            if replay.found.len() == n {
                break;
            }
            replay.found.push_front(log);
        }
        if replay.found.len() >= n {
            self.send_tail(replay)
        } else {
            Step::More
        }
    }

    fn send_tail(&mut self, replay: &mut Replay) -> Step {
        let logs: Vec<Arc<LogRecord>> = replay.found.drain(..).collect();
        self.deliver_replayed(replay, &logs);
        Step::Done
    }

    fn deliver_replayed(&mut self, replay: &mut Replay, logs: &[Arc<LogRecord>]) {
        if logs.is_empty() {
            return;
        }
        if let Some(client) = self.clients.get_mut(&replay.sid) {
            let (sent, unsent) = client.deliver_replay(logs, Instant::now());
            replay.sent += sent;
            self.followups.note(client);
            replay.backlog.extend(unsent);
        }
    }

    /// The replay is over: the held live logs follow, then `log:subscribed` says how it went.
    fn finish_replay(&mut self, mut replay: Replay) {
        self.metrics.replay_served(replay.recovered);
        if let Plan::Since { .. } = replay.plan {
            replay.subscribed.recovered = Some(replay.recovered);
        }
        replay.subscribed.replayed = Some(replay.sent as u64);
        if let Some(client) = self.clients.get_mut(&replay.sid) {
            client.emit(event::SUBSCRIBED, &replay.subscribed);
            client.finish_replay();
        }
        if let Some(reply) = replay.reply.take() {
            self.answer(reply, Ok(replay.subscribed));
        }
    }

    /// Stop `sid`'s replay: its subscription changed (`Superseded`: the held live logs go
    /// out, unless the new subscription replays history itself, which covers them) or ended
    /// (`Ended`: the pending acknowledgement gets the error).
    pub(super) fn cancel_replay(&mut self, sid: Sid, why: Cancel) {
        let Some(i) = self.replays.iter().position(|r| r.sid == sid) else {
            return;
        };
        let Some(mut replay) = self.replays.remove(i) else {
            return;
        };
        if let Some(client) = self.clients.get_mut(&sid) {
            match &why {
                Cancel::Superseded { replays: true } | Cancel::Ended(_) => {
                    client.discard_kept();
                }
                Cancel::Superseded { replays: false } => {}
            }
            client.finish_replay();
        }
        if let Some(reply) = replay.reply.take() {
            let error = match why {
                Cancel::Ended(e) => e,
                Cancel::Superseded { .. } => ClientError::new(
                    crate::protocol::Code::Busy,
                    "superseded by a newer subscription",
                ),
            };
            self.answer(reply, Err(error));
        }
    }

    /// A refreshed token changed `sid`'s registration: the replay follows it, and what it
    /// found but has not sent yet is held to the new scope.
    pub(super) fn rescope_replay(&mut self, sid: Sid) {
        let Some(registration) = self.registry.registration_of(sid) else {
            return;
        };
        let Some(scope) = self.clients.get(&sid).map(|c| c.scope().clone()) else {
            return;
        };
        for replay in self.replays.iter_mut().filter(|r| r.sid == sid) {
            replay.registration = registration;
            replay.backlog.retain(|l| scope.matches(&l.device_id));
            replay.found.retain(|l| scope.matches(&l.device_id));
        }
    }
}

/// Why a replay stops early.
pub enum Cancel {
    Superseded { replays: bool },
    Ended(ClientError),
}
