//! Listeners: bind, enforce the connection limit, accept with back-off, and hand
//! each connection to its own task.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

use crate::conn::{self, ConnGuard, ListenerCtx};
use crate::proxy::Proxy;
use crate::shutdown::Shutdown;

/// Pending connections the kernel queues before `accept`: enough for a reconnect
/// storm after an upstream restart, where a few thousand clients come back at once.
const BACKLOG: u32 = 4096;

/// Binds a listening socket.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted sluice must be able to bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts connections until draining begins. `limit` holds one permit per
/// connection allowed at once; with none left, a new connection is answered 503 and
/// closed rather than left waiting.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    proxy: Arc<Proxy>,
    shutdown: Shutdown,
    limit: Arc<Semaphore>,
) {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.draining() => break,
        };
        let (stream, client) = match accepted {
            Ok(pair) => {
                backoff = Duration::ZERO;
                pair
            }
            Err(e) if is_resource_exhaustion(&e) => {
                // Out of file descriptors or memory: accepting again at once would
                // spin. Back off (up to a second) so closing connections free some.
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                warn_limited(
                    &ACCEPT_WARNED,
                    || tracing::warn!(listener = %ctx.name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off"),
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => continue,
                    () = shutdown.draining() => break,
                }
            }
            Err(e) => {
                // A connection reset before it was accepted, and the like.
                tracing::debug!(listener = %ctx.name, error = %e, "accept failed");
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.metrics.refused_max_connections.inc();
            warn_limited(
                &LIMIT_WARNED,
                || tracing::warn!(listener = %ctx.name, %client, "max_connections reached: refusing connections"),
            );
            // Best effort and never blocking: the socket's send buffer is empty.
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n",
            );
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%client, error = %e, "set_nodelay failed");
        }
        let guard = ConnGuard::new(permit, &ctx.metrics);
        shutdown.spawn(conn::handle(
            stream,
            client,
            ctx.clone(),
            proxy.clone(),
            shutdown.clone(),
            guard,
        ));
    }
    tracing::debug!(listener = %ctx.name, "listener closed");
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

static ACCEPT_WARNED: AtomicU64 = AtomicU64::new(0);
static LIMIT_WARNED: AtomicU64 = AtomicU64::new(0);

/// Runs `log` at most once a second per `last`, so a flood of refused connections
/// cannot itself flood the log.
pub fn warn_limited(last: &AtomicU64, log: impl FnOnce()) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prev = last.load(Ordering::Relaxed);
    if now > prev
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        log();
    }
}
