//! Network namespaces for fault tests: a client, a proxy and an upstream namespace
//! joined by veth pairs, with loss (nftables) and rate limits (the `tbf` qdisc) on
//! the client link.
//!
//! Everything is made inside namespaces the test creates: the veth pairs are created
//! in them (never in the host's namespace), their addresses exist only there and no
//! namespace has a default route, so no packet can leave for anything outside. A
//! [`Topology`] deletes its namespaces when dropped, also when the test panics; names
//! carry the process id and a counter, so parallel tests do not clash.
//!
//! Sockets are made inside a namespace by a short-lived thread that enters it
//! (`setns`): a socket keeps the namespace it was created in, so the test's tokio
//! runtime can use it like any other. Processes run in one with `ip netns exec`.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The client's address, on its link to the proxy.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
/// The proxy's address on the client link.
pub const PROXY_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);
/// The proxy's address on the upstream link.
pub const PROXY_UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 5);
/// The upstream's address.
pub const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 6);

/// The client's end of the client link (in the client namespace).
pub const CLIENT_DEV: &str = "cl";
/// The proxy's end of the client link (in the proxy namespace).
pub const PROXY_CLIENT_DEV: &str = "pc";

/// Whether namespace tests can run here: root, with `ip`, `tc` and `nft`. Says why
/// not and returns false otherwise; under CI (`CI=true`) a missing piece fails.
pub fn available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            // Real, effective, saved, filesystem: the effective one decides.
            line.split_whitespace().nth(2).map(|u| u == "0")
        })
        .unwrap_or(false);
    let missing: Vec<&str> = [("ip", "-V"), ("tc", "-V"), ("nft", "--version")]
        .into_iter()
        .filter(|(tool, arg)| {
            !Command::new(tool)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(tool, _)| tool)
        .collect();
    let why = if !root {
        "not root (network namespaces need it)".to_owned()
    } else if !missing.is_empty() {
        format!("missing {} (iproute2, nftables)", missing.join(", "))
    } else {
        return true;
    };
    assert!(
        std::env::var("CI").is_err(),
        "fault tests are required under CI: {why}"
    );
    eprintln!("skipped: {why}");
    false
}

/// Runs a command to completion; fails the test with its output if it fails.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One network namespace, by name. Deleted by the [`Topology`] that made it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A command to run inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Runs `tc -n NAME args...`.
    pub fn tc(&self, args: &[&str]) {
        let mut all = vec!["tc", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Runs `nft args...` inside the namespace; returns its output.
    pub fn nft(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.name, "nft"];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Runs `f` on a thread inside the namespace and returns what it returns.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("namespace {}: {e}", self.name));
        std::thread::scope(|s| {
            s.spawn(|| {
                enter_net_namespace(&ns);
                f()
            })
            .join()
            .expect("the thread in the namespace")
        })
    }

    /// A TCP socket that lives in this namespace, to bind or connect as usual.
    pub fn socket(&self) -> TcpSocket {
        self.enter(|| TcpSocket::new_v4().expect("a socket"))
    }

    /// A listener on `ip` (port 0) in this namespace.
    pub fn listen(&self, ip: Ipv4Addr) -> TcpListener {
        let s = self.socket();
        s.set_reuseaddr(true).unwrap();
        s.bind(SocketAddr::from((ip, 0))).unwrap();
        s.listen(1024).unwrap()
    }

    /// A TCP connection to `addr` from this namespace.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = self.socket().connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// The TCP sockets in this namespace with their queues and state (`ss -tni`), for
    /// a failure message that shows where bytes stopped.
    pub fn sockets(&self) -> String {
        let out = self.command("ss").arg("-tni").output();
        out.map_or_else(
            |e| format!("ss: {e}"),
            |o| String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// Drops `percent` % of the packets each way on `dev`, at random, counting them.
    /// Replaces any loss set before.
    pub fn set_loss(&self, dev: &str, percent: u32) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "nft",
                "delete table inet faults",
            ])
            .stderr(Stdio::null())
            .status();
        // A counter of every packet before the random drop, so the loss is measured.
        let rules = format!(
            "table inet faults {{
  counter seen_in {{}}
  counter dropped_in {{}}
  counter seen_out {{}}
  counter dropped_out {{}}
  chain input {{ type filter hook input priority 0;
    iifname \"{dev}\" counter name seen_in
    iifname \"{dev}\" numgen random mod 100 < {percent} counter name dropped_in drop
  }}
  chain output {{ type filter hook output priority 0;
    oifname \"{dev}\" counter name seen_out
    oifname \"{dev}\" numgen random mod 100 < {percent} counter name dropped_out drop
  }}
}}"
        );
        let mut nft = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        nft.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft rules:\n{rules}");
    }

    /// Packets seen and dropped by [`Netns::set_loss`]'s rules, both ways together.
    pub fn loss_counts(&self) -> Loss {
        let text = self.nft(&["-j", "list", "counters", "table", "inet", "faults"]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut loss = Loss::default();
        for item in v["nftables"].as_array().unwrap() {
            let c = &item["counter"];
            let (Some(name), Some(packets)) = (c["name"].as_str(), c["packets"].as_u64()) else {
                continue;
            };
            if name.starts_with("seen") {
                loss.seen += packets;
            } else {
                loss.dropped += packets;
            }
        }
        loss
    }

    /// Caps what `dev` sends at `rate` (a tc rate like `1mbit`) with a token bucket.
    pub fn set_rate(&self, dev: &str, rate: &str) {
        self.tc(&[
            "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "16kb",
            "latency", "200ms",
        ]);
    }
}

/// What the loss rules counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Loss {
    pub seen: u64,
    pub dropped: u64,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = 100.0 * self.dropped as f64 / self.seen.max(1) as f64;
        write!(
            f,
            "{} of {} packets dropped ({pct:.2} %)",
            self.dropped, self.seen
        )
    }
}

/// Moves the calling thread into the network namespace open as `ns`.
#[allow(unsafe_code)]
fn enter_net_namespace(ns: &std::fs::File) {
    // SAFETY: setns only reads the descriptor, which `ns` keeps open for the call;
    // CLONE_NEWNET moves just this thread, which the caller owns and ends after use.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Three namespaces in a line: client — proxy — upstream, each link a veth pair with
/// a /30 of 10.231.0.0/29. Deleted on drop.
pub struct Topology {
    pub client: Netns,
    pub proxy: Netns,
    pub upstream: Netns,
}

impl Topology {
    pub fn new() -> Topology {
        let id = format!(
            "sluice-faults-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        // Dropped (so deleted) if a step below fails half-way.
        let t = Topology {
            client: Netns {
                name: format!("{id}-client"),
            },
            proxy: Netns {
                name: format!("{id}-proxy"),
            },
            upstream: Netns {
                name: format!("{id}-upstream"),
            },
        };
        for ns in [&t.client, &t.proxy, &t.upstream] {
            run(&["ip", "netns", "add", &ns.name]);
        }
        for ns in [&t.client, &t.proxy, &t.upstream] {
            ns.ip(&["link", "set", "lo", "up"]);
        }
        // Each pair is created inside the namespaces, never in the host's.
        t.client.ip(&[
            "link",
            "add",
            CLIENT_DEV,
            "type",
            "veth",
            "peer",
            "name",
            PROXY_CLIENT_DEV,
            "netns",
            &t.proxy.name,
        ]);
        t.proxy.ip(&[
            "link",
            "add",
            "pu",
            "type",
            "veth",
            "peer",
            "name",
            "us",
            "netns",
            &t.upstream.name,
        ]);
        for (ns, dev, ip) in [
            (&t.client, CLIENT_DEV, CLIENT_IP),
            (&t.proxy, PROXY_CLIENT_DEV, PROXY_IP),
            (&t.proxy, "pu", PROXY_UPSTREAM_IP),
            (&t.upstream, "us", UPSTREAM_IP),
        ] {
            ns.ip(&["addr", "add", &format!("{ip}/30"), "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        // A veth passes TCP's 64 KiB segmentation-offload packets whole, so one drop
        // would take 45 wire packets at once. One segment per packet on the client
        // link makes nftables' loss and tbf's rate act on wire-sized packets.
        for (ns, dev) in [(&t.client, CLIENT_DEV), (&t.proxy, PROXY_CLIENT_DEV)] {
            ns.ip(&["link", "set", dev, "gso_max_segs", "1"]);
        }
        t
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace destroys its veth ends and with them their peers.
        for ns in [&self.client, &self.proxy, &self.upstream] {
            let _ = Command::new("ip")
                .args(["netns", "delete", &ns.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}
