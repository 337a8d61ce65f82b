//! Batched UDP sends: the engine's datagrams leave the media socket in `sendmmsg(2)`
//! calls of up to `MAX` datagrams, one system call per burst (a key frame fanned out
//! to every player) instead of one `sendto` per packet. Linux (and Android) only, like
//! the service.
//!
//! A datagram the kernel refuses for its own reason (a route gone, an ICMP error
//! pending on the socket) is skipped and logged at debug level, as a lone `sendto`
//! error was; a full socket buffer (`WouldBlock`) drops what is left of the batch,
//! each drop reported to the caller (the engine counts it and asks for a key frame).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use bytes::BytesMut;
use log::debug;
use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
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
