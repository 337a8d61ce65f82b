//! The I/O edge of the service: the HTTP listener (web page, `/health`, WebSocket
//! upgrade), one task per WebSocket session, and the task that owns the room core.
//!
//! Shutdown follows mini-redis: a watch channel tells every task to stop, the room
//! core closes every session and finalizes every room, and each session task holds
//! a clone of `alive` so `shutdown` can wait until every socket got its close frame.

mod driver;
mod http;
mod session;
pub mod tls;

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
    #[error("cannot listen on {addr}: {source}{}", privileged_port_hint(*addr, source))]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn privileged_port_hint(addr: SocketAddr, e: &std::io::Error) -> &'static str {
    if addr.port() < 1024 && e.kind() == std::io::ErrorKind::PermissionDenied {
        " (ports below 1024 need CAP_NET_BIND_SERVICE: install systemd/port-below-1024.conf as a drop-in of huddle.service)"
    } else {
        ""
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
}

/// A running service.
pub struct Server {
    /// Plain HTTP, if on.
    addr: Option<SocketAddr>,
    /// HTTPS, if on.
    tls_addr: Option<SocketAddr>,
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
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, bound))
}

impl Server {
    /// Binds `[http] listen` and `tls_listen`, the media port, and starts serving.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let plain = match config.http.plain {
            true => Some(bind(config.http.listen).await?),
            false => None,
        };
        let secure = match config.http.tls {
            true => Some(bind(config.http.tls_listen).await?),
            false => None,
        };

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (stats_tx, stats_rx) = watch::channel(Stats::default());
        let (alive_tx, alive_rx) = mpsc::channel(1);
        let (to_core, from_sessions) = mpsc::channel(1024);
        let (media_events_tx, media_events) = mpsc::channel(4096);
        let sfu = Sfu::start(&config.media, media_events_tx).await?;
        let media_port = sfu.port();
        let media_peers = sfu.peers();
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
        // Probing cameras and GStreamer's plugin registry may take a moment.
        let feed = sfu.device_feed();
        let device_cfg = config.device.clone();
        let device = tokio::task::spawn_blocking(move || Device::start(&device_cfg, feed))
            .await
            .unwrap_or_else(|e| {
                warn!("device: start failed: {e}");
                None
            });
        let participant = device.as_ref().map(|_| {
            Participant::new(Policy {
                login: config.device.login.clone(),
                rooms: config.device.rooms.clone(),
                join_new_rooms: config.device.join_new_rooms,
            })
        });
        let driver = tokio::spawn(driver::run(
            core,
            from_sessions,
            stats_tx,
            sfu,
            media_events,
            participant,
        ));

        let shared = Shared {
            config: Arc::new(config),
            to_core: to_core.clone(),
            stats: stats_rx.clone(),
            next_session: Arc::new(AtomicU64::new(1)),
            media_peers,
            authority,
            alive: alive_tx,
        };
        let shared_peers = shared.media_peers.clone();
        let app = http::router(shared);
        let mut listeners = Vec::new();
        let mut addr = None;
        if let Some((listener, bound)) = plain {
            listeners.push(tokio::spawn(http::serve(
                listener,
                app.clone(),
                shutdown_rx.clone(),
            )));
            info!("listening on http://{bound} (WebSocket signalling on ws://{bound}/)");
            addr = Some(bound);
        }
        let mut tls_addr = None;
        if let (Some((listener, bound)), Some(cert)) = (secure, &certificate) {
            let config = cert.server_config()?;
            listeners.push(tokio::spawn(tls::serve(listener, config, app, shutdown_rx)));
            info!("listening on https://{bound} (WebSocket signalling on wss://{bound}/)");
            tls_addr = Some(bound);
        }
        Ok(Server {
            addr,
            tls_addr,
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

    /// Asks the room core for its counts; `None` if it does not answer within
    /// `timeout` (a hung core: the service watchdog must not be fed).
    pub async fn heartbeat(&self, timeout: Duration) -> Option<Stats> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let probe = async {
            self.to_core.send(ToCore::Heartbeat(reply)).await.ok()?;
            answer.await.ok()
        };
        tokio::time::timeout(timeout, probe).await.ok().flatten()
    }

    /// Graceful stop: sessions are closed (code 1001), rooms finalized, sockets
    /// flushed (bounded by a few seconds).
    pub async fn shutdown(mut self) {
        info!("shutting down");
        let _ = self.shutdown.send(true);
        if let Some(device) = self.device.take() {
            let _ = tokio::task::spawn_blocking(move || device.stop()).await;
        }
        let _ = self.to_core.send(ToCore::Shutdown).await;
        if let Err(e) = self.driver.await {
            warn!("room core task ended abnormally: {e}");
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
