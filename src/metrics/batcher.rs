//! Group commit of batchable queries (see [`super::batch`]): the first query of a shape and
//! evaluation time is sent at once, alone; the queries of the same shape and time that arrive
//! while it is under way wait, and are sent together as one query when it returns. An idle
//! backend sees every query as soon as it is asked; a busy cycle sees one query per shape in
//! flight, however many APIs ask.
//!
//! Nothing waits on a batch without a way out: a batch that cannot be planned or split, or that
//! the backend rejects, sends each of its queries alone; a batch task that dies drops its
//! waiting queries' replies, and they are sent alone too. Only a backend that is down or too
//! slow (unreachable, timed out) answers every member with that same error, as each would get
//! on its own, without trying each again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use tokio::sync::oneshot;

use super::batch::{plan, Shape};
use super::client::{PromClient, QueryError, QueryResult};

/// A member's answer: its result, or `None` to send its query alone.
type Reply = oneshot::Sender<Option<Result<QueryResult, QueryError>>>;

struct Waiting {
    query: String,
    shape: Shape,
    reply: Reply,
}

type Key = (String, Timestamp);

/// How many queries were asked, and how many requests answered them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Queries answered by a batch of two or more.
    pub batched: u64,
    /// Batched requests sent.
    pub batches: u64,
    /// Queries sent alone: not batchable, alone in their group, or fallen back.
    pub alone: u64,
    /// Queries of batches whose answer could not be used, sent alone again.
    pub fallen_back: u64,
}

pub(super) struct Batcher {
    /// The client without batching.
    direct: PromClient,
    max: usize,
    /// The queries waiting for each shape and time; a key present means a batch task runs.
    queues: Mutex<HashMap<Key, Vec<Waiting>>>,
    batched: AtomicU64,
    batches: AtomicU64,
    alone: AtomicU64,
    fallen_back: AtomicU64,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("max", &self.max).finish()
    }
}

impl Batcher {
    pub(super) fn new(direct: PromClient, max: usize) -> Batcher {
        Batcher {
            direct,
            max,
            queues: Mutex::new(HashMap::new()),
            batched: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            alone: AtomicU64::new(0),
            fallen_back: AtomicU64::new(0),
        }
    }

    pub(super) fn stats(&self) -> BatchStats {
        BatchStats {
            batched: self.batched.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            alone: self.alone.load(Ordering::Relaxed),
            fallen_back: self.fallen_back.load(Ordering::Relaxed),
        }
    }

    fn queues(&self) -> MutexGuard<'_, HashMap<Key, Vec<Waiting>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) async fn instant(
        self: &Arc<Self>,
        query: &str,
        time: Timestamp,
    ) -> Result<QueryResult, QueryError> {
        let Some(shape) = Shape::of(query) else {
            return self.alone(query, time).await;
        };
        let key = (shape.key().to_string(), time);
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            query: query.to_string(),
            shape,
            reply,
        };
        let lead = {
            let mut queues = self.queues();
            match queues.get_mut(&key) {
                Some(queue) => {
                    queue.push(waiting);
                    false
                }
                None => {
                    queues.insert(key.clone(), vec![waiting]);
                    true
                }
            }
        };
        if lead {
            // Its own task: a caller that gives up (its evaluation timed out) does not take the
            // others' batch down with it.
            tokio::spawn(self.clone().drive(key));
        }
        match answer.await {
            Ok(Some(result)) => result,
            _ => self.alone(query, time).await,
        }
    }

    async fn alone(&self, query: &str, time: Timestamp) -> Result<QueryResult, QueryError> {
        self.alone.fetch_add(1, Ordering::Relaxed);
        self.direct.instant_alone(query, time).await
    }

    /// Sends the queries of `key` until none waits, then lets the next one start a new task.
    async fn drive(self: Arc<Self>, key: Key) {
        let mut guard = Forget {
            batcher: &self,
            key: &key,
            armed: true,
        };
        loop {
            let chunk: Vec<Waiting> = {
                let mut queues = self.queues();
                match queues.get_mut(&key) {
                    Some(queue) if !queue.is_empty() => {
                        let n = queue.len().min(self.max);
                        queue.drain(..n).collect()
                    }
                    _ => {
                        queues.remove(&key);
                        guard.armed = false;
                        return;
                    }
                }
            };
            self.answer(chunk, key.1).await;
        }
    }

    async fn answer(&self, mut chunk: Vec<Waiting>, time: Timestamp) {
        if chunk.len() == 1 {
            let w = chunk.pop().expect("one");
            let result = self.alone(&w.query, time).await;
            let _ = w.reply.send(Some(result));
            return;
        }
        let shapes: Vec<&Shape> = chunk.iter().map(|w| &w.shape).collect();
        let Some(planned) = plan(&shapes) else {
            return fall_back(chunk);
        };
        let fall_back = |chunk: Vec<Waiting>| {
            self.fallen_back
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            fall_back(chunk)
        };
        self.batches.fetch_add(1, Ordering::Relaxed);
        match self.direct.instant_alone(&planned.query, time).await {
            Ok(result) => match planned.split(result) {
                Some(parts) => {
                    self.batched
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    for (w, part) in chunk.into_iter().zip(parts) {
                        let _ = w.reply.send(Some(Ok(part)));
                    }
                }
                None => {
                    tracing::warn!(query = %planned.query, "A batched answer did not split by its labels; sending its queries one by one.");
                    fall_back(chunk)
                }
            },
            Err(e @ (QueryError::Unreachable(_) | QueryError::Timeout(_))) => {
                for w in chunk {
                    let _ = w.reply.send(Some(Err(e.clone())));
                }
            }
            Err(e) => {
                tracing::debug!(query = %planned.query, error = %e, "A batched query failed; sending its queries one by one.");
                fall_back(chunk)
            }
        }
    }
}

/// Each member sends its query alone.
fn fall_back(chunk: Vec<Waiting>) {
    for w in chunk {
        let _ = w.reply.send(None);
    }
}

/// Removes a batch task's queue if the task ends other than by emptying it (a panic): the
/// waiting queries' replies are dropped and they are sent alone, and the next query of the
/// shape starts a new task.
struct Forget<'a> {
    batcher: &'a Batcher,
    key: &'a Key,
    armed: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.batcher.queues().remove(self.key);
        }
    }
}
