//! Whether a client stream ended normally. tonic's decoder reads a request
//! stream that the client reset (RST_STREAM CANCEL: a cancelled call, an
//! expired client deadline, a closed channel) as a normal end of stream, so a
//! handler that commits at the end (UploadDataset, ImportModel) could not
//! tell a finished stream from an abandoned one. The RPC layer wraps every
//! request body in a `WatchedBody`, which records how the body ended in a
//! `RequestEnd` that the handler finds in the request's extensions.
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

const OPEN: u8 = 0;
const CLEAN: u8 = 1;
const BROKEN: u8 = 2;

/// How a request body ended, shared between the body and the handler.
#[derive(Clone, Debug, Default)]
pub struct RequestEnd(Arc<AtomicU8>);

impl RequestEnd {
    /// True once the body ended with the client's END_STREAM; false while it
    /// is open and after a reset or a lost connection.
    pub fn is_clean(&self) -> bool {
        self.0.load(Ordering::SeqCst) == CLEAN
    }

    fn mark(&self, how: u8) {
        // The first end seen is the one that counts.
        let _ = self
            .0
            .compare_exchange(OPEN, how, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// A request body that records its end.
pub struct WatchedBody {
    inner: tonic::body::Body,
    end: RequestEnd,
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.end.mark(CLEAN),
            Some(Err(_)) => self.end.mark(BROKEN),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps the request's body and puts its `RequestEnd` in the extensions.
pub fn watch(request: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    let end = RequestEnd::default();
    let (mut parts, inner) = request.into_parts();
    parts.extensions.insert(end.clone());
    let body = tonic::body::Body::new(WatchedBody { inner, end });
    http::Request::from_parts(parts, body)
}

/// Called by a handler once its request stream ended: `Ok` only if the
/// client ended it normally. A handler called without the RPC layer (no
/// `RequestEnd`) has only tonic's word for it.
pub fn check_clean_end(end: Option<&RequestEnd>) -> Result<(), Status> {
    match end {
        Some(end) if !end.is_clean() => Err(Status::cancelled(
            "the client reset or abandoned its stream before ending it; nothing was stored",
        )),
        _ => Ok(()),
    }
}

/// Gives the transport one turn before a commit: a client that reset the
/// stream without an error code (RST_STREAM NO_ERROR, which reads as a normal
/// end of the body) is noticed by hyper while the call is pending, and the
/// call is dropped there, before anything is stored.
pub async fn let_transport_see_resets() {
    tokio::task::yield_now().await;
}
