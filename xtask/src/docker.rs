//! Is there a Docker daemon? Answered fast: `DOCKER_HOST` or `/var/run/docker.sock`, then `GET /_ping`,
//! all within a short timeout. Never hangs.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The default Docker socket.
pub(crate) const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// How long detection may take in total.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(2);

/// Where the daemon should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A unix socket path.
    Unix(PathBuf),
    /// `host:port` over plain TCP.
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// The endpoint named by `DOCKER_HOST` (given as an argument for testing), or the default socket.
pub(crate) fn endpoint(docker_host: Option<&str>) -> Result<Endpoint, String> {
    match docker_host.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET))),
        Some(h) => {
            if let Some(path) = h.strip_prefix("unix://") {
                Ok(Endpoint::Unix(PathBuf::from(path)))
            } else if let Some(addr) = h.strip_prefix("tcp://") {
                let addr = addr.trim_end_matches('/');
                if addr.contains(':') {
                    Ok(Endpoint::Tcp(addr.to_string()))
                } else {
                    Ok(Endpoint::Tcp(format!("{addr}:2375")))
                }
            } else {
                Err(format!("DOCKER_HOST={h} is not unix:// or tcp://"))
            }
        }
    }
}

/// Checks that the daemon answers `GET /_ping` with `OK` within `timeout`; the error is a one-line reason.
pub(crate) fn ping(endpoint: &Endpoint, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    match endpoint {
        Endpoint::Unix(path) => {
            if !path.exists() {
                return Err(format!("no Docker socket at {}", path.display()));
            }
            let stream = UnixStream::connect(path)
                .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
            exchange(stream, endpoint, deadline, timeout)
        }
        Endpoint::Tcp(addr) => {
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| format!("bad address {addr}"))?;
            let port: u16 = port.parse().map_err(|_| format!("bad port in {addr}"))?;
            let stream =
                crate::proc::tcp_connect(host, port, timeout).map_err(|e| format!("{e:#}"))?;
            exchange(stream, endpoint, deadline, timeout)
        }
    }
}

/// Something we can set timeouts on and talk HTTP over.
trait Stream: Read + Write {
    fn timeouts(&self, t: Duration) -> std::io::Result<()>;
}

impl Stream for UnixStream {
    fn timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Stream for std::net::TcpStream {
    fn timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

fn exchange(
    mut stream: impl Stream,
    endpoint: &Endpoint,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), String> {
    let remaining = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    stream.timeouts(remaining()).map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| format!("cannot write to {endpoint}: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if Instant::now() >= deadline {
            return Err(format!("{endpoint} did not answer within {timeout:?}"));
        }
        stream.timeouts(remaining()).map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if ping_answer_ok(&answer) || answer.len() > 64 * 1024 {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("{endpoint} did not answer within {timeout:?}"));
            }
            Err(e) => return Err(format!("cannot read from {endpoint}: {e}")),
        }
    }
    if ping_answer_ok(&answer) {
        Ok(())
    } else {
        let first = String::from_utf8_lossy(&answer);
        let first = first.lines().next().unwrap_or("").trim();
        Err(format!("{endpoint} answered {first:?} instead of 200 OK"))
    }
}

/// Whether a raw HTTP answer is a 200 whose body is `OK`.
fn ping_answer_ok(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    crate::proc::parse_status_line(head.lines().next().unwrap_or("")) == Some(200)
        && body.trim() == "OK"
}

/// Detects a Docker daemon from the real environment.
pub(crate) fn detect() -> Result<Endpoint, String> {
    let ep = endpoint(std::env::var("DOCKER_HOST").ok().as_deref())?;
    ping(&ep, TIMEOUT)?;
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    fn scratch_socket(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xtask-docker-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("docker.sock")
    }

    #[test]
    fn endpoint_from_docker_host() {
        assert_eq!(endpoint(None), Ok(Endpoint::Unix(DEFAULT_SOCKET.into())));
        assert_eq!(
            endpoint(Some("")),
            Ok(Endpoint::Unix(DEFAULT_SOCKET.into()))
        );
        assert_eq!(
            endpoint(Some("unix:///run/user/1000/docker.sock")),
            Ok(Endpoint::Unix("/run/user/1000/docker.sock".into()))
        );
        assert_eq!(
            endpoint(Some("tcp://10.0.0.5:2376")),
            Ok(Endpoint::Tcp("10.0.0.5:2376".into()))
        );
        assert_eq!(
            endpoint(Some("tcp://docker")),
            Ok(Endpoint::Tcp("docker:2375".into()))
        );
        assert!(
            endpoint(Some("ssh://me@host"))
                .unwrap_err()
                .contains("ssh://")
        );
    }

    #[test]
    fn missing_socket_is_reported() {
        let path = scratch_socket("missing");
        let err = ping(&Endpoint::Unix(path.clone()), Duration::from_secs(2)).unwrap_err();
        assert!(err.contains("no Docker socket"), "{err}");
    }

    #[test]
    fn silent_socket_times_out_quickly() {
        let path = scratch_socket("silent");
        let listener = UnixListener::bind(&path).unwrap();
        let holder = thread::spawn(move || {
            // Accept and hold the connection without answering.
            let (conn, _) = listener.accept().unwrap();
            thread::sleep(Duration::from_millis(700));
            drop(conn);
        });
        let started = Instant::now();
        let err = ping(&Endpoint::Unix(path), Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("did not answer"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        holder.join().unwrap();
    }

    fn answering_socket(name: &str, reply: &'static [u8]) -> (PathBuf, thread::JoinHandle<()>) {
        let path = scratch_socket(name);
        let listener = UnixListener::bind(&path).unwrap();
        let h = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = conn.read(&mut buf);
            conn.write_all(reply).unwrap();
        });
        (path, h)
    }

    #[test]
    fn answering_socket_is_detected() {
        let (path, h) = answering_socket(
            "ok",
            b"HTTP/1.1 200 OK\r\nApi-Version: 1.47\r\nContent-Length: 2\r\n\r\nOK",
        );
        assert_eq!(ping(&Endpoint::Unix(path), Duration::from_secs(2)), Ok(()));
        h.join().unwrap();
    }

    #[test]
    fn wrong_answer_is_rejected() {
        let (path, h) =
            answering_socket("wrong", b"HTTP/1.1 500 Internal Server Error\r\n\r\nboom");
        let err = ping(&Endpoint::Unix(path), Duration::from_secs(2)).unwrap_err();
        assert!(err.contains("500"), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn closed_tcp_port_is_reported() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = ping(
            &Endpoint::Tcp(format!("127.0.0.1:{port}")),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }
}
