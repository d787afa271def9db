//! Router assembly and listening (the state handlers share: [`super::state`]).
//!
//! `serve` = [`Transport::from_config`] (plain HTTP, or HTTPS when the
//! config has `[tls]`) → [`check_listen`] (refuse a public address without
//! publisher auth) → [`bind`] → [`serve`]. Both transports serve the same
//! [`app`] router; HTTPS wraps each accepted stream in a `tokio-rustls`
//! acceptor first ([`tls`]).

pub use super::state::AppState;
pub use crate::config::ConfigError;

use super::tls;
use crate::config::Config;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// How connections are carried.
#[derive(Clone)]
pub enum Transport {
    /// Plain HTTP/1.1.
    Plain,
    /// HTTP/1.1 over TLS (rustls, certificate and key from `[tls]`).
    Tls(tokio_rustls::TlsAcceptor),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.scheme())
    }
}

impl Transport {
    /// The transport `config` asks for: HTTPS when it has `[tls]` (reading
    /// and checking the certificate and key now), plain HTTP otherwise.
    pub fn from_config(config: &Config) -> Result<Transport, ConfigError> {
        match &config.tls {
            Some(t) => Ok(Transport::Tls(tls::load_acceptor(t)?)),
            None => Ok(Transport::Plain),
        }
    }

    /// URL scheme.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Plain => "http",
            Transport::Tls(_) => "https",
        }
    }

    /// Whether connections are encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

/// The whole router: OCI `/v2/` and the sync API, with request logging.
pub fn app(state: AppState) -> Router {
    super::oci::router()
        .merge(super::sync::router())
        .merge(super::ops::router())
        .merge(super::fleet::router())
        .merge(super::edit::router())
        .layer(axum::middleware::from_fn(close_after_error_with_body))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// An error answered to a request that carries a body may leave that body
/// unread (a bad token is refused before the body is looked at), so the
/// connection cannot carry another request: say so with `Connection:
/// close`, or a client that pools connections would send its next request
/// into a socket the server is closing.
async fn close_after_error_with_body(req: Request, next: Next) -> Response {
    use axum::http::{header, HeaderValue};
    let headers = req.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let mut resp = next.run(req).await;
    if has_body && !resp.status().is_success() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// One line per request: method, path, status, time. Never headers (they
/// carry credentials). Refused requests (401, 403, 404, and 4xx answers to
/// pushes) are logged at info, the default level; server errors at warn;
/// the rest at debug. Every request is counted in the metrics by route
/// and status.
async fn log_request(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    let elapsed = start.elapsed();
    let ms = elapsed.as_millis();
    let status = resp.status().as_u16();
    let route = super::metrics::route_of(&path);
    super::metrics::request_done(method.as_str(), route, status, elapsed.as_secs_f64());
    if resp.status().is_server_error() {
        tracing::warn!(%method, path, route, status, ms, "request failed");
    } else if is_refusal(&method, route, status) {
        tracing::info!(%method, path, route, status, ms, "request refused");
    } else {
        tracing::debug!(%method, path, route, status, ms, "request");
    }
    resp
}

/// Whether an answer is a refusal worth a line at the default level: a
/// 401/403 anywhere, a 404 except a blob existence probe (`HEAD` on a
/// blob: clients ask before every upload), any other 4xx to a write.
fn is_refusal(method: &axum::http::Method, route: &str, status: u16) -> bool {
    use axum::http::Method;
    match status {
        401 | 403 => true,
        404 => !(method == Method::HEAD && route == "blob"),
        400..=499 => matches!(
            *method,
            Method::PUT | Method::POST | Method::PATCH | Method::DELETE
        ),
        _ => false,
    }
}

/// Resolve `listen` and check it is allowed: without publishers only
/// loopback addresses are (anonymous push must not reach the network).
/// A public address over plain HTTP with credentials configured is
/// allowed but warned about (passwords and tokens would travel in clear).
pub async fn check_listen(
    listen: &str,
    config: &Config,
    transport: &Transport,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .map_err(|e| ConfigError::BadListen {
            addr: listen.to_owned(),
            why: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ConfigError::BadListen {
            addr: listen.to_owned(),
            why: "resolves to nothing".into(),
        });
    }
    if !config.has_publisher_auth() {
        if addrs.iter().any(|a| !a.ip().is_loopback()) {
            return Err(ConfigError::PublicWithoutAuth {
                addr: listen.to_owned(),
            });
        }
        tracing::warn!("no publishers configured: anyone can push; serving on loopback only");
    } else if !transport.is_tls() && addrs.iter().any(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            "serving plain HTTP on a non-loopback address: publisher passwords and device \
             tokens travel in clear text; add [tls] to the config (or terminate TLS in a proxy)"
        );
    }
    Ok(addrs)
}

/// Bind the first of `addrs` that works.
pub async fn bind(addrs: &[SocketAddr]) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    let mut last = None;
    for a in addrs {
        match TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some((a, e)),
        }
    }
    let (a, e) = last.context("no address to bind")?;
    Err(e).with_context(|| format!("binding {a}"))
}

/// Serve `state` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(state);
    match transport {
        Transport::Plain => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Transport::Tls(acceptor) => {
            axum::serve(tls::TlsListener::new(listener, acceptor)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
