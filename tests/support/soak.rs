//! What tests/soak.rs needs besides its tunnels: the echo upstream in a process of
//! its own, and what is read of a process (resident memory, descriptors, sluice's
//! metrics).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The longest wait for a process to start or sluice to answer `/metrics`.
const STEP: Duration = Duration::from_secs(10);

/// The environment variable that makes the upstream's test serve.
const UPSTREAM_ENV: &str = "SLUICE_SOAK_UPSTREAM";

// ---- the upstream: this test binary again, in a process of its own ----

/// The echo upstream's process; killed when dropped.
pub struct Upstream {
    child: tokio::process::Child,
    pub addr: SocketAddr,
    // Kept open: the child exits when its standard input closes, so it does not
    // outlive this process even when this one is killed.
    _stdin: tokio::process::ChildStdin,
}

impl Upstream {
    /// Runs this binary's test `test` (which calls [`serve`]) in a new process and
    /// waits for its address.
    pub async fn spawn(test: &str) -> Upstream {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--ignored", "--nocapture"])
            .env(UPSTREAM_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = tokio::time::timeout(STEP, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(addr) = line.strip_prefix("soak upstream listening on ") {
                    return addr.parse().unwrap();
                }
            }
            panic!("the upstream process ended before it listened");
        })
        .await
        .expect("the upstream process listens");
        // The child's test harness writes on (a line after 60 s running, one at the
        // end), and a write to a closed pipe would end it: read its output to the end.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let _stdin = child.stdin.take().unwrap();
        Upstream {
            child,
            addr,
            _stdin,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }
}

/// The upstream's body: a WebSocket echo server (tungstenite, none of sluice's code)
/// when started by [`Upstream::spawn`]; returns at once otherwise.
pub async fn serve(config: WebSocketConfig) {
    if std::env::var_os(UPSTREAM_ENV).is_none() {
        return;
    }
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!(
        "soak upstream listening on {}",
        listener.local_addr().unwrap()
    );
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let accept = tokio_tungstenite::accept_async_with_config(tcp, Some(config));
            let Ok(mut ws) = accept.await else { return };
            // A Close is answered by tungstenite itself; then the stream ends.
            while let Some(Ok(m)) = ws.next().await {
                if m.is_binary() && ws.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
}

// ---- what is read of a process ----

/// The pid of this process's child running `exe` (`process::Sluice` keeps its
/// child to itself).
pub fn child_running(exe: &Path) -> u32 {
    let me = std::process::id().to_string();
    let exe = std::fs::canonicalize(exe).unwrap();
    let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
        let running = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        (ppid == me && running == exe).then_some(pid)
    });
    found.expect("the program runs as a child of this process")
}

/// Resident memory in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// sluice's resident memory (KiB) at each moment the soak looks.
#[derive(Default)]
pub struct Rss {
    pub start: u64,
    pub after_ramp: u64,
    /// Sampled while the tunnels talk.
    pub run: Vec<u64>,
    pub all_closed: u64,
    pub settled: u64,
}

impl Rss {
    pub fn run_max(&self) -> u64 {
        self.run.iter().copied().max().unwrap_or(self.after_ramp)
    }

    /// The highest sample of the run's first half and of its second: memory that
    /// grows with the messages carried shows as a second half above the first.
    pub fn halves(&self) -> (u64, u64) {
        let (first, second) = self.run.split_at(self.run.len() / 2);
        let max = |s: &[u64]| s.iter().copied().max().unwrap_or(self.after_ramp);
        (max(first), max(second))
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Open descriptors by kind.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fds {
    pub sockets: usize,
    pub pipes: usize,
    pub other: usize,
}

pub fn fds(pid: u32) -> Fds {
    let mut n = Fds::default();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        // A descriptor closed between the listing and the look is not counted.
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if target.starts_with("socket:") {
            n.sockets += 1;
        } else if target.starts_with("pipe:") {
            n.pipes += 1;
        } else {
            n.other += 1;
        }
    }
    n
}

/// sluice's `/metrics`, over a connection closed after it, so that it is not among
/// the descriptors counted afterwards.
pub async fn metrics(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(STEP, s.read_to_string(&mut text))
        .await
        .expect("metrics answered")
        .unwrap();
    text
}

/// One series' value; 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `check` every 100 ms until it holds, for at most `bound`; returns how long
/// that took, or fails with `what` and the last value seen.
pub async fn eventually<T, F, Fut>(what: &str, bound: Duration, mut check: F) -> Duration
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, T)>,
{
    let started = Instant::now();
    loop {
        let (ok, seen) = check().await;
        if ok {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "not within {bound:?}: {what}; last seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Samples `pid`'s resident memory every 250 ms until it has not fallen for 2 s (or
/// `bound` has passed); returns the last sample (KiB) and how long that took. An
/// allocator gives freed pages back some time after they were freed (sluice's
/// jemalloc after 500 ms), so the figure after a close is only read once it is still.
pub async fn settled_rss(pid: u32, bound: Duration) -> (u64, Duration) {
    let started = Instant::now();
    let (mut low, mut since) = (rss_kib(pid), Instant::now());
    while since.elapsed() < Duration::from_secs(2) && started.elapsed() < bound {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_kib(pid);
        if now < low {
            (low, since) = (now, Instant::now());
        }
    }
    (low, started.elapsed())
}
