//! The proxy's one error type, classified by origin, with its status mapping.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{GiveBack, ProxyBody};
use crate::grpc::code;

/// Everything that stops a request from being proxied.
///
/// Each variant is the fault of one side, and [`ProxyError::status`] maps it to the
/// status the client sees. A client error never reaches an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // ---- the client's request ----
    #[error("no route matches this host and path")]
    NoRoute,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("the request head is larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("malformed WebSocket handshake: {0}")]
    BadHandshake(&'static str),
    #[error("unsupported WebSocket version (only 13 is)")]
    UnsupportedVersion,
    #[error("method not allowed here: {0}")]
    MethodNotAllowed(&'static str),
    #[error("this Origin may not open WebSockets here")]
    OriginNotAllowed,
    #[error("too many WebSocket handshakes from this client; slow down")]
    RateLimited,

    // ---- the upstream ----
    #[error("no server could be connected: {0}")]
    Connect(std::io::Error),
    #[error("no response head within {0:?}")]
    ResponseTimeout(Duration),
    #[error("upstream failed: {0}")]
    Upstream(#[source] hyper::Error),
    #[error("upstream refused the WebSocket upgrade with an invalid 101: {0}")]
    BadUpgradeResponse(&'static str),
    #[error("upstream answered 101 to a request that asked for no upgrade")]
    UnexpectedUpgrade,
    #[error("every server is at its connection limit")]
    UpstreamFull,
    #[error(
        "the upstream's HTTP/2 SETTINGS do not enable extended CONNECT (RFC 8441), so it cannot take WebSockets over HTTP/2"
    )]
    NoExtendedConnect,
}

/// Which side a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Upstream,
}

impl ProxyError {
    /// The status the client is answered with.
    pub fn status(&self) -> StatusCode {
        // Exhaustive on purpose: a new variant must choose its status here.
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) | ProxyError::BadHandshake(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::OriginNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UpstreamFull => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(_)
            | ProxyError::Upstream(_)
            | ProxyError::BadUpgradeResponse(_)
            | ProxyError::UnexpectedUpgrade
            | ProxyError::NoExtendedConnect => StatusCode::BAD_GATEWAY,
            ProxyError::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whose fault it is.
    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::HeadTooLarge(_)
            | ProxyError::BadHandshake(_)
            | ProxyError::UnsupportedVersion
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::OriginNotAllowed
            | ProxyError::RateLimited => Origin::Client,
            ProxyError::Connect(_)
            | ProxyError::ResponseTimeout(_)
            | ProxyError::Upstream(_)
            | ProxyError::BadUpgradeResponse(_)
            | ProxyError::UnexpectedUpgrade
            | ProxyError::NoExtendedConnect
            | ProxyError::UpstreamFull => Origin::Upstream,
        }
    }

    /// The gRPC status a gRPC client is answered with, after the HTTP to gRPC
    /// mapping gRPC itself uses for HTTP statuses (a 404 is UNIMPLEMENTED, a 429
    /// RESOURCE_EXHAUSTED, a 502 UNAVAILABLE), where the error says more.
    pub fn grpc_status(&self) -> u16 {
        // Exhaustive on purpose, like `status`.
        match self {
            ProxyError::NoRoute | ProxyError::MethodNotAllowed(_) => code::UNIMPLEMENTED,
            ProxyError::BadRequest(_) | ProxyError::HeadTooLarge(_) => code::INTERNAL,
            ProxyError::BadHandshake(_) | ProxyError::UnsupportedVersion => code::INVALID_ARGUMENT,
            ProxyError::OriginNotAllowed => code::PERMISSION_DENIED,
            // Limits of sluice's own configuration, not the upstream's failures.
            ProxyError::RateLimited | ProxyError::UpstreamFull => code::RESOURCE_EXHAUSTED,
            ProxyError::Connect(_)
            | ProxyError::Upstream(_)
            | ProxyError::BadUpgradeResponse(_)
            | ProxyError::UnexpectedUpgrade
            | ProxyError::NoExtendedConnect => code::UNAVAILABLE,
            ProxyError::ResponseTimeout(_) => code::DEADLINE_EXCEEDED,
        }
    }

    /// The answer to a gRPC call: HTTP 200 with the status and message in the headers
    /// and no body (a trailers-only response), which every gRPC client reads.
    pub fn grpc_response<G: GiveBack>(&self) -> Response<ProxyBody<G>> {
        let mut resp = Response::new(ProxyBody::empty());
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(self.grpc_status()));
        let text = self.client_text();
        if let Ok(v) = HeaderValue::from_str(&crate::grpc::encode_message(text.trim_end())) {
            headers.insert("grpc-message", v);
        }
        resp
    }

    /// What the client is told: client errors say what was wrong; upstream errors
    /// say only what failed, since the cause (addresses, certificates) is for the
    /// operator's log.
    fn client_text(&self) -> String {
        match self {
            ProxyError::NoRoute => "no route for this host and path\n".to_owned(),
            ProxyError::ResponseTimeout(_) => "upstream timed out\n".to_owned(),
            ProxyError::UpstreamFull => "upstream at capacity; try again later\n".to_owned(),
            e if e.origin() == Origin::Upstream => "bad gateway\n".to_owned(),
            e => format!("{e}\n"),
        }
    }

    /// The response sent to the client: the status and a short plain-text body.
    pub fn response<G: GiveBack>(&self) -> Response<ProxyBody<G>> {
        let status = self.status();
        let mut resp = Response::new(ProxyBody::full(Bytes::from(self.client_text())));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            ProxyError::UnsupportedVersion => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            ProxyError::RateLimited | ProxyError::UpstreamFull => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::MethodNotAllowed(_) => {
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the status of every variant: changing one is a visible decision.
    #[test]
    fn status_mapping_is_pinned() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases = [
            (ProxyError::NoRoute, 404, Origin::Client),
            (ProxyError::BadRequest("x"), 400, Origin::Client),
            (ProxyError::HeadTooLarge(10), 431, Origin::Client),
            (ProxyError::BadHandshake("x"), 400, Origin::Client),
            (ProxyError::UnsupportedVersion, 426, Origin::Client),
            (ProxyError::MethodNotAllowed("x"), 405, Origin::Client),
            (ProxyError::OriginNotAllowed, 403, Origin::Client),
            (ProxyError::RateLimited, 429, Origin::Client),
            (ProxyError::UpstreamFull, 503, Origin::Upstream),
            (ProxyError::Connect(io()), 502, Origin::Upstream),
            (
                ProxyError::ResponseTimeout(Duration::from_secs(1)),
                504,
                Origin::Upstream,
            ),
            (ProxyError::BadUpgradeResponse("x"), 502, Origin::Upstream),
            (ProxyError::UnexpectedUpgrade, 502, Origin::Upstream),
            (ProxyError::NoExtendedConnect, 502, Origin::Upstream),
        ];
        for (err, status, origin) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.origin(), origin, "{err:?}");
            assert_eq!(err.response::<()>().status().as_u16(), status);
        }
    }

    #[test]
    fn grpc_answers_are_trailers_only_with_status_and_message() {
        let resp = ProxyError::NoRoute.grpc_response::<()>();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["grpc-status"], "12");
        assert_eq!(
            resp.headers()["grpc-message"],
            "no route for this host and path"
        );
        let timeout = ProxyError::ResponseTimeout(Duration::from_secs(1));
        assert_eq!(timeout.grpc_status(), 4);
        assert_eq!(ProxyError::RateLimited.grpc_status(), 8);
        assert_eq!(ProxyError::UpstreamFull.grpc_status(), 8);
        assert_eq!(
            ProxyError::Connect(std::io::ErrorKind::ConnectionRefused.into()).grpc_status(),
            14
        );
    }

    #[test]
    fn upgrade_required_names_the_version() {
        let resp = ProxyError::UnsupportedVersion.response::<()>();
        assert_eq!(resp.headers()[header::SEC_WEBSOCKET_VERSION], "13");
    }
}
