//! The tool gate's HTTP endpoints on the bus: an agent asks whether it may call a tool, and
//! polls an approval request it was given.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use super::{caller, error_response, unauthorized, Bus};
use crate::router::governance::GateAnswer;
use crate::router::http::json_response;
use crate::spec::provider::ProviderApi;

/// `POST /v1/gate {"tool": T, "args": {...}}`: allow or deny (200), or needs-approval (202, with
/// the request's id to poll at `GET /v1/gate/{id}`).
pub(super) async fn gate_ask(State(bus): State<Arc<Bus>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(agent) = caller(&bus, &headers) else {
        return unauthorized(ProviderApi::Openai);
    };
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(tool) = request["tool"].as_str().filter(|t| !t.is_empty()) else {
        return error_response(
            ProviderApi::Openai,
            StatusCode::BAD_REQUEST,
            "expected a JSON object {\"tool\": NAME, \"args\": {...}}",
        );
    };
    let args = request.get("args").cloned().unwrap_or(json!({}));
    match bus.state.governance.gate(&agent, tool, &args, crate::report::now_ms()) {
        GateAnswer::Decided(decision) => json_response(
            StatusCode::OK,
            &json!({"decision": decision.outcome, "reason": decision.reason, "rule": decision.rule, "risk": decision.risk, "tool": decision.tool}),
        ),
        GateAnswer::Approval(pending) => json_response(StatusCode::ACCEPTED, &approval_json(&pending)),
    }
}

/// `GET /v1/gate/{id}`: where the agent's approval request stands.
pub(super) async fn gate_poll(State(bus): State<Arc<Bus>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(agent) = caller(&bus, &headers) else {
        return unauthorized(ProviderApi::Openai);
    };
    match bus.state.governance.approval(&agent, &id) {
        Some(request) => json_response(StatusCode::OK, &approval_json(&request)),
        None => error_response(
            ProviderApi::Openai,
            StatusCode::NOT_FOUND,
            &format!("no approval request {id} of agent `{agent}`"),
        ),
    }
}

fn approval_json(request: &crate::policy::ApprovalRequest) -> Value {
    let mut answer = json!(request);
    answer["decision"] = json!(match request.state {
        crate::policy::ApprovalState::Pending => "needs-approval",
        crate::policy::ApprovalState::Approved { .. } => "approved",
        crate::policy::ApprovalState::Denied { .. } => "denied",
        crate::policy::ApprovalState::Expired { .. } => "expired",
    });
    answer
}
