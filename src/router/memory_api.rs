//! The memory API on the bus: agents add, search, read and mark-as-used memory items, only
//! within their scoped view (`Agent.spec.memory.read` / `.write`; a trailing `*` matches a
//! prefix). Errors are JSON in OpenAI's shape, `{"error": {"message", "type", "code"}}`.
//!
//! - `POST /v1/memory` `{namespace, content, tags?, confidence?}` -> 201 `{id, merged}`
//! - `GET /v1/memory/search?q=TEXT&namespace=NS&limit=N` -> 200 `{items}` (default: every
//!   readable namespace; most recently used first; limit default 20, at most 100)
//! - `GET /v1/memory/{id}` -> 200 the item
//! - `POST /v1/memory/{id}/use` -> 200 the item after it (uses + 1, last used now)
//!
//! 401 for an unknown caller, 403 outside the caller's scope (a read refusal does not say
//! where the item is, let alone what it holds), 404 for an unknown id, 400 for a bad request,
//! 503 when the truth store does not answer.
//!
//! These calls go straight to the store, not through the recorder's journal: the agent needs
//! the item's id back, and a search must see what was just added.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use super::http::{json_response, openai_error, openai_error_type};
use crate::report::now_ms;
use crate::store::memory::{in_scope, scope_covers};
use crate::store::{MemoryItem, MemoryQuery, NewMemory, Store, StoreError};

/// Who is calling, and the namespaces it may read and write (exact or a trailing `*` glob).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub agent: String,
    pub read: Vec<String>,
    pub write: Vec<String>,
}

impl Caller {
    /// An agent with its `spec.memory` scope.
    pub fn new(agent: impl Into<String>, scope: &crate::spec::agent::MemoryScope) -> Caller {
        Caller {
            agent: agent.into(),
            read: scope.read.clone(),
            write: scope.write.clone(),
        }
    }
}

/// Finds the caller of a request (its bearer token, in the bus), or None: 401.
pub type CallerResolver = Arc<dyn Fn(&HeaderMap) -> Option<Caller> + Send + Sync>;

/// Results of one search: default and most.
pub const DEFAULT_SEARCH_LIMIT: u32 = 20;
pub const MAX_SEARCH_LIMIT: u32 = 100;
/// Largest request body (content is at most 64 KiB; JSON escapes may grow it).
const MAX_BODY_BYTES: usize = 512 * 1024;

struct Api {
    store: Arc<dyn Store>,
    callers: CallerResolver,
    first_tier: String,
}

/// The memory routes, to be merged into the bus's router. New items start in `first_tier`
/// (the lowest of the Controller's `memory.tiers`, `working` by default).
pub fn router(store: Arc<dyn Store>, callers: CallerResolver, first_tier: impl Into<String>) -> Router {
    let api = Arc::new(Api {
        store,
        callers,
        first_tier: first_tier.into(),
    });
    Router::new()
        .route("/v1/memory", post(add))
        .route("/v1/memory/search", get(search))
        .route("/v1/memory/{id}", get(read))
        .route("/v1/memory/{id}/use", post(mark_used))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

#[derive(Deserialize)]
struct AddRequest {
    namespace: String,
    content: String,
    #[serde(default)]
    tags: Vec<String>,
    confidence: Option<f64>,
}

async fn add(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match api.caller(&headers) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let request: AddRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("the body is not a memory item ({{namespace, content, tags?, confidence?}}): {e}"),
            )
        }
    };
    if !in_scope(&caller.write, &request.namespace) {
        return error(
            StatusCode::FORBIDDEN,
            "namespace_forbidden",
            &format!(
                "agent `{}` may not write memory namespace `{}`: its writable namespaces are {}",
                caller.agent,
                request.namespace,
                list(&caller.write)
            ),
        );
    }
    let new = NewMemory {
        namespace: request.namespace,
        content: request.content,
        tags: request.tags,
        confidence: request.confidence,
        source_agent: Some(caller.agent),
        tier: api.first_tier.clone(),
        at_ms: now_ms(),
    };
    match api.store.memory_add(&new).await {
        Ok(added) => json_response(StatusCode::CREATED, &json!({"id": added.id, "merged": added.merged})),
        Err(e) => store_error(e),
    }
}

async fn search(State(api): State<Arc<Api>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let caller = match api.caller(&headers) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let mut text = String::new();
    let mut namespace = None;
    let mut limit = DEFAULT_SEARCH_LIMIT;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "q" => text = value.into_owned(),
            "namespace" if !value.is_empty() => namespace = Some(value.into_owned()),
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_SEARCH_LIMIT).contains(&n) => limit = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        &format!("limit `{value}` is not a number from 1 to {MAX_SEARCH_LIMIT}"),
                    )
                }
            },
            _ => {}
        }
    }
    let namespaces = match namespace {
        Some(ns) if !scope_covers(&caller.read, &ns) => {
            return error(
                StatusCode::FORBIDDEN,
                "namespace_forbidden",
                &format!(
                    "agent `{}` may not read memory namespace `{ns}`: its readable namespaces are {}",
                    caller.agent,
                    list(&caller.read)
                ),
            )
        }
        Some(ns) => vec![ns],
        None => caller.read.clone(),
    };
    let query = MemoryQuery {
        namespaces,
        text,
        limit,
    };
    match api.store.memory_search(&query).await {
        Ok(items) => json_response(
            StatusCode::OK,
            &json!({"items": items.iter().map(MemoryItem::to_json).collect::<Vec<_>>()}),
        ),
        Err(e) => store_error(e),
    }
}

async fn read(State(api): State<Arc<Api>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let caller = match api.caller(&headers) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    match api.readable(&caller, &id).await {
        Ok(item) => json_response(StatusCode::OK, &item.to_json()),
        Err(e) => e.into_response(),
    }
}

async fn mark_used(State(api): State<Arc<Api>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let caller = match api.caller(&headers) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = api.readable(&caller, &id).await {
        return e.into_response();
    }
    match api.store.memory_touch(&id, now_ms()).await {
        Ok(Some(item)) => json_response(StatusCode::OK, &item.to_json()),
        Ok(None) => not_found(&id),
        Err(e) => store_error(e),
    }
}

impl Api {
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        (self.callers)(headers).ok_or_else(|| ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: "missing or unknown bearer token: the memory API serves only enrolled agents".into(),
        })
    }

    /// The item, if it exists and the caller may read its namespace.
    async fn readable(&self, caller: &Caller, id: &str) -> Result<MemoryItem, ApiError> {
        let item = match self.store.memory_get(id).await {
            Ok(Some(item)) => item,
            Ok(None) => return Err(ApiError::not_found(id)),
            Err(e) => return Err(ApiError::store(e)),
        };
        if !in_scope(&caller.read, &item.namespace) {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                code: "namespace_forbidden",
                message: format!(
                    "memory item `{id}` is in a namespace agent `{}` may not read: its readable namespaces are {}",
                    caller.agent,
                    list(&caller.read)
                ),
            });
        }
        Ok(item)
    }
}

/// `[a, team-*]`, or `none`.
fn list(scope: &[String]) -> String {
    if scope.is_empty() {
        "none".into()
    } else {
        format!("[{}]", scope.join(", "))
    }
}

/// A refusal or failure, answered as `{"error": {"message", "type", "code"}}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn not_found(id: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("no memory item with id `{id}`"),
        }
    }

    fn store(e: StoreError) -> ApiError {
        match e {
            StoreError::Invalid(message) => ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_request",
                message,
            },
            other => {
                tracing::warn!(error = %other, "the memory API could not use the truth store");
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "store_unavailable",
                    message: format!("the truth store did not answer: {other}"),
                }
            }
        }
    }

    fn into_response(self) -> Response {
        error(self.status, self.code, &self.message)
    }
}

fn not_found(id: &str) -> Response {
    ApiError::not_found(id).into_response()
}

fn store_error(e: StoreError) -> Response {
    ApiError::store(e).into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let kind = match status {
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::NOT_FOUND => "not_found_error",
        s => openai_error_type(s),
    };
    openai_error(status, kind, Some(code), message)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use axum::http::header;
    use http_body_util::{BodyExt, Full};
    use serde_json::Value;

    use super::*;
    use crate::store::StoreUrl;

    /// A served memory API over a SQLite store in a temp dir; callers by bearer token.
    struct Served {
        address: SocketAddr,
        store: Arc<dyn Store>,
        _dir: tempfile::TempDir,
    }

    fn caller(agent: &str, read: &[&str], write: &[&str]) -> Caller {
        Caller {
            agent: agent.into(),
            read: read.iter().map(|s| s.to_string()).collect(),
            write: write.iter().map(|s| s.to_string()).collect(),
        }
    }

    async fn serve(callers: Vec<(&str, Caller)>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::parse(&format!("sqlite://{}", dir.path().join("truth.db").display())).unwrap();
        let store: Arc<dyn Store> = Arc::from(crate::store::open(&url).await.unwrap());
        let tokens: HashMap<String, Caller> = callers.into_iter().map(|(t, c)| (t.to_string(), c)).collect();
        let resolver: CallerResolver = Arc::new(move |headers: &HeaderMap| {
            let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
            tokens.get(value.strip_prefix("Bearer ")?).cloned()
        });
        let app = router(store.clone(), resolver, "working");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Served {
            address,
            store,
            _dir: dir,
        }
    }

    impl Served {
        async fn call(
            &self,
            method: &str,
            path: &str,
            token: Option<&str>,
            body: Option<Value>,
        ) -> (StatusCode, Value) {
            let mut request = hyper::Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.address));
            if let Some(token) = token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
            let response = crate::router::http::client(false)
                .request(request.body(Full::new(body)).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
            (status, value)
        }

        async fn add(&self, token: &str, namespace: &str, content: &str) -> (StatusCode, Value) {
            self.call(
                "POST",
                "/v1/memory",
                Some(token),
                Some(json!({"namespace": namespace, "content": content})),
            )
            .await
        }
    }

    fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, kind: &str, code: &str) -> String {
        assert_eq!(status, expected, "{body}");
        assert_eq!(body["error"]["type"], kind, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        body["error"]["message"].as_str().unwrap().to_string()
    }

    async fn two_agents() -> Served {
        serve(vec![
            (
                "tok-scribe",
                caller("scribe", &["notes", "team-*"], &["notes", "team-*"]),
            ),
            ("tok-reader", caller("reader", &["notes"], &[])),
            ("tok-other", caller("other", &["private"], &["private"])),
        ])
        .await
    }

    #[tokio::test]
    async fn adds_within_the_writable_scope_and_merges_duplicates() {
        let api = two_agents().await;
        let (status, body) = api
            .call(
                "POST",
                "/v1/memory",
                Some("tok-scribe"),
                Some(json!({"namespace": "team-a", "content": "Ollama listens on 11434", "tags": ["ops"], "confidence": 0.6})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["merged"], false);
        let id = body["id"].as_str().unwrap().to_string();
        let (status, again) = api.add("tok-scribe", "team-a", " Ollama listens on 11434 ").await;
        assert_eq!(status, StatusCode::CREATED, "{again}");
        assert_eq!(again, json!({"id": id, "merged": true}));
        let item = api.store.memory_get(&id).await.unwrap().unwrap();
        assert_eq!(item.source_agent.as_deref(), Some("scribe"), "the caller is the source");
        assert_eq!((item.uses, item.tier.as_str(), item.confidence), (1, "working", 0.6));
        assert_eq!(item.tags, vec!["ops"]);

        // Outside the writable scope: 403 naming the namespace and the scope.
        let (status, body) = api.add("tok-scribe", "private", "x").await;
        let message = assert_error(
            status,
            &body,
            StatusCode::FORBIDDEN,
            "permission_error",
            "namespace_forbidden",
        );
        assert!(
            message.contains("`scribe`") && message.contains("`private`"),
            "{message}"
        );
        assert!(message.contains("[notes, team-*]"), "{message}");
        let (status, body) = api.add("tok-reader", "notes", "x").await;
        let message = assert_error(
            status,
            &body,
            StatusCode::FORBIDDEN,
            "permission_error",
            "namespace_forbidden",
        );
        assert!(message.ends_with("its writable namespaces are none"), "{message}");
        assert_eq!(api.store.counts().await.unwrap()["memory_items"], 1);

        // Unknown caller, bad bodies.
        let (status, body) = api.add("tok-nobody", "notes", "x").await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "unauthorized",
        );
        let (status, body) = api.call("POST", "/v1/memory", None, Some(json!({}))).await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "unauthorized",
        );
        let (status, body) = api
            .call(
                "POST",
                "/v1/memory",
                Some("tok-scribe"),
                Some(json!({"namespace": "notes"})),
            )
            .await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
        );
        let (status, body) = api.add("tok-scribe", "notes", "   ").await;
        let message = assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
        );
        assert!(message.contains("empty"), "{message}");
    }

    #[tokio::test]
    async fn search_sees_only_readable_namespaces() {
        let api = two_agents().await;
        for (token, namespace, content) in [
            ("tok-scribe", "notes", "ollama port is 11434"),
            ("tok-scribe", "team-a", "Ollama keeps models in ~/.ollama"),
            ("tok-other", "private", "ollama secret plans"),
        ] {
            let (status, body) = api.add(token, namespace, content).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        let contents = |body: &Value| {
            let mut found: Vec<String> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["namespace"].as_str().unwrap().to_string())
                .collect();
            found.sort();
            found
        };
        let (status, body) = api
            .call("GET", "/v1/memory/search?q=OLLAMA", Some("tok-scribe"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(contents(&body), vec!["notes", "team-a"]);
        let (_, body) = api
            .call("GET", "/v1/memory/search?q=ollama", Some("tok-reader"), None)
            .await;
        assert_eq!(contents(&body), vec!["notes"]);
        let (_, body) = api
            .call("GET", "/v1/memory/search?q=ollama", Some("tok-other"), None)
            .await;
        assert_eq!(contents(&body), vec!["private"]);
        let (_, body) = api
            .call(
                "GET",
                "/v1/memory/search?q=ollama&namespace=team-a&limit=5",
                Some("tok-scribe"),
                None,
            )
            .await;
        assert_eq!(contents(&body), vec!["team-a"]);
        let (_, body) = api
            .call("GET", "/v1/memory/search?q=models%20in", Some("tok-scribe"), None)
            .await;
        assert_eq!(body["items"].as_array().unwrap().len(), 1, "{body}");

        // A namespace outside the readable scope: 403, not an empty answer.
        let (status, body) = api
            .call(
                "GET",
                "/v1/memory/search?q=ollama&namespace=private",
                Some("tok-scribe"),
                None,
            )
            .await;
        let message = assert_error(
            status,
            &body,
            StatusCode::FORBIDDEN,
            "permission_error",
            "namespace_forbidden",
        );
        assert!(message.contains("may not read memory namespace `private`"), "{message}");
        let (status, body) = api
            .call("GET", "/v1/memory/search?namespace=team-*", Some("tok-reader"), None)
            .await;
        assert_error(
            status,
            &body,
            StatusCode::FORBIDDEN,
            "permission_error",
            "namespace_forbidden",
        );
        let (status, body) = api
            .call("GET", "/v1/memory/search?limit=0", Some("tok-scribe"), None)
            .await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
        );
        let (status, body) = api.call("GET", "/v1/memory/search?q=x", None, None).await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "unauthorized",
        );
    }

    #[tokio::test]
    async fn reading_and_marking_used_need_the_readable_scope() {
        let api = two_agents().await;
        let (_, body) = api.add("tok-other", "private", "the secret is 42").await;
        let private = body["id"].as_str().unwrap().to_string();
        let (_, body) = api.add("tok-scribe", "notes", "the sky is blue").await;
        let notes = body["id"].as_str().unwrap().to_string();

        let (status, body) = api
            .call("GET", &format!("/v1/memory/{notes}"), Some("tok-reader"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["content"], "the sky is blue");
        assert_eq!(body["source_agent"], "scribe");

        for (method, path) in [
            ("GET", format!("/v1/memory/{private}")),
            ("POST", format!("/v1/memory/{private}/use")),
        ] {
            let (status, body) = api.call(method, &path, Some("tok-scribe"), None).await;
            let message = assert_error(
                status,
                &body,
                StatusCode::FORBIDDEN,
                "permission_error",
                "namespace_forbidden",
            );
            assert!(!body.to_string().contains("secret"), "no content leaks: {body}");
            assert!(!message.contains("private"), "not even the namespace: {message}");
        }
        assert_eq!(api.store.memory_get(&private).await.unwrap().unwrap().uses, 0);

        let (status, body) = api
            .call("POST", &format!("/v1/memory/{notes}/use"), Some("tok-reader"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["uses"], 1);
        assert_eq!(api.store.memory_get(&notes).await.unwrap().unwrap().uses, 1);

        let (status, body) = api
            .call("GET", "/v1/memory/no-such-item", Some("tok-reader"), None)
            .await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found_error", "not_found");
        let (status, body) = api
            .call("POST", "/v1/memory/no-such-item/use", Some("tok-reader"), None)
            .await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found_error", "not_found");
        let (status, body) = api.call("GET", &format!("/v1/memory/{notes}"), None, None).await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "unauthorized",
        );
    }
}
