//! Graceful shutdown: stop accepting, let requests and tunnels finish within the
//! drain period, then stop what is left.
//!
//! hyper forgets a connection once it upgrades, so tunnels are tracked here, beside
//! the connections: every task that serves a client is spawned through
//! [`Shutdown::spawn`].

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A shared handle on the gateway's shutdown; cheap to clone.
#[derive(Clone, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Spawns a task that shutdown waits for.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Resolves once draining has begun: listeners stop accepting and idle
    /// connections close.
    pub async fn draining(&self) {
        self.drain.cancelled().await
    }

    /// Whether draining has begun.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// The token cancelled when draining begins, for what watches it without an
    /// `async` wait (each server's own child token, which its tunnels watch).
    pub fn drain_token(&self) -> &CancellationToken {
        &self.drain
    }

    /// Resolves once the drain period is over: whatever still runs must end now.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// The token cancelled when the drain period is over, for what watches it
    /// without an `async` wait (tunnels, and each server's own child token).
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Drains: signals every listener and connection, waits up to `grace` for the
    /// tracked tasks to finish, then stops the rest and waits for them to go.
    /// Returns how many tasks had to be stopped.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.drain.cancel();
        self.tasks.close();
        let mut forced = 0;
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            forced = self.tasks.len();
            tracing::info!(
                remaining = forced,
                "drain period over; closing what is left"
            );
        }
        self.stop.cancel();
        // Stopped tasks only have to drop their sockets; a bound guards against one
        // stuck in a write that will never complete.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        forced
    }

    /// Ends everything now, without a drain period.
    pub fn stop_now(&self) {
        self.drain.cancel();
        self.stop.cancel();
        self.tasks.close();
    }
}
