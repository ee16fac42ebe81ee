//! The console against the timer, instruction by instruction: `isa/uart_sweep.c` models
//! Linux's 8250 console path (a tty writer that sleeps when its ring is full, the
//! THRE-driven interrupt loop through the PLIC, and printk's `console_write` from a
//! periodic timer interrupt) and is started at every offset of a window of instructions,
//! so that the timer lands on every instruction of the driver. Each run must halt (a lost
//! THRE interrupt leaves the writer asleep until the mcycle limit), hand every byte to the
//! UART exactly once and in order, and give the same mcycle, console and state hash
//! translated and interpreted. It runs twice: the driver in M-mode, and in S-mode as Linux
//! runs it (PLIC context 1, a supervisor timer raised by an M-mode handler the way
//! OpenSBI does, so that M-mode traps also land between the driver's instructions).
//!
//! The default run sweeps 1024 offsets; the heavy run (`--ignored`) 9000, which covers
//! every phase of a timer tick (8192 cycles). `CMBUILD_UART_SWEEP` overrides either.

mod common;

use cmbuild_machine::machine::{Break, Machine, MachineConfig};

const PARAM: u64 = 0xf_0000;
const LIMIT: u64 = 20_000_000;
const TOTAL: usize = 600;

fn run(config: &MachineConfig, offset: u64, jit: bool) -> (Break, Vec<u8>, u64, String) {
    let mut m = Machine::new(config).unwrap();
    assert!(m.bus.ram.write_bytes(PARAM, &offset.to_le_bytes()));
    m.hart.set_jit(jit);
    let brk = m.run(LIMIT);
    let console = m.drain_console();
    (brk, console, m.mcycle(), m.root_hash())
}

#[test]
fn console_bursts_against_timer_interrupts_at_every_offset_m_mode() {
    sweep("uart_sweep", &[], 1024);
}

#[test]
fn console_bursts_against_timer_interrupts_at_every_offset_s_mode() {
    sweep("uart_sweep_s", &["-DSMODE".to_string()], 1024);
}

#[test]
#[ignore = "heavy: every phase of a timer tick, both modes (a few minutes)"]
fn console_bursts_against_timer_interrupts_over_a_whole_tick() {
    sweep("uart_sweep", &[], 9000);
    sweep("uart_sweep_s", &["-DSMODE".to_string()], 9000);
}

fn sweep(name: &str, defines: &[String], default_window: u64) {
    let sources = ["crt0.S", "uart_sweep.c"].map(|s| common::isa_dir().join(s));
    let Some(image) = common::build_with(name, "isa", &sources, defines) else {
        return;
    };
    let config = MachineConfig {
        ram_length: 1 << 20,
        ram_image: Some(image),
        ..MachineConfig::default()
    };
    let expected: Vec<u8> = (0..TOTAL).map(|i| b'a' + (i % 26) as u8).collect();
    let window: u64 = std::env::var("CMBUILD_UART_SWEEP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_window)
        .min(9000);
    let mut ticks_seen = 0usize;
    for offset in 0..window {
        let (brk, console, mcycle, hash) = run(&config, offset, true);
        let text = String::from_utf8_lossy(&console);
        assert_eq!(
            brk,
            Break::Halted(0),
            "offset {offset}: the program did not finish (a lost THRE interrupt?) at mcycle {mcycle}; console tail: {:?}",
            &text[text.len().saturating_sub(80)..]
        );
        let ticks = text.matches("<t>").count();
        assert!(
            ticks > 0,
            "offset {offset}: no timer interrupt met the burst"
        );
        ticks_seen += ticks;
        let data = text.replace("<t>", "");
        assert_eq!(
            data.as_bytes(),
            &expected[..],
            "offset {offset}: bytes lost, repeated or reordered"
        );
        let interpreted = run(&config, offset, false);
        assert_eq!(
            interpreted,
            (brk, console, mcycle, hash),
            "offset {offset}: translated and interpreted runs differ"
        );
    }
    eprintln!("{name}: {window} offsets, {ticks_seen} console_write bursts from the timer");
}
