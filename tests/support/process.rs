//! The real `sluice` binary as a child process, for what only a process can show:
//! signals, exit codes, logs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::STEP;

/// The real `sluice` binary, started on a configuration file.
pub struct Sluice {
    child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    logs: mpsc::Receiver<String>,
    /// Holds the configuration file, `sluice.toml`.
    pub dir: tempfile::TempDir,
}

impl Sluice {
    /// Starts the binary and waits until it logs its listeners' addresses.
    pub fn start(toml: &str) -> Sluice {
        Sluice::start_under(toml, &[])
    }

    /// Starts sluice as [`Sluice::start`] does, as the last argument of `wrapper`
    /// (a command such as `prlimit --nofile=64:64 --`).
    pub fn start_under(toml: &str, wrapper: &[&str]) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, toml).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_sluice"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_sluice")),
        };
        let mut child = command
            .args(["-c", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[sluice] {line}");
                let _ = tx.send(line);
            }
        });
        let (mut http, mut admin) = (None, None);
        let deadline = Instant::now() + STEP;
        while http.is_none() || admin.is_none() {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("sluice logs its addresses");
            // Text lines say `listener=http addr=...`, JSON lines `"listener":"http","addr":"..."`.
            let text_addr = line
                .split("addr=")
                .nth(1)
                .and_then(|a| a.split_whitespace().next());
            let json_addr = line
                .split("\"addr\":\"")
                .nth(1)
                .and_then(|a| a.split('"').next());
            if let Some(addr) = text_addr.or(json_addr) {
                let addr: SocketAddr = addr.parse().unwrap();
                if line.contains("admin listening") {
                    admin = Some(addr);
                } else if line.contains("listener=http ") || line.contains("\"listener\":\"http\"")
                {
                    http = Some(addr);
                }
            }
        }
        Sluice {
            child,
            http: http.unwrap(),
            admin: admin.unwrap(),
            logs: rx,
            dir,
        }
    }

    /// The configuration file's path.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("sluice.toml")
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let line = self
                .logs
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits for the process to exit; returns its code and how long that took.
    pub async fn wait_exit(&mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            assert!(started.elapsed() < STEP, "sluice did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
