//! Property test (proptest, stable toolchain) of `.deb` extraction: whatever the data
//! archive holds, every extracted path is relative and stays inside the tree (no `/` at the
//! start, no `..`, no empty part), hard links point inside too, and nothing panics.
//! `CMBUILD_PROPTEST_CASES` sets the cases (default 200); the rate is printed.

use std::time::Instant;

use cmbuild_image::deb::{read_tar, Node};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn part() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(b"".to_vec()),
        Just(b"usr".to_vec()),
        Just(b"etc".to_vec()),
        prop::collection::vec(any::<u8>(), 0..6),
    ]
}

fn header(name: &[u8], link: &[u8], kind: u8, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", size.min(0o77777777777)).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[test]
fn extracted_paths_stay_inside_the_tree() {
    let entry = (
        prop::collection::vec(part(), 1..5).prop_map(|p| p.join(&b'/')),
        prop::collection::vec(part(), 1..4).prop_map(|p| p.join(&b'/')),
        prop_oneof![
            Just(b'0'),
            Just(b'5'),
            Just(b'2'),
            Just(b'1'),
            Just(b'L'),
            any::<u8>()
        ],
        prop::collection::vec(any::<u8>(), 0..600),
    );
    let cases = std::env::var("CMBUILD_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();
    runner
        .run(&prop::collection::vec(entry, 0..8), |entries| {
            let mut tar = Vec::new();
            for (name, link, kind, data) in &entries {
                tar.extend_from_slice(&header(name, link, *kind, data.len() as u64));
                tar.extend_from_slice(data);
                tar.resize(tar.len().div_ceil(512) * 512, 0);
            }
            tar.extend_from_slice(&[0; 1024]);
            if let Ok(extracted) = read_tar(&tar[..]) {
                for e in extracted {
                    let inside = |p: &str| {
                        !p.starts_with('/') && p.split('/').all(|c| c != ".." && c != ".")
                    };
                    prop_assert!(inside(&e.path), "{:?}", e.path);
                    prop_assert!(!e.path.contains("//"), "{:?}", e.path);
                    if let Node::Hardlink(target) = &e.node {
                        prop_assert!(inside(target), "{:?}", target);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "deb data extraction: {cases} cases in {secs:.2} s ({:.0} executions/s)",
        f64::from(cases) / secs.max(1e-9)
    );
}
