//! Trusted proxies and request IDs: which forwarding headers sluice believes, the
//! client address it takes from them (for X-Forwarded-For, per-client limits and the
//! access log), and the X-Request-Id that follows each request and tunnel.

mod support;

use support::process::Sluice;
use support::*;

fn id_of(response: &str) -> String {
    header_of(response, "x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id: {response}"))
        .to_owned()
}

/// What the mirror upstream saw of a header (it answers with the request's headers).
fn seen<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let body = response.split_once("\r\n\r\n")?.1;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

fn get(extra: &str) -> Vec<u8> {
    format!("GET /who HTTP/1.1\r\nHost: test\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn an_untrusted_client_cannot_choose_its_address_or_its_id() {
    let (mirror, _) = mirror_backend().await;
    let gw = start(&config(&[mirror], "")).await;
    let response = raw_exchange(
        gw.addr,
        &get("X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Request-Id: mine\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"),
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert_eq!(seen(&response, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen(&response, "forwarded"), None);
    let id = id_of(&response);
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(seen(&response, "x-request-id"), Some(id.as_str()));
    // W3C trace context passes untouched.
    assert_eq!(
        seen(&response, "traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    // Every request gets its own.
    let again = raw_exchange(gw.addr, &get("")).await;
    assert_ne!(id_of(&again), id);
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_and_keeps_its_id() {
    let (mirror, _) = mirror_backend().await;
    let gw = start(&listener_config(
        "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]",
        &[mirror],
        "",
    ))
    .await;
    let response = raw_exchange(
        gw.addr,
        &get("X-Forwarded-For: 6.6.6.6, 203.0.113.9\r\nX-Forwarded-For: 10.1.2.3\r\nX-Request-Id: edge-7f3a\r\n"),
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    // The chain is kept and this hop appended.
    assert_eq!(
        seen(&response, "x-forwarded-for"),
        Some("6.6.6.6, 203.0.113.9, 10.1.2.3, 127.0.0.1")
    );
    assert_eq!(seen(&response, "x-request-id"), Some("edge-7f3a"));
    assert_eq!(id_of(&response), "edge-7f3a");
    // An ID that could not sit in a log line as it is gets replaced.
    let response = raw_exchange(gw.addr, &get("X-Request-Id: a\tb\r\n")).await;
    assert_eq!(id_of(&response).len(), 32);
}

#[tokio::test]
async fn the_handshake_rate_counts_the_named_client() {
    let backend = ws_echo_backend().await;
    let gw = start(&listener_config(
        "trusted_proxies = [\"127.0.0.0/8\"]",
        &[backend.addr],
        "[limits]\nhandshakes_per_second_per_ip = 0.001\nhandshake_burst_per_ip = 1\n",
    ))
    .await;
    let from = |ip: &str| handshake_request("/", &format!("X-Forwarded-For: {ip}\r\n"));
    let first = raw_exchange_head(gw.addr, &from("203.0.113.1")).await;
    assert_eq!(status_of(&first), 101, "{first}");
    let again = raw_exchange_head(gw.addr, &from("203.0.113.1")).await;
    assert_eq!(status_of(&again), 429, "{again}");
    // Another client behind the same proxy has its own budget.
    let other = raw_exchange_head(gw.addr, &from("203.0.113.2")).await;
    assert_eq!(status_of(&other), 101, "{other}");
    // The 101 carries the request's ID too.
    assert_eq!(id_of(&other).len(), 32);
}

/// Sends a raw request and returns the response head only (a 101 leaves the
/// connection open).
async fn raw_exchange_head(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    within("a response head", read_head(&mut s))
        .await
        .expect("a response head")
}

#[tokio::test]
async fn access_lines_name_the_client_and_the_request_id() {
    let (mirror, _) = mirror_backend().await;
    let toml = format!(
        "[log]\nformat = \"json\"\n{}",
        listener_config("trusted_proxies = [\"127.0.0.1\"]", &[mirror], "")
    );
    let sluice = Sluice::start(&toml);
    let response = raw_exchange(
        sluice.http,
        &get("X-Forwarded-For: 198.51.100.4\r\nX-Request-Id: lb-42\r\n"),
    )
    .await;
    assert_eq!(status_of(&response), 200);
    let line = sluice.wait_log("\"target\":\"access\"");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["client"], "198.51.100.4", "{line}");
    assert_eq!(v["fields"]["request_id"], "lb-42", "{line}");
}

#[tokio::test]
async fn hashing_by_client_ip_uses_the_named_client() {
    let a = named_ws_backend("a").await;
    let b = named_ws_backend("b").await;
    let gw = start(&listener_config(
        "trusted_proxies = [\"127.0.0.1\"]",
        &[a.addr, b.addr],
        "balance = \"hash\"\nhash_key = \"client_ip\"\n",
    ))
    .await;
    let server_for = |ip: String| {
        let url = gw.url("/");
        async move {
            let mut req =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    url.as_str(),
                )
                .unwrap();
            req.headers_mut()
                .insert("x-forwarded-for", ip.parse().unwrap());
            let (_ws, resp) = within("handshake", tokio_tungstenite::connect_async(req))
                .await
                .unwrap();
            resp.headers()["x-backend"].to_str().unwrap().to_owned()
        }
    };
    // Every connection comes from 127.0.0.1; only the named client can spread them.
    let mut seen = std::collections::HashSet::new();
    for i in 0..16 {
        let ip = format!("203.0.113.{i}");
        let first = server_for(ip.clone()).await;
        assert_eq!(
            server_for(ip).await,
            first,
            "the same client, the same server"
        );
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "16 clients all hashed to {seen:?}");
}
