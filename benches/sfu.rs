//! SFU benchmark (`make bench`, `cargo bench --bench sfu`): not a test, no timing
//! assertions.
//!
//! The real `huddle` binary (release) runs as a child process on 127.0.0.1 with a
//! temporary configuration. One publisher (a `webrtc` 0.21.1 client, like the
//! integration tests' browser stand-in) sends H.264 at 2.5 Mbps (30 fps, a key frame
//! every 2 s, 1100-byte packets) and Opus (20 ms, 80 bytes); N players, each with its
//! own WebSocket session joined to the room, play the stream. Every payload carries
//! the packet's index and its send time (nanoseconds of this process's monotonic
//! clock), so each player measures latency (receive time - send time) and loss
//! (indices that never arrived, after NACK retransmissions).
//!
//! For each N: a fresh server, the publisher, baseline RSS, N players, 3 s warm-up,
//! 10 s measured. Server CPU is `utime + stime` of the server process over the
//! window; per forwarded packet it is divided by N x packets sent. The table goes to
//! stdout and, for the default plan, between the markers in `docs/benchmarks.md`.
//!
//! `HUDDLE_BENCH_PLAYERS=1,5` runs another plan (printed only, the doc is left alone).
//!
//! Simulcast (docs/benchmarks.md "SFU with simulcast"): a second publisher sends one
//! H.264 track in three rid layers (q/h/f, about 150/500/1500 kbps of payload, each
//! packet with the mid and rid header extensions) plus Opus, and answers the SFU's
//! key frame requests per layer; every payload also carries a kind byte (layer 0-2 or
//! audio) after its index and send time, so a player, which gets one rewritten stream,
//! knows which layer each packet came from. For N = 10 and 30 (a fresh server each),
//! players ask for low, medium, high, low, ... (`setLayer`); CPU per forwarded packet
//! and loss count each player's layer and the audio. Then, on another fresh server, one
//! player switches by `setLayer` (low, high, repeated) and another by its REMB (100 kbps,
//! then 10 Mbps: the estimator steps up one layer every ~3 s): the time from the
//! request (or the REMB) to the new layer's first packet (its key frame's).
//! `HUDDLE_BENCH_SIMULCAST_PLAYERS=10` runs another plan (empty: none),
//! `HUDDLE_BENCH_SWITCHING=0` skips the switches (either way the doc is left alone).
//!
//! `HUDDLE_BENCH_QUICK=1`: 1.5 s warm-up, 3 s windows, fewer switches; to check the
//! bench itself (printed only).

#[path = "../tests/common/webrtc_client.rs"]
mod webrtc_client;

mod support;

use support::raw_player;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtp::Packet;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::watch;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::TrackRemote;

use support::{
    clock_ticks_per_sec, extmap_id, latency_us, machine, now_ns, percentile, plan_from,
    process_ticks, quick, receive_with, rss_kib, run, runtime, stage, stamp_of, stamped, video_mid,
    windows, write_doc, Publisher, Row, Server, Stage, Ws, AUDIO, AUDIO_PAYLOAD, AUDIO_STAMP_AT,
    EPOCH, FPS, GRACE, KEY_FRAME_EVERY, ROOM, STEP, STREAM, VIDEO, VIDEO_PAYLOAD, VIDEO_STAMP_AT,
};
use webrtc_client::{h264, opus, rtp_packet, Media, RtcClient};

const PLAYERS: &[usize] = &[1, 10, 30];

// ---------------------------------------------------------------------------------
// Report

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| players | in: pkt/s (payload Mbps) | out: pkt/s received | server CPU, % of one core (of which kernel) | server CPU per forwarded packet | latency p50 / p99 / max | loss | server RSS before → after players | RSS per player | bench process (clients) CPU, % of one core |\n",
    );
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} ({:.2}) | {:.0} | {:.1} % ({:.1} %) | {:.1} µs | {:.2} / {:.2} / {:.1} ms | {:.3} % ({} of {}) | {:.1} → {:.1} MiB | {:.0} KiB | {:.0} % |",
            r.players,
            r.sent() as f64 / r.secs,
            r.sent_bytes as f64 * 8.0 / r.secs / 1e6,
            r.received as f64 / r.secs,
            100.0 * r.server_cpu_s / r.secs,
            100.0 * r.server_sys_s / r.secs,
            r.us_per_forwarded(),
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.loss_pct(),
            r.lost,
            r.forwarded(),
            r.rss_before_kib as f64 / 1024.0,
            r.rss_after_kib as f64 / 1024.0,
            r.rss_per_player_kib(),
            100.0 * r.client_cpu_s / r.secs,
        );
    }
    s
}

// ---------------------------------------------------------------------------------
// Simulcast: the publisher

const SIM_PLAYERS: &[usize] = &[10, 30];
const SIM_STREAM: &str = "bench-simpub-cam";
const SIM_PUB: &str = "m-simpub";
const SIM_AUDIO_SSRC: u32 = 0x3333_3333;
/// The stamp's kind byte (after the index and send time): a layer (0, 1, 2) or audio.
const AUDIO_KIND: usize = 3;
const KIND_AT_VIDEO: usize = VIDEO_STAMP_AT + 16;
const KIND_AT_AUDIO: usize = AUDIO_STAMP_AT + 16;
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// One simulcast layer of the publisher: packets per delta and per key frame, payload
/// bytes per packet, and the `setLayer` word that asks for it.
struct Layer {
    rid: &'static str,
    name: &'static str,
    ssrc: u32,
    delta: usize,
    key: usize,
    size: usize,
}

/// Low → high, 30 fps, a key frame every 2 s (each layer's 2/3 s after the one below):
/// q (63 packets per 2 s of 600 bytes) ≈ 151 kbps, h (126 of 1000) ≈ 504 kbps,
/// f (378 of 1000) ≈ 1512 kbps of payload: ≈ 2.17 Mbps, 567 video packets per 2 s
/// (the single stream: 568).
const LAYERS: [Layer; 3] = [
    Layer {
        rid: "q",
        name: "low",
        ssrc: 0x4444_0001,
        delta: 1,
        key: 4,
        size: 600,
    },
    Layer {
        rid: "h",
        name: "medium",
        ssrc: 0x4444_0002,
        delta: 2,
        key: 8,
        size: 1000,
    },
    Layer {
        rid: "f",
        name: "high",
        ssrc: 0x4444_0003,
        delta: 6,
        key: 24,
        size: 1000,
    },
];
/// A key frame the SFU asks for (PLI/FIR) comes with the layer's next frame, but at
/// most one per layer in this many frames (330 ms), as an encoder limits them.
const KEY_FRAME_MIN_GAP: u64 = 10;

#[derive(Default)]
struct SimSent {
    /// Next packet index per kind (layers 0..3, then audio): each its own index space.
    next: [AtomicU64; 4],
    bytes: AtomicU64,
    errors: AtomicU64,
    /// Key frames sent because the SFU asked, per layer.
    asked: [AtomicU64; 3],
    /// Of which held back (more than a frame) by `KEY_FRAME_MIN_GAP`.
    held: [AtomicU64; 3],
}

impl SimSent {
    fn snapshot(&self) -> [u64; 4] {
        std::array::from_fn(|k| self.next[k].load(Ordering::Relaxed))
    }
}

/// `stamped`, with the kind byte after the index and send time.
fn kind_stamped(first: &[u8], kind: usize, index: u64, len: usize) -> Vec<u8> {
    let mut p = stamped(first, index, len);
    p[first.len() + 16] = kind as u8;
    p
}

/// The kind, index and send time a payload of `kind` carries (simulcast publisher).
fn kind_stamp_of(kind: RtpCodecKind, payload: &[u8]) -> Option<(usize, u64, u64)> {
    let (index, sent) = stamp_of(kind, payload)?;
    let at = if kind == VIDEO {
        KIND_AT_VIDEO
    } else {
        KIND_AT_AUDIO
    };
    let k = usize::from(*payload.get(at)?);
    (k <= AUDIO_KIND).then_some((k, index, sent))
}

/// The simulcast publisher's camera (three rid layers on one track, the mid and rid
/// header extensions on every video packet) and microphone.
struct SimCamera {
    video: Arc<TrackLocalStaticRTP>,
    audio: Arc<TrackLocalStaticRTP>,
    pts: (u8, u8),
    /// Header extension ids (mid, rid) and the video m-line's mid.
    ext: (u8, u8, bytes::Bytes),
    sent: Arc<SimSent>,
    /// Since when a key frame is asked for, per layer (`now_ns`, 0: not asked; set
    /// from the publisher's RTCP).
    wanted: Arc<[AtomicU64; 3]>,
    frame: u64,
    last_key: [Option<u64>; 3],
    seq: [u16; 3],
    audio_seq: u16,
    audio_ts: u32,
}

impl SimCamera {
    async fn write(&self, track: &TrackLocalStaticRTP, p: Packet) {
        let len = p.payload.len() as u64;
        match track.write_rtp(p).await {
            Ok(()) => self.sent.bytes.fetch_add(len, Ordering::Relaxed),
            Err(_) => self.sent.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

impl Publisher for SimCamera {
    /// One frame of each layer, each layer's FU-A packets back to back.
    async fn video_frame(&mut self) {
        for (l, layer) in LAYERS.iter().enumerate() {
            let periodic = self.frame % KEY_FRAME_EVERY == 20 * l as u64;
            let since = self.last_key[l].map_or(u64::MAX, |k| self.frame - k);
            let wanted_at = self.wanted[l].load(Ordering::Relaxed);
            let asked = !periodic && wanted_at != 0 && since >= KEY_FRAME_MIN_GAP;
            let key = periodic || asked;
            if key {
                self.last_key[l] = Some(self.frame);
                self.wanted[l].store(0, Ordering::Relaxed);
            }
            if asked {
                self.sent.asked[l].fetch_add(1, Ordering::Relaxed);
                if now_ns().saturating_sub(wanted_at) > 1_000_000_000 / FPS + 5_000_000 {
                    self.sent.held[l].fetch_add(1, Ordering::Relaxed);
                }
            }
            let (n, nal) = if key {
                (layer.key, 5u8)
            } else {
                (layer.delta, 1u8)
            };
            let ts = ((self.frame * 90_000 / FPS) as u32).wrapping_add(l as u32 * 1_000_000);
            for i in 0..n {
                let last = i + 1 == n;
                let fu = nal | if i == 0 { 0x80 } else { 0 } | if last { 0x40 } else { 0 };
                let index = self.sent.next[l].fetch_add(1, Ordering::Relaxed);
                let payload = kind_stamped(&[0x60 | 28, fu], l, index, layer.size);
                let mut p = rtp_packet(self.pts.0, layer.ssrc, self.seq[l], ts, last, payload);
                p.header
                    .set_extension(self.ext.0, self.ext.2.clone())
                    .expect("mid extension");
                p.header
                    .set_extension(self.ext.1, bytes::Bytes::from_static(layer.rid.as_bytes()))
                    .expect("rid extension");
                self.write(&self.video, p).await;
                self.seq[l] = self.seq[l].wrapping_add(1);
            }
        }
        self.frame += 1;
    }

    async fn audio_packet(&mut self) {
        let index = self.sent.next[AUDIO_KIND].fetch_add(1, Ordering::Relaxed);
        let payload = kind_stamped(&[0xfc], AUDIO_KIND, index, AUDIO_PAYLOAD);
        let p = rtp_packet(
            self.pts.1,
            SIM_AUDIO_SSRC,
            self.audio_seq,
            self.audio_ts,
            false,
            payload,
        );
        self.write(&self.audio, p).await;
        self.audio_seq = self.audio_seq.wrapping_add(1);
        self.audio_ts = self.audio_ts.wrapping_add(960);
    }
}

/// The simulcast publisher, PUBLISHING and connected; its camera sends until `stop`
/// and answers the SFU's key frame requests. Returns its session, the camera task, the
/// task that reads its RTCP (which hands the peer connection back) and the counters.
async fn publish_simulcast(
    addr: SocketAddr,
    stop: &watch::Receiver<bool>,
) -> (
    Ws,
    tokio::task::JoinHandle<()>,
    tokio::task::JoinHandle<RtcClient>,
    Arc<SimSent>,
) {
    let mut ws = Ws::connect(addr, "simpub").await;
    ws.join(ROOM).await;
    let mut pc =
        RtcClient::with_engine("simpub-pc", &[(AUDIO, opus(111)), (VIDEO, h264(125))], true).await;
    pc.add_send_track(AUDIO, opus(111), SIM_AUDIO_SSRC).await;
    let rids: Vec<(&str, u32)> = LAYERS.iter().map(|l| (l.rid, l.ssrc)).collect();
    pc.add_send_layers(VIDEO, h264(125), &rids).await;
    let offer = pc.create_offer().await;
    let answer = ws.offer(ROOM, SIM_STREAM, SIM_PUB, true, &offer).await;
    assert!(
        answer.contains("a=simulcast:recv q;h;f"),
        "the SFU takes the three layers:\n{answer}"
    );
    pc.apply_answer(&answer).await;
    ws.wait_status(SIM_PUB, "PUBLISHING").await;
    pc.wait_connected(STEP).await;
    let sent = Arc::new(SimSent::default());
    let wanted: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let camera = SimCamera {
        video: Arc::clone(&pc.send_track(VIDEO).track),
        audio: Arc::clone(&pc.send_track(AUDIO).track),
        pts: (pc.negotiated_pt(VIDEO).await, pc.negotiated_pt(AUDIO).await),
        ext: (
            extmap_id(&answer, MID_URI),
            extmap_id(&answer, RID_URI),
            bytes::Bytes::from(video_mid(&offer).into_bytes()),
        ),
        sent: Arc::clone(&sent),
        wanted: Arc::clone(&wanted),
        frame: 0,
        last_key: [None; 3],
        seq: [1_000, 30_000, 60_000],
        audio_seq: 0,
        audio_ts: 0,
    };
    let camera = tokio::spawn(camera.run(stop.clone()));
    // Key frame requests (PLI/FIR by the layer's SSRC) -> the camera.
    let mut stop = stop.clone();
    let rtcp = tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                _ = stop.changed() => break,
                m = pc.next_media(Duration::from_secs(1)) => m,
            };
            if let Some(Media::KeyFrameRequest { media_ssrc, .. }) = m {
                if let Some(l) = LAYERS.iter().position(|l| l.ssrc == media_ssrc) {
                    // The first request counts until the key frame is sent.
                    let _ = wanted[l].compare_exchange(
                        0,
                        now_ns().max(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
        }
        pc
    });
    (ws, camera, rtcp, sent)
}

// ---------------------------------------------------------------------------------
// Simulcast: CPU per forwarded packet

/// What a simulcast player received: (kind, index, latency in µs), in arrival order.
struct SimReceived {
    pc: RtcClient,
    got: Vec<(u8, u64, u32)>,
}

async fn sim_receive(mut pc: RtcClient, stop: watch::Receiver<bool>) -> SimReceived {
    let got = receive_with(&mut pc, stop, 32 * 1024, |kind, payload, now| {
        kind_stamp_of(kind, payload).map(|(k, index, sent)| (k as u8, index, latency_us(now, sent)))
    })
    .await;
    SimReceived { pc, got }
}

/// The layer player `i` asks for: low, medium, high, low, ... (a third each).
fn mix_layer(i: usize) -> usize {
    i % LAYERS.len()
}

/// One line of the simulcast section's CPU table (either publisher).
struct Line {
    publisher: &'static str,
    players: usize,
    in_pps: f64,
    in_mbps: f64,
    /// Packets the server was to forward per second (N x audio + each player's layer).
    out_pps: f64,
    cpu_pct: f64,
    sys_pct: f64,
    us_per_forwarded: f64,
    latency_ms: (f64, f64, f64),
    lost: u64,
    forwarded: u64,
    /// Video packets of a layer other than the player's (simulcast).
    wrong: u64,
    client_pct: f64,
    incidents: u64,
    server_warnings: u64,
}

impl Line {
    fn of_row(r: &Row) -> Line {
        Line {
            publisher: "single stream",
            players: r.players,
            in_pps: r.sent() as f64 / r.secs,
            in_mbps: r.sent_bytes as f64 * 8.0 / r.secs / 1e6,
            out_pps: r.forwarded() as f64 / r.secs,
            cpu_pct: 100.0 * r.server_cpu_s / r.secs,
            sys_pct: 100.0 * r.server_sys_s / r.secs,
            us_per_forwarded: r.us_per_forwarded(),
            latency_ms: (r.p50_ms, r.p99_ms, r.max_ms),
            lost: r.lost,
            forwarded: r.forwarded(),
            wrong: 0,
            client_pct: 100.0 * r.client_cpu_s / r.secs,
            incidents: r.incidents,
            server_warnings: r.server_warnings,
        }
    }
}

async fn run_simulcast(players: usize, ticks: f64) -> Line {
    let server = Server::start(&format!("sim{players}"));
    let addr = server.http;
    eprintln!(
        "simulcast, N = {players}: server pid {} on {addr}, media UDP {}",
        server.proc.pid, server.media_port
    );
    let (stop_tx, stop) = watch::channel(false);
    let incidents = Arc::new(AtomicU64::new(0));
    let (pub_ws, camera, rtcp, sent) = publish_simulcast(addr, &stop).await;
    let mut sessions = vec![pub_ws.keep_alive(stop.clone(), Arc::clone(&incidents))];
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t_setup = Instant::now();
    let mut receivers = Vec::new();
    for i in 0..players {
        let login = format!("s{i:02}");
        let (mut ws, pc) = support::play(addr, &login, ROOM, SIM_STREAM).await;
        ws.set_layer(&format!("m-{login}"), LAYERS[mix_layer(i)].name)
            .await;
        sessions.push(ws.keep_alive(stop.clone(), Arc::clone(&incidents)));
        receivers.push((mix_layer(i), tokio::spawn(sim_receive(pc, stop.clone()))));
    }
    let (warmup, measure) = windows();
    eprintln!(
        "  {players} players up in {:.1} s; warm-up {warmup:?}, measuring {measure:?}",
        t_setup.elapsed().as_secs_f64()
    );
    tokio::time::sleep(warmup).await;

    let (server_t0, client_t0) = (
        process_ticks(&server.proc.pid.to_string()),
        process_ticks("self"),
    );
    let (first, b0) = (sent.snapshot(), sent.bytes.load(Ordering::Relaxed));
    let t0 = Instant::now();
    tokio::time::sleep(measure).await;
    let (last, b1) = (sent.snapshot(), sent.bytes.load(Ordering::Relaxed));
    let secs = t0.elapsed().as_secs_f64();
    let (server_t1, client_t1) = (
        process_ticks(&server.proc.pid.to_string()),
        process_ticks("self"),
    );
    tokio::time::sleep(GRACE).await;

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(STEP, camera).await;
    let window: [u64; 4] = std::array::from_fn(|k| last[k] - first[k]);
    let (mut lost, mut forwarded, mut wrong) = (0u64, 0u64, 0u64);
    let mut latencies: Vec<u32> = Vec::new();
    let mut pcs = Vec::new();
    if let Ok(Ok(pc)) = tokio::time::timeout(STEP, rtcp).await {
        pcs.push(pc);
    }
    for (layer, r) in receivers {
        let Ok(Ok(r)) = tokio::time::timeout(STEP, r).await else {
            panic!("a player task did not stop");
        };
        // The player's layer and audio are expected; another layer is counted apart.
        let mut seen: [Vec<bool>; 4] = std::array::from_fn(|k| vec![false; window[k] as usize]);
        for &(k, index, micros) in &r.got {
            let k = usize::from(k);
            if index < first[k] || index >= last[k] {
                continue;
            }
            if k != layer && k != AUDIO_KIND {
                wrong += 1;
                continue;
            }
            let slot = &mut seen[k][(index - first[k]) as usize];
            if !*slot {
                *slot = true;
                latencies.push(micros);
            }
        }
        for k in [layer, AUDIO_KIND] {
            let got = seen[k].iter().filter(|s| **s).count() as u64;
            forwarded += window[k];
            lost += window[k] - got;
        }
        pcs.push(r.pc);
    }
    latencies.sort_unstable();
    let server_warnings = server.warnings.load(Ordering::Relaxed);
    let asked: Vec<u64> = sent
        .asked
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    eprintln!("  key frames sent on request per layer (whole run): {asked:?}");
    server.stop();
    futures_util::future::join_all(pcs.iter().map(|pc| pc.close())).await;
    for s in sessions {
        let _ = tokio::time::timeout(STEP, s).await;
    }
    let cpu_s = (server_t1.0 + server_t1.1 - server_t0.0 - server_t0.1) as f64 / ticks;
    let sys_s = (server_t1.1 - server_t0.1) as f64 / ticks;
    let client_s = (client_t1.0 + client_t1.1 - client_t0.0 - client_t0.1) as f64 / ticks;
    Line {
        publisher: "simulcast q/h/f",
        players,
        in_pps: window.iter().sum::<u64>() as f64 / secs,
        in_mbps: (b1 - b0) as f64 * 8.0 / secs / 1e6,
        out_pps: forwarded as f64 / secs,
        cpu_pct: 100.0 * cpu_s / secs,
        sys_pct: 100.0 * sys_s / secs,
        us_per_forwarded: cpu_s * 1e6 / forwarded.max(1) as f64,
        latency_ms: (
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies
                .last()
                .map_or(f64::NAN, |m| f64::from(*m) / 1000.0),
        ),
        lost,
        forwarded,
        wrong,
        client_pct: 100.0 * client_s / secs,
        incidents: incidents.load(Ordering::Relaxed),
        server_warnings,
    }
}

// ---------------------------------------------------------------------------------
// Simulcast: time to switch layers

/// REMB values: far below the high layer (and below the low one: straight to it), and
/// well above everything.
const REMB_LOW: f32 = 100_000.0;
const REMB_HIGH: f32 = 10_000_000.0;
/// REMB from the player every this often (and at once when the value changes).
const REMB_EVERY: Duration = Duration::from_millis(250);
const SET_LAYER_REPEATS: usize = 5;
const REMB_REPEATS: usize = 3;
/// The longest wait for a switch (the estimator's step up takes ~3 s).
const SWITCH_LIMIT: Duration = Duration::from_secs(8);

/// A player's video as it arrives: (arrival ns, layer, starts a key frame), from a
/// task that reads every item of its peer connection.
struct LayerWatch {
    events: tokio::sync::mpsc::UnboundedReceiver<(u64, u8, bool)>,
    track: Arc<dyn TrackRemote>,
    ssrc: u32,
    task: tokio::task::JoinHandle<RtcClient>,
}

async fn watch_layers(mut pc: RtcClient, mut stop: watch::Receiver<bool>) -> LayerWatch {
    let deadline = Instant::now() + STEP;
    let ssrc = loop {
        match pc
            .next_media(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Some(Media::Rtp { kind, packet }) if kind == VIDEO => break packet.header.ssrc,
            Some(_) => {}
            None => panic!("{}: no video within {STEP:?}", pc.name),
        }
    };
    let track = pc.remote_track(VIDEO).expect("the player's video track");
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                _ = stop.changed() => break,
                m = pc.next_media(Duration::from_secs(1)) => m,
            };
            let Some(Media::Rtp { kind, packet }) = m else {
                continue;
            };
            let now = now_ns();
            if let Some((k, _, _)) = kind_stamp_of(kind, &packet.payload) {
                if k < AUDIO_KIND {
                    let key = packet.payload[1] & 0x9f == 0x85;
                    let _ = tx.send((now, k as u8, key));
                }
            }
        }
        pc
    });
    LayerWatch {
        events,
        track,
        ssrc,
        task,
    }
}

impl LayerWatch {
    /// The first packet of `layer` that arrived at or after `after` (ns): (ms after
    /// `after`, whether it starts a key frame); `None` within `limit`.
    async fn first_of(&mut self, layer: usize, after: u64, limit: Duration) -> Option<(f64, bool)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((t, l, key))) if usize::from(l) == layer && t >= after => {
                    return Some(((t - after) as f64 / 1e6, key));
                }
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }

    fn drain(&mut self) {
        while self.events.try_recv().is_ok() {}
    }
}

/// Sends the player's REMB for its video (`ssrc`): the value in `bps` (none while 0),
/// every `REMB_EVERY` and at once when it changes, until `stop`.
fn remb_sender(
    track: Arc<dyn TrackRemote>,
    ssrc: u32,
    mut bps: watch::Receiver<f32>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REMB_EVERY);
        let mut errors = 0u64;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {}
                r = bps.changed() => if r.is_err() { break },
            }
            let bitrate = *bps.borrow();
            if bitrate > 0.0 {
                let remb = ReceiverEstimatedMaximumBitrate {
                    sender_ssrc: 1,
                    bitrate,
                    ssrcs: vec![ssrc],
                };
                if track.write_rtcp(vec![Box::new(remb)]).await.is_err() {
                    errors += 1;
                }
            }
        }
        errors
    })
}

#[derive(Default)]
struct Switching {
    /// Milliseconds per switch.
    set_down: Vec<f64>,
    set_up: Vec<f64>,
    remb_down: Vec<f64>,
    remb_up_one: Vec<f64>,
    remb_up_top: Vec<f64>,
    /// Switches that did not happen within the limit, or did not start at a key frame.
    problems: Vec<String>,
    /// Key frames the publisher sent on request per layer, and of those how many the
    /// publisher's minimum gap held back.
    key_frames: (Vec<u64>, Vec<u64>),
}

fn record(into: &mut Vec<f64>, what: &str, got: Option<(f64, bool)>, problems: &mut Vec<String>) {
    match got {
        Some((ms, key)) => {
            into.push(ms);
            if !key {
                problems.push(format!(
                    "{what}: the new layer's first packet is not a key frame's"
                ));
            }
        }
        None => problems.push(format!("{what}: no switch within {SWITCH_LIMIT:?}")),
    }
}

async fn run_switching(set_repeats: usize, remb_repeats: usize) -> Switching {
    let server = Server::start("switch");
    let addr = server.http;
    eprintln!(
        "layer switches: server pid {} on {addr}, media UDP {}",
        server.proc.pid, server.media_port
    );
    let (stop_tx, stop) = watch::channel(false);
    let incidents = Arc::new(AtomicU64::new(0));
    let (pub_ws, camera, rtcp, sent) = publish_simulcast(addr, &stop).await;
    let mut sessions = vec![pub_ws.keep_alive(stop.clone(), Arc::clone(&incidents))];
    // One player switched by setLayer, one by its REMB; both start on the top layer.
    let (mut set_ws, pc) = support::play(addr, "sw-set", ROOM, SIM_STREAM).await;
    let mut set = watch_layers(pc, stop.clone()).await;
    let (ws, pc) = support::play(addr, "sw-remb", ROOM, SIM_STREAM).await;
    sessions.push(ws.keep_alive(stop.clone(), Arc::clone(&incidents)));
    let mut remb = watch_layers(pc, stop.clone()).await;
    let (bps_tx, bps) = watch::channel(0.0f32);
    let remb_task = remb_sender(Arc::clone(&remb.track), remb.ssrc, bps, stop.clone());
    let top = LAYERS.len() - 1;
    let mut s = Switching::default();
    for (w, name) in [(&mut set, "sw-set"), (&mut remb, "sw-remb")] {
        if w.first_of(top, 0, SWITCH_LIMIT).await.is_none() {
            s.problems
                .push(format!("{name}: never on the top layer at the start"));
        }
    }

    // (a) setLayer low, then high.
    for r in 0..set_repeats {
        for (layer, word, into) in [(0, "low", &mut s.set_down), (top, "high", &mut s.set_up)] {
            set.drain();
            let t0 = now_ns();
            set_ws.set_layer("m-sw-set", word).await;
            let got = set.first_of(layer, t0, SWITCH_LIMIT).await;
            record(into, &format!("setLayer {word} #{r}"), got, &mut s.problems);
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    sessions.push(set_ws.keep_alive(stop.clone(), Arc::clone(&incidents)));

    // (b) REMB far below, then well above: one layer up at a time.
    for r in 0..remb_repeats {
        remb.drain();
        let t0 = now_ns();
        let _ = bps_tx.send(REMB_LOW);
        let got = remb.first_of(0, t0, SWITCH_LIMIT).await;
        record(
            &mut s.remb_down,
            &format!("REMB down #{r}"),
            got,
            &mut s.problems,
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        remb.drain();
        let t1 = now_ns();
        let _ = bps_tx.send(REMB_HIGH);
        let got = remb.first_of(1, t1, SWITCH_LIMIT).await;
        record(
            &mut s.remb_up_one,
            &format!("REMB up one #{r}"),
            got,
            &mut s.problems,
        );
        let got = remb.first_of(top, t1, 2 * SWITCH_LIMIT).await;
        record(
            &mut s.remb_up_top,
            &format!("REMB up to the top #{r}"),
            got,
            &mut s.problems,
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    // What went wrong during the switches (not the teardown: the publisher leaving
    // stops the other players' stream).
    let warnings = server.warnings.load(Ordering::Relaxed);
    let incidents = incidents.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(STEP, camera).await;
    if let Ok(Ok(errors)) = tokio::time::timeout(STEP, remb_task).await {
        if errors > 0 {
            s.problems.push(format!("{errors} REMB writes failed"));
        }
    }
    let mut pcs = Vec::new();
    for t in [rtcp, set.task, remb.task] {
        if let Ok(Ok(pc)) = tokio::time::timeout(STEP, t).await {
            pcs.push(pc);
        }
    }
    let asked: Vec<u64> = sent
        .asked
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    let held: Vec<u64> = sent
        .held
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    eprintln!("  key frames sent on request per layer: {asked:?}, held back: {held:?}");
    s.key_frames = (asked, held);
    if warnings > 0 {
        s.problems
            .push(format!("{warnings} server WARN/ERROR lines"));
    }
    if incidents > 0 {
        s.problems.push(format!(
            "{incidents} stream incidents (stopped/failed/socket ended)"
        ));
    }
    server.stop();
    futures_util::future::join_all(pcs.iter().map(|pc| pc.close())).await;
    for s in sessions {
        let _ = tokio::time::timeout(STEP, s).await;
    }
    s
}

// ---------------------------------------------------------------------------------
// Simulcast: report

fn sim_table(lines: &[Line]) -> String {
    let mut s = String::new();
    s.push_str(
        "| publisher | players | in: pkt/s (payload Mbps) | out: pkt/s forwarded | server CPU, % of one core (of which kernel) | server CPU per forwarded packet | latency p50 / p99 / max | loss | bench process (clients) CPU, % of one core |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for l in lines {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} ({:.2}) | {:.0} | {:.1} % ({:.1} %) | {:.1} µs | {:.2} / {:.2} / {:.1} ms | {:.3} % ({} of {}) | {:.0} % |",
            l.publisher,
            l.players,
            l.in_pps,
            l.in_mbps,
            l.out_pps,
            l.cpu_pct,
            l.sys_pct,
            l.us_per_forwarded,
            l.latency_ms.0,
            l.latency_ms.1,
            l.latency_ms.2,
            100.0 * l.lost as f64 / l.forwarded.max(1) as f64,
            l.lost,
            l.forwarded,
            l.client_pct,
        );
    }
    s
}

/// "min / median / max ms (n)" of some switch times.
fn spread(ms: &[f64]) -> String {
    if ms.is_empty() {
        return "– (0)".into();
    }
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!(
        "{:.0} / {:.0} / {:.0} ms ({})",
        v[0],
        median,
        v[v.len() - 1],
        v.len()
    )
}

fn switch_table(s: &Switching) -> String {
    let mut t = String::new();
    t.push_str("| switch | from → to | time to the new layer's first packet: min / median / max (switches) |\n");
    t.push_str("|---|---|---:|\n");
    let rows: [(&str, &str, &[f64]); 5] = [
        ("`setLayer` low", "f → q", &s.set_down),
        ("`setLayer` high", "q → f", &s.set_up),
        ("REMB 100 kbps", "f → q", &s.remb_down),
        ("REMB 10 Mbps, one step", "q → h", &s.remb_up_one),
        ("REMB 10 Mbps, to the top", "q → f", &s.remb_up_top),
    ];
    for (what, how, ms) in rows {
        let _ = writeln!(t, "| {what} | {how} | {} |", spread(ms));
    }
    t
}

fn sim_section(machine_line: &str, lines: &[Line], switching: Option<&Switching>) -> String {
    let mut section = String::new();
    let _ = writeln!(section, "Measured {machine_line}.\n");
    if !lines.is_empty() {
        section.push_str(&sim_table(lines));
        let mut notes: Vec<String> = Vec::new();
        // What one more forwarded packet costs, per publisher: the difference between
        // its smallest and each larger N (the fixed cost drops out).
        for publisher in ["single stream", "simulcast q/h/f"] {
            let of: Vec<&Line> = lines.iter().filter(|l| l.publisher == publisher).collect();
            let Some(base) = of.iter().min_by_key(|l| l.players) else {
                continue;
            };
            for l in of.iter().filter(|l| l.players > base.players) {
                let cpu = (l.cpu_pct - base.cpu_pct) / 100.0;
                let pkts = l.out_pps - base.out_pps;
                notes.push(format!(
                    "{publisher}: marginal server CPU from N = {} to N = {}: {:.1} µs per added forwarded packet.",
                    base.players,
                    l.players,
                    cpu * 1e6 / pkts
                ));
            }
        }
        for l in lines.iter().filter(|l| l.wrong > 0) {
            notes.push(format!(
                "{}, N = {}: {} video packets of a layer other than the player's.",
                l.publisher, l.players, l.wrong
            ));
        }
        for l in lines
            .iter()
            .filter(|l| l.incidents > 0 || l.server_warnings > 0)
        {
            notes.push(format!(
                "{}, N = {}: {} stream incidents (stopped/failed/socket ended), {} server WARN/ERROR lines.",
                l.publisher, l.players, l.incidents, l.server_warnings
            ));
        }
        if !notes.is_empty() {
            section.push('\n');
            for n in notes {
                let _ = writeln!(section, "- {n}");
            }
        }
    }
    if let Some(s) = switching {
        if !lines.is_empty() {
            section.push('\n');
        }
        section.push_str(&switch_table(s));
        section.push('\n');
        let (asked, held) = &s.key_frames;
        let _ = writeln!(
            section,
            "- Key frames the publisher sent on request during the switches, q/h/f: {asked:?}; of which held back by its {} ms minimum gap: {held:?}.",
            KEY_FRAME_MIN_GAP * 1000 / FPS
        );
        for p in &s.problems {
            let _ = writeln!(section, "- {p}");
        }
    }
    section
}

// ---------------------------------------------------------------------------------
// SRTP: what protecting one forwarded packet costs, by profile

/// Protects `n` video packets of `VIDEO_PAYLOAD` bytes with a player's sending path
/// (`huddle::sfu::play_out`: marshal, SRTP, the NACK history), per profile: ns each.
fn srtp_costs(n: u32) -> Vec<(&'static str, f64)> {
    use huddle::sfu::play_out::{PlayOut, WallClock};
    use rtc::peer_connection::SrtpKeys;
    use rtc::srtp::protection_profile::ProtectionProfile;
    let profiles = [
        ("AEAD_AES_128_GCM", ProtectionProfile::AeadAes128Gcm),
        (
            "AES_CM_128_HMAC_SHA1_80",
            ProtectionProfile::Aes128CmHmacSha1_80,
        ),
    ];
    profiles
        .into_iter()
        .map(|(name, profile)| {
            let keys = SrtpKeys {
                profile,
                master_key: vec![7; profile.key_len()],
                master_salt: vec![9; profile.salt_len()],
            };
            let t0 = Instant::now();
            let mut out = PlayOut::new(&keys, WallClock::new(t0, std::time::SystemTime::now()))
                .expect("a sending path");
            let payload = bytes::Bytes::from(vec![0x5c; VIDEO_PAYLOAD]);
            let start = Instant::now();
            for i in 0..n {
                let p = Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        payload_type: 106,
                        sequence_number: i as u16,
                        timestamp: i * 3000,
                        ssrc: 0x5555_5555,
                        ..Default::default()
                    },
                    payload: payload.clone(),
                };
                let wire = out.protect(t0, p, 90_000, true).expect("protect");
                std::hint::black_box(wire);
            }
            (name, start.elapsed().as_nanos() as f64 / f64::from(n))
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Load: hundreds of players that decrypt only a sample (`support::raw_player`)

const LOAD_PLAYERS: &[usize] = &[30, 100, 200, 300];
/// `[media] workers` of the load runs, each N run with each (`HUDDLE_BENCH_LOAD_WORKERS`).
const LOAD_WORKERS: &[usize] = &[1, 2];
/// One RTP packet in this many is decrypted (and its latency read) by a load player.
const LOAD_SAMPLE: u64 = 16;
/// Players connecting at once.
const LOAD_CONNECT_AT_ONCE: usize = 10;
/// Loss above this is saturation.
const SATURATED_LOSS_PCT: f64 = 0.1;

struct LoadRow {
    players: usize,
    workers: usize,
    secs: f64,
    sent: u64,
    server_cpu_s: f64,
    server_sys_s: f64,
    client_cpu_s: f64,
    tally: raw_player::Tally,
    latencies: Vec<u32>,
    rss_before_kib: u64,
    rss_after_kib: u64,
    setup_s: f64,
    incidents: u64,
    server_warnings: u64,
    /// Players whose ICE/DTLS did not come up in time (the server saturated).
    not_connected: usize,
    /// The server's own drops over the run: its socket full, a worker's ring full.
    socket_busy: f64,
    ring_full: f64,
}

impl LoadRow {
    fn loss_pct(&self) -> f64 {
        let t = &self.tally;
        100.0 * t.expected.saturating_sub(t.received) as f64 / t.expected.max(1) as f64
    }
    fn us_per_forwarded(&self) -> f64 {
        self.server_cpu_s * 1e6 / (self.sent * self.players as u64).max(1) as f64
    }
}

/// The send time a load player's sampled packet carries (video or audio by the
/// payload types its offer named).
fn load_stamp(p: &Packet) -> Option<u64> {
    let kind = if p.header.payload_type == 106 {
        VIDEO
    } else {
        AUDIO
    };
    stamp_of(kind, &p.payload).map(|(_, sent)| sent)
}

async fn run_load((players, workers): (usize, usize), ticks: f64) -> LoadRow {
    let members = players.max(support::MEMBERS) + 8;
    let server = Server::start_with(
        &format!("load{players}w{workers}"),
        &support::media_workers(workers, &support::sections(members)),
    );
    let Stage {
        server,
        stop_tx,
        stop,
        incidents,
        mut sessions,
        sent,
        camera,
        pub_pc,
    } = stage(server, &format!("load N = {players}, {workers} workers")).await;
    let addr = server.http;
    let rss_before_kib = rss_kib(server.proc.pid);
    let epoch = *EPOCH.get_or_init(Instant::now);
    let t_setup = Instant::now();
    let mut receivers = Vec::with_capacity(players);
    let mut not_connected = 0;
    let logins: Vec<String> = (0..players).map(|i| format!("l{i:03}")).collect();
    for chunk in logins.chunks(LOAD_CONNECT_AT_ONCE) {
        let connected = futures_util::future::join_all(
            chunk
                .iter()
                .map(|login| raw_player::RawPlayer::connect(addr, login, ROOM, STREAM)),
        )
        .await;
        for c in connected {
            let (player, ws) = match c {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("  {e}");
                    not_connected += 1;
                    continue;
                }
            };
            sessions.push(ws.keep_alive(stop.clone(), Arc::clone(&incidents)));
            receivers.push(tokio::spawn(player.receive(
                stop.clone(),
                LOAD_SAMPLE,
                epoch,
                load_stamp,
            )));
        }
    }
    let setup_s = t_setup.elapsed().as_secs_f64();
    let (warmup, measure) = windows();
    eprintln!("  {players} load players up in {setup_s:.1} s");
    tokio::time::sleep(warmup).await;
    let pid = server.proc.pid.to_string();
    let (server_t0, client_t0) = (process_ticks(&pid), process_ticks("self"));
    let s0 = sent.video.load(Ordering::Relaxed) + sent.audio.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(measure).await;
    let secs = t0.elapsed().as_secs_f64();
    let (server_t1, client_t1) = (process_ticks(&pid), process_ticks("self"));
    let s1 = sent.video.load(Ordering::Relaxed) + sent.audio.load(Ordering::Relaxed);
    let rss_after_kib = rss_kib(server.proc.pid);
    tokio::time::sleep(GRACE).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(STEP, camera).await;
    let mut tally = raw_player::Tally::default();
    for r in receivers {
        let Ok(Ok(t)) = tokio::time::timeout(STEP, r).await else {
            panic!("a load player did not stop");
        };
        tally.add(t);
    }
    let mut latencies = std::mem::take(&mut tally.latencies_us);
    latencies.sort_unstable();
    let server_warnings = server.warnings.load(Ordering::Relaxed);
    let dropped = |reason: &str| {
        support::metric(
            addr,
            format!("huddle_packets_dropped_total{{reason=\"{reason}\"}}"),
        )
    };
    let (socket_busy, ring_full) = (
        dropped("socket_busy").await.unwrap_or(f64::NAN),
        dropped("sink_queue_full").await.unwrap_or(f64::NAN),
    );
    server.stop();
    pub_pc.close().await;
    for s in sessions {
        let _ = tokio::time::timeout(STEP, s).await;
    }
    LoadRow {
        players,
        workers,
        secs,
        sent: s1 - s0,
        server_cpu_s: (server_t1.0 + server_t1.1 - server_t0.0 - server_t0.1) as f64 / ticks,
        server_sys_s: (server_t1.1 - server_t0.1) as f64 / ticks,
        client_cpu_s: (client_t1.0 + client_t1.1 - client_t0.0 - client_t0.1) as f64 / ticks,
        tally,
        latencies,
        rss_before_kib,
        rss_after_kib,
        setup_s,
        incidents: incidents.load(Ordering::Relaxed),
        server_warnings,
        not_connected,
        socket_busy,
        ring_full,
    }
}

fn load_section(machine_line: &str, rows: &[LoadRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Measured {machine_line}.\n");
    s.push_str(
        "| players | media workers | forwarded pkt/s | server CPU, % of one core (of which kernel) | server CPU per forwarded packet | loss | latency p50 / p99 / max (sampled) | RSS per player | bench process CPU, % of one core |\n",
    );
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.1} % ({:.1} %) | {:.1} µs | {:.3} % | {:.2} / {:.2} / {:.1} ms | {:.0} KiB | {:.0} % |",
            r.players,
            r.workers,
            (r.sent * r.players as u64) as f64 / r.secs,
            100.0 * r.server_cpu_s / r.secs,
            100.0 * r.server_sys_s / r.secs,
            r.us_per_forwarded(),
            r.loss_pct(),
            percentile(&r.latencies, 0.50),
            percentile(&r.latencies, 0.99),
            r.latencies.last().map_or(f64::NAN, |m| f64::from(*m) / 1000.0),
            (r.rss_after_kib as f64 - r.rss_before_kib as f64) / r.players as f64,
            100.0 * r.client_cpu_s / r.secs,
        );
    }
    s.push('\n');
    let mut workers: Vec<usize> = rows.iter().map(|r| r.workers).collect();
    workers.sort_unstable();
    workers.dedup();
    for w in workers {
        let of = || rows.iter().filter(move |r| r.workers == w);
        match of().find(|r| r.loss_pct() > SATURATED_LOSS_PCT || r.not_connected > 0) {
            Some(r) => {
                let _ = writeln!(
                    s,
                    "- {w} media worker(s): saturation, loss first above {SATURATED_LOSS_PCT} % (or players not connected) at N = {} ({:.2} %, {} not connected).",
                    r.players,
                    r.loss_pct(),
                    r.not_connected
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "- {w} media worker(s): no saturation in this plan, loss at or below {SATURATED_LOSS_PCT} % up to N = {}.",
                    of().map(|r| r.players).max().unwrap_or(0)
                );
            }
        }
    }
    for r in rows {
        let t = &r.tally;
        let _ = writeln!(
            s,
            "- N = {}, {} worker(s): {} of {} packets received; {} sampled ({} not decrypted); {:.1} datagrams per recvmmsg; players up in {:.1} s{}{}; the server dropped {} for a full socket, {} for a full queue or ring.",
            r.players,
            r.workers,
            t.received,
            t.expected,
            t.samples,
            t.sample_failures,
            t.datagrams as f64 / t.recv_calls.max(1) as f64,
            r.setup_s,
            if r.not_connected > 0 {
                format!(", {} did not connect", r.not_connected)
            } else {
                String::new()
            },
            if r.incidents + r.server_warnings > 0 {
                format!(
                    "; {} stream incidents, {} server WARN/ERROR lines",
                    r.incidents, r.server_warnings
                )
            } else {
                String::new()
            },
            r.socket_busy,
            r.ring_full,
        );
    }
    s
}

fn main() {
    EPOCH.get_or_init(Instant::now);
    let plan = plan_from("HUDDLE_BENCH_PLAYERS", PLAYERS);
    let sim_plan = plan_from("HUDDLE_BENCH_SIMULCAST_PLAYERS", SIM_PLAYERS);
    let load_plan = plan_from("HUDDLE_BENCH_LOAD_PLAYERS", LOAD_PLAYERS);
    let load_workers = plan_from("HUDDLE_BENCH_LOAD_WORKERS", LOAD_WORKERS);
    let switching = std::env::var("HUDDLE_BENCH_SWITCHING").map_or(true, |v| v != "0");
    let (set_repeats, remb_repeats) = if quick() {
        (2, 1)
    } else {
        (SET_LAYER_REPEATS, REMB_REPEATS)
    };
    let ticks = clock_ticks_per_sec();
    let rt = runtime();
    let started = Instant::now();
    let rows: Vec<Row> = plan.iter().map(|&n| rt.block_on(run(n, ticks))).collect();
    let sim_rows: Vec<Line> = sim_plan
        .iter()
        .map(|&n| rt.block_on(run_simulcast(n, ticks)))
        .collect();
    let switches = switching.then(|| rt.block_on(run_switching(set_repeats, remb_repeats)));
    // Each N with each worker count in turn (what drifts on the machine falls on both).
    let load_rows: Vec<LoadRow> = load_plan
        .iter()
        .flat_map(|&n| load_workers.iter().map(move |&w| (n, w)))
        .map(|point| {
            let row = rt.block_on(run_load(point, ticks));
            eprintln!("{}", load_section("(this row)", std::slice::from_ref(&row)));
            row
        })
        .collect();
    drop(rt);

    let machine_line = machine();
    let mut section = String::new();
    let _ = writeln!(section, "Measured {machine_line}.\n");
    section.push_str(&table(&rows));
    let mut notes: Vec<String> = Vec::new();
    // What one more forwarded packet costs: the difference to the smallest run, which
    // carries the fixed cost (the publisher's leg, RTCP, timers, signalling).
    if let Some(base) = rows.iter().min_by_key(|r| r.players) {
        for r in rows.iter().filter(|r| r.players > base.players) {
            let cpu = r.server_cpu_s / r.secs - base.server_cpu_s / base.secs;
            let pkts = r.sent() as f64 / r.secs * (r.players - base.players) as f64;
            notes.push(format!(
                "Marginal server CPU from N = {} to N = {}: {:.1} µs per added forwarded packet.",
                base.players,
                r.players,
                cpu * 1e6 / pkts
            ));
        }
    }
    notes.extend(
        rows.iter()
            .filter(|r| r.incidents > 0 || r.server_warnings > 0)
            .map(|r| {
                format!(
                    "N = {}: {} stream incidents (stopped/failed/socket ended), {} server WARN/ERROR lines.",
                    r.players, r.incidents, r.server_warnings
                )
            }),
    );
    if !notes.is_empty() {
        section.push('\n');
        for n in notes {
            let _ = writeln!(section, "- {n}");
        }
    }
    // The simulcast section: the single stream's rows at the same N for comparison.
    let mut lines: Vec<Line> = Vec::new();
    for (&n, l) in sim_plan.iter().zip(sim_rows) {
        if let Some(r) = rows.iter().find(|r| r.players == n) {
            lines.push(Line::of_row(r));
        }
        lines.push(l);
    }
    let sim = (!lines.is_empty() || switches.is_some())
        .then(|| sim_section(&machine_line, &lines, switches.as_ref()));
    if !rows.is_empty() {
        println!("\n{section}");
    }
    if let Some(sim) = &sim {
        println!("Simulcast:\n\n{sim}");
    }
    let load = (!load_rows.is_empty()).then(|| load_section(&machine_line, &load_rows));
    let mut srtp = format!("Measured {machine_line}.\n\n");
    for (name, ns) in srtp_costs(if quick() { 20_000 } else { 200_000 }) {
        let _ = writeln!(
            srtp,
            "- {name}: {:.2} µs per {VIDEO_PAYLOAD}-byte packet (marshal, protect, NACK history).",
            ns / 1000.0
        );
    }
    println!("Protecting a forwarded packet:\n\n{srtp}");
    if let Some(load) = &load {
        println!("Load:\n\n{load}");
    }
    eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
    if quick() {
        eprintln!("HUDDLE_BENCH_QUICK: docs/benchmarks.md left alone");
        return;
    }
    for knob in ["HUDDLE_BENCH_WORKERS", "HUDDLE_BENCH_UDP_GSO"] {
        if std::env::var_os(knob).is_some() {
            eprintln!("{knob}: docs/benchmarks.md left alone");
            return;
        }
    }
    if plan == PLAYERS {
        write_doc("sfu", &section);
    }
    // Only the default plans (the comparison rows come from the SFU plan).
    if let Some(sim) = sim.filter(|_| plan == PLAYERS && sim_plan == SIM_PLAYERS && switching) {
        write_doc("sfu-simulcast", &sim);
    }
    if let Some(load) = load.filter(|_| load_plan == LOAD_PLAYERS && load_workers == LOAD_WORKERS) {
        write_doc("sfu-load", &load);
    }
    write_doc("sfu-srtp", &srtp);
}
