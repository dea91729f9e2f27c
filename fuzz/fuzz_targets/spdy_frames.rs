//! SPDY/3.1 frames as a client sends them, fed in pieces as a socket would deliver them;
//! every decoded frame encodes again.
use bytes::BytesMut;
use spdy::FrameDecoder;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let split = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
        let mut dec = FrameDecoder::new(Default::default());
        let mut buf = BytesMut::new();
        for piece in data.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let mut out = BytesMut::new();
                        let _ = frame.encode(&mut out);
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    });
}
