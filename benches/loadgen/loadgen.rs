//! loadgen: the benchmark client. It speaks WebSocket at the frame level against a
//! proxy (or the echo backend directly) on loopback and reports rates, latency
//! percentiles, errors, and the proxy's own CPU time and memory, as one JSON line
//! per run plus a short human summary on stderr.
//!
//! Modes: `throughput`, `pingpong`, `handshakes`, `idle`, `http` (the first three and
//! the last also over TLS, with `--tls-cert`: wss:// and https://), `h2load` (HTTP/2
//! over TLS, made by nghttp2's h2load with this program measuring around it) and
//! `grpc` (gRPC unary calls the same way, checked against the backend's counts); and
//! two helpers for the driver script: `report` (the markdown table) and `free-ports`.
//!
//! # Layout
//! `ws` connects (plain, or TLS through `tls`) and speaks the WebSocket handshake and
//! single frames; `echo` (with `wss` for TLS), `handshakes`, `idle`, `http` and
//! `h2load` are the modes; `probe` reads the proxy from /proc; `stats` counts;
//! `record` turns an outcome into its result line; `report` makes the table.

#[path = "../common/frame.rs"]
mod frame;

mod echo;
mod h2load;
mod handshakes;
mod http;
mod idle;
mod probe;
mod record;
mod report;
mod stats;
mod tls;
mod ws;
mod wss;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::probe::Probe;
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
        #[command(flatten)]
        tls: TlsArgs,
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
        #[command(flatten)]
        tls: TlsArgs,
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
        /// Milliseconds after the last tunnel opened to read memory the first time,
        /// while what the surge of handshakes took may still be held.
        #[arg(long, default_value_t = 0)]
        surge_ms: u64,
        /// Milliseconds after the last tunnel opened to read it again, settled (not
        /// before the first reading).
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
        #[command(flatten)]
        tls: TlsArgs,
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

/// TLS, for the modes that can speak it.
#[derive(Args)]
struct TlsArgs {
    /// Speak TLS 1.3 (wss://, https://) with no resumption, trusting exactly the
    /// certificate in this PEM file, and offering ALPN http/1.1 alone.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// With --tls-cert: the one cipher suite offered, so every server negotiates it.
    #[arg(long, default_value = "TLS_AES_128_GCM_SHA256")]
    cipher: String,
    /// With --tls-cert: the one key-exchange group offered.
    #[arg(long, default_value = "X25519")]
    group: String,
}

impl TlsArgs {
    fn client(&self) -> Result<Option<Arc<tls::Client>>, String> {
        let Some(cert) = &self.tls_cert else {
            return Ok(None);
        };
        Ok(Some(Arc::new(tls::Client::new(
            cert,
            &self.cipher,
            &self.group,
        )?)))
    }
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
    let (run, tls, mode) = match c {
        Command::Throughput {
            run,
            timing,
            tls,
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
            (run, tls.client()?, Mode::Echo("throughput", p))
        }
        Command::Pingpong { run, timing, size } => {
            let p = echo::Params {
                connections: 1,
                window: 1,
                size: bounded("size", size, 1, MAX_SIZE)?,
                warmup: seconds("warmup", timing.warmup, 0.0)?,
                duration: seconds("duration", timing.duration, 0.1)?,
            };
            (run, None, Mode::Echo("pingpong", p))
        }
        Command::Handshakes {
            run,
            timing,
            tls,
            concurrency,
        } => {
            let p = handshakes::Params {
                concurrency: bounded("concurrency", concurrency, 1, MAX_CONNECTIONS)?,
                warmup: seconds("warmup", timing.warmup, 0.0)?,
                duration: seconds("duration", timing.duration, 0.1)?,
            };
            (run, tls.client()?, Mode::Handshakes(p))
        }
        Command::Idle {
            run,
            connections,
            open_concurrency,
            surge_ms,
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
                surge: Duration::from_millis(surge_ms.min(600_000)),
                settle: Duration::from_millis(settle_ms.min(600_000)),
                hold,
            };
            (run, None, Mode::Idle(p))
        }
        Command::Http {
            run,
            timing,
            tls,
            connections,
            body_len,
        } => {
            let p = http::Params {
                connections: bounded("connections", connections, 1, MAX_CONNECTIONS)?,
                warmup: seconds("warmup", timing.warmup, 0.0)?,
                duration: seconds("duration", timing.duration, 0.1)?,
                body_len,
            };
            (run, tls.client()?, Mode::Http(p))
        }
        Command::H2load { run, timing, h2 } => {
            (run, None, Mode::H2load(h2load_params(h2, &timing)?))
        }
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
            (run, None, Mode::H2load(p))
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
        tls,
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
async fn execute(job: &Job) -> record::Record {
    let t = job.target.clone();
    // Over TLS, what the run's handshakes settled on (empty when none completed),
    // read once the run is over.
    let tls = || t.tls.as_ref().map(|c| c.negotiated().unwrap_or_default());
    match &job.mode {
        Mode::Echo(mode, p) => {
            let o = echo::run(t.clone(), *p, &job.probe).await;
            record::echo(mode, p, &o, tls().as_ref())
        }
        Mode::Handshakes(p) => {
            let o = handshakes::run(t.clone(), *p, &job.probe).await;
            record::handshakes(p, &o, tls().as_ref())
        }
        Mode::Idle(p) => record::idle(p, &idle::run(t.clone(), p.clone(), &job.probe).await),
        Mode::Http(p) => {
            let o = http::run(t.clone(), *p, &job.probe).await;
            record::http(p, &o, tls().as_ref())
        }
        Mode::H2load(p) => record::h2load(p, &h2load::run(&t, p, &job.probe).await),
    }
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
