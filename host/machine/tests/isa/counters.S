#include "test.h"
/* Counter and trigger CSRs: minstret is writable and the value written is what the next
 * instruction reads (the writing instruction's own increment is suppressed); mcycle is
 * the machine's clock and ignores writes; with no triggers, tselect does not read back
 * what was written and tdata1 reads type 0. */

  START
  TEST(1)                         /* minstret write, increment suppressed */
  csrwi minstret, 0
  csrr a0, minstret
  CHECK a0, 0
  TEST(2)                         /* one retired instruction later */
  csrwi minstret, 5
  nop
  csrr a0, minstret
  CHECK a0, 6
  TEST(3)                         /* wraps around */
  li t0, -1
  csrw minstret, t0
  nop
  csrr a0, minstret
  CHECK a0, 0
  TEST(4)                         /* mcycle keeps counting */
  csrr a1, mcycle
  csrw mcycle, zero
  csrr a2, mcycle
  bgeu a1, a2, fail
  TEST(5)                         /* no triggers */
  li a0, 1
  csrw tselect, a0
  csrr a1, tselect
  beq a0, a1, fail
  csrw tselect, zero
  li a0, (2 << 60) | (1 << 6) | (1 << 2)
  csrw tdata1, a0
  csrr a1, tdata1
  srli a1, a1, 60
  CHECK a1, 0
  j pass

  END
