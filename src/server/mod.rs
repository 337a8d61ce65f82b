//! The I/O edge of the service: the HTTP listener (web page, `/health`, WebSocket
//! upgrade), one task per WebSocket session, and the task that owns the room core.
//!
//! Shutdown follows mini-redis: a watch channel tells every task to stop, the room
//! core closes every session and finalizes every room, and each session task holds
//! a clone of `alive` so `shutdown` can wait until every socket got its close frame.

mod access;
pub(crate) mod api;
mod client;
pub(crate) mod control;
mod driver;
mod http;
mod listener;
mod member;
mod recording;
mod records;
mod rtmp_edge;
mod rtmp_push;
mod session;
mod speaker;
pub mod tls;
pub mod webhooks;
mod whip;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::device::{Device, Participant, Policy};
use crate::rooms::{Core, Stats};
use crate::sfu::Sfu;

pub use driver::ToCore;

/// How long `shutdown` waits for session sockets to flush their close frames.
const SESSION_DRAIN: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Media(#[from] crate::sfu::SfuError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    // The OS error is part of the message, not a `source`: printed as a chain, it
    // would appear twice.
    #[error("cannot listen on {addr} ([{table}] {key}): {why}{}", bind_hint(*addr, table, key, why))]
    Bind {
        addr: SocketAddr,
        table: &'static str,
        key: &'static str,
        why: std::io::Error,
    },
}

fn bind_hint(addr: SocketAddr, table: &str, key: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            " (ports below 1024 need CAP_NET_BIND_SERVICE: install systemd/port-below-1024.conf as a drop-in of huddle.service)".into()
        }
        std::io::ErrorKind::AddrInUse => format!(
            " (another program, or another huddle, uses port {}: stop it or set [{table}] {key} to another address)",
            addr.port()
        ),
        _ => String::new(),
    }
}

/// State shared by the HTTP handlers and session tasks.
#[derive(Clone)]
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub to_core: mpsc::Sender<ToCore>,
    pub stats: watch::Receiver<Stats>,
    pub next_session: Arc<AtomicU64>,
    /// Live WebRTC peer connections of the SFU.
    pub media_peers: Arc<AtomicUsize>,
    /// Checks `custom.token` of each `connection`.
    pub authority: Arc<crate::auth::Authority>,
    /// Held by every session task; closed when all of them are gone.
    pub alive: mpsc::Sender<()>,
    /// Connections and sessions per source address.
    pub admission: Arc<listener::Admission>,
    /// Which web pages may open the signalling WebSocket.
    pub origins: Arc<http::OriginPolicy>,
    /// The record files being written now.
    pub live: Arc<crate::record::live::Live>,
    /// What the admin API acts on.
    pub control: control::Control,
    /// The media engine's counters (`/metrics`).
    pub media_counters: Arc<crate::metrics::MediaCounters>,
    /// The service's events (webhooks).
    pub events: crate::events::Events,
    /// Signalling messages and refusals, counted by the sessions (`/metrics`).
    pub signalling_counters: Arc<crate::metrics::SignallingCounters>,
    /// How loud each remote stream the device's speaker plays is (the room display).
    pub levels: crate::device::levels::Levels,
    /// The media engine's advertised addresses (the web app's invite link).
    pub advertised: Arc<[std::net::IpAddr]>,
    /// The bound HTTP and HTTPS ports (the invite link).
    pub ports: client::Ports,
}

/// A running service.
pub struct Server {
    /// Plain HTTP, if on.
    addr: Option<SocketAddr>,
    /// HTTPS, if on.
    tls_addr: Option<SocketAddr>,
    /// RTMP, if on.
    rtmp_addr: Option<SocketAddr>,
    /// The RTMP accept loop, if on (aborted at shutdown).
    rtmp: Option<JoinHandle<()>>,
    /// `[[rtmp.push]]` and the pushes of the admin API.
    pushes: rtmp_push::PushRegistry,
    /// The record files being written now (filled by the recorder).
    live_records: Arc<crate::record::live::Live>,
    /// The retention task, when `[records] max_age_days` or `max_total_mb` is set.
    retention: Option<JoinHandle<()>>,
    /// Recordings and the mixer (none when `[records] dir` is unusable).
    recording: Option<recording::RecordingTask>,
    certificate: Option<Arc<tls::DeviceCert>>,
    media_port: u16,
    media_peers: Arc<AtomicUsize>,
    stats: watch::Receiver<Stats>,
    shutdown: watch::Sender<bool>,
    alive: mpsc::Receiver<()>,
    to_core: mpsc::Sender<ToCore>,
    listeners: Vec<JoinHandle<()>>,
    driver: JoinHandle<()>,
    /// The camera and microphone threads, when the device has any.
    device: Option<Device>,
    /// The speaker thread, when the device has a speaker.
    speaker: Option<crate::device::speaker::Speaker>,
    /// Liveness of the SFU task.
    media: crate::sfu::task::SfuProbe,
    /// The `[[webhooks]]` delivery tasks (flushed, then stopped, at shutdown).
    webhooks: Option<webhooks::Webhooks>,
}

/// Why a heartbeat found the service unwell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    /// A part did not answer in time: the watchdog must not be fed (systemd restarts
    /// the service when it stays so).
    Hung(String),
    /// A long-lived task or thread is gone (a panic): the service must stop so that
    /// systemd restarts it, never run on as a zombie.
    Dead(String),
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unhealthy::Hung(why) | Unhealthy::Dead(why) => f.write_str(why),
        }
    }
}

async fn bind(
    addr: SocketAddr,
    table: &'static str,
    key: &'static str,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |why| StartError::Bind {
        addr,
        table,
        key,
        why,
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

impl Server {
    /// Binds `[http] listen` and `tls_listen`, the media port, and starts serving.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let plain = match config.http.plain {
            true => Some(bind(config.http.listen, "http", "listen").await?),
            false => None,
        };
        let secure = match config.http.tls {
            true => Some(bind(config.http.tls_listen, "http", "tls_listen").await?),
            false => None,
        };
        let rtmp = match config.rtmp.enabled {
            true => Some(bind(config.rtmp.listen, "rtmp", "listen").await?),
            false => None,
        };

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (stats_tx, stats_rx) = watch::channel(Stats::default());
        let (alive_tx, alive_rx) = mpsc::channel(1);
        let (to_core, from_sessions) = mpsc::channel(1024);
        let (media_events_tx, media_events) = mpsc::channel(4096);
        let sfu = Sfu::start(&config.media, media_events_tx).await?;
        let media_port = sfu.port();
        let media = sfu.probe();
        let media_peers = sfu.peers();
        let media_counters = sfu.counters();
        let (events, webhooks) = webhooks::start(&config.webhooks);
        let advertised = sfu.advertised().to_vec();
        let certificate = match config.http.tls {
            true => {
                let h = &config.http;
                let source = tls::CertSource::prepare(
                    &h.tls_cert,
                    &h.tls_key,
                    &h.tls_dir,
                    sfu.advertised(),
                )?;
                Some(tls::DeviceCert::new(source)?)
            }
            false => None,
        };
        let authority = Arc::new(crate::auth::Authority::new(&config.auth)?);
        let core = Core::new(config.core());
        let endpoints = sfu.endpoints();
        // Probing cameras and GStreamer's plugin registry may take a moment.
        // Registered before any request can reach the media task.
        let levels = crate::device::levels::Levels::default();
        let echo = crate::device::echo::from_config(&config.device);
        let device = match sfu.add_source(crate::device::SOURCE, crate::device::UNAVAILABLE) {
            Some(feed) => {
                let device_cfg = config.device.clone();
                let echo = echo.clone();
                tokio::task::spawn_blocking(move || Device::start(&device_cfg, feed, echo))
                    .await
                    .unwrap_or_else(|e| {
                        warn!("device: start failed: {e}");
                        None
                    })
            }
            None => {
                warn!("device: the media task does not take its source");
                None
            }
        };
        let participant = device.as_ref().map(|_| {
            Participant::new(Policy {
                login: config.device.login.clone(),
                rooms: config.device.rooms.clone(),
                join_new_rooms: config.device.join_new_rooms,
                record: config.device.record,
            })
        });
        // The speaker plays the rooms the device participant is in.
        let speaker_thread = match &participant {
            Some(_) => crate::device::speaker::Speaker::start(&config.device, levels.clone(), echo),
            None => None,
        };
        let hearing = speaker_thread
            .as_ref()
            .map(|s| speaker::SpeakerWiring::start(endpoints.clone(), s.handle()));
        let pushes = rtmp_push::PushRegistry::start_config(&endpoints, &config.rtmp.push);
        // Capture on demand: the driver starts the sources when the device has company,
        // a push of its stream or an operator's recording.
        let capture = device
            .as_ref()
            .map(|d| driver::OnDemand::new(d.control(), &config.device, pushes.pushed_streams()));
        let live_records = Arc::new(crate::record::live::Live::new());
        let (recordings, recording) = recording::RecordingTask::start(
            &config.records,
            endpoints.clone(),
            live_records.clone(),
            events.clone(),
        );
        let driver = tokio::spawn(driver::run(
            core,
            from_sessions,
            stats_tx,
            (sfu, media_events),
            driver::Others {
                device: participant,
                speaker: hearing,
                recordings: recordings.clone(),
                events: events.clone(),
                capture,
            },
        ));

        let admission = listener::Admission::new(listener::Limits::from_config(&config));
        let origins = Arc::new(http::OriginPolicy::new(
            &config.http.allowed_origins,
            &advertised,
        ));
        let next_session = Arc::new(AtomicU64::new(1));
        let control = control::Control {
            to_core: to_core.clone(),
            endpoints: endpoints.clone(),
            recordings,
            pushes: pushes.clone(),
            device: device.as_ref().map(Device::control),
        };
        let mut rtmp_addr = None;
        let mut rtmp_task = None;
        if let Some((listener, bound)) = rtmp {
            let edge = rtmp_edge::RtmpEdge::new(
                authority.clone(),
                to_core.clone(),
                endpoints,
                next_session.clone(),
            );
            rtmp_task = Some(tokio::spawn(crate::rtmp::server::serve(
                listener,
                config.rtmp.clone(),
                Arc::new(edge),
            )));
            info!("listening on rtmp://{bound}/<room>/<login> (RTMP publishers)");
            rtmp_addr = Some(bound);
        }
        let retention = crate::record::retention::spawn(
            config.records.dir.clone(),
            live_records.clone(),
            config.records.max_age_days,
            config.records.max_total_mb,
        );
        let shared = Shared {
            control,
            media_counters,
            events,
            signalling_counters: Arc::default(),
            levels,
            advertised: advertised.clone().into(),
            ports: client::Ports {
                plain: plain.as_ref().map(|(_, bound)| bound.port()),
                tls: secure.as_ref().map(|(_, bound)| bound.port()),
            },
            live: live_records.clone(),
            admission: admission.clone(),
            origins,
            config: Arc::new(config),
            to_core: to_core.clone(),
            stats: stats_rx.clone(),
            next_session,
            media_peers,
            authority,
            alive: alive_tx,
        };
        let shared_peers = shared.media_peers.clone();
        let app = http::router(shared);
        let mut listeners = Vec::new();
        let mut addr = None;
        if let Some((listener, bound)) = plain {
            listeners.push(tokio::spawn(listener::serve(
                listener,
                None,
                app.clone(),
                admission.clone(),
                shutdown_rx.clone(),
            )));
            info!("listening on http://{bound} (WebSocket signalling on ws://{bound}/)");
            addr = Some(bound);
        }
        let mut tls_addr = None;
        if let (Some((listener, bound)), Some(cert)) = (secure, &certificate) {
            let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config()?);
            listeners.push(tokio::spawn(listener::serve(
                listener,
                Some(acceptor),
                app,
                admission,
                shutdown_rx,
            )));
            info!("listening on https://{bound} (WebSocket signalling on wss://{bound}/)");
            tls_addr = Some(bound);
        }
        Ok(Server {
            addr,
            tls_addr,
            rtmp_addr,
            rtmp: rtmp_task,
            pushes,
            live_records,
            retention,
            recording,
            certificate,
            media_port,
            media_peers: shared_peers,
            stats: stats_rx,
            shutdown: shutdown_tx,
            alive: alive_rx,
            to_core,
            listeners,
            driver,
            device,
            speaker: speaker_thread,
            media,
            webhooks: Some(webhooks),
        })
    }

    /// The plain HTTP address, or the HTTPS one when plain HTTP is off.
    pub fn local_addr(&self) -> SocketAddr {
        match (self.addr, self.tls_addr) {
            (Some(a), _) | (None, Some(a)) => a,
            // `Config::validate` refuses a configuration with neither.
            (None, None) => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// The HTTPS/WSS address, if HTTPS is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The RTMP address, if `[rtmp] enabled`.
    pub fn rtmp_addr(&self) -> Option<SocketAddr> {
        self.rtmp_addr
    }

    /// The names of the record files being written now: the recorder inserts a file when
    /// it opens it and removes it when it is finalized; the records listing and retention
    /// read it.
    pub fn live_records(&self) -> Arc<crate::record::live::Live> {
        self.live_records.clone()
    }

    /// Re-reads the certificate files (SIGHUP); sessions are not touched.
    pub fn reload_certificate(&self) {
        if let Some(cert) = &self.certificate {
            cert.reload();
        }
    }

    /// The UDP port of the media (WebRTC) socket.
    pub fn media_port(&self) -> u16 {
        self.media_port
    }

    /// Live WebRTC peer connections.
    pub fn media_peers(&self) -> usize {
        self.media_peers.load(Ordering::Relaxed)
    }

    /// Live counts of sessions, rooms, participants and streams.
    pub fn stats(&self) -> Stats {
        *self.stats.borrow()
    }

    /// Checks every long-lived part: the room core task and the SFU task answer a
    /// probe within `timeout`, the HTTP listeners run, the device's capture threads
    /// come round their loops. Gives the core's counts when all is well.
    pub async fn heartbeat(&self, timeout: Duration) -> Result<Stats, Unhealthy> {
        use crate::sfu::task::Liveness;
        if self.driver.is_finished() {
            return Err(Unhealthy::Dead("the room core task ended".into()));
        }
        if self.listeners.iter().any(JoinHandle::is_finished) {
            return Err(Unhealthy::Dead("an HTTP listener task ended".into()));
        }
        if self.rtmp.as_ref().is_some_and(JoinHandle::is_finished) {
            return Err(Unhealthy::Dead("the RTMP listener task ended".into()));
        }
        let checks = self
            .device
            .as_ref()
            .map(Device::check)
            .into_iter()
            .chain(self.speaker.as_ref().map(|s| s.check()));
        for check in checks {
            check.map_err(|t| match t {
                crate::device::Trouble::Dead(why) => Unhealthy::Dead(format!("device: {why}")),
                crate::device::Trouble::Hung(why) => Unhealthy::Hung(format!("device: {why}")),
            })?;
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let core = async {
            self.to_core.send(ToCore::Heartbeat(reply)).await.ok()?;
            answer.await.ok()
        };
        let (core, media) = tokio::join!(
            tokio::time::timeout(timeout, core),
            self.media.ping(timeout)
        );
        match media {
            Liveness::Alive => {}
            Liveness::Dead => return Err(Unhealthy::Dead("the media (SFU) task ended".into())),
            Liveness::Hung => {
                return Err(Unhealthy::Hung(format!(
                    "the media (SFU) task did not answer within {timeout:?}"
                )))
            }
        }
        match core {
            Ok(Some(stats)) => Ok(stats),
            Ok(None) => Err(Unhealthy::Dead("the room core task ended".into())),
            Err(_) => Err(Unhealthy::Hung(format!(
                "the room core did not answer within {timeout:?}"
            ))),
        }
    }

    /// Graceful stop: sessions are closed (code 1001), rooms finalized, sockets
    /// flushed (bounded by a few seconds).
    pub async fn shutdown(mut self) {
        info!("shutting down");
        let _ = self.shutdown.send(true);
        // No new RTMP connections; running publishers leave when the core stops.
        if let Some(rtmp) = self.rtmp.take() {
            rtmp.abort();
        }
        if let Some(retention) = self.retention.take() {
            retention.abort();
        }
        let _ = self.to_core.send(ToCore::Shutdown).await;
        if let Err(e) = self.driver.await {
            warn!("room core task ended abnormally: {e}");
        }
        // The rooms are closed and their streams ended: the device's sources stop
        // without failing a stream (no "media source ended" warning on every stop).
        if let Some(speaker) = self.speaker.take() {
            let _ = tokio::task::spawn_blocking(move || speaker.stop()).await;
        }
        if let Some(device) = self.device.take() {
            let _ = tokio::task::spawn_blocking(move || device.stop()).await;
        }
        // The media engine is gone with the core: the pushes' and the recordings'
        // streams have ended.
        self.pushes.shutdown().await;
        if let Some(recording) = self.recording.take() {
            recording.stop().await;
        }
        // Every event is emitted now (rooms finalized, recordings finished): the
        // receivers get a short grace to take what is queued.
        if let Some(webhooks) = self.webhooks.take() {
            webhooks.stop().await;
        }
        for listener in self.listeners {
            if let Err(e) = listener.await {
                warn!("HTTP task ended abnormally: {e}");
            }
        }
        if tokio::time::timeout(SESSION_DRAIN, self.alive.recv())
            .await
            .is_err()
        {
            warn!("some sessions did not close within {SESSION_DRAIN:?}");
        }
        info!("stopped");
    }
}

/// What the server's own unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::config::Config;

    /// Loopback only; the device's test pattern (320x240) and tone publish in room `r`;
    /// records under `records`.
    pub fn device_config(records: &std::path::Path) -> Config {
        let mut c = Config::default();
        c.http.listen = "127.0.0.1:0".parse().expect("address");
        c.http.tls = false;
        c.media.advertise_ips = vec!["127.0.0.1".parse().expect("address")];
        c.media.udp_port = 0;
        c.rtmp.listen = "127.0.0.1:0".parse().expect("address");
        c.rtmp.max_connections_per_address = c.rtmp.max_connections;
        c.device.camera = "test-pattern".into();
        c.device.microphone = "tone".into();
        c.device.width = 320;
        c.device.height = 240;
        c.device.framerate = 15;
        c.device.bitrate_kbps = 300;
        c.device.rooms = vec!["r".into()];
        c.device.join_new_rooms = false;
        c.records.dir = records.to_path_buf();
        c
    }
}
