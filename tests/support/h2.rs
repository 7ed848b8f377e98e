//! HTTP/2 clients for tests: hyper's client over TLS (ALPN h2) and over h2c (prior
//! knowledge), WebSockets over extended CONNECT (RFC 8441), and a raw frame-level
//! client for peers that misbehave on purpose.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

mod raw;

// Not every test binary uses every part.
#[allow(unused_imports)]
pub use raw::*;

use super::pki::{Ca, tls_connect};
use super::{big_messages, within};

// ---- hyper's HTTP/2 client ----

/// The request body type of [`H2Client`]: whole or streamed.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A whole request body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// An empty request body.
pub fn empty() -> Body {
    Empty::new().boxed_unsync()
}

/// A request body streamed from the returned sender; it ends when the sender drops.
pub fn streamed() -> (mpsc::UnboundedSender<Bytes>, Body) {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(BodyFrame::data(chunk)), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

/// An absolute URI, as HTTP/2 requests carry `:scheme` and `:authority`.
pub fn uri(scheme: &str, authority: &str, path: &str) -> String {
    format!("{scheme}://{authority}{path}")
}

/// A rustls client configuration trusting `ca` that offers `alpn`, in order.
pub fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = (*ca.client_default()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One HTTP/2 client connection (hyper's client), its driver spawned.
pub struct H2Client {
    pub sender: SendRequest<Body>,
    ended: Option<oneshot::Receiver<Result<(), hyper::Error>>>,
}

impl H2Client {
    /// Speaks HTTP/2 over an established stream.
    pub async fn over<T>(io: T) -> H2Client
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = within(
            "h2 handshake",
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake::<_, Body>(TokioIo::new(io)),
        )
        .await
        .expect("h2 client handshake");
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(conn.await);
        });
        H2Client {
            sender,
            ended: Some(rx),
        }
    }

    /// HTTP/2 with prior knowledge over plain TCP (h2c).
    pub async fn h2c(addr: SocketAddr) -> H2Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        H2Client::over(tcp).await
    }

    /// HTTP/2 over TLS to `addr` (SNI `localhost`), offering ALPN h2 then
    /// http/1.1; fails the test unless h2 is chosen.
    pub async fn tls(addr: SocketAddr, ca: &Ca) -> H2Client {
        let tls = within(
            "tls handshake",
            tls_connect(addr, "localhost", client_config(ca, &[b"h2", b"http/1.1"])),
        )
        .await
        .expect("tls handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "ALPN did not choose h2"
        );
        H2Client::over(tls).await
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&mut self, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let resp = self.request(req).await;
        let (parts, body) = resp.into_parts();
        let body = within("h2 response body", body.collect())
            .await
            .expect("h2 response body")
            .to_bytes();
        (parts.status, parts.headers, body)
    }

    /// Sends a request; returns the response head with its body still streaming.
    pub async fn request(&mut self, req: Request<Body>) -> Response<Incoming> {
        within("h2 ready", self.sender.ready())
            .await
            .expect("h2 connection ready");
        within("h2 response", self.sender.send_request(req))
            .await
            .expect("h2 response")
    }

    /// `GET http://test.local{path}`.
    pub async fn get(&mut self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.get_from("http", "test.local", path).await
    }

    /// A GET to `scheme://authority{path}`.
    pub async fn get_from(
        &mut self,
        scheme: &str,
        authority: &str,
        path: &str,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let req = Request::get(uri(scheme, authority, path))
            .body(empty())
            .unwrap();
        self.send(req).await
    }

    /// Waits (within [`super::STEP`]) for the connection to end, as the server
    /// closes it; returns how it ended.
    pub async fn ended(&mut self) -> Result<(), hyper::Error> {
        let rx = self.ended.take().expect("ended awaited once");
        within("h2 connection end", rx)
            .await
            .expect("the connection task reports")
    }
}

// ---- WebSockets over HTTP/2 (extended CONNECT) ----

/// A WebSocket client over one HTTP/2 stream.
pub type H2Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Sends an extended CONNECT for `url` (`scheme://authority/path`) with
/// `:protocol websocket`, `sec-websocket-version: 13` and `headers`; returns the
/// response, whose upgrade is the tunnel when it is a 200.
pub async fn extended_connect(
    client: &mut H2Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Response<Incoming> {
    let mut req = Request::connect(url).body(empty()).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let h = req.headers_mut();
    h.insert("sec-websocket-version", "13".parse().unwrap());
    for (k, v) in headers {
        let name: http::HeaderName = k.parse().unwrap();
        // A header given explicitly replaces the default version.
        if name == "sec-websocket-version" {
            h.remove(&name);
        }
        h.append(name, v.parse().unwrap());
    }
    client.request(req).await
}

/// The tunnel of a 200 answer to an extended CONNECT, as raw bytes.
pub async fn tunnel(resp: Response<Incoming>) -> TokioIo<Upgraded> {
    assert_eq!(resp.status(), 200, "extended CONNECT answered");
    let upgraded = within("h2 upgrade", hyper::upgrade::on(resp))
        .await
        .expect("the 200 carries the stream");
    TokioIo::new(upgraded)
}

/// Opens a WebSocket over a new stream of `client`; fails the test unless it is
/// answered 200. Returns the socket and the 200's headers.
pub async fn ws_h2(
    client: &mut H2Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (H2Ws, HeaderMap) {
    let resp = extended_connect(client, url, headers).await;
    let status = resp.status();
    if status != 200 {
        let body = within("refusal body", resp.into_body().collect())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        panic!("extended CONNECT to {url} answered {status}: {body:?}");
    }
    let headers = resp.headers().clone();
    let io = tunnel(resp).await;
    let ws = WebSocketStream::from_raw_socket(io, Role::Client, Some(big_messages())).await;
    (ws, headers)
}

// ---- configuration ----

/// A configuration with listener keys: [`super::listener_config`].
#[allow(unused_imports)]
pub use super::listener_config as h2_config;

/// The `tls = {...}` line of a listener serving `cert`.
pub fn tls_line(cert: &super::pki::Issued) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.cert.display(),
        cert.key.display()
    )
}

/// Splits a [`super::mirror_backend`] answer into the head it saw (lowercase names)
/// and the body.
pub fn mirrored(body: &[u8]) -> (String, Vec<u8>) {
    let at = body
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("a mirrored request");
    (
        String::from_utf8_lossy(&body[..at + 1]).into_owned(),
        body[at + 2..].to_vec(),
    )
}
