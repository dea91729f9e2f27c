//! Session behaviour against a scripted client built from our own framing
//! and header code, over an in-memory duplex pipe.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::print_stdout
)]

use bytes::{Bytes, BytesMut};
use spdy::frame::{FLAG_FIN, FLAG_UNIDIRECTIONAL, Limits, Setting, settings_id};
use spdy::{
    Frame, FrameDecoder, GoAwayStatus, HeaderCompressor, HeaderDecompressor, HeaderList,
    IncomingStream, RstStatus, Session, SessionConfig, SessionHandle, StreamReset,
};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

fn hl(pairs: &[(&str, &str)]) -> HeaderList {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

struct Client {
    rd: ReadHalf<DuplexStream>,
    wr: WriteHalf<DuplexStream>,
    dec: FrameDecoder,
    buf: BytesMut,
    comp: HeaderCompressor,
    decomp: HeaderDecompressor,
}

impl Client {
    fn new(io: DuplexStream) -> Self {
        let (rd, wr) = tokio::io::split(io);
        Self {
            rd,
            wr,
            dec: FrameDecoder::default(),
            buf: BytesMut::new(),
            comp: HeaderCompressor::new().unwrap(),
            decomp: HeaderDecompressor::new(1 << 20),
        }
    }

    async fn send(&mut self, f: Frame) {
        self.wr.write_all(&f.to_bytes().unwrap()).await.unwrap();
    }

    async fn syn(&mut self, id: u32, headers: &[(&str, &str)], flags: u8) {
        let block = self.comp.compress(&hl(headers)).unwrap();
        self.send(Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            slot: 0,
            flags,
            header_block: block.into(),
        })
        .await;
    }

    async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id: id,
            flags: if fin { FLAG_FIN } else { 0 },
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    /// Next frame, or None on EOF. Panics after a timeout.
    async fn next(&mut self) -> Option<Frame> {
        timeout(T, self.next_inner()).await.expect("timed out")
    }

    async fn next_inner(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            if self.rd.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    /// Next frame that is not a WINDOW_UPDATE.
    async fn next_skip_wu(&mut self) -> Option<Frame> {
        loop {
            match self.next().await {
                Some(Frame::WindowUpdate { .. }) => continue,
                other => return other,
            }
        }
    }

    /// Expects the SYN_REPLY for `id` and returns its headers.
    async fn expect_reply(&mut self, id: u32) -> HeaderList {
        match self.next_skip_wu().await {
            Some(Frame::SynReply {
                stream_id,
                header_block,
                ..
            }) => {
                assert_eq!(stream_id, id);
                self.decomp.decompress(&header_block).unwrap()
            }
            other => panic!("expected SYN_REPLY for {id}, got {other:?}"),
        }
    }

    /// Reads DATA for `id` until FIN; returns the payload.
    async fn read_stream(&mut self, id: u32) -> Vec<u8> {
        let mut out = vec![];
        loop {
            match self.next_skip_wu().await {
                Some(Frame::Data {
                    stream_id,
                    flags,
                    data,
                }) => {
                    assert_eq!(stream_id, id);
                    out.extend_from_slice(&data);
                    if flags & FLAG_FIN != 0 {
                        return out;
                    }
                }
                other => panic!("expected DATA, got {other:?}"),
            }
        }
    }

    /// Asserts nothing but WINDOW_UPDATEs arrive for a short while, using a
    /// PING round trip as the fence.
    async fn expect_quiet(&mut self, ping_id: u32) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.send(Frame::Ping { id: ping_id }).await;
        assert_eq!(
            self.next_skip_wu().await,
            Some(Frame::Ping { id: ping_id }),
            "unexpected frame before PING reply"
        );
    }
}

fn setup_with(config: SessionConfig) -> (Client, SessionHandle, mpsc::Receiver<IncomingStream>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (handle, incoming) = Session::server_with_config(b, config);
    (Client::new(a), handle, incoming)
}

fn setup() -> (Client, SessionHandle, mpsc::Receiver<IncomingStream>) {
    setup_with(SessionConfig::default())
}

async fn accept(incoming: &mut mpsc::Receiver<IncomingStream>) -> IncomingStream {
    timeout(T, incoming.recv())
        .await
        .expect("timed out")
        .expect("accept channel closed")
}

fn reset_of(e: &io::Error) -> StreamReset {
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    *e.get_ref()
        .and_then(|i| i.downcast_ref::<StreamReset>())
        .expect("StreamReset inside")
}

#[tokio::test]
async fn syn_reply_data_and_fin_both_ways() {
    let (mut c, handle, mut incoming) = setup();
    c.syn(
        1,
        &[
            ("streamtype", "stdout"),
            ("X-Multi", "a"),
            ("x-multi", "b"),
            ("requestid", "0"),
        ],
        0,
    )
    .await;
    let mut s = accept(&mut incoming).await;
    assert_eq!(s.id, 1);
    assert!(!s.fin);
    assert_eq!(s.header("streamtype"), Some("stdout"));
    assert_eq!(
        s.headers,
        hl(&[
            ("streamtype", "stdout"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("requestid", "0")
        ])
    );
    assert_eq!(
        c.expect_reply(1).await,
        hl(&[(":status", "200"), (":version", "HTTP/1.1")])
    );

    c.data(1, b"abc", false).await;
    c.data(1, b"def", true).await;
    let mut got = vec![];
    timeout(T, s.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, b"abcdef");
    assert_eq!(handle.active_streams(), 1);

    s.write_all(b"xyz").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(c.read_stream(1).await, b"xyz");
    assert_eq!(handle.active_streams(), 0);
    // Writing after shutdown fails.
    assert_eq!(
        s.write_all(b"more").await.unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
}

#[tokio::test]
async fn ping_is_echoed_only_for_client_ids() {
    let (mut c, _handle, _incoming) = setup();
    c.send(Frame::Ping { id: 1 }).await;
    assert_eq!(c.next().await, Some(Frame::Ping { id: 1 }));
    // An even id would be a reply to a server ping: no echo.
    c.send(Frame::Ping { id: 2 }).await;
    c.send(Frame::Ping { id: 3 }).await;
    assert_eq!(c.next().await, Some(Frame::Ping { id: 3 }));
}

#[tokio::test]
async fn headers_are_compressed_on_one_context_across_replies() {
    let (mut c, _handle, mut incoming) = setup();
    let mut open = vec![];
    for id in [1, 3, 5] {
        c.syn(id, &[("streamtype", "data"), ("port", "80")], 0)
            .await;
        open.push(accept(&mut incoming).await);
        assert_eq!(c.expect_reply(id).await[0].1, "200");
    }
}

#[tokio::test]
async fn peer_without_flow_control_is_not_throttled() {
    // moby/spdystream never sends WINDOW_UPDATE or SETTINGS: a server that
    // enforced the 64 KiB default window would stall here.
    let (mut c, _handle, mut incoming) = setup();
    c.syn(1, &[("streamtype", "stdout")], 0).await;
    let mut s = accept(&mut incoming).await;
    c.expect_reply(1).await;
    let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let p = payload.clone();
    let w = tokio::spawn(async move {
        s.write_all(&p).await.unwrap();
        s.shutdown().await.unwrap();
        s
    });
    assert_eq!(c.read_stream(1).await, payload);
    w.await.unwrap();
}

#[tokio::test]
async fn send_windows_enforced_once_peer_does_flow_control() {
    let (mut c, _handle, mut incoming) = setup();
    c.send(Frame::Settings {
        flags: 0,
        entries: vec![Setting {
            flags: 0,
            id: settings_id::INITIAL_WINDOW_SIZE,
            value: 16384,
        }],
    })
    .await;
    c.syn(1, &[("streamtype", "stdout")], 0).await;
    let mut s = accept(&mut incoming).await;
    c.expect_reply(1).await;
    let total = 100 * 1024;
    let w = tokio::spawn(async move {
        s.write_all(&vec![7u8; total]).await.unwrap();
        s.shutdown().await.unwrap();
        s
    });

    let mut got = 0;
    let mut read_until = async |c: &mut Client, upto: usize| {
        while got < upto {
            match c.next_skip_wu().await {
                Some(Frame::Data { data, .. }) => got += data.len(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, upto);
    };
    // Stream window: 16 KiB.
    read_until(&mut c, 16384).await;
    c.expect_quiet(101).await;
    // +50000 on the stream, but the session window (64 KiB) binds.
    c.send(Frame::WindowUpdate {
        stream_id: 1,
        delta: 50000,
    })
    .await;
    read_until(&mut c, 65536).await;
    c.expect_quiet(103).await;
    // Open the session: now the stream window (66384) binds.
    c.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 1 << 20,
    })
    .await;
    read_until(&mut c, 16384 + 50000).await;
    c.expect_quiet(105).await;
    c.send(Frame::WindowUpdate {
        stream_id: 1,
        delta: 1 << 20,
    })
    .await;
    read_until(&mut c, total).await;
    match c.next_skip_wu().await {
        Some(Frame::Data { flags, data, .. }) => {
            assert_eq!(flags, FLAG_FIN);
            assert!(data.is_empty());
        }
        other => panic!("{other:?}"),
    }
    w.await.unwrap();
}

#[tokio::test]
async fn settings_initial_window_change_adjusts_open_streams() {
    let (mut c, _handle, mut incoming) = setup();
    c.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 1 << 20,
    })
    .await; // peer does flow control; session window is large
    c.syn(1, &[], 0).await;
    let mut s = accept(&mut incoming).await;
    c.expect_reply(1).await;
    // Shrink the initial window from 64 KiB to 1000: the open stream's
    // window drops by the difference.
    c.send(Frame::Settings {
        flags: 0,
        entries: vec![Setting {
            flags: 0,
            id: settings_id::INITIAL_WINDOW_SIZE,
            value: 1000,
        }],
    })
    .await;
    c.expect_quiet(1).await; // make sure SETTINGS was processed
    let w = tokio::spawn(async move {
        s.write_all(&[1u8; 5000]).await.unwrap();
        s
    });
    match c.next_skip_wu().await {
        Some(Frame::Data { data, .. }) => assert_eq!(data.len(), 1000),
        other => panic!("{other:?}"),
    }
    c.expect_quiet(3).await;
    c.send(Frame::WindowUpdate {
        stream_id: 1,
        delta: 4000,
    })
    .await;
    match c.next_skip_wu().await {
        Some(Frame::Data { data, .. }) => assert_eq!(data.len(), 4000),
        other => panic!("{other:?}"),
    }
    w.await.unwrap();
}

#[tokio::test]
async fn window_updates_follow_consumption() {
    let (mut c, _handle, mut incoming) = setup();
    c.syn(1, &[], 0).await;
    let mut s = accept(&mut incoming).await;
    c.expect_reply(1).await;
    let sent = 200 * 1024;
    for _ in 0..sent / 8192 {
        c.data(1, &[5u8; 8192], false).await;
    }
    // The client window is not enforced on us, but we do credit as read.
    let mut buf = vec![0u8; sent];
    timeout(T, s.read_exact(&mut buf)).await.unwrap().unwrap();
    let (mut stream_credit, mut session_credit) = (0usize, 0usize);
    while stream_credit + 32768 <= sent || session_credit + 32768 <= sent {
        match c.next().await {
            Some(Frame::WindowUpdate {
                stream_id: 1,
                delta,
            }) => stream_credit += delta as usize,
            Some(Frame::WindowUpdate {
                stream_id: 0,
                delta,
            }) => session_credit += delta as usize,
            other => panic!("{other:?}"),
        }
    }
    assert!(stream_credit <= sent && session_credit <= sent);
}

#[tokio::test]
async fn slow_reader_backpressures_the_transport() {
    let config = SessionConfig {
        max_stream_buffer: 64 * 1024,
        ..SessionConfig::default()
    };
    let (a, b) = tokio::io::duplex(16 * 1024);
    let (_handle, mut incoming) = Session::server_with_config(b, config);
    let mut c = Client::new(a);
    c.syn(1, &[], 0).await;
    let mut s = accept(&mut incoming).await;
    c.expect_reply(1).await;

    // A spdystream-like sender: ignores windows, 32 KiB per frame.
    let total = 1 << 20;
    let progress = Arc::new(AtomicUsize::new(0));
    let (p, mut wr) = (progress.clone(), c.wr);
    let sender = tokio::spawn(async move {
        let chunk = vec![3u8; 32 * 1024];
        for _ in 0..total / chunk.len() {
            let f = Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::copy_from_slice(&chunk),
            };
            wr.write_all(&f.to_bytes().unwrap()).await.unwrap();
            p.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        wr
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled_at = progress.load(Ordering::SeqCst);
    // Buffer limit + one frame + pipe + read buffer, far below 1 MiB.
    assert!(
        stalled_at <= 256 * 1024,
        "sender got {stalled_at} bytes out"
    );
    assert!(!sender.is_finished());

    let mut buf = vec![0u8; total];
    timeout(T, s.read_exact(&mut buf)).await.unwrap().unwrap();
    assert!(buf.iter().all(|&b| b == 3));
    timeout(T, sender).await.unwrap().unwrap();
}

#[tokio::test]
async fn client_rst_fails_reads_and_writes() {
    let (mut c, handle, mut incoming) = setup();
    c.syn(1, &[], 0).await;
    let mut s = accept(&mut incoming).await;
    c.expect_reply(1).await;
    c.data(1, b"lost", false).await;
    c.send(Frame::RstStream {
        stream_id: 1,
        status: RstStatus::CANCEL,
    })
    .await;
    let mut buf = [0u8; 16];
    // The reset may land before or after the data was read.
    let err = loop {
        match timeout(T, s.read(&mut buf)).await.unwrap() {
            Ok(n) => assert!(n > 0, "unexpected EOF"),
            Err(e) => break e,
        }
    };
    assert_eq!(
        reset_of(&err),
        StreamReset {
            status: RstStatus::CANCEL,
            by_peer: true
        }
    );
    let err = s.write_all(b"x").await.unwrap_err();
    assert!(reset_of(&err).by_peer);
    assert_eq!(handle.active_streams(), 0);
}

#[tokio::test]
async fn server_reset_sends_rst_and_ignores_late_data() {
    let (mut c, handle, mut incoming) = setup();
    c.syn(1, &[], 0).await;
    let s = accept(&mut incoming).await;
    c.expect_reply(1).await;
    s.reset(RstStatus::REFUSED_STREAM);
    assert_eq!(
        c.next_skip_wu().await,
        Some(Frame::RstStream {
            stream_id: 1,
            status: RstStatus::REFUSED_STREAM
        })
    );
    assert_eq!(handle.active_streams(), 0);
    // In-flight data for the reset stream is dropped silently.
    c.data(1, b"late", true).await;
    c.expect_quiet(7).await;
    let (mut r, _w) = s.into_split();
    let err = r.read(&mut [0u8; 4]).await.unwrap_err();
    assert!(!reset_of(&err).by_peer);
}

#[tokio::test]
async fn stream_errors_get_rst_stream() {
    let (mut c, _handle, mut incoming) = setup();
    // Even ids are the server's.
    c.syn(2, &[], 0).await;
    assert_eq!(
        c.next().await,
        Some(Frame::RstStream {
            stream_id: 2,
            status: RstStatus::PROTOCOL_ERROR
        })
    );
    c.syn(5, &[], 0).await;
    let _s5 = accept(&mut incoming).await;
    c.expect_reply(5).await;
    // Ids must increase.
    c.syn(3, &[], 0).await;
    assert_eq!(
        c.next().await,
        Some(Frame::RstStream {
            stream_id: 3,
            status: RstStatus::PROTOCOL_ERROR
        })
    );
    // DATA for a stream never opened.
    c.data(99, b"?", false).await;
    assert_eq!(
        c.next().await,
        Some(Frame::RstStream {
            stream_id: 99,
            status: RstStatus::INVALID_STREAM
        })
    );
    // DATA after FIN.
    c.data(5, b"", true).await;
    c.data(5, b"more", false).await;
    assert_eq!(
        c.next_skip_wu().await,
        Some(Frame::RstStream {
            stream_id: 5,
            status: RstStatus::STREAM_ALREADY_CLOSED
        })
    );
    // The session survives all of that.
    c.send(Frame::Ping { id: 9 }).await;
    assert_eq!(c.next_skip_wu().await, Some(Frame::Ping { id: 9 }));
}

#[tokio::test]
async fn bad_version_is_a_session_error() {
    let (mut c, handle, _incoming) = setup();
    c.wr.write_all(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1])
        .await
        .unwrap();
    assert_eq!(
        c.next().await,
        Some(Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::PROTOCOL_ERROR
        })
    );
    assert_eq!(c.next().await, None);
    timeout(T, handle.closed()).await.unwrap();
}

#[tokio::test]
async fn header_bomb_is_a_session_error() {
    let config = SessionConfig {
        max_header_list_size: 16 * 1024,
        ..SessionConfig::default()
    };
    let (mut c, handle, mut incoming) = setup_with(config);
    c.syn(1, &[("x", &"a".repeat(1 << 20))], 0).await;
    assert_eq!(
        c.next().await,
        Some(Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::PROTOCOL_ERROR
        })
    );
    assert_eq!(c.next().await, None);
    timeout(T, handle.closed()).await.unwrap();
    assert!(incoming.recv().await.is_none());
}

#[tokio::test]
async fn oversized_frame_is_a_session_error() {
    let config = SessionConfig {
        frame_limits: Limits {
            max_data_payload: 1024,
            ..Limits::default()
        },
        ..SessionConfig::default()
    };
    let (mut c, handle, _incoming) = setup_with(config);
    c.data(1, &[0u8; 1025], false).await;
    assert!(matches!(c.next().await, Some(Frame::GoAway { .. })));
    timeout(T, handle.closed()).await.unwrap();
}

#[tokio::test]
async fn client_goaway_closes_accept_and_finishes_session() {
    let (mut c, handle, mut incoming) = setup();
    c.syn(1, &[], 0).await;
    let mut s = accept(&mut incoming).await;
    c.expect_reply(1).await;
    c.send(Frame::GoAway {
        last_good_stream_id: 0,
        status: GoAwayStatus::OK,
    })
    .await;
    assert!(timeout(T, incoming.recv()).await.unwrap().is_none());
    assert!(!handle.is_closed());
    // The open stream still works.
    c.data(1, b"in", true).await;
    let mut got = vec![];
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"in");
    s.write_all(b"out").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(c.read_stream(1).await, b"out");
    // Last stream done: the server closes the transport.
    assert_eq!(c.next_skip_wu().await, None);
    timeout(T, handle.closed()).await.unwrap();
}

#[tokio::test]
async fn server_goaway_ignores_new_streams() {
    let (mut c, handle, mut incoming) = setup();
    c.syn(1, &[], 0).await;
    let s = accept(&mut incoming).await;
    c.expect_reply(1).await;
    handle.goaway(GoAwayStatus::OK);
    assert_eq!(
        c.next_skip_wu().await,
        Some(Frame::GoAway {
            last_good_stream_id: 1,
            status: GoAwayStatus::OK
        })
    );
    c.syn(3, &[], 0).await;
    c.expect_quiet(11).await; // no SYN_REPLY, no RST
    // Dropping the stream sends FIN; the client's FIN completes it.
    drop(s);
    assert_eq!(c.read_stream(1).await, b"");
    c.data(1, b"", true).await;
    assert_eq!(c.next_skip_wu().await, None);
    timeout(T, handle.closed()).await.unwrap();
    assert!(incoming.recv().await.is_none());
}

#[tokio::test]
async fn transport_close_fails_unfinished_streams() {
    let (mut c, handle, mut incoming) = setup();
    c.syn(1, &[], 0).await;
    c.syn(3, &[], 0).await;
    let mut s1 = accept(&mut incoming).await;
    let mut s3 = accept(&mut incoming).await;
    c.data(3, b"done", true).await;
    c.expect_reply(1).await;
    c.expect_reply(3).await;
    c.send(Frame::Ping { id: 1 }).await;
    assert_eq!(c.next_skip_wu().await, Some(Frame::Ping { id: 1 }));
    drop(c);
    timeout(T, handle.closed()).await.unwrap();
    // Finished stream: its data and EOF are still readable.
    let mut got = vec![];
    s3.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"done");
    // Unfinished stream: an error, not a silent EOF.
    let err = s1.read(&mut [0u8; 8]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert_eq!(
        s1.write_all(b"x").await.unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
}

#[tokio::test]
async fn handle_close_aborts_everything() {
    let (mut c, handle, mut incoming) = setup();
    c.syn(1, &[], 0).await;
    let mut s = accept(&mut incoming).await;
    handle.close();
    timeout(T, handle.closed()).await.unwrap();
    assert!(s.read(&mut [0u8; 1]).await.is_err());
    // The client sees the transport end (possibly after the reply).
    while c.next().await.is_some() {}
}

#[tokio::test]
async fn unidirectional_and_fin_flags() {
    let (mut c, _handle, mut incoming) = setup();
    // FIN on SYN_STREAM: the reader is at EOF at once.
    c.syn(1, &[("a", "b")], FLAG_FIN).await;
    let mut s = accept(&mut incoming).await;
    assert!(s.fin);
    let mut got = vec![];
    s.read_to_end(&mut got).await.unwrap();
    assert!(got.is_empty());
    c.expect_reply(1).await;
    // Unidirectional: no reply, and we may not write.
    c.syn(3, &[], FLAG_UNIDIRECTIONAL).await;
    let mut u = accept(&mut incoming).await;
    assert!(u.unidirectional);
    assert!(u.write_all(b"no").await.is_err());
    c.data(3, b"one-way", true).await;
    let mut got = vec![];
    u.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"one-way");
    c.expect_quiet(5).await;
}

#[tokio::test]
async fn headers_frame_is_decoded_and_fin_half_closes() {
    let (mut c, _handle, mut incoming) = setup();
    c.syn(1, &[("a", "1")], 0).await;
    let mut s = accept(&mut incoming).await;
    c.expect_reply(1).await;
    let block = c.comp.compress(&hl(&[("trailer", "x")])).unwrap();
    c.send(Frame::Headers {
        stream_id: 1,
        flags: FLAG_FIN,
        header_block: block.into(),
    })
    .await;
    let mut got = vec![];
    s.read_to_end(&mut got).await.unwrap();
    assert!(got.is_empty());
    // The compression context stayed in step: a later SYN_STREAM decodes.
    c.syn(3, &[("after", "headers")], 0).await;
    let s3 = accept(&mut incoming).await;
    assert_eq!(s3.header("after"), Some("headers"));
}

#[tokio::test]
async fn larger_recv_window_is_announced() {
    let config = SessionConfig {
        initial_recv_window: 1 << 20,
        ..SessionConfig::default()
    };
    let (mut c, _handle, _incoming) = setup_with(config);
    assert_eq!(
        c.next().await,
        Some(Frame::Settings {
            flags: 0,
            entries: vec![Setting {
                flags: 0,
                id: settings_id::INITIAL_WINDOW_SIZE,
                value: 1 << 20
            }]
        })
    );
    assert_eq!(
        c.next().await,
        Some(Frame::WindowUpdate {
            stream_id: 0,
            delta: (1 << 20) - 65536
        })
    );
}

#[tokio::test]
async fn dropped_accept_receiver_refuses_streams() {
    let (mut c, _handle, incoming) = setup();
    drop(incoming);
    c.syn(1, &[], 0).await;
    assert_eq!(
        c.next().await,
        Some(Frame::RstStream {
            stream_id: 1,
            status: RstStatus::REFUSED_STREAM
        })
    );
}

#[tokio::test]
async fn non_reading_client_backpressures_stream_writers() {
    let config = SessionConfig {
        write_queue: 4,
        ..SessionConfig::default()
    };
    let (a, b) = tokio::io::duplex(16 * 1024);
    let (_handle, mut incoming) = Session::server_with_config(b, config);
    let mut c = Client::new(a);
    c.syn(1, &[], 0).await;
    let mut s = accept(&mut incoming).await;
    c.expect_reply(1).await;

    let total = 4 << 20;
    let progress = Arc::new(AtomicUsize::new(0));
    let p = progress.clone();
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 16 * 1024];
        for _ in 0..total / chunk.len() {
            s.write_all(&chunk).await.unwrap();
            p.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        s.shutdown().await.unwrap();
    });
    // The client reads nothing: writes must stall once the pipe, the
    // writer's batch and the 4-frame queue are full.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled_at = progress.load(Ordering::SeqCst);
    assert!(
        stalled_at <= 512 * 1024,
        "writer got {stalled_at} bytes out"
    );
    assert!(!writer.is_finished());

    assert_eq!(c.read_stream(1).await.len(), total);
    timeout(T, writer).await.unwrap().unwrap();
}

#[tokio::test]
async fn dropped_read_half_discards_and_still_credits() {
    let (mut c, _handle, mut incoming) = setup();
    c.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 1,
    })
    .await; // a flow-controlling peer
    c.syn(1, &[], 0).await;
    let (r, mut w) = accept(&mut incoming).await.into_split();
    c.expect_reply(1).await;
    drop(r);
    // 256 KiB, far beyond the 64 KiB window: the server must keep
    // crediting what it throws away or a compliant peer would stall.
    for _ in 0..32 {
        c.data(1, &[0u8; 8192], false).await;
    }
    let (mut stream_credit, mut session_credit) = (0, 0);
    while stream_credit < 200 * 1024 || session_credit < 200 * 1024 {
        match c.next().await {
            Some(Frame::WindowUpdate {
                stream_id: 1,
                delta,
            }) => stream_credit += delta,
            Some(Frame::WindowUpdate {
                stream_id: 0,
                delta,
            }) => session_credit += delta,
            other => panic!("{other:?}"),
        }
    }
    // The write half is unaffected.
    w.write_all(b"still here").await.unwrap();
    w.shutdown().await.unwrap();
    assert_eq!(c.read_stream(1).await, b"still here");
}
