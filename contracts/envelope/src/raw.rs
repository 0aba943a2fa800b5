//! The Ingress and Egress services, and Log Cache's `Read`, with envelopes carried as encoded
//! `Bytes`.
//!
//! A stock Loggregator client speaks the typed services in [`crate::v2`]; on the wire these are
//! the same methods with the same paths and messages. The difference is only on our side: the
//! agent and doppler receive a batch as one `Bytes` and forward its envelopes as sub-slices,
//! never paying for a prost decode.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// An empty protobuf message (`IngressResponse`, `BatchSenderResponse`, `SendResponse`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Empty;

/// A message that [`WireCodec`] can write.
pub trait WireEncode: Send + 'static {
    /// Writes the encoded message.
    fn wire_encode(self, buf: &mut EncodeBuf<'_>);
}

/// A message that [`WireCodec`] can read.
pub trait WireDecode: Sized + Send + 'static {
    /// Reads the whole buffer as one message.
    ///
    /// # Errors
    /// `InvalidArgument` when the bytes are not this message.
    fn wire_decode(buf: &mut DecodeBuf<'_>) -> Result<Self, Status>;
}

impl WireEncode for Bytes {
    fn wire_encode(self, buf: &mut EncodeBuf<'_>) {
        buf.put(self);
    }
}

impl WireDecode for Bytes {
    fn wire_decode(buf: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        let len = buf.remaining();
        Ok(buf.copy_to_bytes(len))
    }
}

impl WireEncode for Empty {
    fn wire_encode(self, _buf: &mut EncodeBuf<'_>) {}
}

impl WireDecode for Empty {
    fn wire_decode(buf: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        let len = buf.remaining();
        buf.advance(len);
        Ok(Empty)
    }
}

macro_rules! prost_wire {
    ($($ty:ty),*) => {$(
        impl WireEncode for $ty {
            fn wire_encode(self, buf: &mut EncodeBuf<'_>) {
                // Encoding into a growable buffer cannot fail for lack of space.
                let _ = self.encode(buf);
            }
        }
        impl WireDecode for $ty {
            fn wire_decode(buf: &mut DecodeBuf<'_>) -> Result<Self, Status> {
                <$ty>::decode(buf).map_err(|e| Status::invalid_argument(e.to_string()))
            }
        }
    )*};
}

prost_wire!(
    crate::v2::EgressRequest,
    crate::v2::EgressBatchRequest,
    crate::logcache_v1::ReadRequest,
    crate::logcache_v1::MetaRequest,
    crate::logcache_v1::MetaResponse
);

/// A tonic codec for [`WireEncode`]/[`WireDecode`] messages.
#[derive(Debug)]
pub struct WireCodec<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for WireCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// The encoding half of [`WireCodec`].
#[derive(Debug)]
pub struct WireEncoder<E>(PhantomData<fn(E)>);

/// The decoding half of [`WireCodec`].
#[derive(Debug)]
pub struct WireDecoder<D>(PhantomData<fn() -> D>);

impl<E: WireEncode> Encoder for WireEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.wire_encode(dst);
        Ok(())
    }
}

impl<D: WireDecode> Decoder for WireDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::wire_decode(src).map(Some)
    }
}

impl<E: WireEncode, D: WireDecode> Codec for WireCodec<E, D> {
    type Encode = E;
    type Decode = D;
    type Encoder = WireEncoder<E>;
    type Decoder = WireDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder(PhantomData)
    }
}

/// HTTP/2 stream window every hop uses. tonic's 64 KiB default throttled one stream to ~0.1 M
/// envelopes/s with the CPU idle; 4 MiB lets a stream run at the CPU's pace.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 connection window (twice the stream window, so two busy streams share a connection).
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// A client endpoint tuned for envelope streams: explicit HTTP/2 windows, no Nagle delay, and
/// keepalive pings every second so a dead peer is noticed within about two seconds.
///
/// # Errors
/// `url` is not a valid URI.
pub fn tuned_endpoint(url: &str) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .tcp_nodelay(true)
        .connect_timeout(std::time::Duration::from_secs(2))
        .http2_keep_alive_interval(std::time::Duration::from_secs(1))
        .keep_alive_timeout(std::time::Duration::from_secs(1))
        .keep_alive_while_idle(true))
}

/// A server builder tuned the same way as [`tuned_endpoint`].
#[must_use]
pub fn tuned_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
}

/// `loggregator.v2.Ingress` with encoded bodies.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    reason = "generated code"
)]
pub mod ingress {
    include!("gen/raw/loggregator.v2.Ingress.rs");
}

/// `loggregator.v2.Egress` with encoded bodies.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    reason = "generated code"
)]
pub mod egress {
    include!("gen/raw/loggregator.v2.Egress.rs");
}

/// `logcache.v1.Egress` with `Read` answered as an encoded `ReadResponse` (build one with
/// [`crate::wire::read_response`], take its envelopes with [`crate::wire::read_response_batch`]).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    reason = "generated code"
)]
pub mod logcache {
    include!("gen/raw/logcache.v1.Egress.rs");
}
