#include "test.h"
/* M: products and quotients, with the division-by-zero and overflow results of the
 * manual's table (chapter 13.2): no traps. */
  START
  TEST(1)
  li a0, -3
  li a1, 7
  mul a2, a0, a1
  CHECK a2, -21
  mulh a2, a0, a1
  CHECK a2, -1
  mulhu a2, a0, a1
  CHECK a2, 6
  mulhsu a2, a0, a1
  CHECK a2, -1
  mulhsu a2, a1, a0         /* 7 * (2^64 - 3) >> 64 = 6 */
  CHECK a2, 6
  TEST(2)
  li a0, 0x100000000
  mulw a2, a0, a0           /* low 32 bits are zero */
  CHECK a2, 0
  li a0, 0x10000
  mulw a2, a0, a0
  CHECK a2, 0
  li a0, 0xffff
  mulw a2, a0, a0
  CHECK a2, 0xfffffffffffe0001
  TEST(3)
  li a0, -7
  li a1, 2
  div a2, a0, a1
  CHECK a2, -3              /* rounds towards zero */
  rem a2, a0, a1
  CHECK a2, -1              /* sign of the dividend */
  divu a2, a0, a1
  CHECK a2, 0x7ffffffffffffffc
  remu a2, a0, a1
  CHECK a2, 1
  TEST(4)
  li a1, 0
  div a2, a0, a1
  CHECK a2, -1
  divu a2, a0, a1
  CHECK a2, -1
  rem a2, a0, a1
  CHECK a2, -7
  remu a2, a0, a1
  CHECK a2, -7
  TEST(5)
  li a0, 0x8000000000000000
  li a1, -1
  div a2, a0, a1
  CHECK a2, 0x8000000000000000
  rem a2, a0, a1
  CHECK a2, 0
  TEST(6)
  li a0, 0xffffffff80000000
  li a1, -1
  divw a2, a0, a1
  CHECK a2, 0xffffffff80000000
  remw a2, a0, a1
  CHECK a2, 0
  li a1, 0
  divw a2, a0, a1
  CHECK a2, -1
  divuw a2, a0, a1
  CHECK a2, -1
  remw a2, a0, a1
  CHECK a2, 0xffffffff80000000
  remuw a2, a0, a1
  CHECK a2, 0xffffffff80000000
  TEST(7)
  li a0, 0x1234567880000007   /* W forms read only the low 32 bits */
  li a1, 0x9999999900000002
  divuw a2, a0, a1
  CHECK a2, 0x40000003
  remuw a2, a0, a1
  CHECK a2, 1
  divw a2, a0, a1
  CHECK a2, 0xffffffffc0000004
  remw a2, a0, a1
  CHECK a2, -1
  j pass
  END
