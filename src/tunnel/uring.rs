//! An experiment (issue #14), off unless `SLUICE_IO_URING=1`: opaque tunnels between
//! two plain sockets relayed through io_uring instead of `splice(2)`.
//!
//! Each thread has one ring ([`ring`]). A direction is a multishot receive into the
//! ring's provided buffers and a send from them; the ring's driver task handles both
//! completions itself, so a message costs no wake-up of the tunnel's task and no
//! system call of its own: the driver submits everything a batch of completions
//! asked for in one `io_uring_enter`. The tunnel's task is woken only to count bytes
//! and to see an end ([`flow`]).
//!
//! The promises of the other transfers hold: a direction holds at most `CAP` buffers
//! unsent (plus the one burst the kernel may be receiving as its receive is
//! cancelled), so a slow reader slows its writer, and the pool is a fixed 4 MiB per
//! thread whatever the tunnels do; an idle tunnel holds no buffer, only its armed
//! receives. When the pool runs dry, receives wait for buffers to come back, first
//! come first served.
//!
//! What it measured (benches/compare.sh, quick runs, against sluice-opaque): for
//! 64 B messages 1.72 against 2.15 us of CPU per message and 17 to 23 % more messages
//! per second; for 64 KiB messages 80 to 124 against 43 to 47 us, as every byte is
//! copied into a buffer and out again where splice moves page references.
//!
//! Only opaque tunnels come here: tracking WebSocket frames needs each frame's bytes
//! in memory as they pass, which the experiment leaves out. If the ring cannot be set
//! up (io_uring refused by the kernel, seccomp or `kernel.io_uring_disabled`), a
//! warning is logged once and tunnels use the splice transfer.
//!
//! This module is one of the two with `unsafe`: the ring's shared memory, the
//! provided buffers, and `shutdown(2)`.
#![allow(unsafe_code)]

mod flow;
mod ring;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::net::TcpStream;

use self::flow::Fail;
use self::ring::Shared;
use super::ws::Track;
use super::{Dir, Side, Step, Transfer};

/// Whether opaque tunnels between plain sockets use io_uring: `SLUICE_IO_URING=1`.
/// Off by default: an experiment, kept only if it pays.
pub fn enabled() -> bool {
    static ON: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var("SLUICE_IO_URING").is_ok_and(|v| v == "1"));
    *ON
}

/// Whether this thread has a ring (making it if need be); false when io_uring is
/// refused, after one warning.
pub fn ready() -> bool {
    ring::current().is_some()
}

/// Both legs, handed over to this thread's ring.
pub struct Sockets {
    /// The ring and the tunnel's slot on it; `None` if the sockets could not be taken
    /// from tokio's reactor (the tunnel then fails at once).
    at: Option<(Arc<Shared>, u32)>,
    eof: [bool; 2],
    total: [u64; 2],
}

impl Sockets {
    /// Takes both sockets off tokio's reactor and onto this thread's ring.
    /// `to_upstream` and `to_client` are bytes already read from the other side
    /// (counted already), sent before anything else.
    pub(crate) fn new(
        client: TcpStream,
        upstream: TcpStream,
        to_upstream: Bytes,
        to_client: Bytes,
    ) -> Sockets {
        let total = [to_upstream.len() as u64, to_client.len() as u64];
        let at = match (ring::current(), owned(client), owned(upstream)) {
            (Some(shared), Ok(c), Ok(u)) => {
                let slot = shared.lock().open([c, u], [to_upstream, to_client]);
                Some((shared, slot))
            }
            (_, c, u) => {
                tracing::warn!(
                    client = ?c.err(),
                    upstream = ?u.err(),
                    "a tunnel's sockets could not be moved to io_uring"
                );
                None
            }
        };
        Sockets {
            at,
            eof: [false; 2],
            total,
        }
    }

    /// Whether direction `d` has a receive in flight.
    #[cfg(test)]
    fn receiving(&self, d: usize) -> bool {
        self.at
            .as_ref()
            .is_some_and(|(shared, slot)| shared.lock().receiving(*slot, d))
    }

    /// Buffers this tunnel holds unsent, and the ring's buffers in use.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        self.at.as_ref().map_or((0, 0), |(shared, slot)| {
            let ring = shared.lock();
            (ring.held_by(*slot), ring.usage().0)
        })
    }
}

/// A socket as a plain blocking descriptor: off tokio's reactor (its readiness events
/// would only cost), and blocking so that io_uring waits for it by polling rather than
/// handing back EAGAIN.
fn owned(s: TcpStream) -> std::io::Result<OwnedFd> {
    let s = s.into_std()?;
    s.set_nonblocking(false)?;
    Ok(OwnedFd::from(s))
}

fn index(dir: Dir) -> usize {
    match dir {
        Dir::Up => 0,
        Dir::Down => 1,
    }
}

impl Transfer for Sockets {
    fn poll_dir(
        &mut self,
        dir: Dir,
        cx: &mut Context<'_>,
        step: &mut Step<'_>,
    ) -> Poll<Result<(), Side>> {
        let Some((shared, slot)) = &self.at else {
            return Poll::Ready(Err(Side::Reader));
        };
        let d = index(dir);
        let seen = shared.lock().look(*slot, d, cx.waker());
        if seen.moved > 0 {
            self.total[d] += seen.moved;
            step.counter.inc_by(seen.moved);
            step.moved = true;
        }
        self.eof[d] = seen.eof;
        match seen.failed {
            Some(Fail::Reader) => Poll::Ready(Err(Side::Reader)),
            Some(Fail::Writer) => Poll::Ready(Err(Side::Writer)),
            None if seen.done => Poll::Ready(Ok(())),
            None => Poll::Pending,
        }
    }

    fn eof(&self, dir: Dir) -> bool {
        self.eof[index(dir)]
    }

    fn total(&self, dir: Dir) -> u64 {
        self.total[index(dir)]
    }

    fn track(&mut self, _: Dir) -> Option<&mut Track> {
        None
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        if let Some((shared, slot)) = self.at.take() {
            shared.lock().release(slot);
        }
    }
}

#[cfg(test)]
mod tests;
