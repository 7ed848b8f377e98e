//! Peers that fail: an upstream killed (SIGKILL) in the middle of a message, one
//! frozen (SIGSTOP) with its sockets open, one that accepts and never reads, and a
//! client that reads a byte a second while the upstream pushes 1 GiB. Each must end,
//! or stay bounded, as the README says, within the configured timeouts, with sluice's
//! memory and descriptors bounded and every tunnel accounted for.
//!
//! Client, sluice and upstream each sit in their own network namespace, as in
//! `faults.rs` (a link with a real MTU and real queues; see `support/netns.rs`). The
//! upstream is `tests/interop/failing_peer.py`, a process of its own so that it can
//! be killed or frozen. The client that loses its link without a FIN is in
//! `faults.rs`. The tests need root, `ip`, `tc` and `nft`; without them they say so
//! and pass, except under CI (`CI=true`).

mod support;

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::netns::{self, Netns, Topology, UPSTREAM_IP};
use support::proxy::{ACTIVE, Proxy, SLOW_STEP, TUNNELS_ENDED, step, ws_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

// ---- the failing upstream ----

/// `tests/interop/failing_peer.py` running in the upstream namespace.
struct Peer {
    child: Child,
    addr: SocketAddr,
    lines: std::sync::mpsc::Receiver<String>,
}

/// What `/half` announces and sends, and `/push` announces (failing_peer.py).
const HALF_OF: u64 = 1 << 20;
const HALF_SENT: usize = 256 << 10;
const PUSH_LEN: u64 = 1 << 30;

impl Peer {
    fn start(ns: &Netns, args: &[&str]) -> Peer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/failing_peer.py");
        let mut child = ns
            .command("python3")
            .arg(script)
            .arg(UPSTREAM_IP.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut peer = Peer {
            child,
            addr: SocketAddr::from((UPSTREAM_IP, 0)),
            lines,
        };
        let port = peer.expect("PORT ");
        peer.addr.set_port(port.parse().unwrap());
        peer
    }

    /// Waits for the next line starting with `prefix`; returns the rest of it.
    fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + SLOW_STEP;
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("the peer never said {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }

    /// The lines said so far, without waiting.
    fn said(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // A stopped process takes SIGKILL as well, but its threads are let go first
        // so that nothing waits on them.
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- raw clients ----

/// Sends a WebSocket handshake for `path` from the client namespace and reads the
/// answer's head; returns the connection and the status.
async fn handshake(net: &Topology, proxy: &Proxy, path: &str) -> (TcpStream, u16) {
    let mut s = step("connect", net.client.connect(proxy.http))
        .await
        .unwrap();
    let request = support::handshake_request(path, "");
    s.write_all(request.as_bytes()).await.unwrap();
    let head = step("the answer's head", support::read_head(&mut s))
        .await
        .expect("an answer");
    (s, support::status_of(&head))
}

/// The first bytes of a binary frame of `len` payload bytes from a server (no
/// mask), for a length above 64 KiB.
fn long_frame_header(len: u64) -> [u8; 10] {
    let mut h = [0x82, 127, 0, 0, 0, 0, 0, 0, 0, 0];
    h[2..].copy_from_slice(&len.to_be_bytes());
    h
}

/// The tunnel access line with `path`; fails if sluice logs none in time.
fn access_for(proxy: &Proxy, kind: &str, path: &str) -> serde_json::Value {
    let deadline = Instant::now() + SLOW_STEP;
    while Instant::now() < deadline {
        if let Some(line) = proxy
            .access(kind, 1)
            .into_iter()
            .find(|l| l["path"] == path)
        {
            return line;
        }
    }
    panic!("no {kind} access line for {path}");
}

/// The largest send and receive buffers the kernel lets a TCP socket grow to in
/// `ns` (`tcp_wmem` and `tcp_rmem`, whose third field is the maximum).
fn tcp_buffer_max(ns: &Netns) -> (u64, u64) {
    let read = |name: &str| -> u64 {
        let out = ns
            .command("cat")
            .arg(format!("/proc/sys/net/ipv4/{name}"))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    (read("tcp_wmem"), read("tcp_rmem"))
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_mid_message_ends_the_tunnel_at_once() {
    if !netns::available() {
        return;
    }
    let net = Topology::new();
    let peer = Peer::start(&net.upstream, &[]);
    let proxy = Proxy::start(&net.proxy, peer.addr, "");
    proxy.metrics().await;
    let fds_before = proxy.fds();

    let (mut client, status) = handshake(&net, &proxy, "/half").await;
    assert_eq!(status, 101);
    peer.expect("HALF");
    // Everything the upstream sent before it died arrives, byte for byte.
    let mut got = vec![0u8; 10 + HALF_SENT];
    step("the half message", client.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got[..10], long_frame_header(HALF_OF));
    assert!(
        got[10..]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8),
        "the half message arrived corrupted"
    );

    peer.signal("KILL");
    let killed = Instant::now();
    // The dead process's kernel closes its socket; sluice passes the end on at once.
    let mut rest = Vec::new();
    let _ = step("the end after the kill", client.read_to_end(&mut rest)).await;
    let ended = killed.elapsed();
    assert!(rest.is_empty(), "{} bytes after the kill", rest.len());
    assert!(
        ended < Duration::from_secs(1),
        "the client saw the end {ended:?} after the kill"
    );
    // A client does not wait for the rest of a message from a peer that has gone.
    drop(client);
    let text = proxy.await_metric(ACTIVE, 0.0).await;
    assert_eq!(support::metric(&text, TUNNELS_ENDED), 1.0);
    let line = access_for(&proxy, "tunnel", "/half");
    assert_eq!(line["bytes_out"], (10 + HALF_SENT) as u64, "{line}");
    assert_eq!(line["end"], "upstream_closed", "{line}");
    let fds_after = proxy.await_fds_back(fds_before).await;
    eprintln!(
        "killed mid-message: the client saw the end {ended:.2?} after SIGKILL, with all \
         {HALF_SENT} bytes sent before it; sluice fds {fds_before} -> {fds_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_upstream_is_ended_by_the_timeouts() {
    if !netns::available() {
        return;
    }
    let net = Topology::new();
    let peer = Peer::start(&net.upstream, &[]);
    let user_timeout = Duration::from_secs(2);
    let idle = Duration::from_secs(4);
    let response = Duration::from_secs(2);
    let proxy = Proxy::start(
        &net.proxy,
        peer.addr,
        "[tcp]\nuser_timeout = \"2s\"\n[timeouts]\nidle = \"4s\"\nupstream_response = \"2s\"\n",
    );
    proxy.metrics().await;
    let fds_before = proxy.fds();
    let rss_before = proxy.rss_kib();

    let mut quiet = ws_connect(&net.client, &proxy, "/echo").await;
    let mut busy = ws_connect(&net.client, &proxy, "/echo").await;
    for ws in [&mut quiet, &mut busy] {
        step("send", ws.send(Message::text("before")))
            .await
            .unwrap();
        let echo = step("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echo, Message::text("before"));
    }
    proxy.await_metric(ACTIVE, 2.0).await;

    peer.signal("STOP");
    let frozen = Instant::now();
    // The busy client writes as fast as the tunnel takes it: the frozen peer's
    // kernel still acknowledges until its buffer is full, then sluice's leg to it
    // sees a closed window.
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 << 10];
        loop {
            let written =
                tokio::time::timeout(SLOW_STEP, busy.send(Message::binary(chunk.clone())));
            match written.await {
                Ok(Ok(())) => counter.fetch_add(chunk.len() as u64, Ordering::SeqCst),
                Ok(Err(_)) => return Instant::now(),
                Err(_) => panic!("the busy tunnel was never ended"),
            };
        }
    });
    // A request, and a new handshake, to the frozen server get their 504 in time.
    let (mut s, status) = handshake(&net, &proxy, "/echo").await;
    let answered = frozen.elapsed();
    assert_eq!(status, 504);
    drop(s.shutdown().await);
    let mut s = step("connect", net.client.connect(proxy.http))
        .await
        .unwrap();
    s.write_all(b"GET /plain HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let asked = Instant::now();
    let reply = support::read_response(&mut s).await;
    let plain = asked.elapsed();
    assert_eq!(support::status_of(&reply), 504, "{reply}");
    assert!(answered >= response && answered < response + Duration::from_secs(1));
    assert!(plain >= response && plain < response + Duration::from_secs(1));

    // Nothing moves on the quiet tunnel: `idle` ends it.
    if let Some(Ok(m)) = step("the quiet tunnel ends", quiet.next()).await {
        panic!("a message from a frozen peer: {m:?}");
    }
    let quiet_end = frozen.elapsed();
    // The busy one's leg to the peer has had a closed window for `user_timeout`: the
    // kernel gives up on it. The kernel checks when a window probe is due, and probes
    // back off (0.2, 0.4, 0.8, 1.6 s...), so it ends up to one probe interval late.
    let busy_end = step("the busy tunnel ends", writer).await.unwrap() - frozen;
    let rss_peak = proxy.rss_kib();
    let text = proxy.await_metric(ACTIVE, 0.0).await;
    assert_eq!(support::metric(&text, TUNNELS_ENDED), 2.0);
    let mut ends: Vec<String> = proxy
        .access("tunnel", 2)
        .iter()
        .map(|l| l["end"].as_str().unwrap().to_owned())
        .collect();
    ends.sort();
    assert_eq!(ends, ["idle_timeout", "upstream_error"]);
    assert!(
        quiet_end >= idle && quiet_end < idle + Duration::from_secs(1),
        "the quiet tunnel ended {quiet_end:?} after the freeze"
    );
    assert!(
        busy_end >= user_timeout && busy_end < user_timeout + Duration::from_secs(4),
        "the busy tunnel ended {busy_end:?} after the freeze"
    );
    // What the client could write is what the kernels' buffers hold; sluice itself
    // holds at most one 64 KiB buffer or pipe per direction.
    let (wmem, rmem) = tcp_buffer_max(&net.proxy);
    let written = sent.load(Ordering::SeqCst);
    assert!(
        written < 2 * (wmem + rmem) + (1 << 20),
        "the client wrote {written} bytes to a frozen peer"
    );
    assert!(
        rss_peak < rss_before + 4096,
        "sluice's memory grew from {rss_before} to {rss_peak} KiB"
    );
    let fds_after = proxy.await_fds_back(fds_before).await;
    eprintln!(
        "frozen peer: 504s after {answered:.2?} (handshake) and {plain:.2?} (GET) for \
         upstream_response {response:?}; the quiet tunnel ended after {quiet_end:.2?} \
         (idle {idle:?}), the busy one after {busy_end:.2?} (user timeout {user_timeout:?}) \
         with {written} bytes written into it; sluice RSS {rss_before} -> {rss_peak} KiB, \
         fds {fds_before} -> {fds_after}"
    );
}

/// sluice's Pings find an upstream frozen with SIGSTOP (its kernel still
/// acknowledging, so TCP sees nothing wrong): no Pong within `ping_timeout`, and the
/// client gets a Close 1001; the frozen peer's closing handshake is cut after
/// `close_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_upstream_is_found_by_sluices_pings() {
    if !netns::available() {
        return;
    }
    let net = Topology::new();
    let peer = Peer::start(&net.upstream, &[]);
    let proxy = Proxy::start(
        &net.proxy,
        peer.addr,
        "[websocket]\nping_interval = \"1s\"\nping_timeout = \"1s\"\nclose_timeout = \"1s\"\n",
    );
    proxy.metrics().await;
    let mut ws = ws_connect(&net.client, &proxy, "/echo").await;
    step("send", ws.send(Message::text("before")))
        .await
        .unwrap();
    let echo = step("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echo, Message::text("before"));
    // Alive and quiet: sluice's Pings to the upstream are answered (the peer's echo
    // turns them into Pongs), which keeps the tunnel open.
    proxy
        .await_metric(
            "sluice_websocket_frames_total{direction=\"upstream_to_client\",kind=\"pong\",route=\"faults\"}",
            1.0,
        )
        .await;
    peer.signal("STOP");
    let frozen = Instant::now();
    // tungstenite answers sluice's Pings to the client while it reads.
    loop {
        match step("the Close", ws.next()).await {
            Some(Ok(Message::Ping(_))) => {}
            Some(Ok(Message::Close(Some(f)))) => break assert_eq!(u16::from(f.code), 1001),
            other => panic!("expected a Close 1001, got {other:?}"),
        }
    }
    let took = frozen.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the Close came {took:?} after SIGSTOP"
    );
    drop(ws);
    proxy.await_metric(ACTIVE, 0.0).await;
    let line = access_for(&proxy, "tunnel", "/echo");
    assert_eq!(line["end"], "liveness_timeout", "{line}");
    assert_eq!(line["close_code"], 1001, "{line}");
    eprintln!("a frozen upstream: the client's Close 1001 came {took:.2?} after SIGSTOP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_reads_gets_504s_and_bounded_bodies() {
    if !netns::available() {
        return;
    }
    let net = Topology::new();
    let peer = Peer::start(&net.upstream, &["--never-read"]);
    let response = Duration::from_secs(2);
    let proxy = Proxy::start(
        &net.proxy,
        peer.addr,
        "[timeouts]\nupstream_response = \"2s\"\n",
    );
    proxy.metrics().await;
    let fds_before = proxy.fds();
    let rss_before = proxy.rss_kib();

    // A handshake: the 101 never comes.
    let started = Instant::now();
    let (client, status) = handshake(&net, &proxy, "/echo").await;
    let answered = started.elapsed();
    drop(client);
    assert_eq!(status, 504);
    peer.expect("ACCEPTED");

    // A 64 MiB upload the upstream never takes: sluice does not swallow it, and
    // answers within `upstream_response` all the same.
    const BODY: u64 = 64 << 20;
    let mut s = step("connect", net.client.connect(proxy.http))
        .await
        .unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {BODY}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = s.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let upload = tokio::spawn(async move {
        let chunk = vec![1u8; 64 << 10];
        let mut n = 0;
        while n < BODY {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
            n += chunk.len() as u64;
            counter.store(n, Ordering::SeqCst);
        }
    });
    let posted = Instant::now();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = step("the upload's answer", reader.read(&mut byte))
            .await
            .unwrap();
        assert_eq!(n, 1, "no answer to the upload");
        head.push(byte[0]);
    }
    let upload_answered = posted.elapsed();
    let head = String::from_utf8(head).unwrap();
    assert_eq!(support::status_of(&head), 504, "{head}");
    let rss_peak = proxy.rss_kib();
    let written = sent.load(Ordering::SeqCst);
    upload.abort();
    drop(reader);

    assert!(answered >= response && answered < response + Duration::from_secs(1));
    assert!(
        upload_answered >= response && upload_answered < response + Duration::from_secs(1),
        "the upload was answered after {upload_answered:?}"
    );
    let (wmem, rmem) = tcp_buffer_max(&net.proxy);
    assert!(
        written < 2 * (wmem + rmem) + (1 << 20),
        "{written} bytes of the upload went into a peer that reads nothing"
    );
    assert!(
        rss_peak < rss_before + 4096,
        "sluice's memory grew from {rss_before} to {rss_peak} KiB"
    );
    let lines = proxy.access("http", 2);
    assert!(lines.iter().all(|l| l["status"] == 504), "{lines:?}");
    let fds_after = proxy.await_fds_back(fds_before).await;
    eprintln!(
        "a peer that never reads: handshake 504 after {answered:.2?}, upload 504 after \
         {upload_answered:.2?} with {written} of {BODY} bytes written (upstream_response \
         {response:?}); sluice RSS {rss_before} -> {rss_peak} KiB, fds {fds_before} -> \
         {fds_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_taking_a_byte_a_second_holds_back_a_1_gib_push() {
    if !netns::available() {
        return;
    }
    let net = Topology::new();
    let peer = Peer::start(&net.upstream, &[]);
    let user_timeout = Duration::from_secs(5);
    let close_timeout = Duration::from_secs(1);
    let proxy = Proxy::start(
        &net.proxy,
        peer.addr,
        "[tcp]\nuser_timeout = \"5s\"\n[websocket]\nclose_timeout = \"1s\"\n",
    );
    proxy.metrics().await;
    let fds_before = proxy.fds();
    let rss_before = proxy.rss_kib();
    let (wmem, rmem) = tcp_buffer_max(&net.proxy);
    // Between the peer's socket and the reader: the peer's send buffer, sluice's
    // receive and send buffers and one 64 KiB pipe, the reader's receive buffer.
    let bound = 2 * (wmem + rmem) + (64 << 10);

    let (mut client, status) = handshake(&net, &proxy, "/push").await;
    assert_eq!(status, 101);
    let opened = Instant::now();
    let mut header = [0u8; 10];
    step("the frame header", client.read_exact(&mut header))
        .await
        .unwrap();
    assert_eq!(header, long_frame_header(PUSH_LEN));

    // One byte a second, each checked, while the peer pushes all it can.
    let mut pushed = 0u64;
    let mut rss_peak = rss_before;
    let mut samples = Vec::new();
    for i in 0..4 {
        let mut b = [0u8; 1];
        step("a byte", client.read_exact(&mut b)).await.unwrap();
        assert_eq!(b[0], (i % 251) as u8, "byte {i} corrupted");
        tokio::time::sleep(Duration::from_secs(1)).await;
        for line in peer.said() {
            if let Some(n) = line.strip_prefix("PUSHED ") {
                pushed = n.parse().unwrap();
            }
        }
        rss_peak = rss_peak.max(proxy.rss_kib());
        samples.push(pushed);
    }
    assert!(
        pushed > 0 && pushed <= bound,
        "the peer pushed {pushed} bytes; the buffers on the way hold {bound}"
    );
    // The buffers filled in the first second; after that the push stood still.
    assert_eq!(samples[1], samples[3], "the push went on: {samples:?}");
    assert!(
        rss_peak < rss_before + 2048,
        "sluice's memory grew from {rss_before} to {rss_peak} KiB"
    );

    // The reader's window has been shut since the buffers filled: after
    // `user_timeout` of that the kernel gives up on the connection. The client is a
    // peer gone: the upstream gets sluice's Close, is read (and not forwarded) for
    // its answer for up to `close_timeout`, then cut.
    let stopped: u64 = peer.expect("PUSH ENDED ").parse().unwrap();
    let ended = opened.elapsed();
    assert!(
        stopped >= pushed,
        "the peer's count went back: {stopped} < {pushed}"
    );
    assert!(
        ended >= user_timeout && ended < user_timeout + close_timeout + Duration::from_secs(5),
        "the tunnel ended {ended:?} after it opened"
    );
    let line = access_for(&proxy, "tunnel", "/push");
    assert_eq!(line["end"], "client_error", "{line}");
    drop(client);
    proxy.await_metric(ACTIVE, 0.0).await;
    let fds_after = proxy.await_fds_back(fds_before).await;
    eprintln!(
        "a byte-a-second reader: the peer pushed {pushed} bytes of 1 GiB, then stood \
         still (bound {bound}: tcp_wmem max {wmem}, tcp_rmem max {rmem}); sluice RSS \
         {rss_before} -> {rss_peak} KiB; the tunnel ended {ended:.2?} after it opened \
         (user timeout {user_timeout:?}); fds {fds_before} -> {fds_after}"
    );
}
