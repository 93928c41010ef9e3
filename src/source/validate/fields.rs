//! Checks of fields several kinds share: command, environment, URLs, process supervision
//! settings (backoff, health probe, stop, limits) and budgets.

use std::collections::BTreeMap;

use super::{spec, Report};
use crate::source::yaml::FieldPath;
use crate::spec::common::{is_env_name, Backoff, Limits, Probe, Stop};

pub(super) fn check_command(report: &mut Report<'_>, command: &[String]) {
    match command.first() {
        None => report.error(
            spec("command"),
            "expected the program and its arguments, found an empty list",
        ),
        Some(program) if program.trim().is_empty() => report.error(
            spec("command").index(0),
            "expected a program name or path, found an empty string",
        ),
        Some(_) => {}
    }
}

pub(super) fn check_env(report: &mut Report<'_>, env: &BTreeMap<String, String>, env_files: &[std::path::PathBuf]) {
    for key in env.keys() {
        if !is_env_name(key) {
            report.key_error(spec("env").key(key.as_str()), format!(
                "expected an environment variable name (letters, digits and `_`, not starting with a digit), found `{key}`"
            ));
        }
    }
    for (i, file) in env_files.iter().enumerate() {
        if file.as_os_str().is_empty() {
            report.error(spec("envFiles").index(i), "expected a file path, found an empty string");
        }
    }
}

pub(super) fn check_threshold(report: &mut Report<'_>, path: FieldPath, value: Option<u32>) {
    if value == Some(0) {
        report.error(path, "expected a count of at least 1, found 0");
    }
}

pub(super) fn check_url(report: &mut Report<'_>, path: FieldPath, text: &str) {
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(u) => report.error(
            path,
            format!(
                "expected an http:// or https:// URL, found scheme `{}` in `{text}`",
                u.scheme()
            ),
        ),
        Err(e) => report.error(
            path,
            format!("expected an http:// or https:// URL, found `{text}` ({e})"),
        ),
    }
}

pub(super) fn check_process(
    report: &mut Report<'_>,
    backoff: Option<&Backoff>,
    health: Option<&Probe>,
    stop: Option<&Stop>,
    limits: Option<&Limits>,
) {
    if let Some(b) = backoff {
        if b.initial() > b.max() {
            report.error(
                FieldPath::from("spec.backoff.initial"),
                format!("initial delay {} is longer than the maximum {}", b.initial(), b.max()),
            );
        }
        if let Some(m) = b.multiplier {
            if !(m >= 1.0 && m.is_finite()) {
                report.error(
                    FieldPath::from("spec.backoff.multiplier"),
                    format!("expected a factor of at least 1, found {m}"),
                );
            }
        }
    }
    if let Some(probe) = health {
        let base = FieldPath::from("spec.health");
        match probe.mechanism_count() {
            1 => {}
            0 => report.error(
                base.clone(),
                "expected exactly one of `http`, `tcp` or `exec`, found none",
            ),
            _ => report.error(
                base.clone(),
                "expected exactly one of `http`, `tcp` or `exec`, found several",
            ),
        }
        if let Some(http) = &probe.http {
            check_url(report, base.clone().key("http").key("url"), &http.url);
        }
        if let Some(tcp) = &probe.tcp {
            let valid = tcp
                .address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                report.error(
                    base.clone().key("tcp").key("address"),
                    format!("expected `host:port`, found `{}`", tcp.address),
                );
            }
        }
        if let Some(exec) = &probe.exec {
            if exec.command.first().is_none_or(|c| c.trim().is_empty()) {
                report.error(
                    base.clone().key("exec").key("command"),
                    "expected the program and its arguments, found an empty list",
                );
            }
        }
        check_threshold(report, base.clone().key("failureThreshold"), probe.failure_threshold);
        check_threshold(report, base.clone().key("successThreshold"), probe.success_threshold);
        for (field, value) in [("interval", probe.interval), ("timeout", probe.timeout)] {
            if value.is_some_and(|v| v.is_zero()) {
                report.error(base.clone().key(field), "expected a duration greater than 0");
            }
        }
    }
    if let Some(stop) = stop {
        if stop.signal.is_some() && stop.signal().is_none() {
            report.error(
                FieldPath::from("spec.stop.signal"),
                format!(
                    "expected one of {}, found `{}`",
                    crate::spec::common::STOP_SIGNALS.join(", "),
                    stop.signal.as_deref().unwrap_or_default()
                ),
            );
        }
    }
    if let Some(limits) = limits {
        if let Some(cpu) = limits.cpu {
            if !(cpu.is_finite() && (0.01..=4096.0).contains(&cpu)) {
                report.error(
                    FieldPath::from("spec.limits.cpu"),
                    format!("expected a number of CPU cores from 0.01 to 4096 (e.g. 0.5), found {cpu}"),
                );
            }
        }
        if limits.open_files == Some(0) {
            report.error(
                FieldPath::from("spec.limits.openFiles"),
                "expected at least 1 open file",
            );
        }
        if limits.memory.is_some_and(|m| m.0 < (1 << 20)) {
            report.error(
                FieldPath::from("spec.limits.memory"),
                "expected at least 1Mi: a smaller limit cannot start a process",
            );
        }
    }
}

pub(super) fn check_budget(report: &mut Report<'_>, path: FieldPath, budget: Option<&crate::spec::common::Budget>) {
    if let Some(spend) = budget.and_then(|b| b.spend_per_day_usd) {
        if !(spend >= 0.0 && spend.is_finite()) {
            report.error(
                path.key("spendPerDayUsd"),
                format!("expected an amount of at least 0, found {spend}"),
            );
        }
    }
}
