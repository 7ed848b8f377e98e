//! The built-in echo upstream (`builtin = "echo"`): a WebSocket echo server with a
//! small test page, started on a loopback port so that a fresh configuration has
//! something real to serve. Traffic to it goes through the whole proxy like any
//! other upstream's.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::handshake::{self, Upgrade};
use crate::shutdown::Shutdown;

/// Starts the echo server on `127.0.0.1:0`; returns its address.
pub async fn start(shutdown: Shutdown) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
                () = shutdown.stopped() => return,
            };
            let _ = stream.set_nodelay(true);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .with_upgrades();
                tokio::select! {
                    _ = conn => {}
                    () = shutdown.stopped() => {}
                }
            });
        }
    });
    Ok(addr)
}

async fn answer(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if handshake::classify(req.method(), req.headers()) == Upgrade::WebSocket {
        let accept = match handshake::check_request(req.version(), req.headers()) {
            Ok(key) => handshake::accept_for(key),
            Err(e) => return Ok(e.response::<()>().map(|_| Full::new(Bytes::new()))),
        };
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                echo(upgraded).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_bytes(&accept).expect("base64 is a valid header value"),
        );
        return Ok(resp);
    }
    let mut resp = if req.method() == Method::GET || req.method() == Method::HEAD {
        let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"the echo upstream answers GET and WebSocket\n",
        )));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Echoes every text and binary message until the client closes; pings are answered
/// and the close handshake completed by tungstenite itself.
async fn echo(upgraded: hyper::upgrade::Upgraded) {
    let mut config = WebSocketConfig::default();
    // Small buffers: the echo is for trying sluice out, and idles mostly.
    config.read_buffer_size = 4096;
    let mut ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    while let Some(msg) = ws.next().await {
        let Ok(msg) = msg else { break };
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// A page that opens a WebSocket back to where it came from and echoes what you type.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>sluice echo</title>
<style>body{font:16px system-ui,sans-serif;max-width:40em;margin:2em auto}#log{white-space:pre-wrap;border:1px solid #ccc;padding:.5em;min-height:10em}</style>
</head>
<body>
<h1>sluice echo</h1>
<p>This page is served by sluice's built-in echo upstream, through the proxy. It opens a
WebSocket to the same address; what you send comes back.</p>
<form id="f"><input id="msg" size="40" value="hello, sluice" autofocus> <button>Send</button></form>
<p id="state">connecting...</p>
<div id="log"></div>
<script>
const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + location.pathname;
const log = (line) => { document.getElementById("log").textContent += line + "\n"; };
const ws = new WebSocket(url);
ws.onopen = () => {
  document.getElementById("state").textContent = "open: " + url;
  // ?send=TEXT sends TEXT at once: a scripted browser check of the whole path.
  const auto = new URLSearchParams(location.search).get("send");
  if (auto) { ws.send(auto); log("> " + auto); }
};
ws.onclose = (e) => { document.getElementById("state").textContent = "closed (" + e.code + ")"; };
ws.onmessage = (e) => log("< " + e.data);
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const text = document.getElementById("msg").value;
  ws.send(text); log("> " + text);
};
</script>
</body>
</html>
"#;
