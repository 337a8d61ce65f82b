//! ICE-TCP (RFC 6544) on one TCP port, for networks that block UDP: the answers carry
//! a passive TCP host candidate, the browser connects here, and every STUN, DTLS, RTP
//! and RTCP packet travels RFC 4571 framed (a 16-bit big-endian length, then the
//! packet). The frames go into the same engine as the UDP datagrams, tagged TCP; the
//! engine's transmits for a peer whose selected pair is TCP come back here.
//!
//! Bounded everywhere: connections in total and per address (and, per address, those
//! not yet verified), frames of at most `MAX_FRAME` bytes, a connection's outbound
//! queue (`OUT_QUEUE` frames; full: dropped and counted), a write timeout, a deadline
//! for the first frame (it must be a STUN binding request that verifies for a known
//! peer, checked by the SFU task) and an idle timeout afterwards.
//!
//! `Deframer`, `frame` and `Admission` are pure; `listen` and `connection` are the I/O.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use log::{debug, warn};
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::metrics::MediaCounters;

/// Largest packet in a frame: browsers keep DTLS and RTP under the path MTU over TCP
/// too; the media socket reads UDP datagrams of the same size.
pub const MAX_FRAME: usize = 4096;
/// A connection must deliver a verified STUN binding request this soon after it is
/// accepted (slow or silent connections are closed).
pub const FIRST_FRAME: Duration = Duration::from_secs(5);
/// A verified connection that delivers no frame for this long is closed. The selected
/// path carries consent checks every few seconds and RTCP every second; Chrome also
/// connects on paths it then leaves unused (when UDP works too), which this reaps.
pub const IDLE: Duration = Duration::from_secs(15);
/// Data the peer does not take within this closes the connection: a write that waits
/// this long, and (`TCP_USER_TIMEOUT`) data written that stays unacknowledged this long
/// — the second does not depend on how much is written, so a player getting only a
/// trickle (audio, key frames only) that stopped reading is cut off as fast.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames queued toward one connection (about a second of 720p video).
pub const OUT_QUEUE: usize = 256;
/// Frames from every connection queued toward the SFU task; a full queue stops
/// reading (TCP pushes back), it does not drop.
pub const IN_QUEUE: usize = 1024;

/// Connection caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub total: usize,
    /// Per remote address: a browser opens one connection per peer connection, and an
    /// office behind one NAT shares an address.
    pub per_address: usize,
    /// Per remote address, connections that have not delivered a verified first frame.
    pub pending_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            total: 512,
            per_address: 64,
            pending_per_address: 8,
        }
    }
}

/// Why a byte stream is not RFC 4571 frames we take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A frame announced longer than `max`.
    TooLong(usize),
}

/// Reassembles RFC 4571 frames from a TCP byte stream, whatever the segmentation:
/// at most one frame (`max` bytes plus its header) is buffered.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    max: usize,
}

impl Deframer {
    pub fn new(max: usize) -> Self {
        Deframer {
            buf: Vec::with_capacity(max + 2),
            max,
        }
    }

    /// Takes the next bytes of the stream and hands every completed packet to
    /// `packet`, in order. Empty frames are skipped. An oversize frame is an error, and
    /// the stream is unusable afterwards (its framing is lost).
    pub fn push(
        &mut self,
        mut input: &[u8],
        mut packet: impl FnMut(&[u8]),
    ) -> Result<(), FrameError> {
        loop {
            if self.buf.len() < 2 {
                let take = (2 - self.buf.len()).min(input.len());
                self.buf.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.buf.len() < 2 {
                    return Ok(());
                }
            }
            let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
            if len > self.max {
                return Err(FrameError::TooLong(len));
            }
            let have = self.buf.len() - 2;
            let take = (len - have).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.buf.len() - 2 < len {
                return Ok(());
            }
            if len > 0 {
                packet(&self.buf[2..]);
            }
            self.buf.clear();
        }
    }

    /// Bytes of an incomplete frame held now.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// `packet` as one RFC 4571 frame; `None` when it is longer than a frame can say.
pub fn frame(packet: &[u8]) -> Option<BytesMut> {
    let len = u16::try_from(packet.len()).ok()?;
    let mut out = BytesMut::with_capacity(packet.len() + 2);
    out.put_u16(len);
    out.put_slice(packet);
    Some(out)
}

/// Which connections may be open: caps in total and per address, and per address on
/// those not yet verified. Pure bookkeeping; `Slot` keeps it right from the tasks.
#[derive(Debug, Default)]
pub struct Admission {
    limits: Limits,
    total: usize,
    /// Per address: (open, of which not verified).
    per_ip: HashMap<IpAddr, (usize, usize)>,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Admission {
            limits,
            total: 0,
            per_ip: HashMap::new(),
        }
    }

    /// A new (not yet verified) connection from `ip`, if the caps allow it.
    pub fn admit(&mut self, ip: IpAddr) -> bool {
        let (open, pending) = self.per_ip.get(&ip).copied().unwrap_or_default();
        if self.total >= self.limits.total
            || open >= self.limits.per_address
            || pending >= self.limits.pending_per_address
        {
            return false;
        }
        self.total += 1;
        self.per_ip.insert(ip, (open + 1, pending + 1));
        true
    }

    /// A connection from `ip` delivered its verified first frame.
    pub fn verified(&mut self, ip: IpAddr) {
        if let Some((_, pending)) = self.per_ip.get_mut(&ip) {
            *pending = pending.saturating_sub(1);
        }
    }

    /// A connection from `ip` ended (`verified`: whether it had been).
    pub fn release(&mut self, ip: IpAddr, verified: bool) {
        self.total = self.total.saturating_sub(1);
        if let Some((open, pending)) = self.per_ip.get_mut(&ip) {
            *open = open.saturating_sub(1);
            if !verified {
                *pending = pending.saturating_sub(1);
            }
            if *open == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    pub fn open(&self) -> usize {
        self.total
    }
}

type SharedAdmission = Arc<Mutex<Admission>>;

fn lock(admission: &SharedAdmission) -> std::sync::MutexGuard<'_, Admission> {
    admission.lock().unwrap_or_else(|e| e.into_inner())
}

/// One admitted connection's place in the `Admission`; given back when dropped.
struct Slot {
    admission: SharedAdmission,
    ip: IpAddr,
    verified: bool,
}

impl Slot {
    fn verified(&mut self) {
        if !self.verified {
            self.verified = true;
            lock(&self.admission).verified(self.ip);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.admission).release(self.ip, self.verified);
    }
}

/// What connections tell the SFU task.
#[derive(Debug)]
pub enum TcpIn {
    /// A connection from `from`: its outbound queue, and the flag the SFU task sets
    /// once a frame of it verified (a STUN binding request for a known peer).
    Opened {
        id: u64,
        from: SocketAddr,
        out: mpsc::Sender<BytesMut>,
        verified: Arc<AtomicBool>,
    },
    Frame {
        id: u64,
        from: SocketAddr,
        data: BytesMut,
    },
    Closed {
        id: u64,
        from: SocketAddr,
    },
}

/// The SFU task's side: the open connections by remote address.
#[derive(Debug, Default)]
pub struct Connections {
    by_addr: HashMap<SocketAddr, Conn>,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    out: mpsc::Sender<BytesMut>,
    verified: Arc<AtomicBool>,
}

/// What to do with a frame that came in on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Hand it to the engine; `first`: the connection is not verified yet, so the
    /// frame must be a STUN binding request that the engine routes.
    Deliver { first: bool },
    /// The connection is gone (a frame still queued when it closed).
    Ignore,
}

impl Connections {
    pub fn opened(
        &mut self,
        id: u64,
        from: SocketAddr,
        out: mpsc::Sender<BytesMut>,
        verified: Arc<AtomicBool>,
    ) {
        self.by_addr.insert(from, Conn { id, out, verified });
    }

    pub fn closed(&mut self, id: u64, from: SocketAddr) {
        if self.by_addr.get(&from).is_some_and(|c| c.id == id) {
            self.by_addr.remove(&from);
        }
    }

    pub fn inbound(&self, id: u64, from: SocketAddr) -> Inbound {
        match self.by_addr.get(&from) {
            Some(c) if c.id == id => Inbound::Deliver {
                first: !c.verified.load(Ordering::Relaxed),
            },
            _ => Inbound::Ignore,
        }
    }

    /// The connection's first frame verified: it stays.
    pub fn verify(&self, from: SocketAddr) {
        if let Some(c) = self.by_addr.get(&from) {
            c.verified.store(true, Ordering::Relaxed);
        }
    }

    /// Closes the connection from `from` (its task sees the queue closed).
    pub fn reject(&mut self, from: SocketAddr) {
        self.by_addr.remove(&from);
    }

    /// Queues `packet` framed toward the connection from `to`; `false` when it was
    /// dropped (the queue full, the connection gone).
    pub fn send(&mut self, to: SocketAddr, packet: &[u8]) -> bool {
        let Some(c) = self.by_addr.get(&to) else {
            return false;
        };
        let Some(framed) = frame(packet) else {
            return false;
        };
        match c.out.try_send(framed) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.by_addr.remove(&to);
                false
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

/// Accepts ICE-TCP connections until the SFU task is gone; each admitted one gets a
/// task of its own.
pub async fn listen(
    listener: TcpListener,
    limits: Limits,
    to_sfu: mpsc::Sender<TcpIn>,
    counters: Arc<MediaCounters>,
) {
    let admission: SharedAdmission = Arc::new(Mutex::new(Admission::new(limits)));
    let mut next_id: u64 = 1;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = to_sfu.closed() => return,
        };
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("ICE-TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        if !lock(&admission).admit(from.ip()) {
            counters.tcp.refused.inc();
            debug!("ICE-TCP connection from {from} refused: over the connection caps");
            continue;
        }
        let slot = Slot {
            admission: admission.clone(),
            ip: from.ip(),
            verified: false,
        };
        let id = next_id;
        next_id += 1;
        counters.tcp.accepted.inc();
        tokio::spawn(connection(
            stream,
            (id, from),
            slot,
            to_sfu.clone(),
            counters.clone(),
        ));
    }
}

/// How a connection ended.
enum End {
    /// EOF, the SFU task closed it or is gone.
    Done,
    Invalid,
    TimedOut,
    WriteTimedOut,
}

/// A read or write error: the kernel's user timeout (the peer took nothing for
/// `WRITE_TIMEOUT`) or the connection's end.
fn ended(from: SocketAddr, e: &std::io::Error) -> End {
    debug!("ICE-TCP connection from {from}: {e}");
    if e.raw_os_error() == Some(Errno::ETIMEDOUT as i32) {
        End::WriteTimedOut
    } else {
        End::Done
    }
}

async fn connection(
    stream: TcpStream,
    (id, from): (u64, SocketAddr),
    mut slot: Slot,
    to_sfu: mpsc::Sender<TcpIn>,
    counters: Arc<MediaCounters>,
) {
    counters.tcp.open.inc();
    let _ = stream.set_nodelay(true);
    // The kernel aborts the connection (ETIMEDOUT) once written data stays
    // unacknowledged, or unsent behind a zero window, for WRITE_TIMEOUT.
    let user_timeout = u32::try_from(WRITE_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    if let Err(e) = setsockopt(&stream, sockopt::TcpUserTimeout, &user_timeout) {
        debug!("ICE-TCP connection from {from}: TCP_USER_TIMEOUT: {e}");
    }
    let (out, mut queued) = mpsc::channel::<BytesMut>(OUT_QUEUE);
    let verified = Arc::new(AtomicBool::new(false));
    let opened = TcpIn::Opened {
        id,
        from,
        out,
        verified: verified.clone(),
    };
    if to_sfu.send(opened).await.is_err() {
        counters.tcp.open.dec();
        return;
    }
    let (mut rd, mut wr) = stream.into_split();
    let reader = async {
        let first_deadline = tokio::time::Instant::now() + FIRST_FRAME;
        let mut deframer = Deframer::new(MAX_FRAME);
        let mut buf = vec![0u8; MAX_FRAME];
        let mut frames: Vec<BytesMut> = Vec::new();
        let mut idle_since = tokio::time::Instant::now();
        loop {
            let deadline = if verified.load(Ordering::Relaxed) {
                slot.verified();
                idle_since + IDLE
            } else {
                first_deadline
            };
            let n = match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                // Verified while this read waited for the first deadline.
                Err(_) if verified.load(Ordering::Relaxed) && deadline != idle_since + IDLE => {
                    continue
                }
                Err(_) => return End::TimedOut,
                Ok(Ok(0)) => return End::Done,
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return ended(from, &e),
            };
            let pushed = deframer.push(&buf[..n], |p| frames.push(BytesMut::from(p)));
            if !frames.is_empty() {
                idle_since = tokio::time::Instant::now();
            }
            for data in frames.drain(..) {
                if to_sfu.send(TcpIn::Frame { id, from, data }).await.is_err() {
                    return End::Done;
                }
            }
            if let Err(e) = pushed {
                debug!("ICE-TCP connection from {from}: {e:?}");
                return End::Invalid;
            }
        }
    };
    let writer = async {
        let mut batch: Vec<u8> = Vec::with_capacity(16 * 1024);
        while let Some(first) = queued.recv().await {
            batch.clear();
            batch.extend_from_slice(&first);
            // Whatever else is queued goes in the same write (up to a bound).
            while batch.len() < 64 * 1024 {
                match queued.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return ended(from, &e),
                Err(_) => return End::WriteTimedOut,
            }
        }
        // The SFU task closed the connection (not verified, or the task ended).
        End::Done
    };
    let end = tokio::select! {
        end = reader => end,
        end = writer => end,
    };
    match end {
        End::Done => {}
        End::Invalid => counters.tcp.invalid.inc(),
        End::TimedOut => counters.tcp.timed_out.inc(),
        End::WriteTimedOut => counters.tcp.write_timed_out.inc(),
    }
    counters.tcp.open.dec();
    // The slot is free before the peer sees the connection closed.
    drop(slot);
    drop((rd, wr));
    let _ = to_sfu.send(TcpIn::Closed { id, from }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(packets: &[&[u8]]) -> Vec<u8> {
        let mut stream = Vec::new();
        for p in packets {
            stream.extend_from_slice(&frame(p).unwrap());
        }
        stream
    }

    #[test]
    fn a_frame_is_a_big_endian_length_and_the_packet() {
        assert_eq!(&frame(b"abc").unwrap()[..], b"\x00\x03abc");
        assert_eq!(frame(&vec![7u8; 300]).unwrap()[..2], [0x01, 0x2c]);
        assert!(frame(&vec![0u8; 65_536]).is_none());
        assert_eq!(frame(&vec![0u8; 65_535]).unwrap().len(), 65_537);
    }

    #[test]
    fn frames_split_at_every_byte_come_out_whole_and_in_order() {
        let big = vec![0xabu8; MAX_FRAME];
        let packets: Vec<&[u8]> = vec![b"\x00\x01stun", b"x", &big, b"\x16dtls", b"", b"\x80rtp"];
        let stream = frames_of(&packets);
        let expected: Vec<Vec<u8>> = packets
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.to_vec())
            .collect();
        // Two pieces, cut at every byte.
        for cut in 0..=stream.len() {
            let mut d = Deframer::new(MAX_FRAME);
            let mut got = Vec::new();
            d.push(&stream[..cut], |p| got.push(p.to_vec())).unwrap();
            d.push(&stream[cut..], |p| got.push(p.to_vec())).unwrap();
            assert_eq!(got, expected, "cut at {cut}");
            assert_eq!(d.pending(), 0);
        }
        // One byte at a time.
        let mut d = Deframer::new(MAX_FRAME);
        let mut got = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b), |p| got.push(p.to_vec()))
                .unwrap();
            assert!(d.pending() <= MAX_FRAME + 2);
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn random_packets_in_random_pieces_come_out_as_sent() {
        // A small LCG: the same pseudo-random cases on every run.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |bound: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % bound
        };
        for _ in 0..200 {
            let packets: Vec<Vec<u8>> = (0..next(20) + 1)
                .map(|i| vec![i as u8; next(MAX_FRAME) + 1])
                .collect();
            let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
            let stream = frames_of(&refs);
            let mut d = Deframer::new(MAX_FRAME);
            let mut got = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let piece = (next(3000) + 1).min(stream.len() - at);
                d.push(&stream[at..at + piece], |p| got.push(p.to_vec()))
                    .unwrap();
                at += piece;
            }
            assert_eq!(got, packets);
        }
    }

    #[test]
    fn an_oversize_frame_is_an_error_before_its_body_is_read() {
        let mut d = Deframer::new(1500);
        let mut got = Vec::new();
        let mut stream = frames_of(&[b"ok"]);
        stream.extend_from_slice(&[0x05, 0xdd]); // 1501
        stream.extend_from_slice(&[0u8; 100]);
        assert_eq!(
            d.push(&stream, |p| got.push(p.to_vec())),
            Err(FrameError::TooLong(1501))
        );
        assert_eq!(got, vec![b"ok".to_vec()], "frames before it were delivered");
        assert!(
            d.pending() <= 2,
            "nothing of the oversize frame is buffered"
        );
        // The largest allowed one passes.
        let mut d = Deframer::new(1500);
        let mut n = 0;
        d.push(&frames_of(&[&[1u8; 1500]]), |p| n += p.len())
            .unwrap();
        assert_eq!(n, 1500);
    }

    #[test]
    fn admission_caps_total_per_address_and_unverified() {
        let limits = Limits {
            total: 5,
            per_address: 3,
            pending_per_address: 2,
        };
        let mut a = Admission::new(limits);
        let x: IpAddr = "192.0.2.1".parse().unwrap();
        let y: IpAddr = "192.0.2.2".parse().unwrap();
        let z: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(a.admit(x) && a.admit(x));
        assert!(!a.admit(x), "two unverified from x at most");
        a.verified(x);
        assert!(a.admit(x), "one verified, a third may come");
        a.verified(x);
        a.verified(x);
        assert!(!a.admit(x), "three from x at most, verified or not");
        assert!(a.admit(y) && a.admit(y));
        assert!(!a.admit(z), "five in total");
        assert_eq!(a.open(), 5);
        a.release(y, false);
        assert!(a.admit(z));
        a.release(x, true);
        a.release(x, true);
        a.release(x, true);
        a.release(y, false);
        a.release(z, false);
        assert_eq!(a.open(), 0);
        assert!(
            a.per_ip.is_empty(),
            "no address is remembered once its connections end"
        );
        assert!(a.admit(x) && a.admit(x));
    }

    #[tokio::test]
    async fn connections_queue_framed_and_drop_when_full() {
        let mut c = Connections::default();
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let (out, mut rx) = mpsc::channel(2);
        let verified = Arc::new(AtomicBool::new(false));
        c.opened(1, from, out, verified.clone());
        assert_eq!(c.inbound(1, from), Inbound::Deliver { first: true });
        assert_eq!(
            c.inbound(2, from),
            Inbound::Ignore,
            "another connection's frame"
        );
        c.verify(from);
        assert_eq!(c.inbound(1, from), Inbound::Deliver { first: false });
        assert!(c.send(from, b"ab") && c.send(from, b"cd"));
        assert!(!c.send(from, b"ef"), "the queue holds two");
        assert_eq!(&rx.recv().await.unwrap()[..], b"\x00\x02ab");
        assert!(!c.send("127.0.0.1:4001".parse().unwrap(), b"x"));
        c.closed(2, from);
        assert_eq!(
            c.len(),
            1,
            "a stale close of another connection id is ignored"
        );
        c.closed(1, from);
        assert!(c.is_empty());
    }
}
