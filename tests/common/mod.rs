//! Helpers shared by the WebSocket/HTTP integration tests: a server on 127.0.0.1
//! with a tweakable configuration, and a small Room API client.
//!
//! Every wait is bounded: `recv` panics after `RECV_TIMEOUT` with the client's name.
//! The `expect_*` helpers are strict: they look at the *next* frame (server `ping`s
//! excepted, which `recv` answers with `pong` and skips), so an unexpected extra
//! event makes the test fail right there.

#![allow(dead_code)]

pub mod rtmp;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use huddle::config::Config;
use huddle::server::Server;

/// How long `recv` waits for the next frame.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// The configuration every test starts from: loopback only, no devices.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.http.tls = false;
    c.media.advertise_ips = vec!["127.0.0.1".parse().unwrap()];
    c.media.udp_port = 0;
    // Two media workers whatever the machine: players on a thread beside the task
    // (the first player goes there), as on a board with several cores.
    c.media.workers = 2;
    // Never the default 0.0.0.0:1935: tests run side by side.
    c.rtmp.listen = "127.0.0.1:0".parse().unwrap();
    c.rtmp.max_connections_per_address = c.rtmp.max_connections;
    c.device.camera = "none".into();
    c.device.microphone = "none".into();
    // Every client of a test comes from 127.0.0.1: the per-address limits are the
    // device-wide ones here (tests of those limits set them).
    c.signalling.max_sessions_per_address = c.signalling.max_sessions;
    c.http.max_connections_per_address = c.http.max_connections;
    c.http.connection_rate_per_address = 10_000;
    c
}

/// Starts a server with `test_config()` changed by `tweak`.
pub async fn start_server(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut c = test_config();
    tweak(&mut c);
    Server::start(c).await.expect("server starts")
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the socket delivered next.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Binary(Vec<u8>),
    /// A close frame (`None`: close without a frame body).
    Close(Option<(u16, String)>),
    /// The TCP stream ended or errored without a close frame.
    Ended(String),
}

/// How a socket was closed by the server, and what came before the close.
#[derive(Debug)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
    pub frames: Vec<Value>,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    ws: Ws,
    /// Login (or a label) used in panic messages and operation ids.
    pub name: String,
    /// Answer server `ping`s inside `recv` (off for clients playing dead).
    pub auto_pong: bool,
    next_op: u64,
}

impl Client {
    /// Opens a WebSocket on `path` ("/" for the SDK's default) without sending anything.
    pub async fn open_path(addr: SocketAddr, path: &str, name: &str) -> Client {
        let url = format!("ws://{addr}{path}");
        let (ws, _) = timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .unwrap_or_else(|_| panic!("{name}: WebSocket handshake with {url} timed out"))
            .unwrap_or_else(|e| panic!("{name}: WebSocket handshake with {url} failed: {e}"));
        Client {
            ws,
            name: name.to_owned(),
            auto_pong: true,
            next_op: 0,
        }
    }

    pub async fn open(addr: SocketAddr, name: &str) -> Client {
        Client::open_path(addr, "/", name).await
    }

    /// Opens a socket, sends `connection` with `login` and checks the one `getUserData`.
    pub async fn connect(addr: SocketAddr, login: &str) -> Client {
        let mut c = Client::open(addr, login).await;
        c.send_json(connection_frame(Some(login))).await;
        let data = c.expect_message("getUserData").await;
        assert_eq!(data["status"], "ESTABLISHED", "{login}: getUserData {data}");
        assert_eq!(
            data["custom"]["login"], login,
            "{login}: getUserData {data}"
        );
        assert!(
            data.get("webRTCMetricsServerDescription").is_none(),
            "{login}: getUserData must not start the SDK's metrics collector: {data}"
        );
        // Nothing else (a second getUserData in particular) may be queued.
        c.sync().await;
        c
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_raw(Message::text(text.to_owned())).await;
    }

    pub async fn send_raw(&mut self, m: Message) {
        timeout(RECV_TIMEOUT, self.ws.send(m))
            .await
            .unwrap_or_else(|_| panic!("{}: send timed out", self.name))
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.name));
    }

    /// Sends without panicking; `false` when the socket is gone.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        matches!(
            timeout(RECV_TIMEOUT, self.ws.send(Message::text(text.to_owned()))).await,
            Ok(Ok(()))
        )
    }

    /// The next frame of any kind, `None` if nothing came within `limit`.
    /// Every JSON frame is checked to be `{"message": <string>, "data": [...]}`.
    pub async fn recv_any_within(&mut self, limit: Duration) -> Option<Incoming> {
        let deadline = Instant::now() + limit;
        loop {
            let next = match timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(n) => n,
            };
            let m = match next {
                None => return Some(Incoming::Ended("stream ended".into())),
                Some(Err(e)) => return Some(Incoming::Ended(e.to_string())),
                Some(Ok(m)) => m,
            };
            return Some(match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_else(|e| {
                        panic!(
                            "{}: server sent invalid JSON ({e}): {}",
                            self.name,
                            t.as_str()
                        )
                    });
                    assert!(
                        v["message"].is_string() && v["data"].is_array(),
                        "{}: every server frame needs a string 'message' and a 'data' array: {v}",
                        self.name
                    );
                    Incoming::Json(v)
                }
                Message::Binary(b) => Incoming::Binary(b.to_vec()),
                Message::Close(f) => {
                    Incoming::Close(f.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())))
                }
                // Protocol-level ping/pong: tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            });
        }
    }

    /// The next JSON frame that is not a server `ping` (pings are answered with
    /// `pong` when `auto_pong`). `None` if nothing came within `limit`; panics on close.
    /// The next `ACTIVE_SPEAKER` room event within `limit` (other frames skipped): its
    /// room, the speaker's login and stream.
    pub async fn next_speaker(&mut self, limit: Duration) -> Option<(String, String, String)> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.recv_within(left).await?;
            let p = &v["data"][0]["payload"];
            if v["message"] == "OnDataEvent" && p["name"] == "ACTIVE_SPEAKER" {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                return Some((
                    text(&p["roomName"]),
                    text(&p["info"]["login"]),
                    text(&p["info"]["name"]),
                ));
            }
        }
    }

    pub async fn recv_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_any_within(left).await? {
                Incoming::Json(v) if v["message"] == "ping" => {
                    if self.auto_pong {
                        self.send_json(json!({"message": "pong", "data": [null]}))
                            .await;
                    }
                }
                Incoming::Json(v) => return Some(v),
                other => panic!("{}: expected a JSON frame, got {other:?}", self.name),
            }
        }
    }

    /// The next JSON frame (server pings skipped), within `RECV_TIMEOUT`.
    pub async fn recv(&mut self) -> Value {
        match self.recv_within(RECV_TIMEOUT).await {
            Some(v) => v,
            None => panic!(
                "{}: no message from the server within {RECV_TIMEOUT:?}",
                self.name
            ),
        }
    }

    /// Asserts that the next frame is `message` and returns its `data[0]`.
    pub async fn expect_message(&mut self, message: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["message"], message, "{}: unexpected frame {v}", self.name);
        v["data"][0].clone()
    }

    /// Client-side `ping`, answered by a server `pong`: a barrier proving that
    /// nothing was queued for this session before the server handled the ping.
    pub async fn sync(&mut self) {
        self.send_json(json!({"message": "ping", "data": [null]}))
            .await;
        let v = self.recv().await;
        assert_eq!(
            v["message"], "pong",
            "{}: expected nothing but the pong, got {v}",
            self.name
        );
    }

    /// Sends `sendData` with a fresh operation id and returns the id.
    pub async fn send_data(&mut self, command: &str, options: Value) -> String {
        self.next_op += 1;
        let op = format!("{}-op-{}", self.name, self.next_op);
        self.send_json(send_data_frame(&op, command, options)).await;
        op
    }

    /// Asserts that the next frame is the `DataStatusEvent` of `op`; returns `data[0]`.
    pub async fn expect_data_status(&mut self, op: &str) -> Value {
        let d = self.expect_message("DataStatusEvent").await;
        assert_eq!(d["operationId"], op, "{}: DataStatusEvent {d}", self.name);
        d
    }

    pub async fn expect_accepted(&mut self, op: &str) {
        let d = self.expect_data_status(op).await;
        assert_eq!(d["status"], "ACCEPTED", "{}: {d}", self.name);
    }

    /// Asserts FAILED with a non-empty `info`, which it returns.
    pub async fn expect_failed(&mut self, op: &str) -> String {
        let d = self.expect_data_status(op).await;
        assert_eq!(d["status"], "FAILED", "{}: {d}", self.name);
        let info = d["info"].as_str().unwrap_or_default().to_owned();
        assert!(!info.is_empty(), "{}: FAILED without info: {d}", self.name);
        info
    }

    /// Asserts that the next frame is the room event `name`; returns its payload.
    pub async fn expect_room_event(&mut self, name: &str) -> Value {
        let d = self.expect_message("OnDataEvent").await;
        let p = d["payload"].clone();
        assert_eq!(p["name"], name, "{}: unexpected room event {d}", self.name);
        assert!(p["roomName"].is_string(), "{}: no roomName: {d}", self.name);
        p
    }

    /// Like `expect_room_event`, also checking the room.
    pub async fn expect_event_in(&mut self, room: &str, name: &str) -> Value {
        let p = self.expect_room_event(name).await;
        assert_eq!(p["roomName"], room, "{}: {p}", self.name);
        p
    }

    /// Asserts that the next frame is a `fail`; returns `data[0]`.
    pub async fn expect_fail(&mut self) -> Value {
        let d = self.expect_message("fail").await;
        assert_eq!(
            d["status"], "FAILED",
            "{}: fail without status: {d}",
            self.name
        );
        assert!(
            d["info"].as_str().is_some_and(|i| !i.is_empty()),
            "{}: fail without info: {d}",
            self.name
        );
        d
    }

    /// Asserts that the next frame is a `notifyStreamStatusEvent` of `msid`.
    pub async fn expect_stream_status(&mut self, msid: &str) -> Value {
        let d = self.expect_message("notifyStreamStatusEvent").await;
        assert_eq!(d["mediaSessionId"], msid, "{}: {d}", self.name);
        d
    }

    /// Joins `room`: exactly one ACCEPTED and one STATE (in either order, nothing
    /// in between). Returns STATE's `info`.
    pub async fn join(&mut self, room: &str) -> Vec<Value> {
        let op = self
            .send_data("join", json!({"name": room, "record": false}))
            .await;
        let (mut accepted, mut state) = (false, None);
        while !accepted || state.is_none() {
            let v = self.recv().await;
            match v["message"].as_str() {
                Some("DataStatusEvent") if !accepted => {
                    let d = &v["data"][0];
                    assert_eq!(d["operationId"], op.as_str(), "{}: {v}", self.name);
                    assert_eq!(d["status"], "ACCEPTED", "{}: join '{room}': {v}", self.name);
                    accepted = true;
                }
                Some("OnDataEvent") if state.is_none() => {
                    let p = &v["data"][0]["payload"];
                    assert_eq!(
                        p["name"], "STATE",
                        "{}: STATE must come first: {v}",
                        self.name
                    );
                    assert_eq!(p["roomName"], room, "{}: {v}", self.name);
                    let info = p["info"]
                        .as_array()
                        .unwrap_or_else(|| panic!("{}: STATE info not an array: {v}", self.name));
                    state = Some(info.clone());
                }
                _ => panic!(
                    "{}: unexpected frame while joining '{room}': {v}",
                    self.name
                ),
            }
        }
        state.unwrap()
    }

    pub async fn leave(&mut self, room: &str) {
        let op = self.send_data("leave", json!({"name": room})).await;
        self.expect_accepted(&op).await;
    }

    /// Sends a chat message; returns the operation id (the reply is not read).
    pub async fn send_chat(&mut self, room: &str, to: &str, text: &str) -> String {
        self.send_data(
            "sendMessage",
            json!({"roomConfig": {"name": room}, "to": to, "text": text}),
        )
        .await
    }

    /// Reads until the server's close frame; returns its code, reason and the JSON
    /// frames before it. Pings are not answered. Panics if the socket ends without a
    /// close frame or nothing comes within `RECV_TIMEOUT`.
    pub async fn expect_close(&mut self) -> Closed {
        let mut frames = Vec::new();
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_any_within(left).await {
                None => panic!(
                    "{}: no close frame within {RECV_TIMEOUT:?}; got {frames:?}",
                    self.name
                ),
                Some(Incoming::Json(v)) => frames.push(v),
                Some(Incoming::Binary(b)) => panic!("{}: unexpected binary {b:?}", self.name),
                Some(Incoming::Close(Some((code, reason)))) => {
                    return Closed {
                        code,
                        reason,
                        frames,
                    }
                }
                Some(Incoming::Close(None)) => {
                    panic!("{}: close frame without a code", self.name)
                }
                Some(Incoming::Ended(e)) => panic!(
                    "{}: connection ended without a close frame ({e}); got {frames:?}",
                    self.name
                ),
            }
        }
    }

    /// Starts a clean close from the client side and waits (bounded) for the end.
    pub async fn close(mut self) {
        let _ = timeout(RECV_TIMEOUT, self.ws.close(None)).await;
        let _ = timeout(RECV_TIMEOUT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Keeps this session alive while the test is busy elsewhere for longer than the
    /// server's ping allowance (`ping_interval_ms` × `ping_misses`): a task answers
    /// the server's pings and keeps every other frame, in order, until `Kept::back`.
    /// A browser's socket is read all the time; a test's is read only when asked.
    pub fn keep_alive(mut self) -> Kept {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut frames = Vec::new();
            // Bounded: a test that forgets to take its client back ends it in 2 min.
            let cap = Instant::now() + Duration::from_secs(120);
            while matches!(
                stopped.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            ) && Instant::now() < cap
            {
                if let Some(v) = self.recv_within(Duration::from_millis(100)).await {
                    frames.push(v);
                }
            }
            (self, frames)
        });
        Kept { stop, task }
    }
}

/// A `Client` whose pings a task answers (`Client::keep_alive`).
pub struct Kept {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(Client, Vec<Value>)>,
}

impl Kept {
    /// The client again, and the frames that came meanwhile (pings excepted).
    pub async fn back(self) -> (Client, Vec<Value>) {
        let _ = self.stop.send(());
        self.task.await.expect("the keep-alive task")
    }
}

/// A `connection` frame as the room module sends it.
pub fn connection_frame(login: Option<&str>) -> Value {
    let custom = match login {
        Some(l) => json!({"login": l}),
        None => json!({}),
    };
    json!({"message": "connection", "data": [{
        "appKey": "roomApp",
        "mediaProviders": ["WebRTC", "MSE", "WSPlayer"],
        "clientVersion": "2.0",
        "clientOSVersion": "5.0 (X11; Linux x86_64)",
        "clientBrowserVersion": "Mozilla/5.0 (X11; Linux x86_64) huddle-tests",
        "msePacketizationVersion": 2,
        "custom": custom,
    }]})
}

pub fn send_data_frame(op: &str, command: &str, options: Value) -> Value {
    json!({"message": "sendData", "data": [{
        "operationId": op,
        "payload": {"command": command, "options": options},
    }]})
}

/// `from` sends `text` to `to` in `room`: `to` gets exactly that MESSAGE next and
/// `from` gets ACCEPTED next.
pub async fn chat_ok(from: &mut Client, to: &mut Client, room: &str, text: &str) {
    let to_login = to.name.clone();
    let op = from.send_chat(room, &to_login, text).await;
    let p = to.expect_event_in(room, "MESSAGE").await;
    assert_eq!(p["info"]["from"], from.name.as_str(), "{}: {p}", to.name);
    assert_eq!(p["info"]["text"], text, "{}: {p}", to.name);
    from.expect_accepted(&op).await;
}

/// One HTTP/1.1 request over a raw socket: (status, lower-cased headers, body). The body
/// is written while the answer is read, so an early answer (413) arrives even if the
/// server closes unread input. Chunked answers are not handled (asserted).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, String, String) {
    let exchange = async {
        let s = TcpStream::connect(addr).await.expect("TCP connect");
        let (mut rd, mut wr) = s.into_split();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || matches!(method, "POST" | "PATCH" | "PUT") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(head.as_bytes()).await;
            let _ = wr.write_all(&body).await;
            wr
        });
        let mut raw = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(_) if !raw.is_empty() => break,
                Err(e) => panic!("{method} {path}: read: {e}"),
            }
        }
        drop(writer.await);
        raw
    };
    let raw = timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 10 s"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no header end in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line {head:?}"));
    let headers = head.to_ascii_lowercase();
    assert!(
        !headers.contains("transfer-encoding: chunked"),
        "{method} {path}: chunked answers are not handled by this helper: {head}"
    );
    (status, headers, body.to_owned())
}

/// A GET with `http_request`: (status, lower-cased headers, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http_request(addr, "GET", path, &[], None).await
}

/// The value of an exact sample line of `/metrics` (`name{labels}`); 0 when absent.
pub async fn metric(addr: SocketAddr, sample: &str) -> f64 {
    let (status, _, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics");
    body.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The room of the `Healthy` pair.
pub const HEALTHY_ROOM: &str = "healthy";

/// Two members chatting in a room of their own, checked after every bad case of a
/// test (strictly: they must not even receive a stray event).
pub struct Healthy {
    pub a: Client,
    pub b: Client,
    pub rounds: u32,
}

impl Healthy {
    /// "h-alice" and "h-bob", connected without a token.
    pub async fn start(addr: SocketAddr) -> Healthy {
        let a = Client::connect(addr, "h-alice").await;
        let b = Client::connect(addr, "h-bob").await;
        Healthy::pair(a, b).await
    }

    /// `a` and `b` (connected sessions) join `HEALTHY_ROOM`.
    pub async fn pair(mut a: Client, mut b: Client) -> Healthy {
        a.join(HEALTHY_ROOM).await;
        assert_eq!(b.join(HEALTHY_ROOM).await, vec![json!(a.name)]);
        a.expect_event_in(HEALTHY_ROOM, "JOINED").await;
        Healthy { a, b, rounds: 0 }
    }

    /// Both members still chat both ways and received nothing else meanwhile.
    pub async fn check(&mut self, case: &str) {
        self.rounds += 1;
        let text = format!("still fine after {case} (#{})", self.rounds);
        chat_ok(&mut self.a, &mut self.b, HEALTHY_ROOM, &text).await;
        chat_ok(&mut self.b, &mut self.a, HEALTHY_ROOM, &text).await;
        self.a.sync().await;
        self.b.sync().await;
    }
}

/// An HS256 token of `sub` for `rooms` (`publish` rights), valid for an hour.
pub fn token(secret: &str, sub: &str, rooms: huddle::auth::Rooms, publish: bool) -> String {
    huddle::auth::mint(
        &huddle::auth::Claims {
            sub: sub.into(),
            rooms,
            publish,
            exp: huddle::auth::now_unix() + 3600,
            admin: false,
            moderator: false,
        },
        secret,
        None,
    )
    .expect("mint")
}
