//! The control and status registers: their storage, numbers and field masks.
//!
//! Reading and writing them (with the privilege checks) is in [`super::zicsr`].

use crate::state::{put_u64, put_u8, Reader, StateError};

/// `mstatus.SIE`.
pub const MSTATUS_SIE: u64 = 1 << 1;
/// `mstatus.MIE`.
pub const MSTATUS_MIE: u64 = 1 << 3;
/// `mstatus.SPIE`.
pub const MSTATUS_SPIE: u64 = 1 << 5;
/// `mstatus.MPIE`.
pub const MSTATUS_MPIE: u64 = 1 << 7;
/// `mstatus.SPP`.
pub const MSTATUS_SPP: u64 = 1 << 8;
/// `mstatus.MPP` (two bits).
pub const MSTATUS_MPP: u64 = 3 << 11;
/// `mstatus.FS` (two bits).
pub const MSTATUS_FS: u64 = 3 << 13;
/// `mstatus.MPRV`.
pub const MSTATUS_MPRV: u64 = 1 << 17;
/// `mstatus.SUM`.
pub const MSTATUS_SUM: u64 = 1 << 18;
/// `mstatus.MXR`.
pub const MSTATUS_MXR: u64 = 1 << 19;
/// `mstatus.TVM`.
pub const MSTATUS_TVM: u64 = 1 << 20;
/// `mstatus.TW`.
pub const MSTATUS_TW: u64 = 1 << 21;
/// `mstatus.TSR`.
pub const MSTATUS_TSR: u64 = 1 << 22;
/// `mstatus.UXL` and `SXL`, fixed at 64 bits.
pub const MSTATUS_UXL_SXL: u64 = (2 << 32) | (2 << 34);
/// `mstatus.SD`.
pub const MSTATUS_SD: u64 = 1 << 63;

/// The `mstatus` bits M-mode software can write.
pub const MSTATUS_WRITABLE: u64 = MSTATUS_SIE
    | MSTATUS_MIE
    | MSTATUS_SPIE
    | MSTATUS_MPIE
    | MSTATUS_SPP
    | MSTATUS_MPP
    | MSTATUS_FS
    | MSTATUS_MPRV
    | MSTATUS_SUM
    | MSTATUS_MXR
    | MSTATUS_TVM
    | MSTATUS_TW
    | MSTATUS_TSR;
/// The `mstatus` bits visible in `sstatus`.
pub const SSTATUS_VISIBLE: u64 = MSTATUS_SIE
    | MSTATUS_SPIE
    | MSTATUS_SPP
    | MSTATUS_FS
    | MSTATUS_SUM
    | MSTATUS_MXR
    | (3 << 32)
    | MSTATUS_SD;
/// The `sstatus` bits S-mode software can write.
pub const SSTATUS_WRITABLE: u64 =
    MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_FS | MSTATUS_SUM | MSTATUS_MXR;

/// Supervisor software interrupt pending.
pub const MIP_SSIP: u64 = 1 << 1;
/// Machine software interrupt pending.
pub const MIP_MSIP: u64 = 1 << 3;
/// Supervisor timer interrupt pending.
pub const MIP_STIP: u64 = 1 << 5;
/// Machine timer interrupt pending.
pub const MIP_MTIP: u64 = 1 << 7;
/// Supervisor external interrupt pending.
pub const MIP_SEIP: u64 = 1 << 9;
/// Machine external interrupt pending.
pub const MIP_MEIP: u64 = 1 << 11;
/// Interrupts that exist (and can be enabled in `mie`).
pub const MIE_WRITABLE: u64 = MIP_SSIP | MIP_MSIP | MIP_STIP | MIP_MTIP | MIP_SEIP | MIP_MEIP;
/// `mip` bits M-mode software can write (the others follow devices).
pub const MIP_WRITABLE: u64 = MIP_SSIP | MIP_STIP | MIP_SEIP;
/// Interrupts that can be delegated to S-mode.
pub const MIDELEG_WRITABLE: u64 = MIP_SSIP | MIP_STIP | MIP_SEIP;
/// Exceptions that can be delegated to S-mode (all but ecall from M and reserved codes).
pub const MEDELEG_WRITABLE: u64 = 0xb3ff;

/// The bits of `mcounteren` and `scounteren` that exist.
pub const COUNTEREN_WRITABLE: u64 = 0xffff_ffff;
/// The bits of each `pmpcfg` register that hold values (the reserved bits 6:5 of each
/// byte read as zero).
pub const PMPCFG_WRITABLE: u64 = 0x9f9f_9f9f_9f9f_9f9f;
/// The bits of each `pmpaddr` register that exist.
pub const PMPADDR_WRITABLE: u64 = (1 << 54) - 1;

/// `mstatus` after M-mode software writes `value` over `old` (WARL: the fixed fields keep
/// their values, the reserved MPP encoding 2 keeps the previous mode, SD is computed on
/// read and never stored).
pub fn legal_mstatus(old: u64, value: u64) -> u64 {
    let mut new = (old & !MSTATUS_WRITABLE) | (value & MSTATUS_WRITABLE);
    if (new & MSTATUS_MPP) >> 11 == 2 {
        new = (new & !MSTATUS_MPP) | (old & MSTATUS_MPP);
    }
    new & !MSTATUS_SD
}

/// `satp` after a write of `value`, or `None` when the write has no effect at all (WARL:
/// a write selecting an unsupported mode is ignored). ASIDs are not implemented
/// (ASIDLEN = 0), so the ASID field reads as zero.
pub fn legal_satp(value: u64) -> Option<u64> {
    let mode = value >> 60;
    matches!(mode, SATP_MODE_BARE | SATP_MODE_SV39 | SATP_MODE_SV48)
        .then_some((mode << 60) | (value & SATP_PPN))
}

/// `xtvec` WARL: modes 0 (direct) and 1 (vectored) only; base 4-byte aligned.
pub fn legal_tvec(value: u64) -> u64 {
    value & !2
}

/// `xepc` WARL: bit 0 is always zero (IALIGN = 16).
pub fn legal_epc(value: u64) -> u64 {
    value & !1
}

/// `misa`: RV64 with A, C, D, F, I, M, S and U.
pub const MISA: u64 = (2 << 62)
    | (1 << 0)
    | (1 << 2)
    | (1 << 3)
    | (1 << 5)
    | (1 << 8)
    | (1 << 12)
    | (1 << 18)
    | (1 << 20);

/// `satp.MODE` for bare (no translation).
pub const SATP_MODE_BARE: u64 = 0;
/// `satp.MODE` for Sv39.
pub const SATP_MODE_SV39: u64 = 8;
/// `satp.MODE` for Sv48.
pub const SATP_MODE_SV48: u64 = 9;
/// `satp.PPN`.
pub const SATP_PPN: u64 = (1 << 44) - 1;

/// Number of PMP entries (their CSRs exist; the machine grants every access, which is
/// what PMP does for a single trusted M-mode that opens everything to S and U).
pub const PMP_ENTRIES: usize = 16;

/// CSR numbers.
pub mod num {
    /// `fflags`
    pub const FFLAGS: u16 = 0x001;
    /// `frm`
    pub const FRM: u16 = 0x002;
    /// `fcsr`
    pub const FCSR: u16 = 0x003;
    /// `cycle`
    pub const CYCLE: u16 = 0xc00;
    /// `time`
    pub const TIME: u16 = 0xc01;
    /// `instret`
    pub const INSTRET: u16 = 0xc02;
    /// `hpmcounter3`
    pub const HPMCOUNTER3: u16 = 0xc03;
    /// `hpmcounter31`
    pub const HPMCOUNTER31: u16 = 0xc1f;
    /// `sstatus`
    pub const SSTATUS: u16 = 0x100;
    /// `sie`
    pub const SIE: u16 = 0x104;
    /// `stvec`
    pub const STVEC: u16 = 0x105;
    /// `scounteren`
    pub const SCOUNTEREN: u16 = 0x106;
    /// `sscratch`
    pub const SSCRATCH: u16 = 0x140;
    /// `sepc`
    pub const SEPC: u16 = 0x141;
    /// `scause`
    pub const SCAUSE: u16 = 0x142;
    /// `stval`
    pub const STVAL: u16 = 0x143;
    /// `sip`
    pub const SIP: u16 = 0x144;
    /// `satp`
    pub const SATP: u16 = 0x180;
    /// `mvendorid`
    pub const MVENDORID: u16 = 0xf11;
    /// `marchid`
    pub const MARCHID: u16 = 0xf12;
    /// `mimpid`
    pub const MIMPID: u16 = 0xf13;
    /// `mhartid`
    pub const MHARTID: u16 = 0xf14;
    /// `mconfigptr`
    pub const MCONFIGPTR: u16 = 0xf15;
    /// `mstatus`
    pub const MSTATUS: u16 = 0x300;
    /// `misa`
    pub const MISA: u16 = 0x301;
    /// `medeleg`
    pub const MEDELEG: u16 = 0x302;
    /// `mideleg`
    pub const MIDELEG: u16 = 0x303;
    /// `mie`
    pub const MIE: u16 = 0x304;
    /// `mtvec`
    pub const MTVEC: u16 = 0x305;
    /// `mcounteren`
    pub const MCOUNTEREN: u16 = 0x306;
    /// `mcountinhibit`
    pub const MCOUNTINHIBIT: u16 = 0x320;
    /// Trigger select (Sdtrig); no triggers exist.
    pub const TSELECT: u16 = 0x7a0;
    /// Trigger data 1.
    pub const TDATA1: u16 = 0x7a1;
    /// Trigger data 2.
    pub const TDATA2: u16 = 0x7a2;
    /// Trigger data 3.
    pub const TDATA3: u16 = 0x7a3;
    /// `mhpmevent3`
    pub const MHPMEVENT3: u16 = 0x323;
    /// `mhpmevent31`
    pub const MHPMEVENT31: u16 = 0x33f;
    /// `mscratch`
    pub const MSCRATCH: u16 = 0x340;
    /// `mepc`
    pub const MEPC: u16 = 0x341;
    /// `mcause`
    pub const MCAUSE: u16 = 0x342;
    /// `mtval`
    pub const MTVAL: u16 = 0x343;
    /// `mip`
    pub const MIP: u16 = 0x344;
    /// `pmpcfg0`
    pub const PMPCFG0: u16 = 0x3a0;
    /// `pmpcfg15`
    pub const PMPCFG15: u16 = 0x3af;
    /// `pmpaddr0`
    pub const PMPADDR0: u16 = 0x3b0;
    /// `pmpaddr63`
    pub const PMPADDR63: u16 = 0x3ef;
    /// `mcycle`
    pub const MCYCLE: u16 = 0xb00;
    /// `minstret`
    pub const MINSTRET: u16 = 0xb02;
    /// `mhpmcounter3`
    pub const MHPMCOUNTER3: u16 = 0xb03;
    /// `mhpmcounter31`
    pub const MHPMCOUNTER31: u16 = 0xb1f;
}

/// CSR storage. Counters live in [`super::Hart`]; `mip` here holds only the
/// software-writable bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csrs {
    /// `mstatus` (sstatus is a view of it).
    pub mstatus: u64,
    /// `medeleg`.
    pub medeleg: u64,
    /// `mideleg`.
    pub mideleg: u64,
    /// `mie` (sie is a view of it).
    pub mie: u64,
    /// Software-writable bits of `mip`.
    pub mip: u64,
    /// `mtvec`.
    pub mtvec: u64,
    /// `mcounteren`.
    pub mcounteren: u64,
    /// `mscratch`.
    pub mscratch: u64,
    /// `mepc`.
    pub mepc: u64,
    /// `mcause`.
    pub mcause: u64,
    /// `mtval`.
    pub mtval: u64,
    /// `stvec`.
    pub stvec: u64,
    /// `scounteren`.
    pub scounteren: u64,
    /// `sscratch`.
    pub sscratch: u64,
    /// `sepc`.
    pub sepc: u64,
    /// `scause`.
    pub scause: u64,
    /// `stval`.
    pub stval: u64,
    /// `satp`.
    pub satp: u64,
    /// `fcsr.frm`.
    pub frm: u8,
    /// `fcsr.fflags`.
    pub fflags: u8,
    /// `pmpcfg0`, `pmpcfg2` (RV64 has only the even ones).
    pub pmpcfg: [u64; PMP_ENTRIES / 8],
    /// `pmpaddr0..`.
    pub pmpaddr: [u64; PMP_ENTRIES],
}

impl Default for Csrs {
    fn default() -> Self {
        Self::new()
    }
}

impl Csrs {
    /// Reset values.
    pub fn new() -> Self {
        Self {
            mstatus: MSTATUS_UXL_SXL,
            medeleg: 0,
            mideleg: 0,
            mie: 0,
            mip: 0,
            mtvec: 0,
            mcounteren: 0,
            mscratch: 0,
            mepc: 0,
            mcause: 0,
            mtval: 0,
            stvec: 0,
            scounteren: 0,
            sscratch: 0,
            sepc: 0,
            scause: 0,
            stval: 0,
            satp: 0,
            frm: 0,
            fflags: 0,
            pmpcfg: [0; PMP_ENTRIES / 8],
            pmpaddr: [0; PMP_ENTRIES],
        }
    }

    /// Appends the canonical encoding.
    pub fn save_state(&self, out: &mut Vec<u8>) {
        for v in [
            self.mstatus,
            self.medeleg,
            self.mideleg,
            self.mie,
            self.mip,
            self.mtvec,
            self.mcounteren,
            self.mscratch,
            self.mepc,
            self.mcause,
            self.mtval,
            self.stvec,
            self.scounteren,
            self.sscratch,
            self.sepc,
            self.scause,
            self.stval,
            self.satp,
        ] {
            put_u64(out, v);
        }
        put_u8(out, self.frm);
        put_u8(out, self.fflags);
        self.pmpcfg.iter().for_each(|&v| put_u64(out, v));
        self.pmpaddr.iter().for_each(|&v| put_u64(out, v));
    }

    /// Makes every field a value software could have written: each goes through the
    /// legalisation of a write by M-mode software over its reset value (the rules
    /// [`super::Hart::write_csr`] applies). A legal state is left unchanged.
    pub fn legalize(&mut self) {
        let reset = Csrs::new();
        self.mstatus = legal_mstatus(reset.mstatus, self.mstatus);
        self.medeleg &= MEDELEG_WRITABLE;
        self.mideleg &= MIDELEG_WRITABLE;
        self.mie &= MIE_WRITABLE;
        self.mip &= MIP_WRITABLE;
        self.mtvec = legal_tvec(self.mtvec);
        self.stvec = legal_tvec(self.stvec);
        self.mcounteren &= COUNTEREN_WRITABLE;
        self.scounteren &= COUNTEREN_WRITABLE;
        self.mepc = legal_epc(self.mepc);
        self.sepc = legal_epc(self.sepc);
        self.satp = legal_satp(self.satp).unwrap_or(reset.satp);
        self.frm &= 7;
        self.fflags &= 0x1f;
        for v in self.pmpcfg.iter_mut() {
            *v &= PMPCFG_WRITABLE;
        }
        for v in self.pmpaddr.iter_mut() {
            *v &= PMPADDR_WRITABLE;
        }
    }

    /// Restores what [`Csrs::save_state`] wrote, legalised ([`Csrs::legalize`]): saved
    /// state may come from anyone.
    pub fn load_state(&mut self, r: &mut Reader<'_>) -> Result<(), StateError> {
        for v in [
            &mut self.mstatus,
            &mut self.medeleg,
            &mut self.mideleg,
            &mut self.mie,
            &mut self.mip,
            &mut self.mtvec,
            &mut self.mcounteren,
            &mut self.mscratch,
            &mut self.mepc,
            &mut self.mcause,
            &mut self.mtval,
            &mut self.stvec,
            &mut self.scounteren,
            &mut self.sscratch,
            &mut self.sepc,
            &mut self.scause,
            &mut self.stval,
            &mut self.satp,
        ] {
            *v = r.u64()?;
        }
        self.frm = r.u8()?;
        self.fflags = r.u8()?;
        for v in self.pmpcfg.iter_mut() {
            *v = r.u64()?;
        }
        for v in self.pmpaddr.iter_mut() {
            *v = r.u64()?;
        }
        self.legalize();
        Ok(())
    }
}
