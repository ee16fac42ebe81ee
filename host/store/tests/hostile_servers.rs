//! Downloads and Kubo RPC calls against servers that lie: an endless body, a slow trickle, a
//! body one byte over the cap, wrong bytes. Each is a tiny HTTP server on 127.0.0.1 (port
//! chosen by the system) that serves a bounded number of connections and stops by itself
//! (at most 30 s, at most 64 MiB sent per connection). Expected every time: a clear error
//! within the caps and time limits, and nothing staged or stored in the mirror.

use std::path::Path;
use std::time::{Duration, Instant};

use cmbuild_store::cid::cid_of_bytes;
use cmbuild_store::download::{DownloadError, Downloader};
use cmbuild_store::kubo::{Kubo, KuboError, Options};
use cmbuild_store::mirror::Mirror;
use cmbuild_store::sha256::Sha256;

#[path = "support/hostile_http.rs"]
mod hostile_http;
use hostile_http::{serve, Body};

/// Every file in the mirror's blob directory, temporaries included.
fn staged(mirror: &Mirror) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(mirror.root().join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mirror_in(dir: &Path) -> Mirror {
    Mirror::open(dir).unwrap()
}

fn downloader() -> Downloader {
    Downloader::new()
        .with_retries(1, Duration::ZERO)
        .with_deadline(Duration::from_secs(2), Duration::from_secs(1))
        .with_max_size(1 << 20)
}

#[test]
fn an_endless_body_is_cut_one_byte_past_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = mirror_in(dir.path());
    let url = serve(Body::Endless, 2);
    let started = Instant::now();
    // No size pinned (a crate): the downloader's own cap applies.
    let err = downloader()
        .fetch_to_mirror(&url, &Sha256::default(), None, &mirror, &mut |_, _| {})
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::TooLarge { limit, .. } if limit == 1 << 20),
        "{err}"
    );
    // A pinned size is the cap.
    let err = downloader()
        .fetch_to_mirror(
            &url,
            &Sha256::default(),
            Some(1000),
            &mirror,
            &mut |_, _| {},
        )
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::TooLarge { limit: 1000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was stored"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(staged(&mirror), Vec::<String>::new());
}

#[test]
fn a_body_one_byte_over_the_pinned_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = mirror_in(dir.path());
    let good = b"exactly these bytes".to_vec();
    let sha = Sha256::of(&good);
    let size = Some(good.len() as u64);
    let mut over = good.clone();
    over.push(b'!');
    for announce in [true, false] {
        let url = serve(
            Body::Exact {
                bytes: over.clone(),
                announce,
            },
            1,
        );
        let err = downloader()
            .fetch_to_mirror(&url, &sha, size, &mirror, &mut |_, _| {})
            .unwrap_err();
        assert!(
            matches!(err, DownloadError::TooLarge { limit: 19, .. }),
            "announce {announce}: {err}"
        );
        assert_eq!(staged(&mirror), Vec::<String>::new());
    }
    // The same server with the right bytes: stored.
    let url = serve(
        Body::Exact {
            bytes: good.clone(),
            announce: false,
        },
        1,
    );
    let stored = downloader()
        .fetch_to_mirror(&url, &sha, size, &mirror, &mut |_, _| {})
        .unwrap();
    assert_eq!(stored.cid, cid_of_bytes(&good));
    assert_eq!(staged(&mirror), vec![stored.cid.to_string()]);
}

#[test]
fn a_slow_trickle_hits_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = mirror_in(dir.path());
    let url = serve(Body::Trickle, 1);
    let started = Instant::now();
    let err = downloader()
        .fetch_to_mirror(&url, &Sha256::default(), None, &mirror, &mut |_, _| {})
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            DownloadError::Body { .. } | DownloadError::Network { .. }
        ),
        "{err}"
    );
    // Bytes kept coming every 50 ms, so only the overall deadline (2 s) can stop it.
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(staged(&mirror), Vec::<String>::new());
}

#[test]
fn wrong_bytes_are_refused_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = mirror_in(dir.path());
    let url = serve(
        Body::Exact {
            bytes: b"doctored".to_vec(),
            announce: true,
        },
        1,
    );
    let pinned = Sha256::of(b"original");
    let err = downloader()
        .fetch_to_mirror(&url, &pinned, Some(8), &mirror, &mut |_, _| {})
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::Mismatch { expected, .. } if expected == pinned),
        "{err}"
    );
    assert_eq!(staged(&mirror), Vec::<String>::new());
}

fn kubo(url: &str) -> Kubo {
    let options = Options {
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(1),
        deadline: Duration::from_secs(2),
        attempts: 1,
        retry_pause: Duration::ZERO,
        ..Options::default()
    };
    Kubo::with_options(url, options).unwrap()
}

#[test]
fn a_kubo_node_sending_without_end_or_too_much_is_cut_at_the_cap() {
    let cid = cid_of_bytes(b"block");
    let started = Instant::now();
    let err = kubo(&serve(Body::Endless, 1)).block_get(&cid).unwrap_err();
    assert!(matches!(err, KuboError::TooLarge { .. }), "{err}");
    let err = kubo(&serve(Body::Endless, 1)).cat(&cid, 4096).unwrap_err();
    assert!(
        matches!(err, KuboError::TooLarge { limit: 4096, .. }),
        "{err}"
    );
    let over = Body::Exact {
        bytes: vec![0; 4097],
        announce: false,
    };
    let err = kubo(&serve(over, 1)).cat(&cid, 4096).unwrap_err();
    assert!(matches!(err, KuboError::TooLarge { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_kubo_node_that_trickles_hits_the_deadline() {
    let started = Instant::now();
    let err = kubo(&serve(Body::Trickle, 1))
        .cat(&cid_of_bytes(b"x"), 1 << 20)
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, KuboError::Read { .. } | KuboError::Unreachable { .. }),
        "{err:?}"
    );
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
}
