//! Random instruction blocks for the differential test.
//!
//! A block is straight-line RV64IMAFDC code (plus short forward branches) that runs between
//! a prologue loading every register from an init table and an epilogue storing every
//! register next to the block's scratch buffer. Two registers are pinned to the buffer's
//! base so that loads, stores, LR/SC and AMOs stay inside it: `x8` (the base the compressed
//! `c.lw`/`c.sd` family needs) and `x2` (the base of the `c.*sp` family). Nothing in a block
//! may write them.
//!
//! The generator avoids only what the specification leaves to the implementation, so that
//! any difference from QEMU is a bug: no stores between an LR and its SC (whether a store
//! by the same hart breaks the reservation is implementation-defined), no SC after an LR
//! without its pair, no `frm` values 5..7 (dynamic-rounding instructions would trap), no
//! reads of counters or time. Random encodings (`.4byte`, `.2byte`) probe the decoder:
//! they are confined so that whatever they decode to stays inside the buffer and cannot
//! jump, and anything illegal is counted and skipped by both wrappers.

/// Labels in item text start with this placeholder, which the program source replaces
/// with a prefix unique to the block (the same block may appear many times while shrinking).
pub const LABEL: &str = "@L";

/// Size of each block's scratch buffer.
pub const BUF_SIZE: u64 = 256;

/// xorshift64*: tiny, seedable and the same on every host.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is remapped, xorshift would stay at 0).
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    /// A random element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// One unit of a block: an instruction, or a few that only make sense together (an AMO
/// and the `addi` computing its address). The minimiser removes whole items, never labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Assembly lines.
    pub text: String,
    /// False for branch targets.
    pub removable: bool,
}

/// Register and memory contents a block starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    /// `x0..x31` (`x0`, `x2` and `x8` are not loaded: zero, and the buffer base).
    pub x: [u64; 32],
    /// `f0..f31`.
    pub f: [u64; 32],
    /// `fcsr` (a valid `frm`).
    pub fcsr: u64,
    /// The scratch buffer.
    pub buf: Vec<u8>,
}

/// A generated block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Starting state.
    pub init: Init,
    /// The code.
    pub items: Vec<Item>,
}

/// Integer values where arithmetic goes wrong: signs, word boundaries, division overflow.
const INT_SPECIALS: [u64; 16] = [
    0,
    1,
    2,
    u64::MAX,
    u64::MAX - 1,
    i64::MIN as u64,
    i64::MAX as u64,
    0x8000_0000,
    0x7fff_ffff,
    0xffff_ffff,
    0xffff_ffff_8000_0000,
    0x1_0000_0000,
    0x0000_0000_ffff_fffe,
    0xffff_ffff_7fff_ffff,
    0x8000_0000_0000_0001,
    0x3f,
];

/// Single-precision bit patterns around the edges (zeros, infinities, NaNs, subnormals,
/// ties, the limits of integer conversion).
const F32_SPECIALS: [u32; 28] = [
    0x0000_0000,
    0x8000_0000,
    0x7f80_0000,
    0xff80_0000,
    0x7fc0_0000,
    0xffc0_0000,
    0x7f80_0001,
    0x7fa0_0123,
    0x0000_0001,
    0x807f_ffff,
    0x0080_0000,
    0x7f7f_ffff,
    0xff7f_ffff,
    0x3f80_0000,
    0xbf80_0000,
    0x3fc0_0000,
    0x4020_0000,
    0xc020_0000,
    0x3f00_0000,
    0x4f00_0000,
    0xcf00_0000,
    0x4f80_0000,
    0x5f00_0000,
    0xdf00_0000,
    0x5f80_0000,
    0x4effffff,
    0x3eaa_aaab,
    0x0040_0000,
];

/// Double-precision bit patterns, as [`F32_SPECIALS`].
const F64_SPECIALS: [u64; 30] = [
    0x0000_0000_0000_0000,
    0x8000_0000_0000_0000,
    0x7ff0_0000_0000_0000,
    0xfff0_0000_0000_0000,
    0x7ff8_0000_0000_0000,
    0xfff8_0000_0000_0000,
    0x7ff0_0000_0000_0001,
    0x7ff4_0000_0000_0123,
    0x0000_0000_0000_0001,
    0x800f_ffff_ffff_ffff,
    0x0010_0000_0000_0000,
    0x7fef_ffff_ffff_ffff,
    0x3ff0_0000_0000_0000,
    0xbff0_0000_0000_0000,
    0x3ff8_0000_0000_0000,
    0x4004_0000_0000_0000,
    0xc004_0000_0000_0000,
    0x3fe0_0000_0000_0000,
    0x41e0_0000_0000_0000,
    0xc1e0_0000_0000_0000,
    0xc1e0_0000_0020_0000,
    0x41df_ffff_ffc0_0000,
    0x41f0_0000_0000_0000,
    0x43e0_0000_0000_0000,
    0xc3e0_0000_0000_0000,
    0x43f0_0000_0000_0000,
    0x47ef_ffff_e000_0000,
    0x3810_0000_0000_0000,
    0x36a0_0000_0000_0000,
    0x3fd5_5555_5555_5555,
];

/// Rounding-mode suffixes: static modes and `dyn` (or none, which means `dyn`).
const RMS: [&str; 7] = ["", ", rne", ", rtz", ", rdn", ", rup", ", rmm", ", dyn"];

fn int_value(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 | 1 => *rng.pick(&INT_SPECIALS),
        2 => rng.range(-300, 300) as u64,
        3 => rng.next() as i32 as i64 as u64,
        4 => rng.next() >> rng.below(64),
        _ => rng.next(),
    }
}

fn f32_value(rng: &mut Rng) -> u32 {
    match rng.below(4) {
        0 | 1 => *rng.pick(&F32_SPECIALS),
        // Moderate exponents, so that arithmetic does not just overflow.
        2 => (rng.next() as u32 & 0x807f_ffff) | ((rng.range(100, 154) as u32) << 23),
        _ => rng.next() as u32,
    }
}

fn f64_value(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 | 1 => *rng.pick(&F64_SPECIALS),
        2 => (rng.next() & 0x800f_ffff_ffff_ffff) | ((rng.range(990, 1060) as u64) << 52),
        _ => rng.next(),
    }
}

/// A value for an `f` register: NaN-boxed singles, doubles, and sometimes a single that is
/// not properly boxed (which single-precision instructions must read as the canonical NaN).
fn f_reg_value(rng: &mut Rng) -> u64 {
    match rng.below(9) {
        0..=3 => 0xffff_ffff_0000_0000 | f32_value(rng) as u64,
        4..=7 => f64_value(rng),
        _ => (rng.next() & 0xffff_fffe_0000_0000) | f32_value(rng) as u64,
    }
}

impl Init {
    /// Random starting state.
    pub fn random(rng: &mut Rng) -> Self {
        let mut x = [0u64; 32];
        for v in x.iter_mut().skip(1) {
            *v = int_value(rng);
        }
        let mut f = [0u64; 32];
        for v in f.iter_mut() {
            *v = f_reg_value(rng);
        }
        let fcsr = (rng.below(5) << 5) | rng.below(32);
        let mut buf = Vec::with_capacity(BUF_SIZE as usize);
        while buf.len() < BUF_SIZE as usize {
            let word = match rng.below(4) {
                0 => int_value(rng),
                1 => f_reg_value(rng),
                _ => rng.next(),
            };
            buf.extend_from_slice(&word.to_le_bytes());
        }
        Self { x, f, fcsr, buf }
    }
}

/// Registers a block may write: all but the pinned `x2` and `x8` (x0 included: writes to it
/// must vanish).
fn wreg(rng: &mut Rng) -> u32 {
    loop {
        let r = rng.below(32) as u32;
        if r != 2 && r != 8 {
            return r;
        }
    }
}

/// A writable register other than x0 (for address computations and compressed forms).
fn wreg_nz(rng: &mut Rng) -> u32 {
    loop {
        let r = wreg(rng);
        if r != 0 {
            return r;
        }
    }
}

/// A writable register among x9..x15 (the compressed 3-bit field, minus the pinned x8).
fn wreg_c(rng: &mut Rng) -> u32 {
    rng.range(9, 15) as u32
}

/// Any register as a source.
fn rreg(rng: &mut Rng) -> u32 {
    rng.below(32) as u32
}

fn freg(rng: &mut Rng) -> u32 {
    rng.below(32) as u32
}

/// Picks an offset for an access of `size` bytes inside the buffer: aligned, or now and
/// then misaligned (both machines must emulate misaligned loads and stores alike).
fn offset(rng: &mut Rng, size: u64, may_misalign: bool) -> u64 {
    if may_misalign && rng.one_in(8) {
        rng.below(BUF_SIZE - size + 1)
    } else {
        rng.below(BUF_SIZE / size) * size
    }
}

/// Builds blocks.
pub struct Generator<'a> {
    rng: &'a mut Rng,
    items: Vec<Item>,
    /// Forward labels waiting to be placed: (name, items still to skip).
    pending: Vec<(String, u32)>,
    labels: u32,
    /// An LR without its SC happened: a lone SC could now pair with it.
    lr_seen: bool,
    /// Extra percentage of random encodings.
    encodings: u64,
}

impl<'a> Generator<'a> {
    /// Generates a block of about `len` items, of which about `encodings` percent are
    /// random encodings (on top of the 2% of the regular mix).
    pub fn block(rng: &'a mut Rng, len: usize, encodings: u64) -> Block {
        let init = Init::random(rng);
        let mut g = Generator {
            rng,
            items: Vec::new(),
            pending: Vec::new(),
            labels: 0,
            lr_seen: false,
            encodings,
        };
        while g.items.len() < len {
            g.one();
        }
        for (name, _) in std::mem::take(&mut g.pending) {
            g.items.push(Item {
                text: format!("{name}:"),
                removable: false,
            });
        }
        Block {
            init,
            items: g.items,
        }
    }

    fn push(&mut self, text: String) {
        self.items.push(Item {
            text,
            removable: true,
        });
        let mut placed = Vec::new();
        for (name, left) in &mut self.pending {
            *left -= 1;
            if *left == 0 {
                placed.push(name.clone());
            }
        }
        self.pending.retain(|(_, left)| *left > 0);
        for name in placed {
            self.items.push(Item {
                text: format!("{name}:"),
                removable: false,
            });
        }
    }

    /// A fresh label name; [`Generator::push_branch`] places it.
    fn new_label(&mut self) -> String {
        let name = format!("{LABEL}{}", self.labels);
        self.labels += 1;
        name
    }

    /// Pushes a branch to `label` and places the label after the next `skip` items.
    fn push_branch(&mut self, text: String, label: String, skip: u32) {
        self.push(text);
        self.pending.push((label, skip));
    }

    fn one(&mut self) {
        let r = &mut *self.rng;
        if r.below(100) < self.encodings {
            let text = if r.one_in(2) {
                encoding32(r)
            } else {
                encoding16(r)
            };
            return self.push(text);
        }
        let kind = r.below(100);
        let text = match kind {
            0..=17 => alu_rr(r),
            18..=29 => alu_imm(r),
            30..=37 => muldiv(r),
            38..=45 => load_store(r),
            46..=53 => compressed(r),
            54..=57 => {
                let text = special_li(r);
                self.push(text);
                let r = &mut *self.rng;
                muldiv(r)
            }
            58..=61 => return self.branch(),
            62..=66 => return self.atomic(),
            67..=90 => float(r),
            91..=95 => fcsr_op(r),
            96..=97 => return self.self_modifying(),
            98 => encoding32(r),
            99 => encoding16(r),
            _ => misc(r),
        };
        self.push(text);
    }

    fn branch(&mut self) {
        let skip = self.rng.range(1, 3) as u32;
        let label = self.new_label();
        let r = &mut *self.rng;
        let text = match r.below(7) {
            0..=2 => {
                let op = r.pick(&["beq", "bne", "blt", "bge", "bltu", "bgeu"]);
                format!("{op} x{}, x{}, {label}", rreg(r), rreg(r))
            }
            3 => {
                let op = r.pick(&["c.beqz", "c.bnez"]);
                format!("{op} x{}, {label}", r.range(8, 15))
            }
            4 => format!("jal x{}, {label}", wreg(r)),
            5 => format!("c.j {label}"),
            _ => {
                // jalr through a register (rd == rs1 included: the target is read first).
                let t = wreg_nz(r);
                let rd = if r.one_in(3) { t } else { wreg(r) };
                match r.below(3) {
                    0 => format!("lla x{t}, {label}\n\tc.jr x{t}"),
                    1 => format!("lla x{t}, {label}\n\tc.jalr x{t}"),
                    _ => format!("lla x{t}, {label}-12\n\tjalr x{rd}, 12(x{t})"),
                }
            }
        };
        self.push_branch(text, label, skip);
    }

    /// Code that rewrites itself: a slot runs as two `c.nop`s, is overwritten by a store
    /// (a whole 32-bit instruction, or a compressed one in its first half), and runs again
    /// after `fence.i`. A decode cache that misses the store runs the stale slot.
    fn self_modifying(&mut self) {
        let r = &mut *self.rng;
        let count = wreg_nz(r);
        let mut tmp = || loop {
            let t = wreg_nz(r);
            if t != count {
                return t;
            }
        };
        let t = tmp();
        let v = loop {
            let v = tmp();
            if v != t {
                break v;
            }
        };
        // The patched instruction may write anything but the loop counter.
        let rd = loop {
            let d = wreg(r);
            if d != count {
                break d;
            }
        };
        let (store, word) = patch(r, rd);
        let top = self.new_label();
        let out = self.new_label();
        let text = format!(
            "li x{count}, 2\n\
             {top}:\n\
             \t.2byte 0x0001, 0x0001\n\
             \taddi x{count}, x{count}, -1\n\
             \tbeqz x{count}, {out}\n\
             \tlla x{t}, {top}\n\
             \tli x{v}, {word:#x}\n\
             \t{store} x{v}, 0(x{t})\n\
             \tfence.i\n\
             \tj {top}\n\
             {out}:"
        );
        self.push(text);
    }

    fn atomic(&mut self) {
        let r = &mut *self.rng;
        let (sz, size) = if r.one_in(2) { ("w", 4) } else { ("d", 8) };
        let order = *r.pick(&["", ".aq", ".rl", ".aqrl"]);
        let t = wreg_nz(r);
        let off = offset(r, size, false);
        let addr = format!("addi x{t}, x8, {off}");
        let text = match r.below(6) {
            0 | 1 => {
                let op = r.pick(&[
                    "amoswap", "amoadd", "amoxor", "amoand", "amoor", "amomin", "amomax",
                    "amominu", "amomaxu",
                ]);
                format!(
                    "{addr}\n\t{op}.{sz}{order} x{}, x{}, (x{t})",
                    wreg(r),
                    rreg(r)
                )
            }
            2 | 3 => {
                // LR, a few register-only instructions that keep the address, SC.
                let mut rd = wreg(r);
                while rd == t {
                    rd = wreg(r);
                }
                let mut text = format!("{addr}\n\tlr.{sz}{order} x{rd}, (x{t})");
                for _ in 0..r.below(3) {
                    let mut d = wreg(r);
                    while d == t {
                        d = wreg(r);
                    }
                    let op = r.pick(&["add", "xor", "sub", "or"]);
                    text += &format!("\n\t{op} x{d}, x{}, x{}", rreg(r), rreg(r));
                }
                text += &format!("\n\tsc.{sz}{order} x{}, x{}, (x{t})", wreg(r), rreg(r));
                text
            }
            4 => {
                self.lr_seen = true;
                format!("{addr}\n\tlr.{sz}{order} x{}, (x{t})", wreg(r))
            }
            _ if !self.lr_seen => {
                // No reservation is held: the SC must fail, write 1 and leave memory alone.
                format!(
                    "{addr}\n\tsc.{sz}{order} x{}, x{}, (x{t})",
                    wreg(r),
                    rreg(r)
                )
            }
            _ => format!("{addr}\n\tamoor.{sz} x{}, x0, (x{t})", wreg(r)),
        };
        self.push(text);
    }
}

fn alu_rr(r: &mut Rng) -> String {
    let op = r.pick(&[
        "add", "sub", "sll", "slt", "sltu", "xor", "srl", "sra", "or", "and", "addw", "subw",
        "sllw", "srlw", "sraw",
    ]);
    format!("{op} x{}, x{}, x{}", wreg(r), rreg(r), rreg(r))
}

fn alu_imm(r: &mut Rng) -> String {
    let rd = wreg(r);
    let rs = rreg(r);
    match r.below(14) {
        0..=5 => {
            let op = r.pick(&["addi", "slti", "sltiu", "xori", "ori", "andi", "addiw"]);
            let imm = if r.one_in(3) {
                *r.pick(&[-2048, 2047, -1, 0, 1])
            } else {
                r.range(-2048, 2047)
            };
            format!("{op} x{rd}, x{rs}, {imm}")
        }
        6..=8 => {
            let op = r.pick(&["slli", "srli", "srai"]);
            format!("{op} x{rd}, x{rs}, {}", r.below(64))
        }
        9..=10 => {
            let op = r.pick(&["slliw", "srliw", "sraiw"]);
            format!("{op} x{rd}, x{rs}, {}", r.below(32))
        }
        11..=12 => format!("lui x{rd}, {:#x}", r.below(1 << 20)),
        _ => format!("auipc x{rd}, {:#x}", r.below(1 << 20)),
    }
}

fn muldiv(r: &mut Rng) -> String {
    let op = r.pick(&[
        "mul", "mulh", "mulhsu", "mulhu", "div", "divu", "rem", "remu", "mulw", "divw", "divuw",
        "remw", "remuw",
    ]);
    format!("{op} x{}, x{}, x{}", wreg(r), rreg(r), rreg(r))
}

/// Loads a value that makes the next M instruction interesting (zero, -1, MIN).
fn special_li(r: &mut Rng) -> String {
    let v = *r.pick(&[
        0u64,
        u64::MAX,
        i64::MIN as u64,
        0xffff_ffff_8000_0000,
        0x8000_0000,
    ]);
    format!("li x{}, {:#x}", wreg_nz(r), v)
}

fn load_store(r: &mut Rng) -> String {
    let base = if r.one_in(3) { 2 } else { 8 };
    match r.below(4) {
        0 | 1 => {
            let (op, size) = *r.pick(&[
                ("lb", 1),
                ("lbu", 1),
                ("lh", 2),
                ("lhu", 2),
                ("lw", 4),
                ("lwu", 4),
                ("ld", 8),
            ]);
            format!("{op} x{}, {}(x{base})", wreg(r), offset(r, size, true))
        }
        2 => {
            let (op, size) = *r.pick(&[("sb", 1), ("sh", 2), ("sw", 4), ("sd", 8)]);
            format!("{op} x{}, {}(x{base})", rreg(r), offset(r, size, true))
        }
        _ => {
            let (op, size) = *r.pick(&[("flw", 4), ("fld", 8), ("fsw", 4), ("fsd", 8)]);
            format!("{op} f{}, {}(x{base})", freg(r), offset(r, size, true))
        }
    }
}

/// Explicit compressed forms (the assembler also compresses plain mnemonics when it can).
fn compressed(r: &mut Rng) -> String {
    let nz6 = |r: &mut Rng| loop {
        let v = r.range(-32, 31);
        if v != 0 {
            return v;
        }
    };
    match r.below(22) {
        0 => format!("c.addi x{}, {}", wreg_nz(r), nz6(r)),
        1 => format!("c.addiw x{}, {}", wreg_nz(r), r.range(-32, 31)),
        2 => format!("c.li x{}, {}", wreg_nz(r), r.range(-32, 31)),
        3 => {
            let imm = if r.one_in(2) {
                r.range(1, 31)
            } else {
                r.range(0xfffe0, 0xfffff)
            };
            format!("c.lui x{}, {imm:#x}", wreg_nz(r))
        }
        4 => format!("c.slli x{}, {}", wreg_nz(r), r.range(1, 63)),
        5 => format!("c.srli x{}, {}", wreg_c(r), r.range(1, 63)),
        6 => format!("c.srai x{}, {}", wreg_c(r), r.range(1, 63)),
        7 => format!("c.andi x{}, {}", wreg_c(r), r.range(-32, 31)),
        8 => format!("c.mv x{}, x{}", wreg_nz(r), r.range(1, 31)),
        9 => format!("c.add x{}, x{}", wreg_nz(r), r.range(1, 31)),
        10 => {
            let op = r.pick(&["c.sub", "c.xor", "c.or", "c.and", "c.subw", "c.addw"]);
            format!("{op} x{}, x{}", wreg_c(r), r.range(8, 15))
        }
        11 => format!("c.lw x{}, {}(x8)", wreg_c(r), r.below(32) * 4),
        12 => format!("c.ld x{}, {}(x8)", wreg_c(r), r.below(32) * 8),
        13 => format!("c.sw x{}, {}(x8)", r.range(8, 15), r.below(32) * 4),
        14 => format!("c.sd x{}, {}(x8)", r.range(8, 15), r.below(32) * 8),
        15 => {
            let op = r.pick(&["c.fld", "c.fsd"]);
            format!("{op} f{}, {}(x8)", r.range(8, 15), r.below(32) * 8)
        }
        16 => format!("c.lwsp x{}, {}(x2)", wreg_nz(r), r.below(64) * 4),
        17 => format!("c.ldsp x{}, {}(x2)", wreg_nz(r), r.below(32) * 8),
        18 => {
            let (op, scale, n) = *r.pick(&[("c.swsp", 4, 64), ("c.sdsp", 8, 32)]);
            format!("{op} x{}, {}(x2)", rreg(r), r.below(n) * scale)
        }
        19 => {
            let op = r.pick(&["c.fldsp", "c.fsdsp"]);
            format!("{op} f{}, {}(x2)", freg(r), r.below(32) * 8)
        }
        20 => format!("c.addi4spn x{}, x2, {}", wreg_c(r), r.range(1, 255) * 4),
        _ => "c.nop".to_string(),
    }
}

fn float(r: &mut Rng) -> String {
    let p = if r.one_in(2) { "s" } else { "d" };
    let rm = *r.pick(&RMS);
    let (fd, f1, f2, f3) = (freg(r), freg(r), freg(r), freg(r));
    match r.below(20) {
        0..=4 => {
            let op = r.pick(&["fadd", "fsub", "fmul", "fdiv"]);
            format!("{op}.{p} f{fd}, f{f1}, f{f2}{rm}")
        }
        5 => format!("fsqrt.{p} f{fd}, f{f1}{rm}"),
        6..=7 => {
            let op = r.pick(&["fmadd", "fmsub", "fnmadd", "fnmsub"]);
            format!("{op}.{p} f{fd}, f{f1}, f{f2}, f{f3}{rm}")
        }
        8 => {
            let op = r.pick(&["fmin", "fmax"]);
            format!("{op}.{p} f{fd}, f{f1}, f{f2}")
        }
        9 => {
            let op = r.pick(&["fsgnj", "fsgnjn", "fsgnjx"]);
            format!("{op}.{p} f{fd}, f{f1}, f{f2}")
        }
        10..=11 => {
            let op = r.pick(&["feq", "flt", "fle"]);
            format!("{op}.{p} x{}, f{f1}, f{f2}", wreg(r))
        }
        12 => format!("fclass.{p} x{}, f{f1}", wreg(r)),
        13..=14 => {
            let i = r.pick(&["w", "wu", "l", "lu"]);
            format!("fcvt.{i}.{p} x{}, f{f1}{rm}", wreg(r))
        }
        15..=16 => {
            let i = r.pick(&["w", "wu", "l", "lu"]);
            // Conversions from 32-bit integers to double are exact: no rounding mode.
            let rm = if p == "d" && i.starts_with('w') {
                ""
            } else {
                rm
            };
            format!("fcvt.{p}.{i} f{fd}, x{}{rm}", rreg(r))
        }
        17 => {
            if p == "s" {
                format!("fcvt.s.d f{fd}, f{f1}{rm}")
            } else {
                format!("fcvt.d.s f{fd}, f{f1}")
            }
        }
        _ => match r.below(4) {
            0 => format!("fmv.x.w x{}, f{f1}", wreg(r)),
            1 => format!("fmv.x.d x{}, f{f1}", wreg(r)),
            2 => format!("fmv.w.x f{fd}, x{}", rreg(r)),
            _ => format!("fmv.d.x f{fd}, x{}", rreg(r)),
        },
    }
}

/// Reads and writes of `fflags`, `frm` and `fcsr` that keep `frm` valid.
fn fcsr_op(r: &mut Rng) -> String {
    let rd = wreg(r);
    match r.below(10) {
        0 => format!("csrr x{rd}, fflags"),
        1 => format!("csrr x{rd}, frm"),
        2 => format!("csrr x{rd}, fcsr"),
        3 => format!("fsrmi x{rd}, {}", r.below(5)),
        4 => format!("fsflagsi x{rd}, {}", r.below(32)),
        5 => format!("fsflags x{rd}, x{}", rreg(r)),
        6 => {
            let op = r.pick(&["csrrs", "csrrc"]);
            format!("{op} x{rd}, fflags, x{}", rreg(r))
        }
        7 => format!("csrrci x{rd}, frm, {}", r.below(32)),
        8 => {
            let op = r.pick(&["csrrsi", "csrrci", "csrrwi"]);
            // A 5-bit immediate written to fcsr leaves frm = 0 (csrrwi) or unchanged.
            format!("{op} x{rd}, fcsr, {}", r.below(32))
        }
        _ => format!("csrrsi x{rd}, fflags, {}", r.below(32)),
    }
}

fn misc(r: &mut Rng) -> String {
    match r.below(4) {
        0 => "fence".to_string(),
        1 => "fence.i".to_string(),
        2 => format!("nop\n\tadd x0, x{}, x{}", rreg(r), rreg(r)),
        _ => special_li(r),
    }
}

/// A store and the value it writes over a self-modifying slot: an I- or R-type
/// instruction writing `rd` (`sw`), or a compressed `c.addi`/`c.li`/`c.slli` writing `rd`
/// (`sh`, which leaves the slot's second `c.nop` in place).
fn patch(r: &mut Rng, rd: u32) -> (&'static str, u32) {
    let rs1 = rreg(r);
    let rs2 = rreg(r);
    if rd != 0 && r.one_in(3) {
        let imm = r.range(1, 31) as u32;
        let funct3 = *r.pick(&[0b000, 0b010]); // c.addi, c.li
        let half = if r.one_in(3) {
            (rd << 7) | (imm << 2) | 0b10 // c.slli rd, imm
        } else {
            (funct3 << 13) | (rd << 7) | (imm << 2) | 0b01
        };
        return ("sh", half);
    }
    let word = match r.below(3) {
        0 => {
            let imm = (r.range(-2048, 2047) as u32) & 0xfff;
            let funct3 = *r.pick(&[0b000, 0b100, 0b110, 0b111]); // addi xori ori andi
            (imm << 20) | (rs1 << 15) | (funct3 << 12) | (rd << 7) | 0x13
        }
        1 => {
            // add sub xor mul divu
            let (f7, f3) = *r.pick(&[(0, 0), (0x20, 0), (0, 4), (1, 0), (1, 5)]);
            (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x33
        }
        _ => {
            let shamt = r.below(32) as u32;
            (shamt << 20) | (rs1 << 15) | (0b001 << 12) | (rd << 7) | 0x1b // slliw
        }
    };
    ("sw", word)
}

/// A random 32-bit word in one of the major opcodes whose effects stay inside the block:
/// arithmetic, floating point, CSRs (not the counters), fences, and memory accesses
/// through `x8` within the slot. `rd` never names a pinned register. Reserved and
/// custom opcodes are included: they must be illegal on both sides.
fn encoding32(r: &mut Rng) -> String {
    loop {
        let opcode = *r.pick(&[
            0x33u32, 0x13, 0x3b, 0x1b, 0x37, 0x17, 0x53, 0x53, 0x53, 0x43, 0x47, 0x4b, 0x4f, 0x0f,
            0x73, 0x73, 0x03, 0x23, 0x07, 0x27, 0x2f, 0x0b, 0x2b, 0x5b, 0x7b, 0x57, 0x1f, 0x3f,
            0x7f, 0x6b, 0x77,
        ]);
        let mut w = (r.next() as u32 & !0x7f) | opcode;
        let rd = (w >> 7) & 31;
        if rd == 2 || rd == 8 {
            w = (w & !(31 << 7)) | (9 << 7);
        }
        match opcode {
            // Loads, stores and AMOs: base x8, offsets 0..255 (immediate bits 28..31 clear).
            0x03 | 0x07 | 0x23 | 0x27 => {
                w = (w & !(31 << 15) & 0x0fff_ffff) | (8 << 15);
                // Widths 0, 5, 6, 7 of LOAD-FP/STORE-FP are vector loads and stores, and
                // QEMU 10's user mode runs the whole-register ones even with V disabled.
                if opcode & 4 != 0 && matches!((w >> 12) & 7, 0 | 5 | 6 | 7) {
                    continue;
                }
            }
            0x2f => {
                w = (w & !(31 << 15)) | (8 << 15);
                // No LR/SC: their pairing rules leave room to differ.
                if matches!(w >> 27, 0b00010 | 0b00011) {
                    continue;
                }
            }
            0x73 => {
                let funct3 = (w >> 12) & 7;
                // ECALL, EBREAK and WFI do not belong in a block.
                if funct3 == 0 && matches!(w & !(31 << 7), 0x0000_0073 | 0x0010_0073 | 0x1050_0073)
                {
                    continue;
                }
                // Counters and time differ between runs of QEMU.
                if funct3 != 0 && (w >> 20) & 0xf00 == 0xc00 {
                    continue;
                }
            }
            _ => {}
        }
        return format!(".4byte {w:#010x}");
    }
}

/// A random 16-bit word in quadrants 0..2, confined like [`encoding32`]: no jumps or
/// branches, memory through `x8` or `x2` only, no writes to them.
fn encoding16(r: &mut Rng) -> String {
    let bad = |rd: u32| rd == 2 || rd == 8;
    loop {
        let mut h = r.next() as u32 & 0xffff;
        if h & 3 == 3 {
            h &= !3;
        }
        let rd = (h >> 7) & 31;
        let rs2 = (h >> 2) & 31;
        match (h & 3, h >> 13) {
            // c.addi4spn: rd' = x8 + rd'; keep it off x8.
            (0, 0) if (h >> 2) & 7 == 0 => h |= 1 << 2,
            // Loads and stores: base rs1' = x8 (offsets stay in the slot).
            (0, 1 | 5 | 6 | 7) => h &= !(7 << 7),
            (0, 2 | 3) => {
                h &= !(7 << 7);
                if (h >> 2) & 7 == 0 {
                    h |= 1 << 2;
                }
            }
            // c.addi, c.addiw, c.li, c.lui (rd = 2 would be c.addi16sp), c.slli, sp loads.
            (1, 0..=3) | (2, 0..=3) if bad(rd) => continue,
            // Arithmetic on rd' = x8 + rd'.
            (1, 4) if (h >> 7) & 7 == 0 => continue,
            // c.j, c.beqz, c.bnez.
            (1, 5..=7) => continue,
            (2, 4) => {
                let bit12 = (h >> 12) & 1;
                match (bit12, rd, rs2) {
                    // c.jr and c.jalr jump, c.ebreak traps; c.jr x0 is reserved: keep.
                    (0, 0, 0) => {}
                    (_, _, 0) => continue,
                    // c.mv, c.add.
                    _ if bad(rd) => continue,
                    _ => {}
                }
            }
            _ => {}
        }
        return format!(".2byte {h:#06x}");
    }
}
