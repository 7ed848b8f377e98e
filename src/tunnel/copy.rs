//! The portable transfer: read into a per-thread scratch buffer, write on, and keep
//! bytes only while the writer pushes back. Used where a leg is TLS (or not a plain
//! socket), and on systems without `splice(2)`.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ws::{self, HOLD, Track};
use super::{Dir, Side, Step, Transfer};

/// Read size per call. 64 KiB lets one read take a whole large WebSocket frame as the
/// kernel delivers it, and is one allocation per thread, not per tunnel.
pub(super) const SCRATCH: usize = 64 * 1024;

thread_local! {
    // HOLD bytes in front, where a frame header split across reads is put back.
    static SCRATCH_BUF: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; HOLD + SCRATCH].into_boxed_slice());
}

/// Runs `f` on this thread's scratch buffer: `HOLD` bytes of room, then `SCRATCH`
/// for a read.
pub(super) fn with_scratch<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    SCRATCH_BUF.with_borrow_mut(|scratch| f(scratch))
}

/// Both legs as async streams, with one pump per direction.
pub struct Copy<C, U> {
    client: C,
    upstream: U,
    up: Pump,
    down: Pump,
}

impl<C, U> Copy<C, U> {
    /// `to_upstream` and `to_client` are bytes already read from the other side,
    /// written before anything else. With `frames`, the directions track WebSocket
    /// frames (and the early bytes are taken as the first read of each).
    pub(super) fn new(
        client: C,
        upstream: U,
        to_upstream: Bytes,
        to_client: Bytes,
        frames: Option<[Track; 2]>,
    ) -> Self {
        let (up, down) = ws::split(frames);
        Copy {
            client,
            upstream,
            up: Pump::with_early(&to_upstream, up),
            down: Pump::with_early(&to_client, down),
        }
    }
}

impl<C, U> Transfer for Copy<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_dir(
        &mut self,
        dir: Dir,
        cx: &mut Context<'_>,
        step: &mut Step<'_>,
    ) -> Poll<Result<(), Side>> {
        match dir {
            Dir::Up => self.up.poll(cx, &mut self.client, &mut self.upstream, step),
            Dir::Down => self
                .down
                .poll(cx, &mut self.upstream, &mut self.client, step),
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

/// One direction of a tunnel.
#[derive(Default)]
pub(super) struct Pump {
    /// Bytes read but not yet written; empty (and unallocated) unless the writer
    /// pushed back.
    pending: Vec<u8>,
    written: usize,
    /// The reader reached end of stream.
    pub(super) eof: bool,
    /// The writer has been shut down after `eof`.
    done: bool,
    /// Bytes were written since the last flush.
    unflushed: bool,
    pub(super) total: u64,
    /// WebSocket frame tracking, when on.
    pub(super) ws: Option<Track>,
    /// `pending` holds early bytes the tracker has not seen yet.
    unscanned: bool,
}

impl Pump {
    fn with_early(early: &[u8], ws: Option<Track>) -> Pump {
        let mut pump = Pump {
            total: early.len() as u64,
            ws,
            ..Pump::default()
        };
        pump.pending = early.to_vec();
        // With tracking, they are the stream's first bytes, taken on the first poll.
        pump.unscanned = pump.ws.is_some() && !early.is_empty();
        pump
    }

    /// Moves bytes until the reader or writer would block (`Pending`), the direction
    /// is finished (`Ready(Ok)`), or a side fails (`Ready(Err)`).
    pub(super) fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        step: &mut Step<'_>,
    ) -> Poll<Result<(), Side>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        if self.unscanned
            && let Some(track) = &mut self.ws
        {
            self.unscanned = false;
            let early = std::mem::take(&mut self.pending);
            let taken = ws::take_all(track, &early, step);
            self.pending = taken;
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

            if let Some(track) = &mut self.ws {
                if track.close_due {
                    // sluice's Close, once what came before it is out.
                    let close = track.take_close(step.ws_route());
                    self.pending.extend_from_slice(close.as_bytes());
                    continue;
                }
                if let Some(ping) = track.take_ping() {
                    self.pending.extend_from_slice(ping.as_bytes());
                    continue;
                }
                if !track.reads() {
                    self.eof = true;
                }
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

            let read = SCRATCH_BUF.with_borrow_mut(|scratch| {
                let mut buf = ReadBuf::new(&mut scratch[HOLD..]);
                match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(_)) => Poll::Ready(Err(Side::Reader)),
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        self.eof = true;
                        if let Some(track) = &mut self.ws {
                            track.eof();
                        }
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        self.total += n as u64;
                        step.counter.inc_by(n as u64);
                        step.moved = true;
                        let range = match &mut self.ws {
                            Some(track) => {
                                let taken = track.take(scratch, n, step.ws_route());
                                step.violation = step.violation.or(taken.violation);
                                taken.forward
                            }
                            None => HOLD..HOLD + n,
                        };
                        let data = &scratch[range];
                        let n = data.len();
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
            match read {
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
