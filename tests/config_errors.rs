//! Configuration errors: each names the file, the line and column, and the problem;
//! every problem in a file is reported in one run.

mod support;

use std::path::Path;
use std::process::Command;

fn problems(toml: &str) -> String {
    match sluice::config::parse(toml, Path::new("bad.toml")) {
        Ok(_) => panic!("accepted:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

const GOOD_TAIL: &str = r#"
[[routes]]
path = "/"
upstream = "b"

[upstreams.b]
servers = ["127.0.0.1:9001"]
"#;

#[test]
fn unknown_keys_are_named_with_their_position() {
    let toml = format!(
        "[[listeners]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\nlisen = \"x\"\n{GOOD_TAIL}"
    );
    let msg = problems(&toml);
    assert!(
        msg.starts_with("bad.toml:4:1: unknown field `lisen`"),
        "{msg}"
    );
}

#[test]
fn a_route_to_an_unknown_upstream_is_named() {
    let toml = r#"
[[listeners]]
listen = "127.0.0.1:0"

[[routes]]
path = "/"
upstream = "chatt"

[upstreams.chat]
servers = ["127.0.0.1:9001"]
"#;
    let msg = problems(toml);
    assert_eq!(
        msg,
        "bad.toml:7:12: route 1 names upstream \"chatt\", which is not defined (defined: chat)"
    );
}

#[test]
fn two_listeners_on_one_address() {
    let toml = format!(
        "[[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:8080\"\n[[listeners]]\nname = \"b\"\nlisten = \"127.0.0.1:8080\"\n{GOOD_TAIL}"
    );
    let msg = problems(&toml);
    assert_eq!(
        msg,
        "bad.toml:6:10: listener \"b\" listens on 127.0.0.1:8080, which listener \"a\" already uses"
    );
}

#[test]
fn an_empty_server_list() {
    let toml = "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = []\n";
    let msg = problems(toml);
    assert_eq!(
        msg,
        "bad.toml:6:11: upstream \"b\" has an empty server list: list at least one server"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let toml = r#"
[admin]
listen = "localhost"

[timeouts]
connect = "5 parsecs"
idle = "0s"

[limits]
max_request_header_bytes = 10

[[listeners]]
name = "http"
listen = "127.0.0.1:8080"

[[listeners]]
name = "http"
listen = "nowhere"

[[routes]]
path = "ws"
upstream = "b"

[[routes]]
host = "https://x.example.com/"
upstream = "missing"

[upstreams.b]
servers = ["no-port", "127.0.0.1:99999"]

[upstreams.c]
"#;
    let msg = problems(toml);
    let expected = [
        "bad.toml:3:10: admin listen `localhost` is not an IP address and port",
        "bad.toml:6:11: timeouts.connect = \"5 parsecs\" is not a duration",
        "bad.toml:7:8: timeouts.idle must be longer than zero",
        "bad.toml:10:28: limits.max_request_header_bytes = 10 is out of range: it must be from 1024 to 1048576",
        "bad.toml:29:12: upstream \"b\": server `no-port` is not host:port",
        "bad.toml:29:23: upstream \"b\": server `127.0.0.1:99999` is not host:port",
        "bad.toml:31:12: upstream \"c\" has no `servers`",
        "bad.toml:18:10: listener listen `nowhere` is not an IP address and port",
        "bad.toml:21:8: route path \"ws\" must start with `/`",
        "bad.toml:26:12: route 2 names upstream \"missing\", which is not defined (defined: b, c)",
        "bad.toml:25:8: route host \"https://x.example.com/\" is not a host name",
    ];
    for e in expected {
        assert!(msg.contains(e), "missing:\n  {e}\nin:\n{msg}");
    }
    assert_eq!(
        msg.lines().filter(|l| l.starts_with("bad.toml:")).count(),
        expected.len(),
        "{msg}"
    );
}

#[test]
fn no_listeners_or_routes() {
    let msg = problems("");
    assert!(msg.contains("bad.toml: no [[listeners]]"), "{msg}");
    assert!(msg.contains("bad.toml: no [[routes]]"), "{msg}");
}

#[test]
fn syntax_errors_have_positions() {
    let msg = problems("[[listeners]]\nlisten = \"127.0.0.1:0\nname = 1\n");
    assert!(msg.starts_with("bad.toml:2:"), "{msg}");
}

#[test]
fn check_flag_accepts_the_shipped_configs_and_rejects_bad_ones() {
    let bin = env!("CARGO_BIN_EXE_sluice");
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["config/sluice.toml", "config/example.toml"] {
        let out = Command::new(bin)
            .args(["-c", &format!("{root}/{file}"), "--check"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).ends_with(": ok\n"));
    }

    // The TLS example, with the test certificate its comment tells how to make.
    let dir = tempfile::tempdir().unwrap();
    let ca = support::pki::Ca::new("example");
    let cert = ca.server("server", &["localhost"]);
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::copy(&cert.cert, dir.path().join("certs/server.pem")).unwrap();
    std::fs::copy(&cert.key, dir.path().join("certs/server.key")).unwrap();
    std::fs::copy(
        format!("{root}/config/tls.toml"),
        dir.path().join("tls.toml"),
    )
    .unwrap();
    let out = Command::new(bin)
        .args([
            "-c",
            dir.path().join("tls.toml").to_str().unwrap(),
            "--check",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tls.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["-c", bad.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:4:12: route 1 names upstream \"x\", which is not defined",
            bad.display()
        )),
        "{err}"
    );

    let out = Command::new(bin)
        .args(["-c", "/nonexistent/sluice.toml", "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/sluice.toml: cannot read the file")
    );
}

#[test]
fn http2_settings_are_checked_with_every_problem_named() {
    let toml = format!(
        "[http2]\nmax_concurrent_streams = 0\nkeepalive_interval = \"soon\"\nkeepalive_timeout = \"0s\"\nstream_window = 100\nconnection_window = 4294967296\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n{GOOD_TAIL}"
    );
    let msg = problems(&toml);
    for needle in [
        "bad.toml:2:26: http2.max_concurrent_streams = 0 is out of range: it must be from 1 to 10000",
        "bad.toml:3:22: http2.keepalive_interval = \"soon\" is not a duration",
        "bad.toml:4:21: http2.keepalive_timeout must be longer than zero",
        "bad.toml:5:17: http2.stream_window = 100 is out of range",
        "bad.toml:6:21: http2.connection_window = 4294967296 is out of range",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in\n{msg}");
    }
}

#[test]
fn http2_is_on_for_tls_listeners_and_opt_in_for_plain_ones() {
    let toml = format!(
        "[http2]\nmax_concurrent_streams = 64\n[[listeners]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nname = \"h2c\"\nlisten = \"127.0.0.1:0\"\nhttp2 = true\n{GOOD_TAIL}"
    );
    let s = sluice::config::parse(&toml, Path::new("ok.toml")).unwrap();
    assert_eq!(s.http2.max_concurrent_streams, 64);
    assert_eq!(
        s.http2.keepalive_interval,
        Some(std::time::Duration::from_secs(20))
    );
    let by_name = |n: &str| s.listeners.iter().find(|l| l.name == n).unwrap().http2;
    assert!(!by_name("plain"));
    assert!(by_name("h2c"));
}

#[test]
fn an_upstream_protocol_must_be_known_and_builtins_speak_http1() {
    let toml = r#"
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
path = "/"
upstream = "a"
[[routes]]
path = "/e"
upstream = "e"
[upstreams.a]
servers = ["127.0.0.1:9001"]
protocol = "h3"
[upstreams.e]
builtin = "echo"
protocol = "h2"
"#;
    let msg = problems(toml);
    assert!(
        msg.contains("bad.toml:12:12: protocol = \"h3\" is not known: use \"http1\" or \"h2\""),
        "{msg}"
    );
    assert!(
        msg.contains("bad.toml:15:12: upstream \"e\" is builtin, which speaks HTTP/1.1 only"),
        "{msg}"
    );
}

#[test]
fn a_trusted_proxy_that_is_not_an_address_is_named() {
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\", \"lb.internal\"]\n{GOOD_TAIL}"
    );
    let msg = problems(&toml);
    assert!(
        msg.contains(
            "bad.toml:3:34: trusted_proxies: \"10.0.0.0/33\" is not an IP address or network"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("bad.toml:3:49: trusted_proxies: \"lb.internal\" is not"),
        "{msg}"
    );
}

#[test]
fn a_close_code_that_is_never_sent_is_named_with_its_position() {
    let toml = format!(
        "[websocket]\nclose_code = 1006\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n{GOOD_TAIL}"
    );
    assert_eq!(
        problems(&toml),
        "bad.toml:2:14: websocket.close_code = 1006 is never sent on the wire (1005, 1006 and 1015 only report a Close without a code, a connection lost without a Close, and a failed TLS handshake): use 1000, 1001, 1008, 1011, 1012, 1013, 1014, or one from 3000 to 4999"
    );
}

#[test]
fn unknown_websocket_keys_are_named_in_the_table_and_on_a_route() {
    let toml = format!(
        "[websocket]\nclose_timeout = \"5s\"\nping_every = \"30s\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n{GOOD_TAIL}"
    );
    let msg = problems(&toml);
    assert!(
        msg.starts_with("bad.toml:3:1: unknown field `ping_every`, expected one of `close_code`"),
        "{msg}"
    );

    let toml = "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"b\"\nwebsocket = { max_message_size = 1024 }\n[upstreams.b]\nservers = [\"127.0.0.1:9001\"]\n";
    let msg = problems(toml);
    assert!(
        msg.starts_with("bad.toml:5:15: unknown field `max_message_size`"),
        "{msg}"
    );
}

#[test]
fn a_route_websocket_override_is_checked_and_named_by_route() {
    let toml = r#"
[[listeners]]
listen = "127.0.0.1:0"

[[routes]]
path = "/"
upstream = "b"

[[routes]]
path = "/ws"
upstream = "b"
websocket = { close_code = 999, ping_interval = "100ms" }

[upstreams.b]
servers = ["127.0.0.1:9001"]
"#;
    let msg = problems(toml);
    assert_eq!(
        msg,
        "bad.toml:12:28: route 2: websocket.close_code = 999 is not a Close code a proxy may send: use 1000, 1001, 1008, 1011, 1012, 1013, 1014, or one from 3000 to 4999\n\
         bad.toml:12:49: route 2: websocket.ping_interval = \"100ms\" is too short: it must be at least 1s"
    );
}

#[test]
fn websocket_problems_are_reported_with_the_rest() {
    let toml = r#"
[limits]
max_connections = 0

[websocket]
close_code = 1002
close_timeout = "2h"
ping_interval = "never"
ping_timeout = "0s"
max_message_bytes = 0
max_frame_bytes = -1
max_messages_per_second = 0.0

[[listeners]]
listen = "127.0.0.1:0"

[[routes]]
path = "ws"
upstream = "b"
websocket = { close_timeout = "50ms", max_messages_per_second = inf }

[upstreams.b]
servers = ["127.0.0.1:9001"]
"#;
    let msg = problems(toml);
    let expected = [
        "bad.toml:3:19: limits.max_connections = 0 is out of range",
        "bad.toml:6:14: websocket.close_code = 1002 is not a Close code a proxy may send",
        "bad.toml:7:17: websocket.close_timeout = \"2h\" is out of range: it must be from 100ms to 1h",
        "bad.toml:8:17: websocket.ping_interval = \"never\" is not a duration",
        "bad.toml:9:16: websocket.ping_timeout must be longer than zero",
        "bad.toml:10:21: websocket.max_message_bytes = 0 is out of range: it must be from 1 to 9007199254740992",
        "bad.toml:11:19: websocket.max_frame_bytes = -1 is out of range",
        "bad.toml:12:27: websocket.max_messages_per_second = 0 must be above 0",
        "bad.toml:18:8: route path \"ws\" must start with `/`",
        "bad.toml:20:31: route 1: websocket.close_timeout = \"50ms\" is out of range",
        "bad.toml:20:65: route 1: websocket.max_messages_per_second = inf must be above 0",
    ];
    for e in expected {
        assert!(msg.contains(e), "missing:\n  {e}\nin:\n{msg}");
    }
    assert_eq!(msg.lines().count(), expected.len(), "{msg}");
}

#[test]
fn a_route_websocket_table_overlays_the_file_wide_one_key_by_key() {
    use sluice::config::WebSocket;
    use std::time::Duration;

    let toml = r#"
[websocket]
close_code = 1012
ping_interval = "30s"

[[listeners]]
listen = "127.0.0.1:0"

[[routes]]
path = "/"
upstream = "b"

[[routes]]
path = "/big"
upstream = "b"
websocket = { max_message_bytes = 1048576, close_code = 4000 }

[[routes]]
path = "/quiet"
upstream = "b"
websocket = { ping_interval = "off" }

[upstreams.b]
servers = ["127.0.0.1:9001"]
"#;
    let s = sluice::config::parse(toml, Path::new("ok.toml")).unwrap();
    let table = WebSocket {
        close_code: 1012,
        ping_interval: Some(Duration::from_secs(30)),
        ..WebSocket::default()
    };
    assert_eq!(s.websocket, table);
    let route = |path: &str| s.routes.iter().find(|r| r.path == path).unwrap().websocket;
    assert_eq!(route("/"), table);
    assert_eq!(
        route("/big"),
        WebSocket {
            close_code: 4000,
            max_message_bytes: Some(1_048_576),
            ..table
        }
    );
    assert_eq!(
        route("/quiet"),
        WebSocket {
            ping_interval: None,
            ..table
        }
    );
    // Untouched keys keep their defaults.
    assert_eq!(table.close_timeout, Duration::from_secs(5));
    assert_eq!(table.ping_timeout, Duration::from_secs(10));
    assert_eq!(table.max_frame_bytes, None);
    assert_eq!(table.max_messages_per_second, None);
}
