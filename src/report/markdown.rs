//! Drift reports as Markdown for people: a header, a summary by severity and one table row per
//! item, most severe first. `write` keeps a bounded directory of them, one file per report.

use std::fmt::Write as _;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{parse_rfc3339, short, DriftItem, DriftReport, Severity};

/// Most severe first; how the summary and the table are ordered.
const SEVERITIES: [Severity; 4] = [Severity::Critical, Severity::Error, Severity::Warning, Severity::Info];

/// The report as Markdown.
pub fn render(report: &DriftReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Drift report for {} at {}\n",
        escape(&report.host),
        escape(&report.started_at)
    );
    let _ = writeln!(out, "- Report: `{}`", escape(&report.id));
    if let Some(run_id) = &report.run_id {
        let _ = writeln!(out, "- Run: `{}`", escape(run_id));
    }
    match report.commit.as_deref() {
        Some(commit) => {
            let _ = writeln!(out, "- Commit: `{}` (`{}`)", short(Some(commit)), commit);
        }
        None => out.push_str("- Commit: none\n"),
    }
    let _ = writeln!(
        out,
        "- Observe-only: {}\n",
        if report.observe_only { "yes" } else { "no" }
    );
    let _ = writeln!(out, "{}", summary(&report.items));
    if report.items.is_empty() {
        return out;
    }

    out.push_str("\n| Kind | Name | Drift | Severity | Corrective | Detail |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    let mut items: Vec<&DriftItem> = report.items.iter().collect();
    // The drift kind last, only so that equal kind/name pairs still render in a fixed order.
    items.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.kind.cmp(&b.kind))
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.drift.as_str().cmp(b.drift.as_str()))
    });
    for item in items {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            escape(&item.kind),
            escape(&item.name),
            item.drift.as_str(),
            item.severity.as_str(),
            if item.corrective { "yes" } else { "no" },
            escape(&item.detail)
        );
    }
    out
}

/// `**Summary:** 3 items: 1 critical, 2 warning.` or `**No drift.**`
fn summary(items: &[DriftItem]) -> String {
    if items.is_empty() {
        return "**No drift.**".to_string();
    }
    let counts: Vec<String> = SEVERITIES
        .iter()
        .filter_map(|&severity| {
            let count = items.iter().filter(|i| i.severity == severity).count();
            (count > 0).then(|| format!("{count} {}", severity.as_str()))
        })
        .collect();
    let noun = if items.len() == 1 { "item" } else { "items" };
    format!("**Summary:** {} {noun}: {}.", items.len(), counts.join(", "))
}

/// Text from the host (details carry process output) made safe for a table cell: a `|` or a
/// line break would end the cell or the row, and raw HTML could swallow what follows.
/// Backslashes are doubled so that a `\` before a `|` cannot cancel the pipe's escape.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => {
                chars.next_if_eq(&'\n');
                out.push_str("<br>");
            }
            '\n' => out.push_str("<br>"),
            c => out.push(c),
        }
    }
    out
}

/// Writes the report as `<dir>/<YYYYMMDDTHHMMSSZ>-<first 8 of id>.md` (mode 0600, through a
/// temporary file and a rename, so a reader never sees half a report; `dir` is created 0700).
/// Then removes report files beyond the newest `keep` (by name, which sorts by start time), except
/// the file just written, so the path returned always exists; files not named like reports are
/// never touched. Returns the path written.
pub fn write(dir: &Path, report: &DriftReport, keep: usize) -> io::Result<PathBuf> {
    let name = file_name(report)?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| at(dir, e))?;
    let path = dir.join(&name);
    crate::state::write_private_file(&path, render(report).as_bytes())?;
    prune(dir, &name, keep)?;
    Ok(path)
}

/// `<started_at as YYYYMMDDTHHMMSSZ>-<first 8 characters of the id>.md`
pub fn file_name(report: &DriftReport) -> io::Result<String> {
    let ms = parse_rfc3339(&report.started_at).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "drift report {}: start time {:?} is not RFC 3339",
                report.id, report.started_at
            ),
        )
    })?;
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let stamp: String = humantime::format_rfc3339_seconds(time)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let id: String = report.id.chars().take(8).collect();
    if id.is_empty() || !id.chars().all(is_id_char) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("drift report id {:?} cannot name a file", report.id),
        ));
    }
    Ok(format!("{stamp}-{id}.md"))
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Whether `name` is one `file_name` could have made; only these are ever pruned.
fn is_report_file_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".md") else {
        return false;
    };
    let bytes = stem.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes.get(range).is_some_and(|b| b.iter().all(u8::is_ascii_digit));
    let id = stem.get(17..).unwrap_or_default();
    digits(0..8)
        && bytes.get(8) == Some(&b'T')
        && digits(9..15)
        && bytes.get(15) == Some(&b'Z')
        && bytes.get(16) == Some(&b'-')
        && (1..=8).contains(&id.chars().count())
        && id.chars().all(is_id_char)
}

/// Keeps the newest `keep` report files (names sort by start time), and `written` whatever its age.
fn prune(dir: &Path, written: &str, keep: usize) -> io::Result<()> {
    let mut reports = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| at(dir, e))? {
        let entry = entry.map_err(|e| at(dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // file_type does not follow symlinks: only regular files named like reports are ours.
        if is_report_file_name(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            reports.push(name);
        }
    }
    reports.sort_unstable_by(|a, b| b.cmp(a));
    for name in reports.iter().skip(keep).filter(|name| *name != written) {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(&path, e)),
            _ => {}
        }
    }
    Ok(())
}

/// The error with the path it happened at, which io::Error alone does not say.
fn at(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Drift;
    use std::os::unix::fs::PermissionsExt;

    fn item(kind: &str, name: &str, drift: Drift, severity: Severity, corrective: bool, detail: &str) -> DriftItem {
        DriftItem {
            kind: kind.into(),
            name: name.into(),
            drift,
            corrective,
            severity,
            detail: detail.into(),
        }
    }

    fn report(items: Vec<DriftItem>) -> DriftReport {
        DriftReport {
            id: "0190f5e4-7c3a-7d2e-9b1a-3c4d5e6f7a8b".into(),
            host: "mac-mini".into(),
            commit: Some("3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39".into()),
            run_id: None,
            started_at: "2024-05-01T12:34:56.789Z".into(),
            observe_only: false,
            repeats: 0,
            last_seen_at: None,
            items,
        }
    }

    #[test]
    fn renders_a_report() {
        let report = report(vec![
            item("Service", "web", Drift::Missing, Severity::Error, true, "not running"),
            item(
                "LaunchAgent",
                "backup",
                Drift::Changed,
                Severity::Warning,
                false,
                "schedule changed",
            ),
            item(
                "Service",
                "api",
                Drift::Failed,
                Severity::Critical,
                true,
                "exited with status 1",
            ),
            item(
                "Agent",
                "coder",
                Drift::Degraded,
                Severity::Critical,
                true,
                "probe failed 3 times",
            ),
        ]);
        assert_eq!(
            render(&report),
            "\
# Drift report for mac-mini at 2024-05-01T12:34:56.789Z

- Report: `0190f5e4-7c3a-7d2e-9b1a-3c4d5e6f7a8b`
- Commit: `3f2a9c1d8e7b` (`3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39`)
- Observe-only: no

**Summary:** 4 items: 2 critical, 1 error, 1 warning.

| Kind | Name | Drift | Severity | Corrective | Detail |
|---|---|---|---|---|---|
| Agent | coder | degraded | critical | yes | probe failed 3 times |
| Service | api | failed | critical | yes | exited with status 1 |
| Service | web | missing | error | yes | not running |
| LaunchAgent | backup | changed | warning | no | schedule changed |
"
        );
    }

    #[test]
    fn renders_an_empty_observe_only_report() {
        let mut report = report(Vec::new());
        report.observe_only = true;
        report.commit = None;
        report.run_id = Some("0190f5e4-0000-7000-8000-000000000001".into());
        assert_eq!(
            render(&report),
            "\
# Drift report for mac-mini at 2024-05-01T12:34:56.789Z

- Report: `0190f5e4-7c3a-7d2e-9b1a-3c4d5e6f7a8b`
- Run: `0190f5e4-0000-7000-8000-000000000001`
- Commit: none
- Observe-only: yes

**No drift.**
"
        );
    }

    #[test]
    fn one_item_is_singular() {
        let report = report(vec![item("Service", "web", Drift::Stale, Severity::Info, false, "")]);
        let text = render(&report);
        assert!(text.contains("**Summary:** 1 item: 1 info.\n"), "{text}");
        assert!(text.ends_with("| Service | web | stale | info | no |  |\n"), "{text}");
    }

    #[test]
    fn details_cannot_break_the_table() {
        let detail = "a|b\nc\r\nd\re \\| f <script>&";
        let report = report(vec![item(
            "Service",
            "w|eb",
            Drift::Failed,
            Severity::Error,
            true,
            detail,
        )]);
        let text = render(&report);
        let row = text.lines().last().unwrap();
        assert_eq!(
            row,
            "| Service | w\\|eb | failed | error | yes | a\\|b<br>c<br>d<br>e \\\\\\| f &lt;script&gt;&amp; |"
        );
        // Every row of the table has the same number of unescaped cell separators.
        let separators = |line: &str| {
            let mut count = 0;
            let mut escaped = false;
            for c in line.chars() {
                match (c, escaped) {
                    ('\\', false) => escaped = true,
                    ('|', false) => count += 1,
                    _ => escaped = false,
                }
            }
            count
        };
        let table: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(table.len(), 3);
        assert!(table.iter().all(|l| separators(l) == 7), "{table:?}");
    }

    #[test]
    fn file_names_follow_the_start_time_and_id() {
        let report = report(Vec::new());
        assert_eq!(file_name(&report).unwrap(), "20240501T123456Z-0190f5e4.md");
        assert!(is_report_file_name("20240501T123456Z-0190f5e4.md"));
        for foreign in [
            "notes.md",
            "20240501T123456Z-0190f5e4.md.bak",
            "20240501T123456Z-.md",
            "20240501T123456Z-0190f5e4x.md",
            "2024050xT123456Z-0190f5e4.md",
            ".20240501T123456Z-0190f5e4.md.1-0.tmp",
        ] {
            assert!(!is_report_file_name(foreign), "{foreign}");
        }
        let mut bad = report.clone();
        bad.id = "../etc/x".into();
        assert_eq!(file_name(&bad).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        bad = report;
        bad.started_at = "yesterday".into();
        assert_eq!(file_name(&bad).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn writes_privately_and_keeps_the_newest() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("drift");
        let mut paths = Vec::new();
        for (i, id) in ["01aaaaaa-1", "01bbbbbb-2", "01cccccc-3"].into_iter().enumerate() {
            if i == 1 {
                // The first write created the directory; a foreign file in it survives pruning.
                fs::write(dir.join("notes.md"), "mine").unwrap();
            }
            let mut r = report(vec![item(
                "Service",
                "web",
                Drift::Missing,
                Severity::Error,
                true,
                "gone",
            )]);
            r.id = id.into();
            r.started_at = format!("2024-05-0{}T10:00:00Z", i + 1);
            paths.push(write(&dir, &r, 2).unwrap());
        }
        assert_eq!(paths[2], dir.join("20240503T100000Z-01cccccc.md"));
        assert_eq!(fs::read_to_string(&paths[2]).unwrap(), {
            let mut r = report(vec![item(
                "Service",
                "web",
                Drift::Missing,
                Severity::Error,
                true,
                "gone",
            )]);
            r.id = "01cccccc-3".into();
            r.started_at = "2024-05-03T10:00:00Z".into();
            render(&r)
        });

        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "20240502T100000Z-01bbbbbb.md",
                "20240503T100000Z-01cccccc.md",
                "notes.md"
            ]
        );
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&paths[2]).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn the_report_just_written_stays_even_when_older() {
        // A clock stepped back: the new report sorts before the kept one.
        let dir = tempfile::tempdir().unwrap();
        let mut newer = report(Vec::new());
        newer.id = "02000000".into();
        newer.started_at = "2024-06-01T00:00:00Z".into();
        let newer = write(dir.path(), &newer, 1).unwrap();
        let older = write(dir.path(), &report(Vec::new()), 1).unwrap();
        assert!(older.exists() && newer.exists());
        // keep = 0 still leaves the report just written.
        let mut latest = report(Vec::new());
        latest.started_at = "2024-07-01T00:00:00Z".into();
        let latest = write(dir.path(), &latest, 0).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(latest.exists());
    }
}
