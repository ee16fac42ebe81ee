/* Shared macros of the bare-metal ISA tests.
 *
 * Each test sets `gp` to its number (TEST), checks registers against values computed from
 * the RISC-V manual (CHECK) and ends with PASS, which halts through HTIF with exit code 0.
 * Any failed check halts with exit code = the current test number; an unexpected trap
 * halts with exit code 1000 + mcause (interrupts: 2000 + code). */

#define HTIF_TOHOST 0x40008000
#define TEST(n) li gp, n

.macro CHECK reg, val
  li t6, \val
  bne \reg, t6, fail
.endm

/* Prints the byte in a0 through HTIF (dev 1, cmd 1); clobbers t5, t6. */
.macro PUTCHAR
  li t6, 0x0101000000000000
  or t6, t6, a0
  li t5, HTIF_TOHOST
  sd t6, 0(t5)
.endm

.macro START
  .section .text.init, "ax"
  .globl _start
_start:
  la t0, trap_unexpected
  csrw mtvec, t0
  li gp, 0
.endm

.macro END
pass:
  li t0, 1
  li t1, HTIF_TOHOST
  sd t0, 0(t1)
1: j 1b
fail:
  slli t0, gp, 1
  ori t0, t0, 1
  li t1, HTIF_TOHOST
  sd t0, 0(t1)
2: j 2b
  .align 2
trap_unexpected:
  csrr gp, mcause
  bgez gp, 3f
  slli gp, gp, 1
  srli gp, gp, 1
  addi gp, gp, 1000
3:
  addi gp, gp, 1000
  j fail
.endm
