//! WebSocket tunnelling end to end: real clients, real upstreams, sluice between.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use support::frames::{client_text, close, parse_frames, read_frame, server_text};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};

#[tokio::test]
async fn text_and_binary_messages_echo() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "").await;
    let mut ws = ws_connect(&gw.url("/chat?room=1")).await;
    echo_once(&mut ws, Message::text("hello through sluice")).await;
    echo_once(&mut ws, Message::binary(vec![0u8, 1, 2, 255, 254])).await;
    echo_once(&mut ws, Message::text("")).await;
}

#[tokio::test]
async fn a_16_mib_message_arrives_whole() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "").await;
    let mut ws = ws_connect(&gw.url("/")).await;
    let big: Vec<u8> = (0..16 * 1024 * 1024)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    echo_once(&mut ws, Message::binary(big)).await;
}

#[tokio::test]
async fn fragmented_messages_are_reassembled_by_the_peer() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "").await;
    let mut ws = ws_connect(&gw.url("/")).await;
    let parts = ["frag", "mented ", "message"];
    for (i, p) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(Bytes::from(p.to_string()), opcode, i == parts.len() - 1);
        within("send fragment", ws.send(Message::Frame(frame)))
            .await
            .unwrap();
    }
    let got = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(got, Message::text("fragmented message"));
}

#[tokio::test]
async fn ping_gets_pong_through_the_tunnel() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "").await;
    let mut ws = ws_connect(&gw.url("/")).await;
    within(
        "ping",
        ws.send(Message::Ping(Bytes::from_static(b"are you there"))),
    )
    .await
    .unwrap();
    // The echo server answers pings as it reads; a message after the ping flushes it.
    within("send", ws.send(Message::text("after ping")))
        .await
        .unwrap();
    let mut saw_pong = false;
    for _ in 0..2 {
        match within("reply", ws.next()).await.unwrap().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"are you there");
                saw_pong = true;
            }
            Message::Text(t) => assert_eq!(t.as_str(), "after ping"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_pong);
}

#[tokio::test]
async fn close_code_and_reason_pass_from_client_to_upstream() {
    // The upstream reports the close frame it received on a channel.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (addr, _) = raw_backend(move |mut s, head| {
        let tx = tx.clone();
        async move {
            s.write_all(switching_protocols(&head, "").as_bytes())
                .await
                .unwrap();
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                s,
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Close(Some(cf)) = msg {
                    let _ = tx.send((u16::from(cf.code), cf.reason.to_string()));
                }
            }
        }
    })
    .await;
    let gw = gateway_for(&[addr], "").await;
    let mut ws = ws_connect(&gw.url("/")).await;
    within(
        "close",
        ws.close(Some(CloseFrame {
            code: CloseCode::Library(4001),
            reason: "bye now".into(),
        })),
    )
    .await
    .unwrap();
    let got = within("close seen upstream", rx.recv()).await.unwrap();
    assert_eq!(got, (4001, "bye now".to_owned()));
    // And the upstream's close reply reaches the client.
    let reply = within("close reply", ws.next()).await;
    assert!(
        matches!(reply, Some(Ok(Message::Close(_))) | None),
        "{reply:?}"
    );
}

#[tokio::test]
async fn close_code_and_reason_pass_from_upstream_to_client() {
    let (addr, _) = raw_backend(|s, head| async move {
        let mut s = s;
        s.write_all(switching_protocols(&head, "").as_bytes())
            .await
            .unwrap();
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            s,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "server going down".into(),
            }))
            .await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let gw = gateway_for(&[addr], "").await;
    let mut ws = ws_connect(&gw.url("/")).await;
    let msg = within("close frame", ws.next()).await.unwrap().unwrap();
    match msg {
        Message::Close(Some(cf)) => {
            assert_eq!(cf.code, CloseCode::Away);
            assert_eq!(cf.reason.as_str(), "server going down");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn subprotocol_and_extensions_are_negotiated_end_to_end() {
    let (addr, _) = raw_backend(|mut s, head| async move {
        // Answer with what the client offered, as the upstream saw it.
        let proto = header_of(&head, "sec-websocket-protocol").unwrap_or("").to_owned();
        let first = proto.split(',').next().unwrap_or("").trim().to_owned();
        let ext = header_of(&head, "sec-websocket-extensions").unwrap_or("").to_owned();
        let extra = format!(
            "Sec-WebSocket-Protocol: {first}\r\nSec-WebSocket-Extensions: {ext}\r\nX-Seen-Origin: {}\r\n",
            header_of(&head, "origin").unwrap_or("")
        );
        s.write_all(switching_protocols(&head, &extra).as_bytes()).await.unwrap();
        let _ = read_to_eof(&mut s).await;
    })
    .await;
    let gw = gateway_for(&[addr], "").await;
    let req = handshake_request(
        "/",
        "Sec-WebSocket-Protocol: mqtt, graphql-ws\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nOrigin: https://app.example.com\r\n",
    );
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let head = within("101", read_head(&mut s)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
    assert_eq!(header_of(&head, "sec-websocket-protocol"), Some("mqtt"));
    assert_eq!(
        header_of(&head, "sec-websocket-extensions"),
        Some("permessage-deflate; client_max_window_bits")
    );
    assert_eq!(
        header_of(&head, "x-seen-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        header_of(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}

#[tokio::test]
async fn the_upstream_can_push_first_even_in_the_same_packet_as_its_101() {
    let (addr, _) = raw_backend(|mut s, head| async move {
        // One write: the 101 and a server-pushed text frame "welcome".
        let mut out = switching_protocols(&head, "").into_bytes();
        out.extend_from_slice(&[0x81, 7]);
        out.extend_from_slice(b"welcome");
        s.write_all(&out).await.unwrap();
        let _ = read_to_eof(&mut s).await;
    })
    .await;
    let gw = gateway_for(&[addr], "").await;
    let mut ws = ws_connect(&gw.url("/")).await;
    let msg = within("push", ws.next()).await.unwrap().unwrap();
    assert_eq!(msg, Message::text("welcome"));
    // The frame hyper read with the 101 is counted like any other byte.
    assert_eq!(
        metric(
            &metrics_text(&gw).await,
            "sluice_tunnel_bytes_total{direction=\"upstream_to_client\",route=\"backend\"}"
        ),
        9.0
    );
}

#[tokio::test]
async fn a_first_frame_sent_with_the_handshake_reaches_the_upstream_and_is_counted() {
    // A masked text frame "hi": header, mask key, masked payload.
    let mask = [1u8, 2, 3, 4];
    let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ mask[0], b'i' ^ mask[1]];
    let (addr, _) = raw_backend(move |mut s, head| async move {
        s.write_all(switching_protocols(&head, "").as_bytes())
            .await
            .unwrap();
        let mut got = [0u8; 8];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, frame);
        s.write_all(&[0x81, 2, b'o', b'k']).await.unwrap();
        let _ = read_to_eof(&mut s).await;
    })
    .await;
    let gw = gateway_for(&[addr], "").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // One write: the handshake and the first frame, which hyper reads together.
    let mut out = handshake_request("/", "").into_bytes();
    out.extend_from_slice(&frame);
    s.write_all(&out).await.unwrap();
    let head = within("101", read_head(&mut s)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
    let mut answer = [0u8; 4];
    within("answer", s.read_exact(&mut answer)).await.unwrap();
    assert_eq!(&answer, &[0x81, 2, b'o', b'k']);
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_tunnel_bytes_total{direction=\"client_to_upstream\",route=\"backend\"}"
        ),
        8.0
    );
    assert_eq!(
        metric(
            &text,
            "sluice_tunnel_bytes_total{direction=\"upstream_to_client\",route=\"backend\"}"
        ),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_tunnels() {
    raise_fd_limit();
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "").await;
    let url = gw.url("/many");
    let mut clients = Vec::new();
    for _ in 0..1000 {
        let (ws, _) = within("connect", tokio_tungstenite::connect_async(&url))
            .await
            .unwrap();
        clients.push(ws);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                let msg = Message::text(format!("tunnel {i}"));
                ws.send(msg.clone()).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap(), msg);
                ws.close(None).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        within("echo on every tunnel", t).await.unwrap();
    }
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_websocket_handshakes_total{outcome=\"upgraded\",route=\"backend\"}"
        ),
        1000.0
    );
}

/// A client that ends TCP without a Close has vanished: its upstream gets a masked
/// Close 1001 from sluice after the client's last frame, answers it, and nothing more
/// goes to the client (a half-close means nothing to a WebSocket).
#[tokio::test]
async fn a_client_ending_tcp_without_a_close_gets_its_upstream_a_close_1001() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let (addr, _) = raw_backend(move |mut s, head| {
        let seen_tx = seen_tx.clone();
        async move {
            s.write_all(switching_protocols(&head, "").as_bytes())
                .await
                .unwrap();
            // sluice ends its side after its Close: read to there, then answer.
            let got = read_to_eof(&mut s).await;
            s.write_all(&server_text(b"too late")).await.unwrap();
            s.write_all(&close(1001, None)).await.unwrap();
            let _ = seen_tx.send(got);
        }
    })
    .await;
    let gw = gateway_for(&[addr], "").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(handshake_request("/", "").as_bytes())
        .await
        .unwrap();
    let head = within("101", read_head(&mut s)).await.unwrap();
    assert_eq!(status_of(&head), 101);
    s.write_all(&client_text(b"last words")).await.unwrap();
    // FIN, without a Close.
    s.shutdown().await.unwrap();
    let got = within("the upstream's reading", seen.recv()).await.unwrap();
    let frames = parse_frames(&got);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].payload, b"last words");
    assert!(frames[1].masked, "sluice's Close to an upstream is masked");
    assert_eq!(frames[1].close_code(), Some(1001));
    // The upstream's frames after the client left, its Close included, go nowhere.
    assert!(within("the end", read_to_eof(&mut s)).await.is_empty());
    eventually("the closes counted", || async {
        let text = metrics_text(&gw).await;
        let closes = |code: &str, from: &str| {
            metric(
                &text,
                &format!(
                    "sluice_websocket_closes_total{{code=\"{code}\",from=\"{from}\",route=\"backend\"}}"
                ),
            )
        };
        closes("none", "client") == 1.0
            && closes("1001", "sluice") == 1.0
            && closes("1001", "upstream") == 1.0
    })
    .await;
}

/// An upstream that vanishes (a reset, or a FIN without a Close) between frames: the
/// client gets a Close 1011 (an unexpected condition) from sluice in its place, not a TCP cut.
#[tokio::test]
async fn an_upstream_vanishing_between_frames_gets_the_client_a_close_1011() {
    for reset in [true, false] {
        let (addr, _) = raw_backend(move |mut s, head| async move {
            s.write_all(switching_protocols(&head, "").as_bytes())
                .await
                .unwrap();
            s.write_all(&server_text(b"hi")).await.unwrap();
            // The client's whole frame, so that a close without linger is a FIN.
            let _ = read_frame(&mut s).await;
            if reset {
                // Linger 0 makes close send RST (and never block).
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(s);
        })
        .await;
        let gw = gateway_for(&[addr], "").await;
        let mut ws = ws_connect(&gw.url("/")).await;
        assert_eq!(
            within("hi", ws.next()).await.unwrap().unwrap(),
            Message::text("hi")
        );
        ws.send(Message::text("x")).await.unwrap();
        let end = within("the Close", ws.next()).await;
        match end {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1011, "reset {reset}");
            }
            other => panic!("reset {reset}: expected a Close 1011, got {other:?}"),
        }
        // tungstenite answers the Close; sluice then ends the connection.
        let after = within("the end", ws.next()).await;
        assert!(matches!(after, None | Some(Err(_))), "{after:?}");
        eventually("the tunnel gone from the gauge", || async {
            let text = metrics_text(&gw).await;
            metric(&text, "sluice_websocket_tunnels_active{route=\"backend\"}") == 0.0
                && metric(
                    &text,
                    "sluice_websocket_closes_total{code=\"none\",from=\"upstream\",route=\"backend\"}",
                ) == 1.0
                && metric(
                    &text,
                    "sluice_websocket_closes_total{code=\"1011\",from=\"sluice\",route=\"backend\"}",
                ) == 1.0
        })
        .await;
    }
}

#[tokio::test]
async fn a_refused_upgrade_is_passed_back_and_the_connection_stays_http() {
    // The upstream refuses with 403 and a body; the connection must then carry
    // ordinary HTTP, and bytes sent after the refusal must never be tunnelled.
    let (addr, conns) = raw_backend(|mut s, head| async move {
        if head.to_ascii_lowercase().contains("upgrade: websocket") {
            s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nnope\r\n")
                .await
                .unwrap();
            // Whatever follows on this connection would be a smuggling attempt.
            let rest = read_to_eof(&mut s).await;
            assert!(rest.is_empty(), "bytes reached the refused upstream connection: {rest:?}");
        } else {
            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
            let body = format!("plain {path}");
            s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
                .await
                .unwrap();
        }
    })
    .await;
    let gw = gateway_for(&[addr], "").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(handshake_request("/ws", "").as_bytes())
        .await
        .unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert!(resp.ends_with("nope\r\n"));
    // Next request on the same client connection: handled as HTTP.
    s.write_all(b"GET /next HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.ends_with("plain /next"), "{resp}");
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
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
async fn an_invalid_101_is_a_502_and_nothing_is_tunnelled() {
    let (addr, _) = raw_backend(|mut s, _head| async move {
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n")
            .await
            .unwrap();
        let _ = read_to_eof(&mut s).await;
    })
    .await;
    let gw = gateway_for(&[addr], "").await;
    let resp = raw_exchange(gw.addr, handshake_request("/", "").as_bytes()).await;
    assert_eq!(status_of(&resp), 502, "{resp}");
}

#[tokio::test]
async fn h2c_upgrades_are_not_honoured() {
    let (addr, _) = mirror_backend().await;
    let gw = gateway_for(&[addr], "").await;
    let resp = raw_exchange(
        gw.addr,
        b"GET /h2 HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let body = resp.to_ascii_lowercase();
    assert!(body.contains("get /h2"));
    assert!(!body.contains("upgrade:"), "{resp}");
    assert!(!body.contains("http2-settings"), "{resp}");
}

#[tokio::test]
async fn malformed_handshakes_are_refused_before_any_upstream() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "").await;
    let base = "GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n";
    let cases = [
        (format!("{base}Sec-WebSocket-Version: 13\r\n\r\n"), 400, "no key"),
        (format!("{base}Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n"), 400, "bad key"),
        (
            format!("{base}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"),
            426,
            "version 8",
        ),
        (
            format!("{base}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 5\r\n\r\nhello"),
            400,
            "a body",
        ),
        (
            "GET / HTTP/1.0\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_owned(),
            400,
            "HTTP/1.0",
        ),
    ];
    for (req, status, what) in cases {
        let resp = raw_exchange(gw.addr, req.as_bytes()).await;
        assert_eq!(status_of(&resp), status, "{what}: {resp}");
        if status == 426 {
            assert_eq!(header_of(&resp, "sec-websocket-version"), Some("13"));
        }
    }
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn handshake_headers_reach_the_upstream_rewritten() {
    let mut backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "").await;
    let mut req = gw.url("/chat?token=abc").into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert("cookie", "session=1".parse().unwrap());
    h.insert("origin", "https://app.example.com".parse().unwrap());
    h.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("proxy-authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
    let (_ws, _) = within("connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    let seen = within("handshake seen", backend.handshakes.recv())
        .await
        .unwrap();
    assert_eq!(seen["cookie"], "session=1");
    assert_eq!(seen["origin"], "https://app.example.com");
    // The client's own chain is replaced: it is not a trusted proxy.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], gw.addr.to_string());
    assert_eq!(seen["host"], gw.addr.to_string());
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["connection"], "Upgrade");
    assert!(seen.get("keep-alive").is_none());
    assert!(seen.get("proxy-authorization").is_none());
}

#[tokio::test]
async fn no_upstream_is_a_502_counted_as_upstream_error() {
    let gw = gateway_for(&[dead_addr().await], "").await;
    let resp = raw_exchange(gw.addr, handshake_request("/", "").as_bytes()).await;
    assert_eq!(status_of(&resp), 502, "{resp}");
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_websocket_handshakes_total{outcome=\"upstream_error\",route=\"backend\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_silent_upstream_is_a_504() {
    let (addr, _) = raw_backend(|mut s, _| async move {
        let _ = read_to_eof(&mut s).await;
    })
    .await;
    let gw = gateway_for(&[addr], "[timeouts]\nupstream_response = \"300ms\"\n").await;
    let resp = raw_exchange(gw.addr, handshake_request("/", "").as_bytes()).await;
    assert_eq!(status_of(&resp), 504, "{resp}");
}

#[tokio::test]
async fn connect_failures_fail_over_to_the_next_server() {
    let backend = ws_echo_backend().await;
    let dead = dead_addr().await;
    let gw = gateway_for(&[dead, backend.addr], "").await;
    for _ in 0..4 {
        let mut ws = ws_connect(&gw.url("/")).await;
        echo_once(&mut ws, Message::text("still here")).await;
    }
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "[timeouts]\nidle = \"300ms\"\n").await;
    let mut ws = ws_connect(&gw.url("/")).await;
    echo_once(&mut ws, Message::text("active")).await;
    let end = within("idle close", ws.next()).await;
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
}

#[tokio::test]
async fn metrics_follow_a_tunnel() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "").await;
    let mut ws = ws_connect(&gw.url("/")).await;
    echo_once(&mut ws, Message::binary(vec![9u8; 1000])).await;
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(&text, "sluice_websocket_tunnels_active{route=\"backend\"}"),
        1.0
    );
    // Counted while the tunnel is open: at least the payload each way.
    assert!(
        metric(
            &text,
            "sluice_tunnel_bytes_total{direction=\"client_to_upstream\",route=\"backend\"}"
        ) >= 1000.0
    );
    assert!(
        metric(
            &text,
            "sluice_tunnel_bytes_total{direction=\"upstream_to_client\",route=\"backend\"}"
        ) >= 1000.0
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    // A client closes its socket once the close handshake is done.
    drop(ws);
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let text = metrics_text(&gw).await;
        if metric(&text, "sluice_websocket_tunnels_active{route=\"backend\"}") == 0.0 {
            assert_eq!(
                metric(
                    &text,
                    "sluice_tunnel_duration_seconds_count{route=\"backend\"}"
                ),
                1.0
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
