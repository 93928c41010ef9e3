//! Machine-readable results of a benchmark, for `scripts/bench-all`: when `MIRROR_BENCH_RESULTS`
//! names a file, every recorded measure is appended to it as one JSON line; otherwise nothing
//! happens. What a benchmark prints is not changed.
//!
//! Included by each benchmark with `#[path = "common/results.rs"] mod results;`, then:
//!
//! ```ignore
//! results::Measure::new("daemon", "idle, 50 services: RSS", 13.6, "MiB")
//!     .peer("supervisord 4.3.0", Some(25.2))
//!     .target("<= 15 MiB", true)
//!     .record();
//! results::note("store", "PostgreSQL skipped: no server binaries");
//! ```
//!
//! A line: `{"bench", "measure", "ours", "unit", "better": "lower"|"higher", "peer", "peer_name",
//! "target", "met"}` (`peer`, `target` and `met` null when there is none; a value that is not a
//! finite number is null too), or `{"bench", "note"}`.

// Each benchmark uses only part of this module.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::Write;

use serde_json::{json, Value};

/// The variable naming the file the results are appended to.
pub const ENV: &str = "MIRROR_BENCH_RESULTS";

/// One measure: mirrorctl's value, the peer's on the same measure, the target and its verdict.
pub struct Measure {
    bench: String,
    measure: String,
    ours: f64,
    unit: String,
    higher_is_better: bool,
    peer: Option<(String, f64)>,
    target: Option<(String, bool)>,
}

impl Measure {
    /// Lower is better unless [`Measure::higher_is_better`] says otherwise.
    pub fn new(bench: &str, measure: &str, ours: f64, unit: &str) -> Measure {
        Measure {
            bench: bench.into(),
            measure: measure.into(),
            ours,
            unit: unit.into(),
            higher_is_better: false,
            peer: None,
            target: None,
        }
    }

    pub fn higher_is_better(mut self) -> Measure {
        self.higher_is_better = true;
        self
    }

    /// The peer's value on the same measure, in the same unit (none: not measured or skipped).
    pub fn peer(mut self, name: &str, value: Option<f64>) -> Measure {
        self.peer = value.map(|v| (name.to_string(), v));
        self
    }

    /// The target as the benchmark prints it, and whether this run met it.
    pub fn target(mut self, text: &str, met: bool) -> Measure {
        self.target = Some((text.to_string(), met));
        self
    }

    /// Appends the measure to `$MIRROR_BENCH_RESULTS`, if set.
    pub fn record(self) {
        let number = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
        append(json!({
            "bench": self.bench,
            "measure": self.measure,
            "ours": number(self.ours),
            "unit": self.unit,
            "better": if self.higher_is_better { "higher" } else { "lower" },
            "peer": self.peer.as_ref().map_or(Value::Null, |p| number(p.1)),
            "peer_name": self.peer.as_ref().map(|p| p.0.clone()),
            "target": self.target.as_ref().map(|t| t.0.clone()),
            "met": self.target.as_ref().map(|t| t.1),
        }));
    }
}

/// A remark for the summary (a part skipped, and why).
pub fn note(bench: &str, text: &str) {
    append(json!({ "bench": bench, "note": text }));
}

fn append(line: Value) {
    let Some(path) = std::env::var_os(ENV) else {
        return;
    };
    let mut text = line.to_string();
    text.push('\n');
    // One write per line on an O_APPEND file: lines of concurrent writers do not interleave.
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(e) = written {
        eprintln!("{ENV}={}: cannot append a result: {e}", path.to_string_lossy());
    }
}
