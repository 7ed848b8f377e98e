//! The Linux zero-copy transfer: bytes go from one socket into a pipe and from the
//! pipe into the other socket with `splice(2)`, as page references, never copied
//! through user space.
//!
//! Pipes are borrowed from a small per-thread pool only while bytes sit in them, and
//! given back as soon as they are drained, so an idle tunnel holds no pipe: file
//! descriptors are a budget too (two per pipe), and a gateway holding thousands of
//! idle tunnels would otherwise spend two more per direction.
//!
//! This module and its child `tracked` are, with the io_uring experiment
//! ([`super::uring`]), the only ones with `unsafe`: here the `splice`, `pipe2`,
//! `fcntl` and `recv` (peek) calls.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::ws::{self, Track};
use super::{Dir, Side, Step, Transfer};

/// The most one splice call moves: the default pipe capacity (16 pages).
const CHUNK: usize = 64 * 1024;

/// Free pipes kept per thread. Pipes are held only while bytes move, so a thread
/// rarely has more than a few out at once; more would only hold descriptors.
const POOL: usize = 16;

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A pipe's two ends.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by no one else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write })
    }

    fn borrow() -> io::Result<Pipe> {
        match PIPES.with_borrow_mut(Vec::pop) {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    /// Gives an empty pipe back to this thread's pool.
    fn give_back(self) {
        PIPES.with_borrow_mut(|pool| {
            if pool.len() < POOL {
                pool.push(self);
            }
        });
    }
}

/// Whether tunnels between plain sockets use `splice(2)`; `SLUICE_SPLICE=0` turns it
/// off, to compare the two transfers.
pub fn enabled() -> bool {
    static ON: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var("SLUICE_SPLICE").map_or(true, |v| v != "0"));
    *ON
}

/// Moves up to `len` bytes from `from` to `to`, one of which is a pipe.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (the caller
    // borrows their owners); null offsets mean "current position", as sockets and
    // pipes require; splice touches no memory of ours.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// After a write of `done` bytes out of `asked`: a short one means the socket has no
/// room to write right now, so readiness is cleared here by answering `WouldBlock` to
/// tokio, sparing the system call that would only find that out. Edge-triggered epoll
/// reports the next change.
///
/// Never for reads: a read into a pipe also stops short when the pipe runs out of
/// slots (16 buffers, one per received segment), with the socket still holding
/// megabytes. Clearing readiness then stalled a tunnel behind a lossy link for good:
/// the client had sent everything, so no new edge ever came (tests/faults.rs).
fn short(done: usize, asked: usize) -> io::Result<()> {
    if done < asked {
        Err(io::ErrorKind::WouldBlock.into())
    } else {
        Ok(())
    }
}

/// Both legs as plain sockets, with one splicing pump per direction.
pub struct Sockets {
    client: TcpStream,
    upstream: TcpStream,
    up: Pump,
    down: Pump,
}

impl Sockets {
    /// `to_upstream` and `to_client` are bytes already read from the other side,
    /// written before anything is spliced. With `frames`, the directions track
    /// WebSocket frames.
    pub(crate) fn new(
        client: TcpStream,
        upstream: TcpStream,
        to_upstream: Bytes,
        to_client: Bytes,
        frames: Option<[Track; 2]>,
    ) -> Self {
        let (up, down) = ws::split(frames);
        Sockets {
            client,
            upstream,
            up: Pump::with_early(to_upstream, up),
            down: Pump::with_early(to_client, down),
        }
    }
}

impl Transfer for Sockets {
    fn poll_dir(
        &mut self,
        dir: Dir,
        cx: &mut Context<'_>,
        step: &mut Step<'_>,
    ) -> Poll<Result<(), Side>> {
        match dir {
            Dir::Up => {
                let other_done = self.down.done;
                self.up
                    .poll(cx, &self.client, &self.upstream, step, other_done)
            }
            Dir::Down => {
                let other_done = self.up.done;
                self.down
                    .poll(cx, &self.upstream, &self.client, step, other_done)
            }
        }
    }

    fn track(&mut self, dir: Dir) -> Option<&mut Track> {
        match dir {
            Dir::Up => self.up.ws.as_mut(),
            Dir::Down => self.down.ws.as_mut(),
        }
    }

    fn eof(&self, dir: Dir) -> bool {
        match dir {
            Dir::Up => self.up.eof,
            Dir::Down => self.down.eof,
        }
    }

    fn total(&self, dir: Dir) -> u64 {
        match dir {
            Dir::Up => self.up.total,
            Dir::Down => self.down.total,
        }
    }
}

/// One direction: socket -> pipe -> socket.
#[derive(Default)]
struct Pump {
    /// Bytes read before the splice began, written first.
    early: Bytes,
    /// Borrowed while it holds bytes.
    pipe: Option<Pipe>,
    /// Bytes in the pipe, not yet spliced out.
    in_pipe: usize,
    eof: bool,
    done: bool,
    /// `early` holds bytes the tracker has not seen yet.
    unscanned: bool,
    total: u64,
    /// WebSocket frame tracking, when on.
    ws: Option<Track>,
}

impl Pump {
    /// A pump that first writes `early`, bytes already read (and counted in its
    /// total). They are a view of hyper's whole read buffer (8 KiB or more): only
    /// they are kept, and only when there are some. With tracking they are taken as
    /// the stream's first read, on the first poll.
    fn with_early(early: Bytes, ws: Option<Track>) -> Pump {
        Pump {
            total: early.len() as u64,
            unscanned: ws.is_some() && !early.is_empty(),
            early: if early.is_empty() {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(&early)
            },
            ws,
            ..Pump::default()
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        step: &mut Step<'_>,
        other_done: bool,
    ) -> Poll<Result<(), Side>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        if self.unscanned
            && let Some(track) = &mut self.ws
        {
            self.unscanned = false;
            self.early = Bytes::from(ws::take_all(track, &self.early, step));
        }
        loop {
            // Bytes read before the splice began, or copied while no pipe could be
            // had, go first.
            while !self.early.is_empty() {
                ready!(dst.poll_write_ready(cx)).map_err(|_| Side::Writer)?;
                match dst.try_write(&self.early) {
                    Ok(n) => {
                        let _ = self.early.split_to(n);
                        if self.early.is_empty() {
                            // Let go of the buffer it was a view of.
                            self.early = Bytes::new();
                        }
                        step.moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(Err(Side::Writer)),
                }
            }
            // Drain the pipe before reading more: at most one pipe's worth is ever
            // held, so a slow reader slows its writer.
            while self.in_pipe > 0 {
                ready!(dst.poll_write_ready(cx)).map_err(|_| Side::Writer)?;
                let Some(pipe) = &self.pipe else {
                    return Poll::Ready(Err(Side::Writer));
                };
                let want = self.in_pipe;
                let mut sent = 0;
                let out = dst.try_io(Interest::WRITABLE, || {
                    sent = splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), want)?;
                    short(sent, want)
                });
                match out {
                    Ok(()) if sent > 0 => self.in_pipe -= sent,
                    Ok(()) => return Poll::Ready(Err(Side::Writer)),
                    // A short write cleared readiness (see `short`), and so did a real
                    // WouldBlock; the next poll_write_ready waits either way.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.in_pipe -= sent,
                    Err(_) => return Poll::Ready(Err(Side::Writer)),
                }
            }
            if let Some(p) = self.pipe.take() {
                p.give_back();
            }

            if let Some(track) = &mut self.ws {
                if track.close_due {
                    // sluice's Close, once what came before it is out.
                    let close = track.take_close(step.ws_route());
                    self.early = Bytes::copy_from_slice(close.as_bytes());
                    continue;
                }
                if let Some(ping) = track.take_ping() {
                    self.early = Bytes::copy_from_slice(ping.as_bytes());
                    continue;
                }
                if !track.reads() {
                    self.eof = true;
                }
            }

            if self.eof {
                // Pass the end of stream on. When the other way is already done the
                // tunnel is about to close both sockets, which sends the FIN anyway.
                // (The peer may already be gone; the other direction decides the end.)
                if !other_done {
                    let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }

            ready!(src.poll_read_ready(cx)).map_err(|_| Side::Reader)?;
            if self.ws.is_some() {
                self.tracked_step(src, dst, step)?;
                continue;
            }
            let Ok(pipe) = Pipe::borrow() else {
                // No descriptor to spare for a pipe (the process is at its open-file
                // limit): this step copies through memory instead, so that the
                // tunnels already open keep moving until descriptors are free again.
                self.copy_step(src, dst, step)?;
                continue;
            };
            let mut n = 0;
            let got = src.try_io(Interest::READABLE, || {
                n = splice(src.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)?;
                // A short read proves nothing (see `short`): the next one finds out.
                Ok(())
            });
            match got {
                // Bytes, whether or not the read was short enough to clear readiness.
                Ok(()) | Err(_) if n > 0 => {
                    self.in_pipe = n;
                    self.pipe = Some(pipe);
                    self.total += n as u64;
                    step.counter.inc_by(n as u64);
                    step.moved = true;
                }
                Ok(()) => {
                    self.eof = true;
                    pipe.give_back();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => pipe.give_back(),
                Err(_) => {
                    pipe.give_back();
                    return Poll::Ready(Err(Side::Reader));
                }
            }
        }
    }
}

impl Pump {
    /// Reads once from `src` into memory and writes what `dst` takes; the rest waits
    /// in `early`. Used only when no pipe can be had.
    fn copy_step(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        step: &mut Step<'_>,
    ) -> Result<(), Side> {
        let mut buf = [0u8; 16 * 1024];
        match src.try_read(&mut buf) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                self.total += n as u64;
                step.counter.inc_by(n as u64);
                step.moved = true;
                let sent = match dst.try_write(&buf[..n]) {
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(_) => return Err(Side::Writer),
                };
                if sent < n {
                    self.early = Bytes::copy_from_slice(&buf[sent..n]);
                }
            }
            // Readiness is cleared; the next poll_read_ready waits.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(Side::Reader),
        }
        Ok(())
    }
}

mod tracked;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use prometheus::IntCounter;

    use super::super::{Counters, End, Stops, Timers, Tunnel};
    use super::*;

    /// A connected pair of sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn tunnel(client: TcpStream, upstream: TcpStream, timers: Timers) -> Tunnel<Sockets> {
        let drain = tokio_util::sync::CancellationToken::new();
        let stops = Stops {
            token: drain.child_token(),
            draining: drain.clone(),
            drain,
            spread: Duration::from_secs(1),
            lifetime: None,
        };
        Tunnel::new(
            Sockets::new(client, upstream, Bytes::new(), Bytes::new(), None),
            timers,
            counters(),
            stops,
            None,
        )
    }

    fn counters() -> Counters {
        Counters {
            client_to_upstream: IntCounter::new("a", "a").unwrap(),
            upstream_to_client: IntCounter::new("b", "b").unwrap(),
            ws: None,
        }
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_with_half_close_and_no_pipe_kept() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let timers = Timers {
            idle: Duration::from_secs(60),
            half_closed: Duration::from_secs(60),
        };
        let task = tokio::spawn(tunnel(client_side, upstream_side, timers));

        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&big).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert!(got == expected, "bytes differ after the splice");
        upstream.write_all(b"done").await.unwrap();
        upstream.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"done");
        let report = task.await.unwrap();
        assert_eq!(report.end, End::ClientClosed);
        assert_eq!(report.client_to_upstream, 3_000_000);
        assert_eq!(report.upstream_to_client, 4);
        assert!(PIPES.with_borrow(Vec::len) <= POOL);
    }

    #[tokio::test]
    async fn a_reset_ends_the_tunnel() {
        let (client, client_side) = pair().await;
        let (upstream_side, upstream) = pair().await;
        let timers = Timers {
            idle: Duration::from_secs(60),
            half_closed: Duration::from_secs(60),
        };
        let task = tokio::spawn(tunnel(client_side, upstream_side, timers));
        socket2::SockRef::from(&upstream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(upstream);
        let report = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(report.end, End::UpstreamError | End::UpstreamClosed),
            "{:?}",
            report.end
        );
        drop(client);
    }
}
