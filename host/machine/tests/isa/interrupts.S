#include "test.h"
/* Interrupts: CLINT timer and software interrupts through a vectored mtvec, WFI jumping
 * mcycle to the timer deadline (mtime = mcycle / 8192), and supervisor interrupts
 * delegated through mideleg. The handlers record the cause in s8. */

#define CLINT 0x02000000
#define MTIMECMP (CLINT + 0x4000)
#define MTIME (CLINT + 0xbff8)

  START
  la t0, vectors
  ori t0, t0, 1                   /* vectored */
  csrw mtvec, t0
  li s0, MTIMECMP
  li s1, MTIME

  TEST(1)                         /* timer interrupt, vectored to entry 7 */
  li s8, 0
  ld a0, 0(s1)
  addi a0, a0, 2
  sd a0, 0(s0)
  mv s2, a0
  li a0, 1 << 7
  csrw mie, a0
  csrsi mstatus, 8                /* MIE */
  li a1, 100000000
1:
  bnez s8, 2f
  addi a1, a1, -1
  bnez a1, 1b
  j fail
2:
  csrci mstatus, 8
  CHECK s8, 0x8000000000000007
  ld a0, 0(s1)
  bltu a0, s2, fail               /* mtime reached the old mtimecmp */

  TEST(2)                         /* WFI sleeps until the timer: mcycle jumps */
  li s8, 0
  ld a0, 0(s1)
  addi a0, a0, 1000
  sd a0, 0(s0)                    /* 1000 ticks = 8192000 cycles ahead */
  csrr s2, mcycle
  csrr s3, minstret
  wfi                             /* MIE is clear: wakes up without taking the trap */
  csrr s4, mcycle
  csrr s5, minstret
  CHECK s8, 0
  csrr a0, mip
  andi a0, a0, 1 << 7
  beqz a0, fail                   /* MTIP pending */
  sub a0, s4, s2
  li a1, 8000000
  bltu a0, a1, fail
  sub a0, s5, s3
  li a1, 10
  bgeu a0, a1, fail               /* only a few instructions retired meanwhile */
  li a0, -1
  sd a0, 0(s0)                    /* timer off */
  csrr a0, mip
  andi a0, a0, 1 << 7
  bnez a0, fail

  TEST(3)                         /* software interrupt through msip, entry 3 */
  li s8, 0
  li a0, 1 << 3
  csrw mie, a0
  li a1, CLINT
  li a0, 1
  sw a0, 0(a1)
  csrsi mstatus, 8
  nop
  nop
  csrci mstatus, 8
  CHECK s8, 0x8000000000000003
  lw a0, 0(a1)
  CHECK a0, 0                     /* the handler cleared msip */

  TEST(4)                         /* pending but globally disabled: not taken */
  li s8, 0
  li a0, 1
  sw a0, 0(a1)
  nop
  nop
  CHECK s8, 0
  sw zero, 0(a1)

  TEST(5)                         /* supervisor software interrupt delegated to S */
  li a0, 1 << 1
  csrw mideleg, a0
  csrw mie, a0                    /* SSIE */
  la a0, shandler
  csrw stvec, a0
  li s7, 0
  csrsi mip, 2                    /* SSIP, set from M */
  li a0, 3 << 11
  csrc mstatus, a0
  li a0, 1 << 11
  csrs mstatus, a0                /* MPP = S */
  li a0, 1 << 5
  csrs mstatus, a0                /* MPIE, irrelevant for S */
  la a0, in_s
  csrw mepc, a0
  mret
in_s:
  csrsi sstatus, 2                /* SIE: the interrupt is taken here */
  nop
  ecall                           /* back to M (cause 9) via the vectored base */
  .align 2
back_in_m:
  CHECK s7, 0x8000000000000001
  csrw mideleg, zero
  csrw mie, zero

  TEST(6)                         /* S-mode with an M interrupt pending: taken even with MIE clear */
  li s8, 0
  li a0, 1 << 3
  csrw mie, a0
  csrci mstatus, 8
  li a1, CLINT
  li a0, 1
  sw a0, 0(a1)                    /* MSIP pending, MIE clear while in M: not taken */
  CHECK s8, 0
  la s11, 1f
  li a0, 3 << 11
  csrc mstatus, a0
  li a0, 1 << 11
  csrs mstatus, a0
  la a0, 2f
  csrw mepc, a0
  mret
2:
  nop                             /* in S: the M interrupt preempts */
  j fail
1:
  CHECK s8, 0x8000000000000003
  j pass

  .align 2
  .option push
  .option norvc                   /* vector entries are 4 bytes apart */
vectors:
  j exc_handler                   /* 0: exceptions */
  j fail
  j fail
  j msi_handler                   /* 3 */
  j fail
  j fail
  j fail
  j mti_handler                   /* 7 */
  .option pop

exc_handler:
  csrr a0, mcause
  li a1, 9
  bne a0, a1, trap_unexpected
  la a0, back_in_m
  li t0, 3 << 11
  csrs mstatus, t0
  csrw mepc, a0
  mret
msi_handler:
  csrr s8, mcause
  li t0, CLINT
  sw zero, 0(t0)
  beqz s11, 1f                    /* test 6 resumes in M at s11 */
  li t0, 3 << 11
  csrs mstatus, t0
  csrw mepc, s11
  li s11, 0
1:
  mret
mti_handler:
  csrr s8, mcause
  li t0, MTIMECMP
  li t1, -1
  sd t1, 0(t0)
  mret
  .align 2
shandler:
  csrr s7, scause
  csrci sip, 2
  sret
  END
