//! The configuration file: strict TOML structs, loading, and error reporting.
//!
//! Loading happens in two layers. The structs here mirror the file exactly and refuse
//! unknown keys (`deny_unknown_fields`), keeping each value's byte span; then
//! [`validate`] turns them into typed [`Settings`], gathering every problem it finds
//! before failing, so one `sluice --check` run shows the whole list.

mod settings;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use settings::*;

/// Loads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        problems: vec![Problem {
            at: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse(&text, path)
}

/// Parses and validates configuration text; `path` names it in messages and anchors
/// relative paths found inside it.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    let fail = |problems: Vec<Problem>| ConfigError {
        path: path.to_owned(),
        problems,
    };
    let file: File = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| Position::of(text, s.start));
        // toml's Display repeats the position and a snippet; its message alone is enough
        // next to ours.
        fail(vec![Problem {
            at,
            message: e.message().trim_end().to_owned(),
        }])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut settings = validate::settings(file, text, base).map_err(fail)?;
    settings.source = path.to_owned();
    settings.hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()));
    Ok(settings)
}

/// A configuration that could not be loaded: the file and every problem found in it.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

/// One problem, with the line and column it applies to when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: Option<Position>,
    pub message: String,
}

/// A 1-based line and column in the configuration text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` in `text`.
    pub fn of(text: &str, offset: usize) -> Position {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Position {
            line,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl ConfigError {
    /// Every problem on one line, for logs.
    pub fn one_line(&self) -> String {
        self.to_string().replace('\n', "; ")
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.at {
                Some(at) => write!(
                    f,
                    "{}:{}:{}: {}",
                    self.path.display(),
                    at.line,
                    at.column,
                    p.message
                )?,
                None => write!(f, "{}: {}", self.path.display(), p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ---- The file, exactly as written ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    pub admin: Option<AdminFile>,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub http2: Http2File,
    #[serde(default)]
    pub websocket: WebSocketFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub runtime: RuntimeFile,
    #[serde(default)]
    pub tcp: TcpFile,
    #[serde(default)]
    pub listeners: Vec<Spanned<ListenerFile>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteFile>>,
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<String>, Spanned<UpstreamFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    pub listen: Spanned<String>,
    pub token: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutsFile {
    pub connect: Option<Spanned<String>>,
    pub upstream_response: Option<Spanned<String>>,
    pub request_header: Option<Spanned<String>>,
    pub idle: Option<Spanned<String>>,
    pub half_closed: Option<Spanned<String>>,
    pub drain: Option<Spanned<String>>,
    pub tls_handshake: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    pub max_connections: Option<Spanned<i64>>,
    pub max_request_header_bytes: Option<Spanned<i64>>,
    pub max_connections_per_ip: Option<Spanned<i64>>,
    pub handshakes_per_second_per_ip: Option<Spanned<f64>>,
    pub handshake_burst_per_ip: Option<Spanned<f64>>,
    pub max_tunnel_lifetime: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Http2File {
    pub max_concurrent_streams: Option<Spanned<i64>>,
    pub keepalive_interval: Option<Spanned<String>>,
    pub keepalive_timeout: Option<Spanned<String>>,
    pub stream_window: Option<Spanned<i64>>,
    pub connection_window: Option<Spanned<i64>>,
}

/// `[websocket]`, and a route's `websocket = { ... }`, which overrides it key by key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebSocketFile {
    pub close_code: Option<Spanned<i64>>,
    pub close_timeout: Option<Spanned<String>>,
    /// A duration, or "off".
    pub ping_interval: Option<Spanned<String>>,
    pub ping_timeout: Option<Spanned<String>>,
    pub max_message_bytes: Option<Spanned<i64>>,
    pub max_frame_bytes: Option<Spanned<i64>>,
    pub max_messages_per_second: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcpFile {
    pub keepalive: Option<Spanned<String>>,
    pub keepalive_interval: Option<Spanned<String>>,
    pub keepalive_probes: Option<Spanned<i64>>,
    pub user_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogFile {
    pub format: Option<Spanned<String>>,
    pub access: Option<bool>,
    pub access_query: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuntimeFile {
    pub workers: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerFile {
    pub name: Option<Spanned<String>>,
    pub listen: Spanned<String>,
    pub tls: Option<Spanned<ListenerTlsFile>>,
    pub redirect_https: Option<Spanned<bool>>,
    pub redirect_https_port: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub reuse_port: Option<bool>,
    pub http2: Option<bool>,
    pub proxy_protocol: Option<bool>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerTlsFile {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub certificates: Option<Spanned<Vec<CertPairFile>>>,
    pub min_version: Option<Spanned<String>>,
    pub client_ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertPairFile {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    pub name: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub upstream: Spanned<String>,
    pub subprotocol: Option<Spanned<String>>,
    pub allowed_origins: Option<Spanned<Vec<Spanned<String>>>>,
    pub websocket: Option<Spanned<WebSocketFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamFile {
    /// Each a `"host:port"` string or a `{ addr = "host:port", weight = N }` table;
    /// kept as TOML values and read in validation, where a bad one can be named with
    /// its position (serde's untagged enums lose positions).
    pub servers: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    pub builtin: Option<Spanned<String>>,
    pub keepalive: Option<Spanned<i64>>,
    pub protocol: Option<Spanned<String>>,
    pub send_proxy_protocol: Option<Spanned<String>>,
    pub tls: Option<Spanned<bool>>,
    pub sni: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
    pub balance: Option<Spanned<String>>,
    pub hash_key: Option<Spanned<String>>,
    pub max_connections_per_server: Option<Spanned<i64>>,
    pub max_fails: Option<Spanned<i64>>,
    pub fail_timeout: Option<Spanned<String>>,
    pub health_check: Option<Spanned<HealthCheckFile>>,
    pub resolve_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheckFile {
    pub path: Option<Spanned<String>>,
    pub tcp: Option<bool>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub fails: Option<Spanned<i64>>,
    pub passes: Option<Spanned<i64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_counts_lines_and_columns_from_one() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(Position::of(text, 0), Position { line: 1, column: 1 });
        assert_eq!(Position::of(text, 6), Position { line: 2, column: 1 });
        assert_eq!(Position::of(text, 11), Position { line: 2, column: 6 });
    }
}
