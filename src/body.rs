//! Bodies on their way through: the request body sent upstream, counted for the
//! access log; and the response body sent to the client, sluice's own message or the
//! upstream's body streamed through as it arrives.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access;
use crate::metrics::GrpcStatuses;

/// What an upstream's body hands back once it has been read to its end: the pooled
/// connection it arrived on. Implemented by the upstream pool, so that bodies need
/// nothing of it.
pub trait GiveBack {
    fn give_back(self);
}

/// Nothing to give back.
impl GiveBack for () {
    fn give_back(self) {}
}

/// A client's request body on its way upstream.
pub struct RequestBody {
    /// `None` for a request sent again without its (empty) body.
    inner: Option<Incoming>,
    /// Where bytes are counted, when an access line will want them.
    counted: Option<Arc<AtomicU64>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, counted: Option<Arc<AtomicU64>>) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            counted,
        }
    }

    /// No body.
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            counted: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(inner).poll_frame(cx));
        if let (Some(Ok(f)), Some(counted)) = (&frame, &self.counted)
            && let Some(data) = f.data_ref()
        {
            counted.fetch_add(data.remaining() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// A response body: one of sluice's own, or an upstream's, streamed.
pub struct ProxyBody<G: GiveBack> {
    kind: Kind<G>,
    /// The access line to write once the body has been sent (or abandoned).
    access: Option<Box<access::Entry>>,
    /// Where a gRPC call's status is counted when its trailers pass.
    grpc: Option<Arc<GrpcStatuses>>,
    sent: u64,
}

enum Kind<G> {
    Full(Option<Bytes>),
    Upstream {
        body: Incoming,
        /// The pooled connection the body arrives on, given back to the pool once the
        /// body has been read to its end; dropped (and the connection closed) if the
        /// body is abandoned half-way.
        checkin: Option<G>,
    },
}

impl<G: GiveBack> ProxyBody<G> {
    /// A body of known bytes.
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody<G> {
        ProxyBody {
            kind: Kind::Full(Some(bytes.into())),
            access: None,
            grpc: None,
            sent: 0,
        }
    }

    /// No body.
    pub fn empty() -> ProxyBody<G> {
        ProxyBody {
            kind: Kind::Full(None),
            access: None,
            grpc: None,
            sent: 0,
        }
    }

    /// An upstream's body, streamed; `checkin` returns its connection to the pool.
    pub fn upstream(body: Incoming, checkin: Option<G>) -> ProxyBody<G> {
        let mut b = ProxyBody {
            kind: Kind::Upstream { body, checkin },
            access: None,
            grpc: None,
            sent: 0,
        };
        b.give_back_if_done();
        b
    }

    /// Attaches the access line written when this body is done.
    pub fn with_access(mut self, entry: Option<Box<access::Entry>>) -> ProxyBody<G> {
        self.access = entry;
        self
    }

    /// Counts the gRPC status in the trailers, when they pass, in `statuses`.
    pub fn with_grpc(mut self, statuses: Arc<GrpcStatuses>) -> ProxyBody<G> {
        self.grpc = Some(statuses);
        self
    }

    fn give_back_if_done(&mut self) {
        if let Kind::Upstream { body, .. } = &self.kind
            && body.is_end_stream()
        {
            self.give_back();
        }
    }

    fn give_back(&mut self) {
        if let Kind::Upstream { checkin, .. } = &mut self.kind
            && let Some(c) = checkin.take()
        {
            c.give_back();
        }
    }

    fn log(&mut self) {
        if let Some(entry) = self.access.take() {
            entry.finish(self.sent);
        }
    }
}

impl<G: GiveBack> Drop for ProxyBody<G> {
    fn drop(&mut self) {
        // A body dropped before its end: the client went away, or hyper had nothing to
        // send (HEAD, 204). Either way the request is over.
        self.log();
    }
}

impl<G: GiveBack + Unpin> Body for ProxyBody<G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = match &mut this.kind {
            Kind::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
            Kind::Upstream { body, .. } => {
                let frame = std::task::ready!(Pin::new(body).poll_frame(cx));
                if let (Some(Ok(f)), Some(statuses)) = (&frame, &this.grpc)
                    && let Some(trailers) = f.trailers_ref()
                    && let Some(status) = crate::grpc::status_of(trailers)
                {
                    statuses.inc(status);
                    if let Some(entry) = this.access.as_mut() {
                        entry.grpc_status = Some(status);
                    }
                }
                match &frame {
                    // A chunked body says it has ended only by ending.
                    None => this.give_back(),
                    // A sized body is known to be done with its last data frame, before
                    // the reader asks again.
                    Some(Ok(_)) => this.give_back_if_done(),
                    Some(Err(_)) => {}
                }
                frame
            }
        };
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            None => this.log(),
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}
