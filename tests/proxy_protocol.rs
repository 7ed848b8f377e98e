//! The PROXY protocol on listeners with `proxy_protocol = true`: the address in a v1
//! or v2 header is the client's for X-Forwarded-For and the per-client limit; a
//! connection without a valid header in time is closed and counted. Hand-written
//! headers (whole, cut short, lying, missing), and HAProxy with `send-proxy-v2` as a
//! real sender in front of sluice.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ERRORS: &str = "sluice_proxy_protocol_errors_total{listener=\"http\"}";

fn v1(source: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {source} 10.0.0.1 {port} 80\r\n").into_bytes()
}

/// A v2 header: `command` 1 is PROXY, 0 LOCAL; a TCP over IPv4 source, and a TLV.
fn v2(command: u8, source: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20 | command, 0x11, 0, 16]);
    h.extend_from_slice(&source);
    h.extend_from_slice(&[10, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    // PP2_TYPE_NOOP with one byte: TLVs are skipped.
    h.extend_from_slice(&[0x04, 0, 1, 0]);
    h
}

const GET: &[u8] = b"GET /who HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";

async fn gateway(extra: &str) -> TestGateway {
    let (mirror, _) = mirror_backend().await;
    start(&listener_config("proxy_protocol = true", &[mirror], extra)).await
}

/// Sends `header` and a GET in one write (as a balancer does) and returns the
/// X-Forwarded-For the upstream saw.
async fn forwarded_for(gw: &TestGateway, header: &[u8]) -> String {
    let request = [header, GET].concat();
    let response = raw_exchange(gw.addr, &request).await;
    assert_eq!(status_of(&response), 200, "{response}");
    response
        .lines()
        .find_map(|l| l.strip_prefix("x-forwarded-for: "))
        .unwrap_or_else(|| panic!("no x-forwarded-for: {response}"))
        .to_owned()
}

/// Writes `bytes` and expects the connection to be closed with no answer.
async fn closed_without_answer(gw: &TestGateway, bytes: &[u8]) -> Duration {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let sent = Instant::now();
    let mut out = Vec::new();
    let _ = within("the close", s.read_to_end(&mut out)).await;
    assert!(
        out.is_empty(),
        "an answer: {}",
        String::from_utf8_lossy(&out)
    );
    sent.elapsed()
}

#[tokio::test]
async fn v1_and_v2_headers_name_the_client() {
    let gw = gateway("").await;
    assert_eq!(
        forwarded_for(&gw, &v1("203.0.113.7", 4000)).await,
        "203.0.113.7"
    );
    assert_eq!(
        forwarded_for(&gw, &v2(1, [198, 51, 100, 9], 4001)).await,
        "198.51.100.9"
    );
    // LOCAL is the balancer speaking for itself (a health check): its own address.
    assert_eq!(
        forwarded_for(&gw, &v2(0, [198, 51, 100, 9], 4001)).await,
        "127.0.0.1"
    );
    assert_eq!(forwarded_for(&gw, b"PROXY UNKNOWN\r\n").await, "127.0.0.1");
    // The header arriving in pieces, apart from the request.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let header = v2(1, [192, 0, 2, 44], 4002);
    for piece in header.chunks(5) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.write_all(GET).await.unwrap();
    let response = read_response(&mut s).await;
    assert!(
        response.contains("x-forwarded-for: 192.0.2.44\n"),
        "{response}"
    );
    assert_eq!(metric(&metrics_text(&gw).await, ERRORS), 0.0);
}

#[tokio::test]
async fn a_websocket_carries_the_proxied_address_through_its_tunnel() {
    let backend = ws_echo_backend().await;
    let mut handshakes = backend.handshakes;
    let gw = start(&listener_config(
        "proxy_protocol = true",
        &[backend.addr],
        "",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&v2(1, [203, 0, 113, 50], 5000)).await.unwrap();
    let (mut ws, _) = within(
        "handshake after the PROXY header",
        tokio_tungstenite::client_async(gw.url("/"), tokio_tungstenite::MaybeTlsStream::Plain(s)),
    )
    .await
    .unwrap();
    let seen = within("the upstream's handshake", handshakes.recv())
        .await
        .unwrap();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.50");
    echo_once(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text("via a balancer"),
    )
    .await;
}

#[tokio::test]
async fn bad_missing_and_late_headers_close_the_connection() {
    let gw = gateway("[timeouts]\nrequest_header = \"1s\"\n").await;
    // Plain HTTP from a client that came around the balancer.
    closed_without_answer(&gw, GET).await;
    // A v1 line ending in LF alone, with a request after it.
    closed_without_answer(
        &gw,
        &[b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".as_slice(), GET, GET].concat(),
    )
    .await;
    // A v2 header announcing more than it sends: closed when `request_header` ends.
    let mut lying = v2(1, [1, 2, 3, 4], 1);
    lying[15] = 60;
    let waited = closed_without_answer(&gw, &lying).await;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    // Nothing at all: the same.
    let waited = closed_without_answer(&gw, b"").await;
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    // A v2 header over sluice's bound.
    let mut huge = v2(1, [1, 2, 3, 4], 1);
    huge[14..16].copy_from_slice(&8000u16.to_be_bytes());
    huge.resize(16 + 8000, 0);
    closed_without_answer(&gw, &huge).await;
    eventually("every bad header counted", || async {
        metric(&metrics_text(&gw).await, ERRORS) == 5.0
    })
    .await;
    // The listener still serves well-behaved balancers.
    assert_eq!(
        forwarded_for(&gw, &v1("203.0.113.8", 1)).await,
        "203.0.113.8"
    );
}

#[tokio::test]
async fn a_header_where_none_is_expected_is_a_bad_request() {
    let (mirror, _) = mirror_backend().await;
    let gw = start(&config(&[mirror], "")).await;
    let response = raw_exchange(gw.addr, &[v1("203.0.113.7", 1).as_slice(), GET].concat()).await;
    assert_eq!(status_of(&response), 400, "{response}");
}

#[tokio::test]
async fn the_per_client_limit_counts_proxied_addresses() {
    let gw = gateway("[limits]\nmax_connections_per_ip = 1\n").await;
    // One client holds its connection open (header sent, no request yet).
    let mut first = TcpStream::connect(gw.addr).await.unwrap();
    first.write_all(&v1("203.0.113.20", 1)).await.unwrap();
    eventually("the first connection is admitted", || async {
        metric(
            &metrics_text(&gw).await,
            "sluice_connections_active{listener=\"http\"}",
        ) >= 1.0
    })
    .await;
    // The same client again, through the same balancer: refused.
    let again = raw_exchange(gw.addr, &[v1("203.0.113.20", 2).as_slice(), GET].concat()).await;
    assert_eq!(status_of(&again), 429, "{again}");
    // Another client through the same balancer address is not.
    assert_eq!(
        forwarded_for(&gw, &v1("203.0.113.21", 3)).await,
        "203.0.113.21"
    );
    first.write_all(GET).await.unwrap();
    assert_eq!(status_of(&read_response(&mut first).await), 200);
}

/// HAProxy in TCP mode in front of sluice with `send-proxy-v2`, as a cloud load
/// balancer would be.
#[tokio::test]
async fn behind_haproxy_with_send_proxy_v2() {
    if !peer_available("haproxy", std::process::Command::new("haproxy").arg("-v")) {
        return;
    }
    let (mirror, _) = mirror_backend().await;
    let gw = start(&listener_config("proxy_protocol = true", &[mirror], "")).await;
    let front: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend f\n  bind {front}\n  default_backend b\nbackend b\n  server s {} send-proxy-v2\n",
            gw.addr
        ),
    )
    .unwrap();
    let mut haproxy = tokio::process::Command::new("haproxy")
        .args(["-db", "-f", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // HAProxy is up once it accepts.
    eventually("haproxy listens", || async {
        TcpStream::connect(front).await.is_ok()
    })
    .await;
    // The client comes from 127.0.0.2, HAProxy connects to sluice from 127.0.0.1:
    // only the PROXY header can tell sluice the first.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = socket.connect(front).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(GET).await.unwrap();
    let response = read_response(&mut s).await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(
        response.contains(&format!("x-forwarded-for: {}\n", me.ip())),
        "{response}"
    );
    assert_eq!(metric(&metrics_text(&gw).await, ERRORS), 0.0);
    haproxy.kill().await.unwrap();
}

// ---- sending PROXY headers to upstreams ----

/// An upstream that expects a PROXY header on each connection: it records the header
/// (parsed by the `ppp` crate) and then answers one HTTP request with 200, or accepts
/// a WebSocket and echoes it.
async fn proxy_reading_backend(
    websocket: bool,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                // The header alone: v1 up to its CRLF, v2 by the length it gives.
                let mut header = vec![0u8; 16];
                s.read_exact(&mut header).await.unwrap();
                if header.starts_with(b"PROXY ") {
                    while !header.ends_with(b"\r\n") {
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).await.unwrap();
                        header.push(b[0]);
                    }
                } else {
                    let len = u16::from_be_bytes([header[14], header[15]]) as usize;
                    let mut rest = vec![0u8; len];
                    s.read_exact(&mut rest).await.unwrap();
                    header.extend_from_slice(&rest);
                }
                tx.send(header).unwrap();
                if websocket {
                    let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
                    use futures_util::{SinkExt, StreamExt};
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() && ws.send(m).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let _ = read_head(&mut s).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    let _ = read_head(&mut s).await;
                }
            });
        }
    });
    (addr, rx)
}

/// The source and destination a PROXY header gives, read by the `ppp` crate.
fn addresses(header: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    match ppp::HeaderResult::parse(header) {
        ppp::HeaderResult::V1(Ok(h)) => match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            _ => None,
        },
        ppp::HeaderResult::V2(Ok(h)) => match h.addresses {
            ppp::v2::Addresses::IPv4(a) if h.command == ppp::v2::Command::Proxy => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            _ => None,
        },
        other => panic!("not a PROXY header: {other:?}"),
    }
}

#[tokio::test]
async fn requests_reach_the_upstream_after_a_v1_header_on_connections_of_their_own() {
    let (backend, mut headers) = proxy_reading_backend(false).await;
    let gw = start(&config(&[backend], "send_proxy_protocol = \"v1\"\n")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let me = s.local_addr().unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /a HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(status_of(&read_response(&mut s).await), 200);
        let header = within("a PROXY header", headers.recv()).await.unwrap();
        assert!(header.starts_with(b"PROXY TCP4 "), "{header:?}");
        assert_eq!(addresses(&header), Some((me, gw.addr)));
    }
    // Two requests, two upstream connections: none is pooled for another client.
}

#[tokio::test]
async fn a_tunnel_tells_its_upstream_the_client_in_a_v2_header() {
    let (backend, mut headers) = proxy_reading_backend(true).await;
    let gw = start(&config(&[backend], "send_proxy_protocol = \"v2\"\n")).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let me = stream.local_addr().unwrap();
    let (mut ws, _) = within(
        "handshake",
        tokio_tungstenite::client_async(
            gw.url("/"),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        ),
    )
    .await
    .unwrap();
    let header = within("a PROXY header", headers.recv()).await.unwrap();
    assert_eq!(addresses(&header), Some((me, gw.addr)));
    echo_once(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text("hello"),
    )
    .await;
}

#[test]
fn an_h2_upstream_cannot_send_proxy_headers() {
    let toml = "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [\"127.0.0.1:1\"]\nprotocol = \"h2\"\nsend_proxy_protocol = \"v2\"\n";
    let Err(err) = sluice::config::parse(toml, std::path::Path::new("bad.toml")) else {
        panic!("accepted");
    };
    let err = err.to_string();
    assert!(err.contains("cannot send a PROXY header"), "{err}");
}

#[tokio::test]
async fn the_header_comes_before_tls() {
    let ca = support::pki::Ca::new("pp");
    let cert = ca.server("server", &["localhost"]);
    let (mirror, _) = mirror_backend().await;
    let listener = format!("proxy_protocol = true\n{}", support::h2::tls_line(&cert));
    let gw = start(&listener_config(&listener, &[mirror], "")).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(&v2(1, [198, 51, 100, 77], 6000))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(ca.client_default())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS after the PROXY header");
    tls.write_all(GET).await.unwrap();
    let mut out = Vec::new();
    let _ = within("the answer", tls.read_to_end(&mut out)).await;
    let response = String::from_utf8_lossy(&out);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("x-forwarded-for: 198.51.100.77\n"),
        "{response}"
    );
    assert!(
        response.contains("x-forwarded-proto: https\n"),
        "{response}"
    );
}
