//! Arbitrary bytes as a configuration file through `sluice::config::parse`: it returns
//! settings or a list of problems, and never panics.
//!
//! Validation does two things a fuzzer must not be let loose on, so inputs that would
//! make it do them are skipped before `parse` sees them:
//! - it resolves server names (`host:port`) with the system resolver: every server,
//!   as a string or as a table's `addr`, must be an IP address and port;
//! - it reads certificate, key and CA files, relative to the file's directory: those
//!   paths must be relative and stay below it (the directory is an empty temporary
//!   one), and an upstream with `tls = true` must name its `ca` (without one the
//!   system's trust store is read, which is harmless but slow).
//!
//! Text that is not valid TOML is passed on as it is: `parse` fails on it before
//! validation starts.
#![no_main]

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(doc) = text.parse::<toml::Table>()
        && !safe_table(&doc)
    {
        return;
    }
    match sluice::config::parse(text, &config_path()) {
        Ok(settings) => {
            assert!(!settings.listeners.is_empty() && !settings.routes.is_empty());
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            let _ = e.to_string();
        }
    }
});

/// `<empty temporary directory>/sluice.toml`: relative paths land in that directory.
fn config_path() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir
    })
    .join("sluice.toml")
}

/// Keys whose string values (anywhere, at any depth) name files.
const FILE_KEYS: &[&str] = &[
    "cert",
    "key",
    "ca",
    "client_ca",
    "client_cert",
    "client_key",
];

fn safe_table(t: &toml::Table) -> bool {
    if t.get("tls") == Some(&toml::Value::Boolean(true)) && !t.contains_key("ca") {
        return false;
    }
    t.iter().all(|(k, v)| {
        let ok_here = match k.as_str() {
            "servers" => servers_are_ips(v),
            k if FILE_KEYS.contains(&k) => strings(v).all(stays_below),
            _ => true,
        };
        ok_here && safe_value(v)
    })
}

fn safe_value(v: &toml::Value) -> bool {
    match v {
        toml::Value::Table(t) => safe_table(t),
        toml::Value::Array(a) => a.iter().all(safe_value),
        _ => true,
    }
}

/// Every string in `servers`, bare or as `addr`, parses as an IP address and port.
fn servers_are_ips(v: &toml::Value) -> bool {
    let ip = |v: &toml::Value| match v {
        toml::Value::String(s) => s.parse::<SocketAddr>().is_ok(),
        _ => true,
    };
    match v {
        toml::Value::Array(list) => list.iter().all(|s| match s {
            toml::Value::Table(t) => t.get("addr").is_none_or(ip),
            other => ip(other),
        }),
        other => ip(other),
    }
}

fn strings(v: &toml::Value) -> Box<dyn Iterator<Item = &str> + '_> {
    match v {
        toml::Value::String(s) => Box::new(std::iter::once(s.as_str())),
        toml::Value::Array(a) => Box::new(a.iter().flat_map(strings)),
        toml::Value::Table(t) => Box::new(t.values().flat_map(strings)),
        _ => Box::new(std::iter::empty()),
    }
}

fn stays_below(p: &str) -> bool {
    !p.contains('\\')
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}
