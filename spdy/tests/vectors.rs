//! Interop vectors against spdy-transport (node), both directions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::print_stdout
)]

mod common;

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use spdy::frame::{FLAG_FIN, FLAG_SETTINGS_PERSIST_VALUE, Setting, settings_id};
use spdy::{Frame, FrameDecoder, GoAwayStatus, HeaderCompressor, HeaderDecompressor, RstStatus};
use std::io::Write;
use std::process::{Command, Stdio};

/// Output of `node node/gen_vectors.js` (spdy-transport 3.0.0, node 20):
/// SETTINGS, session WINDOW_UPDATE, two SYN_STREAMs sharing one zlib
/// stream, DATA, DATA+FIN, PING, RST_STREAM, GOAWAY.
const SPDY_TRANSPORT_CLIENT_HEX: &str = "\
800300040000000c000000010100000700100000800300090000000800000000000f00008003000100000079\
0000000100000000600038ace3c6a7c2022540703a2b294a4dcc851625acc5252999a0b4c95ea15b5a5000ce\
32ac618939a560c9dcd29c924c70f1c990045263054ff02c01fec1212013adb0276f56ab82447079c7aa9f5a\
919a0cd65c9c9c919a0b3637a3a4a4a018ac0a5a3871828a8d1c1007000000ffff8003000101000029000000\
0300000000600002a9c470255b71494a3eb8bae02c82a4ae4c9023180de8e42800000000ffff000000010000\
000568656c6c6f00000001010000008003000600000004000000018003000300000008000000030000000580\
030007000000080000000000000000";

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Decodes a client->server stream from spdy-transport and checks every
/// frame, decompressing both header blocks on one shared context.
fn check_client_stream(bytes: &[u8]) {
    let mut dec = FrameDecoder::default();
    let mut buf = BytesMut::from(bytes);
    let mut frames = vec![];
    while let Some(f) = dec.decode(&mut buf).unwrap() {
        frames.push(f);
    }
    assert!(buf.is_empty());
    assert_eq!(frames.len(), 9, "{frames:#?}");
    let mut z = HeaderDecompressor::new(1 << 16);

    assert_eq!(
        frames[0],
        Frame::Settings {
            flags: 0,
            entries: vec![Setting {
                flags: FLAG_SETTINGS_PERSIST_VALUE,
                id: settings_id::INITIAL_WINDOW_SIZE,
                value: 1 << 20
            }]
        }
    );
    assert_eq!(
        frames[1],
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 983040
        }
    );
    let Frame::SynStream {
        stream_id: 1,
        associated_id: 0,
        flags: 0,
        header_block,
        ..
    } = &frames[2]
    else {
        panic!("{:?}", frames[2]);
    };
    assert_eq!(
        z.decompress(header_block).unwrap(),
        pairs(&[
            ("streamtype", "stdin"),
            ("x-upper", "Value"),
            ("multi", "a"),
            ("multi", "b"),
            (":method", "POST"),
            (":version", "HTTP/1.1"),
            (":path", "/exec"),
            (":scheme", "https"),
            (":host", "localhost"),
        ])
    );
    let Frame::SynStream {
        stream_id: 3,
        flags: FLAG_FIN,
        header_block,
        ..
    } = &frames[3]
    else {
        panic!("{:?}", frames[3]);
    };
    assert_eq!(
        z.decompress(header_block).unwrap(),
        pairs(&[
            ("streamtype", "stdout"),
            ("requestid", "0"),
            (":method", "POST"),
            (":version", "HTTP/1.1"),
            (":path", "/exec"),
            (":scheme", "https"),
            (":host", "localhost"),
        ])
    );
    assert_eq!(
        frames[4..],
        [
            Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from_static(b"hello")
            },
            Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::new()
            },
            Frame::Ping { id: 1 },
            Frame::RstStream {
                stream_id: 3,
                status: RstStatus::CANCEL
            },
            Frame::GoAway {
                last_good_stream_id: 0,
                status: GoAwayStatus::OK
            },
        ]
    );
}

#[test]
fn decodes_recorded_spdy_transport_vector() {
    let bytes = common::unhex(SPDY_TRANSPORT_CLIENT_HEX);
    // spdy-transport compresses with windowBits 11: CMF 0x38, FLG with
    // FDICT, then the SPDY/3 dictionary id.
    assert_eq!(&bytes[54..60], &[0x38, 0xac, 0xe3, 0xc6, 0xa7, 0xc2]);
    check_client_stream(&bytes);
}

#[test]
fn decodes_live_spdy_transport_output() {
    let Some((dir, node_path)) = common::node_dir() else {
        return;
    };
    let out = Command::new("node")
        .arg("gen_vectors.js")
        .current_dir(&dir)
        .env("NODE_PATH", &node_path)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_client_stream(&common::unhex(&String::from_utf8_lossy(&out.stdout)));
}

#[test]
fn spdy_transport_parses_our_output() {
    let Some((dir, node_path)) = common::node_dir() else {
        return;
    };
    let mut z = HeaderCompressor::new().unwrap();
    let mut block = |h: &[(&str, &str)]| Bytes::from(z.compress(&pairs(h)).unwrap());
    let frames = vec![
        Frame::Settings {
            flags: 0,
            entries: vec![Setting {
                flags: 0,
                id: settings_id::INITIAL_WINDOW_SIZE,
                value: 1 << 20,
            }],
        },
        Frame::SynReply {
            stream_id: 1,
            flags: 0,
            header_block: block(&[
                (":status", "200"),
                (":version", "HTTP/1.1"),
                ("x-multi", "a"),
                ("X-Multi", "b"),
            ]),
        },
        Frame::SynReply {
            stream_id: 3,
            flags: 0,
            header_block: block(&[(":status", "200"), ("streamtype", "stdout")]),
        },
        Frame::Headers {
            stream_id: 1,
            flags: 0,
            header_block: block(&[("trailer", "yes")]),
        },
        Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"bye"),
        },
        Frame::WindowUpdate {
            stream_id: 3,
            delta: 4096,
        },
        Frame::Ping { id: 1 },
        Frame::RstStream {
            stream_id: 3,
            status: RstStatus::REFUSED_STREAM,
        },
        Frame::GoAway {
            last_good_stream_id: 3,
            status: GoAwayStatus::OK,
        },
    ];
    let mut wire = BytesMut::new();
    for f in &frames {
        f.encode(&mut wire).unwrap();
    }

    let mut child = Command::new("node")
        .arg("parse_vectors.js")
        .current_dir(&dir)
        .env("NODE_PATH", &node_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(common::hex(&wire).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = got.as_array().unwrap();

    // spdy-transport maps SYN_REPLY/HEADERS to its HTTP/2-style HEADERS,
    // drops `:version` and joins repeated values with ", ".
    assert_eq!(got[0]["type"], "SETTINGS");
    assert_eq!(got[0]["settings"], json!({"initial_window_size": 1048576}));
    assert_eq!(got[1]["type"], "HEADERS");
    assert_eq!(got[1]["id"], 1);
    assert_eq!(
        got[1]["headers"],
        json!({":status": "200", "x-multi": "a, b"})
    );
    assert_eq!(got[2]["id"], 3);
    assert_eq!(
        got[2]["headers"],
        json!({":status": "200", "streamtype": "stdout"})
    );
    assert_eq!(got[3]["type"], "HEADERS");
    assert_eq!(got[3]["headers"], json!({"trailer": "yes"}));
    assert_eq!(got[4]["type"], "DATA");
    assert_eq!(got[4]["fin"], true);
    assert_eq!(got[4]["data"], common::hex(b"bye"));
    assert_eq!(
        got[5],
        json!({"type": "WINDOW_UPDATE", "id": 3, "delta": 4096})
    );
    assert_eq!(got[6]["type"], "PING");
    assert_eq!(got[6]["ack"], true, "odd id echoed to a client is an ack");
    assert_eq!(
        got[7],
        json!({"type": "RST", "id": 3, "code": "REFUSED_STREAM"})
    );
    assert_eq!(got[8], json!({"type": "GOAWAY", "lastId": 3, "code": "OK"}));
    assert_eq!(got.len(), 9);
}
