//! Group commit of assignments on one node: concurrent requests queue up, and whoever
//! finds the writer free takes everything queued to [`Ipam::assign_many`] at once. While
//! one batch writes, the next one gathers, so a burst of pods becomes a few block writes
//! instead of one compare-and-swap race per pod.
//!
//! The writer lock is also what the agent holds for its other IPAM writes (release, GC),
//! so they never race the node's own assignments.

use crate::datastore::DatastoreError;
use crate::error::IpamError;
use crate::ipam::{AssignRequest, Assignment, Ipam};
use crate::model::KIND_BLOCK;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{oneshot, MutexGuard};

type Reply = oneshot::Sender<Result<Assignment, IpamError>>;

/// The assignment queue of one node.
pub struct GroupCommit {
    ipam: Arc<Ipam>,
    node: String,
    queue: Mutex<Vec<(AssignRequest, Reply)>>,
    writer: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    pub fn new(ipam: Arc<Ipam>, node: impl Into<String>) -> Self {
        GroupCommit {
            ipam,
            node: node.into(),
            queue: Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    pub fn ipam(&self) -> &Arc<Ipam> {
        &self.ipam
    }

    /// Requests waiting for a writer.
    pub fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Holds off every batch while the guard lives (for the node's other IPAM writes).
    pub async fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().await
    }

    /// Assigns through the queue: the same answer [`Ipam::assign`] gives.
    pub async fn assign(&self, request: AssignRequest) -> Result<Assignment, IpamError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((request, tx));
        {
            let _writer = self.writer.lock().await;
            // Whatever queued meanwhile, ours included unless an earlier writer took it.
            let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
            if !batch.is_empty() {
                let (requests, replies): (Vec<AssignRequest>, Vec<Reply>) = batch.into_iter().unzip();
                let results = self.ipam.assign_many(&self.node, &requests).await;
                for (reply, result) in replies.into_iter().zip(results) {
                    // A requester that gave up has gone; nothing to tell it.
                    let _ = reply.send(result);
                }
            }
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
