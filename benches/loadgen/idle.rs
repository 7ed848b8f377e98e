//! The `idle` mode: open many tunnels, hold them while the proxy's memory is read,
//! then prove each one still works with one echo before closing it.
//!
//! The proxy's resident memory is read before the first connection, then twice
//! with every tunnel open: shortly after the last one opened, while the surge of
//! handshakes may still be held (buffers not yet freed, a collector not yet run), and
//! again once the proxy has settled. Each difference from the first reading divided
//! by the tunnels open is a cost per idle tunnel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{sleep, sleep_until};

use crate::frame::{self, RecvBuf};
use crate::probe::Probe;
use crate::stats::{Errors, Failure};
use crate::ws::{self, Rng, Target};

/// What to wait for between READY and the checks.
#[derive(Debug, Clone)]
pub enum Hold {
    /// Go on after the settle time.
    None,
    /// Wait for a line (or the end) on stdin.
    Stdin,
    /// Wait until this file exists.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Params {
    pub connections: usize,
    /// Handshakes in progress at once while opening.
    pub open_concurrency: usize,
    /// When the memory is read right after the surge, from the last tunnel opened.
    pub surge: Duration,
    /// When it is read again, settled, from the last tunnel opened (not before the
    /// surge reading).
    pub settle: Duration,
    pub hold: Hold,
}

#[derive(Debug)]
pub struct Outcome {
    pub opened: usize,
    pub verified: usize,
    pub open_time: Duration,
    pub errors: Errors,
    pub rss_before_kib: Option<u64>,
    /// Read `surge` after the last tunnel opened.
    pub rss_surge_kib: Option<u64>,
    /// Read `settle` after it.
    pub rss_after_kib: Option<u64>,
}

const MESSAGE: &[u8] = b"still there?";

pub async fn run(target: Arc<Target>, p: Params, probe: &Probe) -> Outcome {
    let rss_before_kib = probe.rss_kib();
    let started = Instant::now();
    let (opened_tx, mut opened_rx) = mpsc::channel::<bool>(1024);
    let (go_tx, go_rx) = watch::channel(false);
    let opening = Arc::new(Semaphore::new(p.open_concurrency.max(1)));

    let mut tasks = Vec::with_capacity(p.connections);
    for i in 0..p.connections {
        let (target, opened_tx, mut go_rx, opening) = (
            target.clone(),
            opened_tx.clone(),
            go_rx.clone(),
            opening.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(0x1D1E + i as u64);
            let mask = rng.next().to_le_bytes();
            let mask = [mask[0], mask[1], mask[2], mask[3]];
            let opened = {
                let _permit = opening.acquire().await;
                open(&target, &mut rng).await
            };
            let _ = opened_tx.send(opened.is_ok()).await;
            drop(opened_tx);
            let (mut s, mut rbuf) = opened?;
            if go_rx.wait_for(|go| *go).await.is_err() {
                return Err(Failure::new("aborted", "the run ended before the check"));
            }
            let mut framed = Vec::with_capacity(MESSAGE.len() + frame::MAX_HEADER);
            frame::write_frame(&mut framed, frame::OP_BINARY, MESSAGE, Some(mask));
            ws::echo_once(&mut s, &mut rbuf, &framed, MESSAGE, mask, target.step).await?;
            ws::close(&mut s, &mut rbuf, mask, target.step).await
        }));
    }
    drop(opened_tx);

    let mut opened = 0;
    while let Some(ok) = opened_rx.recv().await {
        opened += usize::from(ok);
    }
    // The last tunnel has just opened: both readings count from here.
    let opened_at = Instant::now();
    let open_time = opened_at - started;
    println!("READY {opened}");
    eprintln!(
        "{opened} of {} tunnels open in {:.2} s",
        p.connections,
        open_time.as_secs_f64()
    );
    sleep_until((opened_at + p.surge).into()).await;
    let rss_surge_kib = probe.rss_kib();
    sleep_until((opened_at + p.settle.max(p.surge)).into()).await;
    let rss_after_kib = probe.rss_kib();
    hold(&p.hold).await;
    let _ = go_tx.send(true);

    let mut out = Outcome {
        opened,
        verified: 0,
        open_time,
        errors: Errors::default(),
        rss_before_kib,
        rss_surge_kib,
        rss_after_kib,
    };
    for t in tasks {
        match t.await {
            Ok(Ok(())) => out.verified += 1,
            Ok(Err(f)) => out.errors.add(&f),
            Err(e) => out.errors.add(&Failure::new("task", e.to_string())),
        }
    }
    out
}

async fn open(target: &Target, rng: &mut Rng) -> Result<(tokio::net::TcpStream, RecvBuf), Failure> {
    let mut s = ws::connect(target).await?;
    // Idle connections need almost no buffer; the check's echo is a few bytes.
    let mut rbuf = RecvBuf::with_capacity(256);
    ws::upgrade(&mut s, &mut rbuf, target, rng).await?;
    Ok((s, rbuf))
}

async fn hold(h: &Hold) {
    match h {
        Hold::None => {}
        Hold::Stdin => {
            // Reading stdin blocks; it gets a thread of its own.
            let _ = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)
            })
            .await;
        }
        Hold::File(path) => {
            // A stat is quick enough to do inline between sleeps.
            while std::fs::metadata(path).is_err() {
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
