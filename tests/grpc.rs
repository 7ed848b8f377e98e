//! HTTP/2 to upstreams (`protocol = "h2"`) and gRPC through sluice: grpcio's client
//! and server (tests/interop/grpc_peer.py) on either side for every call shape, TLS,
//! errors with trailers and binary metadata, deadlines, sluice's own gRPC answers
//! (trailers-only, with `grpc-status`), GOAWAY from an upstream, a reload under an
//! open stream; and plain HTTP over an h2 upstream that is hyper's server.
//!
//! The grpcio peer is an outside program: where python3 with grpcio is missing the
//! tests that need it say so and pass, except under CI (`CI=true`), where `.ci/run`
//! installs it and they fail.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::grpc::*;
use support::h2::*;
use support::pki::Ca;
use support::process::Sluice;
use support::*;
use tokio::net::TcpListener;

// ---- configuration ----

/// A configuration with an admin listener, listener "http" with `listener` keys, route
/// "echo" for `/test.Echo` to upstream "grpc" speaking HTTP/2 to `servers` (plus
/// `upstream` keys), and `extra` tables after it.
fn grpc_config(listener: &str, servers: &[SocketAddr], upstream: &str, extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"
{listener}

[[routes]]
name = "echo"
path = "/test.Echo"
upstream = "grpc"

[upstreams.grpc]
servers = [{}]
protocol = "h2"
{upstream}

{extra}
"#,
        list.join(", ")
    )
}

/// An in-process gateway whose plain listener speaks h2c, in front of `server`.
async fn h2c_gateway(server: SocketAddr, upstream: &str, extra: &str) -> TestGateway {
    start(&grpc_config("http2 = true", &[server], upstream, extra)).await
}

/// Runs grpcio client `name` through an h2c listener to the grpcio server.
async fn through_h2c(name: &str) {
    if !grpcio_available() {
        return;
    }
    let server = GrpcServer::start().await;
    let gw = h2c_gateway(server.addr(), "", "").await;
    let out = scenario(name, &gw.addr.to_string(), None).await;
    eprintln!("{out}");
}

// ---- every call shape through an h2c listener ----

#[tokio::test]
async fn unary_call() {
    through_h2c("unary").await;
}

#[tokio::test]
async fn four_mib_messages_each_way() {
    through_h2c("large").await;
}

#[tokio::test]
async fn client_streaming_call() {
    through_h2c("client_stream").await;
}

#[tokio::test]
async fn server_streaming_call() {
    through_h2c("server_stream").await;
}

/// Each reply must arrive before the client sends its next message.
#[tokio::test]
async fn bidi_call_streams_each_message_without_buffering() {
    through_h2c("bidi").await;
}

#[tokio::test]
async fn a_hundred_concurrent_calls_on_one_channel() {
    through_h2c("concurrent").await;
}

/// NOT_FOUND with its message and `x-detail-bin` trailing metadata intact.
#[tokio::test]
async fn an_error_status_with_message_and_binary_metadata_arrives_intact() {
    through_h2c("error").await;
}

#[tokio::test]
async fn a_client_deadline_ends_the_call() {
    through_h2c("deadline").await;
}

// ---- TLS ----

#[tokio::test]
async fn grpc_over_a_tls_listener() {
    if !grpcio_available() {
        return;
    }
    let ca = Ca::new("grpc");
    let front = ca.server("front", &["localhost"]);
    let server = GrpcServer::start().await;
    let gw = start(&grpc_config(&tls_line(&front), &[server.addr()], "", "")).await;
    let target = gw.addr.to_string();
    for name in ["unary", "bidi", "error", "large"] {
        scenario(name, &target, Some(&ca.cert_path)).await;
    }
}

// ---- sluice's own gRPC answers ----

#[tokio::test]
async fn a_down_upstream_is_unavailable_in_a_trailers_only_answer() {
    let gw = h2c_gateway(dead_addr().await, "", "").await;
    let mut h2 = H2Client::h2c(gw.addr).await;
    let answer = call(&mut h2, request("/test.Echo/Unary", b"x", &[])).await;
    answer.assert_trailers_only("14");
    let series = "sluice_grpc_responses_total{grpc_status=\"14\",route=\"echo\"}";
    assert_eq!(metric(&metrics_text(&gw).await, series), 1.0);

    if grpcio_available() {
        scenario("unavailable", &gw.addr.to_string(), None).await;
    }
}

#[tokio::test]
async fn a_path_with_no_route_is_unimplemented_for_grpc_clients_only() {
    let server = dead_addr().await;
    let gw = h2c_gateway(server, "", "").await;
    let mut h2 = H2Client::h2c(gw.addr).await;
    let answer = call(&mut h2, request("/test.Missing/Call", b"x", &[])).await;
    answer.assert_trailers_only("12");
    // A client that is not gRPC's still gets an HTTP status.
    let (status, _, _) = h2.get("/test.Missing/Call").await;
    assert_eq!(status, 404);

    if grpcio_available() {
        scenario("unimplemented", &gw.addr.to_string(), None).await;
    }
}

/// `grpc-timeout` shorter than `[timeouts] upstream_response`: the call ends at the
/// former, answered by sluice (the raw client here has no deadline of its own).
#[tokio::test]
async fn grpc_timeout_shorter_than_upstream_response_wins() {
    if !grpcio_available() {
        return;
    }
    let server = GrpcServer::start().await;
    let gw = h2c_gateway(
        server.addr(),
        "",
        "[timeouts]\nupstream_response = \"30s\"\n",
    )
    .await;
    let mut h2 = H2Client::h2c(gw.addr).await;
    let started = Instant::now();
    let answer = call(
        &mut h2,
        request(
            "/test.Echo/Unary",
            b"sleep:5000",
            &[("grpc-timeout", "300m")],
        ),
    )
    .await;
    let took = started.elapsed();
    answer.assert_trailers_only("4");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
}

/// `[timeouts] upstream_response` shorter than `grpc-timeout`, or no `grpc-timeout`:
/// the call ends at the former.
#[tokio::test]
async fn upstream_response_shorter_than_grpc_timeout_wins() {
    if !grpcio_available() {
        return;
    }
    let server = GrpcServer::start().await;
    let gw = h2c_gateway(
        server.addr(),
        "",
        "[timeouts]\nupstream_response = \"300ms\"\n",
    )
    .await;
    let mut h2 = H2Client::h2c(gw.addr).await;
    for headers in [&[("grpc-timeout", "20S")][..], &[]] {
        let started = Instant::now();
        let answer = call(&mut h2, request("/test.Echo/Unary", b"sleep:5000", headers)).await;
        let took = started.elapsed();
        answer.assert_trailers_only("4");
        assert!(took < Duration::from_secs(3), "answered after {took:?}");
    }
    // A call answered in time is untouched.
    let answer = call(&mut h2, request("/test.Echo/Unary", b"quick", &[])).await;
    assert_eq!(answer.grpc_status(), Some("0"), "{answer:?}");
    assert_eq!(answer.messages, [Bytes::from_static(b"quick")]);
}

/// With `max_connections_per_server = 1` and one call open, the next is refused as
/// RESOURCE_EXHAUSTED; once the first ends, calls go through again.
#[tokio::test]
async fn every_server_full_is_resource_exhausted() {
    if !grpcio_available() {
        return;
    }
    let server = GrpcServer::start().await;
    let gw = h2c_gateway(server.addr(), "max_connections_per_server = 1", "").await;
    let mut h2 = H2Client::h2c(gw.addr).await;
    let (tx, body) = streamed();
    // grpcio sends the response head with the first reply, so the message goes first.
    tx.send(grpc_frame(b"hold")).unwrap();
    let req = Request::post(uri("http", "test.local", "/test.Echo/Bidi"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = h2.request(req).await;
    assert_eq!(resp.status(), 200);
    let mut open = resp.into_body();
    let first = within("the open call's echo", open.frame())
        .await
        .expect("a frame")
        .expect("no error");
    assert_eq!(first.into_data().ok(), Some(grpc_frame(b"hold")));

    let answer = call(&mut h2, request("/test.Echo/Unary", b"x", &[])).await;
    answer.assert_trailers_only("8");

    drop(tx);
    let rest = within("the open call ends", open.collect()).await.unwrap();
    assert_eq!(
        rest.trailers().and_then(|t| t.get("grpc-status")),
        Some(&"0".parse().unwrap())
    );
    eventually("calls go through once the open one ended", || {
        let mut sender = h2.sender.clone();
        async move {
            let Ok(resp) = sender
                .send_request(request("/test.Echo/Unary", b"y", &[]))
                .await
            else {
                return false;
            };
            let Ok(c) = resp.into_body().collect().await else {
                return false;
            };
            c.trailers()
                .and_then(|t| t.get("grpc-status"))
                .is_some_and(|s| s == "0")
        }
    })
    .await;
}

// ---- access lines and metrics ----

fn access_line(sluice: &Sluice, path: &str) -> serde_json::Value {
    loop {
        let line = sluice.wait_log("\"target\":\"access\"");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["fields"]["path"] == path {
            return v;
        }
    }
}

/// The access field as text, whether logged as a number or a string.
fn field(v: &serde_json::Value, name: &str) -> String {
    match &v["fields"][name] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_and_metrics_carry_the_grpc_status() {
    if !grpcio_available() {
        return;
    }
    let server = GrpcServer::start().await;
    let sluice = Sluice::start(&grpc_config(
        "http2 = true",
        &[server.addr()],
        "",
        "[log]\nformat = \"json\"\n",
    ));
    let target = sluice.http.to_string();
    scenario("unary", &target, None).await;
    let v = access_line(&sluice, "/test.Echo/Unary");
    assert_eq!(field(&v, "status"), "200", "{v}");
    assert_eq!(field(&v, "grpc_status"), "0", "{v}");

    scenario("error", &target, None).await;
    let v = access_line(&sluice, "/test.Echo/Unary");
    assert_eq!(field(&v, "status"), "200", "{v}");
    assert_eq!(field(&v, "grpc_status"), "5", "{v}");

    scenario("unimplemented", &target, None).await;
    let v = access_line(&sluice, "/test.Missing/Call");
    assert_eq!(field(&v, "status"), "200", "{v}");
    assert_eq!(field(&v, "grpc_status"), "12", "{v}");

    let (status, _, body) = HttpClient::connect(sluice.admin)
        .await
        .get("/metrics")
        .await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    for (code, count) in [("0", 1.0), ("5", 1.0)] {
        let series =
            format!("sluice_grpc_responses_total{{grpc_status=\"{code}\",route=\"echo\"}}");
        assert_eq!(metric(&text, &series), count, "{series} in:\n{text}");
    }
}

// ---- an upstream going away ----

/// A unary call through sluice at `target` that must succeed after `when`.
async fn call_after(when: &str, target: &str) {
    let (ok, out) = client("unary", target, None).finish().await;
    assert!(ok, "a new call after {when} failed:\n{out}");
}

/// A server stream in flight when its server sends GOAWAY (a graceful stop) finishes
/// within the grace period; meanwhile a new call goes to a fresh connection, to a
/// new server on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_flight_at_goaway_finishes_and_new_calls_use_a_fresh_connection() {
    if !grpcio_available() {
        return;
    }
    let mut old = GrpcServer::start().await;
    let port = old.port;
    let gw = h2c_gateway(old.addr(), "", "").await;
    let target = gw.addr.to_string();
    // The pooled HTTP/2 connection to the old server exists before the stream starts.
    scenario("unary", &target, None).await;

    let mut stream = client("slow_stream", &target, None);
    stream.wait_line("FIRST").await;
    old.begin_stop(Duration::from_secs(8)).await;
    let new = GrpcServer::start_on(port).await;
    call_after("the GOAWAY, while the old stream is in flight", &target).await;

    let (ok, out) = stream.finish().await;
    assert!(ok, "{out}");
    assert!(
        out.contains("slow_stream: OK 30"),
        "the stream did not finish after GOAWAY:\n{out}"
    );
    old.stopped().await;
    call_after("the old server exited", &target).await;
    drop(new);
}

/// A server stream whose server dies under it (a stop without grace) fails with a
/// status, neither hanging nor passing as complete; once a server is back, calls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_its_upstream_fails_with_a_status() {
    if !grpcio_available() {
        return;
    }
    let mut old = GrpcServer::start().await;
    let port = old.port;
    let gw = h2c_gateway(old.addr(), "", "").await;
    let target = gw.addr.to_string();

    let mut stream = client("slow_stream", &target, None);
    stream.wait_line("FIRST").await;
    old.begin_stop(Duration::ZERO).await;
    let (ok, out) = stream.finish().await;
    assert!(ok, "{out}");
    assert!(
        out.contains("slow_stream: STATUS "),
        "the cut stream did not fail with a status:\n{out}"
    );
    old.stopped().await;

    let _new = GrpcServer::start_on(port).await;
    call_after("the server came back on its port", &target).await;
}

// ---- reload ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_an_open_bidi_stream() {
    if !grpcio_available() {
        return;
    }
    let server = GrpcServer::start().await;
    let (plain, _) = mirror_backend().await;
    let first = grpc_config("http2 = true", &[server.addr()], "", "");
    let sluice = Sluice::start(&first);
    let target = sluice.http.to_string();
    let mut stream = client("bidi_hold", &target, None);
    stream.wait_line("OPEN").await;

    let added = format!(
        "{first}\n[[routes]]\npath = \"/added\"\nupstream = \"plain\"\n\n[upstreams.plain]\nservers = [\"{plain}\"]\n"
    );
    std::fs::write(sluice.config_path(), added).unwrap();
    sluice.signal("HUP");
    sluice.wait_log("configuration reloaded");
    let (status, _, body) = HttpClient::connect(sluice.http).await.get("/added").await;
    assert_eq!(status, 200, "the added route answers");
    assert!(body.starts_with(b"GET /added\n"), "{body:?}");

    stream.say("go").await;
    let (ok, out) = stream.finish().await;
    assert!(ok, "the bidi stream did not survive the reload:\n{out}");
    scenario("unary", &target, None).await;
}

// ---- plain HTTP over an h2 upstream (hyper's HTTP/2 server) ----

type RespBody = BoxBody<Bytes, Infallible>;

/// What the hyper upstream answers: headers naming the HTTP version, `te` and ALPN it
/// saw; a gRPC request (by content type) gets its body back with gRPC trailers,
/// anything else `METHOD PATH\n` and its body.
async fn answer(req: Request<Incoming>, alpn: &'static str) -> Response<RespBody> {
    let version = format!("{:?}", req.version());
    let te = header(req.headers(), "te");
    let grpc = header(req.headers(), "content-type").starts_with("application/grpc");
    let head = format!(
        "{} {}\n",
        req.method(),
        req.uri().path_and_query().map_or("", |p| p.as_str())
    );
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let builder = Response::builder()
        .header("x-upstream-version", version)
        .header("x-upstream-te", te)
        .header("x-upstream-alpn", alpn);
    if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "all%20good".parse().unwrap());
        trailers.insert("x-trace-bin", "AAEC/w".parse().unwrap());
        let frames = vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
        let stream = StreamBody::new(futures_util::stream::iter(frames));
        return builder
            .header("content-type", "application/grpc")
            .body(BodyExt::boxed(stream))
            .unwrap();
    }
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    builder
        .body(BodyExt::boxed(http_body_util::Full::new(Bytes::from(out))))
        .unwrap()
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| "-".to_owned())
}

/// Serves HTTP/2 only (prior knowledge) on `io` with [`answer`].
async fn serve_h2<I>(io: I, alpn: &'static str)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| async move {
        Ok::<_, Infallible>(answer(req, alpn).await)
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// hyper's HTTP/2 server over plain TCP (h2c).
async fn h2c_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_h2(tcp, "-"));
        }
    });
    addr
}

/// hyper's HTTP/2 server over TLS with `cert`, offering only ALPN h2.
async fn tls_h2_backend(cert: &support::pki::Issued) -> SocketAddr {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
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
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let alpn = match tls.get_ref().1.alpn_protocol() {
                    Some(b"h2") => "h2",
                    _ => "none",
                };
                serve_h2(tls, alpn).await;
            });
        }
    });
    addr
}

/// A GET from an HTTP/1.1 client and a POST from an HTTP/2 client through sluice,
/// both reaching the upstream as HTTP/2 and answered in full.
async fn plain_requests_reach(gw: &TestGateway, alpn: &str) {
    let (status, headers, body) = HttpClient::connect(gw.addr).await.get("/page?x=1").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-upstream-version"), "HTTP/2.0");
    assert_eq!(header(&headers, "x-upstream-alpn"), alpn);
    assert_eq!(&body[..], b"GET /page?x=1\n");

    let mut h2 = H2Client::h2c(gw.addr).await;
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let req = Request::post(uri("http", "test.local", "/upload"))
        .body(full(big.clone()))
        .unwrap();
    let (status, headers, body) = h2.send(req).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-upstream-version"), "HTTP/2.0");
    assert!(body.starts_with(b"POST /upload\n"), "{:?}", &body[..20]);
    assert!(body[13..] == big[..], "the 1 MiB body came back changed");
}

#[tokio::test]
async fn plain_http_from_http1_and_h2_clients_to_an_h2c_upstream() {
    let backend = h2c_backend().await;
    let gw = start(&listener_config(
        "http2 = true",
        &[backend],
        "protocol = \"h2\"",
    ))
    .await;
    plain_requests_reach(&gw, "-").await;
}

#[tokio::test]
async fn an_h2_upstream_over_tls_is_reached_by_alpn() {
    let ca = Ca::new("upstream");
    let back = ca.server("back", &["backend.internal"]);
    let backend = tls_h2_backend(&back).await;
    let keys = format!(
        "protocol = \"h2\"\ntls = true\nsni = \"backend.internal\"\nca = \"{}\"",
        ca.cert_path.display()
    );
    let gw = start(&listener_config("http2 = true", &[backend], &keys)).await;
    plain_requests_reach(&gw, "h2").await;
}

/// `te: trailers` reaches the upstream, and its trailers (binary ones too) the client.
#[tokio::test]
async fn te_trailers_goes_up_and_grpc_trailers_come_back() {
    let backend = h2c_backend().await;
    let gw = h2c_gateway(backend, "", "").await;
    let mut h2 = H2Client::h2c(gw.addr).await;
    let answer = call(&mut h2, request("/test.Echo/Unary", b"ping", &[])).await;
    assert_eq!(answer.status, 200);
    assert_eq!(header(&answer.headers, "x-upstream-te"), "trailers");
    assert_eq!(header(&answer.headers, "x-upstream-version"), "HTTP/2.0");
    assert_eq!(answer.messages, [Bytes::from_static(b"ping")]);
    let trailers = answer.trailers.as_ref().expect("trailers");
    assert_eq!(header(trailers, "grpc-status"), "0");
    assert_eq!(header(trailers, "grpc-message"), "all%20good");
    assert_eq!(header(trailers, "x-trace-bin"), "AAEC/w");
}
