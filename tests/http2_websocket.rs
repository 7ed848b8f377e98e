//! WebSockets over HTTP/2 (RFC 8441): extended CONNECT from the client, an
//! HTTP/1.1 upgrade toward the upstream, raw WebSocket frames in the stream's DATA.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use support::frames::{self as ws, FIN, OP_TEXT, client_text, server_text};
use support::h2::*;
use support::pki::Ca;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// A gateway whose plain listener accepts h2c, routing everything to `backend`.
async fn h2c_gateway(backend: SocketAddr, extra: &str) -> TestGateway {
    start(&h2_config("http2 = true", &[backend], extra)).await
}

const WS: &str = "http://test.local/ws";

async fn echo_h2(ws: &mut H2Ws, msg: Message) {
    within("send over h2", ws.send(msg.clone())).await.unwrap();
    let got = within("echo over h2", ws.next())
        .await
        .expect("a reply")
        .expect("no error");
    assert_eq!(got, msg);
}

/// Checks the handshake an upstream saw was a valid HTTP/1.1 upgrade made by
/// sluice: GET semantics, a key of its own, version 13.
fn assert_generated_upgrade(seen: &http::HeaderMap) {
    assert_eq!(seen["upgrade"], "websocket", "{seen:?}");
    assert!(
        seen["connection"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("upgrade"),
        "{seen:?}"
    );
    assert_eq!(seen["sec-websocket-version"], "13", "{seen:?}");
    let key = seen["sec-websocket-key"].to_str().unwrap();
    assert_eq!(key.len(), 24, "a 16-byte base64 key: {key}");
    assert!(key.ends_with("=="), "{key}");
    assert!(seen.get(":protocol").is_none());
}

#[tokio::test]
async fn text_binary_and_16_mib_messages_over_tls_h2() {
    let ca = Ca::new("wsh2");
    let cert = ca.server("server", &["localhost"]);
    let mut backend = ws_echo_backend().await;
    let gw = start(&h2_config(&tls_line(&cert), &[backend.addr], "")).await;
    let mut client = H2Client::tls(gw.addr, &ca).await;
    let (mut ws, _) = ws_h2(&mut client, "https://localhost/chat?room=1", &[]).await;
    echo_h2(&mut ws, Message::text("hello over h2")).await;
    echo_h2(&mut ws, Message::binary(vec![0u8, 1, 2, 255, 254])).await;
    let big: Vec<u8> = (0..16 * 1024 * 1024)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    echo_h2(&mut ws, Message::binary(big)).await;

    let seen = within("handshake", backend.handshakes.recv())
        .await
        .unwrap();
    assert_generated_upgrade(&seen);
    assert_eq!(seen["host"], "localhost");
    assert_eq!(seen["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn websockets_over_h2c_and_http1_on_one_listener() {
    let mut backend = ws_echo_backend().await;
    let gw = h2c_gateway(backend.addr, "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    let (mut ws, _) = ws_h2(&mut client, WS, &[]).await;
    echo_h2(&mut ws, Message::text("over h2c")).await;
    let seen = within("handshake", backend.handshakes.recv())
        .await
        .unwrap();
    assert_generated_upgrade(&seen);
    assert_eq!(seen["host"], "test.local");
    assert_eq!(seen["x-forwarded-proto"], "http");
    // An HTTP/1.1 WebSocket on the same listener works as before.
    let mut h1 = ws_connect(&gw.url("/ws")).await;
    echo_once(&mut h1, Message::text("over http/1.1")).await;
}

#[tokio::test]
async fn subprotocol_and_extensions_pass_both_ways() {
    let (head_tx, mut heads) = mpsc::unbounded_channel::<String>();
    let (addr, _) = raw_backend(move |mut s, head| {
        let head_tx = head_tx.clone();
        async move {
            let proto = header_of(&head, "sec-websocket-protocol").unwrap_or("");
            let first = proto.split(',').next().unwrap_or("").trim().to_owned();
            let ext = header_of(&head, "sec-websocket-extensions")
                .unwrap_or("")
                .to_owned();
            let extra =
                format!("Sec-WebSocket-Protocol: {first}\r\nSec-WebSocket-Extensions: {ext}\r\n");
            s.write_all(switching_protocols(&head, &extra).as_bytes())
                .await
                .unwrap();
            head_tx.send(head).unwrap();
            let _ = read_to_eof(&mut s).await;
        }
    })
    .await;
    let gw = h2c_gateway(addr, "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    let resp = extended_connect(
        &mut client,
        WS,
        &[
            ("sec-websocket-protocol", "mqtt, graphql-ws"),
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
            ("origin", "https://app.example.com"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mqtt");
    assert_eq!(
        resp.headers()["sec-websocket-extensions"],
        "permessage-deflate; client_max_window_bits"
    );
    // An HTTP/2 answer carries no HTTP/1.1 handshake fields.
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    assert!(resp.headers().get("upgrade").is_none());
    let head = within("upstream head", heads.recv()).await.unwrap();
    assert!(head.starts_with("GET /ws HTTP/1.1\r\n"), "{head}");
    assert_eq!(
        header_of(&head, "sec-websocket-protocol"),
        Some("mqtt, graphql-ws")
    );
    assert_eq!(header_of(&head, "origin"), Some("https://app.example.com"));
    assert_eq!(
        header_of(&head, "sec-websocket-key").map(str::len),
        Some(24)
    );
}

#[tokio::test]
async fn the_subprotocol_chooses_the_route() {
    let mqtt = named_ws_backend("mqtt").await;
    let other = named_ws_backend("other").await;
    let gw = start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
http2 = true
[[routes]]
name = "mqtt"
path = "/ws"
subprotocol = "mqtt"
upstream = "mqtt"
[[routes]]
name = "other"
upstream = "other"
[upstreams.mqtt]
servers = ["{}"]
[upstreams.other]
servers = ["{}"]
"#,
        mqtt.addr, other.addr
    ))
    .await;
    let mut client = H2Client::h2c(gw.addr).await;
    let (mut ws, headers) = ws_h2(&mut client, WS, &[("sec-websocket-protocol", "mqtt")]).await;
    assert_eq!(headers["sec-websocket-protocol"], "mqtt");
    echo_h2(&mut ws, Message::text("to mqtt")).await;
    let (mut ws2, _) = ws_h2(&mut client, WS, &[]).await;
    echo_h2(&mut ws2, Message::text("to other")).await;
    assert_eq!(mqtt.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(other.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_websockets_share_one_h2_connection() {
    let backend = ws_echo_backend().await;
    let gw = h2c_gateway(backend.addr, "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    let mut sockets = Vec::new();
    for _ in 0..8 {
        sockets.push(ws_h2(&mut client, WS, &[]).await.0);
    }
    // All open at once, interleaved on the one connection.
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                for n in 0..20 {
                    let msg = Message::text(format!("socket {i} message {n}"));
                    ws.send(msg.clone()).await.unwrap();
                    assert_eq!(ws.next().await.unwrap().unwrap(), msg);
                }
                ws
            })
        })
        .collect();
    let mut open = Vec::new();
    for t in tasks {
        open.push(within("echoes on every socket", t).await.unwrap());
    }
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 8);
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(&text, "sluice_connections_total{listener=\"http\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "sluice_websocket_tunnels_active{route=\"backend\"}"),
        8.0
    );
    drop(open);
}

/// A raw upstream refusing upgrades with 403 and answering plain requests 200.
async fn refusing_backend() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    raw_backend(|mut s, head| async move {
        if head.to_ascii_lowercase().contains("upgrade: websocket") {
            s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nnope\r\n")
                .await
                .unwrap();
        } else {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
                .await
                .unwrap();
        }
        let _ = read_to_eof(&mut s).await;
    })
    .await
}

#[tokio::test]
async fn a_refused_upgrade_passes_back_its_status_and_body() {
    let (addr, _) = refusing_backend().await;
    let gw = h2c_gateway(addr, "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    let resp = extended_connect(&mut client, WS, &[]).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let body = within("refusal body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"nope\r\n");
    // The connection goes on serving requests.
    let (status, _, body) = client.get("/next").await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"plain");
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_websocket_handshakes_total{outcome=\"rejected\",route=\"backend\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_101_with_a_wrong_accept_is_a_502() {
    let (addr, _) = raw_backend(|mut s, _head| async move {
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n")
            .await
            .unwrap();
        let _ = read_to_eof(&mut s).await;
    })
    .await;
    let gw = h2c_gateway(addr, "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    let resp = extended_connect(&mut client, WS, &[]).await;
    assert_eq!(resp.status(), 502);
}

/// END_STREAM without a Close is a client gone: its upstream gets a masked Close 1001
/// after the client's last frame, and nothing more goes to the client.
#[tokio::test]
async fn the_client_ending_its_stream_without_a_close_gets_the_upstream_a_close() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Vec<u8>>();
    let (addr, _) = raw_backend(move |mut s, head| {
        let seen_tx = seen_tx.clone();
        async move {
            s.write_all(switching_protocols(&head, "").as_bytes())
                .await
                .unwrap();
            // sluice ends its side after its Close: read to there, then answer.
            let got = read_to_eof(&mut s).await;
            s.write_all(&server_text(b"too late")).await.unwrap();
            s.write_all(&ws::close(1001, None)).await.unwrap();
            let _ = seen_tx.send(got);
        }
    })
    .await;
    let gw = h2c_gateway(addr, "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    let mut io = tunnel(extended_connect(&mut client, WS, &[]).await).await;
    io.write_all(&client_text(b"last words")).await.unwrap();
    // END_STREAM, without a Close.
    io.shutdown().await.unwrap();
    let got = within("the upstream's reading", seen.recv()).await.unwrap();
    let frames = ws::parse_frames(&got);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].payload, b"last words");
    assert!(frames[1].masked);
    assert_eq!(frames[1].close_code(), Some(1001));
    let mut rest = Vec::new();
    within("END_STREAM", io.read_to_end(&mut rest))
        .await
        .expect("the stream ends cleanly");
    assert!(rest.is_empty(), "{rest:?}");
}

/// An upstream that ends TCP without a Close: the client gets its last frame, then a
/// Close 1011 from sluice in its place; the client's answer ends the stream, and
/// nothing of the client's goes on to the upstream that left.
#[tokio::test]
async fn the_upstream_ending_tcp_without_a_close_gets_the_client_a_close_1011() {
    let (got_tx, mut got) = mpsc::unbounded_channel::<Vec<u8>>();
    let (addr, _) = raw_backend(move |mut s, head| {
        let got_tx = got_tx.clone();
        async move {
            s.write_all(switching_protocols(&head, "").as_bytes())
                .await
                .unwrap();
            s.write_all(&server_text(b"last words")).await.unwrap();
            // FIN, and keep reading.
            s.shutdown().await.unwrap();
            let _ = got_tx.send(read_to_eof(&mut s).await);
        }
    })
    .await;
    let gw = h2c_gateway(addr, "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    let mut io = tunnel(extended_connect(&mut client, WS, &[]).await).await;
    let last = within("the last words", ws::read_frame(&mut io))
        .await
        .unwrap();
    assert_eq!(last.payload, b"last words");
    let close = within("sluice's Close", ws::read_frame(&mut io))
        .await
        .unwrap();
    assert_eq!(close.close_code(), Some(1011));
    assert!(!close.masked);
    io.write_all(&client_text(b"into the void")).await.unwrap();
    io.write_all(&ws::client_close(1011)).await.unwrap();
    let mut rest = Vec::new();
    within("END_STREAM after the answer", io.read_to_end(&mut rest))
        .await
        .expect("the stream ends cleanly");
    assert!(rest.is_empty(), "{rest:?}");
    let seen = within("the upstream's side ends", got.recv())
        .await
        .unwrap();
    assert!(seen.is_empty(), "{seen:?}");
}

/// A raw upstream that completes the upgrade, sends the text message "ready" (one
/// unmasked frame, [`server_text`]), then reports on `ended` once its connection is
/// ended by the other side (EOF or reset).
async fn watching_backend() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (addr, _) = raw_backend(move |mut s, head| {
        let tx = tx.clone();
        async move {
            if !head.to_ascii_lowercase().contains("upgrade: websocket") {
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                let _ = read_to_eof(&mut s).await;
                return;
            }
            s.write_all(switching_protocols(&head, "").as_bytes())
                .await
                .unwrap();
            s.write_all(&server_text(b"ready")).await.unwrap();
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send(());
        }
    })
    .await;
    (addr, rx)
}

#[tokio::test]
async fn dropping_the_stream_ends_the_upstream_connection() {
    let (addr, mut ended) = watching_backend().await;
    let gw = h2c_gateway(addr, "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    let mut io = tunnel(extended_connect(&mut client, WS, &[]).await).await;
    let ready = within("ready", ws::read_frame(&mut io)).await.unwrap();
    assert_eq!(
        ready,
        ws::Frame {
            first: FIN | OP_TEXT,
            payload: b"ready".to_vec(),
            masked: false,
        }
    );
    // Dropping the client's handle ends its side of the stream (hyper's client
    // sends END_STREAM for it); the upstream is told in turn.
    drop(io);
    within("the upstream connection ends", ended.recv())
        .await
        .unwrap();
    // The client connection itself goes on.
    let (status, _, body) = client.get("/after").await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
}

#[tokio::test]
async fn rst_stream_from_the_client_ends_the_upstream_connection() {
    let (addr, mut ended) = watching_backend().await;
    let gw = h2c_gateway(addr, "").await;
    let (mut raw, _) = RawH2::handshake(gw.addr, &[]).await;
    raw.send(&extended_connect_frame(1, "test.local", "/ws", &[]))
        .await;
    assert_eq!(raw.head(1).await, Some(200));
    match raw.event(1).await {
        Event::Data(d, false) => assert_eq!(d, server_text(b"ready")),
        other => panic!("expected the upstream's frame, got {other:?}"),
    }
    raw.send(&rst_stream(1, CANCEL)).await;
    within("the upstream connection ends", ended.recv())
        .await
        .unwrap();
    raw.send(&get(3, "test.local", "/after")).await;
    assert_eq!(
        raw.outcome(3).await,
        Outcome::Response(Some(200), b"ok".to_vec())
    );
}

#[tokio::test]
async fn an_upstream_reset_resets_the_stream() {
    let (addr, _) = raw_backend(|mut s, head| async move {
        s.write_all(switching_protocols(&head, "").as_bytes())
            .await
            .unwrap();
        s.write_all(&server_text(b"hi")).await.unwrap();
        let mut b = [0u8; 1];
        let _ = s.read(&mut b).await;
        // Reset: linger 0 makes close send RST.
        socket2::SockRef::from(&s)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(s);
    })
    .await;
    let gw = h2c_gateway(addr, "").await;
    let (mut raw, _) = RawH2::handshake(gw.addr, &[]).await;
    raw.send(&extended_connect_frame(1, "test.local", "/ws", &[]))
        .await;
    assert_eq!(raw.head(1).await, Some(200));
    assert_eq!(
        raw.event(1).await,
        Event::Data(Bytes::from(server_text(b"hi")), false)
    );
    // A DATA frame carrying one WebSocket frame: the upstream resets on reading it.
    raw.send(&frame(DATA, 0, 1, &client_text(b"x"))).await;
    // The reset is a peer gone between frames: the client gets a Close 1011 in its
    // place, and its answer ends the stream (hyper ends an upgraded stream's sending
    // side with END_STREAM, then resets a stream whose handles are gone while the
    // client's side is open). What must not happen is a stream left open.
    assert_eq!(
        raw.event(1).await,
        Event::Data(Bytes::from(ws::close(1011, None)), false)
    );
    raw.send(&frame(DATA, 0, 1, &ws::client_close(1011))).await;
    let mut event = raw.event(1).await;
    if event == Event::Data(Bytes::new(), true) {
        event = raw.event(1).await;
    }
    match event {
        Event::Reset(_) => {}
        other => panic!("expected RST_STREAM, got {other:?}"),
    }
}

#[tokio::test]
async fn origins_outside_the_allow_list_get_403() {
    let backend = ws_echo_backend().await;
    let gw = start(&h2_config("http2 = true", &[backend.addr], "").replace(
        "upstream = \"backend\"\n",
        "upstream = \"backend\"\nallowed_origins = [\"https://app.example.com\"]\n",
    ))
    .await;
    let mut client = H2Client::h2c(gw.addr).await;
    let resp = extended_connect(&mut client, WS, &[("origin", "https://evil.example.net")]).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 0);
    let (mut ws, _) = ws_h2(&mut client, WS, &[("origin", "https://app.example.com")]).await;
    echo_h2(&mut ws, Message::text("allowed")).await;
}

#[tokio::test]
async fn versions_other_than_13_get_426() {
    let backend = ws_echo_backend().await;
    let gw = h2c_gateway(backend.addr, "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    let resp = extended_connect(&mut client, WS, &[("sec-websocket-version", "8")]).await;
    assert_eq!(resp.status(), 426);
    assert_eq!(resp.headers()["sec-websocket-version"], "13");
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_plain_connect_is_refused_with_405() {
    let (addr, conns) = mirror_backend().await;
    let gw = h2c_gateway(addr, "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    let req = Request::connect("upstream.example:443")
        .body(empty())
        .unwrap();
    let resp = client.request(req).await;
    assert_eq!(resp.status(), 405);
    assert_eq!(conns.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_extended_connect_claiming_a_body_is_refused_and_never_tunnelled() {
    let backend = ws_echo_backend().await;
    let gw = h2c_gateway(backend.addr, "").await;
    let (mut raw, _) = RawH2::handshake(gw.addr, &[]).await;
    let mut out = extended_connect_frame(1, "test.local", "/ws", &[("content-length", "5")]);
    out.extend(frame(DATA, END_STREAM, 1, b"hello"));
    raw.send(&out).await;
    // 400 is the answer the handshake check gives; hyper's HTTP/2 server may end
    // the stream or the whole connection first. Never a 200, never upstream.
    match raw.outcome(1).await {
        Outcome::Response(Some(400), _)
        | Outcome::Reset(_)
        | Outcome::GoAway(_)
        | Outcome::Closed => {}
        other => panic!("a handshake with a body was answered {other:?}"),
    }
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 0);
    let mut client = H2Client::h2c(gw.addr).await;
    let (mut ws, _) = ws_h2(&mut client, WS, &[]).await;
    echo_h2(&mut ws, Message::text("others are served")).await;
}

#[tokio::test]
async fn handshakes_beyond_the_per_client_rate_get_429() {
    let backend = ws_echo_backend().await;
    let gw = h2c_gateway(
        backend.addr,
        "[limits]\nhandshakes_per_second_per_ip = 0.5\nhandshake_burst_per_ip = 3\n",
    )
    .await;
    let mut client = H2Client::h2c(gw.addr).await;
    let mut statuses = Vec::new();
    let mut open = Vec::new();
    for _ in 0..5 {
        let resp = extended_connect(&mut client, WS, &[]).await;
        statuses.push(resp.status().as_u16());
        open.push(resp);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn metrics_count_h2_tunnels() {
    let backend = ws_echo_backend().await;
    let gw = h2c_gateway(backend.addr, "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    let (mut ws, _) = ws_h2(&mut client, WS, &[]).await;
    echo_h2(&mut ws, Message::binary(vec![9u8; 1000])).await;
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_websocket_handshakes_total{outcome=\"upgraded\",route=\"backend\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "sluice_websocket_tunnels_active{route=\"backend\"}"),
        1.0
    );
    for direction in ["client_to_upstream", "upstream_to_client"] {
        let series =
            format!("sluice_tunnel_bytes_total{{direction=\"{direction}\",route=\"backend\"}}");
        assert!(metric(&text, &series) >= 1000.0, "{series} in:\n{text}");
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    drop(ws);
    eventually("the h2 tunnel leaves the gauge", || async {
        let text = metrics_text(&gw).await;
        metric(&text, "sluice_websocket_tunnels_active{route=\"backend\"}") == 0.0
            && metric(
                &text,
                "sluice_tunnel_duration_seconds_count{route=\"backend\"}",
            ) == 1.0
    })
    .await;
}
