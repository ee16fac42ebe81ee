//! RV64I: the base integer instruction set (RISC-V unprivileged spec, chapters 2 and 4).

use super::{Exception, Hart, Insn, Op};
use crate::bus::Bus;

/// RV64I operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum I {
    /// `lui`
    Lui,
    /// `auipc`
    Auipc,
    /// `jal`
    Jal,
    /// `jalr`
    Jalr,
    /// `beq`
    Beq,
    /// `bne`
    Bne,
    /// `blt`
    Blt,
    /// `bge`
    Bge,
    /// `bltu`
    Bltu,
    /// `bgeu`
    Bgeu,
    /// `lb`
    Lb,
    /// `lh`
    Lh,
    /// `lw`
    Lw,
    /// `ld`
    Ld,
    /// `lbu`
    Lbu,
    /// `lhu`
    Lhu,
    /// `lwu`
    Lwu,
    /// `sb`
    Sb,
    /// `sh`
    Sh,
    /// `sw`
    Sw,
    /// `sd`
    Sd,
    /// `addi`
    Addi,
    /// `slti`
    Slti,
    /// `sltiu`
    Sltiu,
    /// `xori`
    Xori,
    /// `ori`
    Ori,
    /// `andi`
    Andi,
    /// `slli`
    Slli,
    /// `srli`
    Srli,
    /// `srai`
    Srai,
    /// `add`
    Add,
    /// `sub`
    Sub,
    /// `sll`
    Sll,
    /// `slt`
    Slt,
    /// `sltu`
    Sltu,
    /// `xor`
    Xor,
    /// `srl`
    Srl,
    /// `sra`
    Sra,
    /// `or`
    Or,
    /// `and`
    And,
    /// `addiw`
    Addiw,
    /// `slliw`
    Slliw,
    /// `srliw`
    Srliw,
    /// `sraiw`
    Sraiw,
    /// `addw`
    Addw,
    /// `subw`
    Subw,
    /// `sllw`
    Sllw,
    /// `srlw`
    Srlw,
    /// `sraw`
    Sraw,
    /// `fence`
    Fence,
}

/// I-type immediate.
pub fn imm_i(raw: u32) -> i32 {
    raw as i32 >> 20
}

/// S-type immediate.
pub fn imm_s(raw: u32) -> i32 {
    ((raw as i32 >> 25) << 5) | ((raw >> 7) & 31) as i32
}

/// B-type immediate.
pub fn imm_b(raw: u32) -> i32 {
    ((raw as i32 >> 31) << 12)
        | (((raw >> 7) & 1) << 11) as i32
        | (((raw >> 25) & 0x3f) << 5) as i32
        | (((raw >> 8) & 0xf) << 1) as i32
}

/// J-type immediate.
pub fn imm_j(raw: u32) -> i32 {
    ((raw as i32 >> 31) << 20)
        | (raw & 0xff000) as i32
        | (((raw >> 20) & 1) << 11) as i32
        | (((raw >> 21) & 0x3ff) << 1) as i32
}

/// Decodes the RV64I opcodes (LOAD, MISC-MEM, OP-IMM, AUIPC, OP-IMM-32, STORE, OP, LUI,
/// OP-32, BRANCH, JALR, JAL).
pub fn decode(raw: u32) -> Insn {
    let f3 = (raw >> 12) & 7;
    let f7 = raw >> 25;
    let op = |i: I, imm: i32| Insn::r(Op::I(i), raw, imm);
    let bad = Insn::illegal(raw, 4);
    match raw & 0x7f {
        0x37 => op(I::Lui, (raw & 0xffff_f000) as i32),
        0x17 => op(I::Auipc, (raw & 0xffff_f000) as i32),
        0x6f => op(I::Jal, imm_j(raw)),
        0x67 if f3 == 0 => op(I::Jalr, imm_i(raw)),
        0x63 => {
            let i = match f3 {
                0 => I::Beq,
                1 => I::Bne,
                4 => I::Blt,
                5 => I::Bge,
                6 => I::Bltu,
                7 => I::Bgeu,
                _ => return bad,
            };
            op(i, imm_b(raw))
        }
        0x03 => {
            let i = match f3 {
                0 => I::Lb,
                1 => I::Lh,
                2 => I::Lw,
                3 => I::Ld,
                4 => I::Lbu,
                5 => I::Lhu,
                6 => I::Lwu,
                _ => return bad,
            };
            op(i, imm_i(raw))
        }
        0x23 => {
            let i = match f3 {
                0 => I::Sb,
                1 => I::Sh,
                2 => I::Sw,
                3 => I::Sd,
                _ => return bad,
            };
            op(i, imm_s(raw))
        }
        0x13 => {
            let shamt = ((raw >> 20) & 63) as i32;
            match (f3, raw >> 26) {
                (0, _) => op(I::Addi, imm_i(raw)),
                (2, _) => op(I::Slti, imm_i(raw)),
                (3, _) => op(I::Sltiu, imm_i(raw)),
                (4, _) => op(I::Xori, imm_i(raw)),
                (6, _) => op(I::Ori, imm_i(raw)),
                (7, _) => op(I::Andi, imm_i(raw)),
                (1, 0) => op(I::Slli, shamt),
                (5, 0) => op(I::Srli, shamt),
                (5, 0x10) => op(I::Srai, shamt),
                _ => bad,
            }
        }
        0x1b => {
            let shamt = ((raw >> 20) & 31) as i32;
            match (f3, f7) {
                (0, _) => op(I::Addiw, imm_i(raw)),
                (1, 0) => op(I::Slliw, shamt),
                (5, 0) => op(I::Srliw, shamt),
                (5, 0x20) => op(I::Sraiw, shamt),
                _ => bad,
            }
        }
        0x33 => {
            let i = match (f7, f3) {
                (0, 0) => I::Add,
                (0x20, 0) => I::Sub,
                (0, 1) => I::Sll,
                (0, 2) => I::Slt,
                (0, 3) => I::Sltu,
                (0, 4) => I::Xor,
                (0, 5) => I::Srl,
                (0x20, 5) => I::Sra,
                (0, 6) => I::Or,
                (0, 7) => I::And,
                _ => return bad,
            };
            op(i, 0)
        }
        0x3b => {
            let i = match (f7, f3) {
                (0, 0) => I::Addw,
                (0x20, 0) => I::Subw,
                (0, 1) => I::Sllw,
                (0, 5) => I::Srlw,
                (0x20, 5) => I::Sraw,
                _ => return bad,
            };
            op(i, 0)
        }
        // FENCE: the machine has one hart and synchronous devices, so every ordering
        // already holds; the reserved fields are ignored as the spec asks.
        0x0f if f3 == 0 => op(I::Fence, 0),
        _ => bad,
    }
}

fn sext32(v: u64) -> u64 {
    v as i32 as i64 as u64
}

impl Hart {
    /// Executes an RV64I operation.
    #[inline(always)]
    pub(super) fn exec_i(
        &mut self,
        bus: &mut Bus,
        op: I,
        d: &Insn,
        next: u64,
    ) -> Result<u64, Exception> {
        let rs1 = self.get_x(d.rs1);
        let rs2 = self.get_x(d.rs2);
        let imm = d.imm as i64 as u64;
        let addr = rs1.wrapping_add(imm);
        let pc = self.pc;
        let branch = |taken: bool| {
            if taken {
                pc.wrapping_add(imm)
            } else {
                next
            }
        };
        let value = match op {
            I::Lui => imm,
            I::Auipc => self.pc.wrapping_add(imm),
            I::Jal => {
                self.set_x(d.rd, next);
                return Ok(self.pc.wrapping_add(imm));
            }
            I::Jalr => {
                self.set_x(d.rd, next);
                return Ok(addr & !1);
            }
            I::Beq => return Ok(branch(rs1 == rs2)),
            I::Bne => return Ok(branch(rs1 != rs2)),
            I::Blt => return Ok(branch((rs1 as i64) < rs2 as i64)),
            I::Bge => return Ok(branch(rs1 as i64 >= rs2 as i64)),
            I::Bltu => return Ok(branch(rs1 < rs2)),
            I::Bgeu => return Ok(branch(rs1 >= rs2)),
            I::Lb => self.load(bus, addr, 1)? as i8 as u64,
            I::Lh => self.load(bus, addr, 2)? as i16 as u64,
            I::Lw => self.load(bus, addr, 4)? as i32 as u64,
            I::Ld => self.load(bus, addr, 8)?,
            I::Lbu => self.load(bus, addr, 1)?,
            I::Lhu => self.load(bus, addr, 2)?,
            I::Lwu => self.load(bus, addr, 4)?,
            I::Sb | I::Sh | I::Sw | I::Sd => {
                let size = match op {
                    I::Sb => 1,
                    I::Sh => 2,
                    I::Sw => 4,
                    _ => 8,
                };
                self.store(bus, addr, size, rs2)?;
                return Ok(next);
            }
            I::Addi => addr,
            I::Slti => ((rs1 as i64) < imm as i64) as u64,
            I::Sltiu => (rs1 < imm) as u64,
            I::Xori => rs1 ^ imm,
            I::Ori => rs1 | imm,
            I::Andi => rs1 & imm,
            I::Slli => rs1 << (imm & 63),
            I::Srli => rs1 >> (imm & 63),
            I::Srai => ((rs1 as i64) >> (imm & 63)) as u64,
            I::Add => rs1.wrapping_add(rs2),
            I::Sub => rs1.wrapping_sub(rs2),
            I::Sll => rs1 << (rs2 & 63),
            I::Slt => ((rs1 as i64) < rs2 as i64) as u64,
            I::Sltu => (rs1 < rs2) as u64,
            I::Xor => rs1 ^ rs2,
            I::Srl => rs1 >> (rs2 & 63),
            I::Sra => ((rs1 as i64) >> (rs2 & 63)) as u64,
            I::Or => rs1 | rs2,
            I::And => rs1 & rs2,
            I::Addiw => sext32(addr),
            I::Slliw => sext32(((rs1 as u32) << (imm & 31)) as u64),
            I::Srliw => sext32(((rs1 as u32) >> (imm & 31)) as u64),
            I::Sraiw => ((rs1 as i32) >> (imm & 31)) as i64 as u64,
            I::Addw => sext32(rs1.wrapping_add(rs2)),
            I::Subw => sext32(rs1.wrapping_sub(rs2)),
            I::Sllw => sext32(((rs1 as u32) << (rs2 & 31)) as u64),
            I::Srlw => sext32(((rs1 as u32) >> (rs2 & 31)) as u64),
            I::Sraw => ((rs1 as i32) >> (rs2 & 31)) as i64 as u64,
            I::Fence => return Ok(next),
        };
        self.set_x(d.rd, value);
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediates_decode_per_the_manual() {
        // beq x0, x0, -4 (0xfe000ee3)
        assert_eq!(imm_b(0xfe00_0ee3), -4);
        // jal x0, 2048 (imm[11] set): 0x0010006f | bit 20
        assert_eq!(imm_j(0x0010_006f), 2048);
        // sd x1, -8(x2): 0xfe113c23
        assert_eq!(imm_s(0xfe11_3c23), -8);
        assert_eq!(imm_i(0xfff0_0093), -1);
    }

    #[test]
    fn reserved_shift_encodings_are_illegal() {
        // slli with funct6 = 0x10 is not an RV64I encoding.
        let raw = 0x4010_1093;
        assert_eq!(decode(raw).op, Op::Illegal);
        assert_eq!(decode(0x0010_1093).op, Op::I(I::Slli));
    }
}
