//! The `h2load` mode: HTTP/2 `GET`s over TLS, many streams per connection, made by
//! nghttp2's h2load rather than by this program.
//!
//! A client of our own would have to be an HTTP/2 and TLS stack measured against
//! other stacks; h2load is the client every HTTP/2 server is commonly measured with,
//! written in C, single-threaded here as loadgen is. loadgen runs it as a child,
//! reads the proxy's CPU time and the cores at the very lines where h2load starts
//! and ends its measured interval (it prints them, flushed, from its event loop),
//! then reads h2load's own counts and checks what the TLS handshake negotiated.
//!
//! With [`GrpcCalls`] the requests are gRPC unary calls instead of `GET`s: `POST`s of
//! one framed message with gRPC's headers. h2load sees HTTP statuses only, and a
//! proxy may answer a call itself with `200` and a gRPC error status, so the echo
//! backend's own counts of calls answered (and refused) are read at the same two
//! lines, and the calls h2load counted as succeeded must have been answered there.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::timeout;

use crate::probe::{Probe, Sample, Usage};
use crate::stats::{Errors, Failure};
use crate::tls::Negotiated;
use crate::ws::Target;

#[derive(Debug, Clone)]
pub struct Params {
    /// The h2load program.
    pub program: PathBuf,
    pub connections: usize,
    /// Streams in flight per connection (h2load's `-m`).
    pub streams: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// The one TLS 1.3 cipher suite offered, so every server negotiates the same.
    pub cipher: String,
    /// The one key-exchange group offered, for the same reason.
    pub group: String,
    /// Make gRPC calls rather than `GET`s.
    pub grpc: Option<GrpcCalls>,
}

/// The gRPC form of the run.
#[derive(Debug, Clone)]
pub struct GrpcCalls {
    /// Payload bytes of the one message each call sends (and gets back).
    pub message_len: usize,
    /// The echo backend's plain port, which answers `GET /grpc-counts`.
    pub counts: SocketAddr,
}

/// What the echo backend's gRPC port counted; over the measured interval in an
/// [`Outcome`], but for `connections`, which is the total at its end.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct BackendCalls {
    /// Calls answered with their message and `grpc-status: 0`.
    pub ok: u64,
    /// Calls that reached the backend not as gRPC over HTTP/2, or malformed.
    pub refused: u64,
    /// HTTP/2 connections the proxy opened to the backend.
    pub connections: u64,
}

#[derive(Debug)]
pub struct Outcome {
    /// Responses with a 2xx or 3xx status within the measured interval.
    pub succeeded: u64,
    /// The measured interval as seen here, between h2load's two lines.
    pub measured: Option<Duration>,
    pub negotiated: Negotiated,
    /// Mean and largest request time, in microseconds.
    pub mean_us: Option<f64>,
    pub max_us: Option<f64>,
    pub errors: Errors,
    pub usage: Usage,
    /// The backend's counts over the measured interval, for gRPC calls.
    pub backend: Option<BackendCalls>,
    /// The h2load command line, for the record.
    pub command: String,
}

const STARTED: &str = "Main benchmark duration is started";
const OVER: &str = "Main benchmark duration is over";

pub async fn run(target: &Target, p: &Params, probe: &Probe) -> Outcome {
    // The call's body, for h2load's --data: made here, removed when done.
    let message = p.grpc.as_ref().map(|g| {
        let path = std::env::temp_dir().join(format!("loadgen-grpc-{}.bin", std::process::id()));
        (path, grpc_message(g.message_len))
    });
    if let Some((path, bytes)) = &message
        && let Err(e) = std::fs::write(path, bytes)
    {
        let mut out = Outcome::empty(String::new());
        out.errors.add(&Failure::new(
            "grpc",
            format!("cannot write {}: {e}", path.display()),
        ));
        return out;
    }
    let out = measure(target, p, probe, message.as_ref().map(|m| &m.0)).await;
    if let Some((path, _)) = &message {
        let _ = std::fs::remove_file(path);
    }
    out
}

/// One uncompressed gRPC message: a zero flag byte, the length in four big-endian
/// bytes, then `len` bytes of payload.
pub fn grpc_message(len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(5 + len);
    m.push(0);
    m.extend_from_slice(&(len as u32).to_be_bytes());
    m.extend((0..len).map(|i| b'a' + (i % 26) as u8));
    m
}

async fn measure(target: &Target, p: &Params, probe: &Probe, message: Option<&PathBuf>) -> Outcome {
    let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
    let mut args = vec![
        format!("--clients={}", p.connections),
        format!("--max-concurrent-streams={}", p.streams),
        "--threads=1".to_owned(),
        format!("--warm-up-time={}", ms(p.warmup)),
        format!("--duration={}", ms(p.duration)),
        // h2 alone: a server that does not offer it fails the handshake instead of
        // being measured over HTTP/1.1 with pipelining.
        "--npn-list=h2".to_owned(),
        format!("--tls13-ciphers={}", p.cipher),
        format!("--groups={}", p.group),
    ];
    if let Some(file) = message {
        // A POST of the message; te: trailers is what gRPC requires and what a proxy
        // must pass on (HTTP/2 allows no other TE).
        args.extend([
            format!("--data={}", file.display()),
            "--header=content-type: application/grpc".to_owned(),
            "--header=te: trailers".to_owned(),
        ]);
    }
    args.push(format!("https://{}{}", target.addr, target.path));
    let command = format!("{} {}", p.program.display(), args.join(" "));
    let mut out = Outcome::empty(command);

    let mut child = match Command::new(&p.program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            out.errors.add(&Failure::new(
                "h2load",
                format!("cannot run {}: {e}", p.program.display()),
            ));
            return out;
        }
    };
    // h2load is part of the benchmark, not other work on the machine.
    let mut probe = probe.clone();
    probe.client_pids.extend(child.id());

    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        out.errors
            .add(&Failure::new("h2load", "no pipe to its output"));
        return out;
    };
    let err_text = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });

    // Connecting 50 clients and ending takes well under a second; the slack is for
    // a server that accepts and never answers.
    let limit = p.warmup + p.duration + target.step;
    let mut lines = BufReader::new(stdout).lines();
    let mut text = Vec::new();
    let mut before: Option<(Sample, Instant)> = None;
    let mut after: Option<(Sample, Instant)> = None;
    let counts = p.grpc.as_ref().map(|g| g.counts);
    let (mut calls_before, mut calls_after) = (None, None);
    let read_all = async {
        while let Ok(Some(line)) = lines.next_line().await {
            // The CPU sample first: the backend's counts take a round trip.
            if line.starts_with(STARTED) && before.is_none() {
                before = Some((probe.sample(), Instant::now()));
                if let Some(addr) = counts {
                    calls_before = backend_calls(addr).await;
                }
            } else if line.starts_with(OVER) && after.is_none() {
                after = Some((probe.sample(), Instant::now()));
                if let Some(addr) = counts {
                    calls_after = backend_calls(addr).await;
                }
            }
            text.push(line);
        }
    };
    let finished = timeout(limit, read_all).await.is_ok();
    let status = if finished {
        timeout(target.step, child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    if status.is_none() {
        let _ = child.start_kill();
        let _ = child.wait().await;
        out.errors.add(&Failure::new(
            "timeout",
            format!("h2load had not ended after {:.1} s", limit.as_secs_f64()),
        ));
    }
    let err_text = err_text.await.unwrap_or_default();

    if let (Some((a, ta)), Some((b, tb))) = (&before, &after) {
        out.usage = Usage::between(a, b);
        out.measured = Some(*tb - *ta);
    }
    if let (Some(a), Some(b)) = (calls_before, calls_after) {
        out.backend = Some(BackendCalls {
            ok: b.ok.saturating_sub(a.ok),
            refused: b.refused.saturating_sub(a.refused),
            connections: b.connections,
        });
    }
    read_summary(&text, &mut out);
    check(p, &text, &err_text, status, &mut out);
    out
}

impl Outcome {
    fn empty(command: String) -> Outcome {
        Outcome {
            succeeded: 0,
            measured: None,
            negotiated: Negotiated::default(),
            mean_us: None,
            max_us: None,
            errors: Errors::default(),
            usage: Usage::default(),
            backend: None,
            command,
        }
    }
}

/// The echo backend's gRPC counts, from `GET /grpc-counts` on its plain port;
/// `None` when it cannot say within a second.
async fn backend_calls(addr: SocketAddr) -> Option<BackendCalls> {
    let ask = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /grpc-counts HTTP/1.1\r\nHost: backend\r\n\r\n")
            .await
            .ok()?;
        // The backend closes the connection after the answer.
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        parse_calls(&text)
    };
    timeout(Duration::from_secs(1), ask).await.ok().flatten()
}

/// Reads the `ok N`, `refused N`, `connections N` lines of a `200` answer.
fn parse_calls(answer: &str) -> Option<BackendCalls> {
    let (head, body) = answer.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let value = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    Some(BackendCalls {
        ok: value("ok")?,
        refused: value("refused")?,
        connections: value("connections")?,
    })
}

/// Takes h2load's counts, the negotiated parameters and the request times.
fn read_summary(text: &[String], out: &mut Outcome) {
    let n = &mut out.negotiated;
    for line in text {
        let value = |key: &str| line.strip_prefix(key).map(|v| v.trim().to_owned());
        if let Some(v) = value("TLS Protocol:") {
            n.protocol.get_or_insert(v);
        } else if let Some(v) = value("Cipher:") {
            n.cipher.get_or_insert(v);
        } else if let Some(v) = value("Server Temp Key:") {
            n.temp_key.get_or_insert(v);
        } else if let Some(v) = value("Application protocol:") {
            n.alpn.get_or_insert(v);
        } else if let Some(v) = value("requests:") {
            out.succeeded = counted(&v, "succeeded").unwrap_or(0);
        } else if let Some(v) = value("time for request:") {
            // min, max, mean, sd, share within one sd.
            let f: Vec<Option<f64>> = v.split_whitespace().map(micros).collect();
            out.max_us = f.get(1).copied().flatten();
            out.mean_us = f.get(2).copied().flatten();
        }
    }
}

/// Turns what h2load reported into errors: requests that failed, a protocol or
/// cipher other than the one asked for, no measured interval, a bad exit.
fn check(
    p: &Params,
    text: &[String],
    err_text: &str,
    status: Option<std::process::ExitStatus>,
    out: &mut Outcome,
) {
    let summary = |key: &str| {
        text.iter()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or("")
            .to_owned()
    };
    let requests = summary("requests:");
    let count = |what: &str| counted(&requests, what).unwrap_or(0);
    let (errored, timed_out) = (count("errored"), count("timeout"));
    // "failed" counts the errored ones too.
    let bad_status = count("failed").saturating_sub(errored);
    add(
        &mut out.errors,
        "status",
        bad_status,
        format!("not 2xx or 3xx ({})", summary("status codes:")),
    );
    add(
        &mut out.errors,
        "errored",
        errored,
        format!("requests: {requests}"),
    );
    add(
        &mut out.errors,
        "timeout",
        timed_out,
        format!("requests: {requests}"),
    );

    let n = out.negotiated.clone();
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".to_owned());
    if n.alpn.as_deref() == Some("h2") {
        if n.protocol.as_deref() != Some("TLSv1.3") {
            add(
                &mut out.errors,
                "tls",
                1,
                format!("TLS version {}, not TLSv1.3", show(&n.protocol)),
            );
        }
        if n.cipher.as_deref() != Some(p.cipher.as_str()) {
            add(
                &mut out.errors,
                "tls",
                1,
                format!("cipher {}, not {}", show(&n.cipher), p.cipher),
            );
        }
    } else if let Some(version) = &n.protocol {
        add(
            &mut out.errors,
            "protocol",
            1,
            format!(
                "{version} handshake with ALPN {}: the server does not offer h2",
                show(&n.alpn)
            ),
        );
    } else if out.measured.is_some() {
        // h2load says nothing of a handshake that failed, not even at the end.
        add(
            &mut out.errors,
            "protocol",
            1,
            "no TLS handshake completed (none offering h2, or none at all)".to_owned(),
        );
    }
    if let Some(g) = &p.grpc {
        check_calls(p, g, out);
    }
    if out.succeeded == 0 && out.measured.is_some() && out.errors.total() == 0 {
        add(
            &mut out.errors,
            "h2load",
            1,
            "no request succeeded".to_owned(),
        );
    }
    if out.measured.is_none() {
        // Most often every connection failed: h2load says why on either stream.
        let said = |lines: Vec<&str>| {
            let kept: Vec<&str> = lines
                .into_iter()
                .filter(|l| !l.trim().is_empty() && !l.starts_with("progress:"))
                .collect();
            kept[kept.len().saturating_sub(3)..].join(" / ")
        };
        let mut why = said(err_text.lines().collect());
        if why.is_empty() {
            why = said(text.iter().map(String::as_str).collect());
        }
        add(
            &mut out.errors,
            "h2load",
            1,
            format!("no measured interval: {why}"),
        );
    }
    if let Some(s) = status.filter(|s| !s.success()) {
        add(
            &mut out.errors,
            "h2load",
            1,
            format!("h2load exited with {s}"),
        );
    }
}

/// For gRPC: every call h2load counted as succeeded must have been answered by the
/// backend with `grpc-status: 0`, and none may have reached it malformed.
fn check_calls(p: &Params, g: &GrpcCalls, out: &mut Outcome) {
    if out.measured.is_none() {
        return;
    }
    let Some(b) = out.backend else {
        add(
            &mut out.errors,
            "grpc",
            1,
            format!("could not read the backend's gRPC counts at {}", g.counts),
        );
        return;
    };
    add(
        &mut out.errors,
        "grpc",
        b.refused,
        "calls reached the backend not as gRPC over HTTP/2 (refused with grpc-status 3)".to_owned(),
    );
    // The two counts are taken at nearly the same instants, one at each end of the
    // proxy, so they differ by at most the calls in flight at either edge.
    let in_flight = (p.connections * p.streams) as u64;
    if b.ok + in_flight < out.succeeded {
        add(
            &mut out.errors,
            "grpc",
            out.succeeded - b.ok - in_flight,
            format!(
                "h2load counted {} calls answered, the backend answered {}: the rest did not come from it",
                out.succeeded, b.ok
            ),
        );
    }
}

/// Counts `n` failures of one kind.
fn add(errors: &mut Errors, kind: &'static str, n: u64, detail: String) {
    errors.add_n(&Failure::new(kind, detail), n);
}

/// The number before `what` in "12408 total, 12408 started, ... 0 timeout".
fn counted(line: &str, what: &str) -> Option<u64> {
    line.split(',').find_map(|part| {
        let (n, name) = part.trim().split_once(' ')?;
        (name.trim() == what).then(|| n.parse().ok())?
    })
}

/// "12.89ms", "830us", "1.40s" in microseconds.
fn micros(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let x: f64 = num.parse().ok()?;
    match unit {
        "us" => Some(x),
        "ms" => Some(x * 1e3),
        "s" => Some(x * 1e6),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
starting benchmark...
TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 2.01s, 8272.00 req/s, 1.81MB/s
requests: 12408 total, 12408 started, 12408 done, 12400 succeeded, 8 failed, 3 errored, 0 timeout
status codes: 12400 2xx, 0 3xx, 0 4xx, 5 5xx
traffic: 2.71MB (2841432) total, 733.43KB (751032) headers (space savings 45.45%), 1.51MB (1587200) data
                     min         max         mean         sd        +/- sd
time for request:    12.89ms    121.97ms     60.67ms     25.37ms    64.51%
";

    fn params() -> Params {
        Params {
            program: "h2load".into(),
            connections: 50,
            streams: 10,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(3),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
            group: "X25519".into(),
            grpc: None,
        }
    }

    fn outcome() -> Outcome {
        let mut out = Outcome::empty(String::new());
        out.measured = Some(Duration::from_secs(3));
        out
    }

    #[test]
    fn frames_a_grpc_message() {
        let m = grpc_message(64);
        assert_eq!(&m[..5], &[0, 0, 0, 0, 64]);
        assert_eq!(m.len(), 69);
    }

    #[test]
    fn reads_the_backend_counts() {
        let answer =
            "HTTP/1.1 200 OK\r\nContent-Length: 36\r\n\r\nok 12\nrefused 0\nconnections 3\n";
        assert_eq!(
            parse_calls(answer),
            Some(BackendCalls {
                ok: 12,
                refused: 0,
                connections: 3
            })
        );
        assert_eq!(parse_calls("HTTP/1.1 404 Not Found\r\n\r\nok 1"), None);
    }

    #[test]
    fn grpc_calls_not_answered_by_the_backend_are_errors() {
        let text: Vec<String> = OUTPUT.lines().map(str::to_owned).collect();
        let mut p = params();
        p.grpc = Some(GrpcCalls {
            message_len: 64,
            counts: "127.0.0.1:9".parse().unwrap(),
        });
        // 12,400 succeeded; 500 may be in flight at the edges.
        let checked = |ok, refused| {
            let mut out = outcome();
            read_summary(&text, &mut out);
            out.backend = Some(BackendCalls {
                ok,
                refused,
                connections: 2,
            });
            check(&p, &text, "", None, &mut out);
            out.errors.to_json().get("grpc").cloned()
        };
        assert_eq!(checked(11_900, 0), None);
        assert_eq!(checked(11_000, 0), Some(900.into()));
        assert_eq!(checked(12_400, 7), Some(7.into()));
        let mut out = outcome();
        read_summary(&text, &mut out);
        check(&p, &text, "", None, &mut out);
        assert_eq!(out.errors.to_json()["grpc"], 1);
    }

    #[test]
    fn reads_h2load_output() {
        let text: Vec<String> = OUTPUT.lines().map(str::to_owned).collect();
        let mut out = outcome();
        read_summary(&text, &mut out);
        assert_eq!(out.succeeded, 12400);
        assert_eq!(
            out.negotiated.cipher.as_deref(),
            Some("TLS_AES_128_GCM_SHA256")
        );
        assert_eq!(out.negotiated.alpn.as_deref(), Some("h2"));
        assert_eq!(out.mean_us, Some(60_670.0));
        check(&params(), &text, "", None, &mut out);
        let e = out.errors.to_json();
        assert_eq!(e["status"], 5);
        assert_eq!(e["errored"], 3);
        assert!(e.get("tls").is_none() && e.get("protocol").is_none());
    }

    #[test]
    fn a_failed_handshake_is_an_error() {
        let text = vec!["starting benchmark...".to_owned()];
        let mut out = outcome();
        out.measured = None;
        read_summary(&text, &mut out);
        check(&params(), &text, "SSL/TLS handshake failed", None, &mut out);
        assert_eq!(out.errors.to_json()["h2load"], 1);
        assert!(out.errors.describe()[0].contains("SSL/TLS handshake failed"));
    }

    #[test]
    fn another_cipher_is_an_error() {
        let text: Vec<String> = OUTPUT
            .replace("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384")
            .lines()
            .map(str::to_owned)
            .collect();
        let mut out = outcome();
        read_summary(&text, &mut out);
        check(&params(), &text, "", None, &mut out);
        assert_eq!(out.errors.to_json()["tls"], 1);
    }
}
