//! Per-route WebSocket policy: Origin allow-lists and routing by subprotocol; and the
//! listener options for binary upgrades and dead peers.

mod support;

use std::time::Duration;

use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn origins_are_allowed_refused_and_matched_by_wildcard() {
    let backend = ws_echo_backend().await;
    let toml = config(&[backend.addr], "").replace(
        "path = \"/\"\nupstream = \"backend\"",
        "path = \"/\"\nupstream = \"backend\"\nallowed_origins = [\"https://app.example.com\", \"https://*.example.org\"]",
    );
    let gw = start(&toml).await;
    let cases = [
        (Some("https://app.example.com"), 101),
        (Some("https://chat.example.org"), 101),
        (Some("https://a.b.example.org"), 101),
        (Some("https://example.org"), 403),
        (Some("https://evil.com"), 403),
        (Some("http://app.example.com"), 403),
        (Some("https://app.example.com.evil.com"), 403),
        (Some("null"), 403),
        // Not a browser: nothing to hijack.
        (None, 101),
    ];
    for (origin, status) in cases {
        let extra = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        let resp = raw_exchange(gw.addr, handshake_request("/", &extra).as_bytes()).await;
        assert_eq!(status_of(&resp), status, "{origin:?}: {resp}");
    }
    // Refused handshakes never reached the upstream.
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        4
    );
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_websocket_handshakes_total{outcome=\"rejected\",route=\"backend\"}"
        ),
        5.0
    );
}

#[tokio::test]
async fn handshakes_are_routed_by_subprotocol() {
    let mqtt = named_ws_backend("mqtt").await;
    let graphql = named_ws_backend("graphql").await;
    let generic = named_ws_backend("generic").await;
    let toml = format!(
        r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
[[routes]]
path = "/ws"
subprotocol = "mqtt"
upstream = "mqtt"
[[routes]]
path = "/ws"
subprotocol = "graphql-ws"
upstream = "graphql"
[[routes]]
path = "/ws"
upstream = "generic"
[upstreams.mqtt]
servers = ["{}"]
[upstreams.graphql]
servers = ["{}"]
[upstreams.generic]
servers = ["{}"]
"#,
        mqtt.addr, graphql.addr, generic.addr
    );
    let gw = start(&toml).await;
    let which = |offer: &'static str| {
        let addr = gw.addr;
        async move {
            let extra = if offer.is_empty() {
                String::new()
            } else {
                format!("Sec-WebSocket-Protocol: {offer}\r\n")
            };
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::AsyncWriteExt;
            s.write_all(handshake_request("/ws", &extra).as_bytes())
                .await
                .unwrap();
            let head = within("101", read_head(&mut s)).await.unwrap();
            assert_eq!(status_of(&head), 101, "{head}");
            header_of(&head, "x-backend").unwrap().to_owned()
        }
    };
    assert_eq!(which("mqtt").await, "mqtt");
    assert_eq!(which("graphql-ws").await, "graphql");
    assert_eq!(which("wamp, graphql-ws").await, "graphql");
    assert_eq!(which("wamp").await, "generic");
    assert_eq!(which("").await, "generic");
    // Ordinary requests never match a subprotocol route.
    let resp = raw_exchange(gw.addr, b"GET /ws HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_ne!(status_of(&resp), 404);
}

#[tokio::test]
async fn reuse_port_lets_a_second_gateway_bind_the_same_address() {
    let backend = ws_echo_backend().await;
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let toml = config(&[backend.addr], "").replace(
        "listen = \"127.0.0.1:0\"\n\n[[routes]]",
        &format!("listen = \"{addr}\"\nreuse_port = true\n\n[[routes]]"),
    );
    let old = start(&toml).await;
    let new = start(&toml.replace("[admin]\nlisten = \"127.0.0.1:0\"", "")).await;
    assert_eq!(old.addr, new.addr);
    // The old one drains away; the new one keeps serving on the address. (A
    // connection the kernel had already queued on the old socket is reset when that
    // socket closes; clients retry, as this one does.)
    old.gateway.shutdown().await;
    let url = format!("ws://{addr}/");
    let deadline = tokio::time::Instant::now() + STEP;
    let mut ws = loop {
        // One second per attempt: a connection queued on a socket that is closing is
        // reset, never answered.
        let attempt = tokio::time::timeout(
            Duration::from_secs(1),
            tokio_tungstenite::connect_async(&url),
        );
        if let Ok(Ok((ws, _))) = attempt.await {
            break Some(ws);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new gateway never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    echo_once(
        ws.as_mut().unwrap(),
        Message::text("served by the new process"),
    )
    .await;
}

#[tokio::test]
async fn keepalive_and_user_timeout_are_set_on_sockets() {
    let tcp = sluice::config::Tcp {
        keepalive: Some(Duration::from_secs(42)),
        keepalive_interval: Some(Duration::from_secs(7)),
        keepalive_probes: Some(4),
        user_timeout: Some(Duration::from_secs(9)),
    };
    // Client legs: set once on the listener, inherited by every accepted connection.
    let listener = sluice::server::bind_with("127.0.0.1:0".parse().unwrap(), false, &tcp).unwrap();
    let upstream_leg = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (client_leg, _) = listener.accept().await.unwrap();
    assert_tcp_options(&client_leg);
    // Upstream legs: set on each connected socket.
    sluice::net::set_tcp_options(&upstream_leg, &tcp).unwrap();
    assert_tcp_options(&upstream_leg);
}

fn assert_tcp_options(stream: &tokio::net::TcpStream) {
    let sock = socket2::SockRef::from(stream);
    assert!(sock.keepalive().unwrap());
    assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
    assert_eq!(
        sock.tcp_keepalive_interval().unwrap(),
        Duration::from_secs(7)
    );
    assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
    assert_eq!(
        sock.tcp_user_timeout().unwrap(),
        Some(Duration::from_secs(9))
    );
    assert!(stream.nodelay().unwrap());
}
