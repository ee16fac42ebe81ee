/* Start-up code of the C tests: stack, FPU on, .bss cleared, main(), halt with its
 * return value as the exit code. */
  .section .text.init, "ax"
  .globl _start
_start:
  la sp, stack_top
  li t0, 1 << 13                  /* mstatus.FS = initial */
  csrs mstatus, t0
  la t0, __bss_start
  la t1, __bss_end
1:
  bgeu t0, t1, 2f
  sd zero, 0(t0)
  addi t0, t0, 8
  j 1b
2:
  call main
  slli a0, a0, 1
  ori a0, a0, 1
  li t0, 0x40008000
  sd a0, 0(t0)
3: j 3b

  .bss
  .align 4
  .zero 65536
stack_top:
