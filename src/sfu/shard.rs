//! The media plane on several cores (`[media] workers`).
//!
//! What costs per forwarded packet is a player's: its SRTP protect, its sender reports
//! and NACK history, its share of `sendmmsg`. That part (`play_out::PlayOut`) is what
//! a shard owns. Worker 0 is the SFU task itself; workers 1.. are threads, each with
//! the players placed on it, fed through a bounded ring of its own (a
//! `std::sync::mpsc::sync_channel`, lock-free on its fast path): the SFU task's
//! stream core hands each player's packet (already numbered for that player, no
//! payload copy) to the ring of the shard that owns the player, and the shard
//! protects it and sends it from its own handle on the same UDP socket. Publishers,
//! ICE, DTLS and the players' RTCP stay on the SFU task: they cost per received
//! packet, not per player.
//!
//! A player is placed once, when its DTLS is done, on the worker that serves the
//! fewest players then (a thread before the task on a tie); players of ICE-TCP stay
//! on the task (its connections are there), and one whose path moves to ICE-TCP later
//! is recalled to it with its state. A full ring drops the packet as a full socket does (the stream core
//! counts it and asks for a key frame); a full socket on a shard is reported back to
//! the task (`dropped`), which asks the same.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, warn};
use rtc::rtp::Packet;

use super::engine::PeerId;
use super::play_out::PlayOut;
use super::send::UdpBatch;
use crate::metrics::{DropReason, MediaCounters};

pub use crate::metrics::MAX_WORKERS;
/// Messages queued toward one shard: ~4 s of a 2.5 Mbit/s stream to one player, or a
/// key frame's burst to 100 players.
const RING: usize = 4096;
/// Messages handled before the shard looks at its sender reports and flushes.
const DRAIN: usize = 256;

/// What the SFU task hands a shard.
pub enum ToShard {
    /// A player placed here, with its SRTP context made from its DTLS keys.
    Open { peer: PeerId, out: Box<PlayOut> },
    /// One of the player's packets to protect and send to `to`.
    Rtp {
        peer: PeerId,
        to: SocketAddr,
        packet: Packet,
        clock_rate: u32,
        keep: bool,
    },
    /// The player's NACK: these packets again.
    Nack {
        peer: PeerId,
        to: SocketAddr,
        ssrc: u32,
        seqs: Vec<u16>,
    },
    /// The player is gone.
    Close { peer: PeerId },
    /// The player's state back to the task (its path moved to ICE-TCP).
    Recall {
        peer: PeerId,
        back: SyncSender<Box<PlayOut>>,
    },
}

/// How long the task waits for a recalled player's state.
const RECALL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The SFU task's side of the shards: a ring into each worker thread (worker `i + 1`
/// is `rings[i]`) and the players each worker serves (`MediaCounters::workers`).
pub struct Shards {
    rings: Vec<SyncSender<ToShard>>,
    counters: Arc<MediaCounters>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// The threads end when their rings close, and are waited for: their handles on the
/// socket are closed when the engine is gone (the port can be bound again).
impl Drop for Shards {
    fn drop(&mut self) {
        self.rings.clear();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                warn!("a media worker panicked");
            }
        }
    }
}

impl Shards {
    /// Starts `workers - 1` threads sending from `socket` (a handle on the media
    /// socket, in non-blocking mode); a full socket on one of them is told on
    /// `dropped`. `v6`: the socket is dual-stack (v4 targets mapped); `trains`: UDP GSO
    /// segment trains are tried (`send::UdpBatch`).
    pub fn start(
        workers: usize,
        socket: &std::net::UdpSocket,
        (v6, trains): (bool, bool),
        counters: Arc<MediaCounters>,
        dropped: tokio::sync::mpsc::Sender<PeerId>,
    ) -> std::io::Result<Shards> {
        let workers = workers.clamp(1, MAX_WORKERS);
        counters.workers.set_count(workers);
        let mut rings = Vec::with_capacity(workers - 1);
        let mut threads = Vec::with_capacity(workers - 1);
        for index in 1..workers {
            let (tx, rx) = mpsc::sync_channel(RING);
            let shard = Shard {
                socket: socket.try_clone()?,
                v6,
                counters: counters.clone(),
                dropped: dropped.clone(),
                outs: HashMap::new(),
                batch: UdpBatch::new(trains),
            };
            shard.socket.set_nonblocking(true)?;
            let thread = std::thread::Builder::new()
                .name(format!("huddle-media-{index}"))
                .spawn(move || shard.run(rx))?;
            rings.push(tx);
            threads.push(thread);
        }
        Ok(Shards {
            rings,
            counters,
            threads,
        })
    }

    /// Places a player whose DTLS is done: on this task (worker 0) or on the thread
    /// that serves the fewest players. `None` when that thread is gone (it cannot
    /// end while the task lives, but if it did the player goes through its peer
    /// connection's own pipeline).
    pub fn place(&self, peer: PeerId, out: PlayOut) -> Option<Out> {
        let players = &self.counters.workers;
        // The threads first on a tie: the task has the publishers' work as well.
        let least = (1..=self.rings.len())
            .chain([0])
            .min_by_key(|w| players.players(*w))
            .unwrap_or(0);
        let Some(ring) = least.checked_sub(1).and_then(|i| self.rings.get(i)) else {
            return Some(Out::here(out, self.counters.clone()));
        };
        // Blocking: a shard never waits on the task, so this takes at most the time
        // the shard needs to drain a little of its ring.
        let open = ToShard::Open {
            peer,
            out: Box::new(out),
        };
        if ring.send(open).is_err() {
            warn!("media worker {least} is gone; peer {peer} goes through its pipeline");
            return None;
        }
        Some(Out::There(Lane {
            peer,
            ring: ring.clone(),
            placed: Placed::new(self.counters.clone(), least),
        }))
    }
}

/// Counts a player on a worker while it lives (`huddle_media_worker_players`).
pub struct Placed {
    counters: Arc<MediaCounters>,
    worker: usize,
}

impl Placed {
    fn new(counters: Arc<MediaCounters>, worker: usize) -> Self {
        counters.workers.add(worker, 1);
        Placed { counters, worker }
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.counters.workers.add(self.worker, -1);
    }
}

/// Where a player's forwarding runs.
pub enum Out {
    /// On the SFU task (one worker, an ICE-TCP player, or the least loaded).
    Here(Box<PlayOut>, Placed),
    There(Lane),
}

impl Out {
    /// On the task, counted as worker 0's.
    pub fn here(out: PlayOut, counters: Arc<MediaCounters>) -> Out {
        Out::Here(Box::new(out), Placed::new(counters, 0))
    }

    /// A player on a thread whose path is no longer UDP comes back to the task, its
    /// SRTP context, history and report counts with it (the thread sends over UDP
    /// only). `None` when the thread did not give it back in time: the player then
    /// goes through its peer connection's pipeline.
    pub fn recall(self) -> Option<Out> {
        let lane = match self {
            Out::There(lane) => lane,
            here => return Some(here),
        };
        let (back, state) = mpsc::sync_channel(1);
        let peer = lane.peer;
        lane.ring.send(ToShard::Recall { peer, back }).ok()?;
        let out = state.recv_timeout(RECALL_WAIT).ok()?;
        Some(Out::Here(out, Placed::new(lane.placed.counters.clone(), 0)))
    }
}

/// A player on a shard thread: its ring; dropping it closes the player there.
pub struct Lane {
    peer: PeerId,
    ring: SyncSender<ToShard>,
    placed: Placed,
}

impl Lane {
    /// Hands a packet to the shard; `false` when its ring is full (dropped) or the
    /// shard is gone.
    pub fn rtp(&self, to: SocketAddr, packet: Packet, clock_rate: u32, keep: bool) -> bool {
        let m = ToShard::Rtp {
            peer: self.peer,
            to,
            packet,
            clock_rate,
            keep,
        };
        self.ring.try_send(m).is_ok()
    }

    pub fn nack(&self, to: SocketAddr, ssrc: u32, seqs: Vec<u16>) {
        let m = ToShard::Nack {
            peer: self.peer,
            to,
            ssrc,
            seqs,
        };
        if let Err(TrySendError::Full(_)) = self.ring.try_send(m) {
            debug!("peer {}: NACK dropped, its media worker is busy", self.peer);
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // Blocking, as `place`: the player's state must not outlive it there.
        let _ = self.ring.send(ToShard::Close { peer: self.peer });
    }
}

/// One worker thread: its players' send state and its batch.
struct Shard {
    socket: std::net::UdpSocket,
    v6: bool,
    counters: Arc<MediaCounters>,
    dropped: tokio::sync::mpsc::Sender<PeerId>,
    /// Each player's state and where its last packet went (its reports go there).
    outs: HashMap<PeerId, (Box<PlayOut>, Option<SocketAddr>)>,
    batch: UdpBatch,
}

impl Shard {
    /// Until the task drops its rings (it ended).
    fn run(mut self, rx: mpsc::Receiver<ToShard>) {
        loop {
            let due = self
                .outs
                .values()
                .filter_map(|(o, _)| o.poll_timeout())
                .min();
            let first = match due {
                Some(t) => match t.checked_duration_since(Instant::now()) {
                    Some(wait) if !wait.is_zero() => rx.recv_timeout(wait),
                    _ => Err(RecvTimeoutError::Timeout),
                },
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match first {
                Ok(m) => self.handle(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            for m in rx.try_iter().take(DRAIN) {
                self.handle(m);
            }
            let now = Instant::now();
            for (peer, (out, to)) in self.outs.iter_mut() {
                if let Some(to) = *to {
                    for data in out.reports(now) {
                        self.batch
                            .push(*peer, super::task::target(self.v6, to), data);
                    }
                }
            }
            self.flush();
        }
        debug!("a media worker ends");
    }

    fn handle(&mut self, m: ToShard) {
        match m {
            ToShard::Open { peer, out } => {
                self.outs.insert(peer, (out, None));
            }
            ToShard::Close { peer } => {
                self.outs.remove(&peer);
            }
            ToShard::Recall { peer, back } => {
                if let Some((out, _)) = self.outs.remove(&peer) {
                    let _ = back.try_send(out);
                }
            }
            ToShard::Rtp {
                peer,
                to,
                packet,
                clock_rate,
                keep,
            } => {
                let Some((out, last)) = self.outs.get_mut(&peer) else {
                    return;
                };
                *last = Some(to);
                match out.protect(Instant::now(), packet, clock_rate, keep) {
                    Ok(data) => self
                        .batch
                        .push(peer, super::task::target(self.v6, to), data),
                    Err(e) => debug!("peer {peer}: {e}"),
                }
            }
            ToShard::Nack {
                peer,
                to,
                ssrc,
                seqs,
            } => {
                let Some((out, _)) = self.outs.get_mut(&peer) else {
                    return;
                };
                for data in out.resend(Instant::now(), ssrc, &seqs) {
                    self.counters.retransmitted.inc();
                    self.batch
                        .push(peer, super::task::target(self.v6, to), data);
                }
            }
        }
        if self.batch.is_full() {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let (counters, dropped) = (&self.counters, &self.dropped);
        let trains = self.batch.flush(&self.socket, |peer| {
            counters.dropped(DropReason::SocketBusy);
            let _ = dropped.try_send(peer);
        });
        trains.count(counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::play_out::tests::{clock, keys, packet, receiver};
    use rtc::shared::marshal::Unmarshal;
    use rtc::srtp::protection_profile::ProtectionProfile;
    use std::time::Duration;

    /// Two workers (the task and one thread) sending from a socket on 127.0.0.1.
    fn two_workers() -> (Shards, std::net::UdpSocket, Arc<MediaCounters>) {
        let counters = Arc::new(MediaCounters::default());
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (dropped, _) = tokio::sync::mpsc::channel(8);
        let shards = Shards::start(2, &socket, (false, true), counters.clone(), dropped).unwrap();
        (shards, socket, counters)
    }

    /// A player's socket that takes datagrams from `server` only: a port another
    /// test of this process just closed may still get that test's packets.
    fn player(server: &std::net::UdpSocket) -> (std::net::UdpSocket, SocketAddr) {
        let r = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        r.connect(server.local_addr().unwrap()).unwrap();
        r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let a = r.local_addr().unwrap();
        (r, a)
    }

    /// The next RTP datagram; the sender reports (SRTCP, the first one 200 ms after
    /// the first packet: a slow run sees it among the packets) are skipped, a few.
    fn recv(r: &std::net::UdpSocket) -> Vec<u8> {
        for _ in 0..5 {
            let mut buf = vec![0u8; 2048];
            let n = r.recv(&mut buf).expect("a datagram");
            buf.truncate(n);
            if !buf.get(1).is_some_and(|pt| (192..=223).contains(pt)) {
                return buf;
            }
        }
        panic!("only sender reports came");
    }

    /// Two workers: the first player goes to the thread, the second to the task; the
    /// thread protects and sends the first one's packets, in order, from its own
    /// handle; a NACK gets a packet again; dropping the lane and the shards ends the
    /// thread and frees the placement.
    #[test]
    fn a_player_on_a_worker_thread_gets_its_packets_protected_and_in_order() {
        let (shards, socket, counters) = two_workers();
        let k = keys(ProtectionProfile::AeadAes128Gcm);
        let t0 = Instant::now();
        let first = shards.place(1, PlayOut::new(&k, clock(t0)).unwrap());
        let Some(Out::There(lane)) = first else {
            panic!("the first player goes to the thread");
        };
        let second = shards.place(2, PlayOut::new(&k, clock(t0)).unwrap());
        assert!(
            matches!(second, Some(Out::Here(..))),
            "the second to the task"
        );
        assert_eq!(
            (counters.workers.players(0), counters.workers.players(1)),
            (1, 1)
        );

        let (rx, to) = player(&socket);
        let mut srtp = receiver(&k);
        let sent: Vec<Packet> = (0..100u16).map(|i| packet(7, 500 + i, 0, 900)).collect();
        let mut wires = Vec::new();
        // Frame-sized bursts, each read before the next: the receiving socket's
        // buffer is the loopback default.
        for burst in sent.chunks(10) {
            for p in burst {
                assert!(lane.rtp(to, p.clone(), 90_000, true));
            }
            for p in burst {
                let wire = recv(&rx);
                let mut clear = srtp.decrypt_rtp(&wire).unwrap();
                assert_eq!(&Packet::unmarshal(&mut clear).unwrap(), p);
                wires.push(wire);
            }
        }
        // Protected anew with the same index: the same bytes.
        lane.nack(to, 7, vec![510]);
        assert_eq!(recv(&rx), wires[10], "packet 510 again");
        assert_eq!(counters.retransmitted.get(), 1);

        drop(lane);
        drop(second);
        drop(shards);
        assert_eq!(
            (counters.workers.players(0), counters.workers.players(1)),
            (0, 0)
        );
    }

    /// A player recalled from the thread goes on where it was: its next packet has the
    /// next SRTP index (the same receiver decrypts it), and it counts on the task.
    #[test]
    fn a_recalled_player_goes_on_with_its_srtp_state() {
        let (shards, socket, counters) = two_workers();
        let k = keys(ProtectionProfile::Aes128CmHmacSha1_80);
        let t0 = Instant::now();
        let out = shards
            .place(1, PlayOut::new(&k, clock(t0)).unwrap())
            .unwrap();
        let (rx, to) = player(&socket);
        let mut srtp = receiver(&k);
        if let Out::There(lane) = &out {
            for i in 0..10u16 {
                assert!(lane.rtp(
                    to,
                    packet(7, 65_530u16.wrapping_add(i), 0, 500),
                    90_000,
                    true
                ));
            }
        }
        for _ in 0..10 {
            srtp.decrypt_rtp(&recv(&rx)).unwrap();
        }
        let Some(Out::Here(mut back, _placed)) = out.recall() else {
            panic!("back on the task");
        };
        assert_eq!(
            (counters.workers.players(0), counters.workers.players(1)),
            (1, 0)
        );
        // Past the sequence wrap the thread went through: the rollover counter came too.
        let next = packet(7, 4, 0, 500);
        let wire = back
            .protect(Instant::now(), next.clone(), 90_000, true)
            .unwrap();
        let mut clear = srtp.decrypt_rtp(&wire).unwrap();
        assert_eq!(Packet::unmarshal(&mut clear).unwrap(), next);
        // A NACK on the task finds what the thread kept.
        assert_eq!(back.resend(Instant::now(), 7, &[65_531]).len(), 1);
    }

    /// A ring that is full drops (`false`), as a full socket does: nothing waits.
    #[test]
    fn a_full_ring_drops_instead_of_waiting() {
        let (tx, rx) = mpsc::sync_channel(2);
        let counters = Arc::new(MediaCounters::default());
        let lane = Lane {
            peer: 9,
            ring: tx,
            placed: Placed::new(counters.clone(), 1),
        };
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let taken: Vec<bool> = (0..3u16)
            .map(|i| lane.rtp(to, packet(1, i, 0, 10), 90_000, false))
            .collect();
        assert_eq!(taken, [true, true, false]);
        // Its Close would wait for room on a ring nobody drains: the reader goes
        // first, as when a worker has ended.
        drop(rx);
        drop(lane);
        assert_eq!(counters.workers.players(1), 0);
    }
}
