#include "test.h"
/* RV64I: arithmetic, shifts, comparisons, branches, jumps, loads and stores (with sign
 * and zero extension), and misaligned accesses (emulated by the machine). Expected values
 * follow the definitions in the unprivileged manual, chapters 2 and 4. */
  .option norvc
  START

  TEST(1)
  li a0, 0x7fffffffffffffff
  addi a1, a0, 1
  CHECK a1, 0x8000000000000000
  TEST(2)
  li a0, 0xffffffff
  addiw a1, a0, 1          /* 32-bit wrap, sign-extended */
  CHECK a1, 0
  li a0, 0x7fffffff
  addiw a1, a0, 1
  CHECK a1, 0xffffffff80000000
  TEST(3)
  li a0, 5
  li a1, -7
  sub a2, a0, a1
  CHECK a2, 12
  subw a2, a1, a0
  CHECK a2, -12
  TEST(4)
  li a0, 0x8000000000000001
  slli a1, a0, 1
  CHECK a1, 2
  srli a1, a0, 63
  CHECK a1, 1
  srai a1, a0, 62
  CHECK a1, -2
  li a2, 65                 /* shift amounts use the low 6 bits */
  sll a1, a0, a2
  CHECK a1, 2
  sra a1, a0, a2
  CHECK a1, 0xc000000000000000
  srl a1, a0, a2
  CHECK a1, 0x4000000000000000
  TEST(5)
  li a0, 0x80000001
  slliw a1, a0, 1
  CHECK a1, 2
  sraiw a1, a0, 4
  CHECK a1, 0xfffffffff8000000
  srliw a1, a0, 4
  CHECK a1, 0x08000000
  li a2, 33                 /* 32-bit shifts use the low 5 bits */
  sllw a1, a0, a2
  CHECK a1, 2
  sraw a1, a0, a2
  CHECK a1, 0xffffffffc0000000
  srlw a1, a0, a2
  CHECK a1, 0x40000000
  TEST(6)
  li a0, -1
  li a1, 1
  slt a2, a0, a1
  CHECK a2, 1
  sltu a2, a0, a1
  CHECK a2, 0
  slti a2, a0, 0
  CHECK a2, 1
  sltiu a2, a1, -1          /* the immediate is sign-extended, then compared unsigned */
  CHECK a2, 1
  TEST(7)
  li a0, 0xf0f0
  xori a1, a0, -1
  CHECK a1, 0xffffffffffff0f0f
  ori a1, a0, 0x0f
  CHECK a1, 0xf0ff
  andi a1, a0, 0x0ff
  CHECK a1, 0xf0
  li a2, 0xff00
  and a1, a0, a2
  CHECK a1, 0xf000
  or a1, a0, a2
  CHECK a1, 0xfff0
  xor a1, a0, a2
  CHECK a1, 0x0ff0
  TEST(8)
  lui a0, 0x80000           /* sign-extended on RV64 */
  CHECK a0, 0xffffffff80000000
1:
  auipc a0, 0               /* auipc gives the address of itself */
  la a1, 1b
  bne a0, a1, fail
  TEST(9)
  li a0, 1
  li a1, 2
  beq a0, a1, fail
  bne a0, a0, fail
  blt a1, a0, fail
  bge a0, a1, fail
  li a2, -1
  bltu a2, a0, fail
  bgeu a0, a2, fail
  blt a2, a0, 2f
  j fail
2:
  bgeu a2, a0, 3f
  j fail
3:
  TEST(10)
  jal ra, 4f
  j fail
4:
  la a0, 4b
  addi a0, a0, -4
  bne ra, a0, fail          /* ra = address of the jal + 4 */
  la a0, 5f
  addi a0, a0, 1            /* jalr clears bit 0 of the target */
  jalr ra, 0(a0)
  j fail
5:
  TEST(11)
  la s0, data
  lb a0, 0(s0)
  CHECK a0, 0xffffffffffffff81
  lbu a0, 0(s0)
  CHECK a0, 0x81
  lh a0, 0(s0)
  CHECK a0, 0xffffffffffff8281
  lhu a0, 0(s0)
  CHECK a0, 0x8281
  lw a0, 0(s0)
  CHECK a0, 0xffffffff84838281
  lwu a0, 0(s0)
  CHECK a0, 0x84838281
  ld a0, 0(s0)
  CHECK a0, 0x8887868584838281
  TEST(12)
  la s1, scratch
  li a0, 0x1122334455667788
  sd a0, 0(s1)
  sb zero, 0(s1)
  sh zero, 2(s1)
  sw zero, 4(s1)
  ld a1, 0(s1)
  CHECK a1, 0x0000000000007700
  TEST(13)                  /* misaligned loads and stores are emulated */
  ld a0, 1(s0)
  CHECK a0, 0x0988878685848382
  lw a0, 3(s0)
  CHECK a0, 0xffffffff87868584
  lhu a0, 7(s0)
  CHECK a0, 0x0988
  li a0, 0xa1a2a3a4a5a6a7a8
  sd a0, 3(s1)
  ld a1, 0(s1)
  CHECK a1, 0xa4a5a6a7a8007700
  ld a1, 8(s1)
  CHECK a1, 0x0000000000a1a2a3
  TEST(14)                  /* x0 stays zero */
  li x0, 5
  addi x0, x0, 1
  bnez x0, fail
  TEST(15)                  /* fence and fence.i are accepted */
  fence
  fence rw, rw
  fence.i
  TEST(16)                  /* self-modifying code: a store changes the next execution */
  la s2, patch
  li a1, 0x00700513         /* addi a0, zero, 7 */
  li t0, 2
6:
  jal ra, patch
  addi t0, t0, -1
  beqz t0, 7f
  sw a1, 0(s2)
  fence.i
  j 6b
7:
  CHECK a0, 7
  j pass

patch:
  addi a0, zero, 3
  ret

  END

  .data
  .align 3
data:
  .byte 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x09, 0x0a, 0, 0, 0, 0, 0, 0
scratch:
  .dword 0, 0, 0
