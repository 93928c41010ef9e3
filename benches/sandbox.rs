//! What containing an agent costs (issue 17's targets):
//!
//! - **start**: spawn -> exit of `/bin/true`, run directly, through the trampoline with nothing
//!   restricted, and through the trampoline with an agent's full profile (reads hidden: a state
//!   dir under /tmp and the user's credential stores, TCP to one port, signals and abstract
//!   sockets scoped, capabilities dropped). Target: full - direct <= 5 ms at p50 of 20 starts.
//! - **requests**: a Python client making sequential HTTP requests to a local server (new
//!   connection each), outside the sandbox and inside it (TCP connect checked by Landlock).
//!   Target: unchanged within noise (p50 per request, the two within 10 %).
//!
//! Run: `cargo bench --bench sandbox` (a few seconds); `-- --quick` for fewer rounds.

#[path = "common/results.rs"]
mod results;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use mirrorctl::supervisor::sandbox::{self, Profile, Support};

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

/// Milliseconds from spawn to exit of `argv`, `rounds` times.
fn starts(argv: &[String], rounds: usize) -> Vec<f64> {
    (0..rounds)
        .map(|_| {
            let began = Instant::now();
            let status = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .expect("run");
            assert!(status.success(), "{argv:?}: {status}");
            began.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn agent_profile(state: &Path, port: u16) -> Profile {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let mut hide = vec![state.to_path_buf()];
    hide.extend(sandbox::hide::credential_stores(&home));
    Profile {
        writes: vec![state.join("sandboxes/bench")],
        reads: vec![state.join("agents/bench/view")],
        hide,
        network: true,
        connect: vec![port],
        bind: vec![],
        scope: true,
    }
}

/// A tiny HTTP server on 127.0.0.1 answering every request with 200 and closing.
fn server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buffer = [0u8; 2048];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    port
}

const CLIENT: &str = r#"
import sys, time, urllib.request
port, n = int(sys.argv[1]), int(sys.argv[2])
samples = []
for _ in range(n):
    t = time.perf_counter()
    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
    samples.append((time.perf_counter() - t) * 1e3)
samples.sort()
print(samples[len(samples) // 2])
"#;

fn client_p50(prefix: &[String], port: u16, n: usize) -> f64 {
    let mut argv: Vec<String> = prefix.to_vec();
    argv.extend([
        "python3".into(),
        "-c".into(),
        CLIENT.into(),
        port.to_string(),
        n.to_string(),
    ]);
    let out = Command::new(&argv[0]).args(&argv[1..]).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a number")
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 10 } else { 20 };
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_mirrorctl"));
    if let Support::Advisory { reason } = sandbox::support() {
        results::note("sandbox", &format!("skipped: no Landlock ({reason})"));
        println!("skipped: no Landlock ({reason})");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    for dir in ["sandboxes/bench", "agents/bench/view"] {
        std::fs::create_dir_all(state.path().join(dir)).unwrap();
    }
    let port = server();
    let truth = vec!["/bin/true".to_string()];
    let tramp = |profile: &Profile| -> Vec<String> {
        profile
            .trampoline_args(&exe, false, &truth)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    };
    let full = tramp(&agent_profile(state.path(), port));
    let bare = tramp(&Profile::default());
    // Warm the page cache and the binary.
    starts(&full, 3);
    let mut direct = starts(&truth, rounds);
    let mut through = starts(&bare, rounds);
    let mut contained = starts(&full, rounds);
    let (d, t, c) = (
        percentile(&mut direct, 0.5),
        percentile(&mut through, 0.5),
        percentile(&mut contained, 0.5),
    );
    println!("start of /bin/true, p50 of {rounds}: direct {d:.2} ms, trampoline {t:.2} ms, full sandbox {c:.2} ms");
    results::Measure::new("sandbox", "agent start: full sandbox - direct (p50)", c - d, "ms")
        .target("<= 5 ms", c - d <= 5.0)
        .record();
    results::Measure::new("sandbox", "agent start: full sandbox (p50)", c, "ms")
        .peer("direct exec", Some(d))
        .record();

    let n = if quick { 100 } else { 300 };
    let prefix: Vec<String> = tramp(&agent_profile(state.path(), port))
        .into_iter()
        .take_while(|a| a != "--")
        .chain(std::iter::once("--".to_string()))
        .collect();
    client_p50(&[], port, 20);
    let mut outside = Vec::new();
    let mut inside = Vec::new();
    for _ in 0..3 {
        outside.push(client_p50(&[], port, n));
        inside.push(client_p50(&prefix, port, n));
    }
    let (o, i) = (percentile(&mut outside, 0.5), percentile(&mut inside, 0.5));
    println!(
        "HTTP request, new connection each, p50 of {n} (median of 3 runs): outside {o:.3} ms, contained {i:.3} ms"
    );
    results::Measure::new("sandbox", "request from a contained agent (p50)", i, "ms")
        .peer("uncontained", Some(o))
        .target("within 10 % of uncontained", i <= o * 1.1)
        .record();
}
