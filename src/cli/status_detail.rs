//! `mirrorctl status NAME...`: one resource in detail: sync and health with the reason, pid,
//! uptime, restarts, its last actions (receipts: exit codes and times), the probe's last
//! answer, its route (agents), its spec as applied (secrets redacted) and its last log lines.
//! Built here from what `status` reports (through the daemon when one runs), the inventory, the
//! truth store and the log file.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use super::{exit, json_text, GlobalArgs, Output};
use crate::daemon::control::Response;
use crate::store::chain::Receipt;
use crate::store::inventory::LocalInventory;

/// How many receipts and log lines a detail shows.
const HISTORY: u32 = 5;
const LOG_LINES: usize = 10;

/// Renders the named resources of a status report (`report`: `status --output json`'s value).
pub fn render(global: &GlobalArgs, report: &Value, names: &[String]) -> Response {
    let resources = report["resources"].as_array().cloned().unwrap_or_default();
    let state_dir = global.state_dir();
    let inventory = LocalInventory::load(&state_dir).ok();
    let host = crate::state::host_name();
    let mut details = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        let matching: Vec<&Value> = resources.iter().filter(|r| r["name"] == name.as_str()).collect();
        if matching.is_empty() {
            missing.push(name.clone());
        }
        for resource in matching {
            let kind = resource["kind"].as_str().unwrap_or_default().to_string();
            let mut detail = resource.clone();
            detail["spec"] = inventory
                .as_ref()
                .and_then(|i| i.get(&kind, name))
                .and_then(|e| serde_json::from_str::<Value>(&e.last_applied).ok())
                .unwrap_or(Value::Null);
            detail["history"] = match history(global, &host, &kind, name) {
                Ok(receipts) => json!(receipts
                    .iter()
                    .map(|r| json!({"at": crate::report::rfc3339(r.at_ms), "action": r.action, "reason": r.reason, "detail": receipt_detail(r)}))
                    .collect::<Vec<_>>()),
                Err(why) => json!({"error": why}),
            };
            detail["log_tail"] = json!(log_tail(&state_dir, &kind, name));
            details.push(detail);
        }
    }
    let stderr = if missing.is_empty() {
        String::new()
    } else {
        format!(
            "mirrorctl: error: no resource named {} in the desired state or on this host\n",
            missing.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        )
    };
    let exit_code = if missing.is_empty() { exit::OK } else { exit::ERROR };
    let stdout = match global.output {
        Output::Json => json_text(&json!({"commit": report["commit"], "resources": details})),
        Output::Text => details.iter().map(text).collect::<Vec<_>>().join("\n"),
    };
    Response {
        exit_code,
        stdout,
        stderr,
    }
}

/// The newest receipts of the resource, from the truth store.
fn history(global: &GlobalArgs, host: &str, kind: &str, name: &str) -> Result<Vec<Receipt>, String> {
    super::block_on(async {
        let url = global.store_url().map_err(|e| e.to_string())?;
        let store = crate::store::open(&url).await.map_err(|e| e.to_string())?;
        store
            .resource_receipts(host, kind, name, HISTORY)
            .await
            .map_err(|e| e.to_string())
    })
}

/// A receipt's `detail` is JSON (`{"ok", "detail"}`): its words.
fn receipt_detail(receipt: &Receipt) -> String {
    serde_json::from_str::<Value>(&receipt.detail)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_string))
        .unwrap_or_else(|| receipt.detail.clone())
}

/// The last lines of the resource's log (a service's `NAME.log`, an agent's `agent-NAME.log`).
fn log_tail(state_dir: &Path, kind: &str, name: &str) -> Vec<String> {
    let file = if kind == "Agent" {
        format!("agent-{name}.log")
    } else {
        format!("{name}.log")
    };
    // Only the end is read: a log may be large.
    let read_end = || -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut log = std::fs::File::open(crate::state::Layout::of(state_dir).logs().join(&file))?;
        let length = log.metadata()?.len();
        log.seek(SeekFrom::Start(length.saturating_sub(64 * 1024)))?;
        let mut end = Vec::new();
        log.read_to_end(&mut end)?;
        Ok(end)
    };
    let Ok(text) = read_end() else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_LINES)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

fn text(detail: &Value) -> String {
    let mut out = String::new();
    let field = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let _ = writeln!(out, "{}/{}", field(&detail["kind"]), field(&detail["name"]));
    let _ = writeln!(out, "  sync      {}", field(&detail["sync"]));
    let _ = writeln!(
        out,
        "  health    {}: {}",
        field(&detail["health"]),
        field(&detail["detail"])
    );
    if !detail["pid"].is_null() {
        let uptime = detail["uptime_s"]
            .as_u64()
            .map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "  pid       {} (up {uptime})", field(&detail["pid"]));
    }
    let _ = writeln!(
        out,
        "  restarts  {}{}",
        field(&detail["restarts"]),
        detail["last_exit"]
            .as_i64()
            .map(|c| format!(", last exit code {c}"))
            .unwrap_or_default()
    );
    if !detail["last_probe"].is_null() {
        let _ = writeln!(out, "  probe     {}", field(&detail["last_probe"]));
    }
    if let Some(route) = detail.get("route").filter(|r| !r.is_null()) {
        let _ = writeln!(
            out,
            "  route     {}/{}",
            field(&route["provider"]),
            field(&route["model"])
        );
    }
    let spec = &detail["spec"];
    if let Some(command) = spec["command"].as_array() {
        let words: Vec<String> = command.iter().map(field).collect();
        let _ = writeln!(out, "  command   {}", words.join(" "));
    }
    for key in ["restart", "health", "dependsOn", "limits"] {
        if let Some(value) = spec.get(key).filter(|v| !v.is_null()) {
            let _ = writeln!(out, "  {key:<9} {}", field(value));
        }
    }
    match &detail["history"] {
        Value::Array(receipts) if !receipts.is_empty() => {
            let _ = writeln!(out, "  last actions (newest first):");
            for r in receipts {
                let _ = writeln!(
                    out,
                    "    {}  {:<16} {}: {}",
                    field(&r["at"]),
                    field(&r["action"]),
                    field(&r["reason"]),
                    field(&r["detail"])
                );
            }
        }
        Value::Object(error) => {
            let _ = writeln!(
                out,
                "  last actions: the truth store cannot be read ({})",
                field(&error["error"])
            );
        }
        _ => {}
    }
    let lines = detail["log_tail"].as_array().cloned().unwrap_or_default();
    if lines.is_empty() {
        let _ = writeln!(out, "  log       (empty)");
    } else {
        let _ = writeln!(out, "  last log lines:");
        for line in lines {
            let _ = writeln!(out, "    {}", field(&line));
        }
    }
    out
}
