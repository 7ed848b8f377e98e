//! gRPC for tests: the grpcio peer (tests/interop/grpc_peer.py) as server and client
//! processes, gRPC message framing, and calls made with hyper's HTTP/2 client where a
//! test must see the raw answer (HTTP status, headers, trailers).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::h2::{H2Client, full, uri};
use super::within;

/// The longest a whole Python client scenario may take (interpreter start, grpcio
/// import, a 4 MiB message each way through a debug build).
pub const SCENARIO: Duration = Duration::from_secs(30);

/// Whether python3 with grpcio is here. When it is not, the test says so and passes,
/// except under CI (`CI=true`), where `.ci/run` installs it and its absence fails.
pub fn grpcio_available() -> bool {
    super::peer_available(
        "python3 with grpcio",
        std::process::Command::new("python3").args(["-c", "import grpc"]),
    )
}

fn script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop/grpc_peer.py")
        .to_string_lossy()
        .into_owned()
}

/// A line-oriented child process: its stdin and stdout lines.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every stdout line read so far, for failure messages.
    pub seen: Vec<String>,
}

impl Peer {
    fn spawn(args: &[&str]) -> Peer {
        let mut child = Command::new("python3")
            .arg(script())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 starts");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Peer {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stdout line; fails the test at end of output or after `limit`.
    pub async fn line_within(&mut self, what: &str, limit: Duration) -> String {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("timed out: {what} (output so far: {:?})", self.seen))
            .unwrap()
            .unwrap_or_else(|| panic!("output ended before {what}: {:?}", self.seen));
        self.seen.push(line.clone());
        line
    }

    /// Reads stdout lines until one starts with `prefix`; returns it.
    pub async fn wait_line(&mut self, prefix: &str) -> String {
        loop {
            let line = self.line_within(prefix, SCENARIO).await;
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Writes one line to the peer's stdin.
    pub async fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for the process to exit; returns whether it succeeded and the rest of
    /// its output.
    pub async fn finish(mut self) -> (bool, String) {
        drop(self.stdin.take());
        let mut rest = self.seen.join("\n");
        while let Ok(Ok(Some(line))) = tokio::time::timeout(SCENARIO, self.lines.next_line()).await
        {
            rest.push('\n');
            rest.push_str(&line);
        }
        let status = tokio::time::timeout(SCENARIO, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the peer did not exit: {rest}"))
            .unwrap();
        (status.success(), rest)
    }
}

/// The grpcio `test.Echo` server.
pub struct GrpcServer {
    peer: Peer,
    pub port: u16,
}

impl GrpcServer {
    /// Starts it on any free port.
    pub async fn start() -> GrpcServer {
        GrpcServer::start_on(0).await
    }

    /// Starts it on `port` (0: any free port).
    pub async fn start_on(port: u16) -> GrpcServer {
        let mut peer = Peer::spawn(&["server", &port.to_string()]);
        let line = peer
            .line_within("grpc server port", super::STEP)
            .await
            .clone();
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not a port line: {line:?}"));
        GrpcServer { peer, port }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Starts a graceful stop (GOAWAY; calls in flight get `grace` to finish);
    /// returns once it has begun, and the listening socket is closed.
    pub async fn begin_stop(&mut self, grace: Duration) {
        self.peer
            .say(&format!("stop {}", grace.as_secs_f64()))
            .await;
        self.peer.wait_line("STOPPING").await;
    }

    /// Waits until a stop begun with [`GrpcServer::begin_stop`] has finished.
    pub async fn stopped(mut self) {
        self.peer.wait_line("STOPPED").await;
        let (ok, out) = self.peer.finish().await;
        assert!(ok, "the grpc server failed: {out}");
    }
}

/// Starts client `scenario` against `target` (`host:port`), over TLS verifying the
/// server against `ca` when given; the caller reads its lines.
pub fn client(scenario: &str, target: &str, ca: Option<&Path>) -> Peer {
    let mut args = vec!["client", scenario, target];
    let ca = ca.map(|c| c.to_string_lossy().into_owned());
    if let Some(ca) = &ca {
        args.push(ca);
    }
    Peer::spawn(&args)
}

/// Runs client `scenario` to its end; fails the test unless it succeeds. Returns its
/// summary.
pub async fn scenario(name: &str, target: &str, ca: Option<&Path>) -> String {
    let (ok, out) = client(name, target, ca).finish().await;
    assert!(
        ok,
        "grpc client scenario {name} via {target} failed:\n{out}"
    );
    out
}

// ---- gRPC over hyper's HTTP/2 client ----

/// One length-prefixed gRPC message, uncompressed.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.put_slice(message);
    b.freeze()
}

/// Splits a body into its gRPC messages; fails the test on a malformed one.
pub fn grpc_unframe(mut body: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a truncated gRPC prefix: {body:?}");
        assert_eq!(body[0], 0, "a compressed gRPC message");
        body.advance(1);
        let len = body.get_u32() as usize;
        assert!(body.len() >= len, "a truncated gRPC message");
        out.push(body.split_to(len));
    }
    out
}

/// A gRPC call's whole answer as the client saw it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub messages: Vec<Bytes>,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    /// `grpc-status`, from the trailers or, in a trailers-only answer, the head.
    pub fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .map(|v| v.to_str().unwrap())
    }

    /// `grpc-message`, wherever `grpc-status` was.
    pub fn grpc_message(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| self.headers.get("grpc-message"))
            .map(|v| v.to_str().unwrap())
    }

    /// Fails the test unless this is a trailers-only answer (RFC-style: HTTP 200, a
    /// gRPC content type, `grpc-status` in the one HEADERS frame, no body) with
    /// `code` and a `grpc-message`.
    pub fn assert_trailers_only(&self, code: &str) {
        assert_eq!(self.status, 200, "{self:?}");
        let ct = self
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default();
        assert!(ct.starts_with("application/grpc"), "content-type: {self:?}");
        assert_eq!(
            self.headers.get("grpc-status").map(|v| v.to_str().unwrap()),
            Some(code),
            "grpc-status in the head: {self:?}"
        );
        assert!(
            self.headers
                .get("grpc-message")
                .is_some_and(|m| !m.is_empty()),
            "a grpc-message: {self:?}"
        );
        assert!(self.messages.is_empty(), "no messages: {self:?}");
        assert!(self.trailers.is_none(), "nothing after the head: {self:?}");
    }
}

/// A unary gRPC request for `path` carrying `message`, with `headers` besides the
/// ones every gRPC client sends.
pub fn request(path: &str, message: &[u8], headers: &[(&str, &str)]) -> Request<super::h2::Body> {
    let mut req = Request::post(uri("http", "test.local", path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(grpc_frame(message)))
        .unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .insert(k.parse::<http::HeaderName>().unwrap(), v.parse().unwrap());
    }
    req
}

/// Sends a gRPC request and reads the whole answer.
pub async fn call(client: &mut H2Client, req: Request<super::h2::Body>) -> Answer {
    let resp = client.request(req).await;
    let (parts, body) = resp.into_parts();
    let collected = within("grpc answer", body.collect())
        .await
        .expect("the answer's body");
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        messages: grpc_unframe(collected.to_bytes()),
        trailers,
    }
}
