//! The admin listener's status page and `/status`: the numbers match what runs
//! through sluice, a refused reload shows its errors, `[admin] token` guards all but
//! the probes, and the page renders in headless Chromium without a console error.

mod support;

use std::process::Command;

use http::Request;
use http_body_util::Full;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "0123456789abcdef-admin";

fn status_config(backend: std::net::SocketAddr, admin_extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
{admin_extra}
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
[[routes]]
name = "chat"
path = "/chat"
upstream = "ws"
[[routes]]
name = "api"
path = "/"
upstream = "ws"
[upstreams.ws]
servers = ["{backend}"]
"#
    )
}

async fn get(
    gw: &TestGateway,
    path: &str,
    token: Option<&str>,
) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    let mut c = HttpClient::connect(gw.gateway.admin_addr().unwrap()).await;
    let mut req = Request::get(path).header("host", "admin");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    c.send(req.body(Full::new(bytes::Bytes::new())).unwrap())
        .await
}

async fn status_json(gw: &TestGateway) -> serde_json::Value {
    let (code, headers, body) = get(gw, "/status", None).await;
    assert_eq!(code, 200);
    assert_eq!(headers["content-type"], "application/json");
    serde_json::from_slice(&body).unwrap()
}

fn route<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no route {name}: {st}"))
}

#[tokio::test]
async fn status_counts_what_runs_through_sluice() {
    let backend = ws_echo_backend().await;
    let gw = start(&status_config(backend.addr, "")).await;
    let mut a = ws_connect(&gw.url("/chat")).await;
    let mut b = ws_connect(&gw.url("/chat")).await;
    echo_once(&mut a, Message::text("hello")).await;
    echo_once(&mut b, Message::binary(vec![7u8; 1000])).await;
    let st = status_json(&gw).await;
    let chat = route(&st, "chat");
    assert_eq!(chat["tunnels_open"], 2.0, "{chat}");
    assert_eq!(chat["handshakes"]["upgraded"], 2.0);
    assert_eq!(chat["upstream"], "ws");
    assert_eq!(chat["path"], "/chat");
    let http = &st["listeners"][0];
    assert_eq!(http["name"], "http");
    assert_eq!(http["address"], gw.addr.to_string());
    assert_eq!(http["connections_open"], 2.0);
    assert_eq!(http["tls"], false);
    let server = &st["upstreams"][0]["servers"][0];
    assert_eq!(server["name"], backend.addr.to_string());
    assert_eq!(server["up"], true);
    assert_eq!(server["in_use"], 2);
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert!(st["config"]["hash"].as_str().unwrap().len() >= 8);
    assert!(st["config"]["last_reload"].is_null());

    // A plain GET the WebSocket-only upstream cannot answer (a 502), and the
    // tunnels' bytes, once they end.
    let mut c = HttpClient::connect(gw.addr).await;
    let _ = c.get("/nothing-here").await;
    for mut ws in [a, b] {
        ws.close(None).await.unwrap();
    }
    eventually("the tunnels end", || async {
        route(&status_json(&gw).await, "chat")["tunnels_open"] == 0.0
    })
    .await;
    let st = status_json(&gw).await;
    let chat = route(&st, "chat");
    // Masked client frames: 2+4+5 and 2+2+4+1000 bytes, then the two closes.
    assert!(
        chat["bytes"]["client_to_upstream"].as_f64().unwrap() >= 1017.0,
        "{chat}"
    );
    let api = route(&st, "api");
    assert_eq!(api["requests"]["5xx"], 1.0, "{api}");
}

#[tokio::test]
async fn a_refused_reload_shows_its_errors() {
    let backend = ws_echo_backend().await;
    let gw = start(&status_config(backend.addr, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[listeners]]\nlisten = \"nowhere\"\n").unwrap();
    assert!(gw.gateway.reload_file(&path).await.is_err());
    let st = status_json(&gw).await;
    let reload = &st["config"]["last_reload"];
    assert_eq!(reload["ok"], false, "{st}");
    let errors: Vec<&str> = reload["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(errors.iter().any(|e| e.contains("nowhere")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("no [[routes]]")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_token_guards_everything_but_the_probes() {
    let backend = ws_echo_backend().await;
    let gw = start(&status_config(
        backend.addr,
        &format!("token = \"{TOKEN}\""),
    ))
    .await;
    for path in ["/", "/status", "/metrics"] {
        let (code, headers, _) = get(&gw, path, None).await;
        assert_eq!(code, 401, "{path}");
        assert!(headers.contains_key("www-authenticate"));
        assert_eq!(get(&gw, path, Some("wrong-token-of-same-len")).await.0, 401);
        assert_eq!(get(&gw, path, Some(TOKEN)).await.0, 200, "{path}");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(&gw, path, None).await.0, 200, "{path}");
    }
    // Nothing secret in the status: not the token.
    let (_, _, body) = get(&gw, "/status", Some(TOKEN)).await;
    assert!(!String::from_utf8_lossy(&body).contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_the_numbers_in_chromium() {
    if !peer_available("chromium", Command::new("chromium").arg("--version"))
        || !peer_available(
            "python3 websockets",
            Command::new("python3").args(["-c", "import websockets"]),
        )
    {
        return;
    }
    let backend = ws_echo_backend().await;
    let gw = start(&status_config(backend.addr, "")).await;
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let mut ws = ws_connect(&gw.url("/chat")).await;
        echo_once(&mut ws, Message::text("on the page")).await;
        tunnels.push(ws);
    }
    let url = format!("http://{}/", gw.gateway.admin_addr().unwrap());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/status_page_check.py"
    );
    // SLUICE_SCREENSHOT=path keeps a picture of the page (for the README).
    let shot = std::env::var("SLUICE_SCREENSHOT").unwrap_or_default();
    let out = tokio::process::Command::new("python3")
        .args([script, &url, "chat", "3", &shot])
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .expect("the page check finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(tunnels);
}

#[tokio::test]
async fn a_failing_server_shows_as_ejected() {
    let dead = dead_addr().await;
    let gw = start(&format!(
        "{}max_fails = 1\nfail_timeout = \"30s\"\n",
        status_config(dead, "")
    ))
    .await;
    let mut c = HttpClient::connect(gw.addr).await;
    let (code, _, _) = c.get("/").await;
    assert_eq!(code, 502);
    let st = status_json(&gw).await;
    let server = &st["upstreams"][0]["servers"][0];
    assert_eq!(server["up"], false, "{server}");
    assert_eq!(server["failed_connects"], 1);
    let left = server["ejected_for_seconds"].as_f64().unwrap();
    assert!(left > 25.0 && left <= 30.0, "{server}");
    assert_eq!(route(&st, "api")["requests"]["5xx"], 1.0);
}
