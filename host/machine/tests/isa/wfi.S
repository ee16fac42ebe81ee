#include "test.h"
/* WFI with interrupts enabled (mstatus.MIE = 1, mie.MTIE = 1): the hart sleeps until the
 * timer deadline, the WFI retires and the timer interrupt is taken with mepc = the WFI's
 * address + 4 (privileged spec, "Wait for Interrupt"). The handler re-arms mtimecmp one
 * tick ahead, so a machine that took the trap with mepc on the WFI itself would sleep on
 * the same WFI forever; this loop must make progress. */

#define CLINT 0x02000000
#define MTIMECMP (CLINT + 0x4000)
#define MTIME (CLINT + 0xbff8)
#define ROUNDS 5

  START
  la t0, handler
  csrw mtvec, t0
  li s0, MTIMECMP
  li s1, MTIME
  li s8, 0                        /* interrupts taken */
  li s9, 0                        /* last mepc */

  TEST(1)
  ld a0, 0(s1)
  addi a0, a0, 1
  sd a0, 0(s0)                    /* the deadline is at most one tick away */
  li a0, 1 << 7
  csrw mie, a0
  csrsi mstatus, 8                /* MIE */
  li s3, ROUNDS
  csrr s2, mcycle
loop:
  wfi
after_wfi:
  addi s3, s3, -1
  bnez s3, loop
  csrci mstatus, 8

  TEST(2)                         /* one interrupt per WFI */
  CHECK s8, ROUNDS
  TEST(3)                         /* taken after the WFI retired */
  la a0, after_wfi
  bne s9, a0, fail
  TEST(4)                         /* the sleeps jumped mcycle: about one tick per round */
  csrr a0, mcycle
  sub a0, a0, s2
  li a1, (ROUNDS - 1) * 8192
  bltu a0, a1, fail
  li a1, (ROUNDS + 1) * 8192
  bgeu a0, a1, fail
  j pass

  .align 2
handler:
  csrr t0, mcause
  li t1, 0x8000000000000007
  bne t0, t1, trap_unexpected
  addi s8, s8, 1
  csrr s9, mepc
  ld t0, 0(s1)
  addi t0, t0, 1
  sd t0, 0(s0)                    /* re-arm one tick ahead */
  li t0, ROUNDS + 1
  bgeu s8, t0, fail               /* more interrupts than WFIs: no progress */
  mret

  END
