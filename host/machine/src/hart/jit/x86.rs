//! A small x86-64 assembler: exactly the instructions the translator emits.
//!
//! Encodings follow the Intel SDM, volume 2: an optional operand-size prefix (`66`), a
//! REX prefix when a 64-bit operand or a register above 7 needs one, the opcode, then a
//! ModRM byte (with SIB and a displacement for memory operands). Displacements take the
//! shortest form: none when zero (except on `rbp`/`r13` bases, where that form means
//! something else), 8 bits when they fit, else 32; `rsp`/`r12` bases take a SIB byte.

/// Host registers, numbered as in their encodings.
pub const RAX: u8 = 0;
pub const RCX: u8 = 1;
pub const RDX: u8 = 2;
pub const RBX: u8 = 3;
pub const RSP: u8 = 4;
pub const RBP: u8 = 5;
pub const RSI: u8 = 6;
pub const RDI: u8 = 7;
pub const R8: u8 = 8;
pub const R9: u8 = 9;
pub const R10: u8 = 10;
pub const R11: u8 = 11;
pub const R12: u8 = 12;
pub const R13: u8 = 13;
pub const R14: u8 = 14;
pub const R15: u8 = 15;

/// Condition codes (the low nibble of `Jcc`/`SETcc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cond {
    /// Below (unsigned <).
    B = 0x2,
    /// Above or equal (unsigned >=).
    Ae = 0x3,
    /// Equal.
    E = 0x4,
    /// Not equal.
    Ne = 0x5,
    /// Above (unsigned >).
    A = 0x7,
    /// Less (signed <).
    L = 0xc,
    /// Greater or equal (signed >=).
    Ge = 0xd,
    /// Less or equal (signed <=).
    Le = 0xe,
    /// Greater (signed >).
    G = 0xf,
}

/// An operand that is a register or memory (`r/m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rm {
    /// A register.
    Reg(u8),
    /// `[base + index * scale + disp]`; `scale` is 1, 2, 4 or 8.
    Mem {
        base: u8,
        index: Option<(u8, u8)>,
        disp: i32,
    },
}

impl Rm {
    /// `[base + disp]`.
    pub fn at(base: u8, disp: i32) -> Rm {
        Rm::Mem {
            base,
            index: None,
            disp,
        }
    }

    /// `[base + index * scale]`.
    pub fn indexed(base: u8, index: u8, scale: u8) -> Rm {
        Rm::Mem {
            base,
            index: Some((index, scale)),
            disp: 0,
        }
    }
}

/// The ALU operations of the `op r, r/m` (`03`, `0B`, ...) and `81 /ext` families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Alu {
    Add = 0,
    Or = 1,
    And = 4,
    Sub = 5,
    Xor = 6,
    Cmp = 7,
}

/// Shift operations (`C1 /ext` and `D3 /ext`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Shift {
    Shl = 4,
    Shr = 5,
    Sar = 7,
}

/// Operand width of an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum W {
    B8,
    B16,
    B32,
    B64,
}

/// A code buffer placed at a known offset of the executable region, so that relative
/// jumps to code outside it (the shared epilogue) can be encoded directly.
#[derive(Debug, Default)]
pub struct Asm {
    /// The bytes emitted so far.
    pub buf: Vec<u8>,
    /// Offset of `buf[0]` in the executable region.
    pub base: usize,
}

impl Asm {
    /// An empty buffer that will be placed at `base`.
    pub fn new(base: usize) -> Self {
        Self {
            buf: Vec::with_capacity(1024),
            base,
        }
    }

    /// An empty buffer that will be placed at `base`, reusing `buf`'s memory.
    pub fn with_buf(base: usize, mut buf: Vec<u8>) -> Self {
        buf.clear();
        Self { buf, base }
    }

    /// Current position as an offset in the executable region.
    pub fn here(&self) -> usize {
        self.base + self.buf.len()
    }

    fn byte(&mut self, b: u8) {
        self.buf.push(b);
    }

    fn imm32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Prefixes, REX and opcode for an instruction with ModRM operands `reg` and `rm`.
    fn head(&mut self, w: W, opcode: &[u8], reg: u8, rm: Rm) {
        if w == W::B16 {
            self.byte(0x66);
        }
        let (b, x) = match rm {
            Rm::Reg(r) => (r >> 3, 0),
            Rm::Mem { base, index, .. } => (base >> 3, index.map_or(0, |(i, _)| i >> 3)),
        };
        let rex_w = (w == W::B64) as u8;
        let r = reg >> 3;
        // Byte operands of rsp..rdi need a REX prefix to mean spl..dil, not ah..bh.
        let byte_low = w == W::B8 && (matches!(rm, Rm::Reg(4..=7)) || (4..=7).contains(&reg));
        if rex_w | r | x | b != 0 || byte_low {
            self.byte(0x40 | rex_w << 3 | r << 2 | x << 1 | b);
        }
        self.buf.extend_from_slice(opcode);
        self.modrm(reg, rm);
    }

    fn modrm(&mut self, reg: u8, rm: Rm) {
        let reg = (reg & 7) << 3;
        match rm {
            Rm::Reg(r) => self.byte(0xc0 | reg | (r & 7)),
            Rm::Mem { base, index, disp } => {
                // mod: 00 no displacement, 01 disp8, 10 disp32.
                let md = if disp == 0 && base & 7 != RBP {
                    0x00
                } else if (-128..128).contains(&disp) {
                    0x40
                } else {
                    0x80
                };
                match index {
                    Some((i, scale)) => {
                        debug_assert!(i != RSP, "rsp cannot be an index");
                        let ss = match scale {
                            1 => 0,
                            2 => 1,
                            4 => 2,
                            _ => 3,
                        };
                        self.byte(md | reg | 4);
                        self.byte(ss << 6 | (i & 7) << 3 | (base & 7));
                    }
                    None if base & 7 == RSP => {
                        self.byte(md | reg | 4);
                        self.byte(0x24);
                    }
                    None => self.byte(md | reg | (base & 7)),
                }
                match md {
                    0x40 => self.byte(disp as u8),
                    0x80 => self.imm32(disp),
                    _ => {}
                }
            }
        }
    }

    /// `mov reg, r/m` (64 or 32 bits; 32 zero-extends).
    pub fn mov_load(&mut self, w: W, reg: u8, rm: Rm) {
        self.head(w, &[0x8b], reg, rm);
    }

    /// `mov r/m, reg` of width `w`.
    pub fn mov_store(&mut self, w: W, rm: Rm, reg: u8) {
        let op = if w == W::B8 { 0x88 } else { 0x89 };
        self.head(w, &[op], reg, rm);
    }

    /// `mov reg, src` (64-bit) unless they are the same register.
    pub fn mov_rr(&mut self, dst: u8, src: u8) {
        if dst != src {
            self.mov_load(W::B64, dst, Rm::Reg(src));
        }
    }

    /// `movzx reg32, byte/word [rm]` (zero-extends to 64 bits).
    pub fn movzx(&mut self, from: W, reg: u8, rm: Rm) {
        let op = if from == W::B8 { 0xb6 } else { 0xb7 };
        self.head(W::B32, &[0x0f, op], reg, rm);
    }

    /// `movsx reg64, byte/word [rm]` or `movsxd reg64, dword [rm]`.
    pub fn movsx(&mut self, from: W, reg: u8, rm: Rm) {
        match from {
            W::B8 => self.head(W::B64, &[0x0f, 0xbe], reg, rm),
            W::B16 => self.head(W::B64, &[0x0f, 0xbf], reg, rm),
            _ => self.head(W::B64, &[0x63], reg, rm),
        }
    }

    /// `mov reg64, imm64` (the shortest form that gives the value).
    pub fn mov_imm(&mut self, reg: u8, v: u64) {
        if v <= u32::MAX as u64 {
            // B8+r id with a 32-bit register zero-extends.
            if reg >= 8 {
                self.byte(0x41);
            }
            self.byte(0xb8 | (reg & 7));
            self.imm32(v as u32 as i32);
        } else if v as i64 == v as i32 as i64 {
            // C7 /0 id: sign-extended 32-bit immediate.
            self.head(W::B64, &[0xc7], 0, Rm::Reg(reg));
            self.imm32(v as i32);
        } else {
            self.byte(0x48 | (reg >> 3));
            self.byte(0xb8 | (reg & 7));
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// `op reg, r/m`.
    pub fn alu(&mut self, w: W, op: Alu, reg: u8, rm: Rm) {
        self.head(w, &[(op as u8) << 3 | 3], reg, rm);
    }

    /// `op r/m, reg`.
    pub fn alu_to(&mut self, w: W, op: Alu, rm: Rm, reg: u8) {
        self.head(w, &[(op as u8) << 3 | 1], reg, rm);
    }

    /// `op r/m, imm32` (sign-extended for 64-bit operands).
    pub fn alu_imm(&mut self, w: W, op: Alu, rm: Rm, imm: i32) {
        if (-128..128).contains(&imm) {
            self.head(w, &[0x83], op as u8, rm);
            self.byte(imm as u8);
        } else {
            self.head(w, &[0x81], op as u8, rm);
            self.imm32(imm);
        }
    }

    /// `shift r/m, imm8`.
    pub fn shift_imm(&mut self, w: W, op: Shift, rm: Rm, count: u8) {
        self.head(w, &[0xc1], op as u8, rm);
        self.byte(count);
    }

    /// `shift r/m, cl` (the hardware masks the count to 5 or 6 bits, as RISC-V does).
    pub fn shift_cl(&mut self, w: W, op: Shift, rm: Rm) {
        self.head(w, &[0xd3], op as u8, rm);
    }

    /// `imul reg, r/m` (low half).
    pub fn imul(&mut self, w: W, reg: u8, rm: Rm) {
        self.head(w, &[0x0f, 0xaf], reg, rm);
    }

    /// One-operand `mul r/m` (`signed`: `imul`): `rdx:rax = rax * r/m`.
    pub fn mul_wide(&mut self, signed: bool, rm: Rm) {
        self.head(W::B64, &[0xf7], if signed { 5 } else { 4 }, rm);
    }

    /// One-operand `div r/m` (`signed`: `idiv`): divides `rdx:rax` (`edx:eax` for 32
    /// bits) by r/m, quotient in rax, remainder in rdx. Faults on a zero divisor or a
    /// quotient that overflows: callers rule both out first.
    pub fn div(&mut self, w: W, signed: bool, rm: Rm) {
        self.head(w, &[0xf7], if signed { 7 } else { 6 }, rm);
    }

    /// `neg r/m`.
    pub fn neg(&mut self, w: W, rm: Rm) {
        self.head(w, &[0xf7], 3, rm);
    }

    /// `lea reg, [base + disp]` (64 bits).
    pub fn lea(&mut self, reg: u8, base: u8, disp: i32) {
        self.head(W::B64, &[0x8d], reg, Rm::at(base, disp));
    }

    /// `lea reg, [base + index]` (64 bits).
    pub fn lea_indexed(&mut self, reg: u8, base: u8, index: u8) {
        self.head(W::B64, &[0x8d], reg, Rm::indexed(base, index, 1));
    }

    /// `test r/m, reg`.
    pub fn test(&mut self, w: W, rm: Rm, reg: u8) {
        self.head(w, &[0x85], reg, rm);
    }

    /// `test al, imm8`.
    pub fn test_al(&mut self, imm: u8) {
        self.byte(0xa8);
        self.byte(imm);
    }

    /// `cmovcc reg, r/m` (32 or 64 bits; 32 zero-extends, whether it moves or not).
    pub fn cmov(&mut self, w: W, cond: Cond, reg: u8, rm: Rm) {
        debug_assert!(matches!(w, W::B32 | W::B64));
        self.head(w, &[0x0f, 0x40 | cond as u8], reg, rm);
    }

    /// `cqo` (64 bits: rdx = sign of rax) or `cdq` (32 bits: edx = sign of eax).
    pub fn sign_extend_rax(&mut self, w: W) {
        if w == W::B64 {
            self.byte(0x48);
        }
        self.byte(0x99);
    }

    /// `setcc al; movzx eax, al`: `rax = cond as u64`.
    pub fn set_rax(&mut self, cond: Cond) {
        self.buf
            .extend_from_slice(&[0x0f, 0x90 | cond as u8, 0xc0, 0x0f, 0xb6, 0xc0]);
    }

    /// `push reg`.
    pub fn push(&mut self, reg: u8) {
        if reg >= 8 {
            self.byte(0x41);
        }
        self.byte(0x50 | (reg & 7));
    }

    /// `pop reg`.
    pub fn pop(&mut self, reg: u8) {
        if reg >= 8 {
            self.byte(0x41);
        }
        self.byte(0x58 | (reg & 7));
    }

    /// `ret`.
    pub fn ret(&mut self) {
        self.byte(0xc3);
    }

    /// `jmp reg`.
    pub fn jmp_reg(&mut self, reg: u8) {
        self.head(W::B32, &[0xff], 4, Rm::Reg(reg));
    }

    /// `call reg`.
    pub fn call_reg(&mut self, reg: u8) {
        self.head(W::B32, &[0xff], 2, Rm::Reg(reg));
    }

    /// `jmp` to region offset `target`.
    pub fn jmp_to(&mut self, target: usize) {
        self.byte(0xe9);
        let rel = target as i64 - (self.here() as i64 + 4);
        self.imm32(rel as i32);
    }

    /// `call` region offset `target`.
    pub fn call_to(&mut self, target: usize) {
        self.byte(0xe8);
        let rel = target as i64 - (self.here() as i64 + 4);
        self.imm32(rel as i32);
    }

    /// `jcc` to region offset `target`.
    pub fn jcc_to(&mut self, cond: Cond, target: usize) {
        self.byte(0x0f);
        self.byte(0x80 | cond as u8);
        let rel = target as i64 - (self.here() as i64 + 4);
        self.imm32(rel as i32);
    }

    /// `jcc` to a label placed later: returns the fix-up for [`Asm::bind`].
    pub fn jcc_fwd(&mut self, cond: Cond) -> usize {
        self.byte(0x0f);
        self.byte(0x80 | cond as u8);
        self.imm32(0);
        self.buf.len() - 4
    }

    /// `jmp` to a label placed later.
    pub fn jmp_fwd(&mut self) -> usize {
        self.byte(0xe9);
        self.imm32(0);
        self.buf.len() - 4
    }

    /// Points the forward jump `fixup` at region offset `target` (which may lie in
    /// another buffer).
    pub fn bind_to(&mut self, fixup: usize, target: usize) {
        let rel = (target as i64 - (self.base + fixup + 4) as i64) as i32;
        self.buf[fixup..fixup + 4].copy_from_slice(&rel.to_le_bytes());
    }

    /// Points the forward jump `fixup` at the current position.
    pub fn bind(&mut self, fixup: usize) {
        let rel = (self.buf.len() - (fixup + 4)) as i32;
        self.buf[fixup..fixup + 4].copy_from_slice(&rel.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asm(f: impl FnOnce(&mut Asm)) -> Vec<u8> {
        let mut a = Asm::new(0);
        f(&mut a);
        a.buf
    }

    // Expected bytes from the Intel SDM encodings (checked against GNU as).
    #[test]
    fn encodes_register_and_memory_forms() {
        // mov rax, [rbx+0x10] = 48 8b 43 10 ; mov rax, [rbx+0x100] = 48 8b 83 00 01 00 00
        assert_eq!(
            asm(|a| a.mov_load(W::B64, RAX, Rm::at(RBX, 0x10))),
            [0x48, 0x8b, 0x43, 0x10]
        );
        assert_eq!(
            asm(|a| a.mov_load(W::B64, RAX, Rm::at(RBX, 0x100))),
            [0x48, 0x8b, 0x83, 0, 1, 0, 0]
        );
        // mov rax, [rbp] = 48 8b 45 00 (rbp needs a displacement); mov rax, [r13] = 49 8b 45 00
        assert_eq!(
            asm(|a| a.mov_load(W::B64, RAX, Rm::at(RBP, 0))),
            [0x48, 0x8b, 0x45, 0]
        );
        assert_eq!(
            asm(|a| a.mov_load(W::B64, RAX, Rm::at(R13, 0))),
            [0x49, 0x8b, 0x45, 0]
        );
        // lea rax, [rbp+64] = 48 8d 45 40; lea rcx, [rbp+0x200] = 48 8d 8d 00 02 00 00
        assert_eq!(asm(|a| a.lea(RAX, RBP, 64)), [0x48, 0x8d, 0x45, 0x40]);
        assert_eq!(
            asm(|a| a.lea(RCX, RBP, 0x200)),
            [0x48, 0x8d, 0x8d, 0, 2, 0, 0]
        );
        // mov [rbx+8], r13 = 4c 89 6b 08
        assert_eq!(
            asm(|a| a.mov_store(W::B64, Rm::at(RBX, 8), R13)),
            [0x4c, 0x89, 0x6b, 8]
        );
        // mov [rax], sil = 40 88 30
        assert_eq!(
            asm(|a| a.mov_store(W::B8, Rm::at(RAX, 0), RSI)),
            [0x40, 0x88, 0x30]
        );
        // mov rax, [r12] = 49 8b 04 24
        assert_eq!(
            asm(|a| a.mov_load(W::B64, RAX, Rm::at(R12, 0))),
            [0x49, 0x8b, 0x04, 0x24]
        );
        // add rax, r9 = 49 03 c1
        assert_eq!(
            asm(|a| a.alu(W::B64, Alu::Add, RAX, Rm::Reg(R9))),
            [0x49, 0x03, 0xc1]
        );
        // cmp dword [rdx+rcx*4], -1 = 83 3c 8a ff
        assert_eq!(
            asm(|a| a.alu_imm(
                W::B32,
                Alu::Cmp,
                Rm::Mem {
                    base: RDX,
                    index: Some((RCX, 4)),
                    disp: 0
                },
                -1
            )),
            [0x83, 0x3c, 0x8a, 0xff]
        );
        // shl r10d, cl = 41 d3 e2
        assert_eq!(
            asm(|a| a.shift_cl(W::B32, Shift::Shl, Rm::Reg(R10))),
            [0x41, 0xd3, 0xe2]
        );
        // movsxd rax, eax = 48 63 c0
        assert_eq!(
            asm(|a| a.movsx(W::B32, RAX, Rm::Reg(RAX))),
            [0x48, 0x63, 0xc0]
        );
        // mov r15, 0x1_0000_0000 = 49 bf 00 00 00 00 01 00 00 00
        assert_eq!(
            asm(|a| a.mov_imm(R15, 1 << 32)),
            [0x49, 0xbf, 0, 0, 0, 0, 1, 0, 0, 0]
        );
        // mov ecx, 7 = b9 07 00 00 00 ; add [rbx+8], rax = 48 01 43 08
        assert_eq!(asm(|a| a.mov_imm(RCX, 7)), [0xb9, 7, 0, 0, 0]);
        assert_eq!(
            asm(|a| a.alu_to(W::B64, Alu::Add, Rm::at(RBX, 8), RAX)),
            [0x48, 0x01, 0x43, 8]
        );
        // mov rax, -2 = 48 c7 c0 fe ff ff ff
        assert_eq!(
            asm(|a| a.mov_imm(RAX, -2i64 as u64)),
            [0x48, 0xc7, 0xc0, 0xfe, 0xff, 0xff, 0xff]
        );
        // imul rax, [rbx+0x200] = 48 0f af 83 00 02 00 00
        assert_eq!(
            asm(|a| a.imul(W::B64, RAX, Rm::at(RBX, 0x200))),
            [0x48, 0x0f, 0xaf, 0x83, 0, 2, 0, 0]
        );
        // call rax = ff d0 ; call r11 = 41 ff d3
        assert_eq!(asm(|a| a.call_reg(RAX)), [0xff, 0xd0]);
        assert_eq!(asm(|a| a.call_reg(R11)), [0x41, 0xff, 0xd3]);
        // jmp rax = ff e0 ; push r12 = 41 54 ; pop rbp = 5d
        assert_eq!(asm(|a| a.jmp_reg(RAX)), [0xff, 0xe0]);
        assert_eq!(asm(|a| a.push(R12)), [0x41, 0x54]);
        assert_eq!(asm(|a| a.pop(RBP)), [0x5d]);
        // movzx eax, word [rax] = 0f b7 00
        assert_eq!(
            asm(|a| a.movzx(W::B16, RAX, Rm::at(RAX, 0))),
            [0x0f, 0xb7, 0x00]
        );
        // mov word [rax-8], r8w = 66 44 89 40 f8
        assert_eq!(
            asm(|a| a.mov_store(W::B16, Rm::at(RAX, -8), R8)),
            [0x66, 0x44, 0x89, 0x40, 0xf8]
        );
        // idiv rcx = 48 f7 f9 ; div ecx = f7 f1 ; idiv r9 = 49 f7 f9 ; div qword [rbx+8] = 48 f7 73 08
        assert_eq!(
            asm(|a| a.div(W::B64, true, Rm::Reg(RCX))),
            [0x48, 0xf7, 0xf9]
        );
        assert_eq!(asm(|a| a.div(W::B32, false, Rm::Reg(RCX))), [0xf7, 0xf1]);
        assert_eq!(
            asm(|a| a.div(W::B64, true, Rm::Reg(R9))),
            [0x49, 0xf7, 0xf9]
        );
        assert_eq!(
            asm(|a| a.div(W::B64, false, Rm::at(RBX, 8))),
            [0x48, 0xf7, 0x73, 0x08]
        );
        // neg rax = 48 f7 d8 ; neg eax = f7 d8 ; test rcx, rcx = 48 85 c9 ; test ecx, ecx = 85 c9
        assert_eq!(asm(|a| a.neg(W::B64, Rm::Reg(RAX))), [0x48, 0xf7, 0xd8]);
        assert_eq!(asm(|a| a.neg(W::B32, Rm::Reg(RAX))), [0xf7, 0xd8]);
        assert_eq!(
            asm(|a| a.test(W::B64, Rm::Reg(RCX), RCX)),
            [0x48, 0x85, 0xc9]
        );
        assert_eq!(asm(|a| a.test(W::B32, Rm::Reg(RCX), RCX)), [0x85, 0xc9]);
        // cqo = 48 99 ; cdq = 99
        assert_eq!(asm(|a| a.sign_extend_rax(W::B64)), [0x48, 0x99]);
        assert_eq!(asm(|a| a.sign_extend_rax(W::B32)), [0x99]);
    }

    #[test]
    fn encodes_conditional_moves_and_the_alignment_test() {
        // cmovg rdx, [rbx+0x10] = 48 0f 4f 53 10; cmovb r10d, ecx = 44 0f 42 d1
        assert_eq!(
            asm(|a| a.cmov(W::B64, Cond::G, RDX, Rm::at(RBX, 0x10))),
            [0x48, 0x0f, 0x4f, 0x53, 0x10]
        );
        assert_eq!(
            asm(|a| a.cmov(W::B32, Cond::B, R10, Rm::Reg(RCX))),
            [0x44, 0x0f, 0x42, 0xd1]
        );
        // cmovl rax, r9 = 49 0f 4c c1; test al, 7 = a8 07
        assert_eq!(
            asm(|a| a.cmov(W::B64, Cond::L, RAX, Rm::Reg(R9))),
            [0x49, 0x0f, 0x4c, 0xc1]
        );
        assert_eq!(asm(|a| a.test_al(7)), [0xa8, 0x07]);
    }

    #[test]
    fn jumps_are_relative_to_the_region() {
        let mut a = Asm::new(0x100);
        a.jmp_to(0x100);
        // e9 rel32 with rel = 0x100 - 0x105
        assert_eq!(a.buf, [0xe9, 0xfb, 0xff, 0xff, 0xff]);
        let f = a.jcc_fwd(Cond::Ne);
        a.ret();
        a.bind(f);
        assert_eq!(&a.buf[5..], [0x0f, 0x85, 1, 0, 0, 0, 0xc3]);
    }
}
