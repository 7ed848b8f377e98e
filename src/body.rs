//! The response body sluice sends to clients: its own short messages, or an upstream's
//! body streamed through as it arrives.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::Checkin;

/// A response body: one of sluice's own, or an upstream's, streamed.
pub struct ProxyBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Upstream {
        body: Incoming,
        /// The pooled connection the body arrives on, given back to the pool once the
        /// body has been read to its end; dropped (and the connection closed) if the
        /// body is abandoned half-way.
        checkin: Option<Checkin>,
    },
}

impl ProxyBody {
    /// A body of known bytes.
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(Some(bytes.into())),
        }
    }

    /// No body.
    pub fn empty() -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(None),
        }
    }

    /// An upstream's body, streamed; `checkin` returns its connection to the pool.
    pub fn upstream(body: Incoming, checkin: Option<Checkin>) -> ProxyBody {
        let mut b = ProxyBody {
            kind: Kind::Upstream { body, checkin },
        };
        b.give_back_if_done();
        b
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
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, .. } => {
                let frame = std::task::ready!(Pin::new(body).poll_frame(cx));
                match &frame {
                    // A chunked body says it has ended only by ending.
                    None => self.give_back(),
                    // A sized body is known to be done with its last data frame, before
                    // the reader asks again.
                    Some(Ok(_)) => self.give_back_if_done(),
                    Some(Err(_)) => {}
                }
                Poll::Ready(frame)
            }
        }
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
