//! The bare-metal ISA suite: each program in tests/isa checks its own results and halts
//! through HTIF with exit code 0 (pass) or the number of the failed check.

mod common;

use cmbuild_machine::machine::Break;

fn run_test(name: &str, sources: &[&str]) -> Option<Vec<u8>> {
    let image = common::build(name, sources)?;
    let (brk, console, m) = common::run_image(&image, 50_000_000);
    let text = String::from_utf8_lossy(&console);
    assert_eq!(
        brk,
        Break::Halted(0),
        "{name} failed (exit code = failed check; 1000+ = unexpected trap) at pc {:#x}, \
         mcause {:#x}, mtval {:#x}, mepc {:#x}; console:\n{text}",
        m.hart.pc,
        m.hart.csr.mcause,
        m.hart.csr.mtval,
        m.hart.csr.mepc
    );
    Some(console)
}

#[test]
fn hello_prints_through_htif() {
    if let Some(console) = run_test("hello", &["hello.S"]) {
        assert_eq!(console, b"hello from the machine\n");
    }
}

#[test]
fn rv64i() {
    run_test("rv64i", &["rv64i.S"]);
}

#[test]
fn translator_paths() {
    run_test("jit", &["jit.S"]);
}

#[test]
fn rv64m() {
    run_test("rv64m", &["rv64m.S"]);
}

#[test]
fn rv64a() {
    run_test("rv64a", &["rv64a.S"]);
}

#[test]
fn rv64c() {
    run_test("rv64c", &["rv64c.S"]);
}

#[test]
fn traps_and_csrs() {
    run_test("traps", &["traps.S"]);
}

#[test]
fn interrupts_and_wfi() {
    run_test("interrupts", &["interrupts.S"]);
}

#[test]
fn wfi_with_interrupts_enabled_retires() {
    run_test("wfi", &["wfi.S"]);
}

#[test]
fn counters_and_triggers() {
    run_test("counters", &["counters.S"]);
}

#[test]
fn virtual_memory() {
    run_test("vm", &["vm.S"]);
}

#[test]
fn floating_point() {
    run_test("fp", &["fp.S"]);
}

#[test]
fn c_program() {
    if let Some(console) = run_test("cprog", &["crt0.S", "cprog.c"]) {
        let text = String::from_utf8(console).unwrap();
        assert!(text.contains("all C checks passed"), "{text}");
    }
}
