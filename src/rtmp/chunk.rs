//! A pure RTMP chunk-header scanner that runs in front of rml_rtmp: it follows chunk
//! boundaries without copying payloads and refuses, before rml_rtmp allocates or
//! mis-parses anything, a message length above the limit (rml_rtmp reserves the whole
//! announced length, up to 16 MiB, at the first chunk), chunks of a new message while
//! another is partial (interleaving: rml_rtmp 0.8 keeps one partial payload and
//! underflows or grows without bound), and continuation chunks on a chunk stream that
//! never had a full header. Bytes in, `Ok` or a reason out: a fuzz target as it stands.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChunkError {
    #[error("message of {length} bytes on chunk stream {csid} exceeds the limit of {limit}")]
    MessageTooLarge { csid: u32, length: u32, limit: u32 },
    #[error("chunk stream {csid} starts a message while chunk stream {partial} is mid-message (interleaved chunk streams are not supported)")]
    Interleaved { csid: u32, partial: u32 },
    #[error("chunk stream {0} changes the message length in the middle of a message")]
    LengthChanged(u32),
    #[error("a header-compressed chunk on chunk stream {0} before any full header")]
    NoPreviousHeader(u32),
    #[error("more than {0} chunk streams")]
    TooManyStreams(usize),
    #[error("chunk size {0} refused")]
    ChunkSize(u32),
}

/// Chunk streams one connection may use (ffmpeg and OBS use 2-7).
pub const MAX_CHUNK_STREAMS: usize = 64;

#[derive(Debug, Clone, Copy, Default)]
struct StreamHeader {
    csid: u32,
    length: u32,
    type_id: u8,
    extended: bool,
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Collecting a chunk header in `header`.
    Header,
    /// Inside a chunk's payload: bytes left in this chunk.
    Payload { left: u32 },
}

/// Follows the chunk stream one input slice at a time.
#[derive(Debug)]
pub struct ChunkScanner {
    max_message: u32,
    chunk_size: u32,
    streams: Vec<StreamHeader>,
    stage: Stage,
    header: [u8; 18],
    have: usize,
    /// The message being read: (csid, bytes left, type id).
    partial: Option<(u32, u32, u8)>,
    /// The first 4 bytes of a SetChunkSize message being read.
    set_chunk: [u8; 4],
    set_chunk_have: usize,
}

impl ChunkScanner {
    pub fn new(max_message: u32) -> ChunkScanner {
        ChunkScanner {
            max_message,
            chunk_size: 128,
            streams: Vec::new(),
            stage: Stage::Header,
            header: [0; 18],
            have: 0,
            partial: None,
            set_chunk: [0; 4],
            set_chunk_have: 0,
        }
    }

    /// Changes the largest message accepted from the next message on.
    pub fn set_max_message(&mut self, max_message: u32) {
        self.max_message = max_message;
    }

    /// Scans the next bytes of the stream (after the handshake).
    pub fn scan(&mut self, mut bytes: &[u8]) -> Result<(), ChunkError> {
        while !bytes.is_empty() {
            match self.stage {
                Stage::Header => {
                    let (&b, rest) = bytes.split_first().unwrap_or((&0, &[]));
                    bytes = rest;
                    self.header[self.have] = b;
                    self.have += 1;
                    if let Some(needed) = self.header_size() {
                        if self.have == needed {
                            self.header_complete()?;
                        }
                    }
                }
                Stage::Payload { left } => {
                    let n = (left as usize).min(bytes.len());
                    if let Some((_, _, 1)) = self.partial {
                        for &b in &bytes[..n] {
                            if self.set_chunk_have < 4 {
                                self.set_chunk[self.set_chunk_have] = b;
                                self.set_chunk_have += 1;
                            }
                        }
                    }
                    bytes = &bytes[n..];
                    self.consume(n as u32)?;
                }
            }
        }
        Ok(())
    }

    /// The full header size once enough of it is known.
    fn header_size(&self) -> Option<usize> {
        let fmt = self.header[0] >> 6;
        let basic = match self.header[0] & 0x3f {
            0 => 2,
            1 => 3,
            _ => 1,
        };
        if self.have < basic {
            return None;
        }
        let message = [11, 7, 3, 0][fmt as usize];
        let base = basic + message;
        let csid = self.csid();
        let extended = if fmt == 3 {
            self.find(csid).is_some_and(|s| s.extended)
        } else {
            if self.have < base {
                return None;
            }
            self.header[basic..basic + 3] == [0xff, 0xff, 0xff]
        };
        Some(base + if extended { 4 } else { 0 })
    }

    fn csid(&self) -> u32 {
        match self.header[0] & 0x3f {
            0 => 64 + self.header[1] as u32,
            1 => 64 + self.header[1] as u32 + ((self.header[2] as u32) << 8),
            id => id as u32,
        }
    }

    fn find(&self, csid: u32) -> Option<&StreamHeader> {
        self.streams.iter().find(|s| s.csid == csid)
    }

    fn header_complete(&mut self) -> Result<(), ChunkError> {
        let fmt = self.header[0] >> 6;
        let csid = self.csid();
        let basic = match self.header[0] & 0x3f {
            0 => 2,
            1 => 3,
            _ => 1,
        };
        let h = &self.header[basic..self.have];
        let previous_length = self.find(csid).map(|s| s.length);
        let mut stream = match self.find(csid) {
            Some(s) => *s,
            None if fmt == 0 => StreamHeader {
                csid,
                ..Default::default()
            },
            None => return Err(ChunkError::NoPreviousHeader(csid)),
        };
        if fmt < 3 {
            stream.extended = h[..3] == [0xff, 0xff, 0xff];
        }
        if fmt <= 1 {
            stream.length = u32::from_be_bytes([0, h[3], h[4], h[5]]);
            stream.type_id = h[6];
        }
        // A chunk on the chunk stream of the partial message continues it, whatever
        // its header type: rml_rtmp reads it so (and its own serializer writes full
        // headers on continuation chunks when asked for uncompressed output), so a
        // header that changes the length is refused instead.
        let continues = self.partial.is_some_and(|(c, _, _)| c == csid);
        if continues && fmt <= 1 && Some(stream.length) != previous_length {
            return Err(ChunkError::LengthChanged(csid));
        }
        if !continues {
            if let Some((partial, _, _)) = self.partial {
                return Err(ChunkError::Interleaved { csid, partial });
            }
            if stream.length > self.max_message {
                return Err(ChunkError::MessageTooLarge {
                    csid,
                    length: stream.length,
                    limit: self.max_message,
                });
            }
            self.partial = Some((csid, stream.length, stream.type_id));
            self.set_chunk_have = 0;
        }
        if let Some(s) = self.streams.iter_mut().find(|s| s.csid == csid) {
            *s = stream;
        } else if self.streams.len() >= MAX_CHUNK_STREAMS {
            return Err(ChunkError::TooManyStreams(MAX_CHUNK_STREAMS));
        } else {
            self.streams.push(stream);
        }
        self.have = 0;
        let left = self.partial.map_or(0, |(_, left, _)| left);
        self.stage = Stage::Payload {
            left: left.min(self.chunk_size),
        };
        // An empty message completes at its header.
        self.consume(0)
    }

    /// `n` payload bytes of the current chunk were read.
    fn consume(&mut self, n: u32) -> Result<(), ChunkError> {
        let Stage::Payload { left } = self.stage else {
            return Ok(());
        };
        let left = left - n;
        if let Some((csid, message_left, type_id)) = self.partial {
            let message_left = message_left - n;
            self.partial = Some((csid, message_left, type_id));
            if message_left == 0 {
                self.partial = None;
                if type_id == 1 && self.set_chunk_have == 4 {
                    let size = u32::from_be_bytes(self.set_chunk);
                    if size == 0 || size > 1 << 24 {
                        return Err(ChunkError::ChunkSize(size));
                    }
                    self.chunk_size = size;
                }
            }
        }
        self.stage = if left == 0 {
            Stage::Header
        } else {
            Stage::Payload { left }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::chunk_io::ChunkSerializer;
    use rml_rtmp::messages::MessagePayload;
    use rml_rtmp::time::RtmpTimestamp;

    fn serialized(type_id: u8, csid_hint_stream: u32, len: usize, ts: u32) -> Vec<u8> {
        let payload = MessagePayload {
            timestamp: RtmpTimestamp::new(ts),
            message_stream_id: csid_hint_stream,
            type_id,
            data: vec![7u8; len].into(),
        };
        ChunkSerializer::new()
            .serialize(&payload, false, false)
            .unwrap()
            .bytes
    }

    #[test]
    fn follows_what_rml_rtmp_serializes_in_any_split() {
        let mut stream = Vec::new();
        let mut ser = ChunkSerializer::new();
        for (i, len) in [0usize, 1, 127, 128, 129, 5000, 300]
            .into_iter()
            .enumerate()
        {
            // Extended timestamps past 0xFFFFFF on some of them.
            let ts = if i % 2 == 0 {
                1000 * i as u32
            } else {
                0x0100_0000 + i as u32
            };
            let payload = MessagePayload {
                timestamp: RtmpTimestamp::new(ts),
                message_stream_id: 1,
                type_id: 9,
                data: vec![i as u8; len].into(),
            };
            stream.extend(ser.serialize(&payload, false, false).unwrap().bytes);
        }
        for split in [1, 2, 3, 7, 128, 4096, stream.len()] {
            let mut s = ChunkScanner::new(1 << 20);
            for piece in stream.chunks(split) {
                s.scan(piece).unwrap();
            }
            assert!(s.partial.is_none(), "split {split}");
            assert!(matches!(s.stage, Stage::Header));
        }
    }

    #[test]
    fn follows_a_chunk_size_change() {
        let mut set = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
        set.extend_from_slice(&4096u32.to_be_bytes());
        let mut big = vec![0x04, 0, 0, 0, 0, 0x0f, 0xa0, 9, 1, 0, 0, 0]; // 4000 bytes
        big.extend(std::iter::repeat_n(0u8, 4000));
        let mut s = ChunkScanner::new(1 << 20);
        s.scan(&set).unwrap();
        s.scan(&big).unwrap();
        assert!(s.partial.is_none());
        // Without the change the same bytes are a 128-byte chunk then junk headers.
        let mut s = ChunkScanner::new(1 << 20);
        assert!(s.scan(&big).is_err());
        for size in [0u32, (1 << 24) + 1, 1 << 31] {
            let mut set = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
            set.extend_from_slice(&size.to_be_bytes());
            assert_eq!(
                ChunkScanner::new(1 << 20).scan(&set),
                Err(ChunkError::ChunkSize(size))
            );
        }
    }

    #[test]
    fn refuses_large_interleaved_and_headless_chunks() {
        let mut s = ChunkScanner::new(1 << 20);
        let e = s.scan(&[0x04, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0]);
        assert_eq!(
            e,
            Err(ChunkError::MessageTooLarge {
                csid: 4,
                length: 0xff_ffff,
                limit: 1 << 20
            })
        );
        let mut s = ChunkScanner::new(1 << 20);
        let mut v = serialized(9, 1, 1000, 0);
        v.truncate(12 + 128 + 1 + 128); // two whole chunks, mid-message
        v.extend(serialized(8, 1, 10, 0)); // audio on another csid
        assert!(matches!(s.scan(&v), Err(ChunkError::Interleaved { .. })));
        // Full headers on continuation chunks (rml_rtmp's uncompressed output) are fine
        // as long as they keep the length.
        let payload = MessagePayload {
            timestamp: RtmpTimestamp::new(0),
            message_stream_id: 0,
            type_id: 18,
            data: vec![1u8; 1000].into(),
        };
        let v = ChunkSerializer::new()
            .serialize(&payload, true, false)
            .unwrap()
            .bytes;
        let mut s = ChunkScanner::new(1 << 20);
        s.scan(&v).unwrap();
        assert!(s.partial.is_none());
        let mut v = serialized(9, 1, 1000, 0);
        v.truncate(12 + 128);
        v.extend([0x44, 0, 0, 0, 0, 0, 9, 9]); // fmt 1 on csid 4, length 9
        let csid = (v[0] & 0x3f) as u32;
        assert_eq!(
            ChunkScanner::new(1 << 20).scan(&v),
            Err(ChunkError::LengthChanged(csid))
        );
        assert_eq!(
            ChunkScanner::new(1 << 20).scan(&[0xc5]),
            Err(ChunkError::NoPreviousHeader(5))
        );
        assert_eq!(
            ChunkScanner::new(1 << 20).scan(&[0x7f, 0, 0, 0, 0, 0, 1, 9]),
            Err(ChunkError::NoPreviousHeader(63))
        );
        // 65 chunk streams with empty messages.
        let mut s = ChunkScanner::new(1 << 20);
        let mut r = Ok(());
        for csid in 0..70u8 {
            r = s.scan(&[0x00, csid, 0, 0, 0, 0, 0, 0, 18, 0, 0, 0, 0]);
            if r.is_err() {
                break;
            }
        }
        assert_eq!(r, Err(ChunkError::TooManyStreams(MAX_CHUNK_STREAMS)));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x = 0x9e37_79b9u32;
        for round in 0..3000 {
            let mut s = ChunkScanner::new(1 << 16);
            let mut buf = Vec::new();
            for _ in 0..(round % 300) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                buf.push(x as u8);
            }
            for piece in buf.chunks(1 + round % 17) {
                if s.scan(piece).is_err() {
                    break;
                }
            }
        }
    }
}
