//! The pure functions every request or handshake goes through: handshake checks,
//! header rewriting, route matching and server choice.
//!
//! `cargo bench --bench hot_paths`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use sluice::balance::{Balancer, Policy};
use sluice::config::{Balance, Servers, Timeouts, UpstreamSettings};
use sluice::headers::{self, Forwarded};
use sluice::metrics::Metrics;
use sluice::route::{Route, RouteTable};
use sluice::upstream::Upstream;
use sluice::{handshake, handshake::Upgrade};

/// A browser's WebSocket handshake, as Chromium sends it.
fn browser_handshake() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "chat.example.com"),
        ("connection", "Upgrade"),
        ("pragma", "no-cache"),
        ("cache-control", "no-cache"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36",
        ),
        ("upgrade", "websocket"),
        ("origin", "https://chat.example.com"),
        ("sec-websocket-version", "13"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "en-US,en;q=0.9"),
        ("cookie", "session=4f9a0c2e7b; theme=dark"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        (
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        ),
    ] {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn upstream(m: &Metrics, name: &str) -> Arc<Upstream> {
    let settings = UpstreamSettings {
        name: name.into(),
        servers: Servers::Addresses(Vec::new()),
        keepalive: 0,
        protocol: Default::default(),
        send_proxy_protocol: None,
        tls: None,
        balance: Balance::RoundRobin,
        max_connections_per_server: None,
        max_fails: 0,
        fail_timeout: Duration::from_secs(1),
        health_check: None,
        resolve_interval: Duration::from_secs(1),
    };
    Arc::new(
        Upstream::new(
            &settings,
            Vec::new(),
            Timeouts::default(),
            Default::default(),
            m.upstream(name),
        )
        .expect("no TLS"),
    )
}

fn bench(c: &mut Criterion) {
    let req = browser_handshake();
    let mut g = c.benchmark_group("handshake");
    g.bench_function("classify + check the request", |b| {
        b.iter(|| {
            let h = black_box(&req);
            assert_eq!(handshake::classify(&Method::GET, h), Upgrade::WebSocket);
            handshake::check_request(Version::HTTP_11, h).map(|k| k.len())
        })
    });
    let mut resp = HeaderMap::new();
    resp.insert("upgrade", HeaderValue::from_static("websocket"));
    resp.insert("connection", HeaderValue::from_static("Upgrade"));
    resp.insert(
        "sec-websocket-accept",
        HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    );
    g.bench_function("check the upstream's 101", |b| {
        b.iter(|| {
            handshake::check_response(
                StatusCode::SWITCHING_PROTOCOLS,
                black_box(&resp),
                b"dGhlIHNhbXBsZSBub25jZQ==",
            )
            .is_ok()
        })
    });
    g.finish();

    let fwd = Forwarded::new("203.0.113.9".parse().expect("an address"), true);
    let host = HeaderValue::from_static("chat.example.com");
    let mut g = c.benchmark_group("headers");
    g.bench_function("rewrite a handshake for the upstream", |b| {
        b.iter_batched_ref(
            browser_handshake,
            |h| {
                headers::remove_hop_by_hop(h);
                headers::set_websocket_upgrade(h);
                headers::set_forwarded(h, &fwd, Some(&host), false);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();

    let m = Metrics::new();
    let mut table = RouteTable::default();
    let hosts = [
        None,
        Some("chat.example.com"),
        Some("api.example.com"),
        Some("static.example.com"),
    ];
    for (i, host) in hosts.iter().enumerate() {
        for path in ["/", "/ws", "/ws/rooms", "/api/v1", "/api/v2", "/assets"] {
            let name = format!("r{i}{path}");
            table.add(
                *host,
                Route {
                    name: name.as_str().into(),
                    path: path.into(),
                    subprotocol: None,
                    origins: None,
                    upstream: upstream(&m, &name),
                    metrics: Arc::new(m.route(&name)),
                    websocket: Default::default(),
                },
            );
        }
    }
    let mut g = c.benchmark_group("route");
    g.bench_function("find among 24 routes (host + longest prefix)", |b| {
        b.iter(|| {
            table
                .find(
                    black_box(Some("chat.example.com:443")),
                    black_box("/ws/rooms/42"),
                    |_| false,
                )
                .is_some()
        })
    });
    g.finish();

    let servers: Vec<(String, u32)> = (0..8).map(|i| (format!("10.0.0.{i}:8080"), 1)).collect();
    let mut g = c.benchmark_group("balance");
    for (name, policy) in [
        ("round robin", Policy::RoundRobin),
        ("least connections", Policy::LeastConnections),
        ("random two", Policy::RandomTwo),
        ("hash", Policy::Hash),
    ] {
        let b8 = Balancer::new(policy, &servers);
        let mut out = Vec::with_capacity(8);
        g.bench_function(format!("order 8 servers: {name}"), |b| {
            b.iter(|| {
                b8.order(Some(b"user-42"), |i| (i as u64 * 7) % 5, |_| true, &mut out);
                out[0]
            })
        });
    }
    g.finish();
}

/// 128 masked 64-byte text frames: one read's worth at window 128 in compare.sh.
fn burst() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..128u8 {
        out.extend_from_slice(&[0x81, 0x80 | 64, 1, 2, 3, i]);
        out.extend(std::iter::repeat_n(b'x' ^ i, 64));
    }
    out
}

fn frames(c: &mut Criterion) {
    use sluice::tunnel::frames::{Frames, Limits, Sender};
    use sluice::tunnel::ws::{HOLD, Rsv, Setup, Track};
    let data = burst();
    let m = Metrics::new().route("r");
    let mut g = c.benchmark_group("frames");
    g.throughput(criterion::Throughput::Elements(128));
    g.bench_function("scan 128 frames of 64 B", |b| {
        let mut f = Frames::new(Sender::Client, false, Limits::NONE);
        b.iter(|| f.scan(black_box(&data), &mut ()).is_ok())
    });
    let setup = Setup {
        rsv: Rsv::None,
        limits: Limits::NONE,
        close_code: 1001,
        max_messages_per_second: None,
    };
    let mut buf = vec![0u8; HOLD + data.len()];
    buf[HOLD..].copy_from_slice(&data);
    g.bench_function("take 128 frames of 64 B (counted)", |b| {
        let mut t = Track::new(Sender::Client, &setup);
        b.iter(|| {
            t.take(black_box(&mut buf), data.len(), &m.websocket)
                .forward
                .len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench, frames);
criterion_main!(benches);
