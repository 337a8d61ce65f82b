//! Batched UDP I/O. Sends: the engine's datagrams leave the media socket in `sendmmsg(2)`
//! calls of up to `MAX` datagrams, one system call per burst (a key frame fanned out
//! to every player) instead of one `sendto` per packet. Linux (and Android) only, like
//! the service.
//!
//! A datagram the kernel refuses for its own reason (a route gone, an ICMP error
//! pending on the socket) is skipped and logged at debug level, as a lone `sendto`
//! error was; a full socket buffer (`WouldBlock`) drops what is left of the batch,
//! each drop reported to the caller (the engine counts it and asks for a key frame).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use bytes::BytesMut;
use log::debug;
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::engine::PeerId;

/// Datagrams per system call.
pub const MAX: usize = 64;

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
/// future across awaits. That is two small allocations per up to `MAX` datagrams.
pub struct UdpBatch {
    pending: Vec<(PeerId, SocketAddr, BytesMut)>,
    addresses: Vec<Option<SockaddrStorage>>,
}

impl Default for UdpBatch {
    fn default() -> Self {
        UdpBatch {
            pending: Vec::with_capacity(MAX),
            addresses: Vec::with_capacity(MAX),
        }
    }
}

impl UdpBatch {
    /// Queues a datagram for `to` (already in the socket's address family).
    pub fn push(&mut self, peer: PeerId, to: SocketAddr, data: BytesMut) {
        self.pending.push((peer, to, data));
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= MAX
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Sends everything queued; `dropped` is told of each datagram a full socket
    /// buffer refused.
    pub fn flush(&mut self, socket: &impl BatchSocket, mut dropped: impl FnMut(PeerId)) {
        let mut start = 0;
        while start < self.pending.len() {
            let chunk = &self.pending[start..self.pending.len().min(start + MAX)];
            self.addresses.clear();
            self.addresses.extend(
                chunk
                    .iter()
                    .map(|(_, to, _)| Some(SockaddrStorage::from(*to))),
            );
            let slices: Vec<[IoSlice<'_>; 1]> =
                chunk.iter().map(|(_, _, d)| [IoSlice::new(d)]).collect();
            let addresses = &self.addresses;
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
            let sent = socket.send_with(|fd| {
                sendmmsg(fd, &mut headers, &slices, addresses, [], MsgFlags::empty())
                    .map(Iterator::count)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(n) if n > 0 => start += n,
                // Nothing taken without an error: as a full buffer.
                Ok(_) => {
                    self.pending[start..]
                        .iter()
                        .for_each(|(p, _, _)| dropped(*p));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pending[start..]
                        .iter()
                        .for_each(|(p, _, _)| dropped(*p));
                    break;
                }
                // The first datagram of the chunk failed on its own: the rest goes on.
                Err(e) => {
                    debug!("send to {}: {e}", chunk[0].1);
                    start += 1;
                }
            }
        }
        self.pending.clear();
    }
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
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // As in the SFU task, where the socket has long been polled.
        socket.writable().await.unwrap();
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

    #[tokio::test]
    async fn a_datagram_the_kernel_refuses_is_skipped_and_the_rest_goes() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // As in the SFU task, where the socket has long been polled.
        socket.writable().await.unwrap();
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
