//! A fault-injecting TCP relay: what the kernel's qdiscs cannot do on this machine
//! (no `netem`). It sits between two peers and passes every byte on in order, but cut
//! into segments of random sizes, each written on its own (TCP_NODELAY, so each is a
//! segment of its own on the wire), after a random delay. Peers then see heads,
//! frames and bodies split at any byte, slowly.
//!
//! A stream relay cannot reorder segments (TCP would put them back, or the relay
//! would corrupt the stream); reordering on the wire comes from the loss tests, where
//! every retransmission arrives after the segments sent behind it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the relay cuts and delays.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Segments are 1 to this many bytes.
    pub max_segment: usize,
    /// One segment in this many waits before it is written (timers tick in
    /// milliseconds: waiting before every tiny segment would take minutes).
    pub delay_one_in: u32,
    /// That wait is 0 to this long.
    pub max_delay: Duration,
}

/// A running relay; it stops when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    /// Segments written, both ways, all connections.
    pub segments: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on loopback and relays each connection to `target`.
    pub async fn start(target: SocketAddr, faults: Faults, seed: u64) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let segments = Arc::new(AtomicU64::new(0));
        let counted = segments.clone();
        let task = tokio::spawn(async move {
            let mut n = 0;
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                n += 1;
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let c = counted.clone();
                tokio::spawn(pass(cr, sw, faults, seed ^ (n * 2), c.clone()));
                tokio::spawn(pass(sr, cw, faults, seed ^ (n * 2 + 1), c));
            }
        });
        Relay {
            addr,
            segments,
            task,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One direction: read what comes, write it on in random pieces after random waits,
/// and pass the end of stream on.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Faults,
    seed: u64,
    segments: Arc<AtomicU64>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut at = 0;
        while at < n {
            let len = rng.usize(1..=faults.max_segment).min(n - at);
            if rng.u32(0..faults.delay_one_in.max(1)) == 0 {
                tokio::time::sleep(faults.max_delay.mul_f64(rng.f64())).await;
            }
            if to.write_all(&buf[at..at + len]).await.is_err() {
                return;
            }
            segments.fetch_add(1, Ordering::Relaxed);
            at += len;
        }
    }
    let _ = to.shutdown().await;
}
