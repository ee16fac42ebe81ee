//! `cmbuild mirror export --car FILE` without a node: what the archive holds, and the mirrors
//! it must refuse to export (a corrupt blob, a blob the index names but the mirror lacks, no
//! blobs at all, no mirror). The import into a real node is in tests/ipfs_node.rs.

mod ipfs_support;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::Path;

use cmbuild_store::car::CarReader;
use cmbuild_store::cid::{self, Cid};
use cmbuild_store::mirror::Mirror;
use ipfs_support::{cmbuild, describe, make_mirror, varied};

fn export(mirror: &Path, car: &Path) -> std::process::Output {
    cmbuild(&[
        "mirror",
        "export",
        "--car",
        car.to_str().unwrap(),
        "--mirror",
        mirror.to_str().unwrap(),
    ])
}

fn blocks_of(data: &[u8]) -> BTreeSet<Cid> {
    let mut blocks = BTreeSet::new();
    cid::for_each_block(data, |block| {
        blocks.insert(block.cid);
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap();
    blocks
}

#[test]
fn export_holds_every_block_of_every_blob_once_with_sorted_roots() {
    let dir = tempfile::tempdir().unwrap();
    let big = varied(600 * 1024, 11);
    // Shares its first two chunks with `big`: those leaves must appear once in the CAR.
    let sibling = [&big[..2 * cid::CHUNK_SIZE], b"tail".as_slice()].concat();
    let blobs: [(&str, &[u8]); 4] = [
        ("big", &big),
        ("sibling", &sibling),
        ("hello", b"hello cmbuild\n"),
        ("empty", b""),
    ];
    let cids = make_mirror(dir.path(), &blobs);
    let car = dir.path().join("out.car");

    let out = export(dir.path(), &car);
    assert!(out.status.success(), "{}", describe(&out));

    let mut reader = CarReader::new(File::open(&car).unwrap()).unwrap();
    let mut sorted: Vec<String> = cids.iter().map(Cid::to_string).collect();
    sorted.sort();
    let roots: Vec<String> = reader.roots().iter().map(Cid::to_string).collect();
    assert_eq!(roots, sorted);

    // Every block verifies (the reader rehashes), none repeats, and together they are
    // exactly the blocks of the four DAGs.
    let mut seen = Vec::new();
    while let Some((cid, _)) = reader.next_block().unwrap() {
        seen.push(cid);
    }
    let distinct: BTreeSet<Cid> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), seen.len(), "a block was written twice");
    let expected: BTreeSet<Cid> = blobs.iter().flat_map(|(_, b)| blocks_of(b)).collect();
    assert_eq!(distinct, expected);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(&format!("4 roots, {} blocks", expected.len())),
        "{summary}"
    );
}

#[test]
fn export_refuses_a_corrupt_blob_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let cids = make_mirror(dir.path(), &[("a", b"first blob"), ("b", b"second blob")]);
    let mirror = Mirror::open(dir.path()).unwrap();
    fs::write(mirror.blob_path(&cids[1]), b"second blob, altered").unwrap();
    let car = dir.path().join("out.car");

    let out = export(dir.path(), &car);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match its CID"),
        "{}",
        describe(&out)
    );
    assert!(!car.exists());
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("out.car"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn export_refuses_a_mirror_that_lacks_an_indexed_blob() {
    let dir = tempfile::tempdir().unwrap();
    let cids = make_mirror(dir.path(), &[("a", b"first blob"), ("b", b"second blob")]);
    let mirror = Mirror::open(dir.path()).unwrap();
    fs::remove_file(mirror.blob_path(&cids[0])).unwrap();
    let car = dir.path().join("out.car");

    let out = export(dir.path(), &car);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} (crate/a/1.0.0)", cids[0])),
        "{stderr}"
    );
    assert!(stderr.contains("cmbuild mirror pull"), "{stderr}");
    assert!(!car.exists());
}

#[test]
fn export_refuses_an_empty_or_missing_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let car = dir.path().join("out.car");
    let missing = dir.path().join("no-such-mirror");
    let out = export(&missing, &car);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mirror at"));
    assert!(!missing.exists(), "a mistyped --mirror must not be created");

    let empty = dir.path().join("empty");
    Mirror::open(&empty).unwrap();
    let out = export(&empty, &car);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no blobs"));
    assert!(!car.exists());
}
