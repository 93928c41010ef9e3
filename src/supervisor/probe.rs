//! Health probes: an HTTP GET, a TCP connect or a command, each bounded by the probe's timeout.
//! Blocking, on purpose: callers run them on a thread of their own.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::spec::common::Probe;

/// One attempt. Ok(what answered) or Err(why it failed).
pub fn check(probe: &Probe) -> Result<String, String> {
    let timeout = probe.timeout().as_std();
    if let Some(http) = &probe.http {
        return check_http(&http.url, http.expect_status, &http.headers, timeout);
    }
    if let Some(tcp) = &probe.tcp {
        return connect(&tcp.address, timeout).map(|_| format!("{} accepts connections", tcp.address));
    }
    if let Some(exec) = &probe.exec {
        return check_exec(&exec.command, timeout);
    }
    Err("no probe mechanism".into())
}

/// Probes until one succeeds or `deadline` passes, every `interval` (at most every 100 ms
/// while waiting, so a service that comes up quickly is seen quickly).
pub fn wait_healthy(probe: &Probe, deadline: Instant) -> Result<String, String> {
    let pause = probe.interval().as_std().min(Duration::from_millis(100));
    let mut failures = 0u32;
    loop {
        match check(probe) {
            Ok(answer) => return Ok(answer),
            Err(why) => {
                failures += 1;
                if Instant::now() + pause >= deadline {
                    return Err(format!("probe failed {failures} time(s), last: {why}"));
                }
            }
        }
        std::thread::sleep(pause);
    }
}

/// How long a freshly started process may take to pass its probe: its start period plus
/// `failureThreshold` intervals.
pub fn verify_budget(probe: &Probe) -> Duration {
    let budget = probe.start_period().as_std() + probe.interval().as_std() * probe.failure_threshold();
    // A start on a busy host (an interpreter loading) must not fail a tight probe: the wait
    // ends at the first success anyway.
    budget.max(MIN_VERIFY_BUDGET)
}

/// The least time a fresh start gets to answer its probe.
pub const MIN_VERIFY_BUDGET: Duration = Duration::from_secs(2);

fn connect(address: &str, timeout: Duration) -> Result<TcpStream, String> {
    let addresses: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .collect();
    let mut last = format!("{address}: no address");
    for socket in addresses {
        match TcpStream::connect_timeout(&socket, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("{address}: {e}"),
        }
    }
    Err(last)
}

fn check_http(
    url: &str,
    expect: Option<u16>,
    headers: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!(
            "{url}: only http:// probes are supported (a local service needs no TLS)"
        ));
    }
    let host = parsed.host_str().ok_or_else(|| format!("{url}: no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let mut stream = connect(&format!("{host}:{port}"), timeout)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: mirrorctl-probe\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut head = [0u8; 64];
    let read = stream.read(&mut head).map_err(|e| format!("{url}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..read]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    let healthy = match expect {
        Some(expected) => status == expected,
        None => (200..400).contains(&status),
    };
    if healthy {
        Ok(format!("{url} answered {status}"))
    } else {
        Err(format!("{url} answered {status}"))
    }
}

fn check_exec(command: &[String], timeout: Duration) -> Result<String, String> {
    let (program, args) = command.split_first().ok_or("empty probe command")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return if status.success() {
                Ok(format!("`{program}` exited 0"))
            } else {
                Err(format!("`{program}` {status}"))
            };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("`{program}` did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::common::{ExecProbe, HttpProbe, TcpProbe};
    use std::net::TcpListener;

    fn probe() -> Probe {
        Probe {
            timeout: Some("500ms".parse().unwrap()),
            ..Probe::default()
        }
    }

    #[test]
    fn http_probes_read_the_status_line() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in ["HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 503 Service Unavailable\r\n\r\n"] {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = [0u8; 512];
                let n = stream.read(&mut request).unwrap();
                assert!(String::from_utf8_lossy(&request[..n]).starts_with("GET /health?x=1 HTTP/1.1\r\n"));
                stream.write_all(answer.as_bytes()).unwrap();
            }
        });
        let url = format!("http://{address}/health?x=1");
        let http = Probe {
            http: Some(HttpProbe {
                url,
                expect_status: None,
                headers: Default::default(),
            }),
            ..probe()
        };
        assert!(check(&http).unwrap().ends_with("answered 200"));
        assert!(check(&http).unwrap_err().ends_with("answered 503"));
        server.join().unwrap();
    }

    #[test]
    fn tcp_and_exec_probes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = Probe {
            tcp: Some(TcpProbe {
                address: listener.local_addr().unwrap().to_string(),
            }),
            ..probe()
        };
        assert!(check(&open).is_ok());
        drop(listener);
        assert!(check(&open).is_err());
        let ok = Probe {
            exec: Some(ExecProbe {
                command: vec!["true".into()],
            }),
            ..probe()
        };
        assert!(check(&ok).is_ok());
        let slow = Probe {
            exec: Some(ExecProbe {
                command: vec!["sleep".into(), "5".into()],
            }),
            ..probe()
        };
        let started = Instant::now();
        assert!(check(&slow).unwrap_err().contains("did not finish"));
        assert!(started.elapsed() < Duration::from_secs(2), "the timeout holds");
    }
}
