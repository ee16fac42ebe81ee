//! The offload channel's virtio-console transport driven by Debian's stock kernel: the
//! initramfs of `scripts/boot-test-inputs` (`BOOT_TEST_INITRAMFS_OFFLOAD`) loads
//! `virtio_mmio`, waits for `/dev/vport0p1` and its name, writes the frame `tag 7,
//! length 5, "hello"` to the port, reads the answer frame back, prints it and powers off.
//! The host answers with [`Machine::offload_answer`] some cycles after the earliest.
//!
//! Every way of running must end in the same console, `mcycle`, state hash and journal:
//! translated or interpreted, answering as soon as the request is reported or only when
//! the machine must wait, and through a snapshot stored and loaded mid-run (at the wall,
//! before the answer; and between the answer and its cycle, when the answer is not
//! state and the host gives it again).
//!
//! Each boot runs about 1.9e9 cycles; the whole test takes a few minutes on a busy
//! 2-core host, so it is `#[ignore]`d: `cargo test -p cmbuild-machine --test
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
        response: format!("answer {tag} to {}", String::from_utf8_lossy(request)).into_bytes(),
        record: Sha256::digest(request).into(),
    }
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
    let started = std::time::Instant::now();
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
                if snapshot == Snapshot::AfterAnswer {
                    snapshot = Snapshot::None;
                    m = reload(m, cfg, p.jit);
                    // The answer was not state: give it again.
                    let tags: Vec<u64> = m.offload().unwrap().unanswered().collect();
                    assert_eq!(tags, [tag]);
                    let a = answer_for(&m, tag);
                    m.offload_answer(tag, a).unwrap();
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
    eprintln!(
        "{p:?}: {brk:?} at mcycle {} in {:.1} s",
        m.mcycle(),
        started.elapsed().as_secs_f64()
    );
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
#[ignore = "boots Linux five times (minutes); run with --ignored"]
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
    for marker in [
        "cmbuild-offload-test: init reached",
        "cmbuild-offload-test: port vport0p1 named cmbuild.offload",
        "cmbuild-offload-test: frame sent",
        "cmbuild-offload-test: answer tag 7 length 17: answer 7 to hello",
        "reboot: Power down",
    ] {
        assert!(
            text.contains(marker),
            "missing {marker:?}; console tail:\n{tail}"
        );
    }
    assert!(!text.contains("failed"), "console tail:\n{tail}");
    assert_eq!(reference.requests.len(), 1);
    assert_eq!(reference.requests[0].0, 7);
    assert_eq!(reference.requests[0].2, b"hello");
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
    ] {
        let outcome = drive(&cfg, policy);
        assert_eq!(outcome, reference, "{policy:?}");
    }
    eprintln!(
        "booted, talked and powered off in {} cycles, {}",
        reference.mcycle, reference.hash
    );
}
