//! What a finished run says: its JSON result line (the report's input), the short
//! human summary printed during a compare.sh run, and whether it was clean.

use serde_json::{Value, json};

use crate::probe::Usage;
use crate::stats::round;
use crate::tls::Negotiated;
use crate::{echo, h2load, handshakes, http, idle};

/// A run's result line, its summary lines, and whether it was clean.
pub type Record = (Value, Vec<String>, bool);

/// `throughput` and `pingpong`; `tls` is what the handshakes settled on over TLS
/// (wss), `None` over plain TCP.
pub fn echo(mode: &str, p: &echo::Params, o: &echo::Outcome, tls: Option<&Negotiated>) -> Record {
    let secs = o.measured.as_secs_f64();
    let rate = o.messages as f64 / secs;
    let mb = o.payload_bytes as f64 / secs / 1e6;
    let lat = o.latency.summary();
    let title = if mode == "pingpong" {
        format!("ping-pong {}", size_name(p.size))
    } else {
        format!(
            "{}{} × {} conns × window {}",
            if tls.is_some() { "wss " } else { "" },
            size_name(p.size),
            p.connections,
            p.window
        )
    };
    let mut r = json!({
        "mode": mode,
        "title": title,
        "params": {
            "connections": p.connections, "window": p.window, "size": p.size,
            "warmup_s": p.warmup.as_secs_f64(), "duration_s": p.duration.as_secs_f64(),
        },
        "connected": o.connected,
        "measured_s": secs,
        "messages": o.messages,
        "rate": round(rate, 1),
        "payload_mb_s": round(mb, 2),
        "latency_us": lat.to_json(),
        "errors": o.errors.to_json(),
        "errors_total": o.errors.total(),
    });
    add_usage(&mut r, &o.usage, o.messages);
    let mut s = vec![
        format!(
            "{} of {} connections, {:.0} msg/s, {mb:.1} MB/s payload",
            o.connected, p.connections, rate
        ),
        format!(
            "latency µs: p50 {:.1}, p99 {:.1}, p99.9 {:.1}, max {:.1}",
            lat.p50, lat.p99, lat.p999, lat.max
        ),
    ];
    add_tls(&mut r, &mut s, tls);
    s.extend(usage_lines(&o.usage, o.messages, "msg"));
    s.extend(o.errors.describe());
    let ok = o.errors.total() == 0 && o.connected == p.connections;
    (r, s, ok)
}

pub fn handshakes(
    p: &handshakes::Params,
    o: &handshakes::Outcome,
    tls: Option<&Negotiated>,
) -> Record {
    let secs = o.measured.as_secs_f64();
    let rate = o.handshakes as f64 / secs;
    let lat = o.latency.summary();
    let wss = if tls.is_some() { "wss " } else { "" };
    let mut r = json!({
        "mode": "handshakes",
        "title": format!("{wss}handshakes, concurrency {}", p.concurrency),
        "params": {
            "concurrency": p.concurrency,
            "warmup_s": p.warmup.as_secs_f64(), "duration_s": p.duration.as_secs_f64(),
        },
        "measured_s": secs,
        "handshakes": o.handshakes,
        "rate": round(rate, 1),
        "latency_us": lat.to_json(),
        "errors": o.errors.to_json(),
        "errors_total": o.errors.total(),
    });
    add_usage(&mut r, &o.usage, o.handshakes);
    let what = if tls.is_some() {
        "connect, TLS, upgrade, echo, close"
    } else {
        "connect, upgrade, echo, close"
    };
    let mut s = vec![
        format!("{rate:.0} handshakes/s ({what})"),
        format!(
            "latency µs: p50 {:.1}, p99 {:.1}, p99.9 {:.1}",
            lat.p50, lat.p99, lat.p999
        ),
    ];
    add_tls(&mut r, &mut s, tls);
    s.extend(usage_lines(&o.usage, o.handshakes, "handshake"));
    s.extend(o.errors.describe());
    (r, s, o.errors.total() == 0)
}

pub fn idle(p: &idle::Params, o: &idle::Outcome) -> Record {
    let per = |after: Option<u64>| match (o.rss_before_kib, after) {
        (Some(b), Some(a)) if o.opened > 0 => Some((a as f64 - b as f64) / o.opened as f64),
        _ => None,
    };
    let (settled, surge) = (per(o.rss_after_kib), per(o.rss_surge_kib));
    let r = json!({
        "mode": "idle",
        "title": format!("{} idle tunnels", p.connections),
        "params": {
            "connections": p.connections,
            "surge_ms": p.surge.as_millis() as u64,
            "settle_ms": p.settle.max(p.surge).as_millis() as u64,
        },
        "opened": o.opened,
        "verified": o.verified,
        "open_s": round(o.open_time.as_secs_f64(), 3),
        "rss_before_kib": o.rss_before_kib,
        "rss_surge_kib": o.rss_surge_kib,
        "rss_after_kib": o.rss_after_kib,
        "kib_per_tunnel": settled.map(|x| round(x, 2)),
        "kib_per_tunnel_surge": surge.map(|x| round(x, 2)),
        "errors": o.errors.to_json(),
        "errors_total": o.errors.total(),
    });
    let mut s = vec![format!(
        "{} opened, {} checked with an echo and closed",
        o.opened, o.verified
    )];
    if let (Some(b), Some(a), Some(per)) = (o.rss_before_kib, o.rss_surge_kib, surge) {
        let when = match p.surge.as_millis() {
            0 => "as the last opened".to_owned(),
            ms => format!("{ms} ms after the last opened"),
        };
        s.push(format!(
            "proxy RSS {b} KiB before, {a} KiB {when}: {per:.2} KiB per tunnel"
        ));
    }
    if let (Some(a), Some(per)) = (o.rss_after_kib, settled) {
        s.push(format!(
            "proxy RSS {a} KiB {} ms after (settled): {per:.2} KiB per tunnel",
            p.settle.max(p.surge).as_millis()
        ));
    }
    s.extend(o.errors.describe());
    let ok = o.errors.total() == 0 && o.verified == p.connections;
    (r, s, ok)
}

pub fn http(p: &http::Params, o: &http::Outcome, tls: Option<&Negotiated>) -> Record {
    let secs = o.measured.as_secs_f64();
    let rate = o.requests as f64 / secs;
    let lat = o.latency.summary();
    let scheme = if tls.is_some() { "HTTPS" } else { "HTTP" };
    let mut r = json!({
        "mode": "http",
        "title": format!("{scheme} GET keep-alive, {} conns", p.connections),
        "params": {
            "connections": p.connections, "body_len": p.body_len,
            "warmup_s": p.warmup.as_secs_f64(), "duration_s": p.duration.as_secs_f64(),
        },
        "measured_s": secs,
        "requests": o.requests,
        "reconnects": o.reconnects,
        "rate": round(rate, 1),
        "latency_us": lat.to_json(),
        "errors": o.errors.to_json(),
        "errors_total": o.errors.total(),
    });
    add_usage(&mut r, &o.usage, o.requests);
    let mut s = vec![
        format!(
            "{rate:.0} req/s, {} reconnects (server closed keep-alive)",
            o.reconnects
        ),
        format!(
            "latency µs: p50 {:.1}, p99 {:.1}, p99.9 {:.1}",
            lat.p50, lat.p99, lat.p999
        ),
    ];
    add_tls(&mut r, &mut s, tls);
    s.extend(usage_lines(&o.usage, o.requests, "req"));
    s.extend(o.errors.describe());
    (r, s, o.errors.total() == 0)
}

pub fn h2load(p: &h2load::Params, o: &h2load::Outcome) -> Record {
    let secs = o.measured.map(|d| d.as_secs_f64());
    // No figure rather than zero when nothing succeeded: the cell says "—".
    let rate = secs
        .filter(|&s| s > 0.0 && o.succeeded > 0)
        .map(|s| o.succeeded as f64 / s);
    let n = &o.negotiated;
    let (mode, what) = match p.grpc {
        Some(_) => ("grpc", "gRPC unary"),
        None => ("h2load", "HTTP/2 GET"),
    };
    let mut r = json!({
        "mode": mode,
        "title": format!(
            "{what} over TLS, {} conns × {} streams",
            p.connections, p.streams
        ),
        "params": {
            "connections": p.connections, "streams": p.streams,
            "cipher": p.cipher, "group": p.group,
            "message_len": p.grpc.as_ref().map(|g| g.message_len),
            "warmup_s": p.warmup.as_secs_f64(), "duration_s": p.duration.as_secs_f64(),
        },
        "backend_calls": o.backend.map(|b| json!({
            "ok": b.ok, "refused": b.refused, "connections": b.connections,
        })),
        "command": o.command,
        "measured_s": secs,
        "requests": o.succeeded,
        "rate": rate.map(|x| round(x, 1)),
        "tls": tls_json(n),
        "latency_us": {
            "mean": o.mean_us.map(|x| round(x, 1)),
            "max": o.max_us.map(|x| round(x, 1)),
        },
        "errors": o.errors.to_json(),
        "errors_total": o.errors.total(),
        "first_error": o.errors.describe().first(),
    });
    add_usage(&mut r, &o.usage, o.succeeded);
    let mut s = vec![
        format!(
            "{} req/s, {} conns × {} streams; {}",
            rate.map_or("no".to_owned(), |r| format!("{r:.0}")),
            p.connections,
            p.streams,
            tls_line(n),
        ),
        format!(
            "request time µs (h2load): mean {}, max {}",
            o.mean_us.map_or("?".to_owned(), |x| format!("{x:.0}")),
            o.max_us.map_or("?".to_owned(), |x| format!("{x:.0}")),
        ),
    ];
    if let Some(b) = o.backend {
        s.push(format!(
            "backend: {} calls answered with grpc-status 0 over HTTP/2, {} refused, {} connections from the proxy",
            b.ok, b.refused, b.connections
        ));
    }
    s.extend(usage_lines(&o.usage, o.succeeded, "req"));
    s.extend(o.errors.describe());
    (r, s, o.errors.total() == 0 && rate.is_some())
}

/// The negotiated parameters under the keys compare.sh's footnotes read.
fn tls_json(n: &Negotiated) -> Value {
    json!({
        "protocol": n.protocol, "cipher": n.cipher,
        "temp_key": n.temp_key, "alpn": n.alpn,
    })
}

/// "http/1.1 over TLSv1.3, TLS_AES_128_GCM_SHA256, key exchange X25519".
fn tls_line(n: &Negotiated) -> String {
    let show = |v: &Option<String>| v.as_deref().unwrap_or("?").to_owned();
    format!(
        "{} over {}, {}, key exchange {}",
        n.alpn.as_deref().unwrap_or("no ALPN"),
        show(&n.protocol),
        show(&n.cipher),
        show(&n.temp_key),
    )
}

/// Over TLS, what the handshakes settled on, in the record and the summary; the
/// record has an empty `tls` when none completed.
fn add_tls(r: &mut Value, s: &mut Vec<String>, tls: Option<&Negotiated>) {
    if let Some(n) = tls {
        r["tls"] = tls_json(n);
        s.push(format!("TLS: {}", tls_line(n)));
    }
}

/// "64 B", "64 KiB".
fn size_name(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

fn add_usage(r: &mut Value, u: &Usage, ops: u64) {
    r["proxy_cpu_us"] = json!(u.proxy_cpu_us.map(|x| round(x, 0)));
    r["cpu_us_per_op"] = json!(
        u.proxy_cpu_us
            .filter(|_| ops > 0)
            .map(|x| round(x / ops as f64, 3))
    );
    r["proxy_core_busy"] = json!(u.proxy_core_busy.map(|x| round(x, 3)));
    r["client_core_busy"] = json!(u.client_core_busy.map(|x| round(x, 3)));
    r["others_cores"] = json!(u.others_cores.map(|x| round(x, 3)));
    r["busiest_other"] = json!(u.busiest_other);
}

fn usage_lines(u: &Usage, ops: u64, op: &str) -> Vec<String> {
    let mut s = Vec::new();
    if let Some(cpu) = u.proxy_cpu_us.filter(|_| ops > 0) {
        s.push(format!(
            "proxy CPU {:.2} µs/{op} ({:.2} s in all)",
            cpu / ops as f64,
            cpu / 1e6
        ));
    }
    let pct = |x: Option<f64>| x.map_or("?".to_owned(), |b| format!("{:.0}%", b * 100.0));
    if u.proxy_core_busy.is_some() || u.client_core_busy.is_some() {
        s.push(format!(
            "core busy: proxy's {}, client's {}",
            pct(u.proxy_core_busy),
            pct(u.client_core_busy)
        ));
    }
    if let Some(x) = u.others_cores {
        let who = u
            .busiest_other
            .as_ref()
            .map_or(String::new(), |n| format!(", mostly {n}"));
        s.push(format!(
            "other processes on the machine: {:.0}% of a core{who}",
            x * 100.0
        ));
    }
    s
}
