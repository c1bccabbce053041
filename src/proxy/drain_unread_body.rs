//! Reads and discards, in the background and within bounds, whatever of a request body the
//! layers below did not read (a refusal before the body, a body over the limit), as nginx's
//! lingering close does. A connection closed with request bytes still unread makes the kernel
//! send a reset, and a reset can destroy the answer before the client reads it: the client
//! would see "connection reset" or "broken pipe" instead of its 401, 413 or 429.

use crate::BoxError;
use bytes::Bytes;
use http::{header, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::util::MapRequestLayer;

/// How much of an abandoned body is still read, and for how long, before it is let go.
pub const DRAIN_BYTES: usize = 1 << 20;
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Wraps every request body in a [`DrainOnDrop`].
pub fn layer<B>() -> MapRequestLayer<fn(Request<B>) -> Request<DrainOnDrop>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    MapRequestLayer::new(wrap::<B>)
}

fn wrap<B>(req: Request<B>) -> Request<DrainOnDrop>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // A client waiting for `100 Continue` has not sent its body; reading would invite it to
    // (hyper honours any of the `Expect` values, so every one is looked at). HTTP/2 resets
    // one stream, never the connection: nothing to drain there.
    let expects_continue = req
        .headers()
        .get_all(header::EXPECT)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let drain = !expects_continue && req.version() < http::Version::HTTP_2;
    req.map(|body| DrainOnDrop {
        body: Some(body.map_err(Into::into).boxed_unsync()),
        drain,
    })
}

/// A request body that, dropped before its end, has its rest read and discarded by a
/// background task (at most [`DRAIN_BYTES`], for at most [`DRAIN_TIME`]).
pub struct DrainOnDrop {
    body: Option<UnsyncBoxBody<Bytes, BoxError>>,
    drain: bool,
}

impl Body for DrainOnDrop {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(b) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(b).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            // Read to its end (a chunked body never says so beforehand): nothing left to drain.
            self.body = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        if !self.drain || body.is_end_stream() {
            return;
        }
        // Outside a runtime (a test dropping a request) there is no connection to keep.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut left = DRAIN_BYTES;
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while let Some(Ok(frame)) = body.frame().await {
                    let n = frame.data_ref().map_or(0, Bytes::len);
                    if n >= left {
                        break;
                    }
                    left -= n;
                }
            })
            .await;
        });
    }
}
