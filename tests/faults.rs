//! Proof under faults: client, sluice and upstream each in their own network
//! namespace, joined by veth pairs, with packet loss (nftables) or a 1 Mbit/s cap
//! (`tbf`) on the client link, or that link cut without a FIN. The real `sluice`
//! binary runs in the middle namespace; the client and the upstream are this test's
//! own, on sockets made inside their namespaces (see `support/netns.rs`).
//!
//! Every message carries its sequence number and an xxh3 checksum of its payload, and
//! the receiver checks both against what the sender recorded, so a lost, reordered,
//! duplicated or corrupted message fails the test.
//!
//! The tests need root, `ip`, `tc` and `nft`. Without them they say so and pass,
//! except under CI (`CI=true`), where `.ci/run` installs nftables.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::big_messages;
use support::frames::frame_len;
use support::netns::{self, CLIENT_DEV, Netns, PROXY_CLIENT_DEV, Topology, UPSTREAM_IP};
use support::proxy::{
    ACTIVE, DOWN_BYTES, Proxy, SLOW_STEP, TUNNELS_ENDED, UP_BYTES, Ws, step, ws_connect,
};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

// ---- checksummed messages ----

/// A message: sequence number (4 bytes), xxh3 of the payload (8), payload of `len`
/// random bytes. Returns it with its checksum.
fn message(seq: u32, rng: &mut fastrand::Rng, len: usize) -> (Vec<u8>, u64) {
    let mut m = vec![0u8; 12 + len];
    rng.fill(&mut m[12..]);
    let sum = xxhash_rust::xxh3::xxh3_64(&m[12..]);
    m[..4].copy_from_slice(&seq.to_le_bytes());
    m[4..12].copy_from_slice(&sum.to_le_bytes());
    (m, sum)
}

/// A received message's sequence number and checksum, after checking that the
/// payload matches the checksum it carries.
fn check(m: &[u8]) -> (u32, u64) {
    assert!(m.len() >= 12, "a {}-byte message has no header", m.len());
    let seq = u32::from_le_bytes(m[..4].try_into().unwrap());
    let sum = u64::from_le_bytes(m[4..12].try_into().unwrap());
    assert_eq!(
        xxhash_rust::xxh3::xxh3_64(&m[12..]),
        sum,
        "message {seq} ({} bytes) arrived corrupted",
        m.len()
    );
    (seq, sum)
}

/// Payload sizes from a byte to half a MiB: mostly small, some medium, a few large.
fn payload_len(rng: &mut fastrand::Rng) -> usize {
    match rng.u32(0..10) {
        0..=5 => rng.usize(0..=500),
        6..=8 => rng.usize(500..=32 << 10),
        _ => rng.usize(32 << 10..=512 << 10),
    }
}

/// What one tunnel carried, as the client counted it.
#[derive(Debug, Default, Clone, Copy)]
struct Carried {
    messages: u64,
    /// Message bytes each way (headers included, framing not).
    bytes: u64,
    /// Bytes on the wire client to upstream, framing and the close frame included.
    wire_up: u64,
    /// The same upstream to client.
    wire_down: u64,
}

/// Sends messages of varied sizes totalling `total` bytes (or just over) to an echoing
/// upstream while reading the echoes, checks every echo against what was sent, then
/// closes. Sender and reader run at once, so the link is full both ways.
async fn pump(ws: Ws, total: u64, seed: u64) -> Carried {
    let (mut sink, mut stream) = ws.split();
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(u32, usize, u64)>();
    let send = async move {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut c = Carried::default();
        let mut seq = 0;
        while c.bytes < total {
            // The last message is cut to size, so the total is what was asked for.
            let len = payload_len(&mut rng).min((total - c.bytes).saturating_sub(12) as usize);
            let (m, sum) = message(seq, &mut rng, len);
            c.messages += 1;
            c.bytes += m.len() as u64;
            c.wire_up += frame_len(m.len(), true);
            c.wire_down += frame_len(m.len(), false);
            sent_tx.send((seq, m.len(), sum)).unwrap();
            step(
                &format!("sending message {seq}"),
                sink.send(Message::binary(m)),
            )
            .await
            .unwrap();
            seq += 1;
        }
        (sink, c)
    };
    let receive = async move {
        let mut echoed = 0u64;
        while let Some((seq, len, sum)) = sent_rx.recv().await {
            let got = step(&format!("the echo of message {seq}"), stream.next())
                .await
                .unwrap_or_else(|| panic!("the tunnel ended before echo {seq}"))
                .unwrap_or_else(|e| panic!("echo {seq}: {e}"));
            let data = got.into_data();
            assert_eq!(data.len(), len, "echo {seq} has the wrong length");
            assert_eq!(check(&data), (seq, sum), "echo {seq} is not what was sent");
            echoed += 1;
        }
        (stream, echoed)
    };
    let ((sink, mut c), (stream, echoed)) = tokio::join!(send, receive);
    assert_eq!(echoed, c.messages);
    let mut ws = sink.reunite(stream).unwrap();
    step("close", ws.close(None)).await.unwrap();
    while let Some(Ok(m)) = step("close reply", ws.next()).await {
        assert!(
            m.is_close(),
            "nothing but the close after the echoes: {m:?}"
        );
    }
    // An empty close each way: masked from the client, plain from the upstream.
    c.wire_up += frame_len(0, true);
    c.wire_down += frame_len(0, false);
    c
}

// ---- the upstream in its namespace ----

/// The upstream: HTTP requests get their body back; WebSocket paths choose a
/// behaviour: `/push` sends checksummed 64 KiB messages as fast as it may, `/tick`
/// sends a 1 KiB message every 50 ms, anything else echoes.
struct Upstream {
    addr: SocketAddr,
    /// The path of each WebSocket that ended, when it did.
    ended: mpsc::UnboundedReceiver<(String, Instant)>,
    /// Those already received.
    seen_ended: HashMap<String, Instant>,
    /// Bytes `/push` has handed to its socket.
    pushed: Arc<AtomicU64>,
}

impl Upstream {
    fn start(ns: &Netns) -> Upstream {
        let listener = ns.listen(UPSTREAM_IP);
        let addr = listener.local_addr().unwrap();
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let pushed = Arc::new(AtomicU64::new(0));
        let counter = pushed.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let ended = ended_tx.clone();
                let pushed = counter.clone();
                let svc = hyper::service::service_fn(move |req| {
                    answer(req, ended.clone(), pushed.clone())
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades(),
                );
            }
        });
        Upstream {
            addr,
            ended,
            seen_ended: HashMap::new(),
            pushed,
        }
    }

    /// Waits for the WebSocket on `path` to end; returns when it did.
    async fn ended(&mut self, path: &str) -> Instant {
        loop {
            if let Some(at) = self.seen_ended.get(path) {
                return *at;
            }
            let (p, at) = step("the upstream's side ends", self.ended.recv())
                .await
                .unwrap();
            self.seen_ended.insert(p, at);
        }
    }
}

async fn answer(
    mut req: Request<Incoming>,
    ended: mpsc::UnboundedSender<(String, Instant)>,
    pushed: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        let body = req.into_body().collect().await;
        return Ok(match body {
            Ok(b) => Response::new(Full::new(b.to_bytes())),
            Err(_) => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            }
        });
    };
    let path = req.uri().path().to_owned();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(big_messages()),
        )
        .await;
        match path.as_str() {
            "/push" => push(ws, &pushed).await,
            "/tick" => tick(ws).await,
            _ => echo(ws).await,
        }
        let _ = ended.send((path, Instant::now()));
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = sluice::handshake::accept_for(key.as_bytes());
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_bytes(&accept).unwrap(),
    );
    Ok(resp)
}

type UpstreamWs = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn echo(mut ws: UpstreamWs) {
    while let Some(Ok(m)) = ws.next().await {
        if (m.is_binary() || m.is_text()) && ws.send(m).await.is_err() {
            return;
        }
    }
}

async fn push(mut ws: UpstreamWs, pushed: &AtomicU64) {
    let mut rng = fastrand::Rng::with_seed(7);
    for seq in 0.. {
        let (m, _) = message(seq, &mut rng, 64 << 10);
        let n = m.len() as u64;
        if ws.send(Message::binary(m)).await.is_err() {
            return;
        }
        pushed.fetch_add(n, Ordering::SeqCst);
    }
}

async fn tick(mut ws: UpstreamWs) {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut every = tokio::time::interval(Duration::from_millis(50));
    for seq in 0.. {
        tokio::select! {
            _ = every.tick() => {
                let (m, _) = message(seq, &mut rng, 1024);
                if ws.send(Message::binary(m)).await.is_err() {
                    return;
                }
            }
            m = ws.next() => if !matches!(m, Some(Ok(_))) {
                return;
            },
        }
    }
}

// ---- the tests ----

/// Checks that sluice's metrics and access lines account for exactly the tunnels in
/// `carried` (by path), byte for byte, once they have all ended.
async fn assert_accounted(proxy: &Proxy, carried: &[(String, Carried)]) {
    let text = proxy.await_metric(ACTIVE, 0.0).await;
    let n = carried.len() as f64;
    assert_eq!(support::metric(&text, TUNNELS_ENDED), n, "{text}");
    let up: u64 = carried.iter().map(|(_, c)| c.wire_up).sum();
    let down: u64 = carried.iter().map(|(_, c)| c.wire_down).sum();
    assert_eq!(support::metric(&text, UP_BYTES), up as f64);
    assert_eq!(support::metric(&text, DOWN_BYTES), down as f64);
    let lines = proxy.access("tunnel", carried.len());
    for (path, c) in carried {
        let line = lines
            .iter()
            .find(|l| l["path"] == path.as_str())
            .unwrap_or_else(|| panic!("no access line for {path}: {lines:?}"));
        assert_eq!(line["status"], 101);
        assert_eq!(line["bytes_in"], c.wire_up, "{path}: {line}");
        assert_eq!(line["bytes_out"], c.wire_down, "{path}: {line}");
        assert!(
            ["client_closed", "upstream_closed"].contains(&line["end"].as_str().unwrap()),
            "{path} ended cleanly: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_carry_megabytes_intact_through_3_percent_loss() {
    if !netns::available() {
        return;
    }
    let net = Topology::new();
    let upstream = Upstream::start(&net.upstream);
    let proxy = Proxy::start(&net.proxy, upstream.addr, "");
    proxy.metrics().await;
    let fds_before = proxy.fds();
    net.client.set_loss(CLIENT_DEV, 3);

    let started = Instant::now();
    let tunnels = (0..4u64).map(|i| {
        let (client, proxy) = (&net.client, &proxy);
        async move {
            let path = format!("/echo/{i}");
            let ws = ws_connect(client, proxy, &path).await;
            (path, pump(ws, 8 << 20, i).await)
        }
    });
    // Expected in about 4 s; a stall shows where the bytes stopped (Recv-Q is bytes
    // the kernel holds that sluice has not read).
    let Ok(carried) =
        tokio::time::timeout(SLOW_STEP / 2, futures_util::future::join_all(tunnels)).await
    else {
        panic!(
            "the tunnels stalled; sluice's sockets:\n{}",
            net.proxy.sockets()
        );
    };
    let took = started.elapsed();
    let loss = net.client.loss_counts();
    assert!(loss.dropped > 0, "the loss rules dropped nothing: {loss}");

    assert_accounted(&proxy, &carried).await;
    let fds_after = proxy.await_fds_back(fds_before).await;
    let messages: u64 = carried.iter().map(|(_, c)| c.messages).sum();
    let bytes: u64 = carried.iter().map(|(_, c)| c.bytes).sum();
    eprintln!(
        "4 tunnels: {messages} messages, {bytes} bytes each way checked in {took:.1?}; \
         client link: {loss}; sluice fds {fds_before} -> {fds_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mbit_link_loses_nothing_and_holds_sluice_to_flow_control() {
    if !netns::available() {
        return;
    }
    let net = Topology::new();
    let mut upstream = Upstream::start(&net.upstream);
    let proxy = Proxy::start(&net.proxy, upstream.addr, "");
    proxy.metrics().await;
    let fds_before = proxy.fds();
    let rss_before = proxy.rss_kib();
    // Both directions of the client link: uploads leave the client's end, downloads
    // sluice's.
    net.client.set_rate(CLIENT_DEV, "1mbit");
    net.proxy.set_rate(PROXY_CLIENT_DEV, "1mbit");

    // Sample sluice's memory all along.
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(AtomicBool::new(true));
    let pid = proxy.pid();
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let kib = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                        .unwrap_or(0);
                    peak.fetch_max(kib, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Echoes both ways at the link's rate.
    let started = Instant::now();
    let tunnels = (0..2u64).map(|i| {
        let (client, proxy) = (&net.client, &proxy);
        async move {
            let path = format!("/echo/{i}");
            let ws = ws_connect(client, proxy, &path).await;
            (path, pump(ws, 320 << 10, 100 + i).await)
        }
    });
    let carried = futures_util::future::join_all(tunnels).await;
    let echo_took = started.elapsed();
    assert_accounted(&proxy, &carried).await;

    // An upstream that could send hundreds of MB a second, to a client behind the cap:
    // what it gets to send must stay near what the client has received.
    let started = Instant::now();
    let mut ws = ws_connect(&net.client, &proxy, "/push").await;
    let mut received = 0u64;
    for seq in 0u32.. {
        let m = step("pushed message", ws.next())
            .await
            .expect("the push goes on")
            .unwrap();
        let data = m.into_data();
        assert_eq!(check(&data).0, seq, "pushed messages arrive in order");
        received += data.len() as u64;
        if received >= 640 << 10 {
            break;
        }
    }
    let push_took = started.elapsed();
    let pushed = upstream.pushed.load(Ordering::SeqCst);
    let ahead = pushed.saturating_sub(received);
    assert!(
        ahead < 32 << 20,
        "the upstream got {ahead} bytes ahead of the client: sluice buffered them"
    );
    drop(ws);
    upstream.ended("/push").await;
    let text = proxy.await_metric(ACTIVE, 0.0).await;
    sampling.store(false, Ordering::SeqCst);
    sampler.await.unwrap();
    let rss_peak = peak.load(Ordering::SeqCst);
    assert!(
        rss_peak < rss_before + (64 << 10),
        "sluice grew from {rss_before} KiB to {rss_peak} KiB"
    );
    assert_eq!(support::metric(&text, TUNNELS_ENDED), 3.0);
    let fds_after = proxy.await_fds_back(fds_before).await;
    let bytes: u64 = carried.iter().map(|(_, c)| c.bytes).sum();
    eprintln!(
        "1 Mbit/s: {bytes} bytes each way echoed intact in {echo_took:.1?}; push: {received} bytes \
         received in {push_took:.1?}, the upstream {ahead} bytes ahead; sluice RSS {rss_before} KiB, \
         peak {rss_peak} KiB; fds {fds_before} -> {fds_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_arrive_byte_for_byte_through_3_percent_loss() {
    if !netns::available() {
        return;
    }
    let net = Topology::new();
    let upstream = Upstream::start(&net.upstream);
    let proxy = Proxy::start(&net.proxy, upstream.addr, "");
    net.client.set_loss(CLIENT_DEV, 3);

    let started = Instant::now();
    let stream = step("connect", net.client.connect(proxy.http))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut rng = fastrand::Rng::with_seed(3);
    const REQUESTS: usize = 3;
    const SIZE: usize = 2 << 20;
    for i in 0..REQUESTS {
        let mut body = vec![0u8; SIZE];
        rng.fill(&mut body);
        let req = Request::post(format!("/http/{i}"))
            .header(header::HOST, "faults.test")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let resp = step("response", sender.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let got = step("response body", resp.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(got.len(), SIZE, "request {i}: the echoed body's length");
        if let Some(at) = got.iter().zip(&body).position(|(a, b)| a != b) {
            panic!("request {i}: the echoed body differs from byte {at}");
        }
    }
    let took = started.elapsed();
    let loss = net.client.loss_counts();
    assert!(loss.dropped > 0, "the loss rules dropped nothing: {loss}");

    let lines = proxy.access("http", REQUESTS);
    for line in &lines {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["bytes_in"], SIZE, "{line}");
        assert_eq!(line["bytes_out"], SIZE, "{line}");
    }
    let ok = proxy
        .metric("sluice_http_requests_total{route=\"faults\",status=\"200\"}")
        .await;
    assert_eq!(ok, REQUESTS as f64);
    eprintln!(
        "HTTP: {REQUESTS} x {SIZE} bytes up and back checked in {took:.1?}; client link: {loss}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_handshakes_through_a_lossy_link_all_succeed() {
    if !netns::available() {
        return;
    }
    let net = Topology::new();
    let upstream = Upstream::start(&net.upstream);
    let proxy = Proxy::start(&net.proxy, upstream.addr, "");
    // More than elsewhere: with 5 % each way a few SYNs or heads are bound to be lost.
    net.client.set_loss(CLIENT_DEV, 5);

    let started = Instant::now();
    let handshakes = (0..50u32).map(|i| {
        let (client, proxy) = (&net.client, &proxy);
        async move {
            let t = Instant::now();
            let mut ws = ws_connect(client, proxy, &format!("/echo/h{i}")).await;
            let handshake = t.elapsed();
            let (m, sum) = message(i, &mut fastrand::Rng::with_seed(i.into()), 100);
            step("send", ws.send(Message::binary(m))).await.unwrap();
            let got = step("echo", ws.next()).await.unwrap().unwrap();
            assert_eq!(check(&got.into_data()), (i, sum));
            step("close", ws.close(None)).await.unwrap();
            while let Some(Ok(_)) = step("close reply", ws.next()).await {}
            handshake
        }
    });
    let times = futures_util::future::join_all(handshakes).await;
    let took = started.elapsed();
    let loss = net.client.loss_counts();

    let text = proxy.await_metric(ACTIVE, 0.0).await;
    assert_eq!(
        support::metric(
            &text,
            "sluice_websocket_handshakes_total{outcome=\"upgraded\",route=\"faults\"}"
        ),
        50.0
    );
    assert_eq!(support::metric(&text, TUNNELS_ENDED), 50.0);
    let slowest = times.iter().max().unwrap();
    let retried = times
        .iter()
        .filter(|t| **t >= Duration::from_millis(200))
        .count();
    eprintln!(
        "50 handshakes and echoes in {took:.1?}; slowest handshake {slowest:.1?}, {retried} took \
         200 ms or more (a retransmission); client link: {loss}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_link_gone_without_a_fin_ends_its_tunnels_in_time() {
    if !netns::available() {
        return;
    }
    let net = Topology::new();
    let mut upstream = Upstream::start(&net.upstream);
    let user_timeout = Duration::from_secs(2);
    let idle = Duration::from_secs(5);
    let proxy = Proxy::start(
        &net.proxy,
        upstream.addr,
        "[tcp]\nuser_timeout = \"2s\"\n[timeouts]\nidle = \"5s\"\n",
    );
    proxy.metrics().await;
    let fds_before = proxy.fds();

    // A quiet tunnel, and one the upstream keeps sending on.
    let mut quiet = ws_connect(&net.client, &proxy, "/echo/quiet").await;
    let (m, _) = message(0, &mut fastrand::Rng::with_seed(1), 100);
    step("send", quiet.send(Message::binary(m))).await.unwrap();
    step("echo", quiet.next()).await.unwrap().unwrap();
    // The echo's acknowledgement may still wait in the client's delayed-ACK timer; a
    // segment of data carries it at once. An unasked pong draws no reply.
    step("pong", quiet.send(Message::Pong(Bytes::new())))
        .await
        .unwrap();
    let mut busy = ws_connect(&net.client, &proxy, "/tick").await;
    step("a tick", busy.next()).await.unwrap().unwrap();
    proxy.await_metric(ACTIVE, 2.0).await;

    // The cable is pulled: no FIN, no RST, nothing more from the client.
    net.client.ip(&["link", "set", CLIENT_DEV, "down"]);
    let down = Instant::now();

    // sluice's ticks to the client go unacknowledged: the user timeout ends that one.
    let busy_end = upstream.ended("/tick").await - down;
    // Nothing moves on the quiet one: the idle timeout ends it.
    let quiet_end = upstream.ended("/echo/quiet").await - down;
    let text = proxy.await_metric(ACTIVE, 0.0).await;
    assert_eq!(support::metric(&text, TUNNELS_ENDED), 2.0);
    let lines = proxy.access("tunnel", 2);
    let end_of = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .and_then(|l| l["end"].as_str())
            .unwrap_or_else(|| panic!("no access line for {path}: {lines:?}"))
            .to_owned()
    };
    assert_eq!(end_of("/tick"), "client_error");
    // The kernel checks the user timeout when a retransmission is due, so it can end
    // up to one backed-off retransmission timeout later (measured: 2.9 s for 2 s).
    assert!(
        busy_end >= user_timeout && busy_end < user_timeout + Duration::from_secs(2),
        "the user timeout ended the busy tunnel after {busy_end:?}"
    );
    assert_eq!(end_of("/echo/quiet"), "idle_timeout");
    assert!(
        quiet_end < idle + Duration::from_secs(1),
        "the quiet tunnel ended {quiet_end:?} after the link went down"
    );
    let fds_after = proxy.await_fds_back(fds_before).await;
    drop((quiet, busy));
    eprintln!(
        "link down: the busy tunnel ended after {busy_end:.2?} (user timeout {user_timeout:?}), \
         the quiet one after {quiet_end:.2?} (idle {idle:?}); both upstream legs closed; \
         sluice fds {fds_before} -> {fds_after}"
    );
}
