//! Readings of the proxy under test from /proc: its CPU time, its resident memory,
//! and how busy each core was.
//!
//! The load generator takes these itself, at the exact instants its measured
//! interval starts and ends, so the CPU time divides by the very operations counted.
//! It also sums the CPU time of every other process on the machine: work that is
//! not the benchmark's (a build, say) makes a result noisy, and the report says so.

use std::collections::HashMap;
use std::fs;
use std::time::Instant;

/// Clock ticks per second in /proc/*/stat. Linux fixes the user-visible tick rate
/// (USER_HZ) at 100 on every architecture it exports these files on.
const USER_HZ: f64 = 100.0;

/// The `PF_KTHREAD` process flag: kernel threads do the benchmark's own network
/// work (softirqs), so they are not counted as other work.
const PF_KTHREAD: u64 = 0x0020_0000;

/// What to watch: the proxy's processes, the processes that are part of the
/// benchmark besides it (the backend; this process is always included), and the
/// two cores.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub pids: Vec<u32>,
    pub client_pids: Vec<u32>,
    pub proxy_cpu: Option<usize>,
    pub client_cpu: Option<usize>,
}

/// One reading.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    /// utime + stime of the watched processes, in ticks (all their threads included).
    proc_ticks: Option<u64>,
    /// CPU time of every other user process, reaped children included, in ticks.
    others_ticks: Option<u64>,
    /// The same per process (command name and ticks), to name the busiest.
    others: HashMap<u32, (String, u64)>,
    proxy_core: Option<CoreTimes>,
    client_core: Option<CoreTimes>,
}

#[derive(Debug, Clone, Copy)]
struct CoreTimes {
    busy: u64,
    total: u64,
}

/// The difference between two readings.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// CPU time the proxy used, in microseconds.
    pub proxy_cpu_us: Option<f64>,
    /// The share of the proxy's core that was busy (0..1), whoever used it.
    pub proxy_core_busy: Option<f64>,
    /// The same for the core of the load generator and backend.
    pub client_core_busy: Option<f64>,
    /// CPU time processes outside the benchmark used, in cores (0.1: a tenth of one).
    pub others_cores: Option<f64>,
    /// The one of them that used the most, by command name.
    pub busiest_other: Option<String>,
}

impl Probe {
    pub fn sample(&self) -> Sample {
        let proc_ticks = if self.pids.is_empty() {
            None
        } else {
            // A vanished process makes the reading meaningless, not zero.
            self.pids
                .iter()
                .map(|&p| proc_times(p).map(|t| t.own))
                .sum()
        };
        let cores = fs::read_to_string("/proc/stat").ok();
        let core = |n: Option<usize>| n.and_then(|n| core_times(cores.as_deref()?, n));
        let others = self.others();
        Sample {
            at: Instant::now(),
            proc_ticks,
            others_ticks: (!others.is_empty()).then(|| others.values().map(|(_, t)| t).sum()),
            others,
            proxy_core: core(self.proxy_cpu),
            client_core: core(self.client_cpu),
        }
    }

    /// The sum over every user process but ours of its own and its reaped children's
    /// CPU time. Between two readings the difference is what other processes used:
    /// a process that ended in between was counted at the first reading, and its
    /// whole time then shows up in its parent's children's time.
    fn others(&self) -> HashMap<u32, (String, u64)> {
        let me = std::process::id();
        let mut out = HashMap::new();
        let Ok(dir) = fs::read_dir("/proc") else {
            return out;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || self.pids.contains(&pid) || self.client_pids.contains(&pid) {
                continue;
            }
            if let Some(t) = proc_times(pid).filter(|t| t.flags & PF_KTHREAD == 0) {
                out.insert(pid, (t.name, t.own + t.children));
            }
        }
        out
    }

    /// Resident memory of the watched processes, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&p| rss_kib(p)).sum()
    }
}

impl Usage {
    pub fn between(a: &Sample, b: &Sample) -> Usage {
        let busy = |x: Option<CoreTimes>, y: Option<CoreTimes>| {
            let (x, y) = (x?, y?);
            let total = y.total.checked_sub(x.total)?;
            (total > 0).then(|| y.busy.saturating_sub(x.busy) as f64 / total as f64)
        };
        let secs = (b.at - a.at).as_secs_f64();
        Usage {
            proxy_cpu_us: match (a.proc_ticks, b.proc_ticks) {
                (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / USER_HZ * 1e6),
                _ => None,
            },
            proxy_core_busy: busy(a.proxy_core, b.proxy_core),
            client_core_busy: busy(a.client_core, b.client_core),
            others_cores: match (a.others_ticks, b.others_ticks) {
                (Some(x), Some(y)) if secs > 0.0 => {
                    Some(y.saturating_sub(x) as f64 / USER_HZ / secs)
                }
                _ => None,
            },
            busiest_other: b
                .others
                .iter()
                .map(|(pid, (name, t))| {
                    let before = a.others.get(pid).map_or(0, |(_, t)| *t);
                    (t.saturating_sub(before), name)
                })
                .filter(|(d, _)| *d > 0)
                .max()
                .map(|(_, name)| name.clone()),
        }
    }
}

/// CPU times and flags of one process.
struct ProcTimes {
    /// The command name.
    name: String,
    flags: u64,
    /// utime + stime.
    own: u64,
    /// cutime + cstime: children that ended and were waited for.
    children: u64,
}

/// Reads /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn proc_times(pid: u32) -> Option<ProcTimes> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = text.rfind(')')?;
    let name = text.get(text.find('(')? + 1..close)?.to_owned();
    let rest = &text[close + 1..];
    // After the name: state is field 3, flags 9, utime 14, stime 15, cutime 16,
    // cstime 17.
    let f: Vec<&str> = rest.split_whitespace().take(15).collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(ProcTimes {
        name,
        flags: num(6)?,
        own: num(11)? + num(12)?,
        children: num(13)? + num(14)?,
    })
}

/// VmRSS from /proc/PID/status, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy and total ticks of core `n` from the text of /proc/stat.
fn core_times(stat: &str, n: usize) -> Option<CoreTimes> {
    let name = format!("cpu{n}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let idle = get(3) + get(4);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Some(CoreTimes {
        busy,
        total: busy + idle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(proc_times(me).is_some_and(|t| t.flags & PF_KTHREAD == 0));
        assert!(rss_kib(me).unwrap_or(0) > 0);
    }

    #[test]
    fn parses_a_core_line() {
        let stat =
            "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 10 0 5 80 5 0 0 0 0 0\ncpu1 1 1 1 1 1 1 1 1 0 0\n";
        let c = core_times(stat, 0).unwrap();
        assert_eq!((c.busy, c.total), (15, 100));
        assert!(core_times(stat, 2).is_none());
    }
}
