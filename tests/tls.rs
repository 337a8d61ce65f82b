//! HTTPS/WSS on `[http] tls_listen`: the Room API over wss:// with a client that trusts
//! the generated device certificate, the certificate kept across restarts with the
//! expected names, SIGHUP switching the served certificate without dropping sessions,
//! `plain = false`, and broken certificate files refused by name.
//!
//! The TLS client is tokio-rustls (ring) wrapping the TCP stream, with
//! `tokio_tungstenite::client_async` on top: no TLS feature of tokio-tungstenite is
//! needed. Every wait is bounded.

mod common;
#[path = "support/process.rs"]
mod process;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use common::{connection_frame, send_data_frame, test_config, RECV_TIMEOUT};
use huddle::config::Config;
use huddle::server::Server;
use process::Running;

// ---------------------------------------------------------------------------------------
// Files and certificates

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("huddle-tls-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The first certificate of a PEM file, DER.
fn cert_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let cert = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap_or_else(|| panic!("{}: no certificate", path.display()))
        .unwrap_or_else(|e| panic!("{}: bad PEM: {e}", path.display()));
    cert.to_vec()
}

/// SHA-256 of a DER certificate as the server logs it (`AB:CD:...`).
fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A self-signed certificate for localhost/127.0.0.1: (cert PEM, key PEM, cert DER).
fn self_signed(common_name: &str) -> (String, String, Vec<u8>) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .expect("gethostname")
        .into_string()
        .expect("UTF-8 hostname")
}

/// Whether the DER holds a subjectAltName dNSName `name` (context tag [2], short length).
fn has_dns_san(der: &[u8], name: &str) -> bool {
    let mut needle = vec![0x82, name.len() as u8];
    needle.extend_from_slice(name.as_bytes());
    name.len() < 128 && der.windows(needle.len()).any(|w| w == needle)
}

/// Whether the DER holds a subjectAltName iPAddress `ip` (context tag [7]).
fn has_ip_san(der: &[u8], ip: std::net::IpAddr) -> bool {
    let octets = match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let mut needle = vec![0x87, octets.len() as u8];
    needle.extend_from_slice(&octets);
    der.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// TLS client

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(builder: impl FnOnce() -> ClientConfig) -> Arc<ClientConfig> {
    let mut config = builder();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every connection makes a full handshake: a resumed TLS session shows no
    // certificate, so it would prove nothing about the one being served.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Full WebPKI verification with `der` as the only trust anchor (names checked).
fn trusting(der: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(der.to_vec()))
        .expect("the device certificate is usable as a trust anchor");
    client_config(|| {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    })
}

/// Accepts exactly the end-entity certificate `der` (handshake signatures still checked).
#[derive(Debug)]
struct Pinned {
    /// The certificates accepted (any of them).
    ders: Vec<Vec<u8>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .ders
            .iter()
            .any(|d| end_entity.as_ref() == d.as_slice())
        {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn pinned(der: &[u8]) -> Arc<ClientConfig> {
    pinned_any(&[der])
}

/// A client that accepts any of `ders` (and nothing else).
fn pinned_any(ders: &[&[u8]]) -> Arc<ClientConfig> {
    let verifier = Arc::new(Pinned {
        ders: ders.iter().map(|d| d.to_vec()).collect(),
        algorithms: provider().signature_verification_algorithms,
    });
    client_config(|| {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth()
    })
}

fn ip_name(addr: SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}

/// A TLS connection to `addr`; `Err` with the reason if the handshake fails.
async fn tls_connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<TlsStream<TcpStream>, String> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("TCP connect {addr}: {e}"))?;
        TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))
    };
    timeout(RECV_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("TLS handshake with {addr} timed out")))
}

/// The end-entity certificate (DER) that `addr` serves; the connection checks nothing.
async fn served_certificate(addr: SocketAddr, expect: &[u8]) -> Vec<u8> {
    let tls = tls_connect(addr, &pinned(expect), ip_name(addr))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
    conn.peer_certificates().expect("server certificates")[0].to_vec()
}

/// GET over HTTPS: (status, body).
async fn https_get(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> (u16, String) {
    let mut tls = tls_connect(addr, config, ip_name(addr))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let exchange = async {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.expect("write request");
        let mut raw = Vec::new();
        // A missing close_notify is not this test's business: keep what arrived.
        let _ = tls.read_to_end(&mut raw).await;
        raw
    };
    let raw = timeout(RECV_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET https://{addr}{path}: no response"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET https://{addr}{path}: no header end in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, body.to_owned())
}

/// A Room API client over wss://.
struct Wss {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    name: String,
    next_op: u64,
}

impl Wss {
    async fn open(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> Wss {
        Wss::open_as(addr, config, ip_name(addr), name).await
    }

    async fn open_as(
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        server_name: ServerName<'static>,
        name: &str,
    ) -> Wss {
        let tls = tls_connect(addr, config, server_name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let url = format!("wss://{addr}/");
        let (ws, _) = timeout(
            RECV_TIMEOUT,
            tokio_tungstenite::client_async(url.as_str(), tls),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: WebSocket handshake with {url} timed out"))
        .unwrap_or_else(|e| panic!("{name}: WebSocket handshake with {url} failed: {e}"));
        Wss {
            ws,
            name: name.to_owned(),
            next_op: 0,
        }
    }

    /// Opens a socket, sends `connection` and checks `getUserData`.
    async fn connect(addr: SocketAddr, config: &Arc<ClientConfig>, login: &str) -> Wss {
        let mut c = Wss::open(addr, config, login).await;
        c.send(connection_frame(Some(login))).await;
        let data = c.expect_message("getUserData").await;
        assert_eq!(data["status"], "ESTABLISHED", "{login}: {data}");
        assert_eq!(data["custom"]["login"], login, "{login}: {data}");
        c
    }

    async fn send(&mut self, v: Value) {
        timeout(RECV_TIMEOUT, self.ws.send(Message::text(v.to_string())))
            .await
            .unwrap_or_else(|_| panic!("{}: send timed out", self.name))
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.name));
    }

    /// The next JSON frame; server `ping`s are answered and skipped.
    async fn recv(&mut self) -> Value {
        loop {
            let next = timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: nothing within {RECV_TIMEOUT:?}", self.name));
            let text = match next {
                Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                other => panic!("{}: expected a text frame, got {other:?}", self.name),
            };
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: bad JSON ({e}): {text}", self.name));
            if v["message"] == "ping" {
                self.send(json!({"message": "pong", "data": [null]})).await;
                continue;
            }
            return v;
        }
    }

    async fn expect_message(&mut self, message: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["message"], message, "{}: unexpected frame {v}", self.name);
        v["data"][0].clone()
    }

    async fn send_data(&mut self, command: &str, options: Value) -> String {
        self.next_op += 1;
        let op = format!("{}-op-{}", self.name, self.next_op);
        self.send(send_data_frame(&op, command, options)).await;
        op
    }

    async fn expect_accepted(&mut self, op: &str) {
        let d = self.expect_message("DataStatusEvent").await;
        assert_eq!(d["operationId"], op, "{}: {d}", self.name);
        assert_eq!(d["status"], "ACCEPTED", "{}: {d}", self.name);
    }

    async fn expect_room_event(&mut self, room: &str, name: &str) -> Value {
        let d = self.expect_message("OnDataEvent").await;
        let p = d["payload"].clone();
        assert_eq!(p["name"], name, "{}: {d}", self.name);
        assert_eq!(p["roomName"], room, "{}: {d}", self.name);
        p
    }

    /// Joins `room`: one ACCEPTED and one STATE in either order; returns STATE's info.
    async fn join(&mut self, room: &str) -> Vec<Value> {
        let op = self
            .send_data("join", json!({"name": room, "record": false}))
            .await;
        let (mut accepted, mut state) = (false, None);
        while !accepted || state.is_none() {
            let v = self.recv().await;
            let d = &v["data"][0];
            match v["message"].as_str() {
                Some("DataStatusEvent") if !accepted => {
                    assert_eq!(d["operationId"], op.as_str(), "{}: {v}", self.name);
                    assert_eq!(d["status"], "ACCEPTED", "{}: {v}", self.name);
                    accepted = true;
                }
                Some("OnDataEvent") if state.is_none() => {
                    assert_eq!(d["payload"]["name"], "STATE", "{}: {v}", self.name);
                    assert_eq!(d["payload"]["roomName"], room, "{}: {v}", self.name);
                    state = Some(d["payload"]["info"].as_array().cloned().unwrap_or_default());
                }
                _ => panic!("{}: unexpected frame while joining: {v}", self.name),
            }
        }
        state.unwrap()
    }

    async fn close(mut self) {
        let _ = timeout(RECV_TIMEOUT, self.ws.close(None)).await;
    }
}

/// `from` sends `text` to `to`: `to` gets the MESSAGE, `from` the ACCEPTED.
async fn chat(from: &mut Wss, to: &mut Wss, room: &str, text: &str) {
    let op = from
        .send_data(
            "sendMessage",
            json!({"roomConfig": {"name": room}, "to": to.name, "text": text}),
        )
        .await;
    let p = to.expect_room_event(room, "MESSAGE").await;
    assert_eq!(p["info"]["from"], from.name.as_str(), "{}: {p}", to.name);
    assert_eq!(p["info"]["text"], text, "{}: {p}", to.name);
    from.expect_accepted(&op).await;
}

/// alice and bob connect over wss://, join `room` and chat both ways.
async fn two_in_a_room(addr: SocketAddr, config: &Arc<ClientConfig>, room: &str) -> (Wss, Wss) {
    let mut alice = Wss::connect(addr, config, "alice").await;
    let mut bob = Wss::connect(addr, config, "bob").await;
    assert!(alice.join(room).await.is_empty(), "alice: room not empty");
    let state = bob.join(room).await;
    assert_eq!(state, vec![json!("alice")], "bob: STATE");
    let joined = alice.expect_room_event(room, "JOINED").await;
    assert_eq!(joined["info"], "bob", "alice: {joined}");
    chat(&mut alice, &mut bob, room, "привет over TLS 🔒").await;
    chat(&mut bob, &mut alice, room, "hello back").await;
    (alice, bob)
}

// ---------------------------------------------------------------------------------------
// In-process server

fn tls_config(dir: &TempDir) -> Config {
    let mut c = test_config();
    c.http.tls = true;
    c.http.tls_listen = "127.0.0.1:0".parse().unwrap();
    c.http.tls_dir = dir.join("tls");
    c
}

async fn start(c: Config) -> Server {
    timeout(Duration::from_secs(10), Server::start(c))
        .await
        .expect("server start timed out")
        .expect("server starts")
}

async fn stop(server: Server) {
    timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown timed out");
}

// ---------------------------------------------------------------------------------------
// The real binary

/// The HTTPS lines a running `huddle` logs.
trait HttpsLog {
    fn https_address(&mut self) -> SocketAddr;
    fn logged_certificate(&mut self, path: &Path) -> String;
}

impl HttpsLog for Running {
    /// The address of the `listening on https://ADDR (WebSocket signalling on wss://ADDR/)`
    /// line; every line before it is in `self.log`.
    fn https_address(&mut self) -> SocketAddr {
        let line = self.wait_line("listening on https://", Duration::from_secs(10));
        let addr = line
            .split("listening on https://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default();
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
        assert!(
            line.contains(&format!("(WebSocket signalling on wss://{addr}/)")),
            "{line}"
        );
        assert_eq!(addr.ip().to_string(), "127.0.0.1", "{line}");
        assert_ne!(addr.port(), 0, "{line}");
        addr
    }

    /// The fingerprint of the `HTTPS certificate <path> (SHA-256 ...)` line, checking the path.
    fn logged_certificate(&mut self, path: &Path) -> String {
        let line = self.wait_line("HTTPS certificate ", Duration::from_secs(10));
        assert!(line.contains(&path.display().to_string()), "{line}");
        line.split("(SHA-256 ")
            .nth(1)
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no fingerprint in {line:?}"))
            .to_owned()
    }
}

fn toml_path(p: &Path) -> String {
    let s = p.to_str().expect("UTF-8 path");
    assert!(!s.contains(['"', '\\']), "{s}");
    format!("\"{s}\"")
}

// ---------------------------------------------------------------------------------------
// Tests

/// (1) A client that trusts only the generated certificate (full WebPKI path and name
/// checks) completes connect/join/chat over wss://127.0.0.1:PORT/; the page is served
/// over HTTPS too, and a client that does not trust the certificate is refused.
#[tokio::test]
async fn room_api_over_wss_with_the_generated_certificate() {
    let dir = TempDir::new("wss");
    let server = start(tls_config(&dir)).await;
    let addr = server.tls_addr().expect("HTTPS is on");
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    let der = cert_der(&dir.join("tls/device-cert.pem"));
    let trust = trusting(&der);

    let (alice, bob) = two_in_a_room(addr, &trust, "tls room").await;

    // The same certificate also verifies for the names "localhost" and the hostname.
    for name in ["localhost".to_owned(), hostname()] {
        let Ok(server_name) = ServerName::try_from(name.clone()) else {
            continue; // not a valid DNS name (e.g. contains '_'): nothing to check by name
        };
        let mut c = Wss::open_as(addr, &trust, server_name, &format!("by-{name}")).await;
        c.send(connection_frame(Some("carol"))).await;
        let data = c.expect_message("getUserData").await;
        assert_eq!(data["status"], "ESTABLISHED", "as {name}: {data}");
        c.close().await;
    }

    // The web app over HTTPS.
    let (status, body) = https_get(addr, &trust, "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("<html") || body.contains("<!DOCTYPE"),
        "{body}"
    );
    let (status, body) = https_get(addr, &trust, "/health").await;
    assert_eq!(status, 200, "{body}");

    // A client with no trust in the device certificate gets no session.
    let stranger = client_config(|| {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth()
    });
    let refused = tls_connect(addr, &stranger, ip_name(addr)).await;
    assert!(refused.is_err(), "an untrusted certificate must be refused");

    // Plain ws:// keeps working next to wss:// (plain = true is the default).
    let mut plain = common::Client::connect(server.local_addr(), "dave").await;
    plain.sync().await;
    plain.close().await;

    alice.close().await;
    bob.close().await;
    stop(server).await;
}

/// (2) The generated certificate carries hostname, hostname.local, localhost, 127.0.0.1
/// and every advertised IP, is logged with its fingerprint, and is the same after a
/// restart with the same `tls_dir` (the real binary, twice).
#[test]
fn generated_certificate_is_stable_and_names_the_device() {
    let dir = TempDir::new("stable");
    let tls_dir = dir.join("tls");
    let cert_path = tls_dir.join("device-cert.pem");
    let key_path = tls_dir.join("device-key.pem");
    let http = format!(
        "listen = \"127.0.0.1:0\"\ntls = true\ntls_listen = \"127.0.0.1:0\"\ntls_dir = {}",
        toml_path(&tls_dir)
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut fingerprints = Vec::new();
    let mut ders = Vec::new();
    for run in 0..2 {
        let mut huddle = Running::start_with_config("stable", &http, &[]);
        let logged = huddle.logged_certificate(&cert_path);
        let addr = huddle.https_address();
        let generated = huddle
            .log
            .iter()
            .any(|l| l.contains("generated a self-signed device certificate"));
        assert_eq!(
            generated,
            run == 0,
            "run {run}: generate only on the first start; stderr: {:#?}",
            huddle.log
        );
        let der = cert_der(&cert_path);
        assert_eq!(logged, fingerprint(&der), "run {run}: logged fingerprint");
        assert_eq!(logged.len(), 32 * 3 - 1, "{logged}");
        let served = rt.block_on(served_certificate(addr, &der));
        assert_eq!(served, der, "run {run}: the file's certificate is served");
        huddle.stop();
        fingerprints.push(logged);
        ders.push(der);
    }
    assert_eq!(
        fingerprints[0], fingerprints[1],
        "same certificate after a restart"
    );
    assert_eq!(ders[0], ders[1]);

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the private key is private: {mode:o}");

    let der = &ders[0];
    let host = hostname();
    for name in [
        host.clone(),
        format!("{host}.local"),
        "localhost".to_owned(),
    ] {
        assert!(
            has_dns_san(der, &name),
            "no DNS name {name:?} in the certificate"
        );
    }
    assert!(has_ip_san(der, [127, 0, 0, 1].into()), "no IP 127.0.0.1");
}

/// (2b) Every advertised IP is a name of the generated certificate (in-process).
#[tokio::test]
async fn generated_certificate_names_every_advertised_ip() {
    let dir = TempDir::new("ips");
    let mut c = tls_config(&dir);
    c.media.advertise_ips = vec![
        "127.0.0.1".parse().unwrap(),
        "192.0.2.44".parse().unwrap(),
        "2001:db8::44".parse().unwrap(),
    ];
    let server = start(c).await;
    let der = cert_der(&dir.join("tls/device-cert.pem"));
    for ip in ["127.0.0.1", "192.0.2.44", "2001:db8::44"] {
        assert!(has_ip_san(&der, ip.parse().unwrap()), "no IP {ip}");
    }
    let addr = server.tls_addr().unwrap();
    assert_eq!(served_certificate(addr, &der).await, der);
    stop(server).await;
}

/// (3) SIGHUP with new files: new TLS connections get the new certificate, sessions
/// opened before keep exchanging chat; broken files on a reload keep the current one.
#[test]
fn sighup_switches_the_certificate_and_keeps_sessions() {
    let dir = TempDir::new("sighup");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (pem_a, key_a, der_a) = self_signed("huddle test A");
    let (pem_b, key_b, der_b) = self_signed("huddle test B");
    assert_ne!(der_a, der_b);
    std::fs::write(&cert_path, &pem_a).unwrap();
    std::fs::write(&key_path, &key_a).unwrap();
    let http = format!(
        "listen = \"127.0.0.1:0\"\ntls = true\ntls_listen = \"127.0.0.1:0\"\n\
         tls_cert = {}\ntls_key = {}\ntls_dir = {}",
        toml_path(&cert_path),
        toml_path(&key_path),
        toml_path(&dir.join("unused"))
    );
    let mut huddle = Running::start_with_config("sighup", &http, &[]);
    assert_eq!(huddle.logged_certificate(&cert_path), fingerprint(&der_a));
    let addr = huddle.https_address();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pin_a, pin_b) = (pinned(&der_a), pinned(&der_b));
    let room = "renewal";

    let (mut alice, mut bob) = rt.block_on(two_in_a_room(addr, &pin_a, room));
    assert!(
        rt.block_on(tls_connect(addr, &pin_b, ip_name(addr)))
            .is_err(),
        "B is not served yet"
    );

    std::fs::write(&key_path, &key_b).unwrap();
    std::fs::write(&cert_path, &pem_b).unwrap();
    huddle.signal(Signal::SIGHUP);
    let line = huddle.wait_line("HTTPS certificate reloaded", Duration::from_secs(10));
    assert!(line.contains(&fingerprint(&der_b)), "{line}");
    assert!(
        !dir.join("unused").exists(),
        "a configured pair must not generate one"
    );

    rt.block_on(async {
        // New connections see B (and a client pinning A is refused)...
        assert_eq!(served_certificate(addr, &der_b).await, der_b);
        let refused = tls_connect(addr, &pin_a, ip_name(addr)).await;
        assert!(refused.is_err(), "A must no longer be served");
        // ...the sessions from before the reload keep working...
        chat(&mut alice, &mut bob, room, "still here after the reload").await;
        chat(&mut bob, &mut alice, room, "me too").await;
        // ...and a new participant over B meets them in the same room.
        let mut carol = Wss::connect(addr, &pin_b, "carol").await;
        let mut state: Vec<String> = carol
            .join(room)
            .await
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect();
        state.sort();
        assert_eq!(state, ["alice", "bob"], "carol: STATE");
        for member in [&mut alice, &mut bob] {
            let p = member.expect_room_event(room, "JOINED").await;
            assert_eq!(p["info"], "carol", "{}: {p}", member.name);
        }
        chat(&mut carol, &mut alice, room, "hi from a new connection").await;
        chat(&mut alice, &mut carol, room, "welcome").await;
        carol.close().await;
        for member in [&mut alice, &mut bob] {
            let p = member.expect_room_event(room, "LEFT").await;
            assert_eq!(p["info"], "carol", "{}: {p}", member.name);
        }
    });

    // A broken file on the next SIGHUP: logged with its name, B stays.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    huddle.signal(Signal::SIGHUP);
    let line = huddle.wait_line("HTTPS certificate not reloaded", Duration::from_secs(10));
    assert!(line.contains(&cert_path.display().to_string()), "{line}");
    rt.block_on(async {
        assert_eq!(served_certificate(addr, &der_b).await, der_b);
        chat(&mut bob, &mut alice, room, "after a failed reload").await;
    });

    rt.block_on(async {
        alice.close().await;
        bob.close().await;
    });
    huddle.stop();
}

/// (3b) Fault injection (issue 17): SIGHUP and a certificate swap under load. Four
/// clients open HTTPS connections back to back (a handshake and a GET each) while the
/// certificate is swapped six times (A → B → A …), and two wss:// members chat
/// throughout: every handshake succeeds with one of the two certificates, every GET
/// is answered, the sessions from before keep chatting, and the last certificate is
/// the one served at the end.
#[test]
fn sighup_swaps_under_load_without_a_failed_handshake() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = TempDir::new("sighup-load");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let a = self_signed("huddle load A");
    let b = self_signed("huddle load B");
    std::fs::write(&cert_path, &a.0).unwrap();
    std::fs::write(&key_path, &a.1).unwrap();
    let http = format!(
        "listen = \"127.0.0.1:0\"\ntls = true\ntls_listen = \"127.0.0.1:0\"\n\
         tls_cert = {}\ntls_key = {}\ntls_dir = {}\n\
         max_connections_per_address = 256\nconnection_rate_per_address = 1000",
        toml_path(&cert_path),
        toml_path(&key_path),
        toml_path(&dir.join("unused"))
    );
    let mut huddle = Running::start_with_config("sighup-load", &http, &[]);
    assert_eq!(huddle.logged_certificate(&cert_path), fingerprint(&a.2));
    let addr = huddle.https_address();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let either = pinned_any(&[&a.2, &b.2]);
    let room = "load";
    let (mut alice, mut bob) = rt.block_on(two_in_a_room(addr, &either, room));

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, either) =
                (stop.clone(), ok.clone(), failed.clone(), either.clone());
            rt.spawn(async move {
                let mut first_failure = None;
                // Bounded: at most 20 000 connections or 60 s per client.
                let started = std::time::Instant::now();
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                    let attempt = async {
                        let mut tls = tls_connect(addr, &either, ip_name(addr)).await?;
                        let req = format!(
                            "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                        );
                        tls.write_all(req.as_bytes())
                            .await
                            .map_err(|e| e.to_string())?;
                        let mut raw = Vec::new();
                        let _ = tls.read_to_end(&mut raw).await;
                        if raw.starts_with(b"HTTP/1.1 200") {
                            Ok(())
                        } else {
                            Err(format!("answer {:?}", String::from_utf8_lossy(&raw)))
                        }
                    };
                    match timeout(RECV_TIMEOUT, attempt).await {
                        Ok(Ok(())) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_failure.get_or_insert(format!("{other:?}"));
                        }
                    }
                }
                first_failure
            })
        })
        .collect();

    let mut last = &a;
    for swap in 0..6 {
        let next = if swap % 2 == 0 { &b } else { &a };
        std::fs::write(&key_path, &next.1).unwrap();
        std::fs::write(&cert_path, &next.0).unwrap();
        let before = ok.load(Ordering::Relaxed);
        huddle.signal(Signal::SIGHUP);
        let line = huddle.wait_line("HTTPS certificate reloaded", Duration::from_secs(10));
        assert!(line.contains(&fingerprint(&next.2)), "{line}");
        last = next;
        rt.block_on(async {
            chat(&mut alice, &mut bob, room, &format!("swap {swap}")).await;
            chat(&mut bob, &mut alice, room, &format!("swap {swap} back")).await;
            // The load goes on across the reload.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while ok.load(Ordering::Relaxed) < before + 20 && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = rt.block_on(async {
        let mut out = Vec::new();
        for l in load {
            if let Some(f) = l.await.expect("load client") {
                out.push(f);
            }
        }
        out
    });
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} HTTPS connections answered across 6 swaps, {failed} failed");
    assert_eq!(
        failed, 0,
        "handshakes or requests failed across the swaps: {failures:?}"
    );
    // 20 more after each swap (fewer under qemu-user's emulation of the service).
    let emulated = std::env::var("HUDDLE_TEST_EXEC_WRAPPER").is_ok_and(|w| !w.trim().is_empty());
    let least = if emulated { 24 } else { 120 };
    assert!(ok >= least, "the load made only {ok} connections");
    rt.block_on(async {
        assert_eq!(served_certificate(addr, &last.2).await, last.2);
        chat(&mut alice, &mut bob, room, "after the swaps").await;
        alice.close().await;
        bob.close().await;
    });
    huddle.stop();
}

/// (4a) `plain = false`: only HTTPS. The plain `listen` port is held by the test, so the
/// server would fail to start if it tried to bind it.
#[test]
fn plain_off_serves_only_https() {
    let dir = TempDir::new("plain-off");
    let held = StdListener::bind("127.0.0.1:0").unwrap();
    let plain_addr = held.local_addr().unwrap();
    let http = format!(
        "listen = \"{plain_addr}\"\nplain = false\ntls = true\ntls_listen = \"127.0.0.1:0\"\n\
         tls_dir = {}",
        toml_path(&dir.join("tls"))
    );
    let mut huddle = Running::start_with_config("plain-off", &http, &[]);
    let addr = huddle.https_address();
    assert!(
        !huddle
            .log
            .iter()
            .any(|l| l.contains("listening on http://")),
        "no plain HTTP listener: {:#?}",
        huddle.log
    );
    let der = cert_der(&dir.join("tls/device-cert.pem"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (alice, bob) = two_in_a_room(addr, &trusting(&der), "https only").await;
        let (status, body) = https_get(addr, &trusting(&der), "/health").await;
        assert_eq!(status, 200, "{body}");
        // Plain HTTP on the TLS port gets no HTTP answer.
        let answer = timeout(RECV_TIMEOUT, async {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let _ = tcp.write_all(req.as_bytes()).await;
            let mut raw = Vec::new();
            let _ = tcp.read_to_end(&mut raw).await;
            String::from_utf8_lossy(&raw).into_owned()
        })
        .await
        .expect("the TLS port ends a plain-HTTP connection");
        assert!(
            !answer.starts_with("HTTP/"),
            "plain HTTP must not be served on the TLS port: {answer:?}"
        );
        alice.close().await;
        bob.close().await;
    });
    huddle.stop();
    drop(held);
}

/// (4b) In-process: `local_addr()` is the HTTPS address when plain HTTP is off.
#[tokio::test]
async fn plain_off_local_addr_is_https() {
    let dir = TempDir::new("plain-off-lib");
    let mut c = tls_config(&dir);
    c.http.plain = false;
    let server = start(c).await;
    assert_eq!(Some(server.local_addr()), server.tls_addr());
    stop(server).await;
}

/// (4c) Broken certificate files: `Server::start` fails naming the file.
#[tokio::test]
async fn broken_certificate_files_are_named() {
    let dir = TempDir::new("broken");
    let (pem_a, key_a, _) = self_signed("A");
    let (_, key_b, _) = self_signed("B");
    let good_cert = dir.join("good-cert.pem");
    let good_key = dir.join("good-key.pem");
    let junk = dir.join("junk.pem");
    let other_key = dir.join("other-key.pem");
    let missing = dir.join("missing.pem");
    std::fs::write(&good_cert, &pem_a).unwrap();
    std::fs::write(&good_key, &key_a).unwrap();
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nnot base64 !!!\n").unwrap();
    std::fs::write(&other_key, &key_b).unwrap();
    let cases = [
        (&junk, &good_key, &junk),
        (&missing, &good_key, &missing),
        (&good_cert, &junk, &junk),
        (&good_cert, &missing, &missing),
        (&good_cert, &other_key, &other_key),
    ];
    for (cert, key, named) in cases {
        let mut c = tls_config(&dir);
        c.http.tls_cert = cert.clone();
        c.http.tls_key = key.clone();
        let result = timeout(Duration::from_secs(10), Server::start(c))
            .await
            .expect("start timed out");
        let e = match result {
            Ok(server) => {
                stop(server).await;
                panic!("started with cert {cert:?} key {key:?}");
            }
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(&named.display().to_string()),
            "cert {cert:?} key {key:?}: the error must name {named:?}: {e}"
        );
    }
    // The pair itself is fine.
    let mut c = tls_config(&dir);
    c.http.tls_cert = good_cert.clone();
    c.http.tls_key = good_key.clone();
    stop(start(c).await).await;
}

/// (4d) The binary with a broken certificate file exits non-zero, naming the file.
#[test]
fn binary_with_broken_certificate_exits_naming_it() {
    let dir = TempDir::new("broken-bin");
    let (_, key_a, _) = self_signed("A");
    let cert = dir.join("broken-cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, "garbage").unwrap();
    std::fs::write(&key, &key_a).unwrap();
    let http = format!(
        "listen = \"127.0.0.1:0\"\ntls = true\ntls_listen = \"127.0.0.1:0\"\n\
         tls_cert = {}\ntls_key = {}",
        toml_path(&cert),
        toml_path(&key)
    );
    let mut huddle = Running::start_with_config("broken-bin", &http, &[]);
    let status = huddle.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "must fail; stderr: {:#?}", huddle.log);
    let cert_name = cert.display().to_string();
    assert!(
        huddle.log.iter().any(|l| l.contains(&cert_name)),
        "stderr must name {cert_name}: {:#?}",
        huddle.log
    );
    assert!(
        !huddle.log.iter().any(|l| l.contains("listening on")),
        "{:#?}",
        huddle.log
    );
}
