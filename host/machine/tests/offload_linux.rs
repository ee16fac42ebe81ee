//! The offload channel's virtio-console transport driven by Debian's stock kernel: the
//! initramfs of `scripts/boot-test-inputs` (`BOOT_TEST_INITRAMFS_OFFLOAD`) loads
//! `virtio_mmio`, waits for `/dev/vport0p1` and its name, writes the frames `tag 7,
//! length 5, "hello"`, `tag 8, ..."world"` and `tag 9, ..."large"` to the port in one
//! write, reads the answer frames back (the second spans three receive buffers, the third
//! is 1 MiB, read in 4 KiB blocks), prints them (the last as its SHA-256) and powers off.
//! The host answers with [`Machine::offload_answer`] some cycles after the earliest.
//!
//! Every way of running must end in the same console, `mcycle`, state hash and journal:
//! translated or interpreted, answering as soon as the request is reported or only when
//! the machine must wait, and through a snapshot stored and loaded mid-run (at the wall,
//! before the answer; and between the answer and its cycle, when the answer is not
//! state and the host gives it again).
//!
//! Each boot runs about 1.4e9 cycles; the six take 65 s on an idle 2-core host (the
//! interpreted ones most of it) and minutes on a busy one, so the test is `#[ignore]`d: `cargo test -p cmbuild-machine --test
//! offload_linux -- --ignored`.

mod common;

use cmbuild_machine::devices::offload::Answer;
use cmbuild_machine::machine::{Break, Machine, MachineConfig, OffloadConfig, OffloadTransport};
use cmbuild_machine::snapshot::{self, SnapshotConfig};
use sha2::{Digest, Sha256};

const MAX_MCYCLE: u64 = 8_000_000_000;
const MIN_LATENCY: u64 = 1 << 20;
/// How long after its earliest cycle the host's answer becomes visible: none, the tightest
/// case (right after the wall, where the guest sleeps in WFI).
const DELAY: u64 = 0;

fn config() -> MachineConfig {
    let inputs = common::fetch_boot_inputs()
        .unwrap_or_else(|e| panic!("scripts/boot-test-inputs failed:\n{e}"));
    let mut config = common::linux_boot_config(&inputs);
    let path = &inputs["BOOT_TEST_INITRAMFS_OFFLOAD"];
    config.initrd = Some(std::fs::read(path).unwrap_or_else(|e| panic!("{path:?}: {e}")));
    config.flash_drives.clear();
    config.offload = Some(OffloadConfig {
        min_latency: MIN_LATENCY,
        transport: OffloadTransport::VirtioConsole,
    });
    config
}

fn answer_for(m: &Machine, tag: u64) -> Answer {
    let channel = m.offload().expect("a channel");
    let request = &channel.request(tag).expect("in flight").request;
    Answer {
        visible_at: channel.earliest(tag).unwrap() + DELAY,
        response: response(tag, request),
        record: Sha256::digest(request).into(),
    }
}

/// The length of the answer to tag 9.
const LARGE: usize = 1 << 20;

/// The answer's bytes: a line naming the request; for tag 8 a tail of 10000 bytes, so that
/// the frame spans three of Linux's 4 KiB receive buffers; tag 9's is 1 MiB (more than the
/// 128 receive buffers the driver posts at once).
fn response(tag: u64, request: &[u8]) -> Vec<u8> {
    let mut r = format!("answer {tag} to {}\n", String::from_utf8_lossy(request)).into_bytes();
    if tag == 8 {
        r.extend((0..10_000u32).map(|i| (i * 7 % 251) as u8));
    }
    if tag == 9 {
        r.resize(LARGE, 0);
        for (i, b) in r.iter_mut().enumerate().skip(32) {
            *b = (i % 253) as u8;
        }
    }
    r
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Snapshot {
    None,
    /// When the machine waits at the wall, before the host answers.
    AtWall,
    /// After the request is reported and answered, long before the answer is visible.
    AfterAnswer,
}

#[derive(Debug, Clone, Copy)]
struct Policy {
    jit: bool,
    at_once: bool,
    snapshot: Snapshot,
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    brk: Break,
    mcycle: u64,
    hash: String,
    console: String,
    journal: [u8; 32],
    requests: Vec<(u64, u64, Vec<u8>)>,
}

fn reload(m: Machine, cfg: &MachineConfig, jit: bool) -> Machine {
    let mut m = m;
    let files = snapshot::encode(&mut m, &SnapshotConfig::from_config(cfg))
        .unwrap()
        .to_map();
    let mut loaded = snapshot::load_files(&files).unwrap().machine;
    loaded.hart.set_jit(jit);
    assert_eq!(loaded.root_hash(), m.root_hash());
    loaded
}

fn drive(cfg: &MachineConfig, p: Policy) -> Outcome {
    let mut m = Machine::new(cfg).unwrap();
    m.hart.set_jit(p.jit);
    let mut console = Vec::new();
    let mut requests = Vec::new();
    let mut snapshot = p.snapshot;
    let brk = loop {
        let brk = m.run(MAX_MCYCLE);
        console.extend(m.drain_console());
        match brk {
            Break::OffloadRequest(tag) => {
                let r = m.offload().unwrap().request(tag).unwrap();
                requests.push((tag, r.submitted_at, r.request.clone()));
                if p.at_once {
                    let a = answer_for(&m, tag);
                    m.offload_answer(tag, a).unwrap();
                }
                if snapshot == Snapshot::AfterAnswer && tag == 9 {
                    snapshot = Snapshot::None;
                    m = reload(m, cfg, p.jit);
                    // The answers were not state: give them again.
                    let tags: Vec<u64> = m.offload().unwrap().unanswered().collect();
                    assert_eq!(tags, [7, 8, 9]);
                    for tag in tags {
                        let a = answer_for(&m, tag);
                        m.offload_answer(tag, a).unwrap();
                    }
                }
            }
            Break::OffloadWaiting(tag) => {
                assert!(!p.at_once, "{p:?}: waited for an answer given at once");
                if snapshot == Snapshot::AtWall {
                    snapshot = Snapshot::None;
                    m = reload(m, cfg, p.jit);
                }
                let a = answer_for(&m, tag);
                m.offload_answer(tag, a).unwrap();
            }
            other => break other,
        }
    };
    eprintln!("{p:?}: {brk:?} at mcycle {}", m.mcycle());
    Outcome {
        brk,
        mcycle: m.mcycle(),
        hash: m.root_hash(),
        console: String::from_utf8_lossy(&console).into_owned(),
        journal: m.offload().unwrap().journal(),
        requests,
    }
}

#[test]
#[ignore = "boots Linux six times (minutes); run with --ignored"]
fn linux_talks_to_the_host_through_the_virtio_console_deterministically() {
    let cfg = config();
    let reference = drive(
        &cfg,
        Policy {
            jit: true,
            at_once: true,
            snapshot: Snapshot::None,
        },
    );
    let text = &reference.console;
    let tail: String = text
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(reference.brk, Break::Halted(0), "console tail:\n{tail}");
    let big = response(8, b"world");
    let hex = |bytes: &[u8]| -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let big_hex = hex(&big);
    for marker in [
        "cmbuild-offload-test: init reached".to_owned(),
        "cmbuild-offload-test: port vport0p1 named cmbuild.offload".to_owned(),
        "cmbuild-offload-test: frames sent".to_owned(),
        "cmbuild-offload-test: answer tag 7 length 18: answer 7 to hello".to_owned(),
        format!(
            "cmbuild-offload-test: answer tag 8 length {}: answer 8 to world",
            big.len()
        ),
        format!("cmbuild-offload-test: answer sha256 {big_hex}"),
        format!(
            "cmbuild-offload-test: large answer length {LARGE} sha256 {}",
            hex(&response(9, b"large"))
        ),
        "reboot: Power down".to_owned(),
    ] {
        assert!(
            text.contains(&marker),
            "missing {marker:?}; console tail:\n{tail}"
        );
    }
    assert!(!text.contains("failed"), "console tail:\n{tail}");
    // No oops, no warning from the drivers.
    for bad in ["Call Trace", "WARNING", "virtio_mmio: probe", "Error"] {
        assert!(!text.contains(bad), "{bad:?} in the console:\n{text}");
    }
    for line in text
        .lines()
        .filter(|l| l.contains("virtio") || l.contains("vport") || l.contains("uptime"))
    {
        eprintln!("guest: {line}");
    }
    // The frames went in one write, so one QueueNotify submitted them all.
    let r = &reference.requests;
    assert_eq!(r.len(), 3);
    assert_eq!((r[0].0, r[0].2.as_slice()), (7, &b"hello"[..]));
    assert_eq!((r[1].0, r[1].2.as_slice()), (8, &b"world"[..]));
    assert_eq!((r[2].0, r[2].2.as_slice()), (9, &b"large"[..]));
    assert!(r.iter().all(|x| x.1 == r[0].1));
    assert_ne!(reference.journal, [0; 32]);

    for policy in [
        Policy {
            jit: false,
            at_once: true,
            snapshot: Snapshot::None,
        },
        Policy {
            jit: true,
            at_once: false,
            snapshot: Snapshot::None,
        },
        Policy {
            jit: true,
            at_once: false,
            snapshot: Snapshot::AtWall,
        },
        Policy {
            jit: true,
            at_once: true,
            snapshot: Snapshot::AfterAnswer,
        },
        Policy {
            jit: false,
            at_once: false,
            snapshot: Snapshot::AtWall,
        },
    ] {
        let outcome = drive(&cfg, policy);
        assert_eq!(outcome, reference, "{policy:?}");
    }
    eprintln!(
        "booted, talked and powered off in {} cycles, {}",
        reference.mcycle, reference.hash
    );
}
