//! `cmbuild mirror pull|push` against a node that lies: a tiny HTTP server on 127.0.0.1 that
//! speaks just enough of the Kubo RPC API to send wrong bytes, short bytes, broken streams and
//! wrong CIDs. Nothing it sends may enter the mirror, and nothing it misnames may be pinned.
//!
//! `vendor_refuses_...` downloads the example project's crates from crates.io (about 75 KiB),
//! as tests/vendor.rs does; the others need no network.

mod ipfs_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cmbuild_store::cid::Cid;
use cmbuild_store::mirror::Mirror;
use ipfs_support::{cmbuild, copy_example, describe, make_mirror, varied, vendor_to_ipfs};

/// How the lying node answers `cat` for one CID.
#[derive(Clone)]
enum Cat {
    /// A well-formed answer with these bytes (right or wrong).
    Bytes(Vec<u8>),
    /// Announces `Content-Length: declared`, sends these bytes, and hangs up.
    BreaksOff { declared: usize, sent: Vec<u8> },
}

struct LyingNode {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LyingNode {
    /// Serves until dropped (or for 60 s at most): `cat` per `cats`, `add` naming every file
    /// `add_hash`, `pin/add` accepting anything.
    fn start(cats: BTreeMap<String, Cat>, add_hash: &str) -> LyingNode {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let add_hash = add_hash.to_owned();
        let thread = {
            let requests = Arc::clone(&requests);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            answer(stream, &cats, &add_hash, &requests);
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        LyingNode {
            url,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Request targets seen so far (`/api/v0/cat?arg=...`).
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for LyingNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(
    stream: TcpStream,
    cats: &BTreeMap<String, Cat>,
    add_hash: &str,
    requests: &Mutex<Vec<String>>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split(' ').nth(1).unwrap_or("").to_owned();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    // Read the whole upload, or the client sees a reset instead of the lie.
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    requests.lock().unwrap().push(target.clone());

    let arg = target
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("arg="))
        .unwrap_or("")
        .to_owned();
    let mut stream = stream;
    let (declared, sent) = if target.starts_with("/api/v0/cat?") {
        match cats.get(&arg) {
            Some(Cat::Bytes(bytes)) => (bytes.len(), bytes.clone()),
            Some(Cat::BreaksOff { declared, sent }) => (*declared, sent.clone()),
            None => {
                let body = b"{\"Message\":\"block not found\",\"Code\":0,\"Type\":\"error\"}";
                let _ = write!(
                    stream,
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(body);
                return;
            }
        }
    } else if target.starts_with("/api/v0/add?") {
        let body = format!("{{\"Name\":\"blob\",\"Hash\":\"{add_hash}\",\"Size\":\"14\"}}\n");
        (body.len(), body.into_bytes())
    } else if target.starts_with("/api/v0/pin/add?") {
        let body = format!("{{\"Pins\":[\"{arg}\"]}}");
        (body.len(), body.into_bytes())
    } else {
        (0, Vec::new())
    };
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.write_all(&sent);
}

fn blob_files(mirror: &Mirror, cids: &[Cid]) -> Vec<bool> {
    cids.iter().map(|c| mirror.blob_path(c).exists()).collect()
}

/// Everything in the blobs directory, temporary files included.
fn listing(mirror: &Mirror, cid: &Cid) -> Vec<String> {
    let dir = mirror.blob_path(cid).parent().unwrap().to_owned();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn pull_refuses_wrong_and_truncated_bytes_and_keeps_the_honest_ones() {
    let dir = tempfile::tempdir().unwrap();
    let small = b"hello cmbuild\n".to_vec();
    let big = varied(300 * 1024, 1);
    let honest = varied(1000, 2);
    let cids = make_mirror(
        dir.path(),
        &[("small", &small), ("big", &big), ("honest", &honest)],
    );
    let mirror = Mirror::open(dir.path()).unwrap();
    for cid in &cids {
        std::fs::remove_file(mirror.blob_path(cid)).unwrap();
    }
    let mut wrong = small.clone();
    wrong[0] ^= 0x20;
    let cats = BTreeMap::from([
        (cids[0].to_string(), Cat::Bytes(wrong)),
        (cids[1].to_string(), Cat::Bytes(big[..200 * 1024].to_vec())),
        (cids[2].to_string(), Cat::Bytes(honest.clone())),
    ]);
    let node = LyingNode::start(cats, "unused");

    let out = cmbuild(&[
        "mirror",
        "pull",
        "--ipfs-api",
        &node.url,
        "--mirror",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("refused {} (crate/small/1.0.0)", cids[0])),
        "{}",
        describe(&out)
    );
    assert!(
        stderr.contains(&format!("refused {} (crate/big/1.0.0)", cids[1])),
        "{}",
        describe(&out)
    );
    assert!(stderr.contains("fewer than the index says"), "{stderr}");
    assert_eq!(blob_files(&mirror, &cids), [false, false, true]);
    assert_eq!(mirror.read_verified(&cids[2]).unwrap(), honest);
    // Nothing of the refused answers is left behind, not even a temporary file.
    assert_eq!(listing(&mirror, &cids[2]), [cids[2].to_string()]);
}

#[test]
fn pull_refuses_an_answer_that_keeps_breaking_off() {
    let dir = tempfile::tempdir().unwrap();
    let data = varied(100_000, 3);
    let cids = make_mirror(dir.path(), &[("flaky", &data)]);
    let mirror = Mirror::open(dir.path()).unwrap();
    std::fs::remove_file(mirror.blob_path(&cids[0])).unwrap();
    let cats = BTreeMap::from([(
        cids[0].to_string(),
        Cat::BreaksOff {
            declared: data.len(),
            sent: data[..50_000].to_vec(),
        },
    )]);
    let node = LyingNode::start(cats, "unused");

    let out = cmbuild(&[
        "mirror",
        "pull",
        "--ipfs-api",
        &node.url,
        "--mirror",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broke off 3 times"),
        "{}",
        describe(&out)
    );
    let cats = node
        .requests()
        .iter()
        .filter(|r| r.starts_with("/api/v0/cat?"))
        .count();
    assert_eq!(cats, 3);
    assert!(!mirror.blob_path(&cids[0]).exists());
}

#[test]
fn push_refuses_a_node_that_names_blobs_differently_and_pins_nothing_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let cids = make_mirror(dir.path(), &[("hello", b"hello cmbuild\n")]);
    // A CIDv0 is what a node ignoring cid-version=1/raw-leaves would answer.
    let lie = "QmPChd2hVbrJ6bfo3WBcTW4iZnpHm8TEzWkLHmLpXhF68A";
    let node = LyingNode::start(BTreeMap::new(), lie);

    let out = cmbuild(&[
        "mirror",
        "push",
        "--ipfs-api",
        &node.url,
        "--mirror",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}: the node says {lie}", cids[0])),
        "{}",
        describe(&out)
    );
    let requests = node.requests();
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.starts_with("/api/v0/add?"))
            .count(),
        1
    );
    assert!(
        !requests.iter().any(|r| r.starts_with("/api/v0/pin/add?")),
        "{requests:?}"
    );
}

#[test]
fn push_and_pull_name_an_unreachable_node() {
    let dir = tempfile::tempdir().unwrap();
    make_mirror(dir.path(), &[("hello", b"hello cmbuild\n")]);
    // A port nobody listens on: bind one, then free it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for command in ["push", "pull"] {
        if command == "pull" {
            let mirror = Mirror::open(dir.path()).unwrap();
            let cid = mirror
                .load_index()
                .unwrap()
                .entries
                .values()
                .next()
                .unwrap()
                .cid;
            std::fs::remove_file(mirror.blob_path(&cid)).unwrap();
        }
        let out = cmbuild(&[
            "mirror",
            command,
            "--ipfs-api",
            &url,
            "--mirror",
            dir.path().to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains(&format!("cannot reach the IPFS node at {url}")),
            "{}",
            describe(&out)
        );
    }
}

#[test]
fn vendor_refuses_a_node_that_names_blobs_differently_and_pins_nothing_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let project = copy_example(dir.path());
    let mirror_dir = dir.path().join("mirror");
    let lie = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    let node = LyingNode::start(BTreeMap::new(), lie);

    let out = vendor_to_ipfs(&project, &mirror_dir, &node.url);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let mirror = Mirror::open(&mirror_dir).unwrap();
    let index = mirror.load_index().unwrap();
    assert!(!index.entries.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "names {} blob(s) differently from cmbuild",
            index.entries.len()
        )),
        "{}",
        describe(&out)
    );
    for entry in index.entries.values() {
        assert!(
            stderr.contains(&format!("{}: the node says {lie}", entry.cid)),
            "{}",
            describe(&out)
        );
    }
    let requests = node.requests();
    assert!(
        !requests.iter().any(|r| r.starts_with("/api/v0/pin/add?")),
        "{requests:?}"
    );
}
