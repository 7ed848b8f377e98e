//! Limits: each one reached, with its status (or closed connection) and its counter.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Opens a connection and waits until the gateway has counted it.
async fn hold(gw: &TestGateway, n: f64) -> TcpStream {
    let s = TcpStream::connect(gw.addr).await.unwrap();
    eventually("the connection is counted", || async {
        metric(
            &metrics_text(gw).await,
            "sluice_connections_active{listener=\"http\"}",
        ) == n
    })
    .await;
    s
}

#[tokio::test]
async fn max_connections_refuses_with_503() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "[limits]\nmax_connections = 2\n").await;
    let _a = hold(&gw, 1.0).await;
    let _b = hold(&gw, 2.0).await;
    let resp = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status_of(&resp), 503, "{resp}");
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_connections_refused_total{limit=\"max_connections\",listener=\"http\"}"
        ),
        1.0
    );
    // Tunnels count: a tunnel holds its place until it closes.
    drop(_a);
    eventually("a place frees", || async {
        metric(
            &metrics_text(&gw).await,
            "sluice_connections_active{listener=\"http\"}",
        ) == 1.0
    })
    .await;
    let mut ws = ws_connect(&gw.url("/")).await;
    echo_once(&mut ws, Message::text("fits")).await;
    let resp = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(
        status_of(&resp),
        503,
        "the tunnel holds the second place: {resp}"
    );
}

#[tokio::test]
async fn a_listener_limit_applies_to_its_listener_alone() {
    let backend = ws_echo_backend().await;
    let toml = config(
        &[backend.addr],
        "[[listeners]]\nname = \"other\"\nlisten = \"127.0.0.1:0\"\n",
    )
    .replace(
        "name = \"http\"\nlisten = \"127.0.0.1:0\"",
        "name = \"http\"\nlisten = \"127.0.0.1:0\"\nmax_connections = 1",
    );
    let gw = start(&toml).await;
    let _a = hold(&gw, 1.0).await;
    let resp = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status_of(&resp), 503, "{resp}");
    let other = gw.gateway.listener_addr("other").unwrap();
    let mut ws = ws_connect(&format!("ws://{other}/")).await;
    echo_once(&mut ws, Message::text("the other listener has room")).await;
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_connections_refused_total{limit=\"listener_max_connections\",listener=\"http\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn one_client_is_held_to_its_connections_with_429() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "[limits]\nmax_connections_per_ip = 2\n").await;
    let _a = hold(&gw, 1.0).await;
    let _b = hold(&gw, 2.0).await;
    let resp = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status_of(&resp), 429, "{resp}");
    assert_eq!(header_of(&resp, "retry-after"), Some("1"));
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_connections_refused_total{limit=\"max_connections_per_ip\",listener=\"http\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn handshakes_beyond_the_per_client_rate_get_429() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(
        &[backend.addr],
        "[limits]\nhandshakes_per_second_per_ip = 0.5\nhandshake_burst_per_ip = 3\n",
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let resp = raw_exchange(gw.addr, handshake_request("/", "").as_bytes()).await;
        statuses.push(status_of(&resp));
    }
    assert_eq!(statuses, [101, 101, 101, 429, 429]);
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_requests_refused_total{limit=\"handshakes_per_second_per_ip\",route=\"backend\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "sluice_websocket_handshakes_total{outcome=\"rejected\",route=\"backend\"}"
        ),
        2.0
    );
    // Ordinary requests are not handshakes.
    let resp = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_ne!(status_of(&resp), 429);
}

#[tokio::test]
async fn tunnels_end_at_their_maximum_lifetime() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(
        &[backend.addr],
        "[limits]\nmax_tunnel_lifetime = \"500ms\"\n",
    )
    .await;
    let started = Instant::now();
    let mut ws = ws_connect(&gw.url("/")).await;
    // Busy all along: the lifetime is not an idle timeout.
    let end = loop {
        if ws.send(Message::text("busy")).await.is_err() {
            break None;
        }
        match within("echo or end", ws.next()).await {
            Some(Ok(Message::Text(_))) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => break other,
        }
    };
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(450) && lived < Duration::from_secs(5),
        "{lived:?}"
    );
}

#[tokio::test]
async fn servers_at_their_connection_cap_get_no_more_and_a_full_upstream_is_503() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "max_connections_per_server = 2\n").await;
    let mut a = ws_connect(&gw.url("/")).await;
    let _b = ws_connect(&gw.url("/")).await;
    let resp = raw_exchange(gw.addr, handshake_request("/", "").as_bytes()).await;
    assert_eq!(status_of(&resp), 503, "{resp}");
    let resp = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status_of(&resp), 503, "{resp}");
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_requests_refused_total{limit=\"max_connections_per_server\",route=\"backend\"}"
        ),
        2.0
    );
    // A closed tunnel frees its place.
    a.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", a.next()).await {}
    drop(a);
    eventually("the place frees", || async {
        status_of(&raw_exchange(gw.addr, handshake_request("/", "").as_bytes()).await) == 101
    })
    .await;
}

#[tokio::test]
async fn a_refused_connection_writes_nothing_on_a_tls_port() {
    let ca = support::pki::Ca::new("limits");
    let cert = ca.server("server", &["localhost"]);
    let backend = ws_echo_backend().await;
    let toml = config(&[backend.addr], "[limits]\nmax_connections = 1\n").replace(
        "listen = \"127.0.0.1:0\"\n\n[[routes]]",
        &format!(
            "listen = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n[[routes]]",
            cert.cert.display(),
            cert.key.display()
        ),
    );
    let gw = start(&toml).await;
    let _held = support::pki::tls_connect(gw.addr, "localhost", ca.client_default())
        .await
        .unwrap();
    eventually("the connection is counted", || async {
        metric(
            &metrics_text(&gw).await,
            "sluice_connections_active{listener=\"http\"}",
        ) == 1.0
    })
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let _ = s.write_all(b"\x16\x03\x01").await;
    assert!(read_to_eof(&mut s).await.is_empty());
}
