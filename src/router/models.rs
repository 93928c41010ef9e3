//! Makes sure each provider's `models` are present: lists what a provider has, and pulls what an
//! Ollama provider lacks through its streamed `POST /api/pull`.
//!
//! OpenAI-compatible servers have no pull API, so a model they lack is only reported. A pull is
//! bounded by time without progress, not by total time: a multi-GiB download may take an hour,
//! but a pull whose progress stopped is stuck.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{header, Method, Request, Response};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::health::ProbeTarget;
use super::http::{base_url, innermost, snippet, transport_reason, truncate, HttpClient};
use crate::spec::provider::ProviderApi;

/// Model lists larger than this are a failure (a cloud's list is a few hundred KiB).
const MAX_LIST_BYTES: usize = 8 << 20;

/// One NDJSON line of a pull longer than this is a failure (real lines are ~200 bytes).
const MAX_PULL_LINE_BYTES: usize = 64 << 10;

/// How much of an unexpected answer an error quotes.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelsError {
    #[error("listing the models of {provider} failed: {reason}")]
    ListingFailed { provider: String, reason: String },
    #[error("pulling {model} on {provider} failed (last status: {last_status}): {reason}")]
    PullFailed {
        provider: String,
        model: String,
        /// The last status line the provider streamed, or "none".
        last_status: String,
        reason: String,
    },
    #[error(
        "{provider} speaks the OpenAI API, which cannot pull models: {model} must be provided on the server itself"
    )]
    PullNotSupported { provider: String, model: String },
}

/// One progress line of a pull, as Ollama streams it (status, digest, total, completed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PullProgress {
    pub model: String,
    pub status: String,
    pub total: Option<u64>,
    pub completed: Option<u64>,
}

/// What a provider lacks: Ollama `GET /api/tags` names (match `name` or `model`, and treat "x"
/// as "x:latest"); OpenAI `GET {url}/models` ids (OpenAI-compatible servers cannot pull: a
/// missing model is reported, not pulled). Each wanted model is reported once, as spelled.
pub async fn missing_models(target: &ProbeTarget, wanted: &[String]) -> Result<Vec<String>, ModelsError> {
    let listing_failed = |reason: String| ModelsError::ListingFailed {
        provider: target.provider.clone(),
        reason,
    };
    let base = base_url(&target.url).map_err(listing_failed)?;
    let (path, list_key, name_keys): (&str, &str, &[&str]) = match target.api {
        ProviderApi::Ollama => ("/api/tags", "models", &["name", "model"]),
        ProviderApi::Openai => ("/models", "data", &["id"]),
    };
    let request = request(Method::GET, &base, path, None, target.api_key.as_deref()).map_err(listing_failed)?;
    let listing = async {
        let response = shared_client()
            .request(request)
            .await
            .map_err(|e| format!("GET {path}: {}", transport_reason(&e)))?;
        let status = response.status();
        let answer = Limited::new(response.into_body(), MAX_LIST_BYTES)
            .collect()
            .await
            .map_err(|e| format!("GET {path}: reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("GET {path} answered {}: {}", status.as_u16(), snippet(&answer)));
        }
        let answer: Value = serde_json::from_slice(&answer)
            .map_err(|_| format!("GET {path} answered with no JSON: {}", snippet(&answer)))?;
        let entries = answer.get(list_key).and_then(Value::as_array).ok_or_else(|| {
            format!(
                "GET {path} answered without a `{list_key}` list: {}",
                truncate(&answer.to_string())
            )
        })?;
        Ok(entries
            .iter()
            .flat_map(|entry| name_keys.iter().filter_map(|key| entry.get(*key)?.as_str()))
            .map(canonical_name)
            .collect::<Vec<_>>())
    };
    let present = tokio::time::timeout(target.timeout, listing)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "GET {path} timed out after {}",
                humantime::format_duration(target.timeout)
            ))
        })
        .map_err(listing_failed)?;
    let mut missing: Vec<String> = Vec::new();
    for model in wanted {
        let name = canonical_name(model);
        let already = missing.iter().any(|m| canonical_name(m) == name);
        if !already && !present.contains(&name) {
            missing.push(model.clone());
        }
    }
    Ok(missing)
}

/// Pulls `model` through Ollama's `POST /api/pull` {"model": m, "stream": true}, calling
/// `progress` for each NDJSON line as it arrives (never buffering the whole answer), until
/// {"status":"success"}; an {"error": ...} line, a cut stream or a non-2xx answer is an error
/// naming the model and the last status. Bounded by `no_progress_timeout` of no progress (a
/// stalled pull is an error), not by total time.
pub async fn pull(
    target: &ProbeTarget,
    model: &str,
    no_progress_timeout: Duration,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<(), ModelsError> {
    if target.api == ProviderApi::Openai {
        return Err(ModelsError::PullNotSupported {
            provider: target.provider.clone(),
            model: model.to_string(),
        });
    }
    let mut last_status: Option<String> = None;
    let outcome = stream_pull(target, model, no_progress_timeout, progress, &mut last_status).await;
    outcome.map_err(|reason| ModelsError::PullFailed {
        provider: target.provider.clone(),
        model: model.to_string(),
        last_status: last_status.unwrap_or_else(|| "none".into()),
        reason,
    })
}

/// The pull itself; `last_status` is kept outside so that every error can name it.
async fn stream_pull(
    target: &ProbeTarget,
    model: &str,
    no_progress_timeout: Duration,
    progress: &mut (dyn FnMut(PullProgress) + Send),
    last_status: &mut Option<String>,
) -> Result<(), String> {
    let base = base_url(&target.url)?;
    let body = json!({"model": model, "stream": true});
    let request = request(Method::POST, &base, "/api/pull", Some(body), None)?;
    let stalled = || format!("no progress for {}", humantime::format_duration(no_progress_timeout));
    let mut deadline = Instant::now() + no_progress_timeout;
    let response: Response<hyper::body::Incoming> = tokio::time::timeout_at(deadline, shared_client().request(request))
        .await
        .map_err(|_| stalled())?
        .map_err(|e| format!("POST /api/pull: {}", transport_reason(&e)))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        // The error body is small; read it only to quote it, still bounded.
        let answer = tokio::time::timeout_at(deadline, Limited::new(body, MAX_PULL_LINE_BYTES).collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        return Err(format!(
            "POST /api/pull answered {}: {}",
            status.as_u16(),
            error_message(&answer)
        ));
    }
    deadline = Instant::now() + no_progress_timeout;
    // Bytes of a line not yet ended by '\n' (frames need not align with lines).
    let mut pending: Vec<u8> = Vec::new();
    let mut last_seen: Option<(String, Option<u64>)> = None;
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| stalled())?;
        let data = match frame {
            None => {
                // A last line without '\n' still counts.
                if !pending.is_empty() {
                    let line = std::mem::take(&mut pending);
                    if handle_line(model, &line, progress, last_status)? == LineOutcome::Success {
                        return Ok(());
                    }
                }
                return Err("the stream ended before success".into());
            }
            Some(Err(e)) => return Err(format!("the stream broke: {}", innermost(&e))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers carry no progress
            },
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match handle_line(model, &line, progress, last_status)? {
                LineOutcome::Success => return Ok(()),
                LineOutcome::Blank => {}
                LineOutcome::Progress(seen) => {
                    // Only a new status or more bytes count as progress: a server repeating the
                    // same line does not keep a stalled pull alive.
                    if last_seen.as_ref() != Some(&seen) {
                        deadline = Instant::now() + no_progress_timeout;
                        last_seen = Some(seen);
                    }
                }
            }
        }
        if pending.len() > MAX_PULL_LINE_BYTES {
            return Err(format!("a progress line is longer than {MAX_PULL_LINE_BYTES} bytes"));
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum LineOutcome {
    Success,
    Blank,
    /// The status and completed bytes the line reported.
    Progress((String, Option<u64>)),
}

/// One NDJSON line of a pull: success, an error, or progress passed to `progress`.
fn handle_line(
    model: &str,
    line: &[u8],
    progress: &mut (dyn FnMut(PullProgress) + Send),
    last_status: &mut Option<String>,
) -> Result<LineOutcome, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(LineOutcome::Blank);
    }
    let value: Value =
        serde_json::from_slice(line).map_err(|_| format!("streamed a line that is not JSON: {}", snippet(line)))?;
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        let message = error.as_str().map(str::to_string).unwrap_or_else(|| error.to_string());
        return Err(format!("answered an error: {}", truncate(&message)));
    }
    let status = value
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("streamed a line without a status: {}", snippet(line)))?;
    if status == "success" {
        return Ok(LineOutcome::Success);
    }
    let line = PullProgress {
        model: model.to_string(),
        status: status.to_string(),
        total: value.get("total").and_then(Value::as_u64),
        completed: value.get("completed").and_then(Value::as_u64),
    };
    *last_status = Some(line.status.clone());
    let seen = (line.status.clone(), line.completed);
    progress(line);
    Ok(LineOutcome::Progress(seen))
}

/// Pulls every missing model in order; returns per missing model: Ok(pulled) or Err(why). An
/// OpenAI-compatible provider's missing models are all Err (it cannot pull). Only a failure to
/// list is an error of the whole call.
pub async fn ensure_models(
    target: &ProbeTarget,
    wanted: &[String],
    no_progress_timeout: Duration,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<Vec<(String, Result<(), String>)>, ModelsError> {
    let missing = missing_models(target, wanted).await?;
    let mut outcomes = Vec::with_capacity(missing.len());
    for model in missing {
        let pulled = pull(target, &model, no_progress_timeout, progress)
            .await
            .map_err(|e| e.to_string());
        outcomes.push((model, pulled));
    }
    Ok(outcomes)
}

/// Human text for a progress line: "pulling 6a0746a1ec1a 42% (1.2 GiB of 2.0 GiB)"; a line
/// without sizes is its status alone.
pub fn describe(p: &PullProgress) -> String {
    match p.total {
        Some(total) if total > 0 => {
            let completed = p.completed.unwrap_or(0).min(total);
            let percent = completed as u128 * 100 / total as u128;
            format!(
                "{} {percent}% ({} of {})",
                p.status,
                human_bytes(completed),
                human_bytes(total)
            )
        }
        _ => p.status.clone(),
    }
}

/// Binary units with one decimal, as Ollama's own CLI shows sizes: "1.2 GiB", "512 B".
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Ollama's canonical spelling for comparison: no default registry or namespace, tag `latest`
/// by default, case-insensitive.
fn canonical_name(name: &str) -> String {
    let mut name = name.trim().to_ascii_lowercase();
    for prefix in ["registry.ollama.ai/", "library/"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            name = rest.to_string();
        }
    }
    let last_segment = name.rsplit('/').next().unwrap_or(&name);
    if !last_segment.contains(':') {
        name.push_str(":latest");
    }
    name
}

/// One HTTP/1 client for listing and pulling, created once, without idle connections (see
/// `http::client`).
fn shared_client() -> &'static HttpClient {
    static SHARED: OnceLock<HttpClient> = OnceLock::new();
    SHARED.get_or_init(|| super::http::client(false))
}

fn request(
    method: Method,
    base: &str,
    path: &str,
    body: Option<Value>,
    api_key: Option<&str>,
) -> Result<Request<Full<Bytes>>, String> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header(header::USER_AGENT, "mirrorctl-models");
    if let Some(key) = api_key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let payload = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    request
        .body(Full::new(payload))
        .map_err(|e| format!("bad request: {e}"))
}

/// The `error` of an Ollama error answer, else the answer's first bytes.
fn error_message(answer: &[u8]) -> String {
    serde_json::from_slice::<Value>(answer)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(truncate))
        .unwrap_or_else(|| snippet(answer))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, ChildStdout, Command, Stdio};

    use super::*;

    const PATIENCE: Duration = Duration::from_secs(5);

    /// A running scripts/fake-llm, killed when dropped.
    struct FakeLlm {
        child: Child,
        /// Kept open so the fake never writes to a closed pipe.
        _stdout: BufReader<ChildStdout>,
        url: String,
    }

    impl FakeLlm {
        fn start(models: &str, pullable: &str, extra: &[&str]) -> FakeLlm {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fake-llm");
            let mut child = Command::new("python3")
                .arg(script)
                .args(["--port", "0", "--name", "A", "--token-delay-ms", "1"])
                .args(["--models", models, "--pullable", pullable])
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 runs scripts/fake-llm");
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut first = String::new();
            stdout.read_line(&mut first).unwrap();
            let url = first
                .trim()
                .strip_prefix("listening on ")
                .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
                .to_string();
            FakeLlm {
                child,
                _stdout: stdout,
                url,
            }
        }

        fn target(&self, api: ProviderApi) -> ProbeTarget {
            let url = match api {
                ProviderApi::Ollama => self.url.clone(),
                ProviderApi::Openai => format!("{}/v1", self.url),
            };
            ProbeTarget {
                provider: "fake".into(),
                api,
                url,
                api_key: None,
                probe_model: None,
                generate: false,
                timeout: PATIENCE,
            }
        }

        /// Switches the fake's fault settings at run time (POST /_fault).
        async fn set_fault(&self, settings: Value) {
            let request = request(Method::POST, &self.url, "/_fault", Some(settings), None).unwrap();
            let response = shared_client().request(request).await.unwrap();
            assert!(response.status().is_success());
        }
    }

    impl Drop for FakeLlm {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Pulls, collecting the progress lines.
    async fn pull_collecting(
        target: &ProbeTarget,
        model: &str,
        timeout: Duration,
    ) -> (Result<(), ModelsError>, Vec<PullProgress>) {
        let mut lines = Vec::new();
        let outcome = pull(target, model, timeout, &mut |p| lines.push(p)).await;
        (outcome, lines)
    }

    #[tokio::test]
    async fn missing_models_are_those_not_in_the_tags_with_latest_implied() {
        let fake = FakeLlm::start("a,qwen2.5:0.5b,library/c:7b", "a", &[]);
        let target = fake.target(ProviderApi::Ollama);
        let wanted = names(&["a", "a:latest", "qwen2.5:0.5b", "c:7b", "b", "b:latest", "qwen2.5"]);
        // "b" and "b:latest" are one model, reported once as first spelled.
        assert_eq!(
            missing_models(&target, &wanted).await.unwrap(),
            names(&["b", "qwen2.5"])
        );
        assert_eq!(missing_models(&target, &[]).await.unwrap(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_pull_streams_progress_then_the_model_is_listed() {
        let fake = FakeLlm::start("a", "a,b", &[]);
        let target = fake.target(ProviderApi::Ollama);
        let (outcome, lines) = pull_collecting(&target, "b", PATIENCE).await;
        outcome.unwrap();
        assert!(lines.len() > 5, "{lines:?}");
        assert_eq!(lines[0].status, "pulling manifest");
        assert!(lines.iter().all(|l| l.model == "b"));
        assert!(lines
            .iter()
            .any(|l| l.status.starts_with("pulling ") && l.total.is_some() && l.completed.is_some()));
        assert_eq!(lines.last().unwrap().status, "writing manifest");
        assert_eq!(
            missing_models(&target, &names(&["a", "b"])).await.unwrap(),
            Vec::<String>::new()
        );
    }

    #[tokio::test]
    async fn an_unknown_model_fails_naming_it() {
        let fake = FakeLlm::start("a", "a", &[]);
        let target = fake.target(ProviderApi::Ollama);
        let (outcome, _) = pull_collecting(&target, "nope:1b", PATIENCE).await;
        let error = outcome.unwrap_err();
        assert_eq!(
            error,
            ModelsError::PullFailed {
                provider: "fake".into(),
                model: "nope:1b".into(),
                last_status: "pulling manifest".into(),
                reason: "answered an error: pull model manifest: file does not exist".into(),
            }
        );
        assert_eq!(
            error.to_string(),
            "pulling nope:1b on fake failed (last status: pulling manifest): answered an error: pull model manifest: file does not exist"
        );
    }

    #[tokio::test]
    async fn a_stream_broken_mid_pull_is_an_error() {
        let fake = FakeLlm::start("a", "a,b", &[]);
        fake.set_fault(json!({"mode": "break-stream"})).await;
        let target = fake.target(ProviderApi::Ollama);
        let (outcome, lines) = pull_collecting(&target, "b", PATIENCE).await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        let ModelsError::PullFailed {
            model,
            last_status,
            reason,
            ..
        } = outcome.unwrap_err()
        else {
            panic!("not a pull failure")
        };
        assert_eq!(model, "b");
        assert_eq!(last_status, lines[1].status);
        // The connection closes inside the chunked body, so hyper sees a cut, not an end.
        assert_eq!(reason, "the stream broke: unexpected EOF during chunk size line");
        fake.set_fault(json!({"mode": "none"})).await;
        assert_eq!(missing_models(&target, &names(&["b"])).await.unwrap(), names(&["b"]));
    }

    #[tokio::test]
    async fn a_stalled_pull_fails_after_the_no_progress_timeout() {
        let fake = FakeLlm::start("a", "a,b", &[]);
        // 2 s between lines, 300 ms of patience: the first line is already late.
        fake.set_fault(json!({"token_delay_ms": 2000})).await;
        let target = fake.target(ProviderApi::Ollama);
        let started = std::time::Instant::now();
        let (outcome, _) = pull_collecting(&target, "b", Duration::from_millis(300)).await;
        let error = outcome.unwrap_err();
        assert!(error.to_string().ends_with("no progress for 300ms"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn ensure_models_pulls_only_what_is_missing() {
        let fake = FakeLlm::start("a", "a,b,c:7b", &[]);
        let target = fake.target(ProviderApi::Ollama);
        let mut pulled_models = Vec::new();
        let outcomes = ensure_models(&target, &names(&["a", "b", "c:7b", "d"]), PATIENCE, &mut |p| {
            if !pulled_models.contains(&p.model) {
                pulled_models.push(p.model)
            }
        })
        .await
        .unwrap();
        assert_eq!(pulled_models, names(&["b", "c:7b", "d"]));
        assert_eq!(outcomes.len(), 3);
        assert_eq!(outcomes[0], ("b".into(), Ok(())));
        assert_eq!(outcomes[1], ("c:7b".into(), Ok(())));
        assert_eq!(outcomes[2].0, "d");
        assert!(
            outcomes[2].1.as_ref().unwrap_err().contains("pulling d on fake failed"),
            "{outcomes:?}"
        );
        // Now present: nothing more to pull but the unknown one.
        let again = ensure_models(&target, &names(&["a", "b", "c:7b"]), PATIENCE, &mut |_| {})
            .await
            .unwrap();
        assert!(again.is_empty(), "{again:?}");
    }

    #[tokio::test]
    async fn openai_reports_missing_models_and_refuses_to_pull() {
        let fake = FakeLlm::start("a,qwen2.5:0.5b", "a,b", &[]);
        let target = fake.target(ProviderApi::Openai);
        assert_eq!(
            missing_models(&target, &names(&["qwen2.5:0.5b", "a", "b"]))
                .await
                .unwrap(),
            names(&["b"])
        );
        let (outcome, lines) = pull_collecting(&target, "b", PATIENCE).await;
        assert!(lines.is_empty());
        let error = outcome.unwrap_err();
        assert_eq!(
            error.to_string(),
            "fake speaks the OpenAI API, which cannot pull models: b must be provided on the server itself"
        );
        let outcomes = ensure_models(&target, &names(&["a", "b"]), PATIENCE, &mut |_| {})
            .await
            .unwrap();
        assert_eq!(outcomes, vec![("b".to_string(), Err(error.to_string()))]);
        // Still missing: nothing was pulled.
        assert_eq!(missing_models(&target, &names(&["b"])).await.unwrap(), names(&["b"]));
    }

    #[tokio::test]
    async fn listing_a_provider_that_is_down_names_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let target = ProbeTarget {
            provider: "gone".into(),
            api: ProviderApi::Ollama,
            url,
            api_key: None,
            probe_model: None,
            generate: false,
            timeout: PATIENCE,
        };
        assert_eq!(
            missing_models(&target, &names(&["a"])).await.unwrap_err().to_string(),
            "listing the models of gone failed: GET /api/tags: connection refused"
        );
    }

    #[test]
    fn describe_shows_percent_and_sizes() {
        let line = |status: &str, total, completed| PullProgress {
            model: "m".into(),
            status: status.into(),
            total,
            completed,
        };
        assert_eq!(
            describe(&line("pulling 6a0746a1ec1a", Some(2 << 30), Some(902_942_720))),
            "pulling 6a0746a1ec1a 42% (861.1 MiB of 2.0 GiB)"
        );
        assert_eq!(
            describe(&line("pulling 6a0746a1ec1a", Some(2 << 30), Some(1_288_490_189))),
            "pulling 6a0746a1ec1a 60% (1.2 GiB of 2.0 GiB)"
        );
        assert_eq!(
            describe(&line("pulling 56bb8bd477a5", Some(96), None)),
            "pulling 56bb8bd477a5 0% (0 B of 96 B)"
        );
        assert_eq!(
            describe(&line("pulling 56bb8bd477a5", Some(1536), Some(1536))),
            "pulling 56bb8bd477a5 100% (1.5 KiB of 1.5 KiB)"
        );
        assert_eq!(describe(&line("pulling manifest", None, None)), "pulling manifest");
        assert_eq!(
            describe(&line("verifying sha256 digest", Some(0), None)),
            "verifying sha256 digest"
        );
    }

    #[test]
    fn names_compare_as_ollama_spells_them() {
        assert_eq!(canonical_name("llama3.2"), "llama3.2:latest");
        assert_eq!(canonical_name("Library/Llama3.2:3B"), "llama3.2:3b");
        assert_eq!(canonical_name("registry.ollama.ai/library/x"), "x:latest");
        assert_eq!(canonical_name("host:5000/ns/x"), "host:5000/ns/x:latest");
    }
}
