//! Turning blocks into two programs (Linux user-mode for `qemu-riscv64`, bare metal for
//! the machine), running both and comparing what each block left behind.
//!
//! Both programs share one assembly source and one linker script: the blocks live at
//! `0x8001_0000`, their init tables and result slots after them, so every address a block
//! can observe (`auipc`, link registers, the buffer base in `x2`/`x8`) is the same in both.
//! Only `.text.init` at `0x8000_0000` differs: `_start`, `emit` (Linux: write the slot to
//! stdout; bare metal: nothing, the slot is read out of RAM) and `finish` (exit / HTIF
//! halt).
//!
//! Slot `k` (1 KiB) is the block's scratch buffer, then the register dump: `x1..x31` at
//! 256, `f0..f31` at 512, `fcsr` at 768, then the illegal-instruction trap count and the sum
//! of the trapping addresses.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cmbuild_machine::machine::{Break, Machine, MachineConfig};

use super::gen::{Block, BUF_SIZE, LABEL};

pub const CC: &str = "riscv64-linux-gnu-gcc";
pub const OBJCOPY: &str = "riscv64-linux-gnu-objcopy";
pub const NM: &str = "riscv64-linux-gnu-nm";
pub const QEMU: &str = "qemu-riscv64";
/// Exactly the machine's extensions, so that every other encoding is illegal on both, and
/// the current specifications (with an older `priv_spec`, QEMU's fmin/fmax follow the
/// retired IEEE 754-2008 minNum rules).
const QEMU_CPU: &str =
    "rv64i,m=true,a=true,f=true,d=true,c=true,zicsr=true,zifencei=true,priv_spec=v1.12.0";

const SLOT: usize = 1024;
const X_AT: usize = 256;
const F_AT: usize = 512;
const FCSR_AT: usize = 768;
/// Illegal instructions trapped in the block, and the sum of their addresses.
pub const TRAPS_AT: usize = 776;
pub const TRAP_PC_SUM_AT: usize = 784;
const DUMP_END: usize = 792;
const _: () = assert!(DUMP_END <= SLOT, "the dump must fit in its slot");
const RAM_BASE: u64 = 0x8000_0000;
/// The machine's exit code from the bare-metal trap handler.
const TRAP_EXIT: u64 = 3;

const LINKER_SCRIPT: &str = "OUTPUT_ARCH(riscv)
ENTRY(_start)
SECTIONS
{
  . = 0x80000000;
  .text.init : { *(.text.init) }
  . = 0x80010000;
  .blocks : { *(.text.blocks) }
  .text : { *(.text) }
  . = ALIGN(4096);
  .rodata : { *(.rodata) }
  . = ALIGN(4096);
  .data : { *(.data) }
}
";

/// The two wrappers, selected with `-DLINUX`. Blocks run in user mode on both sides. An
/// illegal instruction is counted, its address added up, and skipped (Linux: a SIGILL
/// handler on an alternate stack, since `sp` points into the buffer; bare metal: the M-mode
/// trap handler). Any other trap stops the bare-metal program with exit code 3.
const WRAPPERS: &str = r#"
	.section .text.init, "ax"
	.globl _start
_start:
#ifdef LINUX
	addi sp, sp, -64
	li t0, -0x20000         /* sigaltstack: 64 KiB well below the initial stack */
	add t0, sp, t0
	sd t0, 0(sp)
	sd zero, 8(sp)
	li t0, 0x10000
	sd t0, 16(sp)
	mv a0, sp
	li a1, 0
	li a7, 132
	ecall
	bnez a0, die
	lla t0, on_sigill       /* rt_sigaction(SIGILL, {handler, SA_ONSTACK|SA_SIGINFO}) */
	sd t0, 0(sp)
	li t0, 0x08000004
	sd t0, 8(sp)
	sd zero, 16(sp)
	li a0, 4
	mv a1, sp
	li a2, 0
	li a3, 8
	li a7, 134
	ecall
	bnez a0, die
	lla t0, blocks
	jr t0
#else
	li t0, 1 << 13          /* mstatus.FS = Initial: enable the FPU */
	csrs mstatus, t0
	li t0, 3 << 11          /* mstatus.MPP = U */
	csrc mstatus, t0
	li t0, -1               /* PMP entry 0: all of memory, RWX, for U-mode */
	csrw pmpaddr0, t0
	li t0, 0x1f
	csrw pmpcfg0, t0
	lla t0, trap
	csrw mtvec, t0
	li t0, 0x80008000       /* the handler's save area */
	csrw mscratch, t0
	lla t0, blocks
	csrw mepc, t0
	mret
#endif

emit:
#ifdef LINUX
	mv a1, x8
	li a2, 1024
1:	li a0, 1
	li a7, 64               /* write(1, slot, 1024) */
	ecall
	blez a0, die
	add a1, a1, a0
	sub a2, a2, a0
	bnez a2, 1b
#endif
	ret

finish:
	li a0, 0
	li a7, 94               /* exit_group(0); bare metal: the handler halts */
	ecall
die:
	li a0, 99
	li a7, 94
	ecall

#ifdef LINUX
	/* a2 = ucontext: uc_mcontext.sc_regs at 176 (pc, then x1..x31). */
on_sigill:
	ld t0, 176(a2)
	ld t1, 240(a2)          /* the block's x8: its slot */
	ld t2, 784(t1)
	add t2, t2, t0
	sd t2, 784(t1)
	ld t2, 776(t1)
	addi t2, t2, 1
	sd t2, 776(t1)
	lhu t2, 0(t0)           /* skip 4 bytes if the low bits are 11, else 2 */
	andi t2, t2, 3
	xori t2, t2, 3
	seqz t2, t2
	slli t2, t2, 1
	addi t0, t0, 2
	add t0, t0, t2
	sd t0, 176(a2)
	ret
#else
	.align 2
trap:
	csrrw t0, mscratch, t0
	sd t1, 0(t0)
	sd t2, 8(t0)
	csrr t1, mcause
	li t2, 2
	bne t1, t2, 1f
	csrr t1, mepc
	ld t2, 784(x8)
	add t2, t2, t1
	sd t2, 784(x8)
	ld t2, 776(x8)
	addi t2, t2, 1
	sd t2, 776(x8)
	lhu t2, 0(t1)
	andi t2, t2, 3
	xori t2, t2, 3
	seqz t2, t2
	slli t2, t2, 1
	addi t1, t1, 2
	add t1, t1, t2
	csrw mepc, t1
	ld t1, 0(t0)
	ld t2, 8(t0)
	csrrw t0, mscratch, t0
	mret
1:	li t2, 8                /* ecall from U with a7 = 94: the end */
	bne t1, t2, 2f
	li t2, 94
	bne a7, t2, 2f
	li t0, 1                /* HTIF halt, exit code 0 */
	li t1, 0x40008000
	sd t0, 0(t1)
3:	j 3b
2:	li t0, (3 << 1) | 1     /* HTIF halt, exit code 3; the test reads mepc/mcause */
	li t1, 0x40008000
	sd t0, 0(t1)
4:	j 4b
#endif
"#;

/// The assembly source of a program running `blocks` in order.
pub fn source(blocks: &[Block]) -> String {
    let mut s = String::from(WRAPPERS);
    // Writable as well as executable: some blocks rewrite their own code.
    s += "\n\t.section .text.blocks, \"awx\"\nblocks:\n";
    for (k, b) in blocks.iter().enumerate() {
        let _ = writeln!(s, "blk{k}:\n\tlla x8, init{k}");
        for i in 0..32 {
            let _ = writeln!(s, "\tfld f{i}, {}(x8)", 256 + 8 * i);
        }
        let _ = writeln!(s, "\tld x1, 512(x8)\n\tfscsr x1");
        for i in (1..32).filter(|&i| i != 2 && i != 8) {
            let _ = writeln!(s, "\tld x{i}, {}(x8)", 8 * i);
        }
        let _ = writeln!(s, "\tlla x8, slot{k}\n\tmv x2, x8");
        for (j, item) in b.items.iter().enumerate() {
            let text = item.text.replace(LABEL, &format!("L{k}_"));
            let _ = writeln!(s, "i{k}_{j}:\n\t{text}");
        }
        let _ = writeln!(s, "e{k}:");
        for i in 1..32 {
            let _ = writeln!(s, "\tsd x{i}, {}(x8)", X_AT + 8 * (i - 1));
        }
        for i in 0..32 {
            let _ = writeln!(s, "\tfsd f{i}, {}(x8)", F_AT + 8 * i);
        }
        let _ = writeln!(s, "\tfrcsr x1\n\tsd x1, {FCSR_AT}(x8)\n\tcall emit");
    }
    s += "blocks_end:\n\tlla t0, finish\n\tjr t0\n\n\t.section .rodata\n";
    for (k, b) in blocks.iter().enumerate() {
        let _ = writeln!(s, "\t.balign 8\ninit{k}:");
        for v in b.init.x.iter().chain(&b.init.f).chain([&b.init.fcsr]) {
            let _ = writeln!(s, "\t.quad {v:#x}");
        }
    }
    // Slots are packed from 128 bytes below a page boundary, so every fourth buffer
    // straddles two pages (misaligned accesses then cross pages).
    s += "\n\t.data\n\t.balign 4096\n\t.zero 3968\n";
    for (k, b) in blocks.iter().enumerate() {
        let _ = writeln!(s, "slot{k}:");
        for w in b.init.buf.chunks(8) {
            let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            let _ = writeln!(s, "\t.quad {v:#x}");
        }
        let _ = writeln!(s, "\t.zero {}", SLOT - BUF_SIZE as usize);
    }
    s
}

/// Builds the bare-metal assembly file `src` into a raw RAM image (linked like the
/// differential programs).
pub fn build_bare_image(dir: &Path, src: &Path) -> Result<Vec<u8>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ld = dir.join("link.ld");
    std::fs::write(&ld, LINKER_SCRIPT).map_err(|e| e.to_string())?;
    let stem = src.file_stem().and_then(|s| s.to_str()).unwrap_or("prog");
    let elf = dir.join(format!("{stem}.elf"));
    let bin = dir.join(format!("{stem}.bin"));
    run_tool(
        Command::new(CC)
            .args([
                "-march=rv64gc",
                "-mabi=lp64d",
                "-mno-relax",
                "-nostdlib",
                "-static",
            ])
            .args(["-Wl,--no-relax", "-Wl,--build-id=none"])
            .arg(format!("-Wl,-T,{}", ld.display()))
            .arg("-o")
            .arg(&elf)
            .arg(src),
        &format!("assembling {}", src.display()),
    )?;
    run_tool(
        Command::new(OBJCOPY)
            .args(["-O", "binary"])
            .arg(&elf)
            .arg(&bin),
        "objcopy",
    )?;
    std::fs::read(&bin).map_err(|e| e.to_string())
}

/// The two executables of one program.
pub struct Built {
    pub linux_elf: PathBuf,
    pub image: Vec<u8>,
    /// Symbols `blk<k>`, `i<k>_<j>`, `e<k>`, `slot0`, ... with their addresses, by address.
    pub symbols: Vec<(u64, String)>,
}

pub fn run_tool(cmd: &mut Command, what: &str) -> Result<Vec<u8>, String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

pub fn symbols(elf: &Path) -> Result<Vec<(u64, String)>, String> {
    let out = run_tool(Command::new(NM).arg("-n").arg(elf), "nm")?;
    let mut syms = Vec::new();
    for line in String::from_utf8_lossy(&out).lines() {
        let mut parts = line.split_whitespace();
        if let (Some(addr), Some(_), Some(name)) = (parts.next(), parts.next(), parts.next()) {
            if let Ok(a) = u64::from_str_radix(addr, 16) {
                syms.push((a, name.to_string()));
            }
        }
    }
    Ok(syms)
}

/// Assembles and links both programs in `dir` under `name`.
pub fn build(dir: &Path, name: &str, blocks: &[Block]) -> Result<Built, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let src = dir.join(format!("{name}.S"));
    let ld = dir.join("link.ld");
    std::fs::write(&src, source(blocks)).map_err(|e| e.to_string())?;
    std::fs::write(&ld, LINKER_SCRIPT).map_err(|e| e.to_string())?;
    let linux_elf = dir.join(format!("{name}.linux"));
    let bare_elf = dir.join(format!("{name}.bare"));
    for (out, linux) in [(&linux_elf, true), (&bare_elf, false)] {
        let mut cmd = Command::new(CC);
        cmd.args([
            "-march=rv64gc",
            "-mabi=lp64d",
            "-mno-relax",
            "-nostdlib",
            "-static",
            "-Wl,--no-relax",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(format!("-Wl,-T,{}", ld.display()))
        .arg("-o")
        .arg(out)
        .arg(&src);
        if linux {
            cmd.arg("-DLINUX");
        }
        run_tool(&mut cmd, &format!("assembling {}", src.display()))?;
    }
    let bin = dir.join(format!("{name}.bin"));
    run_tool(
        Command::new(OBJCOPY)
            .args(["-O", "binary"])
            .arg(&bare_elf)
            .arg(&bin),
        "objcopy",
    )?;
    let image = std::fs::read(&bin).map_err(|e| e.to_string())?;
    let syms = symbols(&bare_elf)?;
    // The blocks must see the same addresses in both programs.
    let linux_syms = symbols(&linux_elf)?;
    let outside_init = |s: &Vec<(u64, String)>| -> Vec<(u64, String)> {
        s.iter()
            .filter(|(a, _)| *a >= 0x8001_0000)
            .cloned()
            .collect()
    };
    if outside_init(&syms) != outside_init(&linux_syms) {
        return Err("the Linux and bare-metal layouts differ".into());
    }
    Ok(Built {
        linux_elf,
        image,
        symbols: syms,
    })
}

/// What one side produced: the dumps of the blocks that completed, and why it stopped
/// early if it did.
pub struct Run {
    pub slots: Vec<Vec<u8>>,
    pub stopped: Option<String>,
}

impl Built {
    /// The address of symbol `name`.
    pub fn symbol(&self, name: &str) -> u64 {
        self.symbols
            .iter()
            .find(|(_, n)| n == name)
            .unwrap_or_else(|| panic!("symbol {name} missing"))
            .0
    }

    /// `blk<k>` / `i<k>_<j>` naming the code at `pc`.
    pub fn locate(&self, pc: u64) -> String {
        let mut best = "?";
        for (a, n) in &self.symbols {
            if *a > pc {
                break;
            }
            if n.starts_with('i') || n.starts_with("blk") || n.starts_with('e') {
                best = n;
            }
        }
        best.to_string()
    }

    fn block_of(&self, pc: u64, nblocks: usize) -> usize {
        (0..nblocks)
            .take_while(|k| self.symbol(&format!("blk{k}")) <= pc)
            .count()
            .saturating_sub(1)
    }

    pub fn run_qemu(&self, nblocks: usize) -> Run {
        let out = Command::new("timeout")
            .arg("60")
            .arg(QEMU)
            .args(["-cpu", QEMU_CPU])
            .arg(&self.linux_elf)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run qemu-riscv64");
        let slots: Vec<Vec<u8>> = out.stdout.chunks_exact(SLOT).map(<[u8]>::to_vec).collect();
        let stopped = (!out.status.success() || slots.len() != nblocks).then(|| {
            format!(
                "qemu-riscv64 {} after {} of {nblocks} blocks: {}",
                out.status,
                slots.len(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        });
        Run { slots, stopped }
    }

    pub fn run_machine(&self, nblocks: usize) -> Run {
        let config = MachineConfig {
            ram_length: 16 << 20,
            ram_image: Some(self.image.clone()),
            ..MachineConfig::default()
        };
        let mut m = Machine::new(&config).expect("build the machine");
        let brk = m.run(20_000_000);
        let (done, stopped) = match brk {
            Break::Halted(0) => (nblocks, None),
            Break::Halted(TRAP_EXIT) => {
                let c = &m.hart.csr;
                let k = self.block_of(c.mepc, nblocks);
                let msg = format!(
                    "machine trapped in block {k} at {} (pc {:#x}): mcause {} mtval {:#x}",
                    self.locate(c.mepc),
                    c.mepc,
                    c.mcause,
                    c.mtval
                );
                (k, Some(msg))
            }
            other => {
                let pc = m.hart.pc;
                let k = self.block_of(pc, nblocks);
                let msg = format!(
                    "machine stopped ({other:?}) in block {k} at {} (pc {pc:#x})",
                    self.locate(pc)
                );
                (k, Some(msg))
            }
        };
        let base = (self.symbol("slot0") - RAM_BASE) as usize;
        let ram = m.bus.ram.bytes();
        let slots = (0..done)
            .map(|k| ram[base + k * SLOT..base + (k + 1) * SLOT].to_vec())
            .collect();
        Run { slots, stopped }
    }
}

/// How a block fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Identical dumps.
    Same,
    /// Dumps differ, field by field.
    Differ(Vec<String>),
    /// The machine did not complete the block (QEMU did).
    MachineStopped(String),
    /// QEMU did not complete it: a generator or harness problem, or unknown.
    Unknown(String),
}

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Differences between QEMU's dump `q` and the machine's `m`, one line per field.
pub fn diff(q: &[u8], m: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: String, at: usize| {
        let (a, b) = (word(q, at), word(m, at));
        if a != b {
            out.push(format!("{name}: qemu {a:#018x} machine {b:#018x}"));
        }
    };
    for at in (0..BUF_SIZE as usize).step_by(8) {
        field(format!("buf[{at}]"), at);
    }
    for i in 1..32 {
        field(format!("x{i}"), X_AT + 8 * (i - 1));
    }
    for i in 0..32 {
        field(format!("f{i}"), F_AT + 8 * i);
    }
    field("fcsr".into(), FCSR_AT);
    field("illegal-instruction traps".into(), TRAPS_AT);
    field("sum of their addresses".into(), TRAP_PC_SUM_AT);
    out
}

/// Builds and runs `blocks` on both sides and judges each block.
pub fn judge(dir: &Path, name: &str, blocks: &[Block]) -> Result<(Vec<Verdict>, Built), String> {
    let built = build(dir, name, blocks)?;
    let q = built.run_qemu(blocks.len());
    let m = built.run_machine(blocks.len());
    let verdicts = (0..blocks.len())
        .map(|k| match (q.slots.get(k), m.slots.get(k)) {
            (Some(qs), Some(ms)) => {
                let d = diff(qs, ms);
                if d.is_empty() {
                    Verdict::Same
                } else {
                    Verdict::Differ(d)
                }
            }
            (Some(_), None) if m.slots.len() == k => {
                Verdict::MachineStopped(m.stopped.clone().unwrap_or_default())
            }
            (None, _) if q.slots.len() == k => {
                Verdict::Unknown(q.stopped.clone().unwrap_or_default())
            }
            _ => Verdict::Unknown("an earlier block stopped the run".into()),
        })
        .collect();
    Ok((verdicts, built))
}
