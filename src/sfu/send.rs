//! Batched UDP I/O. Sends: the engine's datagrams leave the media socket in as few
//! system calls as the kernel allows. A flush groups what is pending by destination
//! (each destination's datagrams keep their order) and sends each player's consecutive
//! datagrams of one size as one segment train (UDP GSO, `UDP_SEGMENT`: one `sendmsg`
//! hands the kernel up to `MAX_SEGMENTS` datagrams, which it walks through the stack
//! once and cuts at the end; the last may be shorter), the rest in `sendmmsg(2)` calls
//! of up to `MAX` datagrams. A key frame's packets to one player are mostly of one size
//! (the packetizer cuts a frame evenly), so most of a frame goes as one train.
//! Linux (and Android) only, like the service.
//!
//! A socket whose kernel or route refuses trains (no `UDP_SEGMENT`, a device without
//! checksum offload, `SO_NO_CHECK`) is found out on the first one: that train goes
//! datagram by datagram and so does everything after it on this batch.
//!
//! A datagram the kernel refuses for its own reason (a route gone, an ICMP error
//! pending on the socket) is skipped and logged at debug level, as a lone `sendto`
//! error was; a full socket buffer (`WouldBlock`) drops what is left of the batch,
//! each drop reported to the caller (the engine counts it and asks for a key frame).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use bytes::BytesMut;
use log::{debug, info};
use nix::errno::Errno;
use nix::sys::socket::{
    recvmmsg, sendmmsg, sendmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::engine::PeerId;

/// Datagrams per `sendmmsg` call.
pub const MAX: usize = 64;
/// Datagrams a batch holds before it must be flushed: a received burst fanned out to
/// every player, so that each player's part of it can leave as one train.
pub const PENDING: usize = 1024;
/// Datagrams per train (the kernel's `UDP_MAX_SEGMENTS` before 6.x), and its bytes
/// (a train is one UDP datagram to the kernel until it is cut: < 64 KiB).
pub const MAX_SEGMENTS: usize = 64;
const MAX_TRAIN_BYTES: usize = 60_000;

/// A socket `UdpBatch` sends from: the SFU task's tokio socket (its readiness is
/// kept by tokio), or a shard's plain non-blocking handle on the same socket.
pub trait BatchSocket {
    fn send_with(&self, send: impl FnOnce(RawFd) -> io::Result<usize>) -> io::Result<usize>;
}

impl BatchSocket for UdpSocket {
    fn send_with(&self, send: impl FnOnce(RawFd) -> io::Result<usize>) -> io::Result<usize> {
        self.try_io(Interest::WRITABLE, || send(self.as_raw_fd()))
    }
}

impl BatchSocket for std::net::UdpSocket {
    fn send_with(&self, send: impl FnOnce(RawFd) -> io::Result<usize>) -> io::Result<usize> {
        send(self.as_raw_fd())
    }
}

/// Datagrams waiting for the next `flush`. The kernel headers (`MultiHeaders`, raw
/// pointers, not `Send`) are made per system call: the batch lives in the SFU task's
/// future across awaits. That is a few small allocations per system call, none per
/// datagram.
pub struct UdpBatch {
    pending: Vec<(PeerId, SocketAddr, BytesMut)>,
    addresses: Vec<Option<SockaddrStorage>>,
    /// Indexes into `pending` in sending order, and the lone datagrams about to go in
    /// one `sendmmsg` (reused).
    order: Vec<usize>,
    lone: Vec<usize>,
    /// Whether trains are tried (until the socket refuses one).
    gso: bool,
}

impl Default for UdpBatch {
    fn default() -> Self {
        UdpBatch {
            pending: Vec::with_capacity(PENDING),
            addresses: Vec::with_capacity(MAX),
            order: Vec::with_capacity(PENDING),
            lone: Vec::with_capacity(PENDING),
            gso: true,
        }
    }
}

/// The segment trains of one flush: how many the kernel took, with how many datagrams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trains {
    pub sent: u64,
    pub datagrams: u64,
}

impl Trains {
    /// Into the service's metrics.
    pub fn count(self, counters: &crate::metrics::MediaCounters) {
        if self.sent > 0 {
            counters.udp_trains.add(self.sent);
            counters.udp_train_datagrams.add(self.datagrams);
        }
    }
}

/// What sending a group of datagrams came to.
enum Sent {
    /// Sent, or skipped for the kernel's own reasons.
    Done,
    /// The socket buffer is full: the rest of the batch is dropped.
    Full,
}

impl UdpBatch {
    /// A batch that sends segment trains (`trains`, until the socket refuses one) or
    /// never does (`[media] udp_gso = false`).
    pub fn new(trains: bool) -> Self {
        UdpBatch {
            gso: trains,
            ..UdpBatch::default()
        }
    }

    /// Queues a datagram for `to` (already in the socket's address family).
    pub fn push(&mut self, peer: PeerId, to: SocketAddr, data: BytesMut) {
        self.pending.push((peer, to, data));
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= PENDING
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether trains are still tried on this socket.
    pub fn tries_trains(&self) -> bool {
        self.gso
    }

    /// Sends everything queued; `dropped` is told of each datagram a full socket
    /// buffer refused. The segment trains it made, for the metrics.
    pub fn flush(&mut self, socket: &impl BatchSocket, mut dropped: impl FnMut(PeerId)) -> Trains {
        let mut trains = Trains::default();
        let mut order = std::mem::take(&mut self.order);
        let mut lone = std::mem::take(&mut self.lone);
        order.clear();
        order.extend(0..self.pending.len());
        lone.clear();
        if self.gso && self.pending.len() > 1 {
            // Stable: each destination's datagrams stay in the order they came.
            let pending = &self.pending;
            order.sort_by_key(|&i| pending[i].1);
        }
        let mut k = 0;
        let mut sent = Sent::Done;
        while k < order.len() {
            let end = if self.gso {
                self.train_end(&order, k)
            } else {
                k + 1
            };
            if end - k == 1 {
                lone.push(order[k]);
                k = end;
                continue;
            }
            // What is before the train (its destination's earlier datagrams among
            // them) leaves first.
            if let Sent::Full = self.send_each(socket, &lone, &mut dropped) {
                // Those are told already; the train and what follows are not.
                lone.clear();
                sent = Sent::Full;
                break;
            }
            lone.clear();
            match self.send_train(socket, &order[k..end]) {
                Ok(()) => {
                    trains.sent += 1;
                    trains.datagrams += (end - k) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sent = Sent::Full;
                    break;
                }
                Err(e) if refuses_trains(&e) => {
                    // No segmentation on this socket or its route: datagram by
                    // datagram from now on, this train first.
                    info!("UDP segment trains refused ({e}): sending datagram by datagram");
                    self.gso = false;
                    if let Sent::Full = self.send_each(socket, &order[k..end], &mut dropped) {
                        k = end;
                        sent = Sent::Full;
                        break;
                    }
                }
                // E.g. a destination the socket cannot reach: the train is skipped.
                Err(e) => debug!("send to {}: {e}", self.pending[order[k]].1),
            }
            k = end;
        }
        if let Sent::Done = sent {
            let _ = self.send_each(socket, &lone, &mut dropped);
        } else {
            // What was not sent: the lone ones waiting and everything from `k`.
            for &i in lone.iter().chain(&order[k..]) {
                dropped(self.pending[i].0);
            }
        }
        self.pending.clear();
        self.order = order;
        self.lone = lone;
        trains
    }

    /// The end (exclusive) of the train starting at `order[k]`: following datagrams
    /// to the same destination of the first one's size, the last possibly shorter.
    fn train_end(&self, order: &[usize], k: usize) -> usize {
        let (_, to, first) = &self.pending[order[k]];
        let size = first.len();
        if size == 0 || size > usize::from(u16::MAX) {
            return k + 1;
        }
        let mut total = size;
        let mut j = k + 1;
        while j < order.len() && j - k < MAX_SEGMENTS {
            let (_, next_to, next) = &self.pending[order[j]];
            if next_to != to || next.len() > size || next.is_empty() {
                break;
            }
            if total + next.len() > MAX_TRAIN_BYTES {
                break;
            }
            total += next.len();
            j += 1;
            if next.len() < size {
                break;
            }
        }
        j
    }

    /// One `sendmsg` with `UDP_SEGMENT` for these datagrams (same destination, all but
    /// the last of the first one's size).
    fn send_train(&self, socket: &impl BatchSocket, train: &[usize]) -> io::Result<()> {
        let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS];
        for (slot, &i) in iov.iter_mut().zip(train) {
            *slot = IoSlice::new(&self.pending[i].2);
        }
        let (_, to, first) = &self.pending[train[0]];
        let segment = u16::try_from(first.len()).unwrap_or(u16::MAX);
        let to = SockaddrStorage::from(*to);
        socket
            .send_with(|fd| {
                sendmsg(
                    fd,
                    &iov[..train.len()],
                    &[ControlMessage::UdpGsoSegments(&segment)],
                    MsgFlags::empty(),
                    Some(&to),
                )
                .map_err(io::Error::from)
            })
            .map(drop)
    }

    /// These datagrams in `sendmmsg` calls of up to `MAX`, in order. A full buffer
    /// drops (and reports) what is left of them.
    fn send_each(
        &mut self,
        socket: &impl BatchSocket,
        which: &[usize],
        dropped: &mut impl FnMut(PeerId),
    ) -> Sent {
        let mut start = 0;
        while start < which.len() {
            let chunk = &which[start..which.len().min(start + MAX)];
            self.addresses.clear();
            let pending = &self.pending;
            self.addresses.extend(
                chunk
                    .iter()
                    .map(|&i| Some(SockaddrStorage::from(pending[i].1))),
            );
            let slices: Vec<[IoSlice<'_>; 1]> = chunk
                .iter()
                .map(|&i| [IoSlice::new(&pending[i].2)])
                .collect();
            let addresses = &self.addresses;
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
            let sent = socket.send_with(|fd| {
                sendmmsg(fd, &mut headers, &slices, addresses, [], MsgFlags::empty())
                    .map(Iterator::count)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(n) if n > 0 => start += n,
                // Nothing taken without an error (as a full buffer), or a full buffer.
                Ok(_) => {
                    which[start..].iter().for_each(|&i| dropped(pending[i].0));
                    return Sent::Full;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    which[start..].iter().for_each(|&i| dropped(pending[i].0));
                    return Sent::Full;
                }
                // The first datagram of the chunk failed on its own: the rest goes on.
                Err(e) => {
                    debug!("send to {}: {e}", pending[chunk[0]].1);
                    start += 1;
                }
            }
        }
        Sent::Done
    }
}

/// Errors with which a kernel refuses a segment train it would take as datagrams:
/// `EIO` (no checksum offload on the route), `EINVAL` (`SO_NO_CHECK`, segment larger
/// than the route's MTU), `ENOPROTOOPT`/`EOPNOTSUPP` (no `UDP_SEGMENT` at all).
fn refuses_trains(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP)
    )
}

/// Datagrams per `recvmmsg` call.
pub const RECV_BATCH: usize = 16;

/// Batched UDP receives: up to `RECV_BATCH` datagrams per `recvmmsg(2)` call into
/// buffers kept for the task's life.
pub struct UdpReceive {
    bufs: Vec<Vec<u8>>,
    /// Length and sender of each datagram of the last call.
    got: Vec<(usize, SocketAddr)>,
}

impl UdpReceive {
    /// Buffers of `datagram` bytes (a longer datagram is cut, as `recv_from` did).
    pub fn new(datagram: usize) -> Self {
        UdpReceive {
            bufs: vec![vec![0u8; datagram]; RECV_BATCH],
            got: Vec::with_capacity(RECV_BATCH),
        }
    }

    /// Reads what the socket holds now, up to `RECV_BATCH` datagrams; their number.
    /// `WouldBlock` when there is nothing (the socket's readiness is cleared).
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.got.clear();
        let (bufs, got) = (&mut self.bufs, &mut self.got);
        socket.try_io(Interest::READABLE, || {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(RECV_BATCH, None);
            let results = recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            for r in results {
                let from = r.address.and_then(|a| {
                    let v4 = a
                        .as_sockaddr_in()
                        .map(|v| SocketAddr::from(std::net::SocketAddrV4::from(*v)));
                    v4.or_else(|| {
                        a.as_sockaddr_in6()
                            .map(|v| SocketAddr::from(std::net::SocketAddrV6::from(*v)))
                    })
                });
                if let Some(from) = from {
                    got.push((r.bytes, from));
                }
            }
            Ok(got.len())
        })
    }

    /// Datagram `i` of the last call: its bytes and its sender (IPv4-mapped addresses
    /// as IPv4).
    pub fn datagram(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (n, from) = *self.got.get(i)?;
        let data = self.bufs.get(i)?.get(..n)?;
        Some((data, SocketAddr::new(from.ip().to_canonical(), from.port())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sending socket as in the SFU task, where it has long been polled.
    async fn sender() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.writable().await.unwrap();
        socket
    }

    async fn receiver() -> (std::net::UdpSocket, SocketAddr) {
        let r = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        r.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let a = r.local_addr().unwrap();
        (r, a)
    }

    /// Datagrams from a v4 and a v6 sender come out in order with their senders, in
    /// batches of at most `RECV_BATCH`; an empty socket is `WouldBlock`.
    #[tokio::test]
    async fn received_datagrams_come_in_batches_with_their_senders() {
        let socket = UdpSocket::bind("[::]:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        for i in 0..20u8 {
            v4.send_to(&[i; 3], ("127.0.0.1", port)).unwrap();
        }
        v6.send_to(b"six", ("::1", port)).unwrap();
        let mut rx = UdpReceive::new(1500);
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while seen.len() < 21 && tokio::time::Instant::now() < deadline {
            socket.readable().await.unwrap();
            match rx.recv(&socket) {
                Ok(n) => {
                    assert!(n <= RECV_BATCH);
                    for i in 0..n {
                        let (data, from) = rx.datagram(i).unwrap();
                        seen.push((data.to_vec(), from));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(seen.len(), 21);
        for (i, (data, from)) in seen[..20].iter().enumerate() {
            assert_eq!(data, &vec![i as u8; 3]);
            assert_eq!(*from, v4.local_addr().unwrap(), "mapped v4 given as v4");
        }
        assert_eq!(seen[20], (b"six".to_vec(), v6.local_addr().unwrap()));
        let e = rx.recv(&socket).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[tokio::test]
    async fn a_burst_to_several_peers_arrives_whole_and_in_order() {
        let socket = sender().await;
        let (a, a_addr) = receiver().await;
        let (b, b_addr) = receiver().await;
        let mut batch = UdpBatch::default();
        let mut drops = 0;
        // 150 datagrams (more than two system calls' worth), interleaved.
        for i in 0..75u16 {
            for (peer, to) in [(1, a_addr), (2, b_addr)] {
                let mut d = BytesMut::new();
                d.extend_from_slice(&i.to_be_bytes());
                d.extend_from_slice(&[peer as u8; 100]);
                batch.push(peer, to, d);
                if batch.is_full() {
                    batch.flush(&socket, |_| drops += 1);
                }
            }
        }
        batch.flush(&socket, |_| drops += 1);
        assert_eq!(drops, 0);
        for (r, peer) in [(a, 1u8), (b, 2u8)] {
            let mut buf = [0u8; 200];
            for i in 0..75u16 {
                let n = r.recv(&mut buf).unwrap();
                assert_eq!(n, 102);
                assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), i);
                assert_eq!(buf[2], peer);
            }
        }
    }

    /// What a player gets of a frame: mostly one size, a shorter last packet, audio
    /// between; the receivers get every datagram whole and in order.
    fn frames(batch: &mut UdpBatch, a: SocketAddr, b: SocketAddr) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut sent = Vec::new();
        let sizes_a = [
            1200, 1200, 1200, 1200, 1200, 1199, 1199, 1199, 300, 90, 1100, 1100,
        ];
        let sizes_b = [500, 600, 600, 600, 90, 600];
        for i in 0..sizes_a.len().max(sizes_b.len()) {
            for (peer, to, sizes) in [(1, a, &sizes_a[..]), (2, b, &sizes_b[..])] {
                let Some(&size) = sizes.get(i) else { continue };
                let mut d = vec![i as u8; size];
                d[size - 1] = peer as u8;
                batch.push(peer, to, BytesMut::from(&d[..]));
                sent.push((to, d));
            }
        }
        sent
    }

    /// `frames` through `batch` on `socket`: nothing dropped, every datagram whole and in
    /// order at each receiver. The trains the flush made.
    fn frames_arrive(
        socket: &UdpSocket,
        batch: &mut UdpBatch,
        receivers: [&std::net::UdpSocket; 2],
    ) -> Trains {
        let at = receivers.map(|r| r.local_addr().unwrap());
        let sent = frames(batch, at[0], at[1]);
        let mut drops = 0;
        let trains = batch.flush(socket, |_| drops += 1);
        assert_eq!(drops, 0);
        let mut buf = vec![0u8; 2000];
        for (r, at) in receivers.into_iter().zip(at) {
            for (to, d) in sent.iter().filter(|(to, _)| *to == at) {
                let n = r.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &d[..], "to {to}: {n} bytes");
            }
        }
        trains
    }

    #[tokio::test]
    async fn a_players_datagrams_of_one_size_leave_as_trains_in_order() {
        let socket = sender().await;
        let (a, a_addr) = receiver().await;
        let (b, _) = receiver().await;
        let mut batch = UdpBatch::default();
        let trains = frames_arrive(&socket, &mut batch, [&a, &b]);
        // a: 1200×5 + 1199 ends one, 1199 1199 300 the next, 90 alone, 1100 1100;
        // b: 500 alone, 600×3 + 90, 600 alone.
        assert_eq!(
            trains,
            Trains {
                sent: 4,
                datagrams: 6 + 3 + 2 + 4
            }
        );
        assert!(batch.tries_trains());
        // Trains longer than a kernel's limit are cut in several.
        for i in 0..(MAX_SEGMENTS + 10) as u16 {
            let mut d = BytesMut::from(&[0u8; 100][..]);
            d[..2].copy_from_slice(&i.to_be_bytes());
            batch.push(1, a_addr, d);
        }
        let trains = batch.flush(&socket, |_| panic!("dropped"));
        let mut buf = [0u8; 200];
        for i in 0..(MAX_SEGMENTS + 10) as u16 {
            assert_eq!(a.recv(&mut buf).unwrap(), 100);
            assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), i);
        }
        assert_eq!(
            trains,
            Trains {
                sent: 2,
                datagrams: MAX_SEGMENTS as u64 + 10
            }
        );
    }

    /// A socket that refuses trains (`SO_NO_CHECK`: the kernel will not segment
    /// without checksums) gets every datagram one by one, in order.
    #[tokio::test]
    async fn a_socket_that_refuses_trains_gets_datagrams() {
        let socket = sender().await;
        let one: nix::libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the right size.
        let r = unsafe {
            nix::libc::setsockopt(
                socket.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_NO_CHECK,
                std::ptr::addr_of!(one).cast(),
                std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        let (a, _) = receiver().await;
        let (b, _) = receiver().await;
        let mut batch = UdpBatch::default();
        let trains = frames_arrive(&socket, &mut batch, [&a, &b]);
        assert_eq!((batch.tries_trains(), trains), (false, Trains::default()));
        // And a batch made without trains sends none.
        let mut batch = UdpBatch::new(false);
        let trains = frames_arrive(&sender().await, &mut batch, [&a, &b]);
        assert_eq!((batch.tries_trains(), trains), (false, Trains::default()));
    }

    #[tokio::test]
    async fn a_datagram_the_kernel_refuses_is_skipped_and_the_rest_goes() {
        let socket = sender().await;
        let (a, a_addr) = receiver().await;
        let mut batch = UdpBatch::default();
        let mut drops = 0;
        // An IPv6 destination on an IPv4 socket fails by itself (EAFNOSUPPORT/EINVAL).
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        for (i, to) in [a_addr, v6, a_addr].into_iter().enumerate() {
            batch.push(1, to, BytesMut::from(&[i as u8][..]));
        }
        batch.flush(&socket, |_| drops += 1);
        assert_eq!(drops, 0, "a refused datagram is not a full buffer");
        let mut buf = [0u8; 8];
        assert_eq!(a.recv(&mut buf).unwrap(), 1);
        assert_eq!(buf[0], 0);
        assert_eq!(a.recv(&mut buf).unwrap(), 1);
        assert_eq!(buf[0], 2);
        assert!(batch.pending.is_empty());
    }
}
