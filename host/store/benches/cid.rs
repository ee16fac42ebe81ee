//! Throughput of `cmbuild cid` against `sha256sum` on the same large file.
//!
//! `cargo bench -p cmbuild-store --bench cid` writes a temporary file (1 GiB, or
//! `CMBUILD_BENCH_MB` MiB), reads it once to warm the page cache, then times each contender
//! three times and keeps the best run. Prints MB/s of both and the ratio (target >= 0.8).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = None;
    for _ in 0..runs {
        let start = Instant::now();
        let value = f();
        let took = start.elapsed();
        if best.as_ref().is_none_or(|(b, _)| took < *b) {
            best = Some((took, value));
        }
    }
    best.expect("at least one run")
}

fn write_file(path: &Path, mib: usize) {
    let mut file = File::create(path).expect("create the bench file");
    let mut block = vec![0u8; 1 << 20];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..mib {
        for chunk in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block).expect("write the bench file");
    }
    file.sync_all().expect("sync the bench file");
}

fn main() {
    // `cargo test --benches` runs this too: keep that quick.
    let mib: usize = std::env::var("CMBUILD_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            1024
        } else {
            16
        });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.bin");
    write_file(&path, mib);
    let bytes = (mib << 20) as f64;

    // Warm the page cache so that both read from memory.
    cmbuild_store::cid::cid_of_file(&path).expect("hash");

    let (ours, cid) = best_of(3, || cmbuild_store::cid::cid_of_file(&path).expect("hash"));
    let (theirs, out) = best_of(3, || {
        Command::new("sha256sum")
            .arg(&path)
            .output()
            .expect("run sha256sum")
    });
    assert!(out.status.success(), "sha256sum failed");

    let rate = |d: Duration| bytes / d.as_secs_f64() / 1e6;
    println!("file: {mib} MiB, cid {cid}");
    println!(
        "cmbuild cid: {:8.1} MB/s ({:.3} s)",
        rate(ours),
        ours.as_secs_f64()
    );
    println!(
        "sha256sum:   {:8.1} MB/s ({:.3} s)",
        rate(theirs),
        theirs.as_secs_f64()
    );
    println!(
        "ratio cmbuild/sha256sum: {:.2}x (target >= 0.80x)",
        rate(ours) / rate(theirs)
    );
}
