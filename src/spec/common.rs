//! Value types shared by several kinds: durations, sizes, cron expressions, schedules, probes,
//! restart and stop settings. Each parses from the string form users write and prints back the
//! same way, so a round trip through YAML or JSON is lossless.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Implements Serialize/Deserialize through `Display`/`FromStr`, and a string JSON Schema.
macro_rules! string_value {
    ($ty:ident, $schema_name:literal, $description:literal, $pattern:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(de::Error::custom)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($schema_name)
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                let pattern: Option<&str> = $pattern;
                match pattern {
                    Some(p) => json_schema!({"type": "string", "description": $description, "pattern": p}),
                    None => json_schema!({"type": "string", "description": $description}),
                }
            }
        }
    };
}

/// A span of time written as `500ms`, `10s`, `5m`, `1h`, `1h30m` or `7d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub fn as_std(self) -> std::time::Duration {
        self.0
    }
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("expected a duration such as 500ms, 10s, 5m or 1h, found an empty string".into());
        }
        if trimmed.chars().all(|c| c.is_ascii_digit()) && trimmed != "0" {
            return Err(format!(
                "expected a duration with a unit such as 500ms, 10s, 5m or 1h, found `{text}` (a bare number is ambiguous)"
            ));
        }
        humantime::parse_duration(trimmed).map(Duration).map_err(|e| {
            let detail = match e {
                humantime::DurationError::UnknownUnit { unit, .. } => {
                    format!(" (unknown unit `{unit}`: use ms, s, m, h or d)")
                }
                humantime::DurationError::NumberOverflow => " (too large)".to_string(),
                _ => String::new(),
            };
            format!("expected a duration such as 500ms, 10s, 5m or 1h, found `{text}`{detail}")
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

string_value!(
    Duration,
    "Duration",
    "A duration: a number and a unit (ms, s, m, h, d), e.g. `500ms`, `10s`, `5m`, `1h30m`.",
    Some(
        r"^\s*(0|([0-9]+(\.[0-9]+)?\s*(ns|us|µs|ms|msec|s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|d|day|days|w|week|weeks)\s*)+)$"
    )
);

/// A size in bytes written as `512Mi`, `4Gi`, `100M`, `64Ki` or a plain byte count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: &[(&str, u64)] = &[
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("K", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
];

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = || format!("expected a size such as 512Mi, 4Gi, 100M or 65536, found `{text}`");
        let trimmed = text.trim();
        let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        if digits_end == 0 {
            return Err(expected());
        }
        let number: u64 = trimmed[..digits_end].parse().map_err(|_| expected())?;
        let unit = trimmed[digits_end..].trim();
        let multiplier = if unit.is_empty() {
            1
        } else {
            SIZE_UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, m)| *m)
                .ok_or_else(expected)?
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{text}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, multiplier) in SIZE_UNITS.iter().take(4).rev() {
            if self.0 >= *multiplier && self.0 % multiplier == 0 {
                return write!(f, "{}{}", self.0 / multiplier, unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

string_value!(
    ByteSize,
    "ByteSize",
    "A size: bytes, or a number with a unit Ki, Mi, Gi, Ti (powers of 1024) or K, M, G, T (powers of 1000), e.g. `512Mi`.",
    Some(r"^\s*[0-9]+\s*(Ki|Mi|Gi|Ti|K|M|G|T)?\s*$")
);

/// A cron expression: five fields (minute hour day-of-month month day-of-week), or six with
/// leading seconds. Parsed with croner, the parser the scheduler uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CronExpr(String);

impl CronExpr {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The parsed schedule; always succeeds for a value that was deserialized.
    pub fn schedule(&self) -> croner::Cron {
        self.0.parse().expect("validated when deserialized")
    }
}

impl FromStr for CronExpr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "expected a cron expression of 5 fields (minute hour day-of-month month day-of-week), or 6 with leading seconds, found {fields} in `{text}`"
            ));
        }
        check_cron_ranges(text, fields == 6)?;
        text.parse::<croner::Cron>()
            .map(|_| CronExpr(text.trim().to_string()))
            .map_err(|e| format!("invalid cron expression `{text}`: {e}"))
    }
}

/// Checks the numbers of each cron field against its range, to say which field is wrong
/// (croner only says "number out of bounds").
fn check_cron_ranges(text: &str, with_seconds: bool) -> Result<(), String> {
    const FIELDS: [(&str, u32, u32); 6] = [
        ("second", 0, 59),
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    let fields = if with_seconds { &FIELDS[..] } else { &FIELDS[1..] };
    for (value, (name, low, high)) in text.split_whitespace().zip(fields) {
        for part in value.split(',') {
            let (range, step) = part.split_once('/').unwrap_or((part, ""));
            if !step.is_empty() && step.parse::<u32>().map_or(true, |s| s == 0) {
                return Err(format!(
                    "invalid cron expression `{text}`: {name} step `{step}` must be a whole number of at least 1"
                ));
            }
            for bound in range.split('-') {
                if let Ok(n) = bound.parse::<u32>() {
                    if n < *low || n > *high {
                        return Err(format!(
                            "invalid cron expression `{text}`: {name} {n} is out of range (expected {low}-{high})"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_value!(
    CronExpr,
    "CronExpr",
    "A cron expression: `minute hour day-of-month month day-of-week` (optionally a leading seconds field), e.g. `0 */6 * * *`.",
    None
);

/// When a job runs: at a fixed interval, or on a cron schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Schedule {
    /// Every interval, counted from the previous start (launchd `StartInterval`).
    Every(Duration),
    /// On a cron schedule, in the host's local time (launchd `StartCalendarInterval`).
    Cron(CronExpr),
}

/// What happens when a supervised process exits (systemd `Restart=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whatever the exit status.
    #[default]
    Always,
    /// Restart after a non-zero exit or a signal.
    OnFailure,
    /// Never restart.
    Never,
}

/// Exponential backoff between restarts. The first restart is immediate; later ones wait
/// `initial`, then twice that, up to `max`. A run longer than `resetAfter` resets the count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the second restart. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<Duration>,
    /// Upper bound on the delay. Default 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,
    /// Growth factor between delays. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    /// A run at least this long resets the backoff. Default 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_after: Option<Duration>,
}

impl Backoff {
    pub fn initial(&self) -> Duration {
        self.initial.unwrap_or(Duration::from_secs(1))
    }
    pub fn max(&self) -> Duration {
        self.max.unwrap_or(Duration::from_secs(60))
    }
    pub fn multiplier(&self) -> f64 {
        self.multiplier.unwrap_or(2.0)
    }
    pub fn reset_after(&self) -> Duration {
        self.reset_after.unwrap_or(Duration::from_secs(60))
    }
}

/// An HTTP GET probe: healthy on a 2xx/3xx answer (or `expectStatus`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpProbe {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// A TCP probe: healthy when a connection to `address` (`host:port`) opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpProbe {
    pub address: String,
}

/// A command probe: healthy when `command` exits 0 within the timeout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecProbe {
    pub command: Vec<String>,
}

/// A health check of a supervised process. Exactly one of `http`, `tcp`, `exec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    /// Time between probes. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time one probe may take. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Failures in a row before the process counts as failed. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// Successes in a row before a failed process counts as healthy again. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    /// Grace after start during which failures do not count. Default 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
}

impl Probe {
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(Duration::from_secs(10))
    }
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Duration::from_secs(1))
    }
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(3)
    }
    pub fn success_threshold(&self) -> u32 {
        self.success_threshold.unwrap_or(1)
    }
    pub fn start_period(&self) -> Duration {
        self.start_period.unwrap_or(Duration::from_secs(0))
    }
    /// How many of `http`, `tcp`, `exec` are set; exactly one is valid.
    pub fn mechanism_count(&self) -> usize {
        usize::from(self.http.is_some()) + usize::from(self.tcp.is_some()) + usize::from(self.exec.is_some())
    }
}

/// Signals a process may be asked to stop with.
pub const STOP_SIGNALS: &[&str] = &[
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2",
];

/// How a process is stopped: `signal` to its process group, wait `grace`, then SIGKILL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Stop {
    /// Default SIGTERM. `TERM` and `SIGTERM` are both accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<Duration>,
}

impl Stop {
    /// The signal's canonical name (`SIGTERM`), or None when it is not one of `STOP_SIGNALS`.
    pub fn signal(&self) -> Option<&'static str> {
        let name = self.signal.as_deref().unwrap_or("SIGTERM").trim().to_ascii_uppercase();
        let name = if name.starts_with("SIG") {
            name
        } else {
            format!("SIG{name}")
        };
        STOP_SIGNALS.iter().copied().find(|s| *s == name)
    }
    pub fn grace(&self) -> Duration {
        self.grace.unwrap_or(Duration::from_secs(10))
    }
}

/// Resource limits applied to the process at start (setrlimit) and, for agents where the host
/// offers a writable cgroup, to its whole tree (memory, processes, cpu).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// CPU cores the tree may use (e.g. `0.5`); agents only, enforced by cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Address space limit (RLIMIT_AS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// Open file descriptors (RLIMIT_NOFILE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Processes of the user (RLIMIT_NPROC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// CPU time (RLIMIT_CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<Duration>,
    /// Largest file the process may write (RLIMIT_FSIZE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<ByteSize>,
    /// Core dump size (RLIMIT_CORE). Default: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_size: Option<ByteSize>,
}

/// Where stdout and stderr go: size-rotated files in the state dir.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Logs {
    /// Rotate when the current file reaches this size. Default 10Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<ByteSize>,
    /// Rotated files kept. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u32>,
}

impl Logs {
    pub fn max_size(&self) -> ByteSize {
        self.max_size.unwrap_or(ByteSize(10 << 20))
    }
    pub fn max_files(&self) -> u32 {
        self.max_files.unwrap_or(5)
    }
}

/// Which hosts of a fleet run a resource. Empty: every host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    /// Host names (globs allowed, e.g. `mini-*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

impl Placement {
    /// Whether `host` runs the resource: no hosts listed means every host; `*` and `?` glob.
    pub fn selects(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|pattern| glob_matches(pattern, host))
    }
}

/// Shell-style matching of the whole text: `*` any run of characters, `?` any one, no escapes.
/// The one matcher of host names, memory namespaces and signer principals: `wildmatch` runs in
/// O(pattern × text), so a pattern such as `*a*a*a*a*a*a*a*a*b` in a commit cannot hang a pass.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    wildmatch::WildMatch::new(pattern).matches(text)
}

/// Per-day limits on what an agent may consume through the model bus.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_per_day_usd: Option<f64>,
}

/// Whether a name is a lowercase DNS label (RFC 1123): what `metadata.name` must be.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Whether a string is a valid environment variable name.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether an env key's value should be treated as a secret (redacted everywhere).
pub fn is_secret_env_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "SECRET",
        "TOKEN",
        "PASSWORD",
        "PASSWD",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
        "AUTH",
    ]
    .iter()
    .any(|needle| upper.contains(needle))
}

#[cfg(test)]
mod tests {

    #[test]
    fn placement_selects_hosts_by_glob() {
        let every = Placement::default();
        assert!(every.selects("anything"));
        let some = Placement {
            hosts: vec!["mini-*".into(), "studio".into(), "gpu-?".into()],
        };
        for host in ["mini-1", "mini-", "studio", "gpu-2"] {
            assert!(some.selects(host), "{host}");
        }
        for host in ["mini", "studio2", "gpu-12", "xmini-1", ""] {
            assert!(!some.selects(host), "{host}");
        }
        let star = Placement {
            hosts: vec!["*a*b*".into()],
        };
        assert!(star.selects("xxaxxbxx") && !star.selects("xxbxxaxx"));
    }

    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!("500ms".parse::<Duration>().unwrap(), Duration::from_millis(500));
        assert_eq!("5m".parse::<Duration>().unwrap(), Duration::from_secs(300));
        assert_eq!("1h30m".parse::<Duration>().unwrap(), Duration::from_secs(5400));
        assert_eq!(Duration::from_secs(300).to_string(), "5m");
        assert!("10".parse::<Duration>().unwrap_err().contains("bare number"));
        assert!("soon".parse::<Duration>().is_err());
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("512Mi".parse::<ByteSize>().unwrap(), ByteSize(512 << 20));
        assert_eq!("100M".parse::<ByteSize>().unwrap(), ByteSize(100_000_000));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert_eq!(ByteSize(4 << 30).to_string(), "4Gi");
        assert!("4GB".parse::<ByteSize>().is_err());
        assert!("99999999999999Ti".parse::<ByteSize>().is_err());
    }

    #[test]
    fn cron_accepts_five_or_six_fields() {
        assert!("0 */6 * * *".parse::<CronExpr>().is_ok());
        assert!("*/10 * * * * *".parse::<CronExpr>().is_ok());
        assert!("0 25 * * *".parse::<CronExpr>().is_err());
        assert!("every day".parse::<CronExpr>().is_err());
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("ollama"));
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("Ollama"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a_b"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }

    #[test]
    fn stop_signal_names() {
        let stop = Stop {
            signal: Some("term".into()),
            grace: None,
        };
        assert_eq!(stop.signal(), Some("SIGTERM"));
        let stop = Stop {
            signal: Some("SIGFOO".into()),
            grace: None,
        };
        assert_eq!(stop.signal(), None);
    }
}
