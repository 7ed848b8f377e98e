//! TLS on listeners and to upstreams, with certificates from a private test CA.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::pki::{Ca, Issued, tls_connect};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn listener_tls(cert: &Issued) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.cert.display(),
        cert.key.display()
    )
}

/// A gateway with one TLS listener "http" (the name the support code looks for) in
/// front of `backend`, with `tls` as the listener's tls table.
async fn tls_gateway(backend: SocketAddr, tls: &str, extra: &str) -> TestGateway {
    start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[timeouts]
tls_handshake = "500ms"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
{tls}
[[routes]]
upstream = "b"
[upstreams.b]
servers = ["{backend}"]
{extra}
"#
    ))
    .await
}

/// A wss:// client over an already established TLS stream.
async fn wss<S>(stream: S, path: &str) -> tokio_tungstenite::WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!("wss://localhost{path}")
        .into_client_request()
        .unwrap();
    let (ws, resp) = within(
        "wss handshake",
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

#[tokio::test]
async fn wss_through_a_tls_listener_to_a_plain_backend() {
    let ca = Ca::new("listener");
    let cert = ca.server("server", &["localhost"]);
    let mut backend = ws_echo_backend().await;
    let gw = tls_gateway(backend.addr, &listener_tls(&cert), "").await;
    let stream = tls_connect(gw.addr, "localhost", ca.client_default())
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut ws = wss(stream, "/secure").await;
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("over tls")
    );
    let seen = within("handshake", backend.handshakes.recv())
        .await
        .unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_tls_handshakes_total{listener=\"http\",result=\"ok\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn sni_chooses_the_certificate() {
    let ca = Ca::new("sni");
    let a = ca.server("a", &["a.test"]);
    let b = ca.server("b", &["b.test", "*.b.test"]);
    let backend = ws_echo_backend().await;
    let tls = format!(
        "tls = {{ certificates = [ {{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }} ] }}",
        a.cert.display(),
        a.key.display(),
        b.cert.display(),
        b.key.display()
    );
    let gw = tls_gateway(backend.addr, &tls, "").await;
    for (sni, expected) in [("a.test", &a), ("b.test", &b), ("x.b.test", &b)] {
        let s = tls_connect(gw.addr, sni, ca.client_default())
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        let served = &s.get_ref().1.peer_certificates().unwrap()[0];
        assert_eq!(served, &expected.der, "{sni}");
    }
    // An unknown name gets the first (default) certificate, which the client rejects
    // as not valid for the name it asked for.
    let e = tls_connect(gw.addr, "other.test", ca.client_default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[tokio::test]
async fn tls_1_2_and_1_3_clients_and_a_minimum_version() {
    let ca = Ca::new("versions");
    let cert = ca.server("server", &["localhost"]);
    let backend = ws_echo_backend().await;
    let only12 = ca.client_config(&[&rustls::version::TLS12], None);
    let only13 = ca.client_config(&[&rustls::version::TLS13], None);

    let gw = tls_gateway(backend.addr, &listener_tls(&cert), "").await;
    for (config, version) in [
        (&only12, rustls::ProtocolVersion::TLSv1_2),
        (&only13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let s = tls_connect(gw.addr, "localhost", config.clone())
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.protocol_version(), Some(version));
        let mut ws = wss(s, "/").await;
        ws.send(Message::text("v")).await.unwrap();
        assert_eq!(
            within("echo", ws.next()).await.unwrap().unwrap(),
            Message::text("v")
        );
    }

    let tls13 = format!(
        "tls = {{ cert = \"{}\", key = \"{}\", min_version = \"1.3\" }}",
        cert.cert.display(),
        cert.key.display()
    );
    let gw = tls_gateway(backend.addr, &tls13, "").await;
    assert!(tls_connect(gw.addr, "localhost", only12).await.is_err());
    assert!(tls_connect(gw.addr, "localhost", only13).await.is_ok());
}

#[tokio::test]
async fn mutual_tls_accepts_good_client_certificates_only() {
    let ca = Ca::new("mtls");
    let cert = ca.server("server", &["localhost"]);
    let client = ca.client("client");
    let stranger_ca = Ca::new("stranger");
    let stranger = stranger_ca.client("stranger");
    let backend = ws_echo_backend().await;
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}",
        cert.cert.display(),
        cert.key.display(),
        ca.cert_path.display()
    );
    let gw = tls_gateway(backend.addr, &tls, "").await;

    let good = tls_connect(
        gw.addr,
        "localhost",
        ca.client_config(rustls::DEFAULT_VERSIONS, Some(&client)),
    )
    .await
    .unwrap();
    let mut ws = wss(good, "/").await;
    ws.send(Message::text("authenticated")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("authenticated")
    );

    for config in [
        ca.client_default(),
        ca.client_config(rustls::DEFAULT_VERSIONS, Some(&stranger)),
    ] {
        // With TLS 1.3 the client may finish before the server refuses; either way
        // the connection never carries a request.
        match tls_connect(gw.addr, "localhost", config).await {
            Err(_) => {}
            Ok(mut s) => {
                let _ = s
                    .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    .await;
                let mut buf = [0u8; 64];
                let r = within("refusal", s.read(&mut buf)).await;
                assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
            }
        }
    }
}

#[tokio::test]
async fn plaintext_garbage_and_silence_on_the_tls_port_end_quickly() {
    let ca = Ca::new("garbage");
    let cert = ca.server("server", &["localhost"]);
    let backend = ws_echo_backend().await;
    let gw = tls_gateway(backend.addr, &listener_tls(&cert), "").await;

    let resp = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status_of(&resp), 400, "{resp}");
    assert!(resp.contains("this port speaks TLS"), "{resp}");

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&[0x00, 0xff, 0x13, 0x37, 0x42, 0x42])
        .await
        .unwrap();
    assert!(read_to_eof(&mut s).await.is_empty());

    // A TLS record header that promises a handshake and never delivers it.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
    let started = std::time::Instant::now();
    let _ = read_to_eof(&mut s).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "held for {:?}",
        started.elapsed()
    );

    // Silence: closed after the handshake timeout (500ms here).
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let started = std::time::Instant::now();
    let _ = read_to_eof(&mut s).await;
    assert!(started.elapsed() < Duration::from_secs(3));

    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_tls_handshakes_total{listener=\"http\",result=\"error\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(&text, "sluice_connections_active{listener=\"http\"}"),
        0.0
    );
}

#[tokio::test]
async fn a_plain_listener_can_redirect_to_https() {
    let gw = start(
        r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
redirect_https = true
[[listeners]]
name = "other"
listen = "127.0.0.1:0"
redirect_https = true
redirect_https_port = 8443
[[routes]]
upstream = "b"
[upstreams.b]
servers = ["127.0.0.1:9"]
"#,
    )
    .await;
    let resp = raw_exchange(
        gw.addr,
        b"POST /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 308, "{resp}");
    assert_eq!(
        header_of(&resp, "location"),
        Some("https://example.com/a/b?c=d")
    );
    let other = gw.gateway.listener_addr("other").unwrap();
    let resp = raw_exchange(other, b"GET /ws HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(
        header_of(&resp, "location"),
        Some("https://example.com:8443/ws")
    );
}

/// An upstream speaking TLS with `cert`: plain HTTP requests get "secure: PATH", and
/// WebSocket handshakes get an echo.
async fn tls_backend(cert: &Issued) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::pem::PemObject::from_pem_file(&cert.cert).unwrap()],
        rustls::pki_types::pem::PemObject::from_pem_file(&cert.key).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    if let Some(key) = req.headers().get("sec-websocket-key").cloned() {
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let up = upgrade.await.unwrap();
                            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                                TokioIo::new(up),
                                tokio_tungstenite::tungstenite::protocol::Role::Server,
                                None,
                            )
                            .await;
                            while let Some(Ok(m)) = ws.next().await {
                                if m.is_text() && ws.send(m).await.is_err() {
                                    return;
                                }
                            }
                        });
                        let accept = sluice::handshake::accept_for(key.as_bytes());
                        return Ok::<_, Infallible>(
                            Response::builder()
                                .status(101)
                                .header("upgrade", "websocket")
                                .header("connection", "Upgrade")
                                .header("sec-websocket-accept", &accept[..])
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        );
                    }
                    Ok(Response::new(Full::new(Bytes::from(format!(
                        "secure: {}",
                        req.uri().path()
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn upstream_tls(ca: &Path) -> String {
    format!(
        "tls = true\nsni = \"backend.internal\"\nca = \"{}\"\n",
        ca.display()
    )
}

#[tokio::test]
async fn a_tls_upstream_with_a_private_ca_serves_http_and_websocket() {
    let ca = Ca::new("upstream");
    let backend_cert = ca.server("backend", &["backend.internal"]);
    let addr = tls_backend(&backend_cert).await;
    let gw = gateway_for(&[addr], &upstream_tls(&ca.cert_path)).await;

    let mut c = HttpClient::connect(gw.addr).await;
    let (status, _, body) = c.get("/plain").await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"secure: /plain");

    let mut ws = ws_connect(&gw.url("/ws")).await;
    echo_once(&mut ws, Message::text("to a wss upstream")).await;
}

#[tokio::test]
async fn a_tls_upstream_with_the_wrong_ca_is_a_502() {
    let ca = Ca::new("right");
    let wrong = Ca::new("wrong");
    let backend_cert = ca.server("backend", &["backend.internal"]);
    let addr = tls_backend(&backend_cert).await;
    let gw = gateway_for(&[addr], &upstream_tls(&wrong.cert_path)).await;
    let resp = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status_of(&resp), 502, "{resp}");
    let resp = raw_exchange(gw.addr, handshake_request("/", "").as_bytes()).await;
    assert_eq!(status_of(&resp), 502, "{resp}");
}

#[test]
fn bad_tls_files_are_configuration_errors() {
    let ca = Ca::new("files");
    let good = ca.server("good", &["localhost"]);
    let other = ca.server("other", &["localhost"]);
    let expired = ca.expired_server("expired", &["localhost"]);
    let dir = ca.dir.path();
    let not_pem = support::pki::write(dir, "not.pem", "just text\n");
    let missing = dir.join("missing.pem");

    let check = |cert: &Path, key: &Path| -> String {
        let toml = format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n[[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [\"127.0.0.1:9\"]\n",
            cert.display(),
            key.display()
        );
        match sluice::config::parse(&toml, Path::new("tls.toml")) {
            Ok(_) => panic!("accepted {cert:?} {key:?}"),
            Err(e) => e.to_string(),
        }
    };
    let cases = [
        (
            check(&missing, &good.key),
            format!("tls.toml:3:16: {}: cannot read the file", missing.display()),
        ),
        (
            check(&not_pem, &good.key),
            format!("{}: holds no PEM certificate", not_pem.display()),
        ),
        (
            check(&good.cert, &not_pem),
            format!("{}: holds no PEM private key", not_pem.display()),
        ),
        (
            check(&good.cert, &other.key),
            format!(
                "{}: this key does not match the certificate in {}",
                other.key.display(),
                good.cert.display()
            ),
        ),
        (
            check(&expired.cert, &expired.key),
            format!("{}: the certificate expired on", expired.cert.display()),
        ),
        (
            check(dir, &good.key),
            format!("{}: cannot read the file", dir.display()),
        ),
    ];
    for (msg, expected) in cases {
        assert!(msg.contains(&expected), "expected {expected:?} in:\n{msg}");
    }
    // The key mismatch is reported where the key is named.
    let msg = check(&good.cert, &other.key);
    let key_col = format!("tls = {{ cert = \"{}\", key = \"", good.cert.display()).len();
    assert!(msg.starts_with(&format!("tls.toml:3:{key_col}:")), "{msg}");
}

#[test]
fn relative_paths_are_read_from_the_configuration_files_directory() {
    let ca = Ca::new("relative");
    let cert = ca.server("server", &["localhost"]);
    let toml = "[[listeners]]\nlisten = \"127.0.0.1:0\"\ntls = { cert = \"server.pem\", key = \"server.key\" }\n[[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [\"127.0.0.1:9\"]\n";
    let path = ca.dir.path().join("sluice.toml");
    let settings = sluice::config::parse(toml, &path).unwrap();
    assert_eq!(
        settings.listeners[0].tls.as_ref().unwrap().certificates[0].cert,
        cert.cert
    );
}

#[test]
fn upstream_tls_settings_need_tls_on() {
    let toml = "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [\"127.0.0.1:9\"]\nsni = \"x\"\n";
    let msg = sluice::config::parse(toml, Path::new("u.toml"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "u.toml:7:7: upstream \"b\": `sni` is used only with tls = true"
    );
}

#[tokio::test]
async fn certificates_reload_on_sighup_without_cutting_tunnels() {
    let ca = Ca::new("reload");
    let first = ca.server("first", &["localhost"]);
    let second = ca.server("second", &["localhost"]);
    let backend = ws_echo_backend().await;
    let live = tempfile::tempdir().unwrap();
    let (cert, key) = (live.path().join("live.pem"), live.path().join("live.key"));
    let install = |c: &Issued| {
        std::fs::copy(&c.cert, &cert).unwrap();
        std::fs::copy(&c.key, &key).unwrap();
    };
    install(&first);
    let toml = config(&[backend.addr], "").replace(
        "listen = \"127.0.0.1:0\"\n\n[[routes]]",
        &format!(
            "listen = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n[[routes]]",
            cert.display(),
            key.display()
        ),
    );
    let sluice = support::process::Sluice::start(&toml);
    let served = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        s.get_ref().1.peer_certificates().unwrap()[0].clone()
    };

    let s = tls_connect(sluice.http, "localhost", ca.client_default())
        .await
        .unwrap();
    assert_eq!(served(&s), first.der);
    let mut ws = wss(s, "/long-lived").await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("one")
    );

    install(&second);
    sluice.signal("HUP");
    sluice.wait_log("configuration reloaded");
    let s = tls_connect(sluice.http, "localhost", ca.client_default())
        .await
        .unwrap();
    assert_eq!(served(&s), second.der);
    ws.send(Message::text("two")).await.unwrap();
    assert_eq!(
        within("echo after reload", ws.next())
            .await
            .unwrap()
            .unwrap(),
        Message::text("two")
    );

    // A broken key: the reload is refused and the second certificate stays.
    std::fs::write(&key, "not a key\n").unwrap();
    sluice.signal("HUP");
    let line = sluice.wait_log("reload refused");
    assert!(line.contains("live.key"), "{line}");
    let s = tls_connect(sluice.http, "localhost", ca.client_default())
        .await
        .unwrap();
    assert_eq!(served(&s), second.der);
    ws.send(Message::text("three")).await.unwrap();
    assert_eq!(
        within("echo after a bad reload", ws.next())
            .await
            .unwrap()
            .unwrap(),
        Message::text("three")
    );
}

/// A TLS client must send its first request head within `request_header` of accept,
/// as a plain one must: a long `tls_handshake` does not extend that.
#[tokio::test]
async fn silent_tls_clients_are_closed_after_request_header() {
    let ca = Ca::new("silent");
    let cert = ca.server("silent", &["localhost"]);
    let backend = ws_echo_backend().await;
    let gw = start(&format!(
        r#"
[timeouts]
tls_handshake = "60s"
request_header = "300ms"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
{}
[[routes]]
upstream = "b"
[upstreams.b]
servers = ["{}"]
"#,
        listener_tls(&cert),
        backend.addr
    ))
    .await;

    // Connected, no TLS handshake at all. The bound is far below the 60 s the
    // handshake would otherwise have.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = within("a silent TCP client is closed", tcp.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "the server sent bytes to a client that sent none");

    // A finished handshake, then no request; over HTTP/1.1 and over HTTP/2.
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let mut config = (*ca.client_default()).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        let mut tls = tls_connect(gw.addr, "localhost", Arc::new(config))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        // h2 sends its SETTINGS (and then GOAWAY); HTTP/1.1 sends nothing. Either way
        // the connection must end.
        let mut got = Vec::new();
        within("a silent TLS client is closed", async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        if alpn == b"http/1.1" {
            assert!(got.is_empty(), "unexpected bytes: {got:?}");
        }
    }
}
