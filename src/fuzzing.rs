//! The per-input checks of the fuzz targets (`fuzz/`), shared with the stable replay test of
//! their corpus (`tests/cli/fuzz_corpus.rs`). Each check panics when an invariant fails; an
//! input that the code under test panics on fails the same way.

use serde_json::Value;

use crate::router::bus::{self, Endpoint};
use crate::source::{self, LoadError};
use crate::spec::provider::ProviderApi;
use crate::spec::API_VERSION;

/// Separates the desired-state files of a `load` input.
pub const FILE_SEPARATOR: u8 = 0;
/// Separates the upstream chunks of a `bus_request` answer input.
pub const CHUNK_SEPARATOR: u8 = 0xff;
/// At most this many files per `load` input (below the loader's threshold for threads).
const MAX_FILES: usize = 16;

/// The in-memory files of a `load` input: split on `FILE_SEPARATOR`, named `0.yaml`, `1.yaml`...
pub fn load_files(data: &[u8]) -> Vec<(String, &[u8])> {
    data.split(|&b| b == FILE_SEPARATOR)
        .take(MAX_FILES)
        .enumerate()
        .map(|(i, content)| (format!("{i}.yaml"), content))
        .collect()
}

/// `load`: the desired-state loader and validator on one input. It never panics, an invalid
/// state carries diagnostics that render on one line each at a real position, and a valid one
/// holds well-named, unique resources from the files given.
pub fn check_load(data: &[u8]) {
    let files = load_files(data);
    let paths: Vec<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
    let result = source::load_texts(files.iter().map(|(path, bytes)| (path.as_str(), *bytes)));
    match result {
        Ok(state) => {
            assert_eq!(state.files, files.len(), "files counted");
            let mut ids = std::collections::HashSet::new();
            for resource in &state.resources {
                assert_eq!(resource.api_version, API_VERSION);
                assert!(
                    crate::spec::common::is_dns_label(&resource.metadata.name),
                    "a valid state names `{}`",
                    resource.metadata.name
                );
                assert!(ids.insert(resource.id()), "{:?} twice in a valid state", resource.id());
                assert!(paths.contains(&resource.origin.file.as_str()), "{}", resource.origin);
                assert!(
                    resource.origin.line >= 1 && resource.origin.column >= 1,
                    "{}",
                    resource.origin
                );
                serde_json::to_string(resource).expect("a resource serializes");
            }
            let _ = state.controller();
        }
        Err(LoadError::Invalid {
            files: count,
            diagnostics,
            ..
        }) => {
            assert_eq!(count, files.len(), "files counted");
            assert!(!diagnostics.is_empty(), "an invalid state without a diagnostic");
            for diagnostic in &diagnostics {
                let line = diagnostic.to_string();
                assert!(!line.contains('\n'), "a diagnostic on more than one line: {line:?}");
                assert!(diagnostic.line >= 1 && diagnostic.column >= 1, "{line}");
                assert!(paths.contains(&diagnostic.file.as_str()), "{line}");
            }
            let sorted = diagnostics
                .windows(2)
                .all(|w| (&w[0].file, w[0].line, w[0].column) <= (&w[1].file, w[1].line, w[1].column));
            assert!(sorted, "diagnostics out of order");
        }
        Err(error @ LoadError::Read(_)) => panic!("in-memory files cannot fail to be read: {error}"),
    }
}

/// The agent-facing routes of the bus: (the agent's API, the endpoint).
const ROUTES: [(ProviderApi, Endpoint); 5] = [
    (ProviderApi::Ollama, Endpoint::Chat),
    (ProviderApi::Ollama, Endpoint::Generate),
    (ProviderApi::Ollama, Endpoint::Embed),
    (ProviderApi::Openai, Endpoint::Chat),
    (ProviderApi::Openai, Endpoint::Embed),
];

const MODEL: &str = "routed-model";

/// `bus_request`: the model bus's request parsing and translation, or its answer relay and
/// translation, on one input. The first byte picks the case: bits 0-2 the agent's route
/// (`ROUTES`, modulo), bit 3 the upstream API (OpenAI when set), bit 4 the answer side; for
/// answers bit 5 a stream, bit 6 the agent asked for usage, bit 7 the upstream broke. The rest
/// is the request body, or the answer's chunks separated by `CHUNK_SEPARATOR`.
pub fn check_bus_request(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (api, endpoint) = ROUTES[usize::from(selector & 0b111) % ROUTES.len()];
    let upstream_api = if selector & 0b1000 != 0 {
        ProviderApi::Openai
    } else {
        ProviderApi::Ollama
    };
    if selector & 0b1_0000 == 0 {
        check_request(api, endpoint, upstream_api, rest);
    } else {
        let streamed = selector & 0b10_0000 != 0 && endpoint != Endpoint::Embed;
        let usage_asked = selector & 0b100_0000 != 0;
        let broke = (selector & 0b1000_0000 != 0).then_some("connection reset");
        let chunks: Vec<&[u8]> = rest.split(|&b| b == CHUNK_SEPARATOR).collect();
        check_answer(api, endpoint, upstream_api, streamed, usage_asked, &chunks, broke);
    }
}

fn check_request(api: ProviderApi, endpoint: Endpoint, upstream_api: ProviderApi, body: &[u8]) {
    let parsed_as_object = matches!(serde_json::from_slice::<Value>(body), Ok(Value::Object(_)));
    let Some((streamed, upstream)) = bus::translate_request(api, endpoint, upstream_api, MODEL, body) else {
        assert!(!parsed_as_object, "a JSON object body was refused");
        return;
    };
    assert!(parsed_as_object, "a body that is not a JSON object was accepted");
    if endpoint == Endpoint::Embed {
        assert!(!streamed, "embeddings are never streamed");
    }
    let Some((path, request)) = upstream else {
        panic!("every route the bus serves crosses to both APIs ({api:?} {endpoint:?} -> {upstream_api:?})");
    };
    assert_eq!(path.starts_with("/api/"), upstream_api == ProviderApi::Ollama, "{path}");
    assert!(request.is_object(), "the upstream request is a JSON object");
    assert_eq!(request["model"], MODEL, "the routed model replaces the requested one");
    if api != upstream_api && endpoint != Endpoint::Embed {
        assert_eq!(
            request["stream"], streamed,
            "a translated request says whether it streams"
        );
        assert!(request["messages"].is_array(), "a translated chat has messages");
    }
    if upstream_api == ProviderApi::Openai && endpoint == Endpoint::Chat && streamed {
        assert_eq!(request["stream_options"]["include_usage"], true, "a stream is metered");
    }
    let text = serde_json::to_string(&request).expect("the upstream request serializes");
    let again: Value = serde_json::from_str(&text).expect("the upstream request is JSON");
    assert_eq!(again, request, "the upstream request survives a round trip");
}

fn check_answer(
    api: ProviderApi,
    endpoint: Endpoint,
    upstream_api: ProviderApi,
    streamed: bool,
    usage_asked: bool,
    chunks: &[&[u8]],
    broke: Option<&str>,
) {
    let outcome = bus::translate_answer(api, endpoint, upstream_api, MODEL, streamed, usage_asked, chunks, broke);
    let translating = api != upstream_api;
    let (ending, complete) = match &outcome.ending {
        Ok(pieces) => (pieces, true),
        Err(pieces) => (pieces, false),
    };
    if outcome.metered.is_some() {
        assert!(complete, "an incomplete answer is metered");
    }
    if broke.is_some() && !streamed {
        assert!(!complete, "a broken non-streamed answer is complete");
    }
    for (chunk, out) in chunks.iter().zip(&outcome.per_chunk) {
        match (translating, streamed) {
            // Relayed as is: byte for byte, with at most the cut-short event inserted (a stream
            // whose usage event is hidden is relayed line by line instead).
            (false, false) => assert_eq!(out.as_slice(), [*chunk], "a non-streamed answer is relayed as is"),
            (false, true) if !outcome.hides_usage => match out.as_slice() {
                [data] => assert_eq!(data, chunk, "a stream is relayed byte for byte"),
                [before, event, after] => {
                    assert_eq!(
                        [&before[..], &after[..]].concat(),
                        *chunk,
                        "a stream is relayed byte for byte"
                    );
                    assert_event(api, event, true);
                }
                other => panic!("a relayed chunk became {} pieces", other.len()),
            },
            (false, true) => {}
            (true, false) => assert!(out.is_empty(), "a translated answer goes out whole at the end"),
            (true, true) => out.iter().for_each(|piece| assert_event(api, piece, false)),
        }
    }
    if translating && streamed {
        ending.iter().for_each(|piece| assert_event(api, piece, false));
    }
    if translating && !streamed && complete {
        let [whole] = ending.as_slice() else {
            panic!("a translated answer is {} pieces", ending.len());
        };
        let answer: Value = serde_json::from_slice(whole).expect("a translated answer is JSON");
        assert!(answer.is_object(), "a translated answer is a JSON object");
    }
    if streamed && !complete {
        let last = ending.last().expect("a broken stream ends with an error event");
        assert_event(api, last, true);
    }
}

/// One whole event of a stream in the agent's API: an NDJSON line or an SSE `data:` event
/// (`[DONE]` or a JSON object), an error event when `error`.
fn assert_event(api: ProviderApi, piece: &[u8], error: bool) {
    let text = std::str::from_utf8(piece).expect("an event is UTF-8");
    let payload = match api {
        ProviderApi::Ollama => text
            .strip_suffix('\n')
            .filter(|line| !line.contains('\n'))
            .unwrap_or_else(|| panic!("not one NDJSON line: {text:?}")),
        ProviderApi::Openai => text
            .strip_prefix("data: ")
            .and_then(|event| event.strip_suffix("\n\n"))
            .filter(|data| !data.contains('\n'))
            .unwrap_or_else(|| panic!("not one SSE data event: {text:?}")),
    };
    if api == ProviderApi::Openai && payload == "[DONE]" {
        assert!(!error, "[DONE] where an error event is due");
        return;
    }
    let event: Value = serde_json::from_str(payload).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(event.is_object(), "an event is a JSON object: {text:?}");
    if error {
        assert!(event.get("error").is_some(), "not an error event: {text:?}");
    }
}
