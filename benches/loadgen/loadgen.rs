//! loadgen: the benchmark client. It speaks WebSocket at the frame level against a
//! proxy (or the echo backend directly) on loopback and reports rates, latency
//! percentiles, errors, and the proxy's own CPU time and memory, as one JSON line
//! per run plus a short human summary on stderr.
//!
//! Modes: `throughput`, `pingpong`, `handshakes`, `idle`, `http`, `h2load` (HTTP/2
//! over TLS, made by nghttp2's h2load with this program measuring around it) and
//! `grpc` (gRPC unary calls the same way, checked against the backend's counts); and
//! two helpers for the driver script: `report` (the markdown table) and `free-ports`.

#[path = "../common/frame.rs"]
mod frame;

mod echo;
mod h2load;
mod handshakes;
mod http;
mod idle;
mod probe;
mod report;
mod stats;
mod ws;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::probe::{Probe, Usage};
use crate::stats::round;
use crate::ws::Target;

/// The sluice benchmark client (loopback only).
#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connections each keeping a window of messages in flight.
    Throughput {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        timing: Timing,
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Messages in flight per connection.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Message payload size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// One connection, one message in flight: round-trip latency.
    Pingpong {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        timing: Timing,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Whole WebSocket lives (connect, upgrade, one echo, close) per second.
    Handshakes {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        timing: Timing,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
    },
    /// Open many tunnels, print `READY n`, hold them, check each with an echo.
    Idle {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Handshakes in progress at once while opening.
        #[arg(long, default_value_t = 200)]
        open_concurrency: usize,
        /// Milliseconds to wait after the last tunnel opened before reading memory.
        #[arg(long, default_value_t = 1000)]
        settle_ms: u64,
        /// After READY, wait for a line on stdin before checking and closing.
        #[arg(long)]
        hold_stdin: bool,
        /// After READY, wait until this file exists before checking and closing.
        #[arg(long, value_name = "FILE", conflicts_with = "hold_stdin")]
        hold_file: Option<PathBuf>,
    },
    /// Keep-alive HTTP/1.1 GETs, one in flight per connection.
    Http {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        timing: Timing,
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// The body length every response must have.
        #[arg(long)]
        body_len: Option<usize>,
    },
    /// HTTP/2 GETs over TLS made by nghttp2's h2load, many streams per connection;
    /// the proxy is measured over h2load's own measured interval.
    H2load {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        timing: Timing,
        #[command(flatten)]
        h2: H2Args,
    },
    /// gRPC unary calls over TLS made by h2load (POSTs of one framed message with
    /// gRPC's headers to --path); the echo backend's counts show that every call
    /// h2load counted as answered was answered by it, as gRPC over HTTP/2.
    Grpc {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        timing: Timing,
        #[command(flatten)]
        h2: H2Args,
        /// Payload bytes of the message each call sends and gets back.
        #[arg(long, default_value_t = 64)]
        message_len: usize,
        /// The echo backend's plain port, which answers `GET /grpc-counts`.
        #[arg(long, value_name = "HOST:PORT")]
        backend_counts: String,
    },
    /// Print the markdown comparison table from a file of result lines.
    Report {
        #[arg(long, value_name = "FILE")]
        results: PathBuf,
        /// Columns, in order.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "direct,sluice,nginx,haproxy,caddy"
        )]
        targets: Vec<String>,
        #[arg(long, default_value = "sluice")]
        subject: String,
        #[arg(long, value_delimiter = ',', default_value = "nginx,haproxy,caddy")]
        peers: Vec<String>,
        /// A proxy core busy less than this share was not the limit.
        #[arg(long, default_value_t = 0.9)]
        busy_threshold: f64,
        /// Other processes using more than this share of a core make a result noisy.
        #[arg(long, default_value_t = 0.05)]
        noise_threshold: f64,
        /// A footnote line; repeatable.
        #[arg(long)]
        note: Vec<String>,
    },
    /// Print `count` distinct free TCP ports on 127.0.0.1.
    FreePorts {
        #[arg(default_value_t = 1)]
        count: usize,
    },
}

/// What every load mode shares.
#[derive(Args)]
struct RunArgs {
    /// The proxy (or backend) to load: host:port resolving to loopback only.
    #[arg(long)]
    target: String,
    /// The request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// The name of what is under test, copied into the result.
    #[arg(long, default_value = "target")]
    label: String,
    /// The scenario's key in the results (default: its title).
    #[arg(long)]
    scenario: Option<String>,
    /// Also append the JSON result line to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// A process of the proxy whose CPU time (and memory, in idle) is measured; repeatable.
    #[arg(long = "proxy-pid", value_name = "PID")]
    proxy_pids: Vec<u32>,
    /// Another process of the benchmark (the backend); repeatable. The CPU time of
    /// processes outside the benchmark is reported, as a sign of a noisy result.
    #[arg(long = "client-pid", value_name = "PID")]
    client_pids: Vec<u32>,
    /// The proxy's core; its busy share over the measured interval is reported.
    #[arg(long, value_name = "N")]
    proxy_cpu: Option<usize>,
    /// The load generator's and backend's core, reported the same way.
    #[arg(long, value_name = "N")]
    client_cpu: Option<usize>,
    /// Seconds any one step (connect, handshake, an echo, close) may take.
    #[arg(long, default_value_t = 10.0)]
    step_timeout: f64,
    /// Runtime threads; one keeps the client's own cost lowest.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// What the h2load modes share.
#[derive(Args)]
struct H2Args {
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Streams in flight per connection.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// The h2load program.
    #[arg(long, value_name = "PATH", default_value = "h2load")]
    h2load: PathBuf,
    /// The one TLS 1.3 cipher suite offered: every server negotiates this one.
    #[arg(long, default_value = "TLS_AES_128_GCM_SHA256")]
    cipher: String,
    /// The one key-exchange group offered.
    #[arg(long, default_value = "X25519")]
    group: String,
}

#[derive(Args)]
struct Timing {
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of traffic before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

/// Bounds that keep a run finite and its memory modest.
const MAX_CONNECTIONS: usize = 50_000;
const MAX_WINDOW: usize = 4096;
const MAX_SIZE: usize = 16 * 1024 * 1024;
/// The precomputed window of frames, shared by every connection.
const MAX_WINDOW_BYTES: usize = 256 * 1024 * 1024;
const MAX_SECONDS: f64 = 3600.0;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Report {
            results,
            targets,
            subject,
            peers,
            busy_threshold,
            noise_threshold,
            note,
        } => {
            let o = report::Options {
                results: &results,
                targets,
                subject,
                peers,
                busy_threshold,
                noise_threshold,
                notes: note,
            };
            match report::render(&o) {
                Ok(t) => {
                    print!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadgen report: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::FreePorts { count } => free_ports(count),
        load => match prepare(load) {
            Ok(job) => run(job),
            Err(e) => {
                eprintln!("loadgen: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// A load run, checked and ready to start.
struct Job {
    mode: Mode,
    target: Arc<Target>,
    probe: Probe,
    label: String,
    scenario: Option<String>,
    json: Option<PathBuf>,
    threads: usize,
}

enum Mode {
    Echo(&'static str, echo::Params),
    Handshakes(handshakes::Params),
    Idle(idle::Params),
    Http(http::Params),
    H2load(h2load::Params),
}

fn prepare(c: Command) -> Result<Job, String> {
    let (run, mode) = match c {
        Command::Throughput {
            run,
            timing,
            connections,
            window,
            size,
        } => {
            let p = echo::Params {
                connections: bounded("connections", connections, 1, MAX_CONNECTIONS)?,
                window: bounded("window", window, 1, MAX_WINDOW)?,
                size: bounded("size", size, 1, MAX_SIZE)?,
                warmup: seconds("warmup", timing.warmup, 0.0)?,
                duration: seconds("duration", timing.duration, 0.1)?,
            };
            if p.window * p.size > MAX_WINDOW_BYTES {
                return Err(format!(
                    "window × size must stay within {MAX_WINDOW_BYTES} bytes"
                ));
            }
            (run, Mode::Echo("throughput", p))
        }
        Command::Pingpong { run, timing, size } => {
            let p = echo::Params {
                connections: 1,
                window: 1,
                size: bounded("size", size, 1, MAX_SIZE)?,
                warmup: seconds("warmup", timing.warmup, 0.0)?,
                duration: seconds("duration", timing.duration, 0.1)?,
            };
            (run, Mode::Echo("pingpong", p))
        }
        Command::Handshakes {
            run,
            timing,
            concurrency,
        } => {
            let p = handshakes::Params {
                concurrency: bounded("concurrency", concurrency, 1, MAX_CONNECTIONS)?,
                warmup: seconds("warmup", timing.warmup, 0.0)?,
                duration: seconds("duration", timing.duration, 0.1)?,
            };
            (run, Mode::Handshakes(p))
        }
        Command::Idle {
            run,
            connections,
            open_concurrency,
            settle_ms,
            hold_stdin,
            hold_file,
        } => {
            let hold = match (hold_stdin, hold_file) {
                (true, _) => idle::Hold::Stdin,
                (false, Some(f)) => idle::Hold::File(f),
                (false, None) => idle::Hold::None,
            };
            let p = idle::Params {
                connections: bounded("connections", connections, 1, MAX_CONNECTIONS)?,
                open_concurrency: bounded("open-concurrency", open_concurrency, 1, 10_000)?,
                settle: Duration::from_millis(settle_ms.min(600_000)),
                hold,
            };
            (run, Mode::Idle(p))
        }
        Command::Http {
            run,
            timing,
            connections,
            body_len,
        } => {
            let p = http::Params {
                connections: bounded("connections", connections, 1, MAX_CONNECTIONS)?,
                warmup: seconds("warmup", timing.warmup, 0.0)?,
                duration: seconds("duration", timing.duration, 0.1)?,
                body_len,
            };
            (run, Mode::Http(p))
        }
        Command::H2load { run, timing, h2 } => (run, Mode::H2load(h2load_params(h2, &timing)?)),
        Command::Grpc {
            run,
            timing,
            h2,
            message_len,
            backend_counts,
        } => {
            let mut p = h2load_params(h2, &timing)?;
            p.grpc = Some(h2load::GrpcCalls {
                message_len: bounded("message-len", message_len, 0, MAX_SIZE)?,
                counts: loopback(&backend_counts)?,
            });
            (run, Mode::H2load(p))
        }
        Command::Report { .. } | Command::FreePorts { .. } => {
            return Err("not a load mode".to_owned());
        }
    };
    let addr = loopback(&run.target)?;
    if !run.path.starts_with('/') || run.path.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(format!(
            "--path must start with / and hold no spaces: {:?}",
            run.path
        ));
    }
    let target = Target {
        addr,
        host: run.target.clone(),
        path: run.path,
        step: seconds("step-timeout", run.step_timeout, 0.01)?,
    };
    Ok(Job {
        mode,
        target: Arc::new(target),
        probe: Probe {
            pids: run.proxy_pids,
            client_pids: run.client_pids,
            proxy_cpu: run.proxy_cpu,
            client_cpu: run.client_cpu,
        },
        label: run.label,
        scenario: run.scenario,
        json: run.json,
        threads: bounded("threads", run.threads, 1, 256)?,
    })
}

fn h2load_params(h2: H2Args, timing: &Timing) -> Result<h2load::Params, String> {
    Ok(h2load::Params {
        program: h2.h2load,
        connections: bounded("connections", h2.connections, 1, MAX_CONNECTIONS)?,
        streams: bounded("streams", h2.streams, 1, MAX_WINDOW)?,
        // h2load takes whole milliseconds.
        warmup: seconds("warmup", timing.warmup, 0.001)?,
        duration: seconds("duration", timing.duration, 0.1)?,
        cipher: h2.cipher,
        group: h2.group,
        grpc: None,
    })
}

/// Resolves `target` and refuses anything that is not loopback: this tool generates
/// heavy load and must never aim it at another machine.
fn loopback(target: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|e| format!("--target {target}: {e}"))?
        .collect();
    match addrs.first() {
        Some(a) if addrs.iter().all(|a| a.ip().is_loopback()) => Ok(*a),
        Some(_) => Err(format!(
            "--target {target} is not a loopback address; loadgen only loads this machine"
        )),
        None => Err(format!("--target {target} resolves to nothing")),
    }
}

fn bounded(name: &str, v: usize, lo: usize, hi: usize) -> Result<usize, String> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("--{name} must be from {lo} to {hi}, not {v}"))
    }
}

fn seconds(name: &str, v: f64, min: f64) -> Result<Duration, String> {
    if v.is_finite() && (min..=MAX_SECONDS).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!(
            "--{name} must be from {min} to {MAX_SECONDS} seconds, not {v}"
        ))
    }
}

fn run(job: Job) -> ExitCode {
    let runtime = if job.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(job.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut record, summary, ok) = runtime.block_on(execute(&job));
    let title = record
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    record["scenario"] = json!(job.scenario.clone().unwrap_or(title.clone()));
    record["target"] = json!(job.label);
    record["has_proxy"] = json!(!job.probe.pids.is_empty());

    eprintln!("[{}] {title}", job.label);
    for line in summary {
        eprintln!("  {line}");
    }
    let line = record.to_string();
    println!("{line}");
    if let Some(path) = &job.json {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            eprintln!("loadgen: cannot append to {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the job; returns its JSON record, summary lines, and whether it was clean.
async fn execute(job: &Job) -> (Value, Vec<String>, bool) {
    let t = job.target.clone();
    match &job.mode {
        Mode::Echo(mode, p) => {
            let o = echo::run(t, *p, &job.probe).await;
            let secs = o.measured.as_secs_f64();
            let rate = o.messages as f64 / secs;
            let mb = o.payload_bytes as f64 / secs / 1e6;
            let lat = o.latency.summary();
            let title = if *mode == "pingpong" {
                format!("ping-pong {}", size_name(p.size))
            } else {
                format!(
                    "{} × {} conns × window {}",
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
            s.extend(usage_lines(&o.usage, o.messages, "msg"));
            s.extend(o.errors.describe());
            let ok = o.errors.total() == 0 && o.connected == p.connections;
            (r, s, ok)
        }
        Mode::Handshakes(p) => {
            let o = handshakes::run(t, *p, &job.probe).await;
            let secs = o.measured.as_secs_f64();
            let rate = o.handshakes as f64 / secs;
            let lat = o.latency.summary();
            let mut r = json!({
                "mode": "handshakes",
                "title": format!("handshakes, concurrency {}", p.concurrency),
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
            let mut s = vec![
                format!("{rate:.0} handshakes/s (connect, upgrade, echo, close)"),
                format!(
                    "latency µs: p50 {:.1}, p99 {:.1}, p99.9 {:.1}",
                    lat.p50, lat.p99, lat.p999
                ),
            ];
            s.extend(usage_lines(&o.usage, o.handshakes, "handshake"));
            s.extend(o.errors.describe());
            (r, s, o.errors.total() == 0)
        }
        Mode::Idle(p) => {
            let o = idle::run(t, p.clone(), &job.probe).await;
            let per = match (o.rss_before_kib, o.rss_after_kib) {
                (Some(b), Some(a)) if o.opened > 0 => Some((a as f64 - b as f64) / o.opened as f64),
                _ => None,
            };
            let r = json!({
                "mode": "idle",
                "title": format!("{} idle tunnels", p.connections),
                "params": { "connections": p.connections, "settle_ms": p.settle.as_millis() as u64 },
                "opened": o.opened,
                "verified": o.verified,
                "open_s": round(o.open_time.as_secs_f64(), 3),
                "rss_before_kib": o.rss_before_kib,
                "rss_after_kib": o.rss_after_kib,
                "kib_per_tunnel": per.map(|x| round(x, 2)),
                "errors": o.errors.to_json(),
                "errors_total": o.errors.total(),
            });
            let mut s = vec![format!(
                "{} opened, {} checked with an echo and closed",
                o.opened, o.verified
            )];
            if let (Some(b), Some(a), Some(per)) = (o.rss_before_kib, o.rss_after_kib, per) {
                s.push(format!(
                    "proxy RSS {b} KiB before, {a} KiB with the tunnels open: {per:.2} KiB per tunnel"
                ));
            }
            s.extend(o.errors.describe());
            let ok = o.errors.total() == 0 && o.verified == p.connections;
            (r, s, ok)
        }
        Mode::Http(p) => {
            let o = http::run(t, *p, &job.probe).await;
            let secs = o.measured.as_secs_f64();
            let rate = o.requests as f64 / secs;
            let lat = o.latency.summary();
            let mut r = json!({
                "mode": "http",
                "title": format!("HTTP GET keep-alive, {} conns", p.connections),
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
            s.extend(usage_lines(&o.usage, o.requests, "req"));
            s.extend(o.errors.describe());
            (r, s, o.errors.total() == 0)
        }
        Mode::H2load(p) => {
            let o = h2load::run(&t, p, &job.probe).await;
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
                "tls": {
                    "protocol": n.protocol, "cipher": n.cipher,
                    "temp_key": n.temp_key, "alpn": n.alpn,
                },
                "latency_us": {
                    "mean": o.mean_us.map(|x| round(x, 1)),
                    "max": o.max_us.map(|x| round(x, 1)),
                },
                "errors": o.errors.to_json(),
                "errors_total": o.errors.total(),
                "first_error": o.errors.describe().first(),
            });
            add_usage(&mut r, &o.usage, o.succeeded);
            let show = |v: &Option<String>| v.as_deref().unwrap_or("?").to_owned();
            let mut s = vec![
                format!(
                    "{} req/s, {} conns × {} streams; {} over {}, {}, key exchange {}",
                    rate.map_or("no".to_owned(), |r| format!("{r:.0}")),
                    p.connections,
                    p.streams,
                    show(&n.alpn),
                    show(&n.protocol),
                    show(&n.cipher),
                    show(&n.temp_key),
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

/// Binds `count` listeners on 127.0.0.1 port 0 at once, so the ports differ, prints
/// them, and lets them go for the caller to use.
fn free_ports(count: usize) -> ExitCode {
    let count = count.clamp(1, 100);
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        match TcpListener::bind("127.0.0.1:0").and_then(|l| Ok((l.local_addr()?, l))) {
            Ok((addr, l)) => {
                println!("{}", addr.port());
                held.push(l);
            }
            Err(e) => {
                eprintln!("loadgen free-ports: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
