//! Group commit of assignments on one node: concurrent requests queue up, and whoever
//! finds the writer free takes what is queued (oldest first; at most a set number, see
//! [`GroupCommit::with_max_batch`]) to
//! [`Ipam::assign_many`] at once. While one batch writes, the next one gathers, so a burst
//! of pods becomes a few block writes instead of one compare-and-swap race per pod.
//!
//! A writer that starts while other requests are known to be on their way (announced
//! with [`GroupCommit::arriving`], still doing their own reads) waits a few milliseconds
//! ([`GATHER`]) for them to join its batch; a lone request never waits.
//!
//! The writer lock is also what the agent holds for its other IPAM writes (release, GC),
//! so they never race the node's own assignments.

use crate::datastore::DatastoreError;
use crate::error::IpamError;
use crate::ipam::{AssignRequest, Assignment, Ipam};
use crate::model::KIND_BLOCK;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{oneshot, MutexGuard, Notify};

/// The longest a writer waits for announced requests to join its batch.
pub const GATHER: Duration = Duration::from_millis(5);

/// A good [`GroupCommit::with_max_batch`] for a CNI agent: a burst of pods is written in
/// batches of this many, oldest first, so the first pods get their addresses (and go on to
/// be wired) while the next batch is written, instead of every pod waiting for the whole
/// burst; a batch's handle writes still go out together.
pub const MAX_BATCH: usize = 32;

type Reply = oneshot::Sender<Result<Assignment, IpamError>>;

/// The assignment queue of one node.
pub struct GroupCommit {
    ipam: Arc<Ipam>,
    node: String,
    queue: Mutex<Vec<(AssignRequest, Reply)>>,
    writer: tokio::sync::Mutex<()>,
    /// Requests announced and not queued yet.
    arriving: Arc<AtomicUsize>,
    queued_one: Arc<Notify>,
    max_batch: usize,
}

/// A request on its way to [`GroupCommit::assign`] (see [`GroupCommit::arriving`]);
/// dropping it unused (the request failed before) withdraws the announcement.
pub struct Arrival {
    arriving: Arc<AtomicUsize>,
    queued_one: Arc<Notify>,
    done: bool,
}

impl Arrival {
    fn arrive(&mut self) {
        if !self.done {
            self.done = true;
            self.arriving.fetch_sub(1, Ordering::SeqCst);
            self.queued_one.notify_waiters();
        }
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.arrive();
    }
}

impl GroupCommit {
    pub fn new(ipam: Arc<Ipam>, node: impl Into<String>) -> Self {
        GroupCommit {
            ipam,
            node: node.into(),
            queue: Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(()),
            arriving: Arc::new(AtomicUsize::new(0)),
            queued_one: Arc::new(Notify::new()),
            max_batch: usize::MAX,
        }
    }

    /// Writes at most `n` requests (at least 1) per batch; without it, a batch takes
    /// everything queued.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Announces a request that will reach [`GroupCommit::assign_arriving`] soon (a CNI
    /// ADD that is still validating and reading): a writer starting meanwhile waits for
    /// it, up to [`GATHER`].
    pub fn arriving(&self) -> Arrival {
        self.arriving.fetch_add(1, Ordering::SeqCst);
        Arrival {
            arriving: self.arriving.clone(),
            queued_one: self.queued_one.clone(),
            done: false,
        }
    }

    pub fn ipam(&self) -> &Arc<Ipam> {
        &self.ipam
    }

    /// Waits until no announced request is still on its way, at most [`GATHER`].
    async fn gather(&self) {
        let deadline = tokio::time::Instant::now() + GATHER;
        loop {
            let notified = self.queued_one.notified();
            if self.arriving.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Requests waiting for a writer.
    pub fn queued(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Holds off every batch while the guard lives (for the node's other IPAM writes).
    pub async fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().await
    }

    /// Assigns through the queue: the same answer [`Ipam::assign`] gives.
    pub async fn assign(&self, request: AssignRequest) -> Result<Assignment, IpamError> {
        self.assign_arriving(self.arriving(), request).await
    }

    /// [`GroupCommit::assign`] of a request announced with [`GroupCommit::arriving`].
    pub async fn assign_arriving(
        &self,
        mut arrival: Arrival,
        request: AssignRequest,
    ) -> Result<Assignment, IpamError> {
        let (tx, mut rx) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((request, tx));
        arrival.arrive();
        let mut mine = None;
        {
            let _writer = self.writer.lock().await;
            // Batches of what queued meanwhile, oldest first, until ours is answered
            // (an earlier writer may have taken it already).
            loop {
                self.gather().await;
                let batch: Vec<(AssignRequest, Reply)> = {
                    let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                    let n = q.len().min(self.max_batch);
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                let (requests, replies): (Vec<AssignRequest>, Vec<Reply>) =
                    batch.into_iter().unzip();
                let results = self.ipam.assign_many(&self.node, &requests).await;
                for (reply, result) in replies.into_iter().zip(results) {
                    // A requester that gave up has gone; nothing to tell it.
                    let _ = reply.send(result);
                }
                match rx.try_recv() {
                    Ok(r) => {
                        mine = Some(r);
                        break;
                    }
                    Err(oneshot::error::TryRecvError::Empty) => continue,
                    Err(oneshot::error::TryRecvError::Closed) => break,
                }
            }
        }
        if let Some(r) = mine {
            return r;
        }
        rx.await.unwrap_or_else(|_| {
            // The writer that took our request was cancelled before answering.
            Err(IpamError::Store {
                op: "assign",
                kind: KIND_BLOCK,
                name: "(a batch of assignments)".to_string(),
                source: Box::new(DatastoreError::Unavailable {
                    detail: "the batch this request was in was abandoned".to_string(),
                }),
            })
        })
    }
}
