//! Other implementations on either side of sluice: headless Chromium loading the
//! built-in echo page, and Python's `websockets` as client and as upstream server.
//!
//! The peers are outside programs. Where one is missing the test says so and passes,
//! so `cargo test` works on a bare machine; under CI (`CI=true`, where `.ci/run`
//! installs them) a missing peer fails the test.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

fn python_websockets() -> bool {
    peer_available(
        "python3 with the websockets package",
        Command::new("python3").args(["-c", "import websockets"]),
    )
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_echoes_through_the_builtin_page() {
    if !python_websockets()
        || !peer_available("chromium", Command::new("chromium").arg("--version"))
    {
        return;
    }
    let gw = start(
        r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
[[routes]]
upstream = "echo"
[upstreams.echo]
builtin = "echo"
"#,
    )
    .await;
    let url = format!("http://{}/chat?send=hello-from-chromium", gw.addr);
    let out = tokio::process::Command::new("python3")
        .args([&script("browser_check.py"), &url, "hello-from-chromium"])
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .expect("the browser check finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the Python echo server (with TLS given a certificate); returns it, its
/// output lines after the port (it prints "CLOSED code" for each connection that
/// ends), and its port.
async fn python_server(tls: Option<&support::pki::Issued>) -> (tokio::process::Child, Lines, u16) {
    let mut args = vec!["server".to_owned()];
    if let Some(c) = tls {
        args.push(c.cert.to_string_lossy().into_owned());
        args.push(c.key.to_string_lossy().into_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (server, mut lines) = py_peer(&args);
    let port = line("python server port", &mut lines)
        .await
        .strip_prefix("PORT ")
        .unwrap()
        .parse()
        .unwrap();
    (server, lines, port)
}

async fn python_client(url: &str, ca: Option<&Path>) {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args([&script("py_peer.py"), "client", url]);
    if let Some(ca) = ca {
        cmd.arg(ca);
    }
    let out = within("python client", cmd.output()).await.unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn python_client_and_python_server_through_sluice() {
    if !python_websockets() {
        return;
    }
    let (_server, _, port) = python_server(None).await;
    let gw = gateway_for(&[format!("127.0.0.1:{port}").parse().unwrap()], "").await;
    python_client(&gw.url("/interop"), None).await;
}

/// wss:// from a client that verifies sluice's certificate against a CA it is given,
/// through sluice to a plain ws:// backend and to a wss:// backend.
#[tokio::test]
async fn python_wss_client_verifying_a_ca_to_ws_and_wss_backends() {
    if !python_websockets() {
        return;
    }
    let ca = support::pki::Ca::new("interop");
    let front = ca.server("front", &["localhost"]);
    let back = ca.server("back", &["backend.internal"]);
    let (_plain, _, plain_port) = python_server(None).await;
    let (_secure, _, secure_port) = python_server(Some(&back)).await;
    let gw = start(&format!(
        r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
tls = {{ cert = "{}", key = "{}" }}
[[routes]]
path = "/plain"
upstream = "plain"
[[routes]]
path = "/secure"
upstream = "secure"
[upstreams.plain]
servers = ["127.0.0.1:{plain_port}"]
[upstreams.secure]
servers = ["127.0.0.1:{secure_port}"]
tls = true
sni = "backend.internal"
ca = "{}"
"#,
        front.cert.display(),
        front.key.display(),
        ca.cert_path.display()
    ))
    .await;
    let port = gw.addr.port();
    python_client(
        &format!("wss://localhost:{port}/plain"),
        Some(&ca.cert_path),
    )
    .await;
    python_client(
        &format!("wss://localhost:{port}/secure"),
        Some(&ca.cert_path),
    )
    .await;
}

/// Opens `count` WebSockets to `ws` from Chromium on `page` (browser_drain_check.py),
/// runs `then` once each has echoed, and returns the script and the line where it
/// reports the Close codes its sockets saw.
async fn browser_closes(
    page: &str,
    ws: &str,
    count: usize,
    then: impl FnOnce(),
) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new("python3")
        .args([
            &script("browser_drain_check.py"),
            page,
            ws,
            &count.to_string(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Chromium's start is slow on a busy machine: a bound of its own.
    let open = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
        .await
        .expect("the browser's sockets open")
        .unwrap();
    assert_eq!(open.as_deref(), Some("OPEN"));
    then();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(40), lines.next_line())
        .await
        .expect("the browser reports its closes")
        .unwrap()
        .unwrap_or_default();
    (child, closed)
}

/// Chromium's own WebSocket objects, opened through sluice to its built-in echo, see a
/// clean Close 1001 from each tunnel while sluice drains, spread over time, and sluice
/// exits 0 once they are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_sees_clean_closes_1001_when_sluice_drains() {
    if !python_websockets()
        || !peer_available("chromium", Command::new("chromium").arg("--version"))
    {
        return;
    }
    let mut sluice = support::process::Sluice::start(
        r#"
[admin]
listen = "127.0.0.1:0"
[timeouts]
drain = "4s"
[websocket]
close_timeout = "1s"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
[[routes]]
upstream = "echo"
[upstreams.echo]
builtin = "echo"
"#,
    );
    let page = format!("http://{}/", sluice.http);
    let ws = format!("ws://{}/chat", sluice.http);
    let (mut child, closed) = browser_closes(&page, &ws, 4, || sluice.signal("TERM")).await;
    let codes: Vec<&str> = closed
        .strip_prefix("CLOSED ")
        .unwrap_or_else(|| panic!("{closed:?}"))
        .split(',')
        .collect();
    assert_eq!(codes, ["1001:clean"; 4], "{closed}");
    let (code, took) = sluice.wait_exit().await;
    assert_eq!(code, Some(0));
    assert!(took < std::time::Duration::from_secs(4), "took {took:?}");
    assert!(child.wait().await.unwrap().success());
}

/// Python's `websockets` on both sides (permessage-deflate agreed end to end), sluice
/// between them draining: the client and the server each get a Close 1001 and answer
/// it, and sluice exits 0 once they have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_and_server_both_get_1001_when_sluice_drains() {
    if !python_websockets() {
        return;
    }
    let (_server, mut server_lines, port) = python_server(None).await;
    let mut sluice = support::process::Sluice::start(&config(
        &[format!("127.0.0.1:{port}").parse().unwrap()],
        "[timeouts]\ndrain = \"3s\"\n",
    ));
    let mut client = tokio::process::Command::new("python3")
        .args([
            &script("py_peer.py"),
            "wait-close",
            &format!("ws://{}/drain", sluice.http),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut client_lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let ext = within("the client's extensions", client_lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(ext.contains("permessage-deflate"), "{ext}");
    let open = within("the client's echo", client_lines.next_line())
        .await
        .unwrap();
    assert_eq!(open.as_deref(), Some("OPEN"));
    sluice.signal("TERM");
    let closed = within("the client's close", client_lines.next_line())
        .await
        .unwrap();
    assert_eq!(closed.as_deref(), Some("CLOSED 1001"));
    let closed = within("the server's close", server_lines.next_line())
        .await
        .unwrap();
    assert_eq!(closed.as_deref(), Some("CLOSED 1001"));
    let (code, took) = sluice.wait_exit().await;
    assert_eq!(code, Some(0));
    assert!(took < std::time::Duration::from_secs(3), "took {took:?}");
    assert!(client.wait().await.unwrap().success());
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Runs `py_peer.py` with `args`, its output read line by line.
fn py_peer(args: &[&str]) -> (tokio::process::Child, Lines) {
    let mut child = tokio::process::Command::new("python3")
        .arg(script("py_peer.py"))
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// The next line a peer prints.
async fn line(what: &str, lines: &mut Lines) -> String {
    within(what, lines.next_line())
        .await
        .unwrap()
        .unwrap_or_default()
}

/// A `py_peer.py wait-close` client through sluice, its echo done.
async fn open_client(url: &str) -> (tokio::process::Child, Lines) {
    let (child, mut lines) = py_peer(&["wait-close", url]);
    let ext = line("the client's extensions", &mut lines).await;
    assert!(ext.contains("permessage-deflate"), "{ext}");
    assert_eq!(line("the client's echo", &mut lines).await, "OPEN");
    (child, lines)
}

/// Python's `websockets` on both sides, one side killed (SIGKILL) with its tunnel
/// open: the other gets a Close from sluice in its place instead of a TCP cut (a
/// 1006): 1001 to the server when its client is gone, 1011 to the client when its
/// server is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_peers_get_a_close_when_the_other_side_is_killed() {
    if !python_websockets() {
        return;
    }
    let (mut server, mut server_lines, port) = python_server(None).await;
    let gw = start(&config(&[format!("127.0.0.1:{port}").parse().unwrap()], "")).await;
    let url = format!("ws://{}/killed", gw.addr);

    let (mut client, _) = open_client(&url).await;
    client.start_kill().unwrap();
    assert_eq!(
        line("the server's close", &mut server_lines).await,
        "CLOSED 1001"
    );

    let (mut client, mut client_lines) = open_client(&url).await;
    server.start_kill().unwrap();
    assert_eq!(
        line("the client's close", &mut client_lines).await,
        "CLOSED 1011"
    );
    assert!(client.wait().await.unwrap().success());
}

/// Chromium's own WebSocket objects, through sluice to a Python `websockets` server
/// that is then killed: each sees a clean Close 1011 from sluice, not a 1006.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_sees_clean_closes_1011_when_its_upstream_is_killed() {
    if !python_websockets()
        || !peer_available("chromium", Command::new("chromium").arg("--version"))
    {
        return;
    }
    let (mut server, _, port) = python_server(None).await;
    let gw = start(&format!(
        r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
[[routes]]
upstream = "echo"
[[routes]]
path = "/py"
upstream = "py"
[upstreams.echo]
builtin = "echo"
[upstreams.py]
servers = ["127.0.0.1:{port}"]
"#
    ))
    .await;
    let page = format!("http://{}/", gw.addr);
    let ws = format!("ws://{}/py", gw.addr);
    let (mut child, closed) = browser_closes(&page, &ws, 2, || server.start_kill().unwrap()).await;
    assert_eq!(closed, "CLOSED 1011:clean,1011:clean");
    assert!(child.wait().await.unwrap().success());
}
