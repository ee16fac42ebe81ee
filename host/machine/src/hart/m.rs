//! M: integer multiplication and division (unprivileged spec, chapter 13). Division by
//! zero and signed overflow give the results the manual's table prescribes; no traps.

use super::{Hart, Insn, Op};

/// M operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum M {
    /// `mul`
    Mul,
    /// `mulh`
    Mulh,
    /// `mulhsu`
    Mulhsu,
    /// `mulhu`
    Mulhu,
    /// `div`
    Div,
    /// `divu`
    Divu,
    /// `rem`
    Rem,
    /// `remu`
    Remu,
    /// `mulw`
    Mulw,
    /// `divw`
    Divw,
    /// `divuw`
    Divuw,
    /// `remw`
    Remw,
    /// `remuw`
    Remuw,
}

/// Decodes OP and OP-32 with funct7 = 1.
pub fn decode(raw: u32) -> Insn {
    let f3 = (raw >> 12) & 7;
    let m = match (raw & 0x7f, f3) {
        (0x33, 0) => M::Mul,
        (0x33, 1) => M::Mulh,
        (0x33, 2) => M::Mulhsu,
        (0x33, 3) => M::Mulhu,
        (0x33, 4) => M::Div,
        (0x33, 5) => M::Divu,
        (0x33, 6) => M::Rem,
        (0x33, 7) => M::Remu,
        (0x3b, 0) => M::Mulw,
        (0x3b, 4) => M::Divw,
        (0x3b, 5) => M::Divuw,
        (0x3b, 6) => M::Remw,
        (0x3b, 7) => M::Remuw,
        _ => return Insn::illegal(raw, 4),
    };
    Insn::r(Op::M(m), raw, 0)
}

fn div(a: i64, b: i64) -> i64 {
    if b == 0 {
        -1
    } else {
        a.wrapping_div(b)
    }
}

fn rem(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        a.wrapping_rem(b)
    }
}

impl Hart {
    /// Executes an M operation (they cannot trap).
    #[inline(always)]
    pub(super) fn exec_m(&mut self, op: M, d: &Insn, next: u64) -> u64 {
        let a = self.get_x(d.rs1);
        let b = self.get_x(d.rs2);
        let (aw, bw) = (a as i32, b as i32);
        let value = match op {
            M::Mul => a.wrapping_mul(b),
            M::Mulh => ((a as i64 as i128 * b as i64 as i128) >> 64) as u64,
            M::Mulhsu => ((a as i64 as i128).wrapping_mul(b as i128) >> 64) as u64,
            M::Mulhu => ((a as u128 * b as u128) >> 64) as u64,
            M::Div => div(a as i64, b as i64) as u64,
            M::Divu => a.checked_div(b).unwrap_or(u64::MAX),
            M::Rem => rem(a as i64, b as i64) as u64,
            M::Remu => a.checked_rem(b).unwrap_or(a),
            M::Mulw => aw.wrapping_mul(bw) as i64 as u64,
            M::Divw => {
                let q = if bw == 0 { -1 } else { aw.wrapping_div(bw) };
                q as i64 as u64
            }
            M::Divuw => {
                let q = (a as u32).checked_div(b as u32).unwrap_or(u32::MAX);
                q as i32 as i64 as u64
            }
            M::Remw => {
                let r = if bw == 0 { aw } else { aw.wrapping_rem(bw) };
                r as i64 as u64
            }
            M::Remuw => {
                let r = (a as u32).checked_rem(b as u32).unwrap_or(a as u32);
                r as i32 as i64 as u64
            }
        };
        self.set_x(d.rd, value);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(op: M, a: u64, b: u64) -> u64 {
        let mut h = Hart::new(4096);
        h.x[1] = a;
        h.x[2] = b;
        let d = Insn {
            op: Op::M(op),
            rd: 3,
            rs1: 1,
            rs2: 2,
            ..Insn::UNDECODED
        };
        h.exec_m(op, &d, 0);
        h.x[3]
    }

    #[test]
    fn division_corner_cases_follow_the_manual() {
        assert_eq!(run(M::Div, 7, 0), u64::MAX);
        assert_eq!(run(M::Divu, 7, 0), u64::MAX);
        assert_eq!(run(M::Rem, 7, 0), 7);
        assert_eq!(run(M::Div, i64::MIN as u64, u64::MAX), i64::MIN as u64);
        assert_eq!(run(M::Rem, i64::MIN as u64, u64::MAX), 0);
        assert_eq!(run(M::Divw, 0x8000_0000, u64::MAX), 0xffff_ffff_8000_0000);
        assert_eq!(run(M::Divuw, 5, 0), u64::MAX);
        assert_eq!(run(M::Remuw, 0xffff_fff5, 0), 0xffff_ffff_ffff_fff5);
    }

    #[test]
    fn high_multiplies() {
        assert_eq!(run(M::Mulh, u64::MAX, u64::MAX), 0);
        assert_eq!(run(M::Mulhu, u64::MAX, u64::MAX), u64::MAX - 1);
        assert_eq!(run(M::Mulhsu, u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(run(M::Mulw, 0x7fff_ffff, 2), 0xffff_ffff_ffff_fffe);
    }
}
