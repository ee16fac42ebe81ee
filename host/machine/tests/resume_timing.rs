//! How long loading a real template snapshot takes, phase by phase (heavy, `#[ignore]`d):
//! `CMBUILD_TEMPLATE_DIR` is the template blob unpacked (`tar -x`), `CMBUILD_ROOTFS` the
//! root image its root drive is based on.

use std::collections::BTreeMap;
use std::time::Instant;

use cmbuild_machine::snapshot::{self, HashCheck};

#[test]
#[ignore = "heavy: needs a real template (CMBUILD_TEMPLATE_DIR, CMBUILD_ROOTFS)"]
fn loading_a_template_phase_by_phase() {
    let dir = std::path::PathBuf::from(std::env::var("CMBUILD_TEMPLATE_DIR").unwrap());
    let rootfs = std::fs::read(std::env::var("CMBUILD_ROOTFS").unwrap()).unwrap();
    let t = Instant::now();
    let manifest = std::fs::read(dir.join("manifest")).unwrap();
    let m = snapshot::parse_manifest(&manifest).unwrap();
    let files: Vec<Vec<u8>> = m
        .files()
        .iter()
        .map(|f| std::fs::read(dir.join(&f.name)).unwrap())
        .collect();
    let views: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    eprintln!("read files: {:.3?}", t.elapsed());
    let t = Instant::now();
    let copy = rootfs.clone();
    eprintln!("root image copy: {:.3?}", t.elapsed());
    let t = Instant::now();
    let mut loaded =
        snapshot::load_with_bases(&m, &views, BTreeMap::from([(0, copy)]), HashCheck::Trusted)
            .unwrap();
    eprintln!("load (trusted): {:.3?}", t.elapsed());
    let t = Instant::now();
    let hash = loaded.machine.root_hash();
    eprintln!("state hash from scratch: {:.3?}", t.elapsed());
    assert_eq!(hash, loaded.root_hash);
}
