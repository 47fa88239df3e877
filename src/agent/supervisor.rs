//! The supervisor: every long-running task of the agent runs under it. The first task to
//! end, fail or panic stops the agent: readiness turns false at once, the task is named in
//! the log with its error or panic message, and [`Supervisor::first_exit`] returns so the
//! agent can exit non-zero and let the node's supervisor (systemd, kubelet) restart it.
//! None of the agent's tasks is meant to end while the agent runs, so ending at all,
//! even with `Ok`, is a failure.

use crate::metrics::Health;
use anyhow::Result;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use tokio::task::{AbortHandle, Id, JoinError, JoinHandle, JoinSet};
use tracing::error;

/// How a supervised task ended.
#[derive(Debug)]
pub enum Ended {
    /// It returned `Ok`: a task that should run for the agent's life stopped.
    Returned,
    /// It returned an error.
    Failed(anyhow::Error),
    /// It panicked, with this message.
    Panicked(String),
    /// It was cancelled from outside the supervisor.
    Cancelled,
}

/// The first task that ended, and how.
#[derive(Debug)]
pub struct TaskExit {
    pub task: &'static str,
    pub ended: Ended,
}

impl fmt::Display for TaskExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.task;
        match &self.ended {
            Ended::Returned => write!(f, "the {t} task stopped unexpectedly"),
            Ended::Failed(e) => write!(f, "the {t} task failed: {e:#}"),
            Ended::Panicked(m) => write!(f, "the {t} task panicked: {m}"),
            Ended::Cancelled => write!(f, "the {t} task was cancelled"),
        }
    }
}

impl std::error::Error for TaskExit {}

/// Runs named tasks and reports the first one to end.
pub struct Supervisor {
    tasks: JoinSet<Result<()>>,
    names: HashMap<Id, &'static str>,
    health: Arc<Health>,
}

impl Supervisor {
    /// A supervisor that marks `health` as failed when a task ends.
    pub fn new(health: Arc<Health>) -> Supervisor {
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            health,
        }
    }

    /// Spawns `task` under the name `name` (used in logs and readiness).
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        let h = self.tasks.spawn(fault::inject(name, task));
        self.names.insert(h.id(), name);
    }

    /// Supervises a task spawned elsewhere (the BGP driver spawns its own). Its panic is
    /// reported as this task's panic.
    pub fn adopt(&mut self, name: &'static str, task: JoinHandle<()>) {
        // Stopping the supervisor stops the adopted task too, even before its first poll.
        let stop = AbortOnDrop(task.abort_handle());
        self.spawn(name, async move {
            let _stop = stop;
            match task.await {
                Ok(()) => Ok(()),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(anyhow::anyhow!("{e}")),
            }
        })
    }

    /// Waits until a task ends; then readiness is false and the task is logged as an error.
    /// With no task at all this waits forever.
    pub async fn first_exit(&mut self) -> TaskExit {
        let exit = match self.tasks.join_next_with_id().await {
            None => return std::future::pending().await,
            Some(Ok((id, r))) => TaskExit {
                task: self.name(id),
                ended: match r {
                    Ok(()) => Ended::Returned,
                    Err(e) => Ended::Failed(e),
                },
            },
            Some(Err(e)) => TaskExit {
                task: self.name(e.id()),
                ended: ended_by(e),
            },
        };
        self.health.set_failed(exit.to_string());
        error!(task = exit.task, "{exit}; exiting so that the node's supervisor restarts the agent (kernel routes and pods stay)");
        exit
    }

    /// Stops every remaining task.
    pub async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
    }

    fn name(&self, id: Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("unnamed")
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn ended_by(e: JoinError) -> Ended {
    if !e.is_panic() {
        return Ended::Cancelled;
    }
    let p = e.into_panic();
    let msg = if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    };
    Ended::Panicked(msg)
}

/// A test-only fault hook, compiled into debug builds only (release builds have none):
/// with `FERROVIA_TEST_FAIL_TASK=NAME` (or `NAME:panic`) in the environment, the task
/// `NAME` fails with an error (or panics) when the agent receives SIGUSR1. End-to-end
/// tests use it to kill one task of a real agent.
#[cfg(debug_assertions)]
mod fault {
    use anyhow::Result;
    use std::future::Future;

    pub const ENV: &str = "FERROVIA_TEST_FAIL_TASK";

    pub async fn inject<F>(name: &'static str, task: F) -> Result<()>
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        let want = std::env::var(ENV).unwrap_or_default();
        let (target, panic) = match want.split_once(':') {
            Some((t, mode)) => (t.to_string(), mode == "panic"),
            None => (want, false),
        };
        if target != name {
            return task.await;
        }
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = signal(SignalKind::user_defined1())?;
        tracing::warn!(
            task = name,
            "{ENV}: this task fails on SIGUSR1 (a debug build's test hook)"
        );
        tokio::select! {
            r = task => r,
            _ = usr1.recv() => {
                if panic {
                    panic!("{ENV} asked the {name} task to panic");
                }
                anyhow::bail!("{ENV} asked the {name} task to fail")
            }
        }
    }
}

#[cfg(not(debug_assertions))]
mod fault {
    use anyhow::Result;
    use std::future::Future;

    pub fn inject<F>(_name: &'static str, task: F) -> F
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        task
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Generous: only a broken supervisor waits this long.
    const DEADLINE: Duration = Duration::from_secs(30);

    async fn first(sup: &mut Supervisor) -> TaskExit {
        tokio::time::timeout(DEADLINE, sup.first_exit())
            .await
            .expect("a task ended")
    }

    /// A task that runs until the test ends.
    async fn forever() -> Result<()> {
        std::future::pending::<()>().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_task_that_fails_is_named_with_its_error_and_readiness_turns_false() {
        let health = Arc::new(Health::default());
        let mut sup = Supervisor::new(health.clone());
        sup.spawn("kernel", forever());
        sup.spawn("mesh", async {
            tokio::task::yield_now().await;
            Err(anyhow::anyhow!("the datastore watch ended"))
        });
        sup.spawn("control", forever());
        assert_eq!(health.failed(), None, "ready while every task runs");
        let exit = first(&mut sup).await;
        assert_eq!(exit.task, "mesh");
        assert!(matches!(exit.ended, Ended::Failed(_)), "{exit:?}");
        assert_eq!(
            exit.to_string(),
            "the mesh task failed: the datastore watch ended"
        );
        assert_eq!(health.failed(), Some(exit.to_string()));
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn a_task_that_returns_is_a_failure_too() {
        let health = Arc::new(Health::default());
        let mut sup = Supervisor::new(health.clone());
        sup.spawn("kernel", forever());
        sup.spawn("heartbeat", async { Ok(()) });
        let exit = first(&mut sup).await;
        assert_eq!(exit.task, "heartbeat");
        assert!(matches!(exit.ended, Ended::Returned), "{exit:?}");
        assert_eq!(exit.to_string(), "the heartbeat task stopped unexpectedly");
        assert!(health.failed().is_some());
    }

    #[tokio::test]
    async fn a_task_that_panics_is_named_with_the_panic_message() {
        let health = Arc::new(Health::default());
        let mut sup = Supervisor::new(health.clone());
        sup.spawn("mesh", forever());
        sup.spawn("announce", async {
            let blocks: Vec<u32> = Vec::new();
            if blocks.is_empty() {
                panic!("no block at index {}", blocks.len());
            }
            Ok(())
        });
        let exit = first(&mut sup).await;
        assert_eq!(exit.task, "announce");
        match &exit.ended {
            Ended::Panicked(m) => assert_eq!(m, "no block at index 0"),
            other => panic!("not a panic: {other:?}"),
        }
        assert_eq!(
            health.failed().as_deref(),
            Some("the announce task panicked: no block at index 0")
        );
    }

    #[tokio::test]
    async fn an_adopted_task_that_panics_is_reported_under_its_name() {
        let health = Arc::new(Health::default());
        let mut sup = Supervisor::new(health.clone());
        sup.spawn("control", forever());
        let driver = tokio::spawn(async {
            tokio::task::yield_now().await;
            panic!("speaker state machine broke");
        });
        sup.adopt("speaker", driver);
        let exit = first(&mut sup).await;
        assert_eq!(exit.task, "speaker");
        assert_eq!(
            exit.to_string(),
            "the speaker task panicked: speaker state machine broke"
        );
        assert!(health.failed().is_some());
    }

    #[tokio::test]
    async fn shutting_down_stops_adopted_tasks_too() {
        let mut sup = Supervisor::new(Arc::new(Health::default()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let driver = tokio::spawn(async move {
            let _tx = tx; // dropped when this task is stopped
            std::future::pending::<()>().await;
        });
        sup.adopt("speaker", driver);
        sup.shutdown().await;
        let r = tokio::time::timeout(DEADLINE, rx)
            .await
            .expect("the adopted task stopped");
        assert!(r.is_err(), "stopped, not completed");
    }

    #[tokio::test]
    async fn the_first_failure_stays_the_reason() {
        let health = Arc::new(Health::default());
        let mut sup = Supervisor::new(health.clone());
        sup.spawn("kernel", async { Err(anyhow::anyhow!("first")) });
        let exit = first(&mut sup).await;
        sup.spawn("mesh", async { Err(anyhow::anyhow!("second")) });
        let second = first(&mut sup).await;
        assert_eq!(second.task, "mesh");
        assert_eq!(health.failed(), Some(exit.to_string()));
    }
}
