//! How a tunnel ended: the reason, and the report it hands to whoever ran it.

use super::{Dir, Transfer};
use crate::metrics::websocket::From;

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions finished; the client was the first to end its side.
    ClientClosed,
    /// Both directions finished; the upstream was the first to end its side.
    UpstreamClosed,
    /// No bytes either way for the idle timeout.
    Idle,
    /// Shutdown's drain period ran out.
    Drain,
    /// The tunnel reached `max_tunnel_lifetime`.
    MaxLifetime,
    /// A reload removed the tunnel's upstream server; its tunnels drained.
    ServerRemoved,
    /// A read or write failed on the client's side.
    ClientError,
    /// A read or write failed on the upstream's side.
    UpstreamError,
    /// The client's frames broke the framing rules or a limit.
    ClientViolation,
    /// The upstream's frames broke the framing rules or a limit.
    UpstreamViolation,
    /// A side did not answer sluice's Ping within `ping_timeout`.
    LivenessTimeout,
}

impl End {
    /// The label used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::UpstreamClosed => "upstream_closed",
            End::Idle => "idle_timeout",
            End::Drain => "drain",
            End::MaxLifetime => "max_lifetime",
            End::ServerRemoved => "server_removed",
            End::ClientError => "client_error",
            End::UpstreamError => "upstream_error",
            End::ClientViolation => "client_violation",
            End::UpstreamViolation => "upstream_violation",
            End::LivenessTimeout => "liveness_timeout",
        }
    }

    /// Who ended the tunnel, for a tunnel that ended without any Close.
    pub fn by(self) -> From {
        match self {
            End::ClientClosed | End::ClientError | End::ClientViolation => From::Client,
            End::UpstreamClosed | End::UpstreamError | End::UpstreamViolation => From::Upstream,
            _ => From::Sluice,
        }
    }
}

/// What a finished tunnel reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub end: End,
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
    /// The first Close: its code and who sent it (with frame tracking).
    pub close: Option<(u16, From)>,
    /// Messages each way, client to upstream first (with frame tracking).
    pub messages: [u64; 2],
    /// A peer ended TCP without a Close, and sluice answered for it (counted then).
    pub vanished: bool,
}

/// The tunnel's report, ending for `end` with what moved so far.
pub(super) fn report<T: Transfer>(
    transfer: &mut T,
    end: End,
    close: Option<(u16, From)>,
) -> Report {
    let messages = [Dir::Up, Dir::Down].map(|d| transfer.track(d).map_or(0, |t| t.messages));
    let vanished = [Dir::Up, Dir::Down]
        .into_iter()
        .any(|d| transfer.track(d).is_some_and(|t| t.gone.is_some()));
    Report {
        vanished,
        end,
        client_to_upstream: transfer.total(Dir::Up),
        upstream_to_client: transfer.total(Dir::Down),
        close,
        messages,
    }
}
