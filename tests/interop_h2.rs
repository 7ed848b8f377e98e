//! Headless Chromium speaking HTTP/2 to sluice: the built-in echo page loaded over h2
//! (ALPN on a TLS listener), and the page's own WebSocket carried as an extended
//! CONNECT stream on that HTTP/2 connection (RFC 8441), bridged by sluice to the
//! HTTP/1.1 echo upstream.
//!
//! Chromium opens a WebSocket over HTTP/2 only on an h2 connection it already has to
//! the origin whose SETTINGS carried ENABLE_CONNECT_PROTOCOL: here, the page's. The
//! test's certificate is trusted with `--ignore-certificate-errors-spki-list` (the
//! SHA-256 of its public key, computed below), which Chromium honours only with
//! `--user-data-dir`, as the script gives; without it the page fails with
//! ERR_CERT_AUTHORITY_INVALID.
//!
//! Like tests/interop.rs: where Chromium or Python's `websockets` is missing the test
//! says so and passes; under CI (`CI=true`, where `.ci/run` installs both) it fails.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use support::pki::Ca;
use support::process::Sluice;
use support::{HttpClient, metric, peer_available};

/// The base64 SHA-256 of a certificate's SubjectPublicKeyInfo: what Chromium's
/// `--ignore-certificate-errors-spki-list` takes.
fn spki_sha256_base64(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a DER certificate");
    let sha256 = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite")
        .common
        .hash_provider;
    let digest = sha256.hash(cert.tbs_certificate.subject_pki.raw);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Access lines (JSON, target `access`) as they come, until one is a tunnel's: a
/// tunnel's line is written when it ends, after the requests that came before it.
fn access_lines_through_a_tunnel(sluice: &Sluice) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    loop {
        let line = sluice.wait_log("\"target\":\"access\"");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let tunnel = v["fields"]["kind"] == "tunnel";
        lines.push(v["fields"].clone());
        if tunnel {
            return lines;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_the_page_and_opens_its_websocket_over_h2() {
    if !peer_available(
        "python3 with the websockets package",
        Command::new("python3").args(["-c", "import websockets"]),
    ) || !peer_available("chromium", Command::new("chromium").arg("--version"))
    {
        return;
    }
    let ca = Ca::new("chromium-h2");
    let cert = ca.server("localhost", &["localhost"]);
    let spki = spki_sha256_base64(&cert.der);
    let sluice = Sluice::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
tls = {{ cert = "{}", key = "{}" }}
[[routes]]
upstream = "echo"
[upstreams.echo]
builtin = "echo"
"#,
        cert.cert.display(),
        cert.key.display()
    ));

    let message = "hello-over-h2";
    let url = format!(
        "https://localhost:{}/chat?send={message}",
        sluice.http.port()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/browser_h2_check.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args([&url, message, &spki])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the browser check finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("browser check: {stdout}{stderr}");
    assert!(out.status.success(), "{stdout}{stderr}");

    // What Chromium says (DevTools Network events).
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the script's report is JSON ({e}): {stdout}"));
    assert!(
        report["echo"]
            .as_str()
            .unwrap()
            .contains(&format!("< {message}")),
        "the page's WebSocket echoed the message: {report}"
    );
    assert_eq!(report["page_protocol"], "h2", "the page came over h2");
    let ws = &report["websocket"];
    assert_eq!(
        ws["url"],
        format!("wss://localhost:{}/chat", sluice.http.port())
    );
    // An HTTP/1.1 WebSocket handshake is answered 101; an RFC 8441 extended CONNECT
    // on an HTTP/2 stream is answered 200, and Chromium reports that status.
    assert_eq!(
        ws["status"], 200,
        "the WebSocket handshake was an HTTP/2 extended CONNECT: {ws}"
    );

    // What sluice says: the page a GET over h2, the WebSocket a CONNECT tunnel over h2.
    let lines = access_lines_through_a_tunnel(&sluice);
    let page = lines
        .iter()
        .find(|f| f["kind"] == "http" && f["path"] == "/chat")
        .unwrap_or_else(|| panic!("an access line for the page: {lines:?}"));
    assert_eq!(page["protocol"], "h2", "{page}");
    assert_eq!(page["method"], "GET", "{page}");
    assert_eq!(page["status"], 200, "{page}");
    let tunnel = lines.last().unwrap();
    assert_eq!(tunnel["kind"], "tunnel", "{tunnel}");
    assert_eq!(tunnel["protocol"], "h2", "{tunnel}");
    assert_eq!(tunnel["method"], "CONNECT", "{tunnel}");
    assert_eq!(tunnel["path"], "/chat", "{tunnel}");
    assert_eq!(tunnel["route"], "echo", "{tunnel}");
    assert_eq!(tunnel["status"], 200, "{tunnel}");
    // The message went up in one masked frame (6 bytes of header) and came back in
    // one unmasked frame (2 bytes).
    let n = message.len() as u64;
    assert!(tunnel["bytes_in"].as_u64().unwrap() >= n + 6, "{tunnel}");
    assert!(tunnel["bytes_out"].as_u64().unwrap() >= n + 2, "{tunnel}");

    // Every connection Chromium made was HTTP/2: none fell back to HTTP/1.1.
    let mut admin = HttpClient::connect(sluice.admin).await;
    let (status, _, body) = admin.get("/metrics").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let negotiated = |p: &str| {
        metric(
            &text,
            &format!("sluice_connections_negotiated_total{{listener=\"http\",protocol=\"{p}\"}}"),
        )
    };
    assert!(negotiated("h2") >= 1.0, "{text}");
    assert_eq!(negotiated("http1"), 0.0, "{text}");
}
