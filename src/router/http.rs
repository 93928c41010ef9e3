//! The client side of HTTP that probes, pulls and the bus share: how a client is built, how a
//! failed request is named, which provider URLs can be used, and how an answer is quoted.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// An HTTP/1 client over plain TCP.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How many bytes of an answer a reason quotes.
pub const SNIPPET_BYTES: usize = 200;

/// A client with TCP_NODELAY. `keep_idle: false` opens a connection per request: a listener
/// that stopped accepting is seen, a hung request never blocks the next one, and a client
/// shared across tokio runtimes never holds a connection whose task died with its runtime.
pub fn client(keep_idle: bool) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    if !keep_idle {
        builder.pool_max_idle_per_host(0);
    }
    builder.build(connector)
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

/// The base URL without a trailing slash, or why it cannot be used (plain HTTP only, for now).
pub fn base_url(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: not a URL: {e}"))?;
    match parsed.scheme() {
        "http" => Ok(parsed.as_str().trim_end_matches('/').to_string()),
        "https" => Err(format!("{url}: https is not supported yet (probes speak plain HTTP)")),
        other => Err(format!("{url}: unsupported scheme `{other}` (expected http)")),
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
