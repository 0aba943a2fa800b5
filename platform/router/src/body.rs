//! The body of every response the router sends: an app's body streamed through, or a small
//! router-made page.
//!
//! Flow: `proxy` builds a [`ResponseBody`] → hyper polls it while writing to the client → when
//! it ends (or the client leaves and hyper drops it) the backend connection goes back to its
//! pool, the in-flight count drops and the access log and Timer are emitted.
//!
//! Invariant: a backend connection returns to the pool only if its response was read to the
//! end; a body abandoned half way closes it, so the next request never reads stale bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::access_log::Exchange;
use crate::backend::Lease;
use crate::table::InFlight;

/// A response body; see the module docs.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    kind: Kind,
    sent: u64,
    exchange: Option<Box<Exchange>>,
}

#[derive(Debug)]
enum Kind {
    Proxied {
        body: Incoming,
        lease: Option<Lease>,
        in_flight: Option<InFlight>,
    },
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub(crate) fn proxied(
        body: Incoming,
        lease: Option<Lease>,
        in_flight: InFlight,
        exchange: Option<Box<Exchange>>,
    ) -> Self {
        Self {
            kind: Kind::Proxied {
                body,
                lease,
                in_flight: Some(in_flight),
            },
            sent: 0,
            exchange,
        }
    }

    pub(crate) fn full(bytes: Bytes, exchange: Option<Box<Exchange>>) -> Self {
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            sent: 0,
            exchange,
        }
    }

    fn finish(&mut self) {
        if let Kind::Proxied {
            body,
            lease,
            in_flight,
        } = &mut self.kind
        {
            if let Some(lease) = lease.take()
                && body.is_end_stream()
                && let Some(in_flight) = in_flight.as_ref()
            {
                lease.backends.check_in(in_flight.endpoint(), lease.sender);
            }
            in_flight.take();
        }
        if let Some(mut exchange) = self.exchange.take() {
            exchange.bytes_sent = self.sent;
            exchange.emit();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Proxied { body, .. } => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                // The app broke off its body: the connection is not reusable.
                if let Kind::Proxied { lease, .. } = &mut this.kind {
                    lease.take();
                }
                this.finish();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Proxied { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Proxied { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper may drop a body it never polled (HEAD, 204, Content-Length: 0) or one whose
        // client left: `finish` returns the connection only if the body had ended.
        self.finish();
    }
}
