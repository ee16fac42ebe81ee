#include "test.h"
/* Smallest program: prints a line through HTIF and halts with exit code 0. */
  START
  la s0, msg
1:
  lbu a0, 0(s0)
  beqz a0, pass
  PUTCHAR
  addi s0, s0, 1
  j 1b
  END
  .section .rodata
msg: .string "hello from the machine\n"
