//! The floor under scimgate in the load benchmark: the same building blocks (tokio, rustls with
//! ring, hyper's server and hyper-util's pooled client, scimgate's own TLS and client setup,
//! one single-threaded runtime per core like scimgate's shards) proxying with no policy at all:
//! no token, no parsing, no logs. scimgate minus this row is what the policy costs; this row
//! minus nginx is what the Rust HTTP/TLS platform costs.
//!
//!   bare_proxy <listen> <cert.pem> <key.pem> <backend origin> <public prefix> <backend prefix>
//!
//! Not a product: it forwards every request, with its headers, after swapping the path prefix.

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

struct Route {
    client: scimgate::proxy::upstream::UpstreamClient,
    origin: String,
    public: String,
    backend: String,
}

async fn proxy(route: Arc<Route>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        r
    };
    let (mut parts, body) = req.into_parts();
    let Some(rest) = parts
        .uri
        .path_and_query()
        .and_then(|pq| pq.as_str().strip_prefix(route.public.as_str()))
    else {
        return reply(StatusCode::NOT_FOUND);
    };
    let Ok(uri) = format!("{}{}{}", route.origin, route.backend, rest).parse::<Uri>() else {
        return reply(StatusCode::BAD_REQUEST);
    };
    let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
        return reply(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    parts.headers.remove(http::header::HOST);
    let Ok(resp) = route
        .client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
    else {
        return reply(StatusCode::BAD_GATEWAY);
    };
    let (mut parts, body) = resp.into_parts();
    let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
        return reply(StatusCode::BAD_GATEWAY);
    };
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Full::new(body))
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key, origin, public, backend] = args.as_slice() else {
        return Err("usage: bare_proxy <listen> <cert.pem> <key.pem> <backend origin> <public prefix> <backend prefix>".into());
    };
    let tls = scimgate::tls::server_config(cert.as_ref(), key.as_ref(), None)?;
    let acceptor = TlsAcceptor::from(tls);
    let listener = std::net::TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    // As scimgate serves: one single-threaded runtime per core, all accepting from the same
    // socket, each with its own pooled client.
    let shards = scimgate::shard::default_count();
    let mut threads = Vec::new();
    for _ in 0..shards {
        let listener = listener.try_clone().map_err(|e| e.to_string())?;
        let route = Arc::new(Route {
            client: scimgate::proxy::upstream::build_client(None)?,
            origin: origin.clone(),
            public: public.clone(),
            backend: backend.clone(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let acceptor = acceptor.clone();
        threads.push(std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                let builder = auto::Builder::new(TokioExecutor::new());
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let (acceptor, builder, route) =
                        (acceptor.clone(), builder.clone(), route.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = hyper::service::service_fn(move |req| {
                            let route = route.clone();
                            async move { Ok::<_, Infallible>(proxy(route, req).await) }
                        });
                        let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                    });
                }
            })
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
