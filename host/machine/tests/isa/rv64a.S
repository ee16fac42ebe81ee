#include "test.h"
/* A: LR/SC and the AMOs (chapter 14); misaligned AMOs raise store/AMO address
 * misaligned (cause 6) with the address in mtval. */
  START
  la s0, word
  TEST(1)
  li a0, 5
  amoadd.w a1, a0, (s0)       /* word = 0x80000000 */
  CHECK a1, 0xffffffff80000000
  lw a1, 0(s0)
  CHECK a1, 0xffffffff80000005
  TEST(2)
  li a0, 1
  amomin.w a1, a0, (s0)       /* signed: 0x80000005 < 1 */
  lw a1, 0(s0)
  CHECK a1, 0xffffffff80000005
  amominu.w a1, a0, (s0)
  lw a1, 0(s0)
  CHECK a1, 1
  li a0, -2
  amomaxu.w a1, a0, (s0)
  lw a1, 0(s0)
  CHECK a1, -2
  amomax.w a1, a0, (s0)
  li a0, 3
  amomax.w a1, a0, (s0)
  CHECK a1, -2
  lw a1, 0(s0)
  CHECK a1, 3
  TEST(3)
  la s1, dword
  li a0, 0x0f0f
  amoxor.d a1, a0, (s1)
  CHECK a1, 0xff00ff00ff00ff00
  amoand.d a1, a0, (s1)
  CHECK a1, 0xff00ff00ff00f00f
  amoor.d a1, a0, (s1)
  CHECK a1, 0xf
  amoswap.d a1, zero, (s1)
  CHECK a1, 0x0f0f
  ld a1, 0(s1)
  CHECK a1, 0
  li a0, -1
  amomin.d a1, a0, (s1)
  ld a1, 0(s1)
  CHECK a1, -1
  amominu.d a1, zero, (s1)
  amomaxu.d a1, zero, (s1)
  CHECK a1, 0
  TEST(4)
  lr.d a1, (s1)
  li a0, 42
  sc.d a2, a0, (s1)
  CHECK a2, 0
  ld a1, 0(s1)
  CHECK a1, 42
  sc.d a2, zero, (s1)           /* no reservation any more */
  CHECK a2, 1
  ld a1, 0(s1)
  CHECK a1, 42
  lr.w a1, (s0)
  addi t0, s0, 4
  sc.w a2, zero, (t0)           /* a different address fails */
  CHECK a2, 1
  TEST(5)
  la t0, misaligned_trap
  csrw mtvec, t0
  addi a0, s1, 4
  amoadd.d a1, a0, (a0)
  j fail
  .align 2
misaligned_trap:
  csrr a1, mcause
  CHECK a1, 6
  csrr a1, mtval
  bne a1, a0, fail
  TEST(6)
  la t0, lr_trap
  csrw mtvec, t0
  addi a0, s0, 2
  lr.w a1, (a0)
  j fail
  .align 2
lr_trap:
  csrr a1, mcause
  CHECK a1, 4
  j pass
  END
  .data
  .align 3
word: .word 0x80000000, 0
dword: .dword 0xff00ff00ff00ff00
