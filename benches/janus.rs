//! Huddle and Janus VideoRoom side by side (`make bench`, `cargo bench --bench janus`):
//! not a test, no assertions about the figures.
//!
//! The load is `benches/sfu.rs`'s (`support::run_load`): one publisher sends H.264 at
//! 2.5 Mbps (30 fps, 1100-byte FU-A packets, a key frame every 2 s) and Opus every 20 ms,
//! each payload stamped with its index and send time; N players receive it and measure
//! latency and loss. Each player has its own signalling session: a Flashphoner Room API
//! WebSocket for Huddle, a Janus API WebSocket (subprotocol `janus-protocol`, the
//! VideoRoom plugin) for Janus. The same figures for both: server CPU from `/proc` over
//! the window, RSS before and after the players, loss, latency, the bench process's own
//! CPU (the clients) and the clients' UDP datagrams.
//!
//! Janus 1.1.2 (Debian's `janus`, configured by `benches/janus/`) never gathers
//! loopback candidates, so the bench runs in network namespaces of its own: it
//! re-executes itself under `unshare --net` (as root; otherwise with
//! `--map-root-user`); that namespace is the clients'. There it makes a second one for
//! the servers, held by an `unshare --net sleep`, and a veth pair between the two:
//! 10.213.0.1 on the servers' side, 10.213.0.2 on the clients' side, addresses that exist
//! only there. Huddle (listening on and advertising 10.213.0.1) and Janus (`-i`/`-E`
//! 10.213.0.1) start in the servers' namespace through `nsenter --net`; every client
//! binds 10.213.0.2, so every datagram of both crosses the veth. Nothing leaves the
//! namespaces; they go with the bench's processes.
//!
//! For each N (`HUDDLE_BENCH_JANUS_PLAYERS`, default 10,30), each repeat
//! (`HUDDLE_BENCH_JANUS_REPEATS`, default 3): a fresh Huddle, a fresh Janus as configured
//! (a loop thread per handle) and a fresh Janus with `event_loops` set
//! (`HUDDLE_BENCH_JANUS_EVENT_LOOPS`, default one per CPU, 0: not run), the order rotated
//! every repeat. The table gives min / median / max over the repeats and the ratio of
//! Huddle's median to each Janus's. Only the default plan writes its section of
//! `docs/benchmarks.md`; `HUDDLE_BENCH_QUICK=1` (short windows) and
//! `HUDDLE_BENCH_JANUS_TWCC=0` (Janus's room without TWCC) print only.

#[path = "../tests/common/webrtc_client.rs"]
mod webrtc_client;

mod support;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use support::{
    clock_ticks_per_sec, command_output, keep_socket, loadavg, machine, plan_from,
    publisher_tracks, quick, recv_json, run_load, run_on, runtime, send_json, spawn, write_doc,
    Keep, Net, Proc, Row, RunCtl, WsStream, AUDIO, EPOCH, STEP, VIDEO,
};
use webrtc_client::{h264, opus, RtcClient};

const PLAYERS: &[usize] = &[10, 30];
const REPEATS: usize = 3;
/// Set in the re-executed bench inside its network namespace.
const IN_NETNS: &str = "HUDDLE_BENCH_IN_NETNS";
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
/// `benches/janus/janus.transport.websockets.jcfg`; a port of the bench's namespace.
const JANUS_WS_PORT: u16 = 8188;
/// `benches/janus/janus.plugin.videoroom.jcfg`: Janus's defaults (TWCC feedback from
/// the subscribers too), and the same without TWCC (`HUDDLE_BENCH_JANUS_TWCC=0`).
const JANUS_ROOM: u64 = 1234;
const JANUS_ROOM_NO_TWCC: u64 = 1235;

/// The VideoRoom room of this run.
fn janus_room() -> u64 {
    if std::env::var("HUDDLE_BENCH_JANUS_TWCC").is_ok_and(|v| v == "0") {
        JANUS_ROOM_NO_TWCC
    } else {
        JANUS_ROOM
    }
}
/// Janus drops a session after `session_timeout` (120 s here) without a request.
const KEEPALIVE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Huddle,
    /// Janus as configured in `benches/janus/` (one event loop thread per handle, its
    /// default), or with `event_loops` set to this many shared loops.
    Janus(Option<usize>),
}

impl Target {
    fn name(self) -> String {
        match self {
            Target::Huddle => "Huddle".into(),
            Target::Janus(None) => "Janus".into(),
            Target::Janus(Some(n)) => format!("Janus, event_loops = {n}"),
        }
    }
}

/// The targets of this run: Huddle, Janus, and Janus with `event_loops` set to
/// `HUDDLE_BENCH_JANUS_EVENT_LOOPS` (default: one per CPU; 0: not run).
fn targets() -> Vec<Target> {
    let loops = std::env::var("HUDDLE_BENCH_JANUS_EVENT_LOOPS").map_or_else(
        |_| std::thread::available_parallelism().map_or(2, |n| n.get()),
        |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("HUDDLE_BENCH_JANUS_EVENT_LOOPS: a number, e.g. 2"))
        },
    );
    let mut t = vec![Target::Huddle, Target::Janus(None)];
    if loops > 0 {
        t.push(Target::Janus(Some(loops)));
    }
    t
}

// ---------------------------------------------------------------------------------
// The network namespace

/// Runs this bench again in a network namespace of its own; exits with its status.
fn reexec_in_netns() -> ! {
    let exe = std::env::current_exe().expect("the bench's own path");
    let root = command_output("id", &["-u"]).as_deref() == Some("0");
    let mut cmd = Command::new("unshare");
    if !root {
        // A user namespace makes the network namespace possible without root.
        cmd.arg("--map-root-user");
    }
    cmd.arg("--net")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(IN_NETNS, "1");
    let status = cmd
        .status()
        .expect("run unshare (util-linux) for the bench's network namespace");
    std::process::exit(status.code().unwrap_or(1));
}

/// In the fresh namespace (the clients'): a second one for the servers, held by a
/// `sleep` (`unshare --net`), and a veth pair between them: `hb0` with the servers'
/// address there, `hb1` with the clients' here (and a multicast route: the clients'
/// mDNS socket joins 224.0.0.251). Returns the holder and the addresses.
fn setup_netns() -> (Proc, Net) {
    let links = command_output("ip", &["-o", "link", "show"])
        .expect("`ip -o link show` (iproute2) runs in the namespace");
    assert!(
        links.lines().count() == 1 && links.contains(": lo:"),
        "not in a fresh network namespace (only lo expected):\n{links}"
    );
    // Bounded: the servers' namespace outlives the bench by an hour at most, should the
    // bench be killed before its `Proc`s are dropped.
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--", "sleep", "3600"]);
    let mut holder = spawn(
        &mut cmd,
        |pid| format!("servers' namespace (pid {pid})"),
        None,
        |_| {},
    )
    .expect("start `unshare --net sleep` for the servers' namespace");
    let ours = std::fs::read_link("/proc/self/ns/net").expect("/proc/self/ns/net");
    let theirs = format!("/proc/{}/ns/net", holder.pid);
    let deadline = Instant::now() + STEP;
    while std::fs::read_link(&theirs).ok().is_none_or(|ns| ns == ours) {
        holder.check_running();
        assert!(
            Instant::now() < deadline,
            "{theirs}: no namespace of its own within {STEP:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (server, client) = (format!("{SERVER_IP}/24"), format!("{CLIENT_IP}/24"));
    let pid = holder.pid.to_string();
    let netns = format!("--net={theirs}");
    let steps: [&[&str]; 10] = [
        &["ip", "link", "set", "lo", "up"],
        &[
            "ip", "link", "add", "hb1", "type", "veth", "peer", "name", "hb0", "netns", &pid,
        ],
        &["ip", "addr", "add", &client, "dev", "hb1"],
        &["ip", "link", "set", "hb1", "up"],
        &["ip", "route", "add", "224.0.0.0/4", "dev", "hb1"],
        &["nsenter", &netns, "ip", "link", "set", "lo", "up"],
        &[
            "nsenter", &netns, "ip", "addr", "add", &server, "dev", "hb0",
        ],
        &["nsenter", &netns, "ip", "link", "set", "hb0", "up"],
        &[
            "nsenter",
            &netns,
            "ip",
            "route",
            "add",
            "224.0.0.0/4",
            "dev",
            "hb0",
        ],
        &["ip", "link", "show", "hb1"],
    ];
    for args in steps {
        let status = Command::new(args[0])
            .args(&args[1..])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(status.success(), "{args:?} failed: {status}");
    }
    let net = Net {
        server: IpAddr::V4(SERVER_IP),
        client: IpAddr::V4(CLIENT_IP),
        server_netns: Some(holder.pid),
        client_udp: Some(client_udp),
    };
    (holder, net)
}

/// UDP datagrams received and sent in this (the clients') namespace so far.
fn client_udp() -> (u64, u64) {
    let snmp = std::fs::read_to_string("/proc/net/snmp").expect("/proc/net/snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        panic!("/proc/net/snmp: no Udp lines in\n{snmp}");
    };
    let field = |name: &str| -> u64 {
        names
            .split_whitespace()
            .position(|n| n == name)
            .and_then(|i| values.split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("/proc/net/snmp: no Udp {name} in\n{snmp}"))
    };
    (field("InDatagrams"), field("OutDatagrams"))
}

/// Packets through the interfaces of the clients' namespace (`/proc/net/dev`, received
/// and sent): (lo, the veth).
fn packets() -> (u64, u64) {
    let dev = std::fs::read_to_string("/proc/net/dev").expect("/proc/net/dev");
    let (mut lo, mut veth) = (0, 0);
    for line in dev.lines().skip(2) {
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
        let fields: Vec<u64> = fields
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let (Some(rx), Some(tx)) = (fields.get(1), fields.get(9)) else {
            panic!("/proc/net/dev: no packet counts in {line:?}");
        };
        match name.trim() {
            "lo" => lo += rx + tx,
            "hb1" => veth += rx + tx,
            _ => {}
        }
    }
    (lo, veth)
}

// ---------------------------------------------------------------------------------
// The Janus process

struct Janus {
    proc: Proc,
    /// Log lines with [ERR], or [WARN] once it runs (the first few are echoed).
    warnings: Arc<AtomicU64>,
}

impl Janus {
    /// `janus -F benches/janus` in the servers' namespace, candidates and SDP address
    /// `net.server` only; with `event_loops`, from a copy of the configuration that sets
    /// them. Waits until its WebSocket transport is up.
    fn start(net: Net, event_loops: Option<usize>) -> Janus {
        let mut configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/janus");
        let mut dir = None;
        if let Some(n) = event_loops {
            let copy = std::env::temp_dir().join(format!("janus-bench-{}", std::process::id()));
            std::fs::create_dir_all(&copy).expect("temp dir");
            for entry in std::fs::read_dir(&configs).expect("benches/janus") {
                let from = entry.expect("benches/janus entry").path();
                let to = copy.join(from.file_name().expect("a file name"));
                std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {from:?}: {e}"));
            }
            let jcfg = copy.join("janus.jcfg");
            let text = std::fs::read_to_string(&jcfg).expect("janus.jcfg");
            let general = "general: {\n";
            assert!(text.contains(general), "janus.jcfg: no {general:?}");
            let text = text.replacen(general, &format!("{general}\tevent_loops = {n}\n"), 1);
            std::fs::write(&jcfg, text).expect("write janus.jcfg");
            configs = copy.clone();
            dir = Some(copy);
        }
        let ip = net.server.to_string();
        let mut cmd = net.server_command("sh");
        // Janus logs to stdout; `spawn` reads stderr.
        cmd.args(["-c", "exec \"$0\" \"$@\" 1>&2", "janus", "-F"])
            .arg(&configs)
            .args(["-i", &ip, "-E", &ip, "-o"]);
        let warnings = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std_mpsc::channel::<()>();
        let w = Arc::clone(&warnings);
        let mut up = false;
        let proc = spawn(
            &mut cmd,
            |pid| format!("janus (pid {pid})"),
            dir,
            move |line| {
                if line.contains("WebSockets thread started") {
                    up = true;
                    let _ = tx.send(());
                }
                // Not counted: the start-up's "plugin ... has been disabled", and "Failed to
                // add some remote candidates (added 1, expected 2)", logged for some handles
                // of each run although the SDP has one candidate and ICE connects.
                let bad = line.contains("[ERR]")
                    || (up
                        && line.contains("[WARN]")
                        && !line.contains("has been disabled")
                        && !line.contains("Failed to add some remote candidates"));
                if bad && w.fetch_add(1, Ordering::Relaxed) < 10 {
                    eprintln!("  [janus] {line}");
                }
            },
        )
        .expect("start janus (the Debian package `janus`: scripts/install-deps.sh bench)");
        let mut janus = Janus { proc, warnings };
        if rx.recv_timeout(STEP).is_err() {
            janus.proc.check_running();
            panic!("janus: WebSocket transport not up within {STEP:?}");
        }
        janus
    }
}

// ---------------------------------------------------------------------------------
// The Janus API over WebSocket

/// One Janus session on its own WebSocket.
struct JanusApi {
    ws: WsStream,
    name: String,
    session: u64,
    next: u64,
}

impl JanusApi {
    /// Connects (subprotocol `janus-protocol`) and creates a session.
    async fn connect(ip: IpAddr, name: &str) -> JanusApi {
        let url = format!("ws://{ip}:{JANUS_WS_PORT}/");
        let mut request = url
            .as_str()
            .into_client_request()
            .unwrap_or_else(|e| panic!("{name}: request for {url}: {e}"));
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("janus-protocol"),
        );
        let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(request))
            .await
            .unwrap_or_else(|_| panic!("{name}: Janus WebSocket handshake timed out"))
            .unwrap_or_else(|e| panic!("{name}: Janus WebSocket handshake: {e}"));
        let mut api = JanusApi {
            ws,
            name: name.to_owned(),
            session: 0,
            next: 0,
        };
        let r = api.request(json!({"janus": "create"})).await;
        api.session = r["data"]["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: create without a session id: {r}"));
        api
    }

    async fn send(&mut self, v: Value) {
        send_json(&mut self.ws, &self.name, v).await;
    }

    async fn recv(&mut self) -> Value {
        recv_json(&mut self.ws, &self.name).await
    }

    /// Sends `msg` with a fresh transaction (and the session); returns the first reply
    /// to it that is not an `ack` (a plugin's asynchronous `event` included). An error
    /// from Janus or the plugin is fatal.
    async fn request(&mut self, mut msg: Value) -> Value {
        self.next += 1;
        let transaction = format!("{}-{}", self.name, self.next);
        msg["transaction"] = transaction.as_str().into();
        if self.session != 0 {
            msg["session_id"] = self.session.into();
        }
        self.send(msg.clone()).await;
        loop {
            let v = self.recv().await;
            if v["transaction"] != transaction.as_str() || v["janus"] == "ack" {
                continue;
            }
            assert!(
                v["janus"] != "error" && v["plugindata"]["data"]["error"].is_null(),
                "{}: Janus refused {msg}:\n{v}",
                self.name
            );
            return v;
        }
    }

    /// A VideoRoom handle.
    async fn attach(&mut self) -> u64 {
        let r = self
            .request(json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))
            .await;
        r["data"]["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: attach without a handle id: {r}", self.name))
    }

    /// A VideoRoom request on `handle`, with `jsep` if any; the plugin's reply.
    async fn message(&mut self, handle: u64, body: Value, jsep: Option<(&str, &str)>) -> Value {
        let mut msg = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some((kind, sdp)) = jsep {
            msg["jsep"] = json!({"type": kind, "sdp": sdp});
        }
        self.request(msg).await
    }

    /// No more candidates than those in our SDP (Janus only acks it).
    async fn candidates_done(&mut self, handle: u64) {
        self.next += 1;
        let msg = json!({
            "janus": "trickle",
            "session_id": self.session,
            "handle_id": handle,
            "transaction": format!("{}-{}", self.name, self.next),
            "candidate": {"completed": true},
        });
        self.send(msg).await;
    }

    /// Keeps the session alive until `stop` (a keepalive every 20 s); counts a hangup,
    /// a detached handle, a session timeout or a socket that ended in `incidents`.
    fn keep_alive(self, stop: watch::Receiver<bool>, incidents: Arc<AtomicU64>) -> JoinHandle<()> {
        let (session, name, mut next) = (self.session, self.name.clone(), self.next);
        let keepalive = move || {
            next += 1;
            json!({"janus": "keepalive", "session_id": session, "transaction": format!("{name}-{next}")})
        };
        let keep = Keep {
            reply: |_| None,
            incident: |v| matches!(v["janus"].as_str(), Some("hangup" | "detached" | "timeout")),
            keepalive: Some((KEEPALIVE, Box::new(keepalive))),
        };
        keep_socket(self.ws, self.name, stop, incidents, keep)
    }
}

/// An SDP with its candidates in the first m-section only, and only those of component
/// 1: the client lists them in every bundled m-section and for RTCP too although it
/// multiplexes RTCP (`a=rtcp-mux`), and Janus warns about each it cannot add.
fn candidates_once(sdp: &str) -> String {
    let mut section = 0;
    sdp.split("\r\n")
        .filter(|l| {
            if l.starts_with("m=") {
                section += 1;
            }
            l.strip_prefix("a=candidate:")
                .is_none_or(|c| section == 1 && c.split_whitespace().nth(1) == Some("1"))
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// The publisher in the VideoRoom: joined, published (its offer, candidates
/// included), connected. Returns its feed id too.
async fn janus_publish(net: Net) -> (JanusApi, RtcClient, u64) {
    let mut api = JanusApi::connect(net.server, "pub").await;
    let handle = api.attach().await;
    let join =
        json!({"request": "join", "ptype": "publisher", "room": janus_room(), "display": "pub"});
    let r = api.message(handle, join, None).await;
    let feed = r["plugindata"]["data"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("pub: join without a publisher id: {r}"));
    let mut pc = RtcClient::publisher_on("pub-pc", &publisher_tracks(), net.transport()).await;
    pc.create_offer().await;
    let offer = candidates_once(&pc.local_sdp().await);
    let publish = json!({"request": "publish", "audio": true, "video": true});
    let r = api.message(handle, publish, Some(("offer", &offer))).await;
    let answer = r["jsep"]["sdp"]
        .as_str()
        .unwrap_or_else(|| panic!("pub: publish without an answer: {r}"));
    pc.apply_answer(answer).await;
    api.candidates_done(handle).await;
    pc.wait_connected(STEP).await;
    (api, pc, feed)
}

/// A subscriber of `feed`: Janus offers, the player answers (`start`), connected.
async fn janus_play(net: Net, login: &str, feed: u64) -> (JanusApi, RtcClient) {
    let mut api = JanusApi::connect(net.server, login).await;
    let handle = api.attach().await;
    let join = json!({
        "request": "join", "ptype": "subscriber", "room": janus_room(),
        "streams": [{"feed": feed}],
    });
    let r = api.message(handle, join, None).await;
    let offer = r["jsep"]["sdp"]
        .as_str()
        .unwrap_or_else(|| panic!("{login}: subscriber join without an offer: {r}"));
    let mut pc = RtcClient::player_on(
        &format!("{login}-pc"),
        &[(AUDIO, opus(111)), (VIDEO, h264(106))],
        net.transport(),
    )
    .await;
    let answer = candidates_once(&pc.answer_offer(offer).await);
    let start = json!({"request": "start", "room": janus_room()});
    api.message(handle, start, Some(("answer", &answer))).await;
    api.candidates_done(handle).await;
    pc.wait_connected(STEP).await;
    (api, pc)
}

/// One publisher -> `players` on a fresh Janus (`support::run_on` is Huddle's).
async fn run_janus(players: usize, ticks: f64, net: Net, event_loops: Option<usize>) -> Row {
    let janus = Janus::start(net, event_loops);
    let pid = janus.proc.pid;
    eprintln!("N = {players}: janus pid {pid}");
    let ctl = RunCtl::new(net);
    let (stop, incidents) = (ctl.stop.clone(), Arc::clone(&ctl.incidents));
    let (api, pc, feed) = janus_publish(net).await;
    let publisher = (api.keep_alive(stop.clone(), Arc::clone(&incidents)), pc);
    let play = async |i: usize| {
        let (api, pc) = janus_play(net, &format!("p{i:02}"), feed).await;
        (api.keep_alive(stop.clone(), Arc::clone(&incidents)), pc)
    };
    let stop_server = move || {
        let warnings = janus.warnings.load(Ordering::Relaxed);
        janus.proc.stop(true);
        warnings
    };
    run_load(ctl, pid, publisher, players, play, ticks, stop_server).await
}

// ---------------------------------------------------------------------------------
// Report

struct Run {
    target: Target,
    repeat: usize,
    row: Row,
    /// Packets through the clients' interfaces over the whole run: (lo, the veth).
    path: (u64, u64),
}

/// (min, median, max); NaN for none.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median, v[n - 1])
}

/// "median (min–max)" with `decimals`.
fn cell((min, median, max): (f64, f64, f64), decimals: usize) -> String {
    format!("{median:.decimals$} ({min:.decimals$}–{max:.decimals$})")
}

fn ratio(h: f64, j: f64) -> String {
    if j > 0.0 && h.is_finite() && j.is_finite() {
        format!("{:.2}", h / j)
    } else {
        "–".into()
    }
}

/// A figure of a row.
type Figure = (&'static str, usize, fn(&Row) -> f64);

const FIGURES: [Figure; 10] = [
    ("server CPU, % of one core", 1, |r| {
        100.0 * r.server_cpu_s / r.secs
    }),
    ("of which kernel, %", 1, |r| 100.0 * r.server_sys_s / r.secs),
    ("server CPU per forwarded packet, µs", 1, |r| {
        r.us_per_forwarded()
    }),
    ("RSS per player, KiB", 0, |r| r.rss_per_player_kib()),
    ("loss, %", 3, |r| r.loss_pct()),
    ("latency p50, ms", 2, |r| r.p50_ms),
    ("latency p99, ms", 2, |r| r.p99_ms),
    ("bench process (clients) CPU, % of one core", 0, |r| {
        100.0 * r.client_cpu_s / r.secs
    }),
    ("UDP datagrams/s to the clients", 0, |r| {
        r.client_udp.map_or(f64::NAN, |u| u.0 as f64 / r.secs)
    }),
    ("UDP datagrams/s from the clients", 0, |r| {
        r.client_udp.map_or(f64::NAN, |u| u.1 as f64 / r.secs)
    }),
];

/// The targets that ran, in their first run's order, Huddle first.
fn targets_of(runs: &[Run]) -> Vec<Target> {
    let mut t = vec![Target::Huddle];
    for r in runs {
        if !t.contains(&r.target) {
            t.push(r.target);
        }
    }
    t
}

fn of(runs: &[Run], target: Target, players: usize) -> Vec<&Row> {
    runs.iter()
        .filter(|r| r.target == target && r.row.players == players)
        .map(|r| &r.row)
        .collect()
}

/// Marginal server CPU per added forwarded packet from N = `a` to `b`, per repeat.
fn marginal(runs: &[Run], target: Target, a: usize, b: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for small in runs
        .iter()
        .filter(|r| r.target == target && r.row.players == a)
    {
        let Some(big) = runs
            .iter()
            .find(|r| r.target == target && r.row.players == b && r.repeat == small.repeat)
        else {
            continue;
        };
        let (s, l) = (&small.row, &big.row);
        let cpu = l.server_cpu_s / l.secs - s.server_cpu_s / s.secs;
        let pkts = l.sent() as f64 / l.secs * b as f64 - s.sent() as f64 / s.secs * a as f64;
        out.push(cpu * 1e6 / pkts);
    }
    out
}

fn section(
    machine_line: &str,
    load: (&str, &str),
    plan: &[usize],
    runs: &[Run],
    repeats: usize,
) -> String {
    let targets: Vec<Target> = targets_of(runs);
    let janus = &targets[1..];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {machine_line}; load average (1/5/15 min) {} at the start, {} at the end. {repeats} runs per point, the targets alternating (the order rotated every run). Cells: median (min–max) over the runs; ratio: Huddle / that Janus of the medians (below 1: Huddle's figure is smaller).\n",
        load.0, load.1
    );
    let names: Vec<String> = targets.iter().map(|t| t.name()).collect();
    let ratios: Vec<String> = janus
        .iter()
        .map(|t| format!("ratio to {}", t.name()))
        .collect();
    let _ = writeln!(
        s,
        "| players | figure | {} | {} |",
        names.join(" | "),
        ratios.join(" | ")
    );
    let _ = writeln!(
        s,
        "|---:|---|{}{}",
        "---:|".repeat(targets.len()),
        "---:|".repeat(janus.len())
    );
    let line = |s: &mut String, what: &str, spreads: &[(f64, f64, f64)], decimals: usize| {
        let cells: Vec<String> = spreads.iter().map(|x| cell(*x, decimals)).collect();
        let ratios: Vec<String> = spreads[1..]
            .iter()
            .map(|j| ratio(spreads[0].1, j.1))
            .collect();
        let _ = writeln!(
            s,
            "| {what} | {} | {} |",
            cells.join(" | "),
            ratios.join(" | ")
        );
    };
    for &n in plan {
        let rows: Vec<Vec<&Row>> = targets.iter().map(|&t| of(runs, t, n)).collect();
        let pps = |rows: &[&Row]| spread(rows.iter().map(|r| r.sent() as f64 / r.secs).collect());
        let spreads: Vec<_> = rows.iter().map(|r| pps(r)).collect();
        line(&mut s, &format!("{n} | in: packets/s"), &spreads, 0);
        for (name, decimals, f) in FIGURES {
            let spreads: Vec<_> = rows
                .iter()
                .map(|r| spread(r.iter().map(|r| f(r)).collect()))
                .collect();
            line(&mut s, &format!("{n} | {name}"), &spreads, decimals);
        }
    }
    for pair in plan.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let spreads: Vec<_> = targets
            .iter()
            .map(|&t| spread(marginal(runs, t, a, b)))
            .collect();
        let what = format!("{a} → {b} | marginal server CPU per added forwarded packet, µs");
        line(&mut s, &what, &spreads, 1);
    }
    let mut notes = Vec::new();
    for &target in &targets {
        let (lo, veth) = runs
            .iter()
            .filter(|r| r.target == target)
            .fold((0, 0), |a, r| (a.0 + r.path.0, a.1 + r.path.1));
        notes.push(format!(
            "{}: of the packets through the clients' interfaces during its runs (received and sent), {:.1} % went through `lo`, {:.1} % through the veth.",
            target.name(),
            100.0 * lo as f64 / (lo + veth).max(1) as f64,
            100.0 * veth as f64 / (lo + veth).max(1) as f64
        ));
    }
    for r in runs
        .iter()
        .filter(|r| r.row.incidents > 0 || r.row.server_warnings > 0)
    {
        notes.push(format!(
            "{}, N = {}, run {}: {} stream incidents (stopped/failed/hangup/socket ended), {} server WARN/ERROR lines.",
            r.target.name(),
            r.row.players,
            r.repeat + 1,
            r.row.incidents,
            r.row.server_warnings
        ));
    }
    if !notes.is_empty() {
        s.push('\n');
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

fn main() {
    if std::env::var_os(IN_NETNS).is_none() {
        reexec_in_netns();
    }
    EPOCH.get_or_init(Instant::now);
    let (holder, net) = setup_netns();
    let plan = plan_from("HUDDLE_BENCH_JANUS_PLAYERS", PLAYERS);
    let repeats = std::env::var("HUDDLE_BENCH_JANUS_REPEATS").map_or(REPEATS, |v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("HUDDLE_BENCH_JANUS_REPEATS: a number, e.g. 3"))
    });
    let ticks = clock_ticks_per_sec();
    let rt = runtime();
    let started = Instant::now();
    let load_before = loadavg();
    let mut runs = Vec::new();
    let targets = targets();
    for repeat in 0..repeats {
        for &players in &plan {
            let mut order = targets.clone();
            order.rotate_left(repeat % targets.len());
            for target in order {
                eprintln!("run {} of {repeats}, {}:", repeat + 1, target.name());
                let before = packets();
                let row = match target {
                    Target::Huddle => rt.block_on(run_on(players, ticks, net)),
                    Target::Janus(loops) => rt.block_on(run_janus(players, ticks, net, loops)),
                };
                let after = packets();
                runs.push(Run {
                    target,
                    repeat,
                    row,
                    path: (after.0 - before.0, after.1 - before.1),
                });
            }
        }
    }
    drop(rt);
    holder.stop(false);
    let load = (load_before.as_str(), loadavg());
    let mut section = section(&machine(), (load.0, &load.1), &plan, &runs, repeats);
    if janus_room() != JANUS_ROOM {
        section.insert_str(
            0,
            "Janus's room without TWCC (HUDDLE_BENCH_JANUS_TWCC=0).\n\n",
        );
    }
    println!("\n{section}");
    eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
    if quick() {
        eprintln!("HUDDLE_BENCH_QUICK: docs/benchmarks.md left alone");
    } else if plan == PLAYERS && repeats == REPEATS && janus_room() == JANUS_ROOM {
        write_doc("janus", &section);
    }
}
