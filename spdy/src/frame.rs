//! SPDY/3 (and 3.1) framing: parse frames out of a byte buffer and encode
//! them back to bytes.
//!
//! Wire layouts (SPDY/3 draft, section 2.2; 3.1 only adds session-level
//! flow control, with the same frame layouts and version number 3):
//!
//! ```text
//! Control frame                        Data frame
//! +----------------------------------+ +----------------------------------+
//! |C| Version(15bits) | Type(16bits) | |C|       Stream-ID (31bits)       |
//! +----------------------------------+ +----------------------------------+
//! | Flags (8)  |  Length (24 bits)   | | Flags (8)  |  Length (24 bits)   |
//! +----------------------------------+ +----------------------------------+
//! |               Data               | |               Data               |
//! +----------------------------------+ +----------------------------------+
//! ```
//!
//! Header blocks of SYN_STREAM / SYN_REPLY / HEADERS are carried here as
//! opaque compressed bytes; see [`crate::headers`] for (de)compression,
//! which needs session-wide state and so does not belong in the framer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;
use thiserror::Error;
use tracing::trace;

/// The only protocol version spoken (SPDY/3.1 frames also say 3).
pub const SPDY_VERSION: u16 = 3;
/// Size of the common frame header.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload the 24-bit length field can describe.
pub const MAX_FRAME_PAYLOAD: u32 = 0x00ff_ffff;

/// DATA / SYN_STREAM / SYN_REPLY / HEADERS flag: last frame from this sender.
pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM flag: the recipient may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// SETTINGS flag: clear previously persisted settings.
pub const FLAG_SETTINGS_CLEAR_SETTINGS: u8 = 0x01;

/// Control frame type codes.
pub mod frame_type {
    /// SYN_STREAM
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS
    pub const SETTINGS: u16 = 4;
    /// PING (type 5 was NOOP in SPDY/2 and is unused in SPDY/3)
    pub const PING: u16 = 6;
    /// GOAWAY
    pub const GOAWAY: u16 = 7;
    /// HEADERS
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE
    pub const WINDOW_UPDATE: u16 = 9;
}

/// SETTINGS ids (SPDY/3 section 2.6.4).
pub mod settings_id {
    /// SETTINGS_UPLOAD_BANDWIDTH
    pub const UPLOAD_BANDWIDTH: u32 = 1;
    /// SETTINGS_DOWNLOAD_BANDWIDTH
    pub const DOWNLOAD_BANDWIDTH: u32 = 2;
    /// SETTINGS_ROUND_TRIP_TIME
    pub const ROUND_TRIP_TIME: u32 = 3;
    /// SETTINGS_MAX_CONCURRENT_STREAMS
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    /// SETTINGS_CURRENT_CWND
    pub const CURRENT_CWND: u32 = 5;
    /// SETTINGS_DOWNLOAD_RETRANS_RATE
    pub const DOWNLOAD_RETRANS_RATE: u32 = 6;
    /// SETTINGS_INITIAL_WINDOW_SIZE
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
    /// SETTINGS_CLIENT_CERTIFICATE_VECTOR_SIZE
    pub const CLIENT_CERTIFICATE_VECTOR_SIZE: u32 = 8;
}

/// Per-entry SETTINGS flag: the sender asks the receiver to persist it.
pub const FLAG_SETTINGS_PERSIST_VALUE: u8 = 0x01;
/// Per-entry SETTINGS flag: a value the receiver had persisted.
pub const FLAG_SETTINGS_PERSISTED: u8 = 0x02;

macro_rules! status_type {
    ($(#[$m:meta])* $name:ident { $($(#[$cm:meta])* $c:ident = $v:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub u32);

        impl $name {
            $($(#[$cm])* pub const $c: $name = $name($v);)*

            /// The spec's name for this code, if it has one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($v => Some(stringify!($c)),)*
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

status_type! {
    /// RST_STREAM status code (SPDY/3 section 2.6.3).
    RstStatus {
        /// Generic error for the stream.
        PROTOCOL_ERROR = 1,
        /// A frame arrived for a stream that is not active.
        INVALID_STREAM = 2,
        /// The stream was refused before any processing.
        REFUSED_STREAM = 3,
        /// Unsupported SPDY version.
        UNSUPPORTED_VERSION = 4,
        /// The creator of the stream no longer needs it.
        CANCEL = 5,
        /// Internal failure unrelated to the protocol.
        INTERNAL_ERROR = 6,
        /// The peer violated flow control.
        FLOW_CONTROL_ERROR = 7,
        /// A SYN_REPLY/SYN_STREAM for an already open stream.
        STREAM_IN_USE = 8,
        /// Data or SYN_REPLY for a half-closed stream.
        STREAM_ALREADY_CLOSED = 9,
        /// Bad credentials.
        INVALID_CREDENTIALS = 10,
        /// A frame too large for the implementation.
        FRAME_TOO_LARGE = 11,
    }
}

status_type! {
    /// GOAWAY status code. The values are those used by Go's `spdy` package
    /// (vendored in moby/spdystream) and by spdy-transport.
    GoAwayStatus {
        /// Normal session teardown.
        OK = 0,
        /// Protocol error.
        PROTOCOL_ERROR = 1,
        /// Internal error.
        INTERNAL_ERROR = 2,
    }
}

/// One SETTINGS entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Per-entry flags (`FLAG_SETTINGS_PERSIST_VALUE`, `FLAG_SETTINGS_PERSISTED`).
    pub flags: u8,
    /// 24-bit setting id, see [`settings_id`].
    pub id: u32,
    /// The value.
    pub value: u32,
}

/// A decoded SPDY/3 frame. Stream ids are 31-bit; the reserved high bit is
/// dropped when parsing and written as zero when encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// DATA.
    Data {
        /// Stream the data belongs to (never 0).
        stream_id: u32,
        /// `FLAG_FIN` or 0.
        flags: u8,
        /// Payload.
        data: Bytes,
    },
    /// SYN_STREAM: the peer opens a stream.
    SynStream {
        /// New stream id (never 0).
        stream_id: u32,
        /// Associated stream (server push); 0 if none.
        associated_id: u32,
        /// 3-bit priority, 0 highest.
        priority: u8,
        /// Credential slot.
        slot: u8,
        /// `FLAG_FIN` and/or `FLAG_UNIDIRECTIONAL`.
        flags: u8,
        /// Compressed name/value block.
        header_block: Bytes,
    },
    /// SYN_REPLY: acceptance of a stream.
    SynReply {
        /// Stream id (never 0).
        stream_id: u32,
        /// `FLAG_FIN` or 0.
        flags: u8,
        /// Compressed name/value block.
        header_block: Bytes,
    },
    /// RST_STREAM: abnormal termination of a stream.
    RstStream {
        /// Stream id (never 0).
        stream_id: u32,
        /// Why.
        status: RstStatus,
    },
    /// SETTINGS.
    Settings {
        /// `FLAG_SETTINGS_CLEAR_SETTINGS` or 0.
        flags: u8,
        /// The entries.
        entries: Vec<Setting>,
    },
    /// PING; client-initiated ids are odd, server-initiated even.
    Ping {
        /// Opaque id, echoed back by the receiver.
        id: u32,
    },
    /// GOAWAY: the sender will accept no new streams.
    GoAway {
        /// Last stream id the sender accepted.
        last_good_stream_id: u32,
        /// Why.
        status: GoAwayStatus,
    },
    /// HEADERS: additional headers for a stream.
    Headers {
        /// Stream id (never 0).
        stream_id: u32,
        /// `FLAG_FIN` or 0.
        flags: u8,
        /// Compressed name/value block.
        header_block: Bytes,
    },
    /// WINDOW_UPDATE; stream id 0 means the session window (SPDY/3.1).
    WindowUpdate {
        /// Stream id, or 0 for the session.
        stream_id: u32,
        /// 31-bit window increment.
        delta: u32,
    },
}

impl Frame {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Data { .. } => "DATA",
            Frame::SynStream { .. } => "SYN_STREAM",
            Frame::SynReply { .. } => "SYN_REPLY",
            Frame::RstStream { .. } => "RST_STREAM",
            Frame::Settings { .. } => "SETTINGS",
            Frame::Ping { .. } => "PING",
            Frame::GoAway { .. } => "GOAWAY",
            Frame::Headers { .. } => "HEADERS",
            Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
        }
    }

    /// Appends the wire encoding of this frame to `dst`.
    ///
    /// Fails only if the payload does not fit the 24-bit length field.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        const ID: u32 = 0x7fff_ffff;
        let payload_len = self.payload_len();
        if payload_len > MAX_FRAME_PAYLOAD as usize {
            return Err(FrameError::FrameTooLarge {
                len: payload_len,
                max: MAX_FRAME_PAYLOAD as usize,
            });
        }
        let len = payload_len as u32;
        dst.reserve(FRAME_HEADER_LEN + payload_len);
        let control = |dst: &mut BytesMut, ty: u16, flags: u8| {
            dst.put_u16(0x8000 | SPDY_VERSION);
            dst.put_u16(ty);
            dst.put_u32(u32::from(flags) << 24 | len);
        };
        match self {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                dst.put_u32(stream_id & ID);
                dst.put_u32(u32::from(*flags) << 24 | len);
                dst.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                slot,
                flags,
                header_block,
            } => {
                control(dst, frame_type::SYN_STREAM, *flags);
                dst.put_u32(stream_id & ID);
                dst.put_u32(associated_id & ID);
                dst.put_u8((priority & 0x07) << 5);
                dst.put_u8(*slot);
                dst.put_slice(header_block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                header_block,
            } => {
                control(dst, frame_type::SYN_REPLY, *flags);
                dst.put_u32(stream_id & ID);
                dst.put_slice(header_block);
            }
            Frame::RstStream { stream_id, status } => {
                control(dst, frame_type::RST_STREAM, 0);
                dst.put_u32(stream_id & ID);
                dst.put_u32(status.0);
            }
            Frame::Settings { flags, entries } => {
                control(dst, frame_type::SETTINGS, *flags);
                dst.put_u32(entries.len() as u32);
                for e in entries {
                    dst.put_u32(u32::from(e.flags) << 24 | (e.id & 0x00ff_ffff));
                    dst.put_u32(e.value);
                }
            }
            Frame::Ping { id } => {
                control(dst, frame_type::PING, 0);
                dst.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control(dst, frame_type::GOAWAY, 0);
                dst.put_u32(last_good_stream_id & ID);
                dst.put_u32(status.0);
            }
            Frame::Headers {
                stream_id,
                flags,
                header_block,
            } => {
                control(dst, frame_type::HEADERS, *flags);
                dst.put_u32(stream_id & ID);
                dst.put_slice(header_block);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control(dst, frame_type::WINDOW_UPDATE, 0);
                dst.put_u32(stream_id & ID);
                dst.put_u32(delta & ID);
            }
        }
        Ok(())
    }

    /// Convenience: the encoding of this frame as a fresh buffer.
    pub fn to_bytes(&self) -> Result<Bytes, FrameError> {
        let mut b = BytesMut::new();
        self.encode(&mut b)?;
        Ok(b.freeze())
    }

    fn payload_len(&self) -> usize {
        match self {
            Frame::Data { data, .. } => data.len(),
            Frame::SynStream { header_block, .. } => 10 + header_block.len(),
            Frame::SynReply { header_block, .. } | Frame::Headers { header_block, .. } => {
                4 + header_block.len()
            }
            Frame::RstStream { .. } | Frame::GoAway { .. } | Frame::WindowUpdate { .. } => 8,
            Frame::Settings { entries, .. } => 4 + 8 * entries.len(),
            Frame::Ping { .. } => 4,
        }
    }
}

/// Errors from frame parsing (all are SPDY session errors: the byte stream
/// can no longer be trusted) or from encoding.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// A control frame with a version other than 3.
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    /// A frame longer than the configured limit.
    #[error("frame payload of {len} bytes exceeds limit of {max}")]
    FrameTooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A control frame whose length does not fit its type.
    #[error("{kind} frame has invalid length {len}")]
    InvalidLength {
        /// Frame type name.
        kind: &'static str,
        /// Announced payload length.
        len: usize,
    },
    /// Internal: an unknown control type reached the payload parser.
    #[error("unknown control frame type {0}")]
    UnknownType(u16),
    /// A frame that must name a stream named stream 0.
    #[error("{0} frame with stream id 0")]
    ZeroStreamId(&'static str),
}

/// Size limits enforced while parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted DATA payload. Defaults to the protocol maximum
    /// (2^24-1): moby/spdystream writes one DATA frame per `Write` call
    /// without splitting, so a lower cap could reject a legitimate client.
    pub max_data_payload: usize,
    /// Largest accepted control frame payload (bounds compressed header
    /// blocks). Defaults to 1 MiB.
    pub max_control_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_data_payload: MAX_FRAME_PAYLOAD as usize,
            max_control_payload: 1 << 20,
        }
    }
}

/// Incremental frame parser.
///
/// Feed it a buffer that accumulates bytes from the transport; each call to
/// [`FrameDecoder::decode`] removes at most one complete frame from the
/// front. Control frames of unknown type are skipped as the spec requires,
/// without buffering their payload.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    limits: Limits,
    /// Bytes of an unknown control frame still to be discarded.
    skip: usize,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { limits, skip: 0 }
    }

    /// Parses one frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole frame (it
    /// then reserves room for the rest), consuming nothing but skipped
    /// unknown frames. Errors are not recoverable: the session is broken.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len());
                buf.advance(n);
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            if buf.len() < FRAME_HEADER_LEN {
                return Ok(None);
            }
            let word0 = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let flags = buf[4];
            let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
            let control = word0 & 0x8000_0000 != 0;

            if control {
                let version = ((word0 >> 16) & 0x7fff) as u16;
                let ty = (word0 & 0xffff) as u16;
                if version != SPDY_VERSION {
                    return Err(FrameError::UnsupportedVersion(version));
                }
                if !(frame_type::SYN_STREAM..=frame_type::WINDOW_UPDATE).contains(&ty) || ty == 5 {
                    trace!(frame_type = ty, len, "skipping unknown control frame");
                    buf.advance(FRAME_HEADER_LEN);
                    self.skip = len;
                    continue;
                }
                if len > self.limits.max_control_payload {
                    return Err(FrameError::FrameTooLarge {
                        len,
                        max: self.limits.max_control_payload,
                    });
                }
            } else if len > self.limits.max_data_payload {
                return Err(FrameError::FrameTooLarge {
                    len,
                    max: self.limits.max_data_payload,
                });
            }

            if buf.len() < FRAME_HEADER_LEN + len {
                buf.reserve(FRAME_HEADER_LEN + len - buf.len());
                return Ok(None);
            }
            buf.advance(FRAME_HEADER_LEN);
            let payload = buf.split_to(len).freeze();
            return if control {
                parse_control((word0 & 0xffff) as u16, flags, payload).map(Some)
            } else {
                let stream_id = word0 & 0x7fff_ffff;
                if stream_id == 0 {
                    return Err(FrameError::ZeroStreamId("DATA"));
                }
                Ok(Some(Frame::Data {
                    stream_id,
                    flags,
                    data: payload,
                }))
            };
        }
    }
}

fn parse_control(ty: u16, flags: u8, mut p: Bytes) -> Result<Frame, FrameError> {
    let len = p.len();
    let need = |kind: &'static str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(FrameError::InvalidLength { kind, len })
        }
    };
    let stream = |kind: &'static str, p: &mut Bytes| {
        let id = p.get_u32() & 0x7fff_ffff;
        if id == 0 {
            Err(FrameError::ZeroStreamId(kind))
        } else {
            Ok(id)
        }
    };
    Ok(match ty {
        frame_type::SYN_STREAM => {
            need("SYN_STREAM", len >= 10)?;
            let stream_id = stream("SYN_STREAM", &mut p)?;
            let associated_id = p.get_u32() & 0x7fff_ffff;
            let priority = p.get_u8() >> 5;
            let slot = p.get_u8();
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                slot,
                flags,
                header_block: p,
            }
        }
        frame_type::SYN_REPLY => {
            need("SYN_REPLY", len >= 4)?;
            let stream_id = stream("SYN_REPLY", &mut p)?;
            Frame::SynReply {
                stream_id,
                flags,
                header_block: p,
            }
        }
        frame_type::RST_STREAM => {
            // The spec says exactly 8; spdy-transport may append debug
            // text after the status, which we tolerate and ignore.
            need("RST_STREAM", len >= 8)?;
            let stream_id = stream("RST_STREAM", &mut p)?;
            Frame::RstStream {
                stream_id,
                status: RstStatus(p.get_u32()),
            }
        }
        frame_type::SETTINGS => {
            need("SETTINGS", len >= 4)?;
            let n = p.get_u32() as usize;
            need("SETTINGS", n.checked_mul(8) == Some(len - 4))?;
            let entries = (0..n)
                .map(|_| {
                    let w = p.get_u32();
                    Setting {
                        flags: (w >> 24) as u8,
                        id: w & 0x00ff_ffff,
                        value: p.get_u32(),
                    }
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        frame_type::PING => {
            need("PING", len == 4)?;
            Frame::Ping { id: p.get_u32() }
        }
        frame_type::GOAWAY => {
            need("GOAWAY", len == 8)?;
            Frame::GoAway {
                last_good_stream_id: p.get_u32() & 0x7fff_ffff,
                status: GoAwayStatus(p.get_u32()),
            }
        }
        frame_type::HEADERS => {
            need("HEADERS", len >= 4)?;
            let stream_id = stream("HEADERS", &mut p)?;
            Frame::Headers {
                stream_id,
                flags,
                header_block: p,
            }
        }
        frame_type::WINDOW_UPDATE => {
            need("WINDOW_UPDATE", len == 8)?;
            // Stream id 0 is legal here: it addresses the session window.
            Frame::WindowUpdate {
                stream_id: p.get_u32() & 0x7fff_ffff,
                delta: p.get_u32() & 0x7fff_ffff,
            }
        }
        // `decode` skips unknown types before calling us.
        _ => return Err(FrameError::UnknownType(ty)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut d = FrameDecoder::default();
        let mut buf = BytesMut::from(bytes);
        let mut out = vec![];
        while let Some(f) = d.decode(&mut buf)? {
            out.push(f);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    fn parse_one(bytes: &[u8]) -> Frame {
        let mut v = parse_all(bytes).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 0x7fff_ffff,
                flags: FLAG_FIN,
                data: Bytes::new(),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_id: 0,
                priority: 7,
                slot: 0,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                header_block: Bytes::from_static(b"\x78\xbb compressed"),
            },
            Frame::SynReply {
                stream_id: 5,
                flags: FLAG_FIN,
                header_block: Bytes::from_static(b"block"),
            },
            Frame::RstStream {
                stream_id: 7,
                status: RstStatus::CANCEL,
            },
            Frame::Settings {
                flags: FLAG_SETTINGS_CLEAR_SETTINGS,
                entries: vec![
                    Setting {
                        flags: FLAG_SETTINGS_PERSIST_VALUE,
                        id: settings_id::INITIAL_WINDOW_SIZE,
                        value: 1 << 20,
                    },
                    Setting {
                        flags: 0,
                        id: settings_id::MAX_CONCURRENT_STREAMS,
                        value: 100,
                    },
                ],
            },
            Frame::Settings {
                flags: 0,
                entries: vec![],
            },
            Frame::Ping { id: 0xdead_beef },
            Frame::GoAway {
                last_good_stream_id: 9,
                status: GoAwayStatus::PROTOCOL_ERROR,
            },
            Frame::Headers {
                stream_id: 11,
                flags: 0,
                header_block: Bytes::from_static(b"hdrs"),
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 0x7fff_ffff,
            },
            Frame::WindowUpdate {
                stream_id: 13,
                delta: 1,
            },
        ]
    }

    #[test]
    fn round_trip_every_frame_type() {
        for f in all_frames() {
            let bytes = f.to_bytes().unwrap();
            assert_eq!(parse_one(&bytes), f, "{}", f.kind());
        }
    }

    #[test]
    fn round_trip_concatenated_and_byte_by_byte() {
        let frames = all_frames();
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire).unwrap();
        }
        assert_eq!(parse_all(&wire).unwrap(), frames);

        // Feed one byte at a time: incomplete input must yield Ok(None).
        let mut d = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = vec![];
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    // The vectors below are written by hand from the SPDY/3 draft's layouts
    // (section 2.6), not produced by our encoder.

    #[test]
    fn spec_vector_syn_stream() {
        #[rustfmt::skip]
        let bytes = [
            0x80, 0x03, 0x00, 0x01, // C=1, version 3, type 1 (SYN_STREAM)
            0x01, 0x00, 0x00, 0x0c, // flags FIN, length 12
            0x00, 0x00, 0x00, 0x01, // X | stream id 1
            0x00, 0x00, 0x00, 0x00, // X | associated-to stream id 0
            0x60, 0x00,             // pri 3 (3 bits) | unused | slot 0
            0xaa, 0xbb,             // header block (opaque here)
        ];
        assert_eq!(
            parse_one(&bytes),
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 3,
                slot: 0,
                flags: FLAG_FIN,
                header_block: Bytes::from_static(&[0xaa, 0xbb]),
            }
        );
        // And our encoder produces the same bytes.
        assert_eq!(&parse_one(&bytes).to_bytes().unwrap()[..], &bytes);
    }

    #[test]
    fn spec_vector_data_with_reserved_bit_and_fin() {
        #[rustfmt::skip]
        let bytes = [
            0x00, 0x00, 0x01, 0x03, // C=0 | stream id 259
            0x01, 0x00, 0x00, 0x03, // flags FIN, length 3
            b'a', b'b', b'c',
        ];
        assert_eq!(
            parse_one(&bytes),
            Frame::Data {
                stream_id: 259,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"abc")
            }
        );
    }

    #[test]
    fn spec_vector_rst_settings_ping_goaway_window_update() {
        #[rustfmt::skip]
        let rst = [
            0x80, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x08,
            0x80, 0x00, 0x00, 0x05, // reserved bit set: must be ignored
            0x00, 0x00, 0x00, 0x03, // REFUSED_STREAM
        ];
        assert_eq!(
            parse_one(&rst),
            Frame::RstStream {
                stream_id: 5,
                status: RstStatus::REFUSED_STREAM
            }
        );

        #[rustfmt::skip]
        let settings = [
            0x80, 0x03, 0x00, 0x04, 0x01, 0x00, 0x00, 0x0c, // flags CLEAR, len 12
            0x00, 0x00, 0x00, 0x01,                         // 1 entry
            0x01, 0x00, 0x00, 0x07,                         // PERSIST_VALUE | id 7
            0x00, 0x10, 0x00, 0x00,                         // 1 MiB
        ];
        assert_eq!(
            parse_one(&settings),
            Frame::Settings {
                flags: FLAG_SETTINGS_CLEAR_SETTINGS,
                entries: vec![Setting {
                    flags: FLAG_SETTINGS_PERSIST_VALUE,
                    id: settings_id::INITIAL_WINDOW_SIZE,
                    value: 0x0010_0000
                }]
            }
        );

        let ping = [0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1];
        assert_eq!(parse_one(&ping), Frame::Ping { id: 1 });

        #[rustfmt::skip]
        let goaway = [
            0x80, 0x03, 0x00, 0x07, 0x00, 0x00, 0x00, 0x08,
            0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(
            parse_one(&goaway),
            Frame::GoAway {
                last_good_stream_id: 7,
                status: GoAwayStatus::OK
            }
        );

        #[rustfmt::skip]
        let wu = [
            0x80, 0x03, 0x00, 0x09, 0x00, 0x00, 0x00, 0x08,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, // session, +65536
        ];
        assert_eq!(
            parse_one(&wu),
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 65536
            }
        );
        for v in [&rst[..], &settings, &ping, &goaway, &wu] {
            let f = parse_one(v);
            let mut canonical = v.to_vec();
            canonical[8] &= 0x7f; // we write the reserved bit as zero
            assert_eq!(&f.to_bytes().unwrap()[..], &canonical[..], "{}", f.kind());
        }
    }

    #[test]
    fn unknown_control_frames_are_skipped() {
        let mut wire = vec![0x80, 0x03, 0x00, 0x05, 0, 0, 0, 0]; // old NOOP
        // A big frame of type 0xf000 (spdy-transport's X-Forwarded-For).
        wire.extend_from_slice(&[0x80, 0x03, 0xf0, 0x00, 0x00, 0x00, 0x10, 0x00]);
        wire.extend(std::iter::repeat_n(0x55, 0x1000));
        wire.extend_from_slice(&Frame::Ping { id: 3 }.to_bytes().unwrap());
        assert_eq!(parse_all(&wire).unwrap(), vec![Frame::Ping { id: 3 }]);

        // Skipping works across partial reads without buffering the body.
        let mut d = FrameDecoder::default();
        let mut buf = BytesMut::from(&wire[..20]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        let mut rest = BytesMut::from(&wire[20..]);
        assert_eq!(d.decode(&mut rest).unwrap(), Some(Frame::Ping { id: 3 }));
    }

    #[test]
    fn malformed_frames_are_errors() {
        let bad_version = [0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1];
        assert_eq!(
            parse_all(&bad_version),
            Err(FrameError::UnsupportedVersion(2))
        );
        let short_ping = [0x80, 0x03, 0x00, 0x06, 0, 0, 0, 2, 0, 0];
        assert!(matches!(
            parse_all(&short_ping),
            Err(FrameError::InvalidLength { kind: "PING", .. })
        ));
        let settings_count_lies = [0x80, 0x03, 0x00, 0x04, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
        assert!(parse_all(&settings_count_lies).is_err());
        let zero_data = [0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_all(&zero_data), Err(FrameError::ZeroStreamId("DATA")));
        let zero_rst = [0x80, 0x03, 0x00, 0x03, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 5];
        assert!(parse_all(&zero_rst).is_err());
        let short_syn = [0x80, 0x03, 0x00, 0x01, 0, 0, 0, 4, 0, 0, 0, 1];
        assert!(parse_all(&short_syn).is_err());
    }

    #[test]
    fn oversized_frames_are_rejected_before_buffering() {
        let mut d = FrameDecoder::new(Limits {
            max_data_payload: 1024,
            max_control_payload: 64,
        });
        // Only the 8-byte header is present: the length alone condemns it.
        let mut data = BytesMut::from(&[0, 0, 0, 1, 0, 0, 0x04, 0x01][..]);
        assert_eq!(
            d.decode(&mut data),
            Err(FrameError::FrameTooLarge {
                len: 1025,
                max: 1024
            })
        );
        let mut d = FrameDecoder::new(Limits {
            max_data_payload: 1024,
            max_control_payload: 64,
        });
        let mut syn = BytesMut::from(&[0x80, 0x03, 0, 1, 0, 0, 0, 65][..]);
        assert!(matches!(
            d.decode(&mut syn),
            Err(FrameError::FrameTooLarge { len: 65, .. })
        ));
    }

    #[test]
    fn encode_refuses_payloads_over_24_bits() {
        let f = Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from(vec![0; MAX_FRAME_PAYLOAD as usize + 1]),
        };
        assert!(f.to_bytes().is_err());
    }

    #[test]
    fn status_codes_print_their_names() {
        assert_eq!(
            RstStatus::FLOW_CONTROL_ERROR.to_string(),
            "FLOW_CONTROL_ERROR"
        );
        assert_eq!(format!("{:?}", RstStatus(99)), "RstStatus(99)");
        assert_eq!(GoAwayStatus::OK.name(), Some("OK"));
    }
}
