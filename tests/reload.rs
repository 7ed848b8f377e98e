//! Live reload: a new configuration swaps in whole or not at all, open tunnels keep
//! running, and only tunnels to removed servers are drained, spread out in time.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn settings(toml: &str) -> sluice::Settings {
    sluice::config::parse(toml, Path::new("reload.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// A configuration with listener "http", routes `/a` -> upstream a and `/b` -> b.
fn two_routes(a: &[SocketAddr], b: &[SocketAddr], extra: &str) -> String {
    let list = |s: &[SocketAddr]| {
        s.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
[[routes]]
path = "/a"
upstream = "a"
[[routes]]
path = "/b"
upstream = "b"
[upstreams.a]
servers = [{}]
[upstreams.b]
servers = [{}]
{extra}
"#,
        list(a),
        list(b)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_100_open_tunnels_cuts_none_and_new_handshakes_follow_the_new_routes() {
    raise_fd_limit();
    let one = named_ws_backend("one").await;
    let two = named_ws_backend("two").await;
    let gw = start(&two_routes(&[one.addr], &[two.addr], "")).await;

    let mut tunnels = Vec::new();
    for _ in 0..100 {
        let (ws, name) = ws_connect_which(&gw.url("/a")).await;
        assert_eq!(name, "one");
        tunnels.push(ws);
    }
    // Swap the routes: /a now goes to "two" and /b to "one". Both servers stay.
    gw.gateway
        .reload(settings(&two_routes(&[two.addr], &[one.addr], "")))
        .await
        .unwrap();

    for (i, ws) in tunnels.iter_mut().enumerate() {
        echo_once(ws, Message::text(format!("still open {i}"))).await;
    }
    let (_, name) = ws_connect_which(&gw.url("/a")).await;
    assert_eq!(name, "two");
    let (_, name) = ws_connect_which(&gw.url("/b")).await;
    assert_eq!(name, "one");
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(&text, "sluice_config_reloads_total{result=\"ok\"}"),
        1.0
    );
    // The hundred, once the two probes' own tunnels have closed.
    eventually("the probes' tunnels close", || async {
        metric(
            &metrics_text(&gw).await,
            "sluice_websocket_tunnels_active{route=\"a\"}",
        ) == 100.0
    })
    .await;
}

#[tokio::test]
async fn a_bad_reload_keeps_the_running_configuration() {
    let one = named_ws_backend("one").await;
    let gw = start(&two_routes(&[one.addr], &[one.addr], "")).await;
    let mut ws = ws_connect(&gw.url("/a")).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(
        &file,
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"missing\"\n",
    )
    .unwrap();
    let err = gw.gateway.reload_file(&file).await.unwrap_err().to_string();
    assert!(err.contains("names upstream \"missing\""), "{err}");

    echo_once(&mut ws, Message::text("unaffected")).await;
    let (_, name) = ws_connect_which(&gw.url("/b")).await;
    assert_eq!(name, "one", "the old routes still serve");
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(&text, "sluice_config_reloads_total{result=\"error\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "sluice_config_reloads_total{result=\"ok\"}"),
        0.0
    );
}

#[tokio::test]
async fn a_reload_that_cannot_bind_changes_nothing() {
    let one = named_ws_backend("one").await;
    let gw = start(&two_routes(&[one.addr], &[one.addr], "")).await;
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let busy = taken.local_addr().unwrap();
    let new = two_routes(&[one.addr], &[one.addr], "").replace("path = \"/b\"", "path = \"/c\"")
        + &format!("[[listeners]]\nname = \"extra\"\nlisten = \"{busy}\"\n");
    let err = gw
        .gateway
        .reload(settings(&new))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot listen on"), "{err}");
    // /b is still routed: the new routes were not installed either.
    let (_, name) = ws_connect_which(&gw.url("/b")).await;
    assert_eq!(name, "one");
}

#[tokio::test]
async fn tunnels_to_a_removed_server_drain_spread_over_the_drain_period() {
    let keep = named_ws_backend("keep").await;
    let gone = named_ws_backend("gone").await;
    let extra = "[timeouts]\ndrain = \"1s\"\n";
    let gw = start(&two_routes(&[keep.addr], &[gone.addr], extra)).await;
    let mut kept = ws_connect(&gw.url("/a")).await;
    let mut doomed = Vec::new();
    for _ in 0..20 {
        doomed.push(ws_connect(&gw.url("/b")).await);
    }
    let reloaded = Instant::now();
    // Upstream b now points at "keep": "gone" left the configuration.
    gw.gateway
        .reload(settings(&two_routes(&[keep.addr], &[keep.addr], extra)))
        .await
        .unwrap();
    let closes = doomed.into_iter().map(|mut ws| async move {
        // Each gets a Close 1001 (Going Away) at its moment, not a TCP cut.
        let end = within("drained", ws.next()).await;
        match end {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected a Close 1001, got {other:?}"),
        }
        Instant::now()
    });
    let mut times: Vec<Instant> = futures_util::future::join_all(closes).await;
    times.sort();
    let first = times[0] - reloaded;
    let last = times[times.len() - 1] - reloaded;
    assert!(
        last <= Duration::from_millis(1500),
        "drained after {last:?}"
    );
    assert!(
        last - first >= Duration::from_millis(300),
        "closed together: {first:?}..{last:?}"
    );
    // The kept server's tunnel is untouched, and the removed one is gone from metrics.
    echo_once(&mut kept, Message::text("kept")).await;
    let text = metrics_text(&gw).await;
    assert!(
        !text.contains(&format!("server=\"{}\"", gone.addr)),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!(
                "sluice_upstream_server_up{{server=\"{}\",upstream=\"a\"}}",
                keep.addr
            )
        ),
        1.0
    );
}

#[tokio::test]
async fn a_server_that_moved_upstream_keeps_its_tunnels_until_it_is_removed() {
    let moving = named_ws_backend("moving").await;
    let other = named_ws_backend("other").await;
    let extra = "[timeouts]\ndrain = \"200ms\"\n";
    let gw = start(&two_routes(&[moving.addr], &[other.addr], extra)).await;
    let mut ws = ws_connect(&gw.url("/a")).await;
    // "moving" goes from upstream a to upstream b: its tunnel did not have to be cut.
    gw.gateway
        .reload(settings(&two_routes(&[other.addr], &[moving.addr], extra)))
        .await
        .unwrap();
    echo_once(&mut ws, Message::text("moved")).await;
    // Then it leaves the configuration: the tunnel opened before the move drains too.
    gw.gateway
        .reload(settings(&two_routes(&[other.addr], &[other.addr], extra)))
        .await
        .unwrap();
    let end = within("drained", ws.next()).await;
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
}

#[tokio::test]
async fn listeners_are_added_and_removed_and_their_connections_kept() {
    let one = named_ws_backend("one").await;
    let base = two_routes(&[one.addr], &[one.addr], "");
    let with_extra = format!("{base}\n[[listeners]]\nname = \"extra\"\nlisten = \"127.0.0.1:0\"\n");
    let gw = start(&with_extra).await;
    let extra = gw.gateway.listener_addr("extra").unwrap();
    let mut on_extra = ws_connect(&format!("ws://{extra}/a")).await;

    gw.gateway.reload(settings(&base)).await.unwrap();
    assert!(gw.gateway.listener_addr("extra").is_none());
    eventually("the removed listener stops accepting", || async {
        tokio::net::TcpStream::connect(extra).await.is_err()
    })
    .await;
    echo_once(&mut on_extra, Message::text("accepted before the reload")).await;

    let added = format!("{base}\n[[listeners]]\nname = \"new\"\nlisten = \"127.0.0.1:0\"\n");
    gw.gateway.reload(settings(&added)).await.unwrap();
    let new = gw.gateway.listener_addr("new").unwrap();
    let mut ws = ws_connect(&format!("ws://{new}/a")).await;
    echo_once(&mut ws, Message::text("on the new listener")).await;
    // The kept listener kept its socket.
    assert_eq!(gw.gateway.listener_addr("http"), Some(gw.addr));
}

#[tokio::test]
async fn the_config_hash_and_load_time_are_exposed() {
    let one = named_ws_backend("one").await;
    let first = two_routes(&[one.addr], &[one.addr], "");
    let gw = start(&first).await;
    let hash = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("sluice_config_info{hash=\""))
            .map(|rest| rest.split('"').next().unwrap().to_owned())
            .unwrap()
    };
    let before = metrics_text(&gw).await;
    assert!(metric(&before, "sluice_config_loaded_timestamp_seconds") > 1.7e9);
    gw.gateway
        .reload(settings(&format!("{first}\n# changed\n")))
        .await
        .unwrap();
    let after = metrics_text(&gw).await;
    assert_ne!(hash(&before), hash(&after));
    assert_eq!(after.matches("sluice_config_info{").count(), 1);
}

#[tokio::test]
async fn sighup_reloads_routes_on_the_real_binary() {
    let one = named_ws_backend("one").await;
    let two = named_ws_backend("two").await;
    let sluice = support::process::Sluice::start(&two_routes(&[one.addr], &[one.addr], ""));
    let mut ws = ws_connect(&format!("ws://{}/a", sluice.http)).await;
    std::fs::write(
        sluice.config_path(),
        two_routes(&[two.addr], &[one.addr], ""),
    )
    .unwrap();
    sluice.signal("HUP");
    sluice.wait_log("configuration reloaded");
    let (_, name) = ws_connect_which(&format!("ws://{}/a", sluice.http)).await;
    assert_eq!(name, "two");
    echo_once(&mut ws, Message::text("through the reload")).await;
    ws.send(Message::Close(None)).await.unwrap();
}
