//! HTTP helpers the router shares. Client side (probes, pulls and the bus): how a client is
//! built, how a failed request is named, which provider URLs can be used, and how an answer is
//! quoted. Server side (the bus, the tool gate and the memory API): who a bearer token names
//! and how a JSON answer or an OpenAI-shaped error is written.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// An HTTP/1 client over TCP, plain or TLS (cloud providers).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How many bytes of an answer a reason quotes.
pub const SNIPPET_BYTES: usize = 200;

/// A client with TCP_NODELAY. `keep_idle: false` opens a connection per request: a listener
/// that stopped accepting is seen, a hung request never blocks the next one, and a client
/// shared across tokio runtimes never holds a connection whose task died with its runtime.
pub fn client(keep_idle: bool) -> HttpClient {
    client_trusting(keep_idle, system_roots())
}

/// A client whose TLS trusts `roots` only.
pub fn client_trusting(keep_idle: bool, roots: Arc<rustls::RootCertStore>) -> HttpClient {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    let mut builder = Client::builder(TokioExecutor::new());
    if !keep_idle {
        builder.pool_max_idle_per_host(0);
    }
    builder.build(connector)
}

/// The system's trusted roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured), read once; a
/// certificate that cannot be parsed is skipped, not fatal (a plain-HTTP host needs none).
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<rustls::RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::debug!(%error, "a system certificate could not be read");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
            Arc::new(roots)
        })
        .clone()
}

/// hyper-util's error says only "client error (Connect)"; the cause is at the end of its chain.
pub fn transport_reason(error: &hyper_util::client::legacy::Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    if let Some(io) = innermost.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::ConnectionRefused {
            return "connection refused".into();
        }
    }
    if error.is_connect() {
        format!("cannot connect: {innermost}")
    } else {
        innermost.to_string()
    }
}

/// The message at the end of an error's chain (hyper's own messages name only the layer).
pub fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

/// The base URL without a trailing slash, or why it cannot be used.
pub fn base_url(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: not a URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed.as_str().trim_end_matches('/').to_string()),
        other => Err(format!("{url}: unsupported scheme `{other}` (expected http or https)")),
    }
}

/// The first bytes of an answer, on one line.
pub fn snippet(answer: &[u8]) -> String {
    if answer.is_empty() {
        return "(empty)".into();
    }
    truncate(&String::from_utf8_lossy(&answer[..answer.len().min(SNIPPET_BYTES + 4)]))
}

/// `text` on one line, at most [`SNIPPET_BYTES`] bytes (cut at a character boundary).
pub fn truncate(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.len() <= SNIPPET_BYTES {
        return one_line;
    }
    let mut end = SNIPPET_BYTES;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &one_line[..end])
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case), or None.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A JSON answer with `status`.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    json_bytes_response(status, body.to_string())
}

/// An answer with `status` whose body is JSON already.
pub fn json_bytes_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The `type` of an OpenAI-shaped error for `status` (an API may name some statuses more
/// precisely before falling back on this).
pub fn openai_error_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        s if s.is_client_error() => "invalid_request_error",
        _ => "api_error",
    }
}

/// An error in OpenAI's shape, `{"error": {"message", "type", "code"}}` (`code` null when None).
pub fn openai_error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "code": code}}),
    )
}
