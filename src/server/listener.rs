//! The TCP edge shared by plain HTTP and HTTPS: one accept loop for both listeners.
//!
//! What one client may hold is bounded here, before any byte is parsed: connections in
//! total and per source address, new connections per second per address, WebSocket
//! sessions per address (see [`Admission`]); a request header (and the TLS handshake)
//! must arrive within `[http] header_timeout_ms`, a keep-alive connection that moves no
//! byte for `idle_timeout_ms` is closed. Accept errors (the fd limit: `EMFILE`) back
//! off instead of spinning, and are logged once per interval.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use log::{debug, warn};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::config::Config;

/// The limits of the TCP edge, from `[http]` and `[signalling]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub connection_rate_per_address: u32,
    pub max_sessions_per_address: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn from_config(c: &Config) -> Limits {
        Limits {
            max_connections: c.http.max_connections,
            max_connections_per_address: c.http.max_connections_per_address,
            connection_rate_per_address: c.http.connection_rate_per_address,
            max_sessions_per_address: c.signalling.max_sessions_per_address,
            header_timeout: Duration::from_millis(c.http.header_timeout_ms),
            idle_timeout: Duration::from_millis(c.http.idle_timeout_ms),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Total,
    PerAddress,
    Rate,
}

impl Refusal {
    fn text(self) -> &'static str {
        match self {
            Refusal::Total => "too many connections ([http] max_connections)",
            Refusal::PerAddress => {
                "too many connections from one address ([http] max_connections_per_address)"
            }
            Refusal::Rate => "connecting too fast ([http] connection_rate_per_address)",
        }
    }
}

/// Addresses remembered before idle ones (no connection, a full bucket) are pruned.
const PRUNE_ABOVE: usize = 4096;

#[derive(Debug)]
struct Entry {
    connections: usize,
    sessions: usize,
    /// Token bucket of new connections: `tokens` at `refilled`.
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, Entry>,
}

/// Per-address and total accounting of connections and WebSocket sessions. Pure
/// apart from its lock: time is an argument.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// Holds one admitted connection; counted until dropped.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    admission: Arc<Admission>,
    ip: IpAddr,
}

/// Holds one WebSocket session of an address; counted until dropped.
#[derive(Debug)]
pub(crate) struct SessionGuard {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A poisoned lock only means a panic elsewhere mid-update; the counts stay usable.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `ip` at `now`, or says why not.
    pub fn connection(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<ConnectionGuard, Refusal> {
        let l = self.limits;
        let mut counts = self.counts();
        if counts.total >= l.max_connections {
            return Err(Refusal::Total);
        }
        if counts.by_address.len() >= PRUNE_ABOVE {
            counts
                .by_address
                .retain(|_, e| e.connections > 0 || e.sessions > 0 || !e.bucket_full(&l, now));
        }
        let burst = f64::from(l.connection_rate_per_address) * 2.0;
        let entry = counts.by_address.entry(ip).or_insert(Entry {
            connections: 0,
            sessions: 0,
            tokens: burst,
            refilled: now,
        });
        if entry.connections >= l.max_connections_per_address {
            return Err(Refusal::PerAddress);
        }
        entry.refill(&l, now);
        if entry.tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        entry.tokens -= 1.0;
        entry.connections += 1;
        counts.total += 1;
        Ok(ConnectionGuard {
            admission: self.clone(),
            ip,
        })
    }

    /// Admits a WebSocket session from `ip`, or `None` when the address has
    /// `max_sessions_per_address` already.
    pub fn session(self: &Arc<Self>, ip: IpAddr) -> Option<SessionGuard> {
        let mut counts = self.counts();
        let entry = counts.by_address.entry(ip).or_insert(Entry {
            connections: 0,
            sessions: 0,
            tokens: f64::from(self.limits.connection_rate_per_address) * 2.0,
            refilled: Instant::now(),
        });
        if entry.sessions >= self.limits.max_sessions_per_address {
            return None;
        }
        entry.sessions += 1;
        Some(SessionGuard {
            admission: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn connections(&self) -> usize {
        self.counts().total
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn release(&self, ip: IpAddr, session: bool) {
        let mut counts = self.counts();
        if !session {
            counts.total = counts.total.saturating_sub(1);
        }
        if let Some(e) = counts.by_address.get_mut(&ip) {
            if session {
                e.sessions = e.sessions.saturating_sub(1);
            } else {
                e.connections = e.connections.saturating_sub(1);
            }
        }
    }
}

impl Entry {
    fn refill(&mut self, l: &Limits, now: Instant) {
        let rate = f64::from(l.connection_rate_per_address);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate * 2.0);
        self.refilled = now;
    }

    fn bucket_full(&self, l: &Limits, now: Instant) -> bool {
        let rate = f64::from(l.connection_rate_per_address);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * rate >= rate * 2.0
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.admission.release(self.ip, false);
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.admission.release(self.ip, true);
    }
}

/// Logs a repeated condition at most once per interval, with how often it happened.
struct Throttled {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn new(every: Duration) -> Self {
        Throttled {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(times it happened since the last log line)` when a line is due.
    fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed) + 1)
            }
        }
    }
}

/// Delay after an accept error that is not about one connection (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM): doubles from `FIRST_BACKOFF` up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Errors that concern one connection (it went away before we took it), not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Accepts connections on `listener` (over TLS when `tls` is given) and serves `app`
/// on each, until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    admission: Arc<Admission>,
    mut shutdown: watch::Receiver<bool>,
) {
    let scheme = if tls.is_some() { "HTTPS" } else { "HTTP" };
    let mut connections = JoinSet::new();
    let mut backoff = FIRST_BACKOFF;
    let mut accept_errors = Throttled::new(LOG_EVERY);
    let mut refusals = Throttled::new(LOG_EVERY);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
            // Reap finished connection tasks so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = FIRST_BACKOFF;
                a
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                if let Some(n) = accept_errors.due(Instant::now()) {
                    warn!("{scheme} accept failed ({n} times in the last {LOG_EVERY:?}): {e}; backing off");
                }
                // Not spinning at the fd limit: give connections time to close.
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        let guard = match admission.connection(ip, Instant::now()) {
            Ok(g) => g,
            Err(why) => {
                if let Some(n) = refusals.due(Instant::now()) {
                    warn!(
                        "{scheme} connection from {ip} refused: {} ({n} refused in the last {LOG_EVERY:?})",
                        why.text()
                    );
                }
                drop(tcp);
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            debug!("cannot set TCP_NODELAY: {e}");
        }
        let app = app.clone();
        let tls = tls.clone();
        let limits = *admission.limits();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let peer = SocketAddr::new(ip, peer.port());
            serve_connection(tcp, peer, tls, app, limits, shutdown).await;
            drop(guard);
        });
    }
    // WebSocket sessions are closed by the room core; HTTP keep-alives just end.
    connections.abort_all();
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(AtomicU64::new(0));
    let born = Instant::now();
    match tls {
        None => {
            let io = Watched::new(tcp, activity.clone(), born);
            http1(io, peer, app, limits, activity, born, shutdown).await;
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp));
            let stream = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!("TLS handshake with {peer}: {e}");
                    return;
                }
                Err(_) => {
                    debug!("TLS handshake with {peer}: timed out");
                    return;
                }
            };
            let io = Watched::new(stream, activity.clone(), born);
            http1(io, peer, app, limits, activity, born, shutdown).await;
        }
    }
}

/// HTTP/1.1 with upgrades on one connection, closed when idle for `idle_timeout` or
/// when a request header takes longer than `header_timeout`. After a WebSocket
/// upgrade the session task owns the socket and its own timeouts apply.
async fn http1<I>(
    io: Watched<I>,
    peer: SocketAddr,
    app: axum::Router,
    limits: Limits,
    activity: Arc<AtomicU64>,
    born: Instant,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    let conn = builder
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let idle = idle_for(limits.idle_timeout, activity, born);
    tokio::pin!(idle);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            debug!("HTTP connection with {peer}: {e}");
        },
        _ = &mut idle => debug!("HTTP connection with {peer}: idle for {:?}, closed", limits.idle_timeout),
        _ = shutdown.wait_for(|s| *s) => {}
    }
}

/// Resolves once no byte moved for `limit` (checked a few times per `limit`).
async fn idle_for(limit: Duration, activity: Arc<AtomicU64>, born: Instant) {
    let step = (limit / 4).max(Duration::from_millis(25));
    loop {
        tokio::time::sleep(step).await;
        let last = Duration::from_millis(activity.load(Ordering::Relaxed));
        if born.elapsed().saturating_sub(last) >= limit {
            return;
        }
    }
}

/// An I/O stream that records when bytes last moved (milliseconds since `born`).
struct Watched<I> {
    inner: I,
    activity: Arc<AtomicU64>,
    born: Instant,
}

impl<I> Watched<I> {
    fn new(inner: I, activity: Arc<AtomicU64>, born: Instant) -> Self {
        Watched {
            inner,
            activity,
            born,
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 5,
            max_connections_per_address: 3,
            connection_rate_per_address: 2,
            max_sessions_per_address: 2,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn connections_are_capped_per_address_and_in_total() {
        let a = Admission::new(limits());
        let t0 = Instant::now();
        let (x, y, z): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "192.0.2.3".parse().unwrap(),
        );
        let x1 = a.connection(x, t0).unwrap();
        let _x2 = a.connection(x, t0).unwrap();
        let _x3 = a.connection(x, t0).unwrap();
        assert_eq!(a.connection(x, t0).unwrap_err(), Refusal::PerAddress);
        // Another address still gets in, up to the total.
        let _y1 = a.connection(y, t0).unwrap();
        let _y2 = a.connection(y, t0).unwrap();
        assert_eq!(a.connection(z, t0).unwrap_err(), Refusal::Total);
        assert_eq!(a.connections(), 5);
        drop(x1);
        assert_eq!(a.connections(), 4);
        // x's burst (2 × 2/s = 4 tokens) is down to 1: one more now, then the rate.
        let _x4 = a.connection(x, t0).unwrap();
    }

    #[test]
    fn connection_rate_refills_with_time() {
        let a = Admission::new(Limits {
            max_connections_per_address: 100,
            max_connections: 100,
            ..limits()
        });
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let t0 = Instant::now();
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(a.connection(ip, t0).unwrap());
        }
        held.clear(); // closing does not give tokens back
        assert_eq!(a.connection(ip, t0).unwrap_err(), Refusal::Rate);
        // 2 per second: one token after half a second.
        let t1 = t0 + Duration::from_millis(500);
        held.push(a.connection(ip, t1).unwrap());
        assert_eq!(a.connection(ip, t1).unwrap_err(), Refusal::Rate);
    }

    #[test]
    fn sessions_are_capped_per_address() {
        let a = Admission::new(limits());
        let ip: IpAddr = "::1".parse().unwrap();
        let s1 = a.session(ip).unwrap();
        let _s2 = a.session(ip).unwrap();
        assert!(a.session(ip).is_none());
        assert!(a.session("::2".parse().unwrap()).is_some());
        drop(s1);
        assert!(a.session(ip).is_some());
    }

    #[test]
    fn repeated_errors_are_logged_once_per_interval() {
        let mut t = Throttled::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.due(t0), Some(1));
        for i in 1..1000 {
            assert_eq!(t.due(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.due(t0 + Duration::from_secs(10)), Some(1000));
    }
}
