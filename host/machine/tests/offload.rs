//! The offload channel (`devices/offload.rs`, `docs/parallel-builds.md`): a bare-metal guest
//! (tests/offload/channel.S) submits three requests and waits for each a different way
//! (polling, WFI without a trap, WFI with the interrupt taken). The host side answers at
//! once, after a few more run slices, or only when the machine must wait; runs translated
//! and interpreted, in slices of 1 cycle to unbounded, through a snapshot stored and loaded
//! before and after the wall. Every way must end in the same `mcycle`, state hash, console
//! and guest registers, and pass through the same state hash at every checkpoint: the guest
//! never observes when the host answered. And the default board is unchanged.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use cmbuild_machine::board::OFFLOAD_BASE;
use cmbuild_machine::devices::offload::{Answer, OffloadError};
use cmbuild_machine::machine::{
    Break, FlashConfig, Machine, MachineConfig, OffloadConfig, OffloadTransport,
};
use cmbuild_machine::snapshot::{self, SnapshotConfig};
use sha2::{Digest, Sha256};

const MIN_LATENCY: u64 = 200;

fn program() -> Option<Vec<u8>> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/offload/channel.S");
    common::build_with("channel", "offload", &[source], &[])
}

fn config(image: &[u8]) -> MachineConfig {
    MachineConfig {
        ram_length: 1 << 20,
        ram_image: Some(image.to_vec()),
        offload: Some(OffloadConfig {
            min_latency: MIN_LATENCY,
            transport: OffloadTransport::Registers,
        }),
        ..MachineConfig::default()
    }
}

/// The host's answer to request `tag`: a pure function of the request (cmbuild's: a job's
/// result, from the cache or a sibling machine), visible `(tag % 3) * (1000 + length)`
/// cycles after its earliest (without promises): request 3 (the WFI whose wake-up traps)
/// at its earliest, right after the wall, the tightest case.
fn answer_for(m: &Machine, tag: u64) -> Answer {
    let channel = m.offload().expect("a channel");
    let request = &channel.request(tag).expect("in flight").request;
    let hex: String = request.iter().map(|b| format!("{b:02x}")).collect();
    Answer {
        visible_at: channel.request(tag).unwrap().submitted_at
            + channel.min_latency()
            + (tag % 3) * (1000 + request.len() as u64),
        response: format!("answer {tag} to {hex}").into_bytes(),
        record: Sha256::digest(request).into(),
    }
}

/// When the host answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// As soon as the run loop reports it.
    AtOnce,
    /// After this many more run slices (or when the machine must wait, if earlier).
    AfterSlices(u32),
    /// Only when the machine must wait for it.
    OnWait,
    /// When the machine must wait for it, first promising it no earlier than this many
    /// cycles past the wall, again and again, while the answer is later than that (what
    /// cmbuild does while a job's sibling runs).
    Promising(u64),
}

#[derive(Debug, Clone, Copy)]
struct Policy {
    jit: bool,
    slice: u64,
    when: When,
    /// Store a snapshot at this `mcycle` and go on from the loaded copy.
    snapshot_at: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    exit: u64,
    mcycle: u64,
    hash: String,
    console: String,
    regs: [u64; 32],
    checkpoints: Vec<(u64, String)>,
    journal: [u8; 32],
    visible_at: BTreeMap<u64, u64>,
}

/// Runs the program under `p`, hashing at each of `checkpoints`; returns the outcome and
/// how many times the machine had to wait.
fn drive(image: &[u8], p: Policy, checkpoints: &[u64]) -> (Outcome, u32) {
    let cfg = config(image);
    let mut m = Machine::new(&cfg).unwrap();
    m.hart.set_jit(p.jit);
    let mut pending: Vec<(u64, u32)> = Vec::new();
    let mut visible_at = BTreeMap::new();
    let mut console = Vec::new();
    let mut hashes = Vec::new();
    let mut next_checkpoint = checkpoints.iter().copied().peekable();
    let mut snapshot_at = p.snapshot_at;
    let mut waits = 0;
    let answer = |m: &mut Machine, tag: u64, visible: &mut BTreeMap<u64, u64>| {
        let a = answer_for(m, tag);
        let at = a.visible_at;
        m.offload_answer(tag, a).unwrap();
        assert_eq!(*visible.entry(tag).or_insert(at), at);
    };
    let mut calls = 0u64;
    let exit = loop {
        calls += 1;
        assert!(
            calls < 100_000 && m.mcycle() < 1_000_000,
            "{p:?}: stuck at mcycle {}",
            m.mcycle()
        );
        let mut limit = m.mcycle().saturating_add(p.slice);
        if let Some(&c) = next_checkpoint.peek() {
            limit = limit.min(c);
        }
        if let Some(s) = snapshot_at {
            limit = limit.min(s);
        }
        let brk = m.run(limit);
        console.extend(m.drain_console());
        match brk {
            Break::Halted(code) => break code,
            Break::OffloadRequest(tag) => {
                if p.when == When::AtOnce {
                    answer(&mut m, tag, &mut visible_at);
                } else {
                    pending.push((tag, 0));
                }
            }
            Break::OffloadWaiting(tag) if matches!(p.when, When::Promising(_)) => {
                let When::Promising(step) = p.when else {
                    unreachable!()
                };
                let later = m.offload().unwrap().earliest(tag).unwrap() + step;
                if later < answer_for(&m, tag).visible_at {
                    m.offload_promise(tag, later).unwrap();
                } else {
                    waits += 1;
                    answer(&mut m, tag, &mut visible_at);
                }
            }
            Break::OffloadWaiting(tag) => {
                waits += 1;
                let i = pending.iter().position(|&(t, _)| t == tag).unwrap();
                pending.remove(i);
                answer(&mut m, tag, &mut visible_at);
            }
            Break::MaxMcycle => {
                if let When::AfterSlices(n) = p.when {
                    for (_, seen) in pending.iter_mut() {
                        *seen += 1;
                    }
                    for (tag, _) in pending.iter().filter(|&&(_, seen)| seen >= n) {
                        answer(&mut m, *tag, &mut visible_at);
                    }
                    pending.retain(|&(_, seen)| seen < n);
                }
            }
            Break::Yielded(data) => panic!("unexpected yield {data}"),
        }
        while next_checkpoint.peek() == Some(&m.mcycle()) {
            hashes.push((m.mcycle(), m.root_hash()));
            next_checkpoint.next();
        }
        if snapshot_at == Some(m.mcycle()) {
            snapshot_at = None;
            let files = snapshot::encode(&mut m, &SnapshotConfig::from_config(&cfg))
                .unwrap()
                .to_map();
            m = snapshot::load_files(&files).unwrap().machine;
            m.hart.set_jit(p.jit);
            // Answers not yet visible are the host's, not the machine's: give them again.
            pending = m.offload().unwrap().unanswered().map(|t| (t, 0)).collect();
            if p.when == When::AtOnce {
                for (tag, _) in std::mem::take(&mut pending) {
                    answer(&mut m, tag, &mut visible_at);
                }
            }
        }
    };
    let outcome = Outcome {
        exit,
        mcycle: m.mcycle(),
        hash: m.root_hash(),
        console: String::from_utf8(console).unwrap(),
        regs: m.hart.x,
        checkpoints: hashes,
        journal: m.offload().unwrap().journal(),
        visible_at,
    };
    (outcome, waits)
}

#[test]
fn the_guest_sees_each_answer_at_its_cycle_however_and_whenever_the_host_gives_it() {
    let Some(image) = program() else { return };
    let checkpoints: Vec<u64> = (1..200).map(|i| i * 61).collect();
    let reference = Policy {
        jit: true,
        slice: u64::MAX,
        when: When::AtOnce,
        snapshot_at: None,
    };
    let (expected, waits) = drive(&image, reference, &checkpoints);
    assert_eq!(waits, 0);

    // What the guest saw.
    assert_eq!(expected.exit, 0, "console: {}", expected.console);
    let x = &expected.regs;
    let (s2, s3, s4, s5, s6, s7, s9, s10, s11) = (
        x[18], x[19], x[20], x[21], x[22], x[23], x[25], x[26], x[27],
    );
    let v = &expected.visible_at;
    assert_eq!(v.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    // 1, polled: seen within a poll loop of its cycle, never before.
    assert_eq!((s3, s4), (1, v[&1]));
    assert!(
        s2 >= v[&1] && s2 < v[&1] + 8,
        "seen at {s2}, visible at {}",
        v[&1]
    );
    // 2, WFI: woken at its cycle.
    assert_eq!((s6, s7), (2, v[&2]));
    assert!(
        s5 >= v[&2] && s5 < v[&2] + 8,
        "seen at {s5}, visible at {}",
        v[&2]
    );
    // 3, WFI then the interrupt: the WFI retired (mepc follows it), the trap is at the
    // delivery cycle.
    assert_eq!(s11, 3);
    let wfi = expected_word(&image, s9 - 4);
    assert_eq!(wfi, 0x1050_0073, "mepc {s9:#x} does not follow a wfi");
    assert!(
        s10 > v[&3] && s10 < v[&3] + 16,
        "handler at {s10}, visible at {}",
        v[&3]
    );
    assert_eq!(
        expected.console,
        "answer 1 to 6a6f622d6f6e65\n\
         answer 2 to 0102030405060708090a0b0c\n\
         answer 3 to 7468726565\n"
    );
    assert!(expected.checkpoints.len() > 20);

    let mut policies = Vec::new();
    for jit in [true, false] {
        for (slice, when) in [
            (u64::MAX, When::AtOnce),
            (u64::MAX, When::OnWait),
            (50, When::AfterSlices(3)),
            (1000, When::AfterSlices(1)),
            (7, When::OnWait),
            (u64::MAX, When::Promising(97)),
            (40, When::Promising(1)),
        ] {
            policies.push(Policy {
                jit,
                slice,
                when,
                snapshot_at: None,
            });
        }
        // Mid-wait snapshots: before request 1's wall (answered or not), and past it (the
        // answer was given and is not visible yet; the loaded machine waits for it again).
        for snapshot_at in [150, 600, 2500] {
            for when in [When::AtOnce, When::OnWait, When::Promising(61)] {
                policies.push(Policy {
                    jit,
                    slice: 333,
                    when,
                    snapshot_at: Some(snapshot_at),
                });
            }
        }
    }
    policies.push(Policy {
        jit: false,
        slice: 1,
        when: When::OnWait,
        snapshot_at: None,
    });
    let mut waited = 0;
    for p in policies {
        let (outcome, waits) = drive(&image, p, &checkpoints);
        waited += waits;
        if matches!(p.when, When::OnWait | When::Promising(_)) && p.snapshot_at.is_none() {
            assert_eq!(waits, 3, "{p:?}");
        }
        if let Some(i) = (0..expected.checkpoints.len())
            .find(|&i| outcome.checkpoints.get(i) != expected.checkpoints.get(i))
        {
            panic!(
                "{p:?}: at checkpoint {:?} the state is {:?}",
                expected.checkpoints[i],
                outcome.checkpoints.get(i)
            );
        }
        assert_eq!(outcome, expected, "{p:?}");
    }
    assert!(waited > 20);
}

/// The 4-byte word of the program image at physical address `pa`.
fn expected_word(image: &[u8], pa: u64) -> u32 {
    let at = (pa - 0x8000_0000) as usize;
    u32::from_le_bytes(image[at..at + 4].try_into().unwrap())
}

#[test]
fn answers_are_checked() {
    let Some(image) = program() else { return };
    let mut m = Machine::new(&config(&image)).unwrap();
    let Break::OffloadRequest(tag) = m.run(u64::MAX) else {
        panic!("no request")
    };
    assert_eq!(tag, 1);
    let good = answer_for(&m, 1);
    let earliest = m.offload().unwrap().earliest(1).unwrap();
    assert_eq!(earliest, m.mcycle() + MIN_LATENCY);
    let early = Answer {
        visible_at: earliest - 1,
        ..good.clone()
    };
    assert_eq!(
        m.offload_answer(1, early),
        Err(OffloadError::TooEarly {
            tag: 1,
            visible_at: earliest - 1,
            earliest
        })
    );
    assert_eq!(
        m.offload_answer(9, good.clone()),
        Err(OffloadError::UnknownTag(9))
    );
    // Unanswered, the machine stops at the wall and stays there.
    assert_eq!(m.run(u64::MAX), Break::OffloadRequest(2));
    assert_eq!(m.run(u64::MAX), Break::OffloadWaiting(1));
    assert_eq!(m.mcycle(), earliest - 1);
    assert_eq!(m.run(u64::MAX), Break::OffloadWaiting(1));
    assert_eq!(m.mcycle(), earliest - 1);
    m.offload_answer(1, good.clone()).unwrap();
    assert_eq!(
        m.offload_answer(1, good.clone()),
        Err(OffloadError::AlreadyAnswered(1))
    );
    assert_eq!(m.run(u64::MAX), Break::OffloadWaiting(2));

    // The default board has no channel: nothing answers at its address.
    let mut plain = Machine::new(&MachineConfig {
        offload: None,
        ..config(&image)
    })
    .unwrap();
    assert_eq!(plain.offload_answer(1, good), Err(OffloadError::NoChannel));
    assert_eq!(plain.bus.read_mmio(OFFLOAD_BASE, 8, 0), None);
    // The program's first access to the channel faults; its handler halts with 7.
    assert_eq!(plain.run(100_000), Break::Halted(7));
}

#[test]
fn the_option_adds_its_state_and_node_and_nothing_else() {
    let image = vec![0x73, 0x00, 0x50, 0x10]; // wfi
    let with = Machine::new(&config(&image)).unwrap();
    let without = Machine::new(&MachineConfig {
        offload: None,
        ..config(&image)
    })
    .unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    with.save_state(&mut a);
    without.save_state(&mut b);
    assert!(a.len() > b.len() && a.starts_with(&b));
    let node = b"cmbuild,offload-channel-v1";
    let has = |dtb: &[u8]| dtb.windows(node.len()).any(|w| w == node);
    assert!(has(&with.bus.dtb) && !has(&without.bus.dtb));
    assert!(matches!(
        Machine::new(&MachineConfig {
            offload: Some(OffloadConfig {
                min_latency: 0,
                transport: OffloadTransport::Registers,
            }),
            ..config(&image)
        }),
        Err(cmbuild_machine::machine::MachineError::BadOffloadLatency)
    ));
}

#[test]
fn the_virtio_transport_is_a_virtio_mmio_node_and_its_own_state() {
    let image = vec![0x73, 0x00, 0x50, 0x10]; // wfi
    let virtio = |transport| {
        Machine::new(&MachineConfig {
            offload: Some(OffloadConfig {
                min_latency: MIN_LATENCY,
                transport,
            }),
            ..config(&image)
        })
        .unwrap()
    };
    let (mut v, mut r) = (
        virtio(OffloadTransport::VirtioConsole),
        virtio(OffloadTransport::Registers),
    );
    let has = |dtb: &[u8], s: &[u8]| dtb.windows(s.len()).any(|w| w == s);
    assert!(has(&v.bus.dtb, b"virtio,mmio") && !has(&v.bus.dtb, b"cmbuild,offload"));
    assert!(has(&v.bus.dtb, b"virtio_mmio@10001000"));
    assert!(has(&r.bus.dtb, b"cmbuild,offload") && !has(&r.bus.dtb, b"virtio,mmio"));
    // MagicValue, Version, DeviceID at the channel's address.
    assert_eq!(v.bus.read_mmio(OFFLOAD_BASE, 4, 0), Some(0x7472_6976));
    assert_eq!(v.bus.read_mmio(OFFLOAD_BASE + 4, 4, 0), Some(2));
    assert_eq!(v.bus.read_mmio(OFFLOAD_BASE + 8, 4, 0), Some(3));
    assert_ne!(v.root_hash(), r.root_hash());
    // The state says which transport a snapshot has.
    let files = snapshot::encode(&mut v, &SnapshotConfig::from_config(&config(&image)))
        .unwrap()
        .to_map();
    let mut loaded = snapshot::load_files(&files).unwrap().machine;
    assert!(loaded.offload().unwrap().is_virtio());
    assert_eq!(loaded.root_hash(), v.root_hash());
}

/// State hashes of the default board, pinned from `main` before the offload channel
/// existed (computed there with this very test): the option must not move them.
#[test]
fn the_default_board_hashes_are_unchanged() {
    let mut program = Vec::new();
    // li a0, 5; li t0, 0x40008000 (lui); slli a0, a0, 1; ori a0, a0, 1; sd a0, 0(t0)
    for insn in [
        0x0050_0513u32,
        0x4000_82b7,
        0x0015_1513,
        0x0015_6513,
        0x00a2_b023,
        0x0000_006f,
    ] {
        program.extend_from_slice(&insn.to_le_bytes());
    }
    let cfg = MachineConfig {
        ram_length: 1 << 20,
        ram_image: Some(program),
        bootargs: "console=ttyS0 pinned".into(),
        flash_drives: vec![FlashConfig {
            label: "d".into(),
            image: vec![3; 5000],
            shared: false,
        }],
        ..MachineConfig::default()
    };
    let mut m = Machine::new(&cfg).unwrap();
    let reset = m.root_hash();
    assert_eq!(m.run(1000), Break::Halted(5));
    let halted = m.root_hash();
    assert_eq!(
        (reset.as_str(), halted.as_str()),
        (PINNED_RESET, PINNED_HALTED),
        "the default board's state hashes moved"
    );
}

const PINNED_RESET: &str =
    "cmvm-sha256-v1:917af1587d566dbc1d1b6af9a2aca8f4e7322fc7e6581af8e4fc602dfe575afc";
const PINNED_HALTED: &str =
    "cmvm-sha256-v1:92dea93a55d107b7469595b612392ff6b23b09e19527a549d47f46605049a5b3";
