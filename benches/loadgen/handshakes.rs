//! The `handshakes` mode: workers that each loop over a whole WebSocket life: TCP
//! connect, upgrade, one small echo, the closing handshake, and the socket closed.
//!
//! One cycle is one operation: it is what a gateway pays for every short-lived
//! WebSocket, on top of the messages. Over TLS (wss-handshakes) the cycle includes
//! a full TLS 1.3 handshake: no resumption, as a new visitor makes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until};
use tokio_rustls::client::TlsStream;

use crate::frame::{self, RecvBuf};
use crate::probe::{Probe, Usage};
use crate::stats::{Errors, Failure, Latencies, Window};
use crate::ws::{self, Dial, Rng, Target};

#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

#[derive(Debug)]
pub struct Outcome {
    /// Cycles completed inside the measured interval.
    pub handshakes: u64,
    pub measured: Duration,
    pub errors: Errors,
    pub latency: Latencies,
    pub usage: Usage,
}

/// The one message each connection echoes.
const MESSAGE: &[u8] = b"sluice handshake";

pub async fn run(target: Arc<Target>, p: Params, probe: &Probe) -> Outcome {
    let latency = Latencies::new();
    let w = Window::new(p.warmup, p.duration);
    let mut tasks = Vec::with_capacity(p.concurrency);
    for i in 0..p.concurrency {
        let target = target.clone();
        let mut rec = latency.recorder();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(0xAB_CDEF + i as u64);
            let mask = rng.next().to_le_bytes();
            let mask = [mask[0], mask[1], mask[2], mask[3]];
            let mut framed = Vec::with_capacity(MESSAGE.len() + frame::MAX_HEADER);
            frame::write_frame(&mut framed, frame::OP_BINARY, MESSAGE, Some(mask));
            let (mut count, mut errors) = (0u64, Errors::default());
            while Instant::now() < w.until {
                let t0 = Instant::now();
                let done = if target.tls.is_some() {
                    cycle::<TlsStream<TcpStream>>(&target, &mut rng, &framed, mask).await
                } else {
                    cycle::<TcpStream>(&target, &mut rng, &framed, mask).await
                };
                match done {
                    Ok(()) => {
                        let t1 = Instant::now();
                        if w.measuring(t1) {
                            count += 1;
                            rec.record(t1 - t0);
                        }
                    }
                    Err(f) => {
                        errors.add(&f);
                        // A failing target must not turn the worker into a busy loop.
                        sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (count, errors)
        }));
    }

    sleep_until(w.measure_from.into()).await;
    let before = probe.sample();
    sleep_until(w.until.into()).await;
    let after = probe.sample();

    let mut out = Outcome {
        handshakes: 0,
        measured: w.measured(),
        errors: Errors::default(),
        latency,
        usage: Usage::between(&before, &after),
    };
    for t in tasks {
        match t.await {
            Ok((n, e)) => {
                out.handshakes += n;
                out.errors.merge(&e);
            }
            Err(e) => out.errors.add(&Failure::new("task", e.to_string())),
        }
    }
    out
}

/// One connection's whole life.
async fn cycle<S: Dial>(
    t: &Target,
    rng: &mut Rng,
    framed: &[u8],
    mask: [u8; 4],
) -> Result<(), Failure> {
    let mut s = S::dial(t).await?;
    let mut rbuf = RecvBuf::with_capacity(1024);
    ws::upgrade(&mut s, &mut rbuf, t, rng).await?;
    ws::echo_once(&mut s, &mut rbuf, framed, MESSAGE, mask, t.step).await?;
    ws::close(&mut s, &mut rbuf, mask, t.step).await
}
