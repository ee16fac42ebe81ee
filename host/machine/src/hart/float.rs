//! F and D: single- and double-precision floating point (unprivileged spec, chapters 20
//! and 21). The arithmetic is [`crate::softfloat`] (bit-exact, no host FP); this file does
//! what is the hart's: decoding, NaN-boxing of singles in the 64-bit registers, sign
//! injection, moves, the rounding-mode field (static or `frm`), `fflags` and `mstatus.FS`.

use super::csr::MSTATUS_FS;
use super::rv64i::{imm_i, imm_s};
use super::{Exception, Hart, Insn, Op};
use crate::bus::Bus;
use crate::softfloat::{self as sf, Flags, RoundingMode};

/// F and D operations (`S` = binary32, `D` = binary64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F {
    /// `flw`
    Flw,
    /// `fld`
    Fld,
    /// `fsw`
    Fsw,
    /// `fsd`
    Fsd,
    /// `fmadd.s`
    MaddS,
    /// `fmsub.s`
    MsubS,
    /// `fnmsub.s`
    NmsubS,
    /// `fnmadd.s`
    NmaddS,
    /// `fadd.s`
    AddS,
    /// `fsub.s`
    SubS,
    /// `fmul.s`
    MulS,
    /// `fdiv.s`
    DivS,
    /// `fsqrt.s`
    SqrtS,
    /// `fsgnj.s`
    SgnjS,
    /// `fsgnjn.s`
    SgnjnS,
    /// `fsgnjx.s`
    SgnjxS,
    /// `fmin.s`
    MinS,
    /// `fmax.s`
    MaxS,
    /// `fcvt.w.s`
    CvtWS,
    /// `fcvt.wu.s`
    CvtWuS,
    /// `fcvt.l.s`
    CvtLS,
    /// `fcvt.lu.s`
    CvtLuS,
    /// `fmv.x.w`
    MvXW,
    /// `feq.s`
    EqS,
    /// `flt.s`
    LtS,
    /// `fle.s`
    LeS,
    /// `fclass.s`
    ClassS,
    /// `fcvt.s.w`
    CvtSW,
    /// `fcvt.s.wu`
    CvtSWu,
    /// `fcvt.s.l`
    CvtSL,
    /// `fcvt.s.lu`
    CvtSLu,
    /// `fmv.w.x`
    MvWX,
    /// `fmadd.d`
    MaddD,
    /// `fmsub.d`
    MsubD,
    /// `fnmsub.d`
    NmsubD,
    /// `fnmadd.d`
    NmaddD,
    /// `fadd.d`
    AddD,
    /// `fsub.d`
    SubD,
    /// `fmul.d`
    MulD,
    /// `fdiv.d`
    DivD,
    /// `fsqrt.d`
    SqrtD,
    /// `fsgnj.d`
    SgnjD,
    /// `fsgnjn.d`
    SgnjnD,
    /// `fsgnjx.d`
    SgnjxD,
    /// `fmin.d`
    MinD,
    /// `fmax.d`
    MaxD,
    /// `fcvt.s.d`
    CvtSD,
    /// `fcvt.d.s`
    CvtDS,
    /// `feq.d`
    EqD,
    /// `flt.d`
    LtD,
    /// `fle.d`
    LeD,
    /// `fclass.d`
    ClassD,
    /// `fcvt.w.d`
    CvtWD,
    /// `fcvt.wu.d`
    CvtWuD,
    /// `fcvt.l.d`
    CvtLD,
    /// `fcvt.lu.d`
    CvtLuD,
    /// `fmv.x.d`
    MvXD,
    /// `fcvt.d.w`
    CvtDW,
    /// `fcvt.d.wu`
    CvtDWu,
    /// `fcvt.d.l`
    CvtDL,
    /// `fcvt.d.lu`
    CvtDLu,
    /// `fmv.d.x`
    MvDX,
}

/// The canonical quiet NaN of binary32.
const CANONICAL_NAN_S: u32 = 0x7fc0_0000;
/// Upper half of a NaN-boxed single.
const BOX: u64 = 0xffff_ffff_0000_0000;

/// Decodes LOAD-FP, STORE-FP, the four fused multiply-add opcodes and OP-FP. For
/// arithmetic, `imm` holds the `rm` field; validity of `rm` is checked at execution
/// (the dynamic mode depends on `frm` then).
pub fn decode(raw: u32) -> Insn {
    use F::*;
    let bad = Insn::illegal(raw, 4);
    let f3 = (raw >> 12) & 7;
    let rm = f3 as i32;
    let rs2 = (raw >> 20) & 31;
    let fmt = (raw >> 25) & 3;
    let op = |f: F, imm: i32| Insn::r(Op::F(f), raw, imm);
    let sd = |s: F, d: F| match fmt {
        0 => Some(s),
        1 => Some(d),
        _ => None,
    };
    let with_rm = |x: Option<F>| x.map_or(bad, |f| op(f, rm));
    match raw & 0x7f {
        0x07 => match f3 {
            2 => op(Flw, imm_i(raw)),
            3 => op(Fld, imm_i(raw)),
            _ => bad,
        },
        0x27 => match f3 {
            2 => op(Fsw, imm_s(raw)),
            3 => op(Fsd, imm_s(raw)),
            _ => bad,
        },
        0x43 => with_rm(sd(MaddS, MaddD)),
        0x47 => with_rm(sd(MsubS, MsubD)),
        0x4b => with_rm(sd(NmsubS, NmsubD)),
        0x4f => with_rm(sd(NmaddS, NmaddD)),
        0x53 => {
            let funct5 = raw >> 27;
            let plain = |x: Option<F>| x.map_or(bad, |f| op(f, 0));
            match funct5 {
                0b00000 => with_rm(sd(AddS, AddD)),
                0b00001 => with_rm(sd(SubS, SubD)),
                0b00010 => with_rm(sd(MulS, MulD)),
                0b00011 => with_rm(sd(DivS, DivD)),
                0b01011 if rs2 == 0 => with_rm(sd(SqrtS, SqrtD)),
                0b00100 => match f3 {
                    0 => plain(sd(SgnjS, SgnjD)),
                    1 => plain(sd(SgnjnS, SgnjnD)),
                    2 => plain(sd(SgnjxS, SgnjxD)),
                    _ => bad,
                },
                0b00101 => match f3 {
                    0 => plain(sd(MinS, MinD)),
                    1 => plain(sd(MaxS, MaxD)),
                    _ => bad,
                },
                0b01000 => match (fmt, rs2) {
                    (0, 1) => op(CvtSD, rm),
                    (1, 0) => op(CvtDS, rm),
                    _ => bad,
                },
                0b10100 => match f3 {
                    2 => plain(sd(EqS, EqD)),
                    1 => plain(sd(LtS, LtD)),
                    0 => plain(sd(LeS, LeD)),
                    _ => bad,
                },
                0b11000 => match rs2 {
                    0 => with_rm(sd(CvtWS, CvtWD)),
                    1 => with_rm(sd(CvtWuS, CvtWuD)),
                    2 => with_rm(sd(CvtLS, CvtLD)),
                    3 => with_rm(sd(CvtLuS, CvtLuD)),
                    _ => bad,
                },
                0b11010 => match rs2 {
                    0 => with_rm(sd(CvtSW, CvtDW)),
                    1 => with_rm(sd(CvtSWu, CvtDWu)),
                    2 => with_rm(sd(CvtSL, CvtDL)),
                    3 => with_rm(sd(CvtSLu, CvtDLu)),
                    _ => bad,
                },
                0b11100 if rs2 == 0 => match f3 {
                    0 => plain(sd(MvXW, MvXD)),
                    1 => plain(sd(ClassS, ClassD)),
                    _ => bad,
                },
                0b11110 if rs2 == 0 && f3 == 0 => plain(sd(MvWX, MvDX)),
                _ => bad,
            }
        }
        _ => bad,
    }
}

/// Whether `op` reads the `rm` field (and so must have a valid one).
fn uses_rm(op: F) -> bool {
    use F::*;
    !matches!(
        op,
        Flw | Fld
            | Fsw
            | Fsd
            | SgnjS
            | SgnjnS
            | SgnjxS
            | MinS
            | MaxS
            | MvXW
            | EqS
            | LtS
            | LeS
            | ClassS
            | MvWX
            | SgnjD
            | SgnjnD
            | SgnjxD
            | MinD
            | MaxD
            | EqD
            | LtD
            | LeD
            | ClassD
            | MvXD
            | MvDX
    )
}

impl Hart {
    /// Reads `f[r]` as a single: an improperly boxed value is the canonical NaN.
    #[inline(always)]
    fn get_s(&self, r: u8) -> u32 {
        let v = self.f[(r & 31) as usize];
        if v & BOX == BOX {
            v as u32
        } else {
            CANONICAL_NAN_S
        }
    }

    #[inline(always)]
    fn set_s(&mut self, r: u8, v: u32) {
        self.f[(r & 31) as usize] = BOX | v as u64;
    }

    /// Executes an F or D operation.
    pub(super) fn exec_f(
        &mut self,
        bus: &mut Bus,
        op: F,
        d: &Insn,
        next: u64,
    ) -> Result<u64, Exception> {
        use F::*;
        if self.csr.mstatus & MSTATUS_FS == 0 {
            return Err(Exception::illegal(d.raw));
        }
        let rm = if uses_rm(op) {
            let field = d.imm as u32;
            let bits = if field == 7 {
                self.csr.frm as u32
            } else {
                field
            };
            match RoundingMode::from_bits(bits) {
                Some(rm) => rm,
                None => return Err(Exception::illegal(d.raw)),
            }
        } else {
            RoundingMode::Rne
        };
        let addr = self.get_x(d.rs1).wrapping_add(d.imm as i64 as u64);
        let mut fl = Flags(0);
        let fl_ = &mut fl;
        let (a, b, c) = (d.rs1, d.rs2, d.rs3);
        // Results go either to an f register (single: boxed) or to an x register.
        enum Out {
            S(u32),
            D(u64),
            X(u64),
        }
        let x = |v: bool| Out::X(v as u64);
        let sext32 = |v: u32| Out::X(v as i32 as i64 as u64);
        let (s1, s2, s3) = (self.get_s(a), self.get_s(b), self.get_s(c));
        let (d1, d2, d3) = (
            self.f[(a & 31) as usize],
            self.f[(b & 31) as usize],
            self.f[(c & 31) as usize],
        );
        const SS: u32 = 1 << 31;
        const SD: u64 = 1 << 63;
        let out = match op {
            Flw => Out::S(self.load(bus, addr, 4)? as u32),
            Fld => Out::D(self.load(bus, addr, 8)?),
            Fsw => {
                // Stores move bits: no unboxing.
                self.store(bus, addr, 4, self.f[(b & 31) as usize])?;
                return Ok(next);
            }
            Fsd => {
                self.store(bus, addr, 8, d2)?;
                return Ok(next);
            }
            MaddS => Out::S(sf::f32_mul_add(s1, s2, s3, rm, fl_)),
            MsubS => Out::S(sf::f32_mul_add(s1, s2, s3 ^ SS, rm, fl_)),
            NmsubS => Out::S(sf::f32_mul_add(s1 ^ SS, s2, s3, rm, fl_)),
            NmaddS => Out::S(sf::f32_mul_add(s1 ^ SS, s2, s3 ^ SS, rm, fl_)),
            AddS => Out::S(sf::f32_add(s1, s2, rm, fl_)),
            SubS => Out::S(sf::f32_sub(s1, s2, rm, fl_)),
            MulS => Out::S(sf::f32_mul(s1, s2, rm, fl_)),
            DivS => Out::S(sf::f32_div(s1, s2, rm, fl_)),
            SqrtS => Out::S(sf::f32_sqrt(s1, rm, fl_)),
            SgnjS => Out::S((s1 & !SS) | (s2 & SS)),
            SgnjnS => Out::S((s1 & !SS) | (!s2 & SS)),
            SgnjxS => Out::S(s1 ^ (s2 & SS)),
            MinS => Out::S(sf::f32_min(s1, s2, fl_)),
            MaxS => Out::S(sf::f32_max(s1, s2, fl_)),
            CvtWS => sext32(sf::f32_to_i32(s1, rm, fl_) as u32),
            CvtWuS => sext32(sf::f32_to_u32(s1, rm, fl_)),
            CvtLS => Out::X(sf::f32_to_i64(s1, rm, fl_) as u64),
            CvtLuS => Out::X(sf::f32_to_u64(s1, rm, fl_)),
            MvXW => sext32(self.f[(a & 31) as usize] as u32),
            EqS => x(sf::f32_eq(s1, s2, fl_)),
            LtS => x(sf::f32_lt(s1, s2, fl_)),
            LeS => x(sf::f32_le(s1, s2, fl_)),
            ClassS => Out::X(sf::f32_classify(s1) as u64),
            CvtSW => Out::S(sf::i32_to_f32(self.get_x(a) as i32, rm, fl_)),
            CvtSWu => Out::S(sf::u32_to_f32(self.get_x(a) as u32, rm, fl_)),
            CvtSL => Out::S(sf::i64_to_f32(self.get_x(a) as i64, rm, fl_)),
            CvtSLu => Out::S(sf::u64_to_f32(self.get_x(a), rm, fl_)),
            MvWX => Out::S(self.get_x(a) as u32),
            MaddD => Out::D(sf::f64_mul_add(d1, d2, d3, rm, fl_)),
            MsubD => Out::D(sf::f64_mul_add(d1, d2, d3 ^ SD, rm, fl_)),
            NmsubD => Out::D(sf::f64_mul_add(d1 ^ SD, d2, d3, rm, fl_)),
            NmaddD => Out::D(sf::f64_mul_add(d1 ^ SD, d2, d3 ^ SD, rm, fl_)),
            AddD => Out::D(sf::f64_add(d1, d2, rm, fl_)),
            SubD => Out::D(sf::f64_sub(d1, d2, rm, fl_)),
            MulD => Out::D(sf::f64_mul(d1, d2, rm, fl_)),
            DivD => Out::D(sf::f64_div(d1, d2, rm, fl_)),
            SqrtD => Out::D(sf::f64_sqrt(d1, rm, fl_)),
            SgnjD => Out::D((d1 & !SD) | (d2 & SD)),
            SgnjnD => Out::D((d1 & !SD) | (!d2 & SD)),
            SgnjxD => Out::D(d1 ^ (d2 & SD)),
            MinD => Out::D(sf::f64_min(d1, d2, fl_)),
            MaxD => Out::D(sf::f64_max(d1, d2, fl_)),
            CvtSD => Out::S(sf::f64_to_f32(d1, rm, fl_)),
            CvtDS => Out::D(sf::f32_to_f64(s1, fl_)),
            EqD => x(sf::f64_eq(d1, d2, fl_)),
            LtD => x(sf::f64_lt(d1, d2, fl_)),
            LeD => x(sf::f64_le(d1, d2, fl_)),
            ClassD => Out::X(sf::f64_classify(d1) as u64),
            CvtWD => sext32(sf::f64_to_i32(d1, rm, fl_) as u32),
            CvtWuD => sext32(sf::f64_to_u32(d1, rm, fl_)),
            CvtLD => Out::X(sf::f64_to_i64(d1, rm, fl_) as u64),
            CvtLuD => Out::X(sf::f64_to_u64(d1, rm, fl_)),
            MvXD => Out::X(d1),
            CvtDW => Out::D(sf::i32_to_f64(self.get_x(a) as i32, rm, fl_)),
            CvtDWu => Out::D(sf::u32_to_f64(self.get_x(a) as u32, rm, fl_)),
            CvtDL => Out::D(sf::i64_to_f64(self.get_x(a) as i64, rm, fl_)),
            CvtDLu => Out::D(sf::u64_to_f64(self.get_x(a), rm, fl_)),
            MvDX => Out::D(self.get_x(a)),
        };
        match out {
            Out::S(v) => {
                self.set_s(d.rd, v);
                self.csr.mstatus |= MSTATUS_FS;
            }
            Out::D(v) => {
                self.f[(d.rd & 31) as usize] = v;
                self.csr.mstatus |= MSTATUS_FS;
            }
            Out::X(v) => self.set_x(d.rd, v),
        }
        if fl.0 != 0 {
            self.csr.fflags |= fl.0;
            self.csr.mstatus |= MSTATUS_FS;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_fp_decodes_by_fmt_and_funct5() {
        // fadd.d f1, f2, f3, rne: funct7 = 0000001
        let raw = (1 << 25) | (3 << 20) | (2 << 15) | (1 << 7) | 0x53;
        assert_eq!(decode(raw).op, Op::F(F::AddD));
        // fmt = 2 (half) is not implemented.
        assert_eq!(decode(raw | (2 << 25)).op, Op::Illegal);
        // fsqrt.s with rs2 != 0 is reserved.
        let sqrt = (0b0101100 << 25) | (1 << 20) | 0x53;
        assert_eq!(decode(sqrt).op, Op::Illegal);
    }
}
