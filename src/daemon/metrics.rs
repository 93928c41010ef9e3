//! The daemon's Prometheus metrics and the small HTTP server that exposes them: `GET /metrics`
//! (OpenMetrics text) and `GET /healthz` (whether the event loop has been seen recently).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// What `GET /metrics` answers with: the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reconcile pass durations: a no-op pass takes about a millisecond, starting many services
/// with health probes several seconds.
const PASS_DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    trigger: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    drift: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    label: String,
    outcome: String,
}

/// The daemon's metrics. Every method takes `&self`; share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    passes: Family<PassLabels, Counter>,
    pass_duration: Histogram,
    pass_errors: Counter,
    restarts: Family<ServiceLabels, Counter>,
    drift_items: Family<DriftLabels, Gauge>,
    /// The drift label sets ever set: the family cannot be iterated, and a kind of drift that
    /// went away must read 0 rather than keep its last count. Also held while encoding, so a
    /// scrape never sees a report half replaced.
    drift_label_sets: Mutex<HashSet<DriftLabels>>,
    route_changes: Family<AgentLabels, Counter>,
    job_runs: Family<JobLabels, Counter>,
    services_running: Gauge,
    services_desired: Gauge,
    last_loop_timestamp: Gauge<f64, AtomicU64>,
    /// Monotonic base for the heartbeat, so /healthz is immune to wall-clock jumps.
    created: Instant,
    /// Nanoseconds after `created` of the last heartbeat; `NEVER` before the first.
    last_beat_nanos: AtomicI64,
}

const NEVER: i64 = -1;

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("mirrorctl");
        let passes = Family::<PassLabels, Counter>::default();
        registry.register("reconcile", "Reconcile passes by trigger and outcome", passes.clone());
        let pass_duration = Histogram::new(PASS_DURATION_BUCKETS);
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of reconcile passes",
            Unit::Seconds,
            pass_duration.clone(),
        );
        let pass_errors = Counter::default();
        registry.register("reconcile_errors", "Reconcile passes that failed", pass_errors.clone());
        let restarts = Family::<ServiceLabels, Counter>::default();
        registry.register("service_restarts", "Service restarts by service", restarts.clone());
        let drift_items = Family::<DriftLabels, Gauge>::default();
        registry.register(
            "drift_items",
            "Drift items in the latest report by drift kind and severity",
            drift_items.clone(),
        );
        let route_changes = Family::<AgentLabels, Counter>::default();
        registry.register("route_changes", "Model route changes by agent", route_changes.clone());
        let job_runs = Family::<JobLabels, Counter>::default();
        registry.register(
            "launch_agent_runs",
            "Launch agent runs by label and outcome",
            job_runs.clone(),
        );
        let services_running = Gauge::default();
        registry.register("services_running", "Services running", services_running.clone());
        let services_desired = Gauge::default();
        registry.register(
            "services_desired",
            "Services the desired state declares",
            services_desired.clone(),
        );
        let last_loop_timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "last_loop_timestamp",
            "When the event loop was last seen alive (Unix time)",
            Unit::Seconds,
            last_loop_timestamp.clone(),
        );
        Arc::new(Metrics {
            registry,
            passes,
            pass_duration,
            pass_errors,
            restarts,
            drift_items,
            drift_label_sets: Mutex::new(HashSet::new()),
            route_changes,
            job_runs,
            services_running,
            services_desired,
            last_loop_timestamp,
            created: Instant::now(),
            last_beat_nanos: AtomicI64::new(NEVER),
        })
    }

    /// One reconcile pass ended: by trigger (commit, resync, control, child-exit, startup...),
    /// how long, whether it failed.
    pub fn observe_pass(&self, trigger: &str, duration: Duration, failed: bool) {
        let outcome = if failed { "failed" } else { "ok" };
        self.passes
            .get_or_create(&PassLabels {
                trigger: trigger.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.pass_duration.observe(duration.as_secs_f64());
        if failed {
            self.pass_errors.inc();
        }
    }

    /// A service was restarted.
    pub fn restart(&self, service: &str) {
        self.restarts
            .get_or_create(&ServiceLabels {
                service: service.to_string(),
            })
            .inc();
    }

    /// Replaces the drift gauge with the latest report's counts: `(drift kind, severity, count)`.
    /// Label sets from earlier reports that are absent now read 0 (kinds and severities are a
    /// small closed set, so keeping them costs little and keeps graphs continuous).
    /// Repeated label sets are added up.
    pub fn set_drift_items(&self, by_drift_and_severity: &[(String, String, u64)]) {
        let mut counts: HashMap<DriftLabels, u64> = HashMap::new();
        for (drift, severity, count) in by_drift_and_severity {
            let labels = DriftLabels {
                drift: drift.clone(),
                severity: severity.clone(),
            };
            let total = counts.entry(labels).or_default();
            *total = total.saturating_add(*count);
        }
        let mut known = self.drift_label_sets.lock().unwrap_or_else(|e| e.into_inner());
        for labels in known.iter() {
            if !counts.contains_key(labels) {
                self.drift_items.get_or_create(labels).set(0);
            }
        }
        for (labels, count) in counts {
            self.drift_items.get_or_create(&labels).set(saturating_i64(count));
            known.insert(labels);
        }
    }

    /// A model route changed for an agent.
    pub fn route_change(&self, agent: &str) {
        self.route_changes
            .get_or_create(&AgentLabels {
                agent: agent.to_string(),
            })
            .inc();
    }

    /// A launch agent ran (outcome: ok, failed, timeout, skipped).
    pub fn job_run(&self, label: &str, outcome: &str) {
        self.job_runs
            .get_or_create(&JobLabels {
                label: label.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn set_services(&self, running: u64, desired: u64) {
        self.services_running.set(saturating_i64(running));
        self.services_desired.set(saturating_i64(desired));
    }

    /// The event loop is alive (now).
    pub fn heartbeat(&self) {
        let since_created = i64::try_from(self.created.elapsed().as_nanos()).unwrap_or(i64::MAX);
        self.last_beat_nanos.store(since_created, Ordering::Relaxed);
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.last_loop_timestamp.set(unix.as_secs_f64());
    }

    /// How long ago the event loop was last seen; `None` before the first heartbeat.
    pub fn since_heartbeat(&self) -> Option<Duration> {
        let beat = self.last_beat_nanos.load(Ordering::Relaxed);
        if beat == NEVER {
            return None;
        }
        Some(self.created.elapsed().saturating_sub(Duration::from_nanos(beat as u64)))
    }

    /// The OpenMetrics text exposition, ending in `# EOF`.
    pub fn encode(&self) -> String {
        let _consistent_drift = self.drift_label_sets.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        // Writing to a String cannot fail, and every metric here has a text encoding.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding the metrics registry into a String");
        out
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    stale_after: Duration,
}

/// Serves `GET /metrics` (OpenMetrics text) and `GET /healthz` (200 `ok` while the last
/// heartbeat is at most `stale_after` old, else 503 saying when the loop was last seen) on
/// `addr`; anything else is 404. Returns the bound address (so port 0 works) and the server's
/// task, which ends once `shutdown` resolves and open requests are answered.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stale_after: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    let router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .with_state(ServerState { metrics, stale_after });
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
            tracing::error!(%bound, %error, "metrics server stopped");
        }
    });
    Ok((bound, task))
}

async fn metrics_handler(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

async fn healthz_handler(State(state): State<ServerState>) -> impl IntoResponse {
    let stale_after = state.stale_after.as_secs_f64();
    match state.metrics.since_heartbeat() {
        Some(ago) if ago <= state.stale_after => (StatusCode::OK, "ok\n".to_string()),
        Some(ago) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "event loop last seen {:.1}s ago (stale after {stale_after}s)\n",
                ago.as_secs_f64()
            ),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("event loop not seen yet (stale after {stale_after}s)\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 request over a plain socket: (status, headers in lower case, body).
    async fn fetch(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("response within 10s")
            .unwrap();
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("a complete HTTP response");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_lowercase(), body.to_string())
    }

    async fn start(
        metrics: Arc<Metrics>,
        stale_after: Duration,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), metrics, stale_after, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        (addr, task, stop)
    }

    #[test]
    fn metrics_are_shareable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Metrics>();
    }

    #[test]
    fn exposition_names_every_metric_with_the_prefix() {
        let metrics = Metrics::new();
        metrics.observe_pass("commit", Duration::from_millis(3), false);
        metrics.observe_pass("resync", Duration::from_secs(2), true);
        metrics.restart("web");
        metrics.restart("web");
        metrics.route_change("coder");
        metrics.job_run("backup", "ok");
        metrics.job_run("backup", "timeout");
        metrics.set_services(3, 4);
        metrics.heartbeat();
        metrics.set_drift_items(&[("missing".into(), "error".into(), 2)]);
        let text = metrics.encode();
        for line in [
            "mirrorctl_reconcile_total{trigger=\"commit\",outcome=\"ok\"} 1",
            "mirrorctl_reconcile_total{trigger=\"resync\",outcome=\"failed\"} 1",
            "mirrorctl_reconcile_errors_total 1",
            "# TYPE mirrorctl_reconcile_duration_seconds histogram",
            "# UNIT mirrorctl_reconcile_duration_seconds seconds",
            "mirrorctl_reconcile_duration_seconds_bucket{le=\"0.001\"} 0",
            "mirrorctl_reconcile_duration_seconds_bucket{le=\"0.005\"} 1",
            "mirrorctl_reconcile_duration_seconds_bucket{le=\"10.0\"} 2",
            "mirrorctl_reconcile_duration_seconds_count 2",
            "mirrorctl_service_restarts_total{service=\"web\"} 2",
            "mirrorctl_drift_items{drift=\"missing\",severity=\"error\"} 2",
            "mirrorctl_route_changes_total{agent=\"coder\"} 1",
            "mirrorctl_launch_agent_runs_total{label=\"backup\",outcome=\"ok\"} 1",
            "mirrorctl_launch_agent_runs_total{label=\"backup\",outcome=\"timeout\"} 1",
            "mirrorctl_services_running 3",
            "mirrorctl_services_desired 4",
            "# TYPE mirrorctl_last_loop_timestamp_seconds gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let beat = text
            .lines()
            .find_map(|l| l.strip_prefix("mirrorctl_last_loop_timestamp_seconds "))
            .unwrap();
        assert!(beat.parse::<f64>().unwrap() > 1.6e9, "{beat}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn drift_items_are_replaced_wholesale() {
        let metrics = Metrics::new();
        metrics.set_drift_items(&[
            ("missing".into(), "error".into(), 2),
            ("failed".into(), "critical".into(), 1),
            ("missing".into(), "error".into(), 1),
        ]);
        let text = metrics.encode();
        assert!(text.contains("mirrorctl_drift_items{drift=\"missing\",severity=\"error\"} 3\n"));
        assert!(text.contains("mirrorctl_drift_items{drift=\"failed\",severity=\"critical\"} 1\n"));

        metrics.set_drift_items(&[("stale".into(), "warning".into(), 5)]);
        let text = metrics.encode();
        assert!(text.contains("mirrorctl_drift_items{drift=\"missing\",severity=\"error\"} 0\n"));
        assert!(text.contains("mirrorctl_drift_items{drift=\"failed\",severity=\"critical\"} 0\n"));
        assert!(text.contains("mirrorctl_drift_items{drift=\"stale\",severity=\"warning\"} 5\n"));

        metrics.set_drift_items(&[]);
        assert!(metrics
            .encode()
            .contains("mirrorctl_drift_items{drift=\"stale\",severity=\"warning\"} 0\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        metrics.restart("we\"ird\nname");
        assert!(metrics
            .encode()
            .contains("mirrorctl_service_restarts_total{service=\"we\\\"ird\\nname\"} 1\n"));
    }

    #[tokio::test]
    async fn serves_metrics_and_only_the_two_routes() {
        let metrics = Metrics::new();
        let (addr, task, stop) = start(metrics.clone(), Duration::from_secs(60)).await;
        metrics.observe_pass("startup", Duration::from_millis(20), false);
        metrics.restart("db");

        let (status, head, body) = fetch(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "{head}"
        );
        assert!(body.contains("mirrorctl_reconcile_total{trigger=\"startup\",outcome=\"ok\"} 1\n"));
        assert!(body.contains("mirrorctl_service_restarts_total{service=\"db\"} 1\n"));
        assert!(body.ends_with("# EOF\n"));

        metrics.restart("db");
        let (_, _, body) = fetch(addr, "GET", "/metrics").await;
        assert!(body.contains("mirrorctl_service_restarts_total{service=\"db\"} 2\n"));

        assert_eq!(fetch(addr, "GET", "/").await.0, 404);
        assert_eq!(fetch(addr, "GET", "/metrics/extra").await.0, 404);

        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn healthz_turns_unavailable_when_the_loop_goes_quiet() {
        let metrics = Metrics::new();
        // Long enough that a request right after a heartbeat is answered in time on a busy machine.
        let stale_after = Duration::from_secs(1);
        let (addr, task, stop) = start(metrics.clone(), stale_after).await;

        let (status, _, body) = fetch(addr, "GET", "/healthz").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "event loop not seen yet (stale after 1s)\n")
        );

        metrics.heartbeat();
        let (status, _, body) = fetch(addr, "GET", "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));

        tokio::time::sleep(stale_after + Duration::from_millis(300)).await;
        let (status, _, body) = fetch(addr, "GET", "/healthz").await;
        assert_eq!(status, 503);
        assert!(body.starts_with("event loop last seen "), "{body}");
        assert!(body.ends_with("s ago (stale after 1s)\n"), "{body}");

        metrics.heartbeat();
        assert_eq!(fetch(addr, "GET", "/healthz").await.0, 200);

        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = serve(addr, Metrics::new(), Duration::from_secs(1), std::future::pending())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot serve metrics on {addr}: ")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn shutdown_stops_the_server() {
        let (addr, task, stop) = start(Metrics::new(), Duration::from_secs(1)).await;
        assert_eq!(fetch(addr, "GET", "/metrics").await.0, 200);
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the server stops within 10s")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
