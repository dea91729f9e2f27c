//! SPDY header blocks: raw (uncompressed) blocks, and compressed ones through a stream's
//! decompressor (zlib with SPDY's dictionary), with berth's size limit.
use spdy::HeaderDecompressor;
use spdy::headers::{decode_block, encode_block};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(list) = decode_block(data) {
            let _ = encode_block(&list.iter().cloned().collect::<Vec<_>>());
        }
        let mut d = HeaderDecompressor::new(64 * 1024);
        for part in data.split(|b| *b == 0xff) {
            if d.decompress(part).is_err() {
                break;
            }
        }
    });
}
