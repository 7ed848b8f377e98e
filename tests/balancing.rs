//! Load balancing across servers: each policy's distribution over many handshakes,
//! weights, and consistent hashing's stickiness.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use support::*;

async fn backends(n: usize) -> Vec<WsBackend> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(named_ws_backend(&format!("s{i}")).await);
    }
    out
}

fn upstream_config(servers: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
[[routes]]
upstream = "backend"
[upstreams.backend]
servers = [{servers}]
{extra}
"#
    )
}

fn plain(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opens `n` handshakes in turn (closing each) and counts which server took each.
async fn spread(
    gw: &TestGateway,
    n: usize,
    path: impl Fn(usize) -> String,
) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for i in 0..n {
        let (ws, name) = ws_connect_which(&gw.url(&path(i))).await;
        drop(ws);
        *seen.entry(name).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn round_robin_follows_the_weights() {
    let b = backends(2).await;
    let servers = format!(
        "{{ addr = \"{}\", weight = 3 }}, \"{}\"",
        b[0].addr, b[1].addr
    );
    let gw = start(&upstream_config(&servers, "")).await;
    let seen = spread(&gw, 40, |_| "/".into()).await;
    assert_eq!(seen["s0"], 30, "{seen:?}");
    assert_eq!(seen["s1"], 10, "{seen:?}");
}

#[tokio::test]
async fn least_connections_counts_open_tunnels() {
    let b = backends(3).await;
    let addrs: Vec<_> = b.iter().map(|b| b.addr).collect();
    let gw = start(&upstream_config(
        &plain(&addrs),
        "balance = \"least_connections\"",
    ))
    .await;
    // Keep every tunnel open: each new one must go to a least loaded server, so 30
    // tunnels end up 10 per server.
    let mut open: Vec<(Client, String)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let (ws, name) = ws_connect_which(&gw.url("/")).await;
        *seen.entry(name.clone()).or_insert(0) += 1;
        open.push((ws, name));
    }
    assert_eq!(
        seen.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{seen:?}"
    );
    // Close the tunnels on s0: the next ten go there, where the load now is lowest.
    open.retain(|(_, name)| name != "s0");
    eventually("s0's tunnels are closed", || async {
        metric(
            &metrics_text(&gw).await,
            "sluice_websocket_tunnels_active{route=\"backend\"}",
        ) == 20.0
    })
    .await;
    for _ in 0..10 {
        let (ws, name) = ws_connect_which(&gw.url("/")).await;
        assert_eq!(name, "s0");
        open.push((ws, name));
    }
}

#[tokio::test]
async fn random_two_spreads_roughly_evenly() {
    let b = backends(3).await;
    let addrs: Vec<_> = b.iter().map(|b| b.addr).collect();
    let gw = start(&upstream_config(&plain(&addrs), "balance = \"random_two\"")).await;
    let mut open = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let (ws, name) = ws_connect_which(&gw.url("/")).await;
        *seen.entry(name).or_insert(0) += 1;
        open.push(ws);
    }
    // With tunnels held open, the less loaded of two picks keeps servers within a few
    // of each other.
    for (name, n) in &seen {
        assert!((14..=26).contains(n), "{name}: {n} of 60 ({seen:?})");
    }
}

#[tokio::test]
async fn hash_sends_the_same_key_to_the_same_server() {
    let b = backends(3).await;
    let addrs: Vec<_> = b.iter().map(|b| b.addr).collect();
    let gw = start(&upstream_config(
        &plain(&addrs),
        "balance = \"hash\"\nhash_key = \"query:room\"",
    ))
    .await;
    let first = spread(&gw, 30, |i| format!("/?room=r{}", i % 10)).await;
    assert!(first.len() >= 2, "ten keys all on one server: {first:?}");
    for key in 0..10 {
        let (_, a) = ws_connect_which(&gw.url(&format!("/?room=r{key}"))).await;
        for _ in 0..3 {
            let (_, b) = ws_connect_which(&gw.url(&format!("/?room=r{key}&x=1"))).await;
            assert_eq!(a, b, "key r{key} moved");
        }
    }
}

#[tokio::test]
async fn adding_a_server_moves_only_its_share_of_keys() {
    let b = backends(5).await;
    let addrs: Vec<_> = b.iter().map(|b| b.addr).collect();
    let extra = "balance = \"hash\"\nhash_key = \"header:x-user\"";
    let gw = start(&upstream_config(&plain(&addrs[..4]), extra)).await;
    let keys = 200;
    let placement = |gw: &TestGateway| {
        let url = gw.url("/");
        async move {
            let mut out = Vec::new();
            for k in 0..keys {
                let mut s = tokio::net::TcpStream::connect(
                    url.trim_start_matches("ws://").trim_end_matches('/'),
                )
                .await
                .unwrap();
                use tokio::io::AsyncWriteExt;
                s.write_all(handshake_request("/", &format!("X-User: user-{k}\r\n")).as_bytes())
                    .await
                    .unwrap();
                let head = within("101", read_head(&mut s)).await.unwrap();
                out.push(header_of(&head, "x-backend").unwrap().to_owned());
            }
            out
        }
    };
    let before = placement(&gw).await;
    gw.gateway
        .reload(
            sluice::config::parse(&upstream_config(&plain(&addrs), extra), Path::new("t.toml"))
                .unwrap(),
        )
        .await
        .unwrap();
    let after = placement(&gw).await;
    let moved: Vec<usize> = (0..keys).filter(|&k| before[k] != after[k]).collect();
    // One server in five: about 20% of keys move, and all of them to the new server.
    assert!(
        (20..=70).contains(&moved.len()),
        "{} of {keys} keys moved",
        moved.len()
    );
    for k in moved {
        assert_eq!(after[k], "s4", "key {k} moved between old servers");
    }
}
