//! `cmbuild image lock`'s archive fetcher against a lying server on 127.0.0.1: an endless
//! body, a body one byte over the size InRelease gives, a slow trickle. Each ends in a clear
//! error within the cap and the deadline; nothing unbounded is read into memory.

#[path = "../../store/tests/support/hostile_http.rs"]
mod hostile_http;

use std::time::{Duration, Instant};

use cmbuild_image::http::{HttpArchive, HttpError, MAX_UNSIZED};
use cmbuild_image::locking::Archive;
use cmbuild_store::sha256::Sha256;
use hostile_http::{serve, Body};

fn archive(url: &str) -> HttpArchive {
    HttpArchive::new(url, None).with_timeouts(Duration::from_secs(1), Duration::from_secs(2), 1)
}

fn http_error<'a>(err: &'a (dyn std::error::Error + Send + Sync + 'static)) -> &'a HttpError {
    err.downcast_ref::<HttpError>().expect("an HttpError")
}

#[test]
fn an_endless_index_is_cut_at_the_cap() {
    let url = serve(Body::Endless, 2);
    let started = Instant::now();
    // InRelease has no pinned size: the fixed cap applies.
    let err = archive(&url)
        .fetch("dists/trixie/InRelease", None, None)
        .unwrap_err();
    assert!(
        matches!(http_error(&*err), HttpError::TooLarge { limit, .. } if *limit == MAX_UNSIZED),
        "{err}"
    );
    // An index whose size InRelease gives: that size is the cap.
    let sha = Sha256::default();
    let err = archive(&url)
        .fetch(
            "dists/trixie/main/binary-riscv64/Packages.gz",
            Some(&sha),
            Some(100),
        )
        .unwrap_err();
    assert!(
        matches!(http_error(&*err), HttpError::TooLarge { limit: 100, .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn one_byte_over_the_pinned_size_is_refused_and_the_size_itself_is_not() {
    for announce in [true, false] {
        let url = serve(
            Body::Exact {
                bytes: vec![7; 101],
                announce,
            },
            1,
        );
        let err = archive(&url)
            .fetch("pool/x.deb", None, Some(100))
            .unwrap_err();
        assert!(
            matches!(http_error(&*err), HttpError::TooLarge { limit: 100, .. }),
            "{err}"
        );
    }
    let url = serve(
        Body::Exact {
            bytes: vec![7; 100],
            announce: false,
        },
        1,
    );
    assert_eq!(
        archive(&url).fetch("pool/x.deb", None, Some(100)).unwrap(),
        vec![7; 100]
    );
}

#[test]
fn a_slow_trickle_hits_the_deadline() {
    let url = serve(Body::Trickle, 1);
    let started = Instant::now();
    let err = archive(&url)
        .fetch("dists/trixie/InRelease", None, None)
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            http_error(&*err),
            HttpError::Body { .. } | HttpError::Request { .. }
        ),
        "{err}"
    );
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
}
