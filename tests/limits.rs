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

/// Out of file descriptors, a listener backs off from accepting (and counts it)
/// rather than spinning, the tunnels already open carry on, and the connections
/// waiting in the listen queue are served once descriptors are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_listener_backs_off_and_tunnels_go_on() {
    let backend = ws_echo_backend().await;
    let toml = config(
        &[backend.addr],
        "[timeouts]\nrequest_header = \"60s\"\n[log]\naccess = false\n",
    );
    // The hard limit is what sluice raises its soft limit to.
    let sluice = support::process::Sluice::start_under(&toml, &["prlimit", "--nofile=40:40", "--"]);
    // One admin connection, opened now and kept: a new one could not be accepted later.
    let mut admin = HttpClient::connect(sluice.admin).await;
    let url = format!("ws://{}/", sluice.http);
    let mut open = Vec::new();
    let mut idle = Vec::new();
    let waiting = loop {
        assert!(open.len() < 40, "sluice never ran out of descriptors");
        let mut pending = tokio::spawn(tokio_tungstenite::connect_async(url.clone()));
        // Either the handshake completes soon, or sluice has stopped accepting: a
        // handshake left unanswered for a second is asked about in the metrics.
        match tokio::time::timeout(Duration::from_secs(1), &mut pending).await {
            Ok(r) => match r.unwrap() {
                Ok((ws, _)) => open.push(ws),
                // A descriptor for the client but none for the upstream: a 502. Hold
                // the last one with a connection that says nothing, so the next
                // accept is the one that fails.
                Err(_) => idle.push(TcpStream::connect(sluice.http).await.unwrap()),
            },
            Err(_) => {
                let (_, _, body) = admin.get("/metrics").await;
                let text = String::from_utf8_lossy(&body).into_owned();
                let failed = metric(&text, "sluice_accept_exhausted_total{listener=\"http\"}");
                assert!(
                    failed > 0.0,
                    "a handshake went unanswered, but no accept failed"
                );
                break pending;
            }
        }
    };
    assert!(!open.is_empty());
    // The tunnels already open carry on.
    for ws in &mut open {
        echo_once(ws, Message::text("still here")).await;
    }
    // Freeing descriptors lets the waiting connection in, within the back-off.
    for mut ws in open.drain(..3) {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = within("close", ws.next()).await {}
    }
    drop(idle);
    let mut late = within("a queued connection is served", waiting)
        .await
        .unwrap()
        .expect("the handshake completes")
        .0;
    echo_once(&mut late, Message::text("in at last")).await;
    // Running out of descriptors is sluice's own condition, not the server's fault:
    // the upstream server was not ejected for the connects it failed.
    let (_, _, body) = admin.get("/metrics").await;
    let text = String::from_utf8_lossy(&body).into_owned();
    let up = format!(
        "sluice_upstream_server_up{{server=\"{}\",upstream=\"backend\"}}",
        backend.addr
    );
    assert_eq!(metric(&text, &up), 1.0, "{text}");
}
