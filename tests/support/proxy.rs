//! The real `sluice` binary inside the proxy namespace of a [`super::netns::Topology`],
//! for the fault tests: its addresses, metrics, JSON access lines, descriptors and
//! resident memory.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

use super::netns::{Netns, PROXY_IP};

/// The longest one awaited step may take over a lossy or slow link: a lost SYN alone
/// costs 1 s, and retransmission timeouts double.
pub const SLOW_STEP: Duration = Duration::from_secs(30);

/// Awaits `f`, failing the test if it takes longer than [`SLOW_STEP`].
pub async fn step<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(SLOW_STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// The real `sluice` binary running inside the proxy namespace, logging JSON.
pub struct Proxy {
    pub child: Child,
    pub ns: Netns,
    /// The client-facing listener, on [`PROXY_IP`].
    pub http: SocketAddr,
    /// The admin listener, on the proxy namespace's loopback.
    pub admin: SocketAddr,
    pub logs: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts sluice in `ns` with one route, "faults", to `upstream`, plus `extra`
    /// sections; waits until it logs its addresses.
    pub fn start(ns: &Netns, upstream: SocketAddr, extra: &str) -> Proxy {
        let toml = format!(
            r#"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
[runtime]
workers = {WORKERS}
[[listeners]]
name = "http"
listen = "{PROXY_IP}:0"
[[routes]]
name = "faults"
upstream = "backend"
[upstreams.backend]
servers = ["{upstream}"]
{extra}
"#
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, toml).unwrap();
        let mut child = ns
            .command(env!("CARGO_BIN_EXE_sluice"))
            .args(["-c", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let (mut http, mut admin) = (None, None);
        let deadline = Instant::now() + super::STEP;
        while http.is_none() || admin.is_none() {
            let line = logs
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("sluice logs its addresses");
            eprintln!("[sluice] {line}");
            let Some(addr) = line
                .split("\"addr\":\"")
                .nth(1)
                .and_then(|a| a.split('"').next())
            else {
                continue;
            };
            let addr: SocketAddr = addr.parse().unwrap();
            if line.contains("admin listening") {
                admin = Some(addr);
            } else if line.contains("\"listener\":\"http\"") {
                http = Some(addr);
            }
        }
        let proxy = Proxy {
            child,
            ns: Netns {
                name: ns.name.clone(),
            },
            http: http.unwrap(),
            admin: admin.unwrap(),
            logs,
            _dir: dir,
        };
        // `ip netns exec` execs the program in its own place: the pid is sluice's.
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", proxy.pid())).unwrap();
        assert_eq!(comm.trim(), "sluice");
        proxy
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// sluice's open file descriptors, by kind.
    pub fn fds(&self) -> Fds {
        let mut fds = Fds::default();
        for entry in std::fs::read_dir(format!("/proc/{}/fd", self.pid())).unwrap() {
            let Ok(target) = std::fs::read_link(entry.unwrap().path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if target.starts_with("socket:") {
                fds.sockets += 1;
            } else if target.starts_with("pipe:") {
                fds.pipes += 1;
            } else {
                fds.other += 1;
            }
        }
        fds
    }

    /// sluice's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.http)
    }

    /// `/metrics`, fetched from inside the proxy namespace.
    pub async fn metrics(&self) -> String {
        let mut s = self.ns.connect(self.admin).await.expect("admin connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        super::within("metrics", s.read_to_end(&mut out))
            .await
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    pub async fn metric(&self, series: &str) -> f64 {
        super::metric(&self.metrics().await, series)
    }

    /// Polls the metrics until `series` has `value`; returns the whole text then.
    pub async fn await_metric(&self, series: &str, value: f64) -> String {
        let deadline = Instant::now() + SLOW_STEP;
        loop {
            let text = self.metrics().await;
            if super::metric(&text, series) == value {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{series} never reached {value}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for `n` access lines of `kind` (`http` or `tunnel`); returns their fields.
    pub fn access(&self, kind: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + SLOW_STEP;
        let mut found = Vec::new();
        while found.len() < n {
            let line = self
                .logs
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("only {} of {n} {kind} access lines", found.len()));
            if !line.contains("\"target\":\"access\"") {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["fields"]["kind"] == kind {
                found.push(v["fields"].clone());
            }
        }
        found
    }

    /// Waits until sluice's descriptors are back to `before`: as many sockets and
    /// other files, and no more pipes than the tunnels' pipe pools may keep.
    pub async fn await_fds_back(&self, before: Fds) -> Fds {
        let deadline = Instant::now() + super::STEP;
        loop {
            let now = self.fds();
            if now.sockets <= before.sockets
                && now.other <= before.other
                && now.pipes <= before.pipes + POOLED_PIPE_FDS
            {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "sluice's descriptors went from {before} to {now}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Series of the one route, "faults", that [`Proxy`] serves.
pub const ACTIVE: &str = "sluice_websocket_tunnels_active{route=\"faults\"}";
pub const UP_BYTES: &str =
    "sluice_tunnel_bytes_total{direction=\"client_to_upstream\",route=\"faults\"}";
pub const DOWN_BYTES: &str =
    "sluice_tunnel_bytes_total{direction=\"upstream_to_client\",route=\"faults\"}";
pub const TUNNELS_ENDED: &str = "sluice_tunnel_duration_seconds_count{route=\"faults\"}";

/// sluice's worker threads in these tests, set so that the pipe pools have a bound.
pub const WORKERS: usize = 2;
/// Pipe descriptors the splice path may keep for reuse once tunnels end: up to 16
/// free pipes per worker thread (src/tunnel/splice.rs), two descriptors each.
pub const POOLED_PIPE_FDS: usize = WORKERS * 16 * 2;

/// Open descriptors by kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fds {
    pub sockets: usize,
    pub pipes: usize,
    pub other: usize,
}

impl std::fmt::Display for Fds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sockets, {} pipe ends, {} other",
            self.sockets, self.pipes, self.other
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket from the client namespace through sluice to `path`.
pub async fn ws_connect(client: &Netns, proxy: &Proxy, path: &str) -> Ws {
    let stream = step("connect", client.connect(proxy.http))
        .await
        .expect("connect to sluice");
    let (ws, resp) = step(
        "handshake",
        tokio_tungstenite::client_async_with_config(
            proxy.url(path),
            stream,
            Some(super::big_messages()),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("handshake for {path}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}
