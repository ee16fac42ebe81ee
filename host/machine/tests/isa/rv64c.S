#include "test.h"
/* C: every RV64C instruction, written with its compressed mnemonic, checked against the
 * result of the base instruction it expands to (chapter 26). */
  START
  TEST(1)
  c.li a0, -5
  CHECK a0, -5
  c.addi a0, 7
  CHECK a0, 2
  c.addiw a0, -3
  CHECK a0, -1
  li a0, 0x7fffffff
  c.addiw a0, 1
  CHECK a0, 0xffffffff80000000
  c.lui a1, 0xfffff
  CHECK a1, 0xfffffffffffff000
  c.lui a1, 1
  CHECK a1, 0x1000
  TEST(2)
  mv s0, sp
  la sp, stack_top
  c.addi16sp sp, -64
  la a0, stack_top
  addi a0, a0, -64
  bne sp, a0, fail
  c.addi4spn a0, sp, 16
  addi a2, sp, 16
  bne a0, a2, fail
  TEST(3)
  li a0, 0x1122334455667788
  c.sdsp a0, 8(sp)
  c.ldsp a1, 8(sp)
  bne a0, a1, fail
  c.swsp a0, 16(sp)
  c.lwsp a1, 16(sp)
  CHECK a1, 0x55667788
  mv s1, sp
  li a0, -2
  c.sd a0, 24(s1)
  c.ld a2, 24(s1)
  CHECK a2, -2
  c.sw a0, 32(s1)
  c.lw a2, 32(s1)
  CHECK a2, -2
  TEST(4)
  li a0, 0xf0
  li a1, 0x3c
  mv a2, a0
  c.and a2, a1
  CHECK a2, 0x30
  mv a2, a0
  c.or a2, a1
  CHECK a2, 0xfc
  mv a2, a0
  c.xor a2, a1
  CHECK a2, 0xcc
  mv a2, a0
  c.sub a2, a1
  CHECK a2, 0xb4
  li a2, 0x80000000
  c.addw a2, a2
  CHECK a2, 0
  li a2, 0
  c.subw a2, a1
  CHECK a2, -0x3c
  mv a2, a0
  c.andi a2, -16
  CHECK a2, 0xf0
  TEST(5)
  li a2, -256
  c.srai a2, 4
  CHECK a2, -16
  c.srli a2, 60
  CHECK a2, 0xf
  c.slli a2, 60
  CHECK a2, 0xf000000000000000
  c.mv a3, a2
  bne a3, a2, fail
  c.add a3, a2
  CHECK a3, 0xe000000000000000
  TEST(6)
  li a0, 0
  c.beqz a0, 1f
  j fail
1:
  c.bnez a0, fail
  c.j 2f
  j fail
2:
  la a1, 3f
  c.jalr a1
  j 4f
3:
  c.jr ra
4:
  la a1, 5f
  c.jr a1
  j fail
5:
  TEST(7)                         /* c.fsd/c.fld/c.fsdsp/c.fldsp need FS on */
  li a0, 1 << 13
  csrs mstatus, a0
  li a0, 0x400921fb54442d18
  fmv.d.x fa0, a0
  c.fsdsp fa0, 40(sp)
  c.fldsp fa1, 40(sp)
  fmv.x.d a1, fa1
  bne a0, a1, fail
  c.fsd fa0, 48(s1)
  c.fld fa2, 48(s1)
  fmv.x.d a2, fa2
  bne a0, a2, fail
  mv sp, s0
  j pass
  END
  .bss
  .align 4
stack: .zero 256
stack_top:
