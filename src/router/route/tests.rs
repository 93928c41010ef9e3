//! Routing rules by scenario: probes over time and the switches they cause.

use super::*;

const WINDOW: i64 = 30_000;

fn model(provider: &str) -> ModelRef {
    ModelRef {
        provider: provider.into(),
        model: match provider {
            "ollama" => "llama3.2:3b",
            "backup" => "qwen2.5:0.5b",
            _ => "gpt-4o-mini",
        }
        .into(),
    }
}

fn chain(providers: &[&str]) -> Vec<ModelRef> {
    providers.iter().map(|p| model(p)).collect()
}

const OK: u8 = 0;
const DOWN: u8 = 1;
const HUNG: u8 = 2;

fn verdict(kind: u8) -> Verdict {
    match kind {
        OK => Verdict::Healthy { detail: "ok".into() },
        DOWN => Verdict::Down {
            why: "GET /api/version: connection refused".into(),
        },
        _ => Verdict::Hung {
            why: "generation timed out after 5s".into(),
        },
    }
}

/// Runs probes `(time, provider, verdict)` in order with a decision before the first and after
/// each; the switches as `(time, kind, to provider or "-")`.
struct Run {
    chain: Vec<ModelRef>,
    providers: BTreeMap<String, ProviderState>,
    state: RouteState,
    changes: Vec<(i64, ChangeKind, String)>,
    reasons: Vec<String>,
}

impl Run {
    fn new(chain_of: &[&str]) -> Run {
        Run {
            chain: chain(chain_of),
            providers: BTreeMap::new(),
            state: RouteState::Unrouted,
            changes: Vec::new(),
            reasons: Vec::new(),
        }
    }

    /// Every provider's probe on its way from the start, as in a daemon.
    fn probing(chain_of: &[&str]) -> Run {
        let mut run = Run::new(chain_of);
        for provider in chain_of {
            run.providers.insert(provider.to_string(), ProviderState::new(2));
        }
        run
    }

    fn decide(&mut self, now: i64) {
        let decision = decide(&self.chain, &self.state, &self.providers, WINDOW, now);
        if let Some(change) = &decision.change {
            assert_eq!(change.to, decision.route);
            assert_eq!(change.from.as_ref(), self.state.route());
            let to = change.to.as_ref().map_or("-".to_string(), |m| m.provider.clone());
            self.changes.push((now, change.kind, to));
            self.reasons.push(change.reason.clone());
        }
        self.state = decision.state();
    }

    fn probes(mut self, probes: &[(i64, &str, u8)]) -> Run {
        self.decide(0);
        for &(now, provider, kind) in probes {
            self.providers
                .entry(provider.to_string())
                .or_insert_with(|| ProviderState::new(2))
                .observe(&verdict(kind), now);
            self.decide(now);
        }
        self
    }
}

fn expect(changes: &[(i64, ChangeKind, &str)]) -> Vec<(i64, ChangeKind, String)> {
    changes.iter().map(|&(t, k, to)| (t, k, to.to_string())).collect()
}

use ChangeKind::*;

#[test]
fn scenarios() {
    struct Case {
        name: &'static str,
        chain: &'static [&'static str],
        probes: Vec<(i64, &'static str, u8)>,
        changes: Vec<(i64, ChangeKind, &'static str)>,
    }
    let cases = [
        Case {
            name: "primary down: failover at the threshold-th failure (2), not before",
            chain: &["ollama", "backup"],
            probes: vec![(0, "backup", OK), (5_000, "ollama", OK), (10_000, "ollama", DOWN), (15_000, "ollama", DOWN)],
            changes: vec![(0, Initial, "ollama"), (15_000, Failover, "backup")],
        },
        Case {
            name: "primary hung: failover at the first hung verdict (a hang holds every request)",
            chain: &["ollama", "backup"],
            probes: vec![(0, "backup", OK), (5_000, "ollama", OK), (10_000, "ollama", HUNG), (15_000, "ollama", HUNG)],
            changes: vec![(0, Initial, "ollama"), (10_000, Failover, "backup")],
        },
        Case {
            name: "a failure below the threshold does not move the agent",
            chain: &["ollama", "backup"],
            probes: vec![(5_000, "ollama", OK), (10_000, "ollama", DOWN), (15_000, "ollama", OK), (20_000, "ollama", DOWN)],
            changes: vec![(0, Initial, "ollama")],
        },
        Case {
            name: "failback exactly when the primary has been healthy for the window",
            chain: &["ollama", "backup"],
            probes: vec![
                (0, "backup", OK),
                (1_000, "ollama", OK),
                (5_000, "ollama", DOWN),
                (10_000, "ollama", DOWN),
                (20_000, "ollama", OK),
                (45_000, "ollama", OK),
                (49_999, "ollama", OK),
                (50_000, "ollama", OK),
            ],
            changes: vec![(0, Initial, "ollama"), (10_000, Failover, "backup"), (50_000, Failback, "ollama")],
        },
        Case {
            name: "a flapping primary never bounces the agent within the window",
            chain: &["ollama", "backup"],
            probes: vec![
                (0, "backup", OK),
                (1_000, "ollama", OK),
                (5_000, "ollama", DOWN),
                (10_000, "ollama", DOWN),
                (15_000, "ollama", OK),
                (40_000, "ollama", OK),
                (44_000, "ollama", HUNG),
                (45_000, "ollama", OK),
                (70_000, "ollama", OK),
                (74_000, "ollama", DOWN),
                (75_000, "ollama", OK),
                (104_999, "ollama", OK),
                (105_000, "ollama", OK),
            ],
            changes: vec![(0, Initial, "ollama"), (10_000, Failover, "backup"), (105_000, Failback, "ollama")],
        },
        Case {
            name: "two fallbacks, the first also down: failover skips it",
            chain: &["ollama", "backup", "cloud"],
            probes: vec![
                (1_000, "backup", DOWN),
                (2_000, "backup", DOWN),
                (3_000, "cloud", OK),
                (5_000, "ollama", HUNG),
                (10_000, "ollama", HUNG),
            ],
            changes: vec![(0, Initial, "ollama"), (5_000, Failover, "cloud")],
        },
        Case {
            name: "on the last fallback, an earlier fallback stable for the window wins over an unstable primary",
            chain: &["ollama", "backup", "cloud"],
            probes: vec![
                (500, "ollama", OK),
                (600, "backup", OK),
                (1_000, "backup", DOWN),
                (2_000, "backup", DOWN),
                (3_000, "cloud", OK),
                (5_000, "ollama", DOWN),
                (10_000, "ollama", DOWN),
                (20_000, "backup", OK),
                (40_000, "ollama", OK),
                (50_000, "backup", OK),
                (70_000, "ollama", OK),
            ],
            changes: vec![
                (0, Initial, "ollama"),
                (10_000, Failover, "cloud"),
                (50_000, Failback, "backup"),
                (70_000, Failback, "ollama"),
            ],
        },
        Case {
            name: "nothing healthy: Lost, then Recovered on the first healthy entry at once",
            chain: &["ollama", "backup"],
            probes: vec![
                (500, "ollama", OK),
                (600, "backup", OK),
                (1_000, "backup", DOWN),
                (2_000, "backup", DOWN),
                (5_000, "ollama", DOWN),
                (10_000, "ollama", DOWN),
                (15_000, "ollama", DOWN),
                (20_000, "backup", OK),
                (25_000, "ollama", OK),
                (55_000, "ollama", OK),
            ],
            changes: vec![
                (0, Initial, "ollama"),
                (10_000, Lost, "-"),
                (20_000, Recovered, "backup"),
                (55_000, Failback, "ollama"),
            ],
        },
        Case {
            name: "the current route fails and only an earlier, not yet stable entry is healthy: take it",
            chain: &["ollama", "backup"],
            probes: vec![
                (0, "backup", OK),
                (1_000, "ollama", OK),
                (5_000, "ollama", DOWN),
                (10_000, "ollama", DOWN),
                (20_000, "ollama", OK),
                (21_000, "backup", DOWN),
                (22_000, "backup", DOWN),
            ],
            changes: vec![(0, Initial, "ollama"), (10_000, Failover, "backup"), (22_000, Failover, "ollama")],
        },
        Case {
            name: "unprobed providers count as healthy: the initial route is the primary, failover to an unprobed fallback",
            chain: &["ollama", "backup"],
            probes: vec![(5_000, "ollama", DOWN), (10_000, "ollama", DOWN)],
            changes: vec![(0, Initial, "ollama"), (10_000, Failover, "backup")],
        },
        Case {
            name: "a primary still starting when the daemon starts gets its agents at its first answer; \
                   once it has answered, a failure means the window again",
            chain: &["ollama", "backup"],
            probes: vec![
                (0, "backup", OK),
                (200, "ollama", DOWN),
                (400, "ollama", DOWN),
                (600, "ollama", DOWN),
                (3_000, "ollama", OK),
                (4_000, "ollama", DOWN),
                (4_200, "ollama", DOWN),
                (5_000, "ollama", OK),
                (34_999, "ollama", OK),
                (35_000, "ollama", OK),
            ],
            changes: vec![
                (0, Initial, "ollama"),
                (400, Failover, "backup"),
                (3_000, Failback, "ollama"),
                (4_200, Failover, "backup"),
                (35_000, Failback, "ollama"),
            ],
        },
    ];
    for case in cases {
        let run = Run::new(case.chain).probes(&case.probes);
        assert_eq!(run.changes, expect(&case.changes), "{}: {:#?}", case.name, run.reasons);
    }
}

/// A daemon probes every provider from the start: an agent's first route waits for the
/// verdicts it depends on, and no agent moves to a provider that has been refuted before it
/// ever answered, so a chain nobody serves costs a first route and a loss, not a hop per entry.
#[test]
fn first_routes_wait_for_verdicts_and_moves_skip_the_refuted() {
    type Case = (
        &'static str,
        &'static [&'static str],
        Vec<(i64, &'static str, u8)>,
        Vec<(i64, ChangeKind, &'static str)>,
    );
    let cases: [Case; 6] = [
        (
            "nobody serves the chain: the primary by its threshold's credit, then lost, no failover",
            &["ollama", "backup"],
            vec![
                (10, "ollama", DOWN),
                (20, "backup", DOWN),
                (200, "ollama", DOWN),
                (220, "backup", DOWN),
            ],
            vec![(10, Initial, "ollama"), (200, Lost, "-")],
        ),
        (
            "the primary answers: routed at its verdict, the fallback's does not matter",
            &["ollama", "backup"],
            vec![(10, "ollama", OK), (20, "backup", DOWN)],
            vec![(10, Initial, "ollama")],
        ),
        (
            "a primary refused once keeps its first route by the threshold's credit (it may be starting)",
            &["ollama", "backup"],
            vec![(10, "ollama", DOWN), (30, "backup", OK), (100, "ollama", OK)],
            vec![(10, Initial, "ollama")],
        ),
        (
            "a hung primary's verdict comes late: the fallback's answer does not route before it",
            &["ollama", "backup"],
            vec![(10, "backup", OK), (5_000, "ollama", HUNG)],
            vec![(5_000, Initial, "backup")],
        ),
        (
            "lost, then recovered on the first that answers",
            &["ollama", "backup"],
            vec![
                (10, "ollama", DOWN),
                (20, "backup", DOWN),
                (200, "ollama", DOWN),
                (300, "backup", OK),
            ],
            vec![(10, Initial, "ollama"), (200, Lost, "-"), (300, Recovered, "backup")],
        ),
        (
            "failover skips a fallback refused before it ever answered",
            &["ollama", "backup"],
            vec![
                (0, "ollama", OK),
                (10, "backup", DOWN),
                (100, "ollama", DOWN),
                (200, "ollama", DOWN),
                (300, "backup", OK),
            ],
            vec![(0, Initial, "ollama"), (200, Lost, "-"), (300, Recovered, "backup")],
        ),
    ];
    for (name, chain_of, probes, changes) in cases {
        let run = Run::probing(chain_of).probes(&probes);
        assert_eq!(run.changes, expect(&changes), "{name}: {:#?}", run.reasons);
    }
    let run = Run::probing(&["ollama", "backup"]).probes(&[
        (10, "ollama", DOWN),
        (20, "backup", DOWN),
        (200, "ollama", DOWN),
    ]);
    assert_eq!(
        run.reasons.last().unwrap(),
        "nothing healthy: ollama unhealthy (down: GET /api/version: connection refused), \
         backup has not answered yet (down: GET /api/version: connection refused)"
    );
}

#[test]
fn reasons_read_well() {
    let run = Run::new(&["ollama", "backup", "cloud"]).probes(&[
        (500, "ollama", OK),
        (600, "backup", OK),
        (1_000, "backup", DOWN),
        (2_000, "backup", DOWN),
        (5_000, "ollama", HUNG),
        (10_000, "ollama", HUNG),
        (20_000, "ollama", OK),
        (50_000, "ollama", OK),
    ]);
    assert_eq!(
        run.reasons,
        [
            "first route: ollama/llama3.2:3b",
            "ollama unhealthy (hung: generation timed out after 5s); backup unhealthy (down: GET /api/version: connection refused): failover to cloud/gpt-4o-mini",
            "ollama healthy for 30s: failback to ollama/llama3.2:3b",
        ]
    );

    let run = Run::new(&["ollama", "backup"]).probes(&[
        (500, "ollama", OK),
        (600, "backup", OK),
        (1_000, "backup", DOWN),
        (2_000, "backup", DOWN),
        (5_000, "ollama", DOWN),
        (10_000, "ollama", DOWN),
        (20_000, "backup", OK),
        (21_000, "ollama", OK),
        (22_000, "backup", HUNG),
        (23_000, "backup", HUNG),
    ]);
    assert_eq!(
        run.reasons,
        [
            "first route: ollama/llama3.2:3b",
            "nothing healthy: ollama unhealthy (down: GET /api/version: connection refused), backup unhealthy (down: GET /api/version: connection refused)",
            "ollama unhealthy (down: GET /api/version: connection refused); backup healthy again: recovered on backup/qwen2.5:0.5b",
            "backup unhealthy (hung: generation timed out after 5s): failover to ollama/llama3.2:3b (ollama healthy for 1s, nothing else is healthy)",
        ]
    );
}

#[test]
fn a_fresh_daemon_routes_to_the_primary_before_any_probe() {
    let chain = chain(&["ollama", "backup"]);
    let decision = decide(&chain, &RouteState::Unrouted, &BTreeMap::new(), WINDOW, 0);
    assert_eq!(decision.route, Some(model("ollama")));
    assert_eq!(decision.change.unwrap().kind, Initial);
}

#[test]
fn no_failback_to_an_unprobed_provider() {
    // The daemon restarted with the agent on its fallback: the primary must first prove itself.
    let chain = chain(&["ollama", "backup"]);
    let current = RouteState::Routed(model("backup"));
    let decision = decide(&chain, &current, &BTreeMap::new(), WINDOW, 1_000_000);
    assert_eq!(
        decision,
        Decision {
            route: Some(model("backup")),
            change: None,
            waiting: Vec::new(),
        }
    );
    assert_eq!(
        failback_due_ms(&chain, &current, &BTreeMap::new(), WINDOW, 1_000_000),
        None
    );
}

#[test]
fn presumed_unhealthy_providers_are_skipped_until_a_probe_succeeds() {
    let chain = chain(&["ollama", "backup"]);
    let mut providers = BTreeMap::from([
        ("ollama".to_string(), ProviderState::presumed_unhealthy(2)),
        ("backup".to_string(), ProviderState::presumed_unhealthy(2)),
    ]);
    let decision = decide(&chain, &RouteState::Unrouted, &providers, WINDOW, 0);
    let change = decision.change.clone().unwrap();
    assert_eq!((decision.route.clone(), change.kind), (None, Lost));
    assert_eq!(
        change.reason,
        "nothing healthy: ollama unhealthy (not probed yet), backup unhealthy (not probed yet)"
    );
    // Lost stays lost without another record.
    assert_eq!(
        decide(&chain, &decision.state(), &providers, WINDOW, 1_000).change,
        None
    );

    let transition = providers.get_mut("backup").unwrap().observe(&verdict(OK), 2_000);
    assert_eq!(transition, Some(Transition::BecameHealthy));
    let decision = decide(&chain, &RouteState::Lost, &providers, WINDOW, 2_000);
    assert_eq!(
        (decision.route, decision.change.unwrap().kind),
        (Some(model("backup")), Recovered)
    );

    // An initial route that skips an unhealthy primary says why.
    let decision = decide(&chain, &RouteState::Unrouted, &providers, WINDOW, 2_000);
    assert_eq!(
        decision.change.unwrap().reason,
        "ollama unhealthy (not probed yet); first route: backup/qwen2.5:0.5b"
    );
}

#[test]
fn a_route_no_longer_in_the_chain_is_replaced_at_once() {
    let chain = chain(&["ollama", "backup"]);
    let gone = ModelRef {
        provider: "ollama".into(),
        model: "llama3.1:8b".into(),
    };
    let decision = decide(&chain, &RouteState::Routed(gone.clone()), &BTreeMap::new(), WINDOW, 0);
    let change = decision.change.unwrap();
    assert_eq!(
        (change.kind, change.from, change.to),
        (Reconfigured, Some(gone), Some(model("ollama")))
    );
    assert_eq!(
        change.reason,
        "ollama/llama3.1:8b is no longer in the chain: rerouted to ollama/llama3.2:3b"
    );
}

#[test]
fn provider_state_counts_consecutive_failures_and_the_stable_window() {
    let mut state = ProviderState::new(3);
    assert!(state.healthy() && state.last().is_none() && state.healthy_since_ms().is_none());
    assert_eq!(state.observe(&verdict(OK), 100), None);
    assert_eq!(state.healthy_since_ms(), Some(100));
    assert_eq!(state.observe(&verdict(OK), 200), None);
    assert_eq!(state.healthy_since_ms(), Some(100));
    assert_eq!(state.observe(&verdict(DOWN), 300), None);
    assert_eq!(state.observe(&verdict(HUNG), 400), None);
    assert!(state.healthy());
    assert_eq!(state.healthy_since_ms(), None, "a failure restarts the window");
    assert_eq!(
        state.observe(&verdict(DOWN), 500),
        Some(Transition::BecameUnhealthy {
            consecutive_failures: 3
        })
    );
    assert!(!state.healthy());
    assert_eq!(state.observe(&verdict(DOWN), 600), None, "reported once");
    assert_eq!(state.consecutive_failures(), 4);
    assert_eq!(state.observe(&verdict(OK), 700), Some(Transition::BecameHealthy));
    assert_eq!((state.healthy_since_ms(), state.consecutive_failures()), (Some(700), 0));
    assert_eq!(state.last(), Some(&verdict(OK)));
    // A threshold of 0 means the first failure.
    let mut state = ProviderState::new(0);
    assert_eq!(
        state.observe(&verdict(DOWN), 0),
        Some(Transition::BecameUnhealthy {
            consecutive_failures: 1
        })
    );
}

#[test]
fn failback_is_due_when_the_earliest_better_entry_completes_its_window() {
    let chain = chain(&["ollama", "backup", "cloud"]);
    let mut providers: BTreeMap<String, ProviderState> = ["ollama", "backup", "cloud"]
        .iter()
        .map(|p| (p.to_string(), ProviderState::new(1)))
        .collect();
    let on_cloud = RouteState::Routed(model("cloud"));
    // Both answered once, then failed: their failbacks wait the window.
    for provider in ["ollama", "backup"] {
        let state = providers.get_mut(provider).unwrap();
        state.observe(&verdict(OK), 0);
        state.observe(&verdict(DOWN), 0);
    }
    assert_eq!(failback_due_ms(&chain, &on_cloud, &providers, WINDOW, 1_000), None);
    providers.get_mut("backup").unwrap().observe(&verdict(OK), 10_000);
    providers.get_mut("ollama").unwrap().observe(&verdict(OK), 5_000);
    assert_eq!(
        failback_due_ms(&chain, &on_cloud, &providers, WINDOW, 12_000),
        Some(35_000)
    );
    assert_eq!(decide(&chain, &on_cloud, &providers, WINDOW, 34_999).change, None);
    let decision = decide(&chain, &on_cloud, &providers, WINDOW, 35_000);
    assert_eq!(
        (decision.route.clone(), decision.change.as_ref().unwrap().kind),
        (Some(model("ollama")), Failback)
    );
    // On the primary, or without a route, nothing is due.
    assert_eq!(
        failback_due_ms(&chain, &decision.state(), &providers, WINDOW, 35_000),
        None
    );
    assert_eq!(
        failback_due_ms(&chain, &RouteState::Lost, &providers, WINDOW, 35_000),
        None
    );
}

#[test]
fn changes_serialize_for_the_record() {
    let change = Change {
        kind: Failover,
        from: Some(model("ollama")),
        to: Some(model("backup")),
        reason: "ollama unhealthy (down: x): failover to backup/qwen2.5:0.5b".into(),
    };
    assert_eq!(
        serde_json::to_value(&change).unwrap(),
        serde_json::json!({
            "kind": "failover",
            "from": {"provider": "ollama", "model": "llama3.2:3b"},
            "to": {"provider": "backup", "model": "qwen2.5:0.5b"},
            "reason": "ollama unhealthy (down: x): failover to backup/qwen2.5:0.5b",
        })
    );
}

#[test]
fn a_changed_failure_threshold_applies_at_the_next_probe() {
    let mut state = ProviderState::new(5);
    state.observe(&verdict(OK), 0);
    state.set_failure_threshold(1);
    assert_eq!(
        state.observe(&verdict(DOWN), 100),
        Some(Transition::BecameUnhealthy {
            consecutive_failures: 1
        })
    );
}
