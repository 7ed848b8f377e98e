//! What operators see: metrics that move as traffic flows, the admin endpoints, access
//! log lines, `promtool check metrics`, and a real Prometheus scraping sluice.
//!
//! The Prometheus tools are outside programs: where they are missing the test says so
//! and passes, except under CI (`CI=true`), where `.ci/run` installs them.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::process::Sluice;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// Polls the gateway's metrics until `series` has `value`.
async fn await_metric(gw: &TestGateway, series: &str, value: f64) {
    let deadline = Instant::now() + STEP;
    loop {
        let text = metrics_text(gw).await;
        if metric(&text, series) == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn admin_endpoints_answer_and_nothing_else_does() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "").await;
    let admin = gw.gateway.admin_addr().unwrap();
    for (path, status) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/", 200),
        ("/status", 200),
        ("/favicon.ico", 204),
        ("/admin", 404),
    ] {
        let resp = raw_exchange(
            admin,
            format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), status, "{path}: {resp}");
    }
    let resp = raw_exchange(
        admin,
        b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 405);
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let backend = ws_echo_backend().await;
    let (http_addr, _) = mirror_backend().await;
    let gw = start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
[[routes]]
name = "chat"
path = "/ws"
upstream = "ws"
[[routes]]
name = "api"
path = "/api"
upstream = "api"
[upstreams.ws]
servers = ["{}"]
[upstreams.api]
servers = ["{http_addr}"]
"#,
        backend.addr
    ))
    .await;

    let mut ws = ws_connect(&gw.url("/ws")).await;
    await_metric(&gw, "sluice_websocket_tunnels_active{route=\"chat\"}", 1.0).await;
    await_metric(&gw, "sluice_connections_active{listener=\"http\"}", 1.0).await;
    echo_once(&mut ws, Message::binary(vec![1u8; 5000])).await;
    let text = metrics_text(&gw).await;
    assert!(
        metric(
            &text,
            "sluice_tunnel_bytes_total{direction=\"client_to_upstream\",route=\"chat\"}"
        ) >= 5000.0
    );
    assert!(
        metric(
            &text,
            "sluice_tunnel_bytes_total{direction=\"upstream_to_client\",route=\"chat\"}"
        ) >= 5000.0
    );
    assert_eq!(
        metric(
            &text,
            "sluice_upstream_connect_duration_seconds_count{upstream=\"ws\"}"
        ),
        1.0
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    drop(ws);
    await_metric(&gw, "sluice_websocket_tunnels_active{route=\"chat\"}", 0.0).await;
    await_metric(&gw, "sluice_connections_active{listener=\"http\"}", 0.0).await;
    await_metric(
        &gw,
        "sluice_tunnel_duration_seconds_count{route=\"chat\"}",
        1.0,
    )
    .await;

    let mut c = HttpClient::connect(gw.addr).await;
    for _ in 0..3 {
        assert_eq!(c.get("/api/x").await.0, 200);
    }
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_http_requests_total{route=\"api\",status=\"200\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "sluice_http_request_duration_seconds_count{route=\"api\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(&text, "sluice_connections_total{listener=\"http\"}"),
        2.0
    );
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "sluice_build_info{version=\"",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
}

#[tokio::test]
async fn promtool_accepts_the_metrics() {
    if !peer_available(
        "promtool",
        std::process::Command::new("promtool").arg("--version"),
    ) {
        return;
    }
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "").await;
    // Traffic first, so every family has series.
    let mut ws = ws_connect(&gw.url("/")).await;
    echo_once(&mut ws, Message::text("x")).await;
    let _ = raw_exchange(gw.addr, b"GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let text = metrics_text(&gw).await;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .await
        .unwrap();
    let out = within("promtool", child.wait_with_output()).await.unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_real_prometheus_scrapes_sluice() {
    if !peer_available(
        "prometheus",
        std::process::Command::new("prometheus").arg("--version"),
    ) {
        return;
    }
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "").await;
    let admin = gw.gateway.admin_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [\"{admin}\"]\n"),
    )
    .unwrap();
    let mut prom = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Prometheus logs the port it was given: `msg="Listening on" address=127.0.0.1:N`.
    let mut lines = BufReader::new(prom.stderr.take().unwrap()).lines();
    let api: SocketAddr = within("prometheus listening", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("Listening on") {
                let addr = line
                    .split("address=")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap();
                return addr.parse().unwrap();
            }
        }
        panic!("prometheus exited");
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let query = |q: &'static str| async move {
        let mut c = HttpClient::connect(api).await;
        let (status, _, body) = c.get(&format!("/api/v1/query?query={q}")).await;
        // 503 while Prometheus is still starting: not an answer yet.
        if status != 200 {
            return String::new();
        }
        String::from_utf8(body.to_vec()).unwrap()
    };
    // Scrapes come every second; allow a few for the first to land.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = query("up").await;
        if up.contains("\"job\":\"sluice\"") && up.contains(",\"1\"]") {
            break;
        }
        assert!(Instant::now() < deadline, "up never became 1: {up}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let build = query("sluice_build_info").await;
    assert!(
        build.contains("\"__name__\":\"sluice_build_info\""),
        "{build}"
    );
    let connections = query("sluice_connections_total").await;
    assert!(
        connections.contains("\"listener\":\"http\""),
        "{connections}"
    );
    let _ = prom.kill().await;
}

#[tokio::test]
async fn access_lines_for_requests_and_tunnels() {
    let backend = ws_echo_backend().await;
    let (http_addr, _) = mirror_backend().await;
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
[[routes]]
name = "chat"
path = "/ws"
upstream = "ws"
[[routes]]
name = "api"
upstream = "api"
[upstreams.ws]
servers = ["{}"]
[upstreams.api]
servers = ["{http_addr}"]
"#,
        backend.addr
    );
    let sluice = Sluice::start(&toml);
    let resp = raw_exchange(
        sluice.http,
        b"POST /api/items?token=secret HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(status_of(&resp), 200);
    let line = sluice.wait_log("\"target\":\"access\"");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = &v["fields"];
    assert_eq!(f["kind"], "http");
    assert_eq!(f["listener"], "http");
    assert_eq!(f["method"], "POST");
    assert_eq!(f["host"], "shop.test");
    assert_eq!(
        f["path"], "/api/items",
        "the query string stays out by default"
    );
    assert_eq!(f["route"], "api");
    assert_eq!(f["server"], http_addr.to_string());
    assert_eq!(f["status"], 200);
    assert_eq!(f["bytes_in"], 5);
    assert!(f["bytes_out"].as_u64().unwrap() > 5);
    assert!(f["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(f["duration_ms"].as_f64().is_some());

    let _ = raw_exchange(sluice.http, b"GET /missing HTTP/1.1\r\n\r\n").await;
    let line = sluice.wait_log("\"target\":\"access\"");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["status"], 400);

    let mut ws = ws_connect(&format!("ws://{}/ws/room", sluice.http)).await;
    echo_once(&mut ws, Message::text("0123456789")).await;
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    drop(ws);
    let line = sluice.wait_log("\"kind\":\"tunnel\"");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = &v["fields"];
    assert_eq!(f["route"], "chat");
    assert_eq!(f["status"], 101);
    assert_eq!(f["path"], "/ws/room");
    assert_eq!(f["end"], "upstream_closed");
    assert!(f["bytes_in"].as_u64().unwrap() >= 10);
    assert!(f["bytes_out"].as_u64().unwrap() >= 10);
    // The first Close was the client's, without a code (1005); one message each way.
    assert_eq!(f["close_code"], 1005);
    assert_eq!(f["close_from"], "client");
    assert_eq!(f["messages_in"], 1);
    assert_eq!(f["messages_out"], 1);
}
