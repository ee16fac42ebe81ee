#include "test.h"
/* The paths of the translator (src/hart/jit): loops kept in host registers, chaining
 * through jumps and returns, loads and stores of every width, stores into a page that
 * holds code, code that rewrites itself inside a translated loop, more live registers
 * than the translator caches, and a loop across a page boundary. Every test here also
 * runs on the interpreter alone (tests/common::run_image), which must end in the same
 * state. */
  START

  TEST(1)                   /* a loop through memory: 1 + 2 + ... + 1000 */
  la a0, buf
  li t0, 1000
  li a1, 0
1:
  sd t0, 0(a0)
  ld t1, 0(a0)
  add a1, a1, t1
  addi t0, t0, -1
  bnez t0, 1b
  CHECK a1, 500500

  TEST(2)                   /* every load and store width, sign and zero extension */
  la a0, buf
  li t0, 100
  li a2, 0
  li t1, -2
2:
  sb t1, 8(a0)
  lb t2, 8(a0)
  lbu t3, 8(a0)
  add a2, a2, t2
  add a2, a2, t3
  sh t1, 10(a0)
  lh t2, 10(a0)
  lhu t3, 10(a0)
  add a2, a2, t2
  add a2, a2, t3
  sw t1, 12(a0)
  lw t2, 12(a0)
  lwu t3, 12(a0)
  add a2, a2, t2
  add a2, a2, t3
  addi t0, t0, -1
  bnez t0, 2b
  CHECK a2, 429503307600    /* 100 * (252 + 65532 + 4294967292) */

  TEST(3)                   /* calls and returns inside one page */
  li t0, 50
  li a1, 0
  j 31f
add3:
  addi a1, a1, 3
  ret
31:
  call add3
  addi t0, t0, -1
  bnez t0, 31b
  CHECK a1, 150

  TEST(4)                   /* a translated loop that rewrites its own first instruction */
  .option push
  .option norvc
  li t0, 10
  li a1, 0
  la a0, 41f
  li t3, 0x00258593         /* addi a1, a1, 2 */
41:
  addi a1, a1, 1
  sw t3, 0(a0)              /* from the second iteration on: add 2 */
  addi t0, t0, -1
  bnez t0, 41b
  .option pop
  CHECK a1, 19

  TEST(5)                   /* a counter in the same page as the code using it */
  la a0, 52f
  li t0, 100
5:
  lw t1, 0(a0)
  addi t1, t1, 1
  sw t1, 0(a0)
  addi t0, t0, -1
  bnez t0, 5b
  lw a1, 0(a0)
  CHECK a1, 100
  j 53f
  .balign 4
52:
  .word 0
53:

  TEST(6)                   /* 19 live registers: more than the translator caches */
  li t0, 7
  li s1, 0
  li s2, 0
  li s3, 0
  li s4, 0
  li s5, 0
  li s6, 0
  li s7, 0
  li s8, 0
  li s9, 0
  li s10, 0
  li s11, 0
  li a2, 0
  li a3, 0
  li a4, 0
  li a5, 0
  li a6, 0
  li a7, 0
  li s0, 0
6:
  addi s1, s1, 1
  addi s2, s2, 2
  addi s3, s3, 3
  addi s4, s4, 4
  addi s5, s5, 5
  addi s6, s6, 6
  addi s7, s7, 7
  addi s8, s8, 8
  addi s9, s9, 9
  addi s10, s10, 10
  addi s11, s11, 11
  addi a2, a2, 12
  addi a3, a3, 13
  addi a4, a4, 14
  addi a5, a5, 15
  addi a7, a7, 17
  add t1, s1, s11
  add a6, a6, t1
  add s0, s0, a7
  addi t0, t0, -1
  bnez t0, 6b
  CHECK s1, 7
  CHECK s11, 77
  CHECK a2, 84
  CHECK a5, 105
  CHECK a7, 119
  CHECK a6, 336             /* sum over i = 1..7 of 12 i */
  CHECK s0, 476             /* sum over i = 1..7 of 17 i */

  TEST(7)                   /* high products, masked shift amounts, W forms */
  li t0, 5
  li a1, 0
  li a2, -3
  li a3, 7
  li t4, 65
7:
  mulh t1, a2, a3           /* -1 */
  mulhu t2, a2, a3          /* 6 */
  mulhsu t3, a2, a3         /* -1 */
  add a1, a1, t1
  add a1, a1, t2
  add a1, a1, t3
  sll t1, a3, t4            /* 65 & 63 = 1: 14 */
  sllw t2, a3, t4           /* 65 & 31 = 1: 14 */
  add a1, a1, t1
  add a1, a1, t2
  addiw t1, a2, 0           /* -3 */
  add a1, a1, t1
  sraw t2, a2, t4           /* -3 >> 1 = -2 */
  add a1, a1, t2
  srlw t2, a2, t4           /* 0xfffffffd >> 1 = 0x7ffffffe */
  add a1, a1, t2
  addi t0, t0, -1
  bnez t0, 7b
  CHECK a1, 10737418365     /* 5 * (4 + 28 - 3 - 2 + 0x7ffffffe) */

  TEST(8)                   /* x0 as a destination stays 0 */
  la a0, buf
  li t0, 3
8:
  lw zero, 0(a0)
  add zero, a0, a0
  addi t0, t0, -1
  bnez t0, 8b
  bnez zero, fail

  TEST(9)                   /* misaligned loads leave translated code and come back */
  la a0, buf
  li t1, 0x0706050403020100
  sd t1, 0(a0)
  li t1, 0x0f0e0d0c0b0a0908
  sd t1, 8(a0)
  li t0, 3
  li a1, 0
9:
  ld t1, 1(a0)
  add a1, a1, t1
  addi t0, t0, -1
  bnez t0, 9b
  CHECK a1, 0x1815120f0c090603

  TEST(10)                  /* a loop across a page boundary */
  li t0, 10
  li a1, 0
  j 101f
  .balign 4096
  .skip 4088
  .option push
  .option norvc
101:
  addi a1, a1, 1
  addi a1, a1, 1
  addi a1, a1, 1
  addi a1, a1, 1
  addi a1, a1, 1
  addi t0, t0, -1
  bnez t0, 101b
  .option pop
  CHECK a1, 50

  j pass
  END

  .data
  .balign 4096
buf:
  .zero 64
