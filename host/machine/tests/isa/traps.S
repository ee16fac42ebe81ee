#include "test.h"
/* Traps and CSRs (privileged spec): exception causes, mepc/mtval, delegation to S,
 * mret/sret, privilege checks on CSRs and instructions, counter enables, WARL fields,
 * and CSRs the machine does not implement (they must trap: OpenSBI and Linux detect
 * extensions that way). The M-mode handler records mcause/mtval/mepc in s8/s9/s10 and
 * resumes in M-mode at the address in s11. */

#define EXPECT_TRAP(cause) \
  CHECK s8, cause

  START
  la t0, mhandler
  csrw mtvec, t0

  TEST(1)                         /* illegal instruction: mtval = the bits */
  la s11, 1f
2: .word 0x0000007b               /* custom-3 opcode: not implemented */
1:
  EXPECT_TRAP(2)
  CHECK s9, 0x7b
  la t0, 2b
  bne s10, t0, fail
  la s11, 1f
  csrw cycle, zero                /* read-only CSR */
1:
  EXPECT_TRAP(2)
  CHECK s9, 0xc0001073
  la s11, 1f
  .hword 0x0000                   /* the all-zero halfword is illegal; mtval holds 16 bits */
1:
  EXPECT_TRAP(2)
  CHECK s9, 0

  TEST(2)                         /* ecall, ebreak */
  la s11, 1f
  ecall
1:
  EXPECT_TRAP(11)
  CHECK s9, 0
  la s11, 1f
2: ebreak
1:
  EXPECT_TRAP(3)
  la t0, 2b
  bne s9, t0, fail

  TEST(3)                         /* unimplemented CSRs trap */
  la s11, 1f
  csrr a0, 0x14d                  /* stimecmp (Sstc) */
1:
  EXPECT_TRAP(2)
  la s11, 1f
  csrr a0, 0x30a                  /* menvcfg */
1:
  EXPECT_TRAP(2)
  la s11, 1f
  csrr a0, 0x7a0                  /* tselect */
1:
  EXPECT_TRAP(2)
  li s8, 0
  csrr a0, mhartid                /* present: no trap */
  CHECK s8, 0
  CHECK a0, 0

  TEST(4)                         /* satp WARL: unsupported modes are ignored */
  li a0, (10 << 60) | 0x1234      /* Sv57 */
  csrw satp, a0
  csrr a1, satp
  CHECK a1, 0
  li a0, (9 << 60) | 0x1234       /* Sv48 */
  csrw satp, a0
  csrr a1, satp
  CHECK a1, (9 << 60) | 0x1234
  li a0, (8 << 60) | 0x5678 | (0xffff << 44)   /* Sv39; ASID bits read as zero */
  csrw satp, a0
  csrr a1, satp
  CHECK a1, (8 << 60) | 0x5678
  csrw satp, zero

  TEST(5)                         /* misa: RV64 IMAFDC + S + U */
  csrr a0, misa
  CHECK a0, 0x800000000014112d
  csrw misa, zero                 /* WARL: ignored */
  csrr a0, misa
  CHECK a0, 0x800000000014112d

  TEST(6)                         /* mret to S and U; ecall causes 9 and 8 */
  li a0, 1 << 11                  /* MPP = S */
  csrc mstatus, a0
  csrs mstatus, a0
  la a0, in_s
  csrw mepc, a0
  la s11, 1f
  mret
in_s:
  ecall
  j fail
1:
  EXPECT_TRAP(9)
  li a0, 3 << 11                  /* MPP = U */
  csrc mstatus, a0
  la a0, in_u
  csrw mepc, a0
  la s11, 1f
  mret
in_u:
  ecall
  j fail
1:
  EXPECT_TRAP(8)

  TEST(7)                         /* U-mode: M CSRs, counters, privileged instructions */
  csrw mcounteren, zero
  la s11, 1f
  call enter_u
  csrr a0, mstatus
  j fail
1:
  EXPECT_TRAP(2)
  CHECK s9, 0x30002573            /* csrr a0, mstatus */
  la s11, 1f
  call enter_u
  rdcycle a0
  j fail
1:
  EXPECT_TRAP(2)
  li a0, 7
  csrw mcounteren, a0
  csrw scounteren, a0
  li s8, 0
  la s11, 1f
  call enter_u
  rdcycle a0
  rdtime a1
  rdinstret a2
  ecall
1:
  EXPECT_TRAP(8)
  la s11, 1f
  call enter_u
  wfi
1:
  EXPECT_TRAP(2)
  la s11, 1f
  call enter_u
  sfence.vma
1:
  EXPECT_TRAP(2)
  la s11, 1f
  call enter_u
  sret
1:
  EXPECT_TRAP(2)

  TEST(8)                         /* S-mode: mret illegal, TSR, TVM, TW */
  la s11, 1f
  call enter_s
  mret
1:
  EXPECT_TRAP(2)
  li a0, 1 << 22                  /* TSR */
  csrs mstatus, a0
  la s11, 1f
  call enter_s
  sret
1:
  EXPECT_TRAP(2)
  li a0, 1 << 22
  csrc mstatus, a0
  li a0, 1 << 20                  /* TVM */
  csrs mstatus, a0
  la s11, 1f
  call enter_s
  csrr a0, satp
1:
  EXPECT_TRAP(2)
  li a0, 1 << 20
  csrc mstatus, a0
  li a0, 1 << 21                  /* TW */
  csrs mstatus, a0
  la s11, 1f
  call enter_s
  wfi
1:
  EXPECT_TRAP(2)
  li a0, 1 << 21
  csrc mstatus, a0

  TEST(9)                         /* delegation: U ecall handled in S, S ecall in M */
  li a0, 1 << 8
  csrw medeleg, a0
  la a0, shandler
  csrw stvec, a0
  la s11, 1f
  call enter_u
  ecall
  j fail
1:
  EXPECT_TRAP(9)                  /* the S handler's ecall */
  CHECK a1, 8                     /* scause seen by the S handler */
  CHECK a3, 0                     /* sstatus.SPP: came from U */
  csrw medeleg, zero
  csrr a0, medeleg
  CHECK a0, 0
  li a0, -1
  csrw medeleg, a0
  csrr a0, medeleg
  CHECK a0, 0xb3ff                /* ecall from M cannot be delegated */
  csrw medeleg, zero

  TEST(10)                        /* access faults where nothing lives */
  la s11, 1f
  ld a0, 0(zero)
1:
  EXPECT_TRAP(5)
  CHECK s9, 0
  la s11, 1f
  li a0, 0x10000100
  sw zero, 0(a0)
1:
  EXPECT_TRAP(7)
  CHECK s9, 0x10000100
  la s11, 1f
  li a0, 0x1000
  jr a0
1:
  EXPECT_TRAP(1)
  CHECK s9, 0x1000
  CHECK s10, 0x1000

  TEST(11)                        /* mstatus WARL: MPP = 2 keeps the old value */
  li a0, 3 << 11
  csrs mstatus, a0
  li a0, 1 << 11
  csrc mstatus, a0                /* MPP = 2 requested */
  csrr a0, mstatus
  srli a0, a0, 11
  andi a0, a0, 3
  CHECK a0, 3
  csrr a0, mstatus
  srli a0, a0, 32
  andi a0, a0, 0xf
  CHECK a0, 0xa                   /* UXL = SXL = 64 */

  TEST(12)                        /* counters: minstret counts retired instructions */
  csrr a0, minstret
  csrr a1, minstret
  sub a1, a1, a0
  CHECK a1, 1
  csrr a0, mcycle
  csrr a1, mcycle
  sub a1, a1, a0
  CHECK a1, 1
  csrr a0, mcycle                 /* a trap costs one cycle and retires nothing */
  csrr a2, minstret
  la s11, 1f
  ecall
1:
  csrr a1, mcycle
  csrr a3, minstret
  sub a1, a1, a0
  sub a3, a3, a2
  sub a1, a1, a3
  CHECK a1, 1                     /* the ecall's trap: one cycle, nothing retired */

  TEST(13)                        /* sstatus is a view of mstatus */
  li a0, (1 << 18) | (1 << 1)     /* SUM, SIE */
  csrs sstatus, a0
  csrr a1, mstatus
  and a1, a1, a0
  bne a1, a0, fail
  li a0, 1 << 3                   /* MIE is not visible in sstatus */
  csrs mstatus, a0
  csrr a1, sstatus
  and a1, a1, a0
  bnez a1, fail
  csrc mstatus, a0
  li a0, (1 << 18) | (1 << 1)
  csrc sstatus, a0
  j pass

/* Drops to U-mode (MPP = U) and continues at the caller's return address. */
enter_u:
  li t0, 3 << 11
  csrc mstatus, t0
  csrw mepc, ra
  mret
/* Drops to S-mode and continues at the caller's return address. */
enter_s:
  li t0, 3 << 11
  csrc mstatus, t0
  li t0, 1 << 11
  csrs mstatus, t0
  csrw mepc, ra
  mret

  .align 2
mhandler:
  csrr s8, mcause
  csrr s9, mtval
  csrr s10, mepc
  li t0, 3 << 11                  /* return to M-mode */
  csrs mstatus, t0
  csrw mepc, s11
  mret

  .align 2
shandler:
  csrr a1, scause
  csrr a3, sstatus
  srli a3, a3, 8
  andi a3, a3, 1
  ecall
  END
