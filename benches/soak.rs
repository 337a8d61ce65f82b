//! Soak (`make soak`, `cargo bench --bench soak`): a compressed multi-day life of a busy
//! meeting room on one machine, and whether the service comes back to where it
//! started. Not part of `make test`; a run, not a benchmark with figures to beat.
//!
//! The release `huddle` binary runs as a child process (127.0.0.1 only) with the device
//! participant (test pattern + tone, capture on demand, in the room `lobby`), the RTMP
//! edge and the default timeouts. Against it, for `HUDDLE_SOAK_SECONDS` (default 3600):
//!
//! - **members** (`MEMBER_LOOPS` at a time): webrtc-rs clients that connect, join one of
//!   four rooms, publish a camera (H.264 + Opus, stamped packets) when their room has
//!   fewer than two, play up to two streams of their room (the device's in the lobby),
//!   chat with the others, and after 10–90 s leave (three in four: streams closed, the
//!   room left, the socket closed) or vanish (the signalling socket goes silent: no
//!   pongs, no close, so the server must time it out; the peer connections close 25 s
//!   later);
//! - **RTMP publishers** (ffmpeg `-re -c copy`, 40–150 s, one in four killed with
//!   SIGKILL instead of stopped) and **RTMP players** (ffmpeg to `null`, 15–60 s, of
//!   any live stream);
//! - **recordings**: a room's recording (operator API) or a stream's for 20–60 s, and
//!   the finished records deleted through the API (the disk stays bounded);
//! - **the hostile tester** (item 5 of issue 17), one probe every few seconds: a
//!   partial HTTP request left hanging, a WebSocket that joins a room and never reads
//!   while the room chats, forged STUN and junk datagrams at the media port, junk and a
//!   stalled handshake on the RTMP port, a malformed Room API frame, a log-injection
//!   login, a bad WHIP offer.
//!
//! Every `SAMPLE` (10 s) the server's RSS, open fds and threads (`/proc`), its tokio
//! tasks (`huddle_tasks`) and its sessions, rooms, participants, streams, players and
//! WebRTC peers (`/health`) are written to `target/soak/samples.csv`. At the end the
//! clients stop, the service is left alone until every count is back to its idle
//! value (read before the first client; at most `DRAIN`), and the run passes when they
//! all are and the RSS is within `RSS_TOLERANCE` of its value after the warm-up
//! (`HUDDLE_SOAK_WARMUP_SECONDS`, default a tenth of the run). gnuplot draws
//! `docs/soak.svg`; the figures go between the markers in `docs/reliability.md`
//! (only for runs of at least 20 minutes: shorter ones check the soak itself).
//! Exit status 1 when the run did not pass.

#[path = "../tests/common/webrtc_client.rs"]
mod webrtc_client;

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use support::{
    http, machine, publisher_tracks, recv_json, send_json, source_file, Camera, Publisher, Server,
    Ws, WsStream, AUDIO, FPS, KEY_FRAME_EVERY, PUB_VIDEO_SSRC, STEP, VIDEO,
};
use tokio::task::JoinHandle;
use webrtc_client::{h264, opus, rtp_packet, stap_a_sps_pps, stream_request, Media, RtcClient};

const SAMPLE: Duration = Duration::from_secs(10);
const MEMBER_LOOPS: usize = 8;
const ROOMS: [&str; 4] = ["lobby", "standup", "design", "allhands"];
const DEVICE: &str = "device";
/// After the clients: how long the service has to get back to idle (rooms are kept
/// 60 s after their last member vanished, sessions time out after 15 s).
const DRAIN: Duration = Duration::from_secs(150);
const RSS_TOLERANCE: f64 = 0.05;
/// Runs this long (or longer) update docs/.
const DOC_RUN: Duration = Duration::from_secs(20 * 60);

const SECTIONS: &str = r#"workers = 2
[rtmp]
listen = "127.0.0.1:0"

[device]
camera = "test-pattern"
microphone = "tone"
speaker = "none"
encoder = "auto"
width = 640
height = 360
framerate = 15
bitrate_kbps = 600
login = "device"
rooms = ["lobby"]

[log]
level = "info"
"#;

// ---------------------------------------------------------------------------------
// What the run counts

#[derive(Default)]
struct Tally {
    member_lives: AtomicU64,
    left: AtomicU64,
    vanished: AtomicU64,
    published: AtomicU64,
    played: AtomicU64,
    /// A stream that ended between a member choosing it and its play request.
    play_races: AtomicU64,
    chats_sent: AtomicU64,
    chats_received: AtomicU64,
    video_packets: AtomicU64,
    rtmp_published: AtomicU64,
    rtmp_killed: AtomicU64,
    rtmp_played: AtomicU64,
    recordings: AtomicU64,
    records_deleted: AtomicU64,
    probes: AtomicU64,
    /// Failures by kind (a client's error or panic), with the first message of each.
    failures: Mutex<BTreeMap<String, (u64, String)>>,
}

impl Tally {
    fn fail(&self, kind: &str, message: String) {
        eprintln!("  soak: {kind}: {message}");
        if let Ok(mut f) = self.failures.lock() {
            let e = f.entry(kind.to_owned()).or_insert((0, message));
            e.0 += 1;
        }
    }

    fn failures(&self) -> u64 {
        self.failures
            .lock()
            .map(|f| f.values().map(|(n, _)| n).sum())
            .unwrap_or(0)
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A small deterministic generator (xorshift64*), one per actor, seeded from the run's
/// seed (`HUDDLE_SOAK_SEED`) and the actor.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, actor: u64) -> Rng {
        Rng((seed ^ actor.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// In `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
    fn secs(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo * 1000, hi * 1000))
    }
    /// True with probability `p` percent.
    fn chance(&mut self, p: u64) -> bool {
        self.range(0, 100) < p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.range(0, items.len() as u64) as usize])
    }
}

/// What every actor shares.
struct Ctx {
    http: SocketAddr,
    rtmp: SocketAddr,
    media_port: u16,
    source: PathBuf,
    /// The clients stop starting new lives at this instant.
    end: Instant,
    seed: u64,
    tally: Tally,
    /// Streams published by the soak's clients by name: their room, the instant their
    /// publisher plans to stop, whether an RTMP publisher's (real H.264 and AAC).
    live: Mutex<BTreeMap<String, (String, Instant, bool)>>,
    /// Members of the soak's clients per room (for recordings).
    members: Mutex<BTreeMap<String, u64>>,
    next_id: AtomicU64,
}

impl Ctx {
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn running(&self) -> bool {
        Instant::now() < self.end
    }

    /// Live streams (only RTMP publishers' with `rtmp`) with at least `left` to go.
    fn streams(&self, rtmp: bool, left: Duration) -> Vec<String> {
        let now = Instant::now();
        self.live
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(_, (_, until, is_rtmp))| (*is_rtmp || !rtmp) && *until > now + left)
                    .map(|(s, _)| s.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_live(&self, stream: &str, room: &str, until: Option<Instant>, rtmp: bool) {
        if let Ok(mut l) = self.live.lock() {
            match until {
                Some(u) => l.insert(stream.to_owned(), (room.to_owned(), u, rtmp)),
                None => l.remove(stream),
            };
        }
    }

    fn member(&self, room: &str, delta: i64) {
        if let Ok(mut m) = self.members.lock() {
            let n = m.entry(room.to_owned()).or_insert(0);
            *n = n.saturating_add_signed(delta);
        }
    }

    fn busy_rooms(&self) -> Vec<String> {
        self.members
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(r, _)| r.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Runs actor lives one after the other until the end of the run; a life's error or
/// panic is counted as a failure of `kind` and the next life starts.
fn actor<F, Fut>(
    ctx: Arc<Ctx>,
    kind: &'static str,
    actor_id: u64,
    life: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Arc<Ctx>, Rng) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut rng = Rng::new(ctx.seed, actor_id);
        // Not all at once.
        tokio::time::sleep(rng.secs(0, 5)).await;
        while ctx.running() {
            let seed = rng.next();
            let run = tokio::spawn(life(Arc::clone(&ctx), Rng::new(seed, actor_id)));
            match run.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => ctx.tally.fail(kind, e),
                Err(e) => ctx.tally.fail(&format!("{kind} (panic)"), panic_message(e)),
            }
            tokio::time::sleep(rng.secs(1, 4)).await;
        }
    })
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".into()),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------
// A member: signalling that keeps its own view of the room

struct Member {
    ws: WsStream,
    login: String,
    room: String,
    op: u64,
    /// Live streams of the room by name, with their publisher's login.
    streams: BTreeMap<String, String>,
    /// The other members' logins.
    others: BTreeSet<String>,
    chats: u64,
}

impl Member {
    async fn connect(addr: SocketAddr, login: &str, room: &str) -> Member {
        let (ws, login) = Ws::connect(addr, login).await.into_parts();
        Member {
            ws,
            login,
            room: room.to_owned(),
            op: 0,
            streams: BTreeMap::new(),
            others: BTreeSet::new(),
            chats: 0,
        }
    }

    async fn send(&mut self, v: Value) {
        send_json(&mut self.ws, &self.login, v).await;
    }

    /// The next frame (bounded by `STEP`); pings are answered, the room's events
    /// update the view.
    async fn next(&mut self) -> Value {
        loop {
            let v = recv_json(&mut self.ws, &self.login).await;
            if v["message"] == "ping" {
                self.send(json!({"message": "pong", "data": [null]})).await;
                continue;
            }
            if v["message"] == "OnDataEvent" {
                self.event(&v["data"][0]["payload"]);
            }
            return v;
        }
    }

    fn event(&mut self, p: &Value) {
        if p["roomName"] != self.room.as_str() {
            return;
        }
        let info = &p["info"];
        let login = info["login"].as_str().unwrap_or_default().to_owned();
        let name = info["name"].as_str().unwrap_or_default().to_owned();
        match p["name"].as_str().unwrap_or_default() {
            "STATE" => {
                for e in info.as_array().into_iter().flatten() {
                    if let Some(l) = e.as_str() {
                        self.others.insert(l.to_owned());
                    } else if let (Some(l), Some(s)) = (e["login"].as_str(), e["name"].as_str()) {
                        self.others.insert(l.to_owned());
                        self.streams.insert(s.to_owned(), l.to_owned());
                    }
                }
            }
            "JOINED" => {
                self.others.insert(login);
            }
            "LEFT" => {
                self.streams.retain(|_, l| *l != login);
                self.others.remove(&login);
            }
            "PUBLISHED" => {
                self.streams.insert(name, login);
            }
            "UNPUBLISHED" | "FAILED" => {
                self.streams.remove(&name);
            }
            "MESSAGE" => self.chats += 1,
            _ => {}
        }
    }

    /// Reads until `done`; a `fail` (or what `failed` says is one) is an error.
    async fn until(
        &mut self,
        what: &str,
        done: impl Fn(&Value) -> bool,
        failed: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            let v = self.next().await;
            if done(&v) {
                return Ok(v);
            }
            if v["message"] == "fail" || failed(&v) {
                return Err(format!("{}: {what}: {v}", self.login));
            }
        }
        Err(format!("{}: no {what} within {STEP:?}", self.login))
    }

    /// Reads (answering pings, following the room) for `d`.
    async fn live_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(_v) = tokio::time::timeout_at(deadline, self.next()).await {}
    }

    async fn send_data(&mut self, command: &str, options: Value) -> String {
        self.op += 1;
        let op = format!("{}-{}", self.login, self.op);
        self.send(json!({"message": "sendData", "data": [{
            "operationId": op, "payload": {"command": command, "options": options},
        }]}))
        .await;
        op
    }

    async fn accepted(&mut self, what: &str, op: &str) -> Result<(), String> {
        self.until(
            what,
            |v| {
                v["message"] == "DataStatusEvent"
                    && v["data"][0]["operationId"] == op
                    && v["data"][0]["status"] == "ACCEPTED"
            },
            |v| {
                v["message"] == "DataStatusEvent"
                    && v["data"][0]["operationId"] == op
                    && v["data"][0]["status"] == "FAILED"
            },
        )
        .await
        .map(|_| ())
    }

    async fn join(&mut self) -> Result<(), String> {
        let room = self.room.clone();
        let op = self
            .send_data("join", json!({"name": room, "record": false}))
            .await;
        self.accepted("join", &op).await
    }

    /// A publish or play offer; its answer.
    async fn offer(
        &mut self,
        publish: bool,
        msid: &str,
        stream: &str,
        offer: &str,
    ) -> Result<String, String> {
        let room = self.room.clone();
        self.send(stream_request(
            publish,
            msid,
            stream,
            &room,
            offer,
            (true, true),
        ))
        .await;
        let v = self
            .until(
                "setRemoteSDP",
                |v| v["message"] == "setRemoteSDP" && v["data"][0] == msid,
                |v| failed(v, msid),
            )
            .await?;
        Ok(v["data"][1].as_str().unwrap_or_default().to_owned())
    }

    /// Waits for the stream `msid` to reach `status` (PUBLISHING or PLAYING).
    async fn status(&mut self, msid: &str, status: &str) -> Result<(), String> {
        self.until(
            status,
            |v| {
                v["message"] == "notifyStreamStatusEvent"
                    && v["data"][0]["mediaSessionId"] == msid
                    && v["data"][0]["status"] == status
            },
            |v| failed(v, msid),
        )
        .await
        .map(|_| ())
    }
}

/// A FAILED status of the stream `msid`.
fn failed(v: &Value, msid: &str) -> bool {
    v["message"] == "notifyStreamStatusEvent"
        && v["data"][0]["mediaSessionId"] == msid
        && v["data"][0]["status"] == "FAILED"
}

// ---------------------------------------------------------------------------------
// A camera whose key frames start with SPS and PPS

/// The bench camera (stamped FU-A payloads) with a STAP-A of a real SPS and PPS before
/// each key frame, so that what records and RTMP players get of it is H.264 that
/// parses (its slices are noise: nothing decodes them).
struct RealCamera(Camera);

impl Publisher for RealCamera {
    async fn video_frame(&mut self) {
        let c = &mut self.0;
        if c.frame.is_multiple_of(KEY_FRAME_EVERY) {
            let stap = stap_a_sps_pps();
            let ts = (c.frame * 90_000 / FPS) as u32;
            let p = rtp_packet(c.pts.0, PUB_VIDEO_SSRC, c.video_seq, ts, false, stap);
            support::write(&c.video, p, &c.sent).await;
            c.video_seq = c.video_seq.wrapping_add(1);
        }
        c.video_frame().await;
    }

    async fn audio_packet(&mut self) {
        self.0.audio_packet().await;
    }
}

/// Starts a [`RealCamera`] on a connected publisher; it sends until `stop`.
async fn start_real_camera(pc: &RtcClient, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    let camera = Camera {
        video: Arc::clone(&pc.send_track(VIDEO).track),
        audio: Arc::clone(&pc.send_track(AUDIO).track),
        pts: (pc.negotiated_pt(VIDEO).await, pc.negotiated_pt(AUDIO).await),
        sent: Arc::default(),
        frame: 0,
        video_seq: 0,
        audio_seq: 0,
        audio_ts: 0,
    };
    tokio::spawn(RealCamera(camera).run(stop))
}

// ---------------------------------------------------------------------------------
// The lives

async fn member_life(ctx: Arc<Ctx>, mut rng: Rng) -> Result<(), String> {
    add(&ctx.tally.member_lives, 1);
    let room = if rng.chance(40) {
        ROOMS[0]
    } else {
        *rng.pick(&ROOMS[1..]).unwrap_or(&ROOMS[1])
    };
    let login = format!("m{}", ctx.id());
    let life = rng.secs(10, 90);
    let born = Instant::now();
    let mut m = Member::connect(ctx.http, &login, room).await;
    m.join().await?;
    ctx.member(room, 1);
    let result = member_lives(&ctx, &mut rng, &mut m, life, born).await;
    ctx.member(room, -1);
    let (pcs, checked) = result?;
    if rng.chance(75) {
        // Leaves: streams closed, the room left, the socket closed.
        for pc in &pcs {
            pc.close().await;
        }
        let op = m.send_data("leave", json!({"name": room})).await;
        let _ = m.accepted("leave", &op).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), m.ws.close(None)).await;
        add(&ctx.tally.left, 1);
    } else {
        // Vanishes: the socket goes silent (no pongs, no close), so the server must
        // time it out; the peer connections close later (a network that dies below
        // ICE is not simulated: the session's end takes them down first).
        add(&ctx.tally.vanished, 1);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(25)).await;
            for pc in &pcs {
                pc.close().await;
            }
            drop(m);
        });
    }
    checked
}

async fn member_lives(
    ctx: &Arc<Ctx>,
    rng: &mut Rng,
    m: &mut Member,
    life: Duration,
    born: Instant,
) -> Result<(Vec<RtcClient>, Result<(), String>), String> {
    let room = m.room.clone();
    let (stop_tx, stop) = watch::channel(false);
    let mut pcs: Vec<RtcClient> = Vec::new();
    let mut counters = Vec::new();

    // A camera when the room has fewer than two.
    let own = format!("{room}-{}", m.login);
    let publishers =
        m.streams.len() - usize::from(m.streams.contains_key(&format!("{room}-{DEVICE}")));
    if publishers < 2 && rng.chance(50) {
        let mut pc = RtcClient::publisher(&format!("{}-pub", m.login), &publisher_tracks()).await;
        let offer = pc.create_offer().await;
        let answer = m.offer(true, "m-pub", &own, &offer).await?;
        pc.apply_answer(&answer).await;
        m.status("m-pub", "PUBLISHING").await?;
        pc.wait_connected(STEP).await;
        counters.push(start_real_camera(&pc, stop.clone()).await);
        ctx.set_live(&own, &room, Some(born + life), false);
        add(&ctx.tally.published, 1);
        pcs.push(pc);
    }

    // In the lobby the device's stream comes up when someone is there.
    if room == ROOMS[0] {
        let device = format!("{room}-{DEVICE}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !m.streams.contains_key(&device) && Instant::now() < deadline {
            m.live_for(Duration::from_millis(200)).await;
        }
    }
    // Up to two of the room's streams, other than its own.
    let mut candidates: Vec<String> = m.streams.keys().filter(|s| **s != own).cloned().collect();
    let mut plays = Vec::new();
    for i in 0..2 {
        let Some(stream) = rng.pick(&candidates).cloned() else {
            break;
        };
        candidates.retain(|s| *s != stream);
        let mut pc = RtcClient::player(
            &format!("{}-play{i}", m.login),
            &[(AUDIO, opus(111)), (VIDEO, h264(106))],
        )
        .await;
        let offer = pc.create_offer().await;
        let msid = format!("m-play{i}");
        let answer = m.offer(false, &msid, &stream, &offer).await;
        let playing = match answer {
            Ok(answer) => {
                pc.apply_answer(&answer).await;
                m.status(&msid, "PLAYING").await
            }
            Err(e) => Err(e),
        };
        match playing {
            Ok(()) => {
                pc.wait_connected(STEP).await;
                add(&ctx.tally.played, 1);
                plays.push((pcs.len(), stream));
                pcs.push(pc);
            }
            // The stream ended meanwhile: churn, not a failure.
            Err(_) if !m.streams.contains_key(&stream) => {
                add(&ctx.tally.play_races, 1);
                pc.close().await;
            }
            Err(e) => {
                pc.close().await;
                return Err(e);
            }
        }
    }
    // Each player's media counted in the background.
    let received: Vec<Arc<AtomicU64>> = plays.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut players = Vec::new();
    for (i, (at, _)) in plays.iter().enumerate().rev() {
        let mut pc = pcs.remove(*at);
        let (got, mut stop) = (Arc::clone(&received[i]), stop.clone());
        players.push(tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = stop.changed() => break,
                    m = pc.next_media(Duration::from_secs(1)) => m,
                };
                if let Some(Media::Rtp { kind, .. }) = m {
                    if kind == VIDEO {
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            pc
        }));
    }

    // Chat until the end of this life.
    let played_from = Instant::now();
    while born.elapsed() < life {
        m.live_for(rng.secs(3, 9).min(life.saturating_sub(born.elapsed())))
            .await;
        let others: Vec<String> = m.others.iter().cloned().collect();
        if let Some(to) = rng.pick(&others).cloned() {
            let op = m
                .send_data(
                    "sendMessage",
                    json!({"roomConfig": {"name": room}, "to": to, "text": format!("hi {to}, {}", rng.next())}),
                )
                .await;
            // The reply is read by the next `live_for`; a FAILED one (the member left
            // meanwhile) is churn.
            let _ = op;
            add(&ctx.tally.chats_sent, 1);
        }
    }
    let played_for = played_from.elapsed();
    ctx.set_live(&own, &room, None, false);
    add(&ctx.tally.chats_received, m.chats);

    let _ = stop_tx.send(true);
    for p in players {
        if let Ok(pc) = p.await {
            pcs.push(pc);
        }
    }
    for c in counters {
        let _ = c.await;
    }
    let got: Vec<u64> = received.iter().map(|r| get(r)).collect();
    add(&ctx.tally.video_packets, got.iter().sum());

    // Every player that played for 5 s a stream still published at the end got
    // video (one whose publisher left soon after the play started may have sent none
    // to it: churn).
    let mut checked = Ok(());
    for ((_, stream), n) in plays.iter().zip(&got) {
        if *n > 0 || played_for < Duration::from_secs(5) {
            continue;
        }
        if m.streams.contains_key(stream) {
            checked = Err(format!(
                "{}: the play of {stream} got no video in {played_for:?}",
                m.login
            ));
        } else {
            add(&ctx.tally.play_races, 1);
        }
    }
    Ok((pcs, checked))
}

async fn rtmp_publisher_life(ctx: Arc<Ctx>, mut rng: Rng) -> Result<(), String> {
    let room = *rng.pick(&ROOMS).unwrap_or(&ROOMS[1]);
    let login = format!("obs{}", ctx.id());
    let stream = format!("{room}-{login}");
    let life = rng.secs(40, 150);
    let mut child = ffmpeg(&[
        "-re",
        "-stream_loop",
        "-1",
        "-i",
        &ctx.source.display().to_string(),
        "-c",
        "copy",
        "-f",
        "flv",
        &format!("rtmp://{}/{room}/{login}", ctx.rtmp),
    ])?;
    // Publishing once the room says so (a member's view would need a member): wait a
    // little, then let players pick it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Ok(Some(status)) = child.try_wait() {
        return Err(format!("rtmp publisher {login} exited early: {status}"));
    }
    ctx.set_live(&stream, room, Some(Instant::now() + life), true);
    add(&ctx.tally.rtmp_published, 1);
    tokio::time::sleep(life).await;
    ctx.set_live(&stream, room, None, true);
    if let Ok(Some(status)) = child.try_wait() {
        return Err(format!("rtmp publisher {login} ended by itself: {status}"));
    }
    if rng.chance(25) {
        add(&ctx.tally.rtmp_killed, 1);
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    } else {
        stop_child(child).await
    }
}

async fn rtmp_player_life(ctx: Arc<Ctx>, mut rng: Rng) -> Result<(), String> {
    let life = rng.secs(15, 60);
    // RTMP publishers' streams: the members' cameras send noise for Opus.
    let Some(stream) = rng.pick(&ctx.streams(true, life)).cloned() else {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return Ok(());
    };
    let room = ctx
        .live
        .lock()
        .ok()
        .and_then(|l| l.get(&stream).map(|(r, _, _)| r.clone()))
        .unwrap_or_default();
    let mut child = ffmpeg(&[
        "-rw_timeout",
        "15000000",
        "-i",
        &format!("rtmp://{}/{room}/{stream}", ctx.rtmp),
        "-c",
        "copy",
        "-f",
        "null",
        "-",
    ])?;
    tokio::time::sleep(life).await;
    if let Ok(Some(status)) = child.try_wait() {
        // Its stream may have ended under it (a publisher's life is planned, not its
        // end): only an early end of a stream still live is a failure.
        if ctx.streams(true, Duration::ZERO).contains(&stream) {
            return Err(format!("rtmp player of {stream} exited early: {status}"));
        }
        return Ok(());
    }
    add(&ctx.tally.rtmp_played, 1);
    stop_child(child).await
}

fn ffmpeg(args: &[&str]) -> Result<Child, String> {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("ffmpeg: {e}"))
}

/// SIGTERM, then SIGKILL after 5 s.
async fn stop_child(mut child: Child) -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("ffmpeg did not stop within 5 s of SIGTERM".into())
}

async fn recording_life(ctx: Arc<Ctx>, mut rng: Rng) -> Result<(), String> {
    tokio::time::sleep(rng.secs(20, 60)).await;
    let path = if rng.chance(50) {
        let Some(room) = rng.pick(&ctx.busy_rooms()).cloned() else {
            return Ok(());
        };
        format!("/api/v1/rooms/{room}/recording")
    } else {
        let Some(stream) = rng
            .pick(&ctx.streams(false, Duration::from_secs(60)))
            .cloned()
        else {
            return Ok(());
        };
        format!("/api/v1/streams/{stream}/recording")
    };
    match http(ctx.http, "POST", &path, None).await {
        Some((201, _)) => add(&ctx.tally.recordings, 1),
        // The room or stream ended meanwhile.
        Some((404, _)) => return Ok(()),
        other => return Err(format!("POST {path}: {other:?}")),
    }
    tokio::time::sleep(rng.secs(20, 60)).await;
    match http(ctx.http, "DELETE", &path, None).await {
        Some((204 | 404, _)) => {}
        other => return Err(format!("DELETE {path}: {other:?}")),
    }
    // The finished records go (the disk stays bounded; a record being written or
    // waiting for its room's mix is refused, and taken next time).
    let Some((200, body)) = http(ctx.http, "GET", "/api/v1/records", None).await else {
        return Err("GET /api/v1/records failed".into());
    };
    let list: Value = serde_json::from_str(&body).map_err(|e| format!("records: {e}: {body}"))?;
    let records = list["records"]
        .as_array()
        .or(list.as_array())
        .cloned()
        .unwrap_or_default();
    for r in records {
        let (Some(name), false) = (r["name"].as_str(), r["duration_ms"].is_null()) else {
            continue;
        };
        if let Some((204, _)) =
            http(ctx.http, "DELETE", &format!("/api/v1/records/{name}"), None).await
        {
            add(&ctx.tally.records_deleted, 1);
        }
    }
    Ok(())
}

/// One probe of the hostile tester; the service must shrug it off (what it does to
/// the others shows in the members' failures and in the counts going back to idle).
async fn probe_life(ctx: Arc<Ctx>, mut rng: Rng) -> Result<(), String> {
    tokio::time::sleep(rng.secs(2, 6)).await;
    add(&ctx.tally.probes, 1);
    let id = ctx.id();
    match rng.range(0, 8) {
        0 => {
            // A request header that never ends: closed after header_timeout_ms.
            let mut c = TcpStream::connect(ctx.http)
                .await
                .map_err(|e| e.to_string())?;
            let _ = c
                .write_all(b"GET /api/v1/rooms HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await;
            tokio::time::sleep(Duration::from_secs(12)).await;
        }
        1 => {
            // A member that joins a busy room and never reads while it chats.
            let room = rng
                .pick(&ctx.busy_rooms())
                .cloned()
                .unwrap_or_else(|| ROOMS[1].into());
            let mut m = Member::connect(ctx.http, &format!("deaf{id}"), &room).await;
            m.join().await?;
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        2 => {
            // Forged STUN (a known-looking username, a bad integrity) and junk.
            let s = UdpSocket::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            let to = SocketAddr::from(([127, 0, 0, 1], ctx.media_port));
            for i in 0..200u32 {
                let mut d = vec![0u8, 1, 0, 36, 0x21, 0x12, 0xa4, 0x42];
                d.extend_from_slice(&rng.next().to_be_bytes());
                d.extend_from_slice(&i.to_be_bytes());
                d.extend_from_slice(&[0, 6, 0, 9]);
                d.extend_from_slice(b"abcd:efgh\0\0\0");
                d.extend_from_slice(&[0, 8, 0, 20]);
                d.extend_from_slice(&[0xee; 20]);
                let _ = s.send_to(&d, to).await;
                let junk: Vec<u8> = (0..rng.range(1, 300)).map(|_| rng.next() as u8).collect();
                let _ = s.send_to(&junk, to).await;
            }
        }
        3 => {
            // Junk on the RTMP port, then a handshake that stops halfway.
            let mut c = TcpStream::connect(ctx.rtmp)
                .await
                .map_err(|e| e.to_string())?;
            let junk: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
            let _ = c.write_all(&junk).await;
            let mut c = TcpStream::connect(ctx.rtmp)
                .await
                .map_err(|e| e.to_string())?;
            let _ = c.write_all(&[3u8; 700]).await;
            tokio::time::sleep(Duration::from_secs(8)).await;
        }
        4 => {
            // Malformed and unknown Room API frames, then a huge one.
            let (mut ws, _) = Ws::connect(ctx.http, &format!("junk{id}"))
                .await
                .into_parts();
            for f in [
                "{",
                "[]",
                "{\"message\":\"nope\",\"data\":[]}",
                "{\"message\":\"sendData\",\"data\":[{\"payload\":7}]}",
                "{\"message\":\"publishStream\",\"data\":[{\"sdp\":\"v=0 broken\"}]}",
            ] {
                let _ = ws.send(Message::text(f)).await;
            }
            let _ = ws.send(Message::text("x".repeat(2 << 20))).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
        5 => {
            // A login, a recipient and a chat text made to forge log lines; whatever
            // the server answers the evil login is fine, as long as it keeps serving.
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", ctx.http))
                .await
                .map_err(|e| format!("log injection: {e}"))?;
            let evil = format!("evil{id}\n2026-01-01T00:00:00Z ERROR forged\u{1b}[31m\r");
            let frame = json!({"message": "connection", "data": [{
                "appKey": "roomApp", "mediaProviders": ["WebRTC"], "custom": {"login": evil},
            }]});
            let _ = ws.send(Message::text(frame.to_string())).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
            let mut m = Member::connect(ctx.http, &format!("chatty{id}"), ROOMS[1]).await;
            m.join().await?;
            let op = m
                .send_data(
                    "sendMessage",
                    json!({"roomConfig": {"name": ROOMS[1]}, "to": "nobody\r\nINFO x", "text": "\u{0}\u{7}\n2026 ERROR forged"}),
                )
                .await;
            m.until(
                "chat reply",
                |v| v["data"][0]["operationId"] == op.as_str(),
                |_| false,
            )
            .await?;
            let _ = m.ws.close(None).await;
        }
        6 => {
            // A WHIP offer that is not SDP, and one for a room name that is not one.
            let Some((400..=499, _)) = http(
                ctx.http,
                "POST",
                &format!("/whip/{}/w{id}", ROOMS[2]),
                Some("v=0\r\nnot sdp"),
            )
            .await
            else {
                return Err("WHIP junk offer not refused with 4xx".into());
            };
            let _ = http(ctx.http, "POST", "/whip/..%2F..%2Fetc/x", Some("v=0")).await;
        }
        _ => {
            // The admin API with bad bodies and paths.
            let r = http(ctx.http, "POST", "/api/v1/pushes", Some("{\"stream\": 7, ")).await;
            if !matches!(r, Some((400..=499, _))) {
                return Err(format!("bad push body: {r:?}"));
            }
            let _ = http(
                ctx.http,
                "DELETE",
                "/api/v1/records/..%2F..%2Fhuddle.toml",
                None,
            )
            .await;
            let _ = http(
                ctx.http,
                "GET",
                &format!("/api/v1/rooms/{}", "r".repeat(5000)),
                None,
            )
            .await;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Samples

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    t: f64,
    rss_kib: u64,
    /// The anonymous part of RSS (heap, stacks): where a leak shows; the rest is the
    /// files mapped (code of the libraries, paged in as it is first run).
    anon_kib: u64,
    fds: u64,
    threads: u64,
    tasks: u64,
    sessions: u64,
    rooms: u64,
    participants: u64,
    streams: u64,
    players: u64,
    peers: u64,
}

impl Sample {
    const HEADER: &'static str =
        "t_s,rss_kib,fds,threads,tasks,sessions,rooms,participants,streams,players,peers,anon_kib";

    fn csv(&self) -> String {
        format!(
            "{:.0},{},{},{},{},{},{},{},{},{},{},{}",
            self.t,
            self.rss_kib,
            self.fds,
            self.threads,
            self.tasks,
            self.sessions,
            self.rooms,
            self.participants,
            self.streams,
            self.players,
            self.peers,
            self.anon_kib
        )
    }

    /// The counts that must come back to idle, named; the first three (the process's
    /// resources) may end below it.
    fn counts(&self) -> [(&'static str, u64); 9] {
        [
            ("fds", self.fds),
            ("threads", self.threads),
            ("tasks", self.tasks),
            ("sessions", self.sessions),
            ("rooms", self.rooms),
            ("participants", self.participants),
            ("streams", self.streams),
            ("players", self.players),
            ("peers", self.peers),
        ]
    }
}

/// What in `s` is not back to `idle`: the live counts must equal it, the process's
/// fds, threads and tasks must not exceed it.
fn back_to(s: &Sample, idle: &Sample) -> Vec<String> {
    let mut off = Vec::new();
    for (i, ((name, end), (_, start))) in s.counts().iter().zip(idle.counts()).enumerate() {
        let back = if i < 3 { *end <= start } else { *end == start };
        if !back {
            off.push(format!("{name} {end} at the end, {start} idle"));
        }
    }
    off
}

async fn sample(pid: i32, addr: SocketAddr, t0: Instant) -> Sample {
    let health: Value = http(addr, "GET", "/health", None)
        .await
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null);
    let n = |k: &str| health[k].as_u64().unwrap_or(u64::MAX);
    let tasks = support::metric(addr, "huddle_tasks".into()).await;
    Sample {
        t: t0.elapsed().as_secs_f64(),
        rss_kib: support::rss_kib(pid),
        anon_kib: support::status_kib(pid, "RssAnon"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0),
        threads: support::status_kib(pid, "Threads"),
        tasks: tasks.map_or(u64::MAX, |t| t as u64),
        sessions: n("sessions"),
        rooms: n("rooms"),
        participants: n("participants"),
        streams: n("streams"),
        players: n("players"),
        peers: n("peers"),
    }
}

// ---------------------------------------------------------------------------------
// The run

fn env_secs(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|v| v.trim().parse().ok())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let secs = env_secs("HUDDLE_SOAK_SECONDS").unwrap_or(3600).max(60);
    let run = Duration::from_secs(secs);
    let warmup = Duration::from_secs(env_secs("HUDDLE_SOAK_WARMUP_SECONDS").unwrap_or(secs / 10));
    let seed = env_secs("HUDDLE_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak");
    std::fs::create_dir_all(&out).expect("target/soak");
    let source = source_file();
    let rt = support::runtime();
    let passed = rt.block_on(soak(run, warmup, seed, source, &out));
    std::process::exit(if passed { 0 } else { 1 });
}

/// The machine and the commit, read when the run starts (the checkout may move on
/// during an hour).
static MACHINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

async fn soak(run: Duration, warmup: Duration, seed: u64, source: PathBuf, out: &Path) -> bool {
    let _ = MACHINE.set(machine());
    let server = Server::start_with("soak", SECTIONS);
    let rtmp = wait_rtmp_address(&server);
    let pid = server.proc.pid;
    eprintln!(
        "soak: {} s (warm-up {} s), seed {seed}, server pid {pid}, http {}, rtmp {rtmp}",
        run.as_secs(),
        warmup.as_secs(),
        server.http
    );
    let t0 = Instant::now();
    let mut csv = std::fs::File::create(out.join("samples.csv")).expect("samples.csv");
    let _ = writeln!(csv, "{}", Sample::HEADER);

    // Idle: the device in its room, capture off, nobody else (and the start-up's
    // blocking threads gone).
    tokio::time::sleep(Duration::from_secs(15)).await;
    let idle = sample(pid, server.http, t0).await;
    let _ = writeln!(csv, "{}", idle.csv());
    eprintln!("soak: idle {idle:?}");

    let ctx = Arc::new(Ctx {
        http: server.http,
        rtmp,
        media_port: server.media_port,
        source,
        end: Instant::now() + run,
        seed,
        tally: Tally::default(),
        live: Mutex::new(BTreeMap::new()),
        members: Mutex::new(BTreeMap::new()),
        next_id: AtomicU64::new(1),
    });
    let mut actors = Vec::new();
    for i in 0..MEMBER_LOOPS {
        actors.push(actor(Arc::clone(&ctx), "member", i as u64, member_life));
    }
    actors.push(actor(
        Arc::clone(&ctx),
        "rtmp publisher",
        100,
        rtmp_publisher_life,
    ));
    actors.push(actor(
        Arc::clone(&ctx),
        "rtmp player",
        101,
        rtmp_player_life,
    ));
    actors.push(actor(Arc::clone(&ctx), "recording", 102, recording_life));
    actors.push(actor(Arc::clone(&ctx), "probe", 103, probe_life));

    // Samples until the clients are done, then until idle (or `DRAIN`).
    let mut samples = vec![idle];
    let mut warm: Option<Sample> = None;
    let mut tick = tokio::time::interval(SAMPLE);
    tick.tick().await;
    let mut clients_done: Option<Instant> = None;
    loop {
        tick.tick().await;
        let s = sample(pid, server.http, t0).await;
        let _ = writeln!(csv, "{}", s.csv());
        samples.push(s);
        if warm.is_none() && t0.elapsed() >= warmup {
            warm = Some(s);
            eprintln!("soak: after warm-up {s:?}");
        }
        if clients_done.is_none() && actors.iter().all(|a| a.is_finished()) {
            clients_done = Some(Instant::now());
            eprintln!("soak: clients done at {:.0} s", t0.elapsed().as_secs_f64());
        }
        let t = &ctx.tally;
        if samples.len() % 6 == 0 {
            eprintln!(
                "soak: {:>5.0} s  rss {} KiB, fds {}, threads {}, tasks {}, sessions {}, rooms {}, streams {}, players {} | lives {}, failures {}",
                s.t, s.rss_kib, s.fds, s.threads, s.tasks, s.sessions, s.rooms, s.streams, s.players,
                get(&t.member_lives), t.failures()
            );
        }
        if let Some(done) = clients_done {
            // At idle for three samples (RSS after the last frees).
            let settled = samples.len() >= 3
                && samples
                    .iter()
                    .rev()
                    .take(3)
                    .all(|x| back_to(x, &idle).is_empty());
            if settled || done.elapsed() >= DRAIN {
                break;
            }
        }
    }
    let last = *samples.last().unwrap_or(&idle);
    let warm = warm.unwrap_or(idle);
    let warnings = server.warnings.load(Ordering::Relaxed);
    let mut server = server;
    server.proc.check_running();
    server.stop();

    // Verdict.
    let mut verdict = back_to(&last, &idle);
    let rss_change = last.rss_kib as f64 / warm.rss_kib.max(1) as f64 - 1.0;
    if rss_change.abs() > RSS_TOLERANCE {
        verdict.push(format!(
            "RSS {} KiB at the end, {} KiB after the warm-up ({:+.1} %)",
            last.rss_kib,
            warm.rss_kib,
            rss_change * 100.0
        ));
    }
    let failures = ctx.tally.failures();
    if failures > 0 {
        verdict.push(format!("{failures} client failures"));
    }
    let passed = verdict.is_empty();
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let report = report(
        &ctx.tally, &samples, idle, warm, last, peak, warnings, run, seed, &verdict,
    );
    println!("{report}");
    let svg = out.join("soak.svg");
    let plotted = plot(out, &svg);
    if run >= DOC_RUN {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        if plotted {
            let _ = std::fs::copy(&svg, docs.join("soak.svg"));
        }
        write_section(&docs.join("reliability.md"), &report);
    }
    passed
}

fn wait_rtmp_address(server: &Server) -> SocketAddr {
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        let found = server.proc.log.lock().ok().and_then(|l| {
            l.iter().find_map(|line| {
                line.split_once("listening on rtmp://")
                    .and_then(|(_, r)| r.split('/').next())
                    .and_then(|a| a.parse().ok())
            })
        });
        if let Some(a) = found {
            return a;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not log its RTMP address within {STEP:?}");
}

/// A row of the report's table: its name and its value in a sample.
type Row = (&'static str, fn(&Sample) -> u64);

#[allow(clippy::too_many_arguments)]
fn report(
    t: &Tally,
    samples: &[Sample],
    idle: Sample,
    warm: Sample,
    last: Sample,
    peak: u64,
    warnings: u64,
    run: Duration,
    seed: u64,
    verdict: &[String],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}, `HUDDLE_SOAK_SECONDS={}`, seed {seed}.\n",
        MACHINE.get().cloned().unwrap_or_else(machine),
        run.as_secs()
    );
    let _ = writeln!(
        s,
        "**{}**\n",
        if verdict.is_empty() {
            "Passed: every count back to its idle value, RSS within 5 % of its value after the warm-up, no client failure.".to_owned()
        } else {
            format!("Did not pass: {}.", verdict.join("; "))
        }
    );
    let _ = writeln!(s, "| | idle (start) | after warm-up | peak | end |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    let max = |f: fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "| RSS (KiB) | {} | {} | {peak} | {} |",
        idle.rss_kib, warm.rss_kib, last.rss_kib
    );
    let rows: [Row; 10] = [
        ("anonymous memory (KiB)", |x| x.anon_kib),
        ("open fds", |x| x.fds),
        ("threads", |x| x.threads),
        ("tokio tasks", |x| x.tasks),
        ("sessions", |x| x.sessions),
        ("rooms", |x| x.rooms),
        ("participants", |x| x.participants),
        ("streams", |x| x.streams),
        ("players", |x| x.players),
        ("WebRTC peers", |x| x.peers),
    ];
    for (name, f) in rows {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} |",
            f(&idle),
            f(&warm),
            max(f),
            f(&last)
        );
    }
    let secs = run.as_secs_f64();
    let lives = get(&t.member_lives);
    let _ = writeln!(
        s,
        "\nClients over {:.0} min: {lives} WebRTC member lives ({} left, {} vanished; {:.0} an hour; a busy meeting room sees ~50 a day, so this is ~{:.0} days), {} cameras published, {} plays ({} races with a stream's end: gone before the play, or before its first picture), {} chat messages sent (to any member, RTMP publishers and probes included) and {} received by the soak's members, {} video packets received by players; {} RTMP publishers ({} killed), {} RTMP players; {} recordings, {} records deleted; {} hostile probes. Server log lines at WARN or above: {warnings}.",
        secs / 60.0,
        get(&t.left),
        get(&t.vanished),
        lives as f64 * 3600.0 / secs,
        lives as f64 / 50.0,
        get(&t.published),
        get(&t.played),
        get(&t.play_races),
        get(&t.chats_sent),
        get(&t.chats_received),
        get(&t.video_packets),
        get(&t.rtmp_published),
        get(&t.rtmp_killed),
        get(&t.rtmp_played),
        get(&t.recordings),
        get(&t.records_deleted),
        get(&t.probes),
    );
    if let Ok(f) = t.failures.lock() {
        for (kind, (n, first)) in f.iter() {
            let _ = writeln!(
                s,
                "- failures of {kind}: {n}, the first: {}",
                first.replace('\n', " ")
            );
        }
    }
    s
}

/// Draws the samples with gnuplot into `svg`; false (and why on stderr) without it.
fn plot(out: &Path, svg: &Path) -> bool {
    let script = format!(
        r#"set terminal svg size 900,900 dynamic font "DejaVu Sans,11"
set output "{svg}"
set datafile separator ","
set key outside right top
set multiplot layout 3,1 title "Huddle soak: samples every 10 s"
set xlabel "minutes"
set ylabel "MiB"
plot "{csv}" using ($1/60):($2/1024) skip 1 with lines lw 2 title "RSS", \
     "" using ($1/60):($12/1024) skip 1 with lines lw 2 title "anonymous"
set ylabel "count"
plot "{csv}" using ($1/60):3 skip 1 with lines title "open fds", \
     "" using ($1/60):4 skip 1 with lines title "threads", \
     "" using ($1/60):5 skip 1 with lines title "tokio tasks"
plot "{csv}" using ($1/60):6 skip 1 with steps title "sessions", \
     "" using ($1/60):7 skip 1 with steps title "rooms", \
     "" using ($1/60):8 skip 1 with steps title "participants", \
     "" using ($1/60):9 skip 1 with steps title "streams", \
     "" using ($1/60):10 skip 1 with steps title "players", \
     "" using ($1/60):11 skip 1 with steps title "WebRTC peers"
unset multiplot
"#,
        svg = svg.display(),
        csv = out.join("samples.csv").display()
    );
    let gp = out.join("soak.gp");
    if std::fs::write(&gp, script).is_err() {
        return false;
    }
    match Command::new("gnuplot").arg(&gp).status() {
        Ok(s) if s.success() => {
            eprintln!("soak: plot {}", svg.display());
            true
        }
        other => {
            eprintln!(
                "soak: no plot (gnuplot: {other:?}; scripts/install-deps.sh soak installs it)"
            );
            false
        }
    }
}

/// Puts `section` between `<!-- soak:begin -->` and `<!-- soak:end -->` of `path`.
fn write_section(path: &Path, section: &str) {
    let (begin, end) = ("<!-- soak:begin -->", "<!-- soak:end -->");
    let Ok(old) = std::fs::read_to_string(path) else {
        return;
    };
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if b < e => format!("{}{begin}\n{section}{}", &old[..b], &old[e..]),
        _ => format!("{}\n\n{begin}\n{section}{end}\n", old.trim_end()),
    };
    if std::fs::write(path, new).is_ok() {
        eprintln!("soak: figures written to {}", path.display());
    }
}
