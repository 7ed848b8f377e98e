//! WebSockets to HTTP/2 upstreams: an extended CONNECT (RFC 8441), from HTTP/1.1 and
//! HTTP/2 clients, only to a server whose SETTINGS enabled it.
//!
//! The upstream is a second sluice with an h2c listener in front of its built-in echo:
//! a real RFC 8441 server whose access lines and metrics say how it was reached.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::h2::*;
use support::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A sluice serving its built-in echo over h2c (HTTP/2 with prior knowledge).
async fn h2_echo_upstream() -> TestGateway {
    start(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
http2 = true
[[routes]]
upstream = "echo"
[upstreams.echo]
builtin = "echo"
"#,
    )
    .await
}

/// A sluice in front of `upstream`, spoken to in HTTP/2; its listener takes HTTP/1.1
/// and h2c.
async fn front(upstream: SocketAddr) -> TestGateway {
    start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
http2 = true
[[routes]]
upstream = "inner"
[upstreams.inner]
servers = ["{upstream}"]
protocol = "h2"
"#
    ))
    .await
}

async fn echoes<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, msg: Message)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within("send", ws.send(msg.clone())).await.unwrap();
    let got = within("echo", ws.next()).await.expect("a reply").unwrap();
    assert_eq!(got, msg);
}

#[tokio::test]
async fn an_http1_websocket_reaches_an_h2_upstream_as_extended_connect() {
    let inner = h2_echo_upstream().await;
    let gw = front(inner.addr).await;
    let mut ws = ws_connect(&gw.url("/chat")).await;
    echoes(&mut ws, Message::text("over HTTP/2 upstream")).await;
    echoes(&mut ws, Message::binary(vec![7u8; 300_000])).await;
    ws.close(None).await.unwrap();
    // The upstream saw an HTTP/2 connection and a WebSocket tunnel on it.
    let text = metrics_text(&inner).await;
    assert_eq!(
        metric(
            &text,
            "sluice_connections_negotiated_total{listener=\"http\",protocol=\"h2\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "sluice_websocket_handshakes_total{outcome=\"upgraded\",route=\"echo\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn websockets_from_an_h2_client_share_the_upstream_connection() {
    let inner = h2_echo_upstream().await;
    let gw = front(inner.addr).await;
    let mut client = H2Client::h2c(gw.addr).await;
    let (mut a, _) = ws_h2(&mut client, "http://test.local/a", &[]).await;
    let (mut b, _) = ws_h2(&mut client, "http://test.local/b", &[]).await;
    echoes(&mut a, Message::text("a")).await;
    echoes(&mut b, Message::text("b")).await;
    // Both tunnels ride one multiplexed upstream connection.
    let text = metrics_text(&inner).await;
    assert_eq!(
        metric(
            &text,
            "sluice_connections_negotiated_total{listener=\"http\",protocol=\"h2\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "sluice_websocket_tunnels_active{route=\"echo\"}"),
        2.0
    );
}

/// An HTTP/2 server that does not enable extended CONNECT (hyper's default).
async fn h2_without_extended_connect() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"plain"),
                    )))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_without_extended_connect_gets_no_websocket_but_a_502() {
    let addr = h2_without_extended_connect().await;
    let gw = front(addr).await;
    let resp = raw_exchange(gw.addr, handshake_request("/ws", "").as_bytes()).await;
    assert_eq!(status_of(&resp), 502, "{resp}");
    // Ordinary requests to it still work.
    let mut c = HttpClient::connect(gw.addr).await;
    let (status, _, body) = c.get("/plain").await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"plain");
}
