//! One upstream server's live state: its resolved addresses, idle connections, load,
//! health, and retirement. A server keeps this state across reloads for as long as the
//! configuration keeps it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::client::conn::http1::SendRequest;
use prometheus::IntGauge;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::body::RequestBody;
use crate::config::ServerAddr;

/// How long an idle pooled connection is kept. Shorter than the keep-alive timeout of
/// common backends (Node.js closes at 5 s, nginx at 75 s, Go never) would be safest
/// against the close-while-sending race, but the race is also handled: a request that
/// was not yet written when the connection closed is sent again on a new one.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Repeated ejections double the back-off up to this.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Time as milliseconds since the process started, for lock-free deadlines.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// One upstream server.
pub struct Server {
    /// As written in the configuration; the label in logs and metrics.
    pub name: Arc<str>,
    /// What `name` resolves to; replaced when it is resolved again.
    addrs: ArcSwap<Vec<SocketAddr>>,
    next_addr: AtomicUsize,
    /// Whether `name` is a host name to resolve again.
    pub resolve: bool,
    weight: AtomicU32,
    /// The Host header for requests that came without one (HTTP/1.0).
    pub(super) host: HeaderValue,
    idle: Mutex<VecDeque<Idle>>,
    /// Open HTTP/2 connections, for upstreams that speak it.
    pub(super) h2: super::h2::Pool,
    keepalive: AtomicUsize,
    /// Open connections: requests in flight and tunnels.
    load: AtomicU64,
    health: Health,
    up: IntGauge,
    /// Cancelled when the server leaves the configuration, or when shutdown's drain
    /// ends (it is a child of shutdown's token): either way its tunnels must end.
    /// Shared by every `Server` of the same name, in any upstream.
    ending: CancellationToken,
}

struct Idle {
    conn: Http1Conn,
    since: Instant,
}

/// An HTTP/1.1 connection to a server: what sends on it, and the task that drives it.
/// Dropping it ends the task at once. Dropping the sender alone would not: hyper
/// keeps a connection with a request in flight until that request is written, and
/// toward a server that reads nothing (or is frozen) that is until `[tcp]
/// user_timeout`, or never. A connection is dropped when a request on it timed out,
/// its client went away, its response was abandoned, or the pool let it go; in every
/// one of those cases it can carry nothing more.
pub(super) struct Http1Conn {
    pub sender: SendRequest<RequestBody>,
    pub task: AbortHandle,
}

impl Drop for Http1Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server's health as a person reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthView {
    /// How much longer passive health keeps it ejected; zero when it is not.
    pub ejected_for: Duration,
    /// Failed connects in a row.
    pub failed_connects: u32,
    /// Active health checks hold it down.
    pub checks_failing: bool,
}

/// Passive (connect failures) and active (health checks) health.
#[derive(Default)]
struct Health {
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
    check_down: AtomicBool,
    check_streak: AtomicU32,
}

impl Server {
    pub fn new(
        spec: &ServerAddr,
        keepalive: usize,
        up: IntGauge,
        ending: CancellationToken,
    ) -> Server {
        up.set(1);
        Server {
            name: spec.name.as_str().into(),
            addrs: ArcSwap::from_pointee(spec.addrs.clone()),
            next_addr: AtomicUsize::new(0),
            resolve: spec.resolve,
            weight: AtomicU32::new(spec.weight.max(1)),
            host: HeaderValue::from_str(&spec.name)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            idle: Mutex::new(VecDeque::new()),
            h2: super::h2::Pool::default(),
            keepalive: AtomicUsize::new(keepalive),
            load: AtomicU64::new(0),
            health: Health::default(),
            up,
            ending,
        }
    }

    /// Applies the settings of a reloaded configuration that keeps this server.
    pub fn update(&self, spec: &ServerAddr, keepalive: usize) {
        self.weight.store(spec.weight.max(1), Ordering::Relaxed);
        self.keepalive.store(keepalive, Ordering::Relaxed);
        if !self.resolve {
            self.addrs.store(Arc::new(spec.addrs.clone()));
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// The addresses to try for one connection, starting with the next in turn.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> {
        let addrs = self.addrs.load_full();
        let n = addrs.len().max(1);
        let start = self.next_addr.fetch_add(1, Ordering::Relaxed) % n;
        (0..addrs.len()).map(move |i| addrs[(start + i) % n])
    }

    /// Installs freshly resolved addresses (never an empty list: a failed resolution
    /// keeps the last good ones).
    pub fn set_addrs(&self, addrs: Vec<SocketAddr>) {
        if !addrs.is_empty() && **self.addrs.load() != addrs {
            tracing::info!(server = %self.name, ?addrs, "server resolved to new addresses");
            self.addrs.store(Arc::new(addrs));
        }
    }

    // ---- load ----

    /// Open connections to this server.
    pub fn load(&self) -> u64 {
        self.load.load(Ordering::Relaxed)
    }

    /// Counts one more connection, unless that would pass `cap`.
    pub fn try_load(self: &Arc<Self>, cap: Option<usize>) -> Option<LoadGuard> {
        let before = self.load.fetch_add(1, Ordering::Relaxed);
        if cap.is_some_and(|c| before >= c as u64) {
            self.load.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(LoadGuard(self.clone(), None))
    }

    // ---- health ----

    /// Whether the server may get new traffic: not ejected, not failing its checks.
    pub fn is_up(&self) -> bool {
        !self.health.check_down.load(Ordering::Relaxed)
            && now_ms() >= self.health.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Records a successful connect.
    pub fn connect_ok(&self) {
        if self.health.consecutive_failures.swap(0, Ordering::Relaxed) != 0 {
            self.health.ejections.store(0, Ordering::Relaxed);
            self.refresh_gauge();
        }
    }

    /// What the status page shows of this server's health.
    pub fn health(&self) -> HealthView {
        let until = self.health.ejected_until_ms.load(Ordering::Relaxed);
        HealthView {
            ejected_for: Duration::from_millis(until.saturating_sub(now_ms())),
            failed_connects: self.health.consecutive_failures.load(Ordering::Relaxed),
            checks_failing: self.health.check_down.load(Ordering::Relaxed),
        }
    }

    /// Records a failed connect; after `max_fails` in a row the server is ejected for
    /// `fail_timeout`, doubled for each ejection since it last worked.
    pub fn connect_failed(&self, max_fails: u32, fail_timeout: Duration) {
        let fails = self
            .health
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if max_fails == 0 || fails < max_fails {
            return;
        }
        let ejections = self.health.ejections.fetch_add(1, Ordering::Relaxed);
        let backoff = fail_timeout
            .saturating_mul(1u32 << ejections.min(16))
            .min(MAX_EJECTION.max(fail_timeout));
        self.health
            .ejected_until_ms
            .store(now_ms() + backoff.as_millis() as u64, Ordering::Relaxed);
        self.up.set(0);
        tracing::warn!(server = %self.name, failures = fails, backoff_ms = backoff.as_millis() as u64, "server ejected after failed connects");
    }

    /// Records an active health check's result; `fails` failures or `passes` passes in
    /// a row change the server's state.
    pub fn check_result(&self, ok: bool, fails: u32, passes: u32) {
        let down = self.health.check_down.load(Ordering::Relaxed);
        if ok != down {
            // Agrees with the current state (up and passing, or down and failing): the
            // streak toward a change starts over.
            self.health.check_streak.store(0, Ordering::Relaxed);
            return;
        }
        let streak = self.health.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= if ok { passes } else { fails } {
            self.health.check_streak.store(0, Ordering::Relaxed);
            self.health.check_down.store(!ok, Ordering::Relaxed);
            if ok {
                tracing::info!(server = %self.name, "server passed its health checks: up");
            } else {
                tracing::warn!(server = %self.name, "server failed its health checks: down");
            }
            self.refresh_gauge();
        }
    }

    /// Brings `sluice_upstream_server_up` in line (ejections end by time alone).
    pub fn refresh_gauge(&self) {
        self.up.set(i64::from(self.is_up()));
    }

    // ---- retirement ----

    /// Marks the server removed from the configuration: its tunnels drain.
    pub fn retire(&self) {
        self.ending.cancel();
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.up.set(0);
    }

    /// The token its tunnels watch: cancelled when the server is removed or the
    /// gateway's drain ends.
    pub fn ending(&self) -> CancellationToken {
        self.ending.clone()
    }

    // ---- pool ----

    pub(super) fn take_idle(&self) -> Option<Http1Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Newest first: the most recently used connection is the least likely to have
        // been closed by the server.
        while let Some(c) = idle.pop_back() {
            if !c.conn.sender.is_closed() && c.since.elapsed() < POOL_IDLE_TIMEOUT {
                return Some(c.conn);
            }
        }
        None
    }

    pub(super) fn put_idle(&self, conn: Http1Conn) {
        let keepalive = self.keepalive.load(Ordering::Relaxed);
        if conn.sender.is_closed() || keepalive == 0 || self.ending.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while idle
            .front()
            .is_some_and(|c| c.conn.sender.is_closed() || now - c.since >= POOL_IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        while idle.len() >= keepalive {
            idle.pop_front();
        }
        idle.push_back(Idle { conn, since: now });
    }

    /// Drops every pooled connection (their settings changed).
    pub fn clear_pool(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.h2.clear();
    }
}

/// One open connection counted against a server's load; released on drop. A tunnel
/// over a shared HTTP/2 connection also holds its stream's place there.
pub struct LoadGuard(Arc<Server>, Option<super::h2::Slot>);

impl LoadGuard {
    pub fn server(&self) -> &Arc<Server> {
        &self.0
    }

    /// Holds `slot` for as long as this guard.
    pub(super) fn with_slot(mut self, slot: super::h2::Slot) -> LoadGuard {
        self.1 = Some(slot);
        self
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.load.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Arc<Server> {
        let spec = ServerAddr {
            name: "127.0.0.1:1".into(),
            addrs: vec!["127.0.0.1:1".parse().unwrap()],
            resolve: false,
            weight: 1,
        };
        Arc::new(Server::new(
            &spec,
            4,
            IntGauge::new("up", "up").unwrap(),
            CancellationToken::new(),
        ))
    }

    #[test]
    fn ejection_after_max_fails_and_recovery_on_success() {
        let s = server();
        s.connect_failed(3, Duration::from_secs(60));
        s.connect_failed(3, Duration::from_secs(60));
        assert!(s.is_up());
        s.connect_failed(3, Duration::from_secs(60));
        assert!(!s.is_up());
        assert_eq!(s.up.get(), 0);
        s.connect_ok();
        // Still ejected until the back-off passes; the count starts over.
        assert!(!s.is_up());
        assert_eq!(s.health.consecutive_failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn ejection_ends_by_time() {
        let s = server();
        s.connect_failed(1, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(s.is_up());
        s.refresh_gauge();
        assert_eq!(s.up.get(), 1);
    }

    #[test]
    fn checks_need_streaks_to_change_state() {
        let s = server();
        s.check_result(false, 2, 2);
        assert!(s.is_up());
        s.check_result(true, 2, 2);
        s.check_result(false, 2, 2);
        assert!(s.is_up(), "a pass in between starts the streak over");
        s.check_result(false, 2, 2);
        assert!(!s.is_up());
        s.check_result(true, 2, 2);
        assert!(!s.is_up());
        s.check_result(true, 2, 2);
        assert!(s.is_up());
    }

    #[test]
    fn load_respects_the_cap() {
        let s = server();
        let a = s.try_load(Some(2)).unwrap();
        let _b = s.try_load(Some(2)).unwrap();
        assert!(s.try_load(Some(2)).is_none());
        drop(a);
        assert!(s.try_load(Some(2)).is_some());
        assert_eq!(s.load(), 1);
    }
}
