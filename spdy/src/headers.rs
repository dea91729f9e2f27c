//! SPDY/3 name/value header blocks and their zlib compression.
//!
//! A header block (SPDY/3 draft, section 2.6.10) is, before compression:
//!
//! ```text
//! +------------------------------------+
//! | Number of Name/Value pairs (int32) |
//! +------------------------------------+
//! |     Length of name (int32)         |
//! +------------------------------------+
//! |           Name (string)            |
//! +------------------------------------+
//! |     Length of value  (int32)       |
//! +------------------------------------+
//! |          Value   (string)          |
//! +------------------------------------+
//! |           (repeats)                |
//! ```
//!
//! Names are lower case and unique within a block; several values for one
//! name are joined with a single NUL byte. The whole block is compressed with
//! zlib, primed with [`SPDY3_DICTIONARY`] (section 2.6.10.1). There is one
//! zlib stream per direction for the whole session: every header block is a
//! continuation of the same stream, terminated by a `Z_SYNC_FLUSH` so the
//! receiver can decode it without waiting for more input. This means header
//! blocks must be compressed in exactly the order they are written to the
//! wire, and *every* received block must be decompressed (even for streams
//! we are going to ignore) or the two contexts fall out of step.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use thiserror::Error;

/// A decoded header list: `(name, value)` pairs, names lower case. A name
/// that carried several NUL-separated values appears once per value.
pub type HeaderList = Vec<(String, String)>;

/// Default cap on the size of one *decompressed* header block.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: usize = 256 * 1024;

/// Adler-32 of [`SPDY3_DICTIONARY`]; this is the DICTID a SPDY/3 peer puts
/// in the zlib header of its first header block.
pub const SPDY3_DICTIONARY_ID: u32 = 0xe3c6_a7c2;

/// The SPDY/3 header compression dictionary, byte for byte as given in the
/// SPDY/3 draft, section 2.6.10.1 (1423 bytes; the same bytes are used by
/// Go's `spdy` package vendored in moby/spdystream and by spdy-transport's
/// `protocol/spdy/dictionary.js`, which a unit test below cross-checks via
/// the dictionary's Adler-32).
#[rustfmt::skip]
pub const SPDY3_DICTIONARY: &[u8; 1423] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\
    \x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eacc\
    ept-charset\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\
    \x00\x0daccept-ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthori\
    zation\x00\x00\x00\x0dcache-control\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent\
    -base\x00\x00\x00\x10content-encoding\x00\x00\x00\x10content-language\x00\x00\x00\
    \x0econtent-length\x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\
    \x00\x00\x0dcontent-range\x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\
    \x00\x04etag\x00\x00\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\
    \x00\x00\x04host\x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since\x00\x00\
    \x00\x0dif-none-match\x00\x00\x00\x08if-range\x00\x00\x00\x13if-unmodified-since\x00\
    \x00\x00\x0dlast-modified\x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00\
    \x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorizat\
    ion\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\x00\x00\
    \x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\x00\x00\x11transfer-enco\
    ding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\x00\x00\x00\x04vary\x00\x00\
    \x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\x00\x00\x06me\
    thod\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200\x20OK\x00\x00\x00\
    \x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\
    \x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin100101201202205206\
    300302303304305306307402405406407408409410411412413414415416417502504505203\x20Non-A\
    uthoritative\x20Information204\x20No\x20Content301\x20Moved\x20Permanently400\x20Bad\
    \x20Request401\x20Unauthorized403\x20Forbidden404\x20Not\x20Found500\x20Internal\x20\
    Server\x20Error501\x20Not\x20Implemented503\x20Service\x20UnavailableJan\x20Feb\x20M\
    ar\x20Apr\x20May\x20Jun\x20Jul\x20Aug\x20Sept\x20Oct\x20Nov\x20Dec\x2000:00:00\x20Mo\
    n,\x20Tue,\x20Wed,\x20Thu,\x20Fri,\x20Sat,\x20Sun,\x20GMTchunked,text/html,image/png\
    ,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascrip\
    t,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0\
    .";

/// Errors from encoding, compressing or decompressing header blocks.
#[derive(Debug, Error)]
pub enum HeaderError {
    /// zlib reported an error; the shared context is unusable.
    #[error("zlib error: {0}")]
    Zlib(String),
    /// The peer's zlib stream asked for a dictionary other than SPDY/3's.
    #[error("peer requested unknown zlib dictionary {0:#010x}")]
    WrongDictionary(u32),
    /// The peer terminated its zlib stream, which SPDY never does.
    #[error("peer ended the header compression stream")]
    StreamEnded,
    /// A decompressed header block exceeded the configured limit.
    #[error("decompressed header block exceeds {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The decompressed block is not a well-formed name/value block. The
    /// zlib context is still in step, so this is only a stream error.
    #[error("malformed header block: {0}")]
    Malformed(&'static str),
    /// A header given to the encoder cannot be represented.
    #[error("invalid header {name:?}: {reason}")]
    Invalid {
        /// The offending header name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
}

impl HeaderError {
    /// True when the error leaves the session's compression context out of
    /// step with the peer's, so the whole session must be torn down (a
    /// SPDY session error); false for problems confined to one stream.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            HeaderError::Malformed(_) | HeaderError::Invalid { .. }
        )
    }
}

/// Serialises headers into an *uncompressed* SPDY/3 name/value block.
///
/// Names are lower-cased. Repeated names are merged into one entry whose
/// value is the individual values joined by NUL, in order of first
/// appearance (SPDY forbids duplicate names, and Go's framer rejects a block
/// that has them). Empty names, and values containing NUL, are refused; an
/// empty value is only allowed when it is the name's sole value.
pub fn encode_block(headers: &[(String, String)]) -> Result<Vec<u8>, HeaderError> {
    // Group values by lower-cased name, keeping first-appearance order.
    let mut merged: Vec<(String, Vec<&str>)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if name.is_empty() {
            return Err(HeaderError::Invalid {
                name,
                reason: "empty header name",
            });
        }
        if value.contains('\0') {
            return Err(HeaderError::Invalid {
                name,
                reason: "header value contains NUL",
            });
        }
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => merged.push((name, vec![value])),
        }
    }

    let mut out = Vec::with_capacity(4 + headers.len() * 32);
    put_len(&mut out, merged.len(), "header count")?;
    for (name, values) in &merged {
        if values.len() > 1 && values.iter().any(|v| v.is_empty()) {
            return Err(HeaderError::Invalid {
                name: name.clone(),
                reason: "empty value in a multi-valued header",
            });
        }
        put_len(&mut out, name.len(), "header name")?;
        out.extend_from_slice(name.as_bytes());
        let value_len: usize = values.iter().map(|v| v.len()).sum::<usize>() + values.len() - 1;
        put_len(&mut out, value_len, "header value")?;
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(0);
            }
            out.extend_from_slice(v.as_bytes());
        }
    }
    Ok(out)
}

fn put_len(out: &mut Vec<u8>, len: usize, what: &'static str) -> Result<(), HeaderError> {
    let len = u32::try_from(len).map_err(|_| HeaderError::Invalid {
        name: what.to_string(),
        reason: "length does not fit in 32 bits",
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Parses an *uncompressed* SPDY/3 name/value block.
///
/// Multi-valued entries are split on NUL into several pairs. Header names
/// are lower-cased (Go's framer treats upper case as an error; being lenient
/// costs nothing on the server side). Zero-length names, empty segments in a
/// multi-valued entry, non-UTF-8 text and trailing bytes are `Malformed`.
pub fn decode_block(block: &[u8]) -> Result<HeaderList, HeaderError> {
    let mut rd = Reader { buf: block };
    let count = rd.u32()? as usize;
    // Every pair needs at least 8 bytes, which bounds a hostile count.
    if count > rd.buf.len() / 8 {
        return Err(HeaderError::Malformed("header count exceeds block size"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = rd.string()?;
        if name.is_empty() {
            return Err(HeaderError::Malformed("zero-length header name"));
        }
        let name = name.to_ascii_lowercase();
        let value = rd.string()?;
        if value.is_empty() {
            headers.push((name, value));
            continue;
        }
        for part in value.split('\0') {
            if part.is_empty() {
                return Err(HeaderError::Malformed("empty value in multi-valued header"));
            }
            headers.push((name.clone(), part.to_string()));
        }
    }
    if !rd.buf.is_empty() {
        return Err(HeaderError::Malformed("trailing bytes after header block"));
    }
    Ok(headers)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, HeaderError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<4>()
            .ok_or(HeaderError::Malformed("truncated length field"))?;
        self.buf = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn string(&mut self) -> Result<String, HeaderError> {
        let len = self.u32()? as usize;
        if len > self.buf.len() {
            return Err(HeaderError::Malformed("string runs past end of block"));
        }
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        String::from_utf8(s.to_vec()).map_err(|_| HeaderError::Malformed("header is not UTF-8"))
    }
}

/// Size of the scratch buffer zlib writes into on each call.
const CHUNK: usize = 16 * 1024;

/// The sending side's compression context (one per session).
pub struct HeaderCompressor {
    z: Compress,
    scratch: Box<[u8]>,
}

impl std::fmt::Debug for HeaderCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCompressor")
            .field("total_in", &self.z.total_in())
            .field("total_out", &self.z.total_out())
            .finish()
    }
}

impl HeaderCompressor {
    /// A fresh zlib stream (with zlib header) primed with the SPDY/3
    /// dictionary, so its first output announces DICTID `0xe3c6a7c2`.
    pub fn new() -> Result<Self, HeaderError> {
        let mut z = Compress::new(Compression::default(), true);
        let id = z
            .set_dictionary(SPDY3_DICTIONARY)
            .map_err(|e| HeaderError::Zlib(e.to_string()))?;
        debug_assert_eq!(id, SPDY3_DICTIONARY_ID);
        Ok(Self {
            z,
            scratch: vec![0; CHUNK].into_boxed_slice(),
        })
    }

    /// Encodes and compresses one header block (see [`encode_block`]).
    pub fn compress(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, HeaderError> {
        let raw = encode_block(headers)?;
        self.compress_raw(&raw)
    }

    /// Compresses an already-serialised block, ending it with a sync flush.
    pub fn compress_raw(&mut self, raw: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::with_capacity(raw.len() / 2 + 16);
        let mut pos = 0;
        loop {
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            self.z
                .compress(&raw[pos..], &mut self.scratch, FlushCompress::Sync)
                .map_err(|e| HeaderError::Zlib(e.to_string()))?;
            pos += (self.z.total_in() - in0) as usize;
            let produced = (self.z.total_out() - out0) as usize;
            out.extend_from_slice(&self.scratch[..produced]);
            // The flush is complete once all input is consumed and deflate
            // returned with room to spare in the output buffer.
            if pos == raw.len() && produced < self.scratch.len() {
                return Ok(out);
            }
        }
    }
}

/// The receiving side's decompression context (one per session).
pub struct HeaderDecompressor {
    z: Decompress,
    max_size: usize,
    scratch: Box<[u8]>,
}

impl std::fmt::Debug for HeaderDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDecompressor")
            .field("max_size", &self.max_size)
            .field("total_in", &self.z.total_in())
            .field("total_out", &self.z.total_out())
            .finish()
    }
}

impl HeaderDecompressor {
    /// A fresh zlib inflate stream. `max_size` caps the decompressed size
    /// of any single header block (zlib bomb protection).
    pub fn new(max_size: usize) -> Self {
        Self {
            z: Decompress::new(true),
            max_size,
            scratch: vec![0; CHUNK].into_boxed_slice(),
        }
    }

    /// Decompresses and parses one header block.
    pub fn decompress(&mut self, block: &[u8]) -> Result<HeaderList, HeaderError> {
        let raw = self.decompress_raw(block)?;
        decode_block(&raw)
    }

    /// Decompresses one header block to its serialised name/value form.
    pub fn decompress_raw(&mut self, block: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::with_capacity(block.len().saturating_mul(4).min(self.max_size));
        let mut pos = 0;
        loop {
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let res = self
                .z
                .decompress(&block[pos..], &mut self.scratch, FlushDecompress::Sync);
            pos += (self.z.total_in() - in0) as usize;
            let produced = (self.z.total_out() - out0) as usize;
            if out.len() + produced > self.max_size {
                // Stop right here: inflating further is exactly what a zlib
                // bomb wants. The context is now out of step, hence fatal.
                return Err(HeaderError::TooLarge {
                    limit: self.max_size,
                });
            }
            out.extend_from_slice(&self.scratch[..produced]);
            match res {
                Ok(Status::StreamEnd) => return Err(HeaderError::StreamEnded),
                Ok(Status::Ok) | Ok(Status::BufError) => {}
                Err(e) => match e.needs_dictionary() {
                    // The first block of the session carries FDICT; zlib
                    // stops after the header and asks for the dictionary.
                    Some(SPDY3_DICTIONARY_ID) => {
                        self.z
                            .set_dictionary(SPDY3_DICTIONARY)
                            .map_err(|e| HeaderError::Zlib(e.to_string()))?;
                        continue;
                    }
                    Some(other) => return Err(HeaderError::WrongDictionary(other)),
                    None => return Err(HeaderError::Zlib(e.to_string())),
                },
            }
            if pos == block.len() && produced < self.scratch.len() {
                return Ok(out);
            }
            if produced == 0 && (self.z.total_in() - in0) == 0 {
                // No progress with input left: cannot happen with a sane
                // inflate, but never spin.
                return Err(HeaderError::Zlib("inflate made no progress".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderList {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dictionary_matches_spec_adler32() {
        assert_eq!(SPDY3_DICTIONARY.len(), 1423);
        // Adler-32 computed independently of zlib.
        let (mut a, mut b) = (1u32, 0u32);
        for &x in SPDY3_DICTIONARY.iter() {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, SPDY3_DICTIONARY_ID);
        assert!(SPDY3_DICTIONARY.starts_with(b"\x00\x00\x00\x07options"));
        assert!(SPDY3_DICTIONARY.ends_with(b",*,enq=0."));
    }

    #[test]
    fn block_layout_is_spec_layout() {
        let raw = encode_block(&h(&[("Host", "x"), ("a", "1"), ("a", "2")])).unwrap();
        let expected: &[u8] = &[
            0, 0, 0, 2, // two pairs: "a" merged
            0, 0, 0, 4, b'h', b'o', b's', b't', 0, 0, 0, 1, b'x', // host: x
            0, 0, 0, 1, b'a', 0, 0, 0, 3, b'1', 0, b'2', // a: 1\02
        ];
        assert_eq!(raw, expected);
        assert_eq!(
            decode_block(&raw).unwrap(),
            h(&[("host", "x"), ("a", "1"), ("a", "2")])
        );
    }

    #[test]
    fn malformed_blocks_are_rejected() {
        // Count larger than the block can hold.
        assert!(matches!(
            decode_block(&[0xff, 0xff, 0xff, 0xff]),
            Err(HeaderError::Malformed(_))
        ));
        // Zero-length name.
        let z = [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, b'v'];
        assert!(decode_block(&z).is_err());
        // Value with a leading NUL.
        let bad = [0, 0, 0, 1, 0, 0, 0, 1, b'a', 0, 0, 0, 2, 0, b'v'];
        assert!(decode_block(&bad).is_err());
        // Truncated.
        assert!(decode_block(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        // Trailing garbage.
        assert!(decode_block(&[0, 0, 0, 0, 1]).is_err());
        // Empty value alone is fine.
        assert_eq!(
            decode_block(&[0, 0, 0, 1, 0, 0, 0, 1, b'a', 0, 0, 0, 0]).unwrap(),
            h(&[("a", "")])
        );
        assert!(!HeaderError::Malformed("x").is_fatal());
        assert!(HeaderError::TooLarge { limit: 1 }.is_fatal());
    }

    #[test]
    fn encoder_refuses_unrepresentable_headers() {
        assert!(encode_block(&h(&[("", "v")])).is_err());
        assert!(encode_block(&h(&[("a", "x\0y")])).is_err());
        assert!(encode_block(&h(&[("a", "x"), ("a", "")])).is_err());
    }

    #[test]
    fn shared_context_round_trip_over_many_blocks() {
        let mut c = HeaderCompressor::new().unwrap();
        let mut d = HeaderDecompressor::new(DEFAULT_MAX_HEADER_LIST_SIZE);
        let blocks = [
            h(&[
                (":method", "POST"),
                (":path", "/exec"),
                ("streamtype", "stdin"),
            ]),
            h(&[("streamtype", "stdout"), ("requestid", "0")]),
            h(&[]),
            h(&[("streamtype", "error"), ("x-multi", "a"), ("x-multi", "b")]),
            h(&[("big", &"z".repeat(100_000))]),
            h(&[("streamtype", "stdout"), ("requestid", "0")]),
        ];
        let mut first_len = 0;
        for (i, b) in blocks.iter().enumerate() {
            let z = c.compress(b).unwrap();
            if i == 0 {
                // zlib header: CMF 0x78, FLG with FDICT (0x20) + DICTID.
                assert_eq!(z[0], 0x78);
                assert_ne!(z[1] & 0x20, 0);
                assert_eq!(&z[2..6], &SPDY3_DICTIONARY_ID.to_be_bytes());
                first_len = z.len();
            }
            // Every block ends with the sync-flush marker.
            assert!(z.ends_with(&[0, 0, 0xff, 0xff]), "block {i}");
            if i == 5 {
                // Same headers as block 1: the shared window makes it tiny.
                assert!(z.len() < first_len, "{} vs {first_len}", z.len());
            }
            assert_eq!(&d.decompress(&z).unwrap(), b, "block {i}");
        }
    }

    #[test]
    fn zlib_bomb_is_stopped() {
        let mut c = HeaderCompressor::new().unwrap();
        let mut d = HeaderDecompressor::new(64 * 1024);
        let z = c.compress(&h(&[("x", &"a".repeat(4 << 20))])).unwrap();
        assert!(z.len() < 64 * 1024, "compressed bomb is small: {}", z.len());
        assert!(matches!(
            d.decompress(&z),
            Err(HeaderError::TooLarge { limit: 65536 })
        ));
    }

    #[test]
    fn wrong_dictionary_is_rejected() {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(b"not the spdy dictionary").unwrap();
        let mut out = Vec::with_capacity(1024);
        z.compress_vec(&[0, 0, 0, 0], &mut out, FlushCompress::Sync)
            .unwrap();
        let mut d = HeaderDecompressor::new(1024);
        assert!(matches!(
            d.decompress(&out),
            Err(HeaderError::WrongDictionary(_))
        ));
    }
}
