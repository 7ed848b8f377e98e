//! The `throughput` and `pingpong` modes: connections that each keep `window`
//! messages in flight and send the next one as each echo comes back.
//!
//! The messages are framed and masked once, before the run, and every connection
//! copies the same bytes; an echo is checked byte for byte against what its slot
//! sent. Each connection is one task that reads and writes on readiness, so a large
//! window never deadlocks with both ends blocked writing. What a connection has
//! sent and awaits is a [`Flow`]; a [`Pump`] moves its bytes: plain TCP here, TLS in
//! `wss.rs`.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{sleep_until, timeout};
use tokio_rustls::client::TlsStream;

use crate::frame::{self, RecvBuf};
use crate::probe::{Probe, Usage};
use crate::stats::{Errors, Failure, Latencies, Recorder, Window};
use crate::ws::{self, Dial, Rng, Target};

/// What a run asks for.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub connections: usize,
    pub window: usize,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Echoes received inside the measured interval.
    pub messages: u64,
    pub payload_bytes: u64,
    pub measured: Duration,
    pub connected: usize,
    pub errors: Errors,
    pub latency: Latencies,
    pub usage: Usage,
}

/// The `window` distinct messages every connection cycles through, framed once.
struct Messages {
    payloads: Vec<Vec<u8>>,
    frames: Vec<Vec<u8>>,
    mask: [u8; 4],
}

impl Messages {
    fn new(window: usize, size: usize) -> Messages {
        let mut rng = Rng::new(0x5EED);
        let mask = rng.next().to_le_bytes();
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        // Random bytes per slot: an echo from the wrong slot, or changed anywhere,
        // cannot compare equal by accident.
        let payloads: Vec<Vec<u8>> = (0..window)
            .map(|_| (0..size).map(|_| rng.next() as u8).collect())
            .collect();
        let frames = payloads
            .iter()
            .map(|p| {
                let mut f = Vec::with_capacity(p.len() + frame::MAX_HEADER);
                frame::write_frame(&mut f, frame::OP_BINARY, p, Some(mask));
                f
            })
            .collect();
        Messages {
            payloads,
            frames,
            mask,
        }
    }
}

/// Opens every connection, then runs the timeline; `probe` is read at the start and
/// end of the measured interval.
pub async fn run(target: Arc<Target>, p: Params, probe: &Probe) -> Outcome {
    let msgs = Arc::new(Messages::new(p.window, p.size));
    let latency = Latencies::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(p.connections.max(1));
    let (start_tx, start_rx) = watch::channel::<Option<Window>>(None);
    // Opening hundreds of connections at once only measures the accept queue.
    let opening = Arc::new(Semaphore::new(256));

    let mut tasks = Vec::with_capacity(p.connections);
    for i in 0..p.connections {
        let c = Connection {
            seed: 0x1234_5678 + i as u64,
            target: target.clone(),
            msgs: msgs.clone(),
            ready_tx: ready_tx.clone(),
            start_rx: start_rx.clone(),
            opening: opening.clone(),
            rec: latency.recorder(),
        };
        tasks.push(if target.tls.is_some() {
            tokio::spawn(c.run::<TlsStream<TcpStream>>())
        } else {
            tokio::spawn(c.run::<TcpStream>())
        });
    }
    drop(ready_tx);

    let mut connected = 0;
    while let Some(ok) = ready_rx.recv().await {
        connected += usize::from(ok);
    }
    let w = Window::new(p.warmup, p.duration);
    let _ = start_tx.send(Some(w));
    sleep_until(w.measure_from.into()).await;
    let before = probe.sample();
    sleep_until(w.until.into()).await;
    let after = probe.sample();

    let mut out = Outcome {
        messages: 0,
        payload_bytes: 0,
        measured: w.measured(),
        connected,
        errors: Errors::default(),
        latency,
        usage: Usage::between(&before, &after),
    };
    for t in tasks {
        match t.await {
            Ok((n, b, e)) => {
                out.messages += n;
                out.payload_bytes += b;
                out.errors.merge(&e);
            }
            Err(e) => out.errors.add(&Failure::new("task", e.to_string())),
        }
    }
    out
}

/// What one connection's task is given.
struct Connection {
    seed: u64,
    target: Arc<Target>,
    msgs: Arc<Messages>,
    ready_tx: mpsc::Sender<bool>,
    start_rx: watch::Receiver<Option<Window>>,
    opening: Arc<Semaphore>,
    rec: Recorder,
}

impl Connection {
    /// Opens, says so, waits for the start, echoes until the end, closes; returns
    /// the echoes and payload bytes it counted, and its errors.
    async fn run<S: Dial + Pump>(mut self) -> (u64, u64, Errors) {
        let mut errors = Errors::default();
        let mut rng = Rng::new(self.seed);
        let opened = {
            let _permit = self.opening.acquire().await;
            open::<S>(&self.target, &mut rng).await
        };
        let (mut s, rbuf) = match opened {
            Ok(c) => {
                let _ = self.ready_tx.send(true).await;
                c
            }
            Err(f) => {
                errors.add(&f);
                let _ = self.ready_tx.send(false).await;
                return (0, 0, errors);
            }
        };
        drop(self.ready_tx);
        let w = match self.start_rx.wait_for(Option::is_some).await.map(|w| *w) {
            Ok(Some(w)) => w,
            _ => return (0, 0, errors),
        };
        let mut flow = Flow::new(rbuf, &self.msgs);
        let result = match flow.start(&w, &mut self.rec) {
            Ok(()) => s.pump(&mut flow, &w, &mut self.rec, self.target.step).await,
            Err(f) => Err(f),
        };
        let (n, b) = (flow.messages, flow.bytes);
        match result {
            Ok(()) => {
                let step = self.target.step;
                if let Err(f) = ws::close(&mut s, &mut flow.rbuf, self.msgs.mask, step).await {
                    errors.add(&f);
                }
            }
            Err(f) => errors.add(&f),
        }
        (n, b, errors)
    }
}

async fn open<S: Dial>(target: &Target, rng: &mut Rng) -> Result<(S, RecvBuf), Failure> {
    let mut s = S::dial(target).await?;
    let mut rbuf = RecvBuf::with_capacity(64 * 1024);
    ws::upgrade(&mut s, &mut rbuf, target, rng).await?;
    Ok((s, rbuf))
}

/// Moves a [`Flow`]'s bytes over one kind of stream until it is done: every
/// message of the run sent and its echo back.
pub trait Pump: Send {
    fn pump(
        &mut self,
        flow: &mut Flow<'_>,
        w: &Window,
        rec: &mut Recorder,
        step: Duration,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// Plain TCP: waits for readiness and reads and writes what the socket takes, with
/// no buffering between the socket and the flow.
impl Pump for TcpStream {
    async fn pump(
        &mut self,
        f: &mut Flow<'_>,
        w: &Window,
        rec: &mut Recorder,
        step: Duration,
    ) -> Result<(), Failure> {
        loop {
            // Write what the socket takes now; the rest waits for writability.
            while !f.pending().is_empty() {
                match self.try_write(f.pending()) {
                    Ok(n) => f.wrote(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(Failure::new("io", format!("write: {e}"))),
                }
            }
            if f.done() {
                return Ok(());
            }
            let interest = if f.pending().is_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            let ready = match timeout(step, self.ready(interest)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(Failure::new("io", e.to_string())),
                Err(_) => return Err(Failure::new("timeout", "no echo in time")),
            };
            if ready.is_readable() || ready.is_read_closed() {
                match self.try_read(f.read_space()) {
                    Ok(0) => return Err(Failure::new("closed", "the proxy closed the connection")),
                    Ok(n) => f.got(n, Instant::now(), w, rec)?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(Failure::new("io", format!("read: {e}"))),
                }
            }
        }
    }
}

/// One connection's traffic during the run, apart from its stream: what is queued
/// to send, what is in flight, what has come back.
pub struct Flow<'a> {
    rbuf: RecvBuf,
    /// Frames to send, written from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// Messages in flight, oldest first: slot and the time it was queued.
    flights: VecDeque<(usize, Instant)>,
    /// Bytes of the current echo already matched, while it arrives in fragments.
    open: Option<usize>,
    /// Bytes the next frame needs in the buffer to be whole.
    need: usize,
    msgs: &'a Messages,
    messages: u64,
    bytes: u64,
}

/// Read size: large enough to take many small echoes, or a big one, per call.
const READ: usize = 64 * 1024;

impl<'a> Flow<'a> {
    fn new(rbuf: RecvBuf, msgs: &'a Messages) -> Self {
        Flow {
            rbuf,
            out: Vec::with_capacity(msgs.frames.iter().map(Vec::len).sum()),
            out_pos: 0,
            flights: VecDeque::with_capacity(msgs.frames.len()),
            open: None,
            need: 0,
            msgs,
            messages: 0,
            bytes: 0,
        }
    }

    /// Queues the whole window, and takes the echoes that arrived with the
    /// handshake's response.
    fn start(&mut self, w: &Window, rec: &mut Recorder) -> Result<(), Failure> {
        let now = Instant::now();
        for (slot, f) in self.msgs.frames.iter().enumerate() {
            self.out.extend_from_slice(f);
            self.flights.push_back((slot, now));
        }
        self.process(now, w, rec)
    }

    /// Whether every message of the run has been sent and has come back.
    pub fn done(&self) -> bool {
        self.flights.is_empty() && self.out_pos == self.out.len()
    }

    /// The bytes waiting to be written.
    pub fn pending(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of [`Flow::pending`] were written.
    pub fn wrote(&mut self, n: usize) {
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos >= READ {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Where the next read goes.
    pub fn read_space(&mut self) -> &mut [u8] {
        self.rbuf.spare(self.need.max(READ))
    }

    /// `n` bytes were read into [`Flow::read_space`] at `now`.
    pub fn got(
        &mut self,
        n: usize,
        now: Instant,
        w: &Window,
        rec: &mut Recorder,
    ) -> Result<(), Failure> {
        self.rbuf.advance(n);
        self.process(now, w, rec)
    }

    /// Consumes every whole frame in the buffer: checks each echo, counts it, and
    /// queues the next message of its slot while the run lasts.
    fn process(&mut self, now: Instant, w: &Window, rec: &mut Recorder) -> Result<(), Failure> {
        loop {
            let buf = self.rbuf.filled();
            let h = match frame::parse_header(buf, ws::MAX_FRAME) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    self.need = frame::MAX_HEADER;
                    return Ok(());
                }
                Err(e) => return Err(Failure::new("protocol", e.to_string())),
            };
            if h.mask.is_some() {
                return Err(Failure::new("protocol", "the server sent a masked frame"));
            }
            if buf.len() < h.frame_len() {
                self.need = h.frame_len();
                return Ok(());
            }
            let body = &buf[h.header_len..h.frame_len()];
            match h.opcode {
                frame::OP_PING => {
                    frame::write_frame(&mut self.out, frame::OP_PONG, body, Some(self.msgs.mask))
                }
                frame::OP_PONG => {}
                frame::OP_CLOSE => {
                    return Err(Failure::new("closed", "the server sent close mid-run"));
                }
                op => {
                    let start = match (op, self.open) {
                        (frame::OP_BINARY, None) => 0,
                        (frame::OP_CONTINUATION, Some(at)) => at,
                        (frame::OP_TEXT, None) => {
                            return Err(Failure::new("mismatch", "text echo of a binary message"));
                        }
                        _ => return Err(Failure::new("protocol", "bad fragment sequence")),
                    };
                    let Some(&(slot, sent)) = self.flights.front() else {
                        return Err(Failure::new("protocol", "an echo of nothing sent"));
                    };
                    let expected = &self.msgs.payloads[slot];
                    let end = start + body.len();
                    if expected.get(start..end) != Some(body) {
                        return Err(Failure::new("mismatch", "echo differs from what was sent"));
                    }
                    if !h.fin {
                        self.open = Some(end);
                    } else if end != expected.len() {
                        return Err(Failure::new("mismatch", "echo shorter than what was sent"));
                    } else {
                        self.open = None;
                        self.flights.pop_front();
                        if w.measuring(now) {
                            self.messages += 1;
                            self.bytes += end as u64;
                            rec.record(now - sent);
                        }
                        if now < w.until {
                            self.out.extend_from_slice(&self.msgs.frames[slot]);
                            self.flights.push_back((slot, now));
                        }
                    }
                }
            }
            self.rbuf.consume(h.frame_len());
        }
    }
}
