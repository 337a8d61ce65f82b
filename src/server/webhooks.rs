//! `[[webhooks]]`: each receiver is one `EventSink` with its own bounded queue and its
//! own delivery task, so a dead or slow receiver never slows the rooms (the room
//! driver only does a `try_send`) nor the other receivers.
//!
//! A delivery is one HTTP/1.1 `POST` (`Connection: close`) of the event's JSON, signed
//! with `X-Huddle-Signature: sha256=<hex HMAC-SHA256 of the body>`. One event at a time
//! per receiver, so the order of the events of a room is kept. A failed attempt (no
//! connection, a timeout, anything but 2xx) is retried after `retry_ms`, doubling up
//! to 60 s, `max_attempts` times in all; then the event is dropped and counted. The
//! receiver sees each event at least once: the `id` tells a retry from a new event.
//!
//! The client is ~100 lines over `TcpStream` (and `tokio-rustls` for `https://`, with
//! the system's CA bundle): a webhook needs the status line of one answer, not a
//! connection pool, and hyper's client would add a crate (`want`) to the Yocto list.
//!
//! Logs never carry the secret nor the URL's credentials or query: a receiver is
//! named `scheme://host:port/path`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Webhook;
use crate::events::{Event, EventCounters, EventKind, EventSink, Events};

/// How long queued events may still go out at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// At most this much of an answer is read (status line, headers, some body).
const MAX_ANSWER: usize = 8 * 1024;
/// After the status is known, the rest of the answer is read this long at most.
const DRAIN: Duration = Duration::from_millis(250);

/// The delivery tasks of the receivers; `stop` at shutdown.
pub struct Webhooks {
    stopping: watch::Sender<Option<Instant>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The `Events` to emit into (its sinks are the receivers of `hooks`) and the
/// delivery tasks. A receiver whose URL cannot be used is left out (with a warning).
pub fn start(hooks: &[Webhook]) -> (Events, Webhooks) {
    let counters = Arc::new(EventCounters::default());
    let (stopping, stop_rx) = watch::channel(None);
    let mut sinks: Vec<Arc<dyn EventSink>> = Vec::new();
    let mut tasks = Vec::new();
    let mut tls: Option<Option<Arc<rustls::ClientConfig>>> = None;
    for (i, hook) in hooks.iter().enumerate() {
        let target = match Target::parse(&hook.url) {
            Ok(t) => t,
            Err(why) => {
                warn!(
                    "webhook entry {}: {why}: its events are not delivered",
                    i + 1
                );
                continue;
            }
        };
        let tls = match target.tls {
            true => match tls.get_or_insert_with(client_config) {
                Some(c) => Some(c.clone()),
                None => {
                    warn!(
                        "webhook {}: no CA certificates found (SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt...): https:// deliveries will fail",
                        target.name
                    );
                    None
                }
            },
            false => None,
        };
        let (tx, rx) = mpsc::channel(hook.queue.max(1));
        let filter: Option<Vec<EventKind>> = match hook.events.is_empty() {
            true => None,
            false => Some(
                hook.events
                    .iter()
                    .filter_map(|e| EventKind::from_name(e))
                    .collect(),
            ),
        };
        let full = Arc::new(AtomicBool::new(false));
        let receiver = Receiver {
            target: Arc::new(target),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, hook.secret.as_bytes()),
            timeout: Duration::from_millis(hook.timeout_ms),
            retry: Duration::from_millis(hook.retry_ms),
            max_attempts: hook.max_attempts.max(1),
            tls,
            counters: counters.clone(),
            full: full.clone(),
        };
        info!(
            "webhook {}: {} (queue {})",
            receiver.target.name,
            match &filter {
                None => "all events".to_string(),
                Some(kinds) => kinds
                    .iter()
                    .map(|k: &EventKind| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            hook.queue
        );
        sinks.push(Arc::new(Sink {
            tx,
            filter,
            counters: counters.clone(),
            full,
            name: receiver.target.name.clone(),
        }));
        tasks.push(tokio::spawn(receiver.run(rx, stop_rx.clone())));
    }
    (Events::new(sinks, counters), Webhooks { stopping, tasks })
}

impl Webhooks {
    /// Gives the queued events `SHUTDOWN_GRACE` to go out, then stops the tasks;
    /// what is left is counted as dropped.
    pub async fn stop(self) {
        if self.tasks.is_empty() {
            return;
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let _ = self.stopping.send(Some(deadline));
        for mut task in self.tasks {
            // The tasks watch the deadline themselves; this is a backstop.
            let limit = deadline + Duration::from_millis(500);
            if tokio::time::timeout_at(limit, &mut task).await.is_err() {
                task.abort();
                warn!("webhooks: a delivery task did not stop in time");
            }
        }
    }
}

/// The side of a receiver the emitters see.
struct Sink {
    tx: mpsc::Sender<Arc<Event>>,
    /// `None`: every event.
    filter: Option<Vec<EventKind>>,
    counters: Arc<EventCounters>,
    /// The queue overflowed (warned once until it takes events again).
    full: Arc<AtomicBool>,
    name: String,
}

impl EventSink for Sink {
    fn deliver(&self, event: &Arc<Event>) {
        if let Some(kinds) = &self.filter {
            if !kinds.contains(&event.kind) {
                return;
            }
        }
        match self.tx.try_send(event.clone()) {
            Ok(()) => {
                if self.full.swap(false, Ordering::Relaxed) {
                    info!("webhook {}: the queue takes events again", self.name);
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped.inc();
                if !self.full.swap(true, Ordering::Relaxed) {
                    warn!(
                        "webhook {}: the queue is full (receiver slow or down): events are dropped",
                        self.name
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.counters.dropped.inc(),
        }
    }
}

/// The delivery side of a receiver (its task).
struct Receiver {
    target: Arc<Target>,
    key: ring::hmac::Key,
    timeout: Duration,
    retry: Duration,
    max_attempts: u32,
    /// `https://` with a usable root store; `None` for `http://` (or no roots).
    tls: Option<Arc<rustls::ClientConfig>>,
    counters: Arc<EventCounters>,
    full: Arc<AtomicBool>,
}

impl Receiver {
    async fn run(
        self,
        mut rx: mpsc::Receiver<Arc<Event>>,
        mut stopping: watch::Receiver<Option<Instant>>,
    ) {
        let mut failing = false;
        let mut in_flight = false;
        let stop_rx = stopping.clone();
        let deadline = async {
            loop {
                let at = *stopping.borrow_and_update();
                if let Some(at) = at {
                    tokio::time::sleep_until(at).await;
                    return;
                }
                if stopping.changed().await.is_err() {
                    // The `Webhooks` handle is gone without `stop`: run on.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = self.deliver_all(&mut rx, &mut failing, &mut in_flight, stop_rx) => {}
            () = deadline => {}
        }
        rx.close();
        let mut left = u64::from(in_flight);
        while rx.try_recv().is_ok() {
            left += 1;
        }
        if left > 0 {
            self.counters.dropped.add(left);
            warn!(
                "webhook {}: {left} events not delivered at shutdown",
                self.target.name
            );
        }
    }

    /// Delivers events one at a time until the shutdown finds the queue empty.
    async fn deliver_all(
        &self,
        rx: &mut mpsc::Receiver<Arc<Event>>,
        failing: &mut bool,
        in_flight: &mut bool,
        mut stopping: watch::Receiver<Option<Instant>>,
    ) {
        loop {
            let stopped = stopping.borrow().is_some();
            let event = if stopped {
                match rx.try_recv() {
                    Ok(e) => e,
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    e = rx.recv() => match e {
                        Some(e) => e,
                        None => return,
                    },
                    changed = stopping.changed() => {
                        if changed.is_err() {
                            // Without a `Webhooks` handle: deliver until the senders go.
                            match rx.recv().await {
                                Some(e) => e,
                                None => return,
                            }
                        } else {
                            continue;
                        }
                    }
                }
            };
            *in_flight = true;
            self.deliver(&event, failing).await;
            *in_flight = false;
        }
    }

    /// All the attempts for one event.
    async fn deliver(&self, event: &Event, failing: &mut bool) {
        let body = match serde_json::to_vec(&event.to_json()) {
            Ok(b) => b,
            Err(e) => {
                warn!("webhook {}: cannot encode an event: {e}", self.target.name);
                self.counters.dropped.inc();
                return;
            }
        };
        let signature = hex(ring::hmac::sign(&self.key, &body).as_ref());
        let request = self.target.request(event, &signature, &body);
        let mut backoff = self.retry.min(MAX_BACKOFF);
        for attempt in 1..=self.max_attempts {
            let outcome = match tokio::time::timeout(self.timeout, self.attempt(&request)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            };
            match outcome {
                Ok(()) => {
                    self.counters.delivered.inc();
                    self.full.store(false, Ordering::Relaxed);
                    if std::mem::replace(failing, false) {
                        info!("webhook {}: delivering again", self.target.name);
                    }
                    debug!(
                        "webhook {}: {} {} delivered (attempt {attempt})",
                        self.target.name,
                        event.kind.name(),
                        event.id
                    );
                    return;
                }
                Err(why) => {
                    self.counters.failed_attempts.inc();
                    if !std::mem::replace(failing, true) {
                        warn!(
                            "webhook {}: delivery failed ({why}); retrying with backoff",
                            self.target.name
                        );
                    } else {
                        debug!(
                            "webhook {}: {} {} attempt {attempt} failed: {why}",
                            self.target.name,
                            event.kind.name(),
                            event.id
                        );
                    }
                }
            }
            if attempt < self.max_attempts {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
            }
        }
        self.counters.dropped.inc();
        debug!(
            "webhook {}: {} {} dropped after {} attempts",
            self.target.name,
            event.kind.name(),
            event.id,
            self.max_attempts
        );
    }

    /// One attempt: connect, send, read the status. `Ok` on 2xx.
    async fn attempt(&self, request: &[u8]) -> Result<(), String> {
        let t = &*self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if !t.tls {
            return exchange(tcp, request).await;
        }
        let config = self
            .tls
            .clone()
            .ok_or_else(|| "no CA certificates for https://".to_string())?;
        let name = rustls::pki_types::ServerName::try_from(t.host.clone())
            .map_err(|e| format!("TLS server name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(stream, request).await
    }
}

/// Sends the request, reads the status line (and headers, bounded), then a bit of
/// the body so that the receiver's write does not meet a reset.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<(), String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    stream.flush().await.map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(at) = find(&answer, b"\r\n\r\n") {
            break at + 4;
        }
        if answer.len() >= MAX_ANSWER {
            return Err("the answer's headers are too long".into());
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(match answer.is_empty() {
                true => "closed without an answer".into(),
                false => "closed within the answer's headers".into(),
            });
        }
        answer.extend_from_slice(&chunk[..n]);
    };
    let status = status_of(&answer[..head_end]).ok_or("not an HTTP answer")?;
    // The body (bounded) until the receiver closes; its content does not matter.
    let _ = tokio::time::timeout(DRAIN, async {
        let mut read = answer.len();
        while read < MAX_ANSWER {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
    let _ = stream.shutdown().await;
    match status {
        200..=299 => Ok(()),
        s => Err(format!("HTTP {s}")),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `HTTP/1.1 204 No Content` → 204.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Where a receiver is, from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    tls: bool,
    /// Without brackets for IPv6 (as `connect` and the TLS name take it).
    host: String,
    port: u16,
    /// The `Host` header (`host[:port]`, brackets kept).
    authority: String,
    /// Path and query as sent in the request line.
    path: String,
    /// `user:password` of the URL, sent as HTTP Basic authorization.
    userinfo: Option<String>,
    /// `scheme://host:port/path`, for logs: no credentials, no query.
    name: String,
}

/// Why a webhook URL is unusable (`None`: it is fine); for the configuration check.
pub fn url_problem(url: &str) -> Option<String> {
    Target::parse(url).err()
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("the url is not http:// or https://".into());
        };
        let scheme = if tls { "https" } else { "http" };
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = path.split('#').next().unwrap_or_default();
        let path = match path.starts_with('/') {
            true => path.to_string(),
            false => format!("/{path}"),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or("the url's IPv6 address has no ']'")?;
            let port = match after {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or("the url's port is not a number")?,
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| "the url's port is not a number")?,
                ),
                None => (hostport.to_string(), default_port),
            }
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err("the url has no usable host".into());
        }
        if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err("the url's path has spaces or control characters".into());
        }
        let bracketed = match host.contains(':') {
            true => format!("[{host}]"),
            false => host.clone(),
        };
        let authority = match port == default_port {
            true => bracketed.clone(),
            false => format!("{bracketed}:{port}"),
        };
        let log_path = path.split('?').next().unwrap_or("/");
        let name = format!("{scheme}://{bracketed}:{port}{log_path}");
        Ok(Target {
            tls,
            host,
            port,
            authority,
            path,
            userinfo,
            name,
        })
    }

    /// The whole request (head and body).
    fn request(&self, event: &Event, signature: &str, body: &[u8]) -> Vec<u8> {
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: huddle/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Huddle-Event: {}\r\nX-Huddle-Delivery: {}\r\nX-Huddle-Signature: sha256={signature}\r\nConnection: close\r\n",
            self.path,
            self.authority,
            env!("CARGO_PKG_VERSION"),
            body.len(),
            event.kind.name(),
            event.id,
        );
        if let Some(user) = &self.userinfo {
            head.push_str("Authorization: Basic ");
            head.push_str(&base64(user.as_bytes()));
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        request
    }
}

/// The TLS client configuration with the system's CA bundle; `None` without one.
fn client_config() -> Option<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
        files.push(f.into());
    }
    for f in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ] {
        files.push(f.into());
    }
    for file in files {
        let Ok(pem) = std::fs::read(&file) else {
            continue;
        };
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
        let (added, _) = roots.add_parsable_certificates(certs);
        if added > 0 {
            debug!("webhooks: {added} CA certificates from {}", file.display());
            break;
        }
    }
    if roots.is_empty() {
        return None;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Some(Arc::new(config))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(c.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(c.get(2).copied().unwrap_or(0));
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_named_without_credentials() {
        let t = Target::parse("https://user:pw@fleet.example.com/hooks/in?token=x#frag").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("fleet.example.com", 443));
        assert_eq!(t.authority, "fleet.example.com");
        assert_eq!(t.path, "/hooks/in?token=x");
        assert_eq!(t.userinfo.as_deref(), Some("user:pw"));
        assert_eq!(t.name, "https://fleet.example.com:443/hooks/in");
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/")
        );
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t = Target::parse("http://[::1]:9000/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert_eq!(t.authority, "[::1]:9000");
        assert!(Target::parse("http://:80/").is_err());
        assert!(Target::parse("http://h:port/").is_err());
        assert!(Target::parse("http://h/a b").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.0 503\r\n\r\n"), Some(503));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 2000 OK\r\n\r\n"), None);
    }

    #[test]
    fn encodings() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(base64(b"user:pw"), "dXNlcjpwdw==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
