//! The `sluice` command: load the configuration, run the gateway until a signal.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice::Gateway;
use sluice::config::{self, LogFormat};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// A reverse proxy and WebSocket tunneling gateway.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file.
    #[arg(short, long, value_name = "FILE", default_value = "config/sluice.toml")]
    config: PathBuf,
    /// Check the configuration and exit: 0 if it is valid, 1 with every problem if not.
    #[arg(long)]
    check: bool,
}

// The allocator, chosen by measurement: resident memory per idle tunnel in
// benches/compare.sh's idle scenario (9,900 tunnels, read 1 s after the last opened)
// was 2.49 KiB with glibc's malloc, 2.35 with mimalloc 2.0, 2.1 with jemalloc's
// defaults, 1.8 with jemalloc purging from a background thread after 1 s and 1.39
// after 500 ms. Of glibc's 2.49, 1.30 was live: the rest was pages freed by the
// handshakes' buffers and kept, in holes too small to reuse. CPU per message,
// handshake and request stayed within the machine's noise of glibc's (64 B at window
// 8: 1.63 against 1.72 µs; handshakes: 123 against 125 µs; HTTP: 18.0 against 17.2 µs).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (`_RJEM_MALLOC_CONF` in the environment
/// overrides them): freed pages go back to the system from a background thread half
/// a second after they were last used, so memory a burst of handshakes freed is not
/// held for the idle tunnels that follow it.
#[cfg(target_os = "linux")]
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static std::ffi::c_char> =
    // SAFETY: a C string literal is a valid, NUL-terminated, 'static byte string.
    Some(unsafe { &*c"background_thread:true,dirty_decay_ms:500".as_ptr() });

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match config::load(&args.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            let n = e.problems.len();
            eprintln!(
                "{}: {n} problem{} found",
                args.config.display(),
                if n == 1 { "" } else { "s" }
            );
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    init_tracing(settings.log.format);
    // Every connection is a descriptor and every tunnel two; the usual soft limit
    // (1024) would refuse connections long before max_connections. The hard limit is
    // the ceiling an unprivileged process may raise to.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < settings.limits.max_connections.saturating_mul(2) => {
            tracing::warn!(
                open_files = n,
                max_connections = settings.limits.max_connections,
                "the open-file limit is below 2 x max_connections: tunnels will be refused before that"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }

    let mut runtime = match settings.workers {
        // One worker: the current-thread scheduler, which has no work-stealing queues
        // and no cross-thread wake-ups to pay for. Measured against the multi-thread
        // scheduler with one worker (benches/compare.sh scenarios, five runs each):
        // 64 B messages at window 8 cost 2.12-2.26 µs against 1.75-2.09, handshakes
        // 152-180 µs against 166-204; inside the machine's noise either way, so the
        // simpler one.
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(settings))
}

async fn run(settings: sluice::Settings) -> ExitCode {
    // Before anything is started: a signal that arrives while starting must be
    // handled as a request to stop, not kill the process.
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let source = settings.source.clone();
    let gateway = match Gateway::start(settings).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(config = %source.display(), version = env!("CARGO_PKG_VERSION"), "sluice started");

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&gateway, &source).await,
        }
    }
    tracing::info!("shutting down: draining connections and tunnels");
    let drain = gateway.shutdown();
    tokio::pin!(drain);
    let forced = tokio::select! {
        n = &mut drain => n,
        // A second signal means now.
        _ = term.recv() => { gateway.stop_now(); 0 }
        _ = int.recv() => { gateway.stop_now(); 0 }
    };
    tracing::info!(cut = forced, "stopped");
    ExitCode::SUCCESS
}

/// SIGHUP: reads the configuration again and applies it in one swap; a file that does
/// not load or apply changes nothing.
async fn reload(gateway: &Gateway, path: &std::path::Path) {
    match gateway.reload_file(path).await {
        Ok(()) => tracing::info!(config = %path.display(), "configuration reloaded"),
        Err(e) => tracing::error!(
            config = %path.display(),
            problems = %e,
            "reload refused, the running configuration stays"
        ),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
