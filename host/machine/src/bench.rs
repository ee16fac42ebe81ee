//! Fixed bare-metal benchmark programs (`cmbuild machine bench`), assembled here so that
//! the benchmark needs no cross toolchain: an integer loop and a memory loop, each ending
//! with a halt that works on this machine (HTIF) or on QEMU's `virt` board (its
//! `sifive,test` device at 0x100000), chosen when the program is built.

use crate::board::HTIF_BASE;

/// Which board the program will halt on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// This machine: halt through HTIF `tohost`.
    Cmvm,
    /// QEMU `virt`: power off through the `sifive,test` device.
    QemuVirt,
}

/// A benchmark program and how many instructions it retires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Name shown in the report.
    pub name: &'static str,
    /// Raw image for `RAM_BASE`.
    pub image: Vec<u8>,
    /// Instructions retired from reset to the halting store (inclusive).
    pub instructions: u64,
}

// Register numbers.
const ZERO: u32 = 0;
const T0: u32 = 5;
const T1: u32 = 6;
const T2: u32 = 7;
const S0: u32 = 8;
const A0: u32 = 10;
const A1: u32 = 11;
const A2: u32 = 12;
const A3: u32 = 13;
const A4: u32 = 14;
const A5: u32 = 15;

pub(crate) fn r(f7: u32, rs2: u32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
pub(crate) fn i(imm: i32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    (((imm as u32) & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
pub(crate) fn s(imm: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let imm = imm as u32;
    ((imm >> 5 & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 31) << 7) | 0x23
}
pub(crate) fn b(off: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let o = off as u32;
    ((o >> 12 & 1) << 31)
        | ((o >> 5 & 0x3f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | ((o >> 1 & 0xf) << 8)
        | ((o >> 11 & 1) << 7)
        | 0x63
}
#[cfg(test)]
pub(crate) fn jal(off: i32, rd: u32) -> u32 {
    let o = off as u32;
    ((o >> 20 & 1) << 31)
        | ((o >> 1 & 0x3ff) << 21)
        | ((o >> 11 & 1) << 20)
        | ((o >> 12 & 0xff) << 12)
        | (rd << 7)
        | 0x6f
}
pub(crate) fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i(imm, rs1, 0, rd, 0x13)
}
fn lui(rd: u32, imm20: u32) -> u32 {
    (imm20 << 12) | (rd << 7) | 0x37
}
pub(crate) fn slli(rd: u32, rs1: u32, sh: i32) -> u32 {
    i(sh, rs1, 1, rd, 0x13)
}

/// Loads a 32-bit constant (sign-extended) into `rd`: two instructions.
pub(crate) fn li32(rd: u32, value: i32) -> [u32; 2] {
    let lo = (value << 20) >> 20;
    let hi = ((value - lo) as u32) >> 12;
    [lui(rd, hi), addi(rd, rd, lo)]
}

/// The halting sequence (exit code 0), 5 instructions.
pub(crate) fn halt(platform: Platform) -> Vec<u32> {
    let mut v = Vec::new();
    match platform {
        Platform::Cmvm => {
            v.extend(li32(T0, HTIF_BASE as i32));
            v.push(addi(T1, ZERO, 1));
            v.push(s(0, T1, T0, 3)); // sd t1, 0(t0)
        }
        Platform::QemuVirt => {
            v.extend(li32(T0, 0x10_0000));
            v.extend(li32(T1, 0x5555));
            v.push(s(0, T1, T0, 2)); // sw t1, 0(t0)
        }
    }
    v.push(b(0, ZERO, ZERO, 0)); // beq zero, zero, . (never reached on either)
    v
}

pub(crate) fn assemble(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// How many loop iterations give about `instructions` retired for a loop of `body` ones.
fn iterations_for(instructions: u64, body: u64) -> i32 {
    (instructions / body).clamp(1, i32::MAX as u64) as i32
}

/// An ALU-bound loop: adds, xors, shifts, a multiply, a counter and a branch.
pub fn integer_loop(instructions: u64, platform: Platform) -> Program {
    const BODY: u64 = 9;
    let n = iterations_for(instructions, BODY);
    let mut w = Vec::new();
    w.extend(li32(T0, n));
    w.push(addi(A0, ZERO, 1));
    let top = w.len();
    w.push(r(0, T0, A0, 0, A0, 0x33)); // add a0, a0, t0
    w.push(r(0, A0, A1, 4, A1, 0x33)); // xor a1, a1, a0
    w.push(slli(A2, A1, 3));
    w.push(i(5, A0, 5, A3, 0x13)); // srli a3, a0, 5
    w.push(r(0x20, A3, A2, 0, A4, 0x33)); // sub a4, a2, a3
    w.push(r(1, A0, A4, 0, A5, 0x33)); // mul a5, a4, a0
    w.push(r(0, A5, A1, 6, A1, 0x33)); // or a1, a1, a5
    w.push(addi(T0, T0, -1));
    let off = (top as i32 - w.len() as i32) * 4;
    w.push(b(off, ZERO, T0, 1)); // bne t0, zero, top
    let prologue = top as u64;
    let halt = halt(platform);
    let executed_halt = halt.len() as u64 - 1;
    w.extend(halt);
    Program {
        name: "integer loop",
        image: assemble(&w),
        instructions: prologue + BODY * n as u64 + executed_halt,
    }
}

/// A load/store loop over 1 MiB of RAM with a page-crossing stride.
pub fn memory_loop(instructions: u64, platform: Platform) -> Program {
    const BODY: u64 = 9;
    let n = iterations_for(instructions, BODY);
    let mut w = Vec::new();
    w.extend(li32(T0, n));
    // auipc s0, 0x100: the buffer starts 1 MiB after this instruction.
    w.push((0x100 << 12) | (S0 << 7) | 0x17);
    w.extend(li32(A1, 0xf_fff8)); // offset mask: 1 MiB, 8-byte aligned
    let top = w.len();
    w.push(slli(T1, T0, 7)); // stride 128 bytes...
    w.push(r(0, T0, T1, 0, T1, 0x33)); // ...plus the counter: touches every page
    w.push(r(0, A1, T1, 7, T1, 0x33)); // and t1, t1, a1
    w.push(r(0, S0, T1, 0, T1, 0x33)); // add t1, t1, s0
    w.push(i(0, T1, 3, T2, 0x03)); // ld t2, 0(t1)
    w.push(r(0, T0, T2, 0, T2, 0x33)); // add t2, t2, t0
    w.push(s(0, T2, T1, 3)); // sd t2, 0(t1)
    w.push(addi(T0, T0, -1));
    let off = (top as i32 - w.len() as i32) * 4;
    w.push(b(off, ZERO, T0, 1));
    let prologue = top as u64;
    let halt = halt(platform);
    let executed_halt = halt.len() as u64 - 1;
    w.extend(halt);
    Program {
        name: "memory loop",
        image: assemble(&w),
        instructions: prologue + BODY * n as u64 + executed_halt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Break, Machine, MachineConfig};

    fn run(p: &Program) -> Machine {
        let mut m = Machine::new(&MachineConfig {
            ram_length: 4 << 20,
            ram_image: Some(p.image.clone()),
            ..MachineConfig::default()
        })
        .unwrap();
        assert_eq!(m.run(10 * p.instructions), Break::Halted(0), "{}", p.name);
        m
    }

    #[test]
    fn programs_halt_after_the_counted_instructions() {
        for p in [
            integer_loop(100_000, Platform::Cmvm),
            memory_loop(100_000, Platform::Cmvm),
        ] {
            let m = run(&p);
            assert_eq!(m.hart.minstret(), p.instructions, "{}", p.name);
            assert_eq!(m.mcycle(), p.instructions, "{}: no traps", p.name);
        }
    }

    #[test]
    fn memory_loop_touches_its_whole_megabyte() {
        let m = run(&memory_loop(300_000, Platform::Cmvm));
        // The buffer starts 1 MiB after the auipc (instruction 2).
        let buf = &m.bus.ram.bytes()[0x10_0008..0x20_0008];
        let touched_pages = buf
            .chunks(4096)
            .filter(|p| p.iter().any(|&b| b != 0))
            .count();
        assert_eq!(touched_pages, 256);
    }
}
