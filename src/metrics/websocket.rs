//! The WebSocket-aware tunnel metrics: frames, messages, message sizes and Close codes
//! per route and direction.
//!
//! A tunnel holds one `Arc` to its route's [`WsMetrics`], whose per-kind handles are
//! resolved when the route is built, so counting a frame is one atomic add. Close codes
//! are looked up per Close, which is once or twice per tunnel.

use std::sync::{Arc, OnceLock};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::sizes::SizesFamily;
pub use super::sizes::{LocalSizes, Sizes};

/// The frame kinds counted, indexed as `crate::tunnel::frames::OpCode::index`.
pub const KINDS: [&str; 6] = ["continuation", "text", "binary", "close", "ping", "pong"];

/// The metric families, registered once per gateway.
#[derive(Clone)]
pub struct Families {
    messages: IntCounterVec,
    frames: IntCounterVec,
    sizes: SizesFamily,
    closes: IntCounterVec,
    refusals: IntCounterVec,
}

impl Families {
    pub fn new(registry: &Registry) -> Families {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(v.clone()))
                .expect("metric names are fixed and unique");
            v
        };
        let sizes = SizesFamily::new();
        registry
            .register(Box::new(sizes.clone()))
            .expect("metric names are fixed and unique");
        Families {
            messages: counter(
                "sluice_websocket_messages_total",
                "WebSocket messages (text and binary, fragmented ones once) tunnels carried.",
                &["route", "direction"],
            ),
            frames: counter(
                "sluice_websocket_frames_total",
                "WebSocket frames tunnels carried, by kind.",
                &["route", "direction", "kind"],
            ),
            sizes,
            closes: counter(
                "sluice_websocket_closes_total",
                "WebSocket Close frames by code (application for 3000-4999, none when TCP ended without one) and sender (client, upstream, sluice).",
                &["route", "code", "from"],
            ),
            refusals: counter(
                "sluice_websocket_refusals_total",
                "Tunnels sluice closed for a peer's frames: protocol (1002), frame_too_big or message_too_big (1009), rate (1008).",
                &["route", "from", "reason"],
            ),
        }
    }

    /// Handles for one route.
    pub fn route(&self, name: &str) -> WsMetrics {
        let dir = |d: &'static str| WsDirMetrics {
            frames: KINDS.map(|k| self.frames.with_label_values(&[name, d, k])),
            messages: self.messages.with_label_values(&[name, d]),
            sizes: self.sizes.series(name, d),
        };
        WsMetrics {
            route: name.to_owned(),
            up: dir("client_to_upstream"),
            down: dir("upstream_to_client"),
            closes: self.closes.clone(),
            refusals: self.refusals.clone(),
            common: [const { OnceLock::new() }; COMMON.len() * 3],
        }
    }
}

/// One direction's handles.
pub struct WsDirMetrics {
    pub frames: [IntCounter; 6],
    pub messages: IntCounter,
    pub sizes: Arc<Sizes>,
}

/// Who sent a Close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Client,
    Upstream,
    Sluice,
}

impl From {
    pub fn as_str(self) -> &'static str {
        match self {
            From::Client => "client",
            From::Upstream => "upstream",
            From::Sluice => "sluice",
        }
    }
}

// The registered codes a Close commonly carries, given a handle each on first use.
const COMMON: [u16; 8] = [1000, 1001, 1002, 1008, 1009, 1011, 1012, 0];

/// One route's handles.
pub struct WsMetrics {
    route: String,
    pub up: WsDirMetrics,
    pub down: WsDirMetrics,
    closes: IntCounterVec,
    refusals: IntCounterVec,
    common: [OnceLock<IntCounter>; COMMON.len() * 3],
}

impl WsMetrics {
    /// Counts a Close: `code` as sent (1005 for a Close without one), `None` for a
    /// tunnel whose TCP ended with no Close at all (`none`).
    pub fn close(&self, code: Option<u16>, from: From) {
        let c = code.unwrap_or(0);
        if let Some(i) = COMMON.iter().position(|&k| k == c) {
            let slot = &self.common[i * 3 + from as usize];
            slot.get_or_init(|| {
                self.closes
                    .with_label_values(&[&self.route, &label(code), from.as_str()])
            })
            .inc();
        } else {
            self.closes
                .with_label_values(&[&self.route, &label(code), from.as_str()])
                .inc();
        }
    }

    /// Counts a tunnel closed for a peer's frames.
    pub fn refusal(&self, from: From, reason: &str) {
        self.refusals
            .with_label_values(&[&self.route, from.as_str(), reason])
            .inc();
    }
}

/// The `code` label: the registered codes as themselves, 3000-4999 as `application`,
/// anything else a peer might send as `other`, and `none` for no Close.
fn label(code: Option<u16>) -> String {
    match code {
        None | Some(0) => "none".to_owned(),
        Some(3000..=4999) => "application".to_owned(),
        Some(c @ (1000..=1003 | 1005 | 1007..=1015)) => c.to_string(),
        Some(_) => "other".to_owned(),
    }
}
