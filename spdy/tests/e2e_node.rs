//! End to end: spdy-transport (node) as a SPDY/3.1 client over TCP against
//! our server session. Four streams with headers, >1 MiB each way (so flow
//! control windows must be granted and honoured), FIN both ways, RST both
//! ways, PING, and the client's GOAWAY ending the session.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::print_stdout
)]

mod common;

use serde_json::Value;
use spdy::{IncomingStream, RstStatus, Session, StreamReset};
use std::io;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::task::JoinSet;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(60);

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(7).wrapping_add(seed as u32) as u8)
        .collect()
}

async fn serve(mut s: IncomingStream) -> Result<String, String> {
    let kind = s.header("x-test").unwrap_or_default().to_string();
    let err = |e: io::Error| format!("{kind}: {e}");
    match kind.as_str() {
        "echo" => {
            let multi: Vec<_> = s
                .headers
                .iter()
                .filter(|(n, _)| n == "x-multi")
                .map(|(_, v)| v.as_str())
                .collect();
            if multi != ["one", "two"] {
                return Err(format!("x-multi = {multi:?}"));
            }
            let (mut r, mut w) = s.into_split();
            let n = tokio::io::copy(&mut r, &mut w).await.map_err(err)?;
            w.shutdown().await.map_err(err)?;
            if n != 1536 * 1024 {
                return Err(format!("echoed {n} bytes"));
            }
        }
        "download" => {
            let mut body = vec![];
            s.read_to_end(&mut body).await.map_err(err)?;
            if body != b"hello" {
                return Err(format!("download body {body:?}"));
            }
            s.write_all(&pattern(2 << 20, 9)).await.map_err(err)?;
            s.shutdown().await.map_err(err)?;
        }
        "client-reset" => {
            s.write_all(b"ready").await.map_err(err)?;
            let mut got = [0u8; 7];
            s.read_exact(&mut got).await.map_err(err)?;
            if &got != b"partial" {
                return Err(format!("got {got:?}"));
            }
            let e = s.read(&mut [0u8; 8]).await.err().ok_or("no reset seen")?;
            let reset = e.get_ref().and_then(|i| i.downcast_ref::<StreamReset>());
            if reset
                != Some(&StreamReset {
                    status: RstStatus::CANCEL,
                    by_peer: true,
                })
            {
                return Err(format!("client-reset: {e:?}"));
            }
        }
        "server-reset" => {
            let mut got = [0u8; 4];
            s.read_exact(&mut got).await.map_err(err)?;
            s.reset(RstStatus::REFUSED_STREAM);
            if s.write_all(b"x").await.is_ok() {
                return Err("write after reset succeeded".into());
            }
        }
        other => return Err(format!("unknown x-test {other:?}")),
    }
    Ok(kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_transport_client_end_to_end() {
    let Some((dir, node_path)) = common::node_dir() else {
        return;
    };
    // RUST_LOG=spdy=trace shows the frames and flow-control decisions.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let child = Command::new("node")
        .arg("e2e_client.js")
        .arg(port.to_string())
        .current_dir(&dir)
        .env("NODE_PATH", &node_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");

    let (tcp, _) = timeout(T, listener.accept()).await.unwrap().unwrap();
    let (handle, mut incoming) = Session::server(tcp);
    let mut tasks = JoinSet::new();
    // Ends when the client's GOAWAY closes the accept channel.
    while let Some(stream) = timeout(T, incoming.recv()).await.unwrap() {
        tasks.spawn(serve(stream));
    }
    let mut served = vec![];
    while let Some(res) = tasks.join_next().await {
        served.push(res.unwrap().unwrap());
    }
    served.sort();
    assert_eq!(served, ["client-reset", "download", "echo", "server-reset"]);
    timeout(T, handle.closed())
        .await
        .expect("session did not end");

    let out = timeout(T, child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "node failed: {stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("node summary");
    assert_eq!(r["status"], serde_json::json!([200, 200, 200, 200]));
    assert_eq!(r["echo_len"], 1536 * 1024);
    assert_eq!(r["echo_ok"], true);
    assert_eq!(r["download_len"], 2 << 20);
    assert_eq!(r["download_ok"], true);
    assert_eq!(r["server_reset_error"], "Got RST: REFUSED_STREAM");
    assert_eq!(r["ping"], true);
}
