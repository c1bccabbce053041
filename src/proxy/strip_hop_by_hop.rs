//! Removes the client's hop-by-hop headers (RFC 9110 §7.6.1), and every header its
//! `Connection` names, as the request comes in. They belong to the client's connection, not to
//! the request; removed here, no layer below reads them, and no client can name a header the
//! gateway sets itself (the `If-Match` that pins a write, say) for removal on the way out.

use http::Request;
use tower::util::MapRequestLayer;

pub fn layer<B>() -> MapRequestLayer<fn(Request<B>) -> Request<B>> {
    MapRequestLayer::new(strip::<B>)
}

fn strip<B>(mut req: Request<B>) -> Request<B> {
    super::forward::strip_hop_by_hop(req.headers_mut());
    req
}
