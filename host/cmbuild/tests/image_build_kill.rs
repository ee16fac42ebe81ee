//! Fault injection for `cmbuild image build`: SIGKILL at seeded points of a real image build
//! (the ~480 MB of locked Debian packages, shared with the other heavy tests in
//! `$CMBUILD_CACHE/image-test-mirror`), then a re-run with `--check`.
//!
//! After every kill: each of the four image files is absent or whole (its CID is the pinned
//! one: a half-written file never sits under its final name), the pins file is the old one
//! or a whole new one that parses, and the next build passes `--check` and leaves no
//! temporaries behind. `CMBUILD_FAULT_POINTS` (default 3) and `CMBUILD_FAULT_SEED` as in
//! tests/fault_injection.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CMBUILD: &str = env!("CARGO_BIN_EXE_cmbuild");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("CMBUILD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/cmbuild"))
}

/// splitmix64 over `CMBUILD_FAULT_SEED`.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn image_build(mirror: &Path, out: &Path, digests: &Path, check: bool) -> Command {
    let mut cmd = Command::new(CMBUILD);
    cmd.args(["image", "build", "--mirror"])
        .arg(mirror)
        .arg("--out")
        .arg(out)
        .arg("--lock")
        .arg(repo_root().join("guest-image/lock.json"))
        .arg("--toolchains")
        .arg(repo_root().join("guest-image/toolchains.lock.json"))
        .arg("--digests")
        .arg(digests)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if check {
        cmd.arg("--check");
    }
    cmd
}

#[test]
#[ignore = "heavy: kills real guest-image builds (~480 MB of packages, minutes)"]
fn image_build_killed_at_random_points_leaves_whole_files_or_none() {
    let mirror = cache_dir().join("image-test-mirror");
    let vendored = Command::new(CMBUILD)
        .args(["vendor", "--all-toolchains", "--manifest-path"])
        .arg(repo_root().join("examples/hello/Cargo.toml"))
        .arg("--mirror")
        .arg(&mirror)
        .status()
        .unwrap();
    if !vendored.success() {
        eprintln!(
            "SKIPPED LOUDLY: `cmbuild vendor` could not fetch every pinned input; \
             if a Debian package left the archive, re-lock with `cmbuild image lock`"
        );
        return;
    }
    let pinned_text = std::fs::read_to_string(repo_root().join("digests.lock.env")).unwrap();
    let pinned = cmbuild::pins::parse(&pinned_text).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("image");
    let digests = work.path().join("digests.lock.env");
    std::fs::write(&digests, &pinned_text).unwrap();

    // How long an uninterrupted build takes here: the span the kill points are drawn from.
    let started = Instant::now();
    assert!(image_build(&mirror, &out, &digests, true)
        .status()
        .unwrap()
        .success());
    let span = started.elapsed();
    std::fs::remove_dir_all(&out).unwrap();

    let points: usize = std::env::var("CMBUILD_FAULT_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("CMBUILD_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_fa17);
    eprintln!("image build kills: CMBUILD_FAULT_SEED={seed}, {points} points over {span:?}");
    let mut state = seed;
    for i in 0..points {
        // Half the points anywhere, half in the last 40 % (where the files are written).
        let micros = span.as_micros().max(1) as u64;
        let at = if i % 2 == 0 {
            Duration::from_micros(next(&mut state) % micros)
        } else {
            span.mul_f64(0.6) + Duration::from_micros(next(&mut state) % (micros * 2 / 5).max(1))
        };
        let mut child = image_build(&mirror, &out, &digests, false).spawn().unwrap();
        let deadline = Instant::now() + at;
        let killed = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            if Instant::now() >= deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break true;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        eprintln!("point {i}: {at:?}, killed: {killed}");
        for (key, file) in cmbuild::pins::IMAGE_FILES {
            let path = out.join(file);
            if path.exists() {
                let cid = cmbuild_store::cid::cid_of_file(&path).unwrap();
                assert_eq!(
                    cid.to_string(),
                    pinned[*key],
                    "point {i}: {file} is under its final name but not whole"
                );
            }
        }
        let text = std::fs::read_to_string(&digests).unwrap();
        assert_eq!(
            cmbuild::pins::parse(&text).unwrap(),
            pinned,
            "point {i}: the pins file is neither the old one nor a whole new one"
        );
    }

    // The next build finishes, reproduces every pin and leaves no temporaries.
    assert!(image_build(&mirror, &out, &digests, true)
        .status()
        .unwrap()
        .success());
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected: Vec<String> = cmbuild::pins::IMAGE_FILES
        .iter()
        .map(|(_, f)| f.to_string())
        .collect();
    let layers = cmbuild_image::layers::shipped().unwrap();
    expected.extend(
        layers
            .toolchains
            .keys()
            .map(|id| cmbuild_image::image::layer_file_name(id)),
    );
    expected.sort();
    assert_eq!(left, expected, "temporaries left in the image directory");
    let dir_entries: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        dir_entries.is_empty(),
        "temporaries beside the pins file: {dir_entries:?}"
    );
}
