//! Appends that wait for replicas (`redis_min_replicas`), committed in groups.
//!
//! `WAIT` holds its connection: while Redis waits for the replicas it runs nothing else that
//! connection sent. One `WAIT` per request would queue the requests behind each other's
//! waits (with a replica down, the k-th answered after k timeouts, past its own deadline).
//! So one task takes every append waiting, sends them in one pipeline followed by a single
//! `WAIT` (which covers them all: each script wrote), and gives each request that answer.
//! Groups follow each other: while one waits, the next gathers.

use std::time::Duration;

use redis::{FromRedisValue, Value};
use tokio::sync::{mpsc, oneshot};

use super::connector::BusConn;
use crate::bus::PublishError;

/// Most appends in one group.
const GROUP: usize = 64;
/// Appends waiting for a group; past it a request waits for room (ingest is bounded before).
const QUEUE: usize = 1024;

/// What an append's script answered (the new entries' ids, or `None`: its key was published
/// before) and how many replicas confirmed its group.
pub type Answer = Result<(Option<Vec<String>>, usize), PublishError>;

struct Append {
    script: redis::Cmd,
    reply: oneshot::Sender<Answer>,
}

/// The way in to the group task.
pub struct ReplicatedAppends {
    tx: mpsc::Sender<Append>,
}

impl ReplicatedAppends {
    /// Start the task on `conn` (the appends' own connection): groups wait for
    /// `min_replicas` for up to `timeout`, and for Redis's answer up to `deadline`.
    pub fn start(
        conn: BusConn,
        min_replicas: usize,
        timeout: Duration,
        deadline: Duration,
    ) -> ReplicatedAppends {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, conn, min_replicas, timeout, deadline));
        ReplicatedAppends { tx }
    }

    /// Run `script` (an append) in the next group.
    pub async fn append(&self, script: redis::Cmd) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Append { script, reply })
            .await
            .map_err(|_| PublishError::Closed)?;
        answer.await.map_err(|_| PublishError::Closed)?
    }
}

async fn run(
    mut rx: mpsc::Receiver<Append>,
    mut conn: BusConn,
    min_replicas: usize,
    timeout: Duration,
    deadline: Duration,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for a in &group {
            pipe.add_command(a.script.clone());
        }
        pipe.cmd("WAIT")
            .arg(min_replicas)
            .arg(timeout.as_millis() as u64);
        let answer =
            tokio::time::timeout(deadline, pipe.query_async::<Vec<Value>>(&mut conn)).await;
        let mut values = match answer {
            Ok(Ok(values)) if values.len() == group.len() + 1 => values,
            Ok(Ok(_)) => {
                fail(group, "redis: an unexpected answer to a group of appends");
                continue;
            }
            Ok(Err(e)) => {
                fail(group, &format!("redis: {e}"));
                continue;
            }
            Err(_) => {
                fail(group, "redis did not answer in time");
                continue;
            }
        };
        let confirmed = values
            .pop()
            .and_then(|v| usize::from_redis_value(v).ok())
            .unwrap_or(0);
        for (a, v) in group.into_iter().zip(values) {
            let ids = Option::<Vec<String>>::from_redis_value(v)
                .map_err(|e| PublishError::Unavailable(format!("redis: {e}")));
            let _ = a.reply.send(ids.map(|ids| (ids, confirmed)));
        }
    }
}

fn fail(group: Vec<Append>, why: &str) {
    for a in group {
        let _ = a.reply.send(Err(PublishError::Unavailable(why.to_owned())));
    }
}
