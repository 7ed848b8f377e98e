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

// The system allocator, chosen by measurement (benches/compare.sh idle scenario, and
// the handshake and HTTP scenarios): mimalloc 0.1.52 held 2.71 KiB per idle tunnel
// against glibc's 2.79, with a 6 MiB larger baseline, and no CPU difference above the
// machine's noise (handshakes 140-170 µs either way); not worth a C dependency.
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
        // and no cross-thread wake-ups to pay for.
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
