//! A tunnel: the two upgraded connections of a WebSocket, spliced in both directions.
//!
//! Each direction is a [`Pump`]: read what is there, write it on, and read nothing
//! more until it is written, so a slow reader slows its writer instead of growing
//! memory. An end of stream one way shuts down the write side of the other while the
//! opposite direction keeps flowing (half-close). The tunnel ends when both directions
//! have ended, on an error or reset of either side, after `idle` with no bytes either
//! way (`half_closed`, once one direction has ended: a peer that never closes its side
//! must not hold the tunnel for the whole idle period), or when shutdown's drain period
//! is over.
//!
//! Reads go into a per-thread scratch buffer, and bytes are copied into a buffer of
//! the pump's own only when the writer cannot take them at once. An idle tunnel
//! therefore holds no buffer at all: its memory is its two sockets and this state.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Read size per call. 64 KiB lets one read take a whole large WebSocket frame as the
/// kernel delivers it, and is one allocation per thread, not per tunnel.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions finished; the client was the first to end its side.
    ClientClosed,
    /// Both directions finished; the upstream was the first to end its side.
    UpstreamClosed,
    /// No bytes either way for the idle timeout.
    Idle,
    /// Shutdown's drain period ran out.
    Drain,
    /// The tunnel reached `max_tunnel_lifetime`.
    MaxLifetime,
    /// A reload removed the tunnel's upstream server; its tunnels drained.
    ServerRemoved,
    /// A read or write failed on the client's side.
    ClientError,
    /// A read or write failed on the upstream's side.
    UpstreamError,
}

impl End {
    /// The label used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::UpstreamClosed => "upstream_closed",
            End::Idle => "idle_timeout",
            End::Drain => "drain",
            End::MaxLifetime => "max_lifetime",
            End::ServerRemoved => "server_removed",
            End::ClientError => "client_error",
            End::UpstreamError => "upstream_error",
        }
    }
}

/// What a finished tunnel reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub end: End,
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
}

/// How long a tunnel may go without moving a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// While both directions are open.
    pub idle: Duration,
    /// Once one direction has ended.
    pub half_closed: Duration,
}

/// Live byte counters for the two directions.
pub struct Counters {
    pub client_to_upstream: IntCounter,
    pub upstream_to_client: IntCounter,
}

/// Splices `client` and `upstream` until the tunnel ends (see the module docs), or
/// until `stop` resolves, with the reason it gives.
pub async fn run<C, U>(
    client: C,
    upstream: U,
    timers: Timers,
    counters: Counters,
    stop: impl Future<Output = End>,
) -> Report
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut splice = Splice {
        client,
        upstream,
        up: Pump::default(),
        down: Pump::default(),
        first_eof: None,
        limit: timers.idle,
        timers,
        last_activity: Instant::now(),
        idle_timer: Box::pin(tokio::time::sleep(timers.idle)),
        counters,
    };
    let end = tokio::select! {
        end = &mut splice => end,
        end = stop => end,
    };
    Report {
        end,
        client_to_upstream: splice.up.total,
        upstream_to_client: splice.down.total,
    }
}

struct Splice<C, U> {
    client: C,
    upstream: U,
    /// Client to upstream.
    up: Pump,
    /// Upstream to client.
    down: Pump,
    first_eof: Option<End>,
    timers: Timers,
    /// The inactivity limit now in force: `idle`, then `half_closed`.
    limit: Duration,
    last_activity: Instant,
    // The timer is reset only when it fires, from `last_activity`: moving it on every
    // read would cost a timer-wheel update per message.
    idle_timer: Pin<Box<Sleep>>,
    counters: Counters,
}

impl<C, U> Future for Splice<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let this = self.get_mut();
        let mut moved = false;

        let up = this.up.poll(
            cx,
            &mut this.client,
            &mut this.upstream,
            &this.counters.client_to_upstream,
            &mut moved,
        );
        if let Poll::Ready(Err(side)) = up {
            return Poll::Ready(side.end(End::ClientError, End::UpstreamError));
        }
        let down = this.down.poll(
            cx,
            &mut this.upstream,
            &mut this.client,
            &this.counters.upstream_to_client,
            &mut moved,
        );
        if let Poll::Ready(Err(side)) = down {
            return Poll::Ready(side.end(End::UpstreamError, End::ClientError));
        }
        if this.first_eof.is_none() && (this.up.eof || this.down.eof) {
            this.first_eof = Some(if this.up.eof {
                End::ClientClosed
            } else {
                End::UpstreamClosed
            });
            this.limit = this.timers.idle.min(this.timers.half_closed);
            let deadline = this.last_activity.max(Instant::now()) + this.limit;
            this.idle_timer.as_mut().reset(deadline);
        }
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(this.first_eof.unwrap_or(End::ClientClosed));
        }

        if moved {
            this.last_activity = Instant::now();
        }
        while this.idle_timer.as_mut().poll(cx).is_ready() {
            let deadline = this.last_activity + this.limit;
            if deadline <= Instant::now() {
                return Poll::Ready(End::Idle);
            }
            this.idle_timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// Which side of a pump failed.
enum Side {
    Reader,
    Writer,
}

impl Side {
    fn end(self, reader: End, writer: End) -> End {
        match self {
            Side::Reader => reader,
            Side::Writer => writer,
        }
    }
}

/// One direction of a tunnel.
#[derive(Default)]
struct Pump {
    /// Bytes read but not yet written; empty (and unallocated) unless the writer
    /// pushed back.
    pending: Vec<u8>,
    written: usize,
    /// The reader reached end of stream.
    eof: bool,
    /// The writer has been shut down after `eof`.
    done: bool,
    /// Bytes were written since the last flush.
    unflushed: bool,
    total: u64,
}

impl Pump {
    /// Moves bytes until the reader or writer would block (`Pending`), the direction
    /// is finished (`Ready(Ok)`), or a side fails (`Ready(Err)`).
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        counter: &IntCounter,
        moved: &mut bool,
    ) -> Poll<Result<(), Side>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Finish what the writer pushed back before reading more.
            while self.written < self.pending.len() {
                match Pin::new(&mut *writer).poll_write(cx, &self.pending[self.written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(Side::Writer)),
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(Side::Writer)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.pending.is_empty() {
                self.written = 0;
                // Give back the memory: a tunnel that was busy once may idle for hours.
                self.pending = Vec::new();
            }

            if self.eof {
                if self.unflushed {
                    ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(|_| Side::Writer)?;
                    self.unflushed = false;
                }
                // The peer may already be gone; the other direction decides the end.
                let _ = ready!(Pin::new(&mut *writer).poll_shutdown(cx));
                self.done = true;
                return Poll::Ready(Ok(()));
            }

            let step = SCRATCH_BUF.with_borrow_mut(|scratch| {
                let mut buf = ReadBuf::new(scratch);
                match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(_)) => Poll::Ready(Err(Side::Reader)),
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        self.eof = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Ok(())) => {
                        let data = buf.filled();
                        let n = data.len();
                        self.total += n as u64;
                        counter.inc_by(n as u64);
                        *moved = true;
                        // Write straight from the scratch buffer; keep only the rest.
                        let mut off = 0;
                        while off < n {
                            match Pin::new(&mut *writer).poll_write(cx, &data[off..]) {
                                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                                    return Poll::Ready(Err(Side::Writer));
                                }
                                Poll::Ready(Ok(w)) => {
                                    off += w;
                                    self.unflushed = true;
                                }
                                Poll::Pending => break,
                            }
                        }
                        if off < n {
                            self.pending.extend_from_slice(&data[off..]);
                        }
                        Poll::Ready(Ok(()))
                    }
                }
            });
            match step {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(side)) => return Poll::Ready(Err(side)),
                Poll::Pending => {
                    if self.unflushed {
                        match Pin::new(&mut *writer).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.unflushed = false,
                            Poll::Ready(Err(_)) => return Poll::Ready(Err(Side::Writer)),
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Writes bytes one side had already read past the handshake to the other side, before
/// the splice begins.
pub async fn forward_early<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    if !bytes.is_empty() {
        writer.write_all(bytes).await?;
        writer.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn timers(secs: u64) -> Timers {
        Timers {
            idle: Duration::from_secs(secs),
            half_closed: Duration::from_secs(secs),
        }
    }

    fn counters() -> Counters {
        Counters {
            client_to_upstream: IntCounter::new("a", "a").unwrap(),
            upstream_to_client: IntCounter::new("b", "b").unwrap(),
        }
    }

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close() {
        let (client, mut client_peer) = duplex(1024);
        let (upstream, mut upstream_peer) = duplex(1024);
        let c = counters();
        let up_counter = c.client_to_upstream.clone();
        let task = tokio::spawn(run(
            client,
            upstream,
            timers(60),
            c,
            std::future::pending::<End>(),
        ));

        client_peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        upstream_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(up_counter.get(), 5);

        // The client ends its side; the upstream sees EOF but can still answer.
        client_peer.shutdown().await.unwrap();
        assert_eq!(upstream_peer.read(&mut buf).await.unwrap(), 0);
        upstream_peer.write_all(b"bye").await.unwrap();
        let mut got = [0u8; 3];
        client_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"bye");
        upstream_peer.shutdown().await.unwrap();

        let report = task.await.unwrap();
        assert_eq!(report.end, End::ClientClosed);
        assert_eq!(report.client_to_upstream, 5);
        assert_eq!(report.upstream_to_client, 3);
    }

    #[tokio::test]
    async fn a_slow_reader_bounds_what_is_buffered() {
        // The upstream side never reads: the pump must stop reading the client once its
        // one pending chunk is stuck, leaving the rest in the client's pipe.
        let (client, mut client_peer) = duplex(64 * 1024);
        let (upstream, _upstream_peer) = duplex(1024);
        let task = tokio::spawn(run(
            client,
            upstream,
            timers(60),
            counters(),
            std::future::pending::<End>(),
        ));
        let chunk = vec![7u8; 16 * 1024];
        let mut sent = 0usize;
        loop {
            match tokio::time::timeout(Duration::from_millis(200), client_peer.write_all(&chunk))
                .await
            {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
            assert!(sent < 1024 * 1024, "the pump kept reading without writing");
        }
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_close() {
        let (client, _c) = duplex(1024);
        let (upstream, _u) = duplex(1024);
        let report = run(
            client,
            upstream,
            timers(5),
            counters(),
            std::future::pending::<End>(),
        )
        .await;
        assert_eq!(report.end, End::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_closed_tunnel_closes_after_the_shorter_timer() {
        let (client, mut client_peer) = duplex(1024);
        let (upstream, _u) = duplex(1024);
        let started = Instant::now();
        let run = tokio::spawn(run(
            client,
            upstream,
            Timers {
                idle: Duration::from_secs(300),
                half_closed: Duration::from_secs(5),
            },
            counters(),
            std::future::pending::<End>(),
        ));
        client_peer.shutdown().await.unwrap();
        let report = run.await.unwrap();
        assert_eq!(report.end, End::Idle);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn stop_ends_the_tunnel_as_drain() {
        let (client, _c) = duplex(1024);
        let (upstream, _u) = duplex(1024);
        let report = run(
            client,
            upstream,
            timers(60),
            counters(),
            std::future::ready(End::Drain),
        )
        .await;
        assert_eq!(report.end, End::Drain);
    }
}
