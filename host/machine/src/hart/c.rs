//! C: compressed instructions (unprivileged spec, chapter 26), RV64 encodings. Each one
//! decodes into the base instruction it expands to, with `len = 2`; reserved encodings
//! are illegal instructions whose `mtval` is the 16 instruction bits.

use super::float::F;
use super::rv64i::I;
use super::system::Sys;
use super::{Insn, Op};

fn bits(x: u32, hi: u32, lo: u32) -> u32 {
    (x >> lo) & ((1 << (hi - lo + 1)) - 1)
}

/// Sign-extends the low `n` bits of `x`.
fn sext(x: u32, n: u32) -> i32 {
    ((x << (32 - n)) as i32) >> (32 - n)
}

fn insn(op: Op, rd: u32, rs1: u32, rs2: u32, imm: i32, raw: u32) -> Insn {
    Insn {
        op,
        rd: rd as u8,
        rs1: rs1 as u8,
        rs2: rs2 as u8,
        rs3: 0,
        len: 2,
        imm,
        raw,
        code: 0,
    }
}

/// Decodes a 16-bit instruction.
pub fn decode(raw16: u16) -> Insn {
    let x = raw16 as u32;
    let bad = Insn::illegal(x, 2);
    let f3 = bits(x, 15, 13);
    // Full and compressed ("prime", x8..x15) register fields.
    let rd = bits(x, 11, 7);
    let rs2 = bits(x, 6, 2);
    let rdp = bits(x, 4, 2) + 8;
    let rs1p = bits(x, 9, 7) + 8;
    let i = |op: I, rd: u32, rs1: u32, rs2: u32, imm: i32| insn(Op::I(op), rd, rs1, rs2, imm, x);
    let f = |op: F, rd: u32, rs1: u32, rs2: u32, imm: i32| insn(Op::F(op), rd, rs1, rs2, imm, x);
    // imm[5] = x[12], imm[4:0] = x[6:2]
    let imm6 = sext((bits(x, 12, 12) << 5) | bits(x, 6, 2), 6);
    let uimm_d = (bits(x, 12, 10) << 3) | (bits(x, 6, 5) << 6); // c.ld/c.sd/c.fld/c.fsd
    let uimm_w = (bits(x, 12, 10) << 3) | (bits(x, 6, 6) << 2) | (bits(x, 5, 5) << 6);
    match (x & 3, f3) {
        (0, 0) => {
            let nzuimm = (bits(x, 12, 11) << 4)
                | (bits(x, 10, 7) << 6)
                | (bits(x, 6, 6) << 2)
                | (bits(x, 5, 5) << 3);
            if nzuimm == 0 {
                return bad; // includes the all-zero halfword
            }
            i(I::Addi, rdp, 2, 0, nzuimm as i32)
        }
        (0, 1) => f(F::Fld, rdp, rs1p, 0, uimm_d as i32),
        (0, 2) => i(I::Lw, rdp, rs1p, 0, uimm_w as i32),
        (0, 3) => i(I::Ld, rdp, rs1p, 0, uimm_d as i32),
        (0, 5) => f(F::Fsd, 0, rs1p, rdp, uimm_d as i32),
        (0, 6) => i(I::Sw, 0, rs1p, rdp, uimm_w as i32),
        (0, 7) => i(I::Sd, 0, rs1p, rdp, uimm_d as i32),
        (1, 0) => i(I::Addi, rd, rd, 0, imm6),
        (1, 1) if rd != 0 => i(I::Addiw, rd, rd, 0, imm6),
        (1, 2) => i(I::Addi, rd, 0, 0, imm6),
        (1, 3) if rd == 2 => {
            let nzimm = (bits(x, 12, 12) << 9)
                | (bits(x, 6, 6) << 4)
                | (bits(x, 5, 5) << 6)
                | (bits(x, 4, 3) << 7)
                | (bits(x, 2, 2) << 5);
            if nzimm == 0 {
                return bad;
            }
            i(I::Addi, 2, 2, 0, sext(nzimm, 10))
        }
        (1, 3) => {
            if imm6 == 0 {
                return bad;
            }
            i(I::Lui, rd, 0, 0, imm6 << 12)
        }
        (1, 4) => {
            let shamt = ((bits(x, 12, 12) << 5) | bits(x, 6, 2)) as i32;
            match (bits(x, 11, 10), bits(x, 12, 12), bits(x, 6, 5)) {
                (0, _, _) => i(I::Srli, rs1p, rs1p, 0, shamt),
                (1, _, _) => i(I::Srai, rs1p, rs1p, 0, shamt),
                (2, _, _) => i(I::Andi, rs1p, rs1p, 0, imm6),
                (3, 0, 0) => i(I::Sub, rs1p, rs1p, rdp, 0),
                (3, 0, 1) => i(I::Xor, rs1p, rs1p, rdp, 0),
                (3, 0, 2) => i(I::Or, rs1p, rs1p, rdp, 0),
                (3, 0, 3) => i(I::And, rs1p, rs1p, rdp, 0),
                (3, 1, 0) => i(I::Subw, rs1p, rs1p, rdp, 0),
                (3, 1, 1) => i(I::Addw, rs1p, rs1p, rdp, 0),
                _ => bad,
            }
        }
        (1, 5) => {
            let off = (bits(x, 12, 12) << 11)
                | (bits(x, 11, 11) << 4)
                | (bits(x, 10, 9) << 8)
                | (bits(x, 8, 8) << 10)
                | (bits(x, 7, 7) << 6)
                | (bits(x, 6, 6) << 7)
                | (bits(x, 5, 3) << 1)
                | (bits(x, 2, 2) << 5);
            i(I::Jal, 0, 0, 0, sext(off, 12))
        }
        (1, 6) | (1, 7) => {
            let off = (bits(x, 12, 12) << 8)
                | (bits(x, 11, 10) << 3)
                | (bits(x, 6, 5) << 6)
                | (bits(x, 4, 3) << 1)
                | (bits(x, 2, 2) << 5);
            let op = if f3 == 6 { I::Beq } else { I::Bne };
            i(op, 0, rs1p, 0, sext(off, 9))
        }
        (2, 0) => {
            let shamt = ((bits(x, 12, 12) << 5) | bits(x, 6, 2)) as i32;
            i(I::Slli, rd, rd, 0, shamt)
        }
        (2, 1) => {
            let uimm = (bits(x, 12, 12) << 5) | (bits(x, 6, 5) << 3) | (bits(x, 4, 2) << 6);
            f(F::Fld, rd, 2, 0, uimm as i32)
        }
        (2, 2) if rd != 0 => {
            let uimm = (bits(x, 12, 12) << 5) | (bits(x, 6, 4) << 2) | (bits(x, 3, 2) << 6);
            i(I::Lw, rd, 2, 0, uimm as i32)
        }
        (2, 3) if rd != 0 => {
            let uimm = (bits(x, 12, 12) << 5) | (bits(x, 6, 5) << 3) | (bits(x, 4, 2) << 6);
            i(I::Ld, rd, 2, 0, uimm as i32)
        }
        (2, 4) => match (bits(x, 12, 12), rd, rs2) {
            (0, 0, 0) => bad,
            (0, _, 0) => i(I::Jalr, 0, rd, 0, 0),
            (0, _, _) => i(I::Add, rd, 0, rs2, 0),
            (1, 0, 0) => insn(Op::Sys(Sys::Ebreak), 0, 0, 0, 0, x),
            (1, _, 0) => i(I::Jalr, 1, rd, 0, 0),
            (_, _, _) => i(I::Add, rd, rd, rs2, 0),
        },
        (2, 5) => {
            let uimm = (bits(x, 12, 10) << 3) | (bits(x, 9, 7) << 6);
            f(F::Fsd, 0, 2, rs2, uimm as i32)
        }
        (2, 6) => {
            let uimm = (bits(x, 12, 9) << 2) | (bits(x, 8, 7) << 6);
            i(I::Sw, 0, 2, rs2, uimm as i32)
        }
        (2, 7) => {
            let uimm = (bits(x, 12, 10) << 3) | (bits(x, 9, 7) << 6);
            i(I::Sd, 0, 2, rs2, uimm as i32)
        }
        _ => bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansions_match_the_base_encodings() {
        // c.addi x10, -1 = 0x157d -> addi x10, x10, -1
        let d = decode(0x157d);
        assert_eq!(
            (d.op, d.rd, d.rs1, d.imm, d.len),
            (Op::I(I::Addi), 10, 10, -1, 2)
        );
        // c.ldsp x1, 8(sp) = 0x60a2
        let d = decode(0x60a2);
        assert_eq!((d.op, d.rd, d.rs1, d.imm), (Op::I(I::Ld), 1, 2, 8));
        // c.sdsp x1, 8(sp) = 0xe406
        let d = decode(0xe406);
        assert_eq!((d.op, d.rs1, d.rs2, d.imm), (Op::I(I::Sd), 2, 1, 8));
        // c.j -2 = 0xbffd
        let d = decode(0xbffd);
        assert_eq!((d.op, d.imm), (Op::I(I::Jal), -2));
        // c.beqz x8, -4: 0xdc75 is c.beqz s0,... compare against the 32-bit decoder's view.
        let d = decode(0xdc75);
        assert_eq!(d.op, Op::I(I::Beq));
        assert_eq!(d.imm, -4);
        // c.addi16sp sp, -64 = 0x7139
        let d = decode(0x7139);
        assert_eq!((d.op, d.rd, d.imm), (Op::I(I::Addi), 2, -64));
        // c.lui x15, 0xfffff = 0x77fd
        let d = decode(0x77fd);
        assert_eq!((d.op, d.rd, d.imm), (Op::I(I::Lui), 15, -4096));
    }

    #[test]
    fn reserved_encodings_are_illegal_with_their_bits() {
        // all zeros, c.lui x0 with imm 0, c.jr x0, c.lwsp x0
        for raw in [0x0000u16, 0x6001, 0x8002, 0x4002] {
            let d = decode(raw);
            assert_eq!(d.op, Op::Illegal, "{raw:#x}");
            assert_eq!((d.raw, d.len), (raw as u32, 2));
        }
    }
}
