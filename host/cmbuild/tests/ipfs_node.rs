//! The mirror against a real IPFS node: npm `ipfs@0.66.1` (js-ipfs) on 127.0.0.1, offline,
//! started by `scripts/ipfs-node/start` with a fresh repository for each test and stopped at
//! the end of it, failed or not.
//!
//! Ignored by default: the first run installs the node with npm (a few minutes), and each
//! node takes seconds to start. Run them with
//! `cargo test -p cmbuild --test ipfs_node -- --ignored --test-threads=1`
//! (the node is installed under `$CMBUILD_CACHE/ipfs-node`, default ~/.cache/cmbuild).
//! `vendor_pushes_...` also downloads the example project's crates from crates.io.

mod ipfs_support;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cmbuild_store::car::CarReader;
use cmbuild_store::cid::{self, Cid, Codec};
use cmbuild_store::kubo::Kubo;
use cmbuild_store::mirror::Mirror;
use ipfs_support::{cmbuild, copy_example, describe, make_mirror, varied, vendor_to_ipfs};

/// Time for a first run to install the node with npm, then start it.
const START_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A running test node; dropping it stops the node and removes its repository.
struct Node {
    api: String,
    child: Child,
    stdin: Option<ChildStdin>,
    _repo: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        let repo = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ipfs-node/start");
        let mut child = Command::new("bash")
            .arg(&script)
            .arg(repo.path().join("ipfs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bash runs scripts/ipfs-node/start");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(api) = line.strip_prefix("cmbuild-ipfs-node: api=") {
                    let _ = tx.send(api.to_owned());
                }
            }
        });
        // Built before waiting so that a node that never answers is still stopped.
        let mut node = Node {
            api: String::new(),
            child,
            stdin,
            _repo: repo,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(api) => node.api = api,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "the IPFS test node exited before its API answered (its stderr is above; \
                 it needs node and npm, and the npm registry on first use)"
            ),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "the IPFS test node did not start within {START_TIMEOUT:?} (see its stderr above)"
            ),
        }
        node
    }

    fn kubo(&self) -> Kubo {
        Kubo::new(&self.api).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Closing stdin asks start.mjs to stop cleanly; kill it if it takes too long.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn blobs() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("hello", b"hello cmbuild\n".to_vec()),
        ("empty", Vec::new()),
        // Three chunks: a dag-pb root over three raw leaves.
        ("big", varied(700 * 1024, 7)),
        // Exactly one chunk: still a single raw leaf.
        ("chunk", varied(cid::CHUNK_SIZE, 8)),
    ]
}

fn mirror_arg(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

#[test]
#[ignore = "starts a real IPFS node (npm ipfs@0.66.1); run with --ignored"]
fn push_delete_pull_gives_back_the_same_bytes_and_cids() {
    let node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let blobs = blobs();
    let named: Vec<(&str, &[u8])> = blobs.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let cids = make_mirror(dir.path(), &named);
    assert_eq!(cids[2].codec(), Codec::DagPb);

    let out = cmbuild(&[
        "mirror",
        "push",
        "--ipfs-api",
        &node.api,
        "--mirror",
        mirror_arg(dir.path()),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pushed 4 blobs"),
        "{}",
        describe(&out)
    );

    // The node now serves every blob under cmbuild's CID.
    let kubo = node.kubo();
    for (cid, (_, bytes)) in cids.iter().zip(&blobs) {
        assert_eq!(&kubo.cat(cid, 1 << 30).unwrap(), bytes, "cat {cid}");
    }

    let mirror = Mirror::open(dir.path()).unwrap();
    for cid in &cids {
        std::fs::remove_file(mirror.blob_path(cid)).unwrap();
    }
    let out = cmbuild(&[
        "mirror",
        "pull",
        "--ipfs-api",
        &node.api,
        "--mirror",
        mirror_arg(dir.path()),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pulled 4 blobs"),
        "{}",
        describe(&out)
    );
    for (cid, (_, bytes)) in cids.iter().zip(&blobs) {
        assert_eq!(&std::fs::read(mirror.blob_path(cid)).unwrap(), bytes);
        assert_eq!(cid::cid_of_file(&mirror.blob_path(cid)).unwrap(), *cid);
    }

    // A second pull finds nothing to do.
    let out = cmbuild(&[
        "mirror",
        "pull",
        "--ipfs-api",
        &node.api,
        "--mirror",
        mirror_arg(dir.path()),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pulled 0 blobs (0 bytes)"),
        "{}",
        describe(&out)
    );
}

#[test]
#[ignore = "starts a real IPFS node (npm ipfs@0.66.1); run with --ignored"]
fn car_export_imports_into_a_fresh_node_with_the_same_roots_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = blobs();
    let named: Vec<(&str, &[u8])> = blobs.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let cids = make_mirror(dir.path(), &named);
    let car: PathBuf = dir.path().join("mirror.car");

    let out = cmbuild(&[
        "mirror",
        "export",
        "--car",
        car.to_str().unwrap(),
        "--mirror",
        mirror_arg(dir.path()),
    ]);
    assert!(out.status.success(), "{}", describe(&out));

    // Roots: the blob CIDs sorted as text.
    let mut expected_roots: Vec<String> = cids.iter().map(Cid::to_string).collect();
    expected_roots.sort();
    let reader = CarReader::new(File::open(&car).unwrap()).unwrap();
    let roots: Vec<String> = reader.roots().iter().map(Cid::to_string).collect();
    assert_eq!(roots, expected_roots);

    // A node that has never seen these blobs learns them from the CAR alone.
    let node = Node::start();
    let kubo = node.kubo();
    let imported = kubo.dag_import(&car).unwrap();
    let imported_roots: BTreeSet<String> = imported.iter().map(|r| r.cid.clone()).collect();
    assert_eq!(
        imported_roots,
        expected_roots.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert!(
        imported.iter().all(|r| r.pin_error.is_empty()),
        "{imported:?}"
    );
    for (cid, (_, bytes)) in cids.iter().zip(&blobs) {
        assert_eq!(&kubo.cat(cid, 1 << 30).unwrap(), bytes, "cat {cid}");
    }

    // And the node's own export of the multi-block blob holds exactly the blocks ours does.
    let exported = dir.path().join("node.car");
    let mut file = File::create(&exported).unwrap();
    kubo.dag_export(&cids[2], &mut file).unwrap();
    let node_car = CarReader::new(File::open(&exported).unwrap()).unwrap();
    assert_eq!(node_car.roots(), &[cids[2]]);
    let node_blocks: BTreeSet<Cid> = node_car.map(|b| b.unwrap().0).collect();
    let mut ours = BTreeSet::new();
    cid::for_each_block(&blobs[2].1[..], |block| {
        ours.insert(block.cid);
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap();
    assert_eq!(node_blocks, ours);
    assert_eq!(ours.len(), 4);
    // block/get serves the root node byte for byte as cmbuild encodes it.
    let root_block = kubo.block_get(&cids[2]).unwrap();
    assert_eq!(Cid::hash_block(Codec::DagPb, &root_block), cids[2]);
}

#[test]
#[ignore = "starts a real IPFS node (npm ipfs@0.66.1); run with --ignored"]
fn vendor_pushes_and_pins_every_blob_under_cmbuilds_cid() {
    let node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let project = copy_example(dir.path());
    let mirror_dir = dir.path().join("mirror");

    let out = vendor_to_ipfs(&project, &mirror_dir, &node.api);
    assert!(out.status.success(), "{}", describe(&out));
    let mirror = Mirror::open(&mirror_dir).unwrap();
    let index = mirror.load_index().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("pushed {} blobs", index.entries.len())),
        "{}",
        describe(&out)
    );
    let kubo = node.kubo();
    for (key, entry) in &index.entries {
        let bytes = mirror.read_verified(&entry.cid).unwrap();
        assert_eq!(kubo.cat(&entry.cid, 1 << 30).unwrap(), bytes, "{key}");
    }
}
