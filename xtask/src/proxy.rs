//! A TCP fault proxy: sits between clients and a real server and misbehaves on request.
//!
//! Faults (changed at any time with [`FaultProxy::set`], applied to every open connection):
//! latency and jitter per direction (order is kept: a chunk never overtakes an earlier one),
//! refusing new connections (accepted, then closed at once), one direction black-holed (bytes
//! read and thrown away), closing a connection after N bytes, and [`FaultProxy::cut_all`], which
//! closes every open connection now (a server restart as the clients see it).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the proxy does to traffic. `Faults::default()` passes everything through untouched.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Faults {
    /// Added to every chunk going client → server.
    pub(crate) upstream_latency: Duration,
    /// Added to every chunk going server → client (a slow answer: "renew response delayed").
    pub(crate) downstream_latency: Duration,
    /// Up to this much more, uniformly at random per chunk, in both directions.
    pub(crate) jitter: Duration,
    /// Accept new connections and close them at once.
    pub(crate) refuse_new: bool,
    /// Throw away everything the client sends.
    pub(crate) blackhole_upstream: bool,
    /// Throw away everything the server sends.
    pub(crate) blackhole_downstream: bool,
    /// Close a connection once this many bytes (both directions together) have passed.
    pub(crate) close_after_bytes: Option<u64>,
}

/// Counters of what the proxy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProxyStats {
    pub(crate) accepted: u64,
    pub(crate) refused: u64,
    pub(crate) cut: u64,
    pub(crate) closed_after_bytes: u64,
}

struct Shared {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    /// Bumped by `cut_all`; every connection watches it.
    generation: watch::Sender<u64>,
    accepted: AtomicU64,
    refused: AtomicU64,
    cut: AtomicU64,
    closed_after_bytes: AtomicU64,
    seed: AtomicU64,
}

impl Shared {
    fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn random(&self) -> u64 {
        // splitmix64 over a shared counter: cheap, and reproducible for a given seed.
        let mut z = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A running proxy; stops when dropped.
pub(crate) struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Close every connection too: nothing outlives the proxy.
        self.cut_all();
    }
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`. Needs a tokio runtime.
    pub(crate) async fn start(upstream: SocketAddr, seed: u64) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            upstream,
            faults: Mutex::new(Faults::default()),
            generation,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            closed_after_bytes: AtomicU64::new(0),
            seed: AtomicU64::new(seed),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            accept_task,
        })
    }

    /// Where clients connect.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the faults in force (open connections pick them up with their next chunk).
    pub(crate) fn set(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Closes every open connection now. New connections are accepted as usual.
    pub(crate) fn cut_all(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    pub(crate) fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
            cut: self.shared.cut.load(Ordering::Relaxed),
            closed_after_bytes: self.shared.closed_after_bytes.load(Ordering::Relaxed),
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors or similar: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if shared.faults().refuse_new {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(client, shared.clone()));
    }
}

/// Which way a pump carries bytes.
#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Upstream,
    Downstream,
}

async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let mut cut = shared.generation.subscribe();
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let budget = Arc::new(AtomicU64::new(0));
    let up = pump(
        client_read,
        server_write,
        Direction::Upstream,
        shared.clone(),
        budget.clone(),
    );
    let down = pump(
        server_read,
        client_write,
        Direction::Downstream,
        shared.clone(),
        budget,
    );
    tokio::pin!(up, down);
    let (mut up_open, mut down_open) = (true, true);
    // One side closing is a half-close: the other direction keeps flowing. The byte budget
    // running out, or a cut, ends the connection: dropping both pumps closes both sockets.
    while up_open || down_open {
        tokio::select! {
            end = &mut up, if up_open => {
                up_open = false;
                if end == PumpEnd::Budget {
                    shared.closed_after_bytes.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            end = &mut down, if down_open => {
                down_open = false;
                if end == PumpEnd::Budget {
                    shared.closed_after_bytes.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            _ = cut.changed() => {
                shared.cut.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum PumpEnd {
    Closed,
    Budget,
}

/// Copies one direction: a reader task stamps each chunk with its delivery time, a writer
/// delivers chunks in order at those times.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    direction: Direction,
    shared: Arc<Shared>,
    budget: Arc<AtomicU64>,
) -> PumpEnd {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader_shared = shared.clone();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut last_due = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return PumpEnd::Closed,
                Ok(n) => n,
            };
            let faults = reader_shared.faults();
            let (blackhole, latency) = match direction {
                Direction::Upstream => (faults.blackhole_upstream, faults.upstream_latency),
                Direction::Downstream => (faults.blackhole_downstream, faults.downstream_latency),
            };
            if blackhole {
                continue;
            }
            let mut chunk = buf[..n].to_vec();
            let mut out_of_budget = false;
            if let Some(limit) = faults.close_after_bytes {
                let before = budget.fetch_add(n as u64, Ordering::Relaxed);
                let allowed = limit.saturating_sub(before) as usize;
                if allowed < n {
                    chunk.truncate(allowed);
                    out_of_budget = true;
                }
            }
            let jitter = match faults.jitter.as_nanos() as u64 {
                0 => Duration::ZERO,
                j => Duration::from_nanos(reader_shared.random() % j),
            };
            let due = (Instant::now() + latency + jitter).max(last_due);
            last_due = due;
            if !chunk.is_empty() && tx.send((due, chunk)).is_err() {
                return PumpEnd::Closed;
            }
            if out_of_budget {
                return PumpEnd::Budget;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    // The writer finishes delivering what was read before the end is reported.
    let (end, ()) = tokio::join!(reader, writer);
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port: every byte comes straight back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn proxy() -> FaultProxy {
        FaultProxy::start(echo_server().await, 7).await.unwrap()
    }

    async fn round_trip(conn: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        conn.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        conn.read_exact(&mut got).await?;
        Ok(got)
    }

    /// Reads until EOF or error; true if the connection ended (rather than timing out).
    async fn ends_within(conn: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(limit, async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn passes_bytes_through_untouched_by_default() {
        let p = proxy().await;
        let mut conn = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(round_trip(&mut conn, b"hello").await.unwrap(), b"hello");
        assert_eq!(p.stats().accepted, 1);
    }

    #[tokio::test]
    async fn latency_and_jitter_delay_each_direction_in_order() {
        let p = proxy().await;
        p.set(Faults {
            upstream_latency: Duration::from_millis(60),
            downstream_latency: Duration::from_millis(90),
            jitter: Duration::from_millis(30),
            ..Faults::default()
        });
        let mut conn = TcpStream::connect(p.addr()).await.unwrap();
        let started = Instant::now();
        conn.write_all(b"one").await.unwrap();
        conn.write_all(b"two").await.unwrap();
        let mut got = [0u8; 6];
        conn.read_exact(&mut got).await.unwrap();
        let took = started.elapsed();
        assert_eq!(&got, b"onetwo", "jitter must not reorder bytes");
        assert!(took >= Duration::from_millis(150), "took {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    #[tokio::test]
    async fn blackholed_downstream_swallows_answers_but_keeps_the_connection() {
        let p = proxy().await;
        p.set(Faults {
            blackhole_downstream: true,
            ..Faults::default()
        });
        let mut conn = TcpStream::connect(p.addr()).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_millis(300), round_trip(&mut conn, b"x"));
        assert!(answer.await.is_err(), "no answer may come back");
        p.set(Faults::default());
        assert_eq!(round_trip(&mut conn, b"y").await.unwrap(), b"y");
    }

    #[tokio::test]
    async fn blackholed_upstream_never_reaches_the_server() {
        let p = proxy().await;
        p.set(Faults {
            blackhole_upstream: true,
            ..Faults::default()
        });
        let mut conn = TcpStream::connect(p.addr()).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_millis(300), round_trip(&mut conn, b"x"));
        assert!(answer.await.is_err());
        p.set(Faults::default());
        // The lost byte is gone for good: the next answer is the next message only.
        assert_eq!(round_trip(&mut conn, b"z").await.unwrap(), b"z");
    }

    #[tokio::test]
    async fn closes_a_connection_after_n_bytes() {
        let p = proxy().await;
        p.set(Faults {
            close_after_bytes: Some(10),
            ..Faults::default()
        });
        let mut conn = TcpStream::connect(p.addr()).await.unwrap();
        // 4 up + 4 down = 8 bytes: fine.
        assert_eq!(round_trip(&mut conn, b"abcd").await.unwrap(), b"abcd");
        // 2 more bytes are allowed; then the connection ends.
        conn.write_all(b"efghij").await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut got)).await;
        assert!(got.len() <= 2, "got {got:?} past the budget");
        assert!(ends_within(&mut conn, Duration::from_secs(2)).await);
        assert_eq!(p.stats().closed_after_bytes, 1);
    }

    #[tokio::test]
    async fn refuses_new_connections_and_keeps_old_ones() {
        let p = proxy().await;
        let mut old = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(round_trip(&mut old, b"a").await.unwrap(), b"a");
        p.set(Faults {
            refuse_new: true,
            ..Faults::default()
        });
        let mut new = TcpStream::connect(p.addr()).await.unwrap();
        assert!(ends_within(&mut new, Duration::from_secs(2)).await);
        assert_eq!(round_trip(&mut old, b"b").await.unwrap(), b"b");
        assert_eq!(p.stats().refused, 1);
    }

    #[tokio::test]
    async fn cut_all_closes_every_open_connection_now() {
        let p = proxy().await;
        let mut a = TcpStream::connect(p.addr()).await.unwrap();
        let mut b = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"1").await.unwrap(), b"1");
        assert_eq!(round_trip(&mut b, b"2").await.unwrap(), b"2");
        p.cut_all();
        assert!(ends_within(&mut a, Duration::from_secs(2)).await);
        assert!(ends_within(&mut b, Duration::from_secs(2)).await);
        assert_eq!(p.stats().cut, 2);
        // The proxy itself keeps serving.
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(round_trip(&mut c, b"3").await.unwrap(), b"3");
    }
}
