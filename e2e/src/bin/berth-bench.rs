//! berth-bench: measures berth on this machine against a local registry.
//!
//! `berth-bench pull [--runs N]` builds two images, pushes them to a local docker-registry
//! and pulls each cold N times through a real berthd (removing it and collecting garbage
//! between runs):
//! - `multilayer`: 6 layers, 250 MB uncompressed, half of each layer incompressible;
//! - `smallfiles`: one layer of 20,000 small files.
//!
//! It prints a table and one JSON line per image. Build it in release mode:
//! `cargo build --release -p berth-agent -p berth-e2e && target/release/berth-bench pull`.
#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::time::Instant;

use berth_e2e::images::{Compression, Entry, Layer, TestImage, catalog};
use berth_e2e::{Daemon, Registry};

/// Deterministic incompressible bytes (xorshift64*).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compressible bytes: repeated text with a counter.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("berth benchmark line {i:012} lorem ipsum dolor sit amet\n").as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

fn multilayer() -> TestImage {
    const TOTAL: usize = 250_000_000;
    let per_layer = TOTAL / 6;
    let layers = (0..6)
        .map(|i| {
            Layer::new(vec![
                Entry::dir(&format!("layer{i}")),
                Entry::file(
                    &format!("layer{i}/random.bin"),
                    noise(per_layer / 2, 7 + i as u64),
                ),
                Entry::file(&format!("layer{i}/text.txt"), text(per_layer / 2)),
            ])
            .compressed(Compression::Gzip)
        })
        .collect();
    TestImage::new(layers)
}

fn smallfiles() -> TestImage {
    let mut entries = vec![Entry::dir("files")];
    for d in 0..100 {
        entries.push(Entry::dir(&format!("files/d{d:03}")));
        for f in 0..200 {
            let size = 512 + ((d * 200 + f) % 7) * 512;
            entries.push(Entry::file(
                &format!("files/d{d:03}/f{f:03}.txt"),
                text(size),
            ));
        }
    }
    TestImage::new(vec![Layer::new(entries).compressed(Compression::Gzip)])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn bench_pull(runs: usize) {
    assert!(catalog::available(), "busybox-static is needed");
    let reg = Registry::start().expect("docker-registry is needed");
    let d = Daemon::start().await;
    let mut cri = d.cri().await;
    println!(
        "{:<12} {:>6} {:>10} {:>10} {:>9} {:>9} {:>11}",
        "image", "runs", "blob MB", "tar MB", "p50 s", "max s", "MB/s (tar)"
    );
    for (name, img) in [("multilayer", multilayer()), ("smallfiles", smallfiles())] {
        let t = Instant::now();
        let built = img.build();
        let blob_bytes: u64 = built.blobs.iter().map(|(_, b)| b.len() as u64).sum();
        let tar_bytes: u64 = img.layers.iter().map(|l| l.tar().len() as u64).sum();
        reg.push_image(name, "latest", &built);
        eprintln!(
            "built and pushed {name} in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let reference = format!("{}/{name}:latest", reg.host());
        let mut secs = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            cri.pull(&reference, None).await.expect("pull");
            secs.push(start.elapsed().as_secs_f64());
            cri.remove_image(&reference).await.expect("remove");
        }
        secs.sort_by(f64::total_cmp);
        let p50 = percentile(&secs, 0.5);
        let mb = |b: u64| b as f64 / 1e6;
        println!(
            "{:<12} {:>6} {:>10.1} {:>10.1} {:>9.3} {:>9.3} {:>11.1}",
            name,
            runs,
            mb(blob_bytes),
            mb(tar_bytes),
            p50,
            secs.last().copied().unwrap_or(f64::NAN),
            mb(tar_bytes) / p50
        );
        println!(
            "{}",
            serde_json::json!({"bench": "pull", "image": name, "runs": runs, "blob_bytes": blob_bytes,
                "tar_bytes": tar_bytes, "seconds": secs, "p50_seconds": p50,
                "blob_mb_per_s": mb(blob_bytes) / p50, "tar_mb_per_s": mb(tar_bytes) / p50})
        );
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("pull") => {
            rt.block_on(bench_pull(runs));
            std::process::ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: berth-bench pull [--runs N]");
            std::process::ExitCode::from(2)
        }
    }
}
