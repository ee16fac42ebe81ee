#include "test.h"
/* Virtual memory (privileged spec, 4.3-4.5): Sv39 and Sv48 walks, superpages, the U bit
 * with SUM, MXR, hardware-set A and D bits, page faults with the address in mtval,
 * non-canonical addresses, sfence.vma after a PTE change. The tests run in S-mode; the
 * M-mode handler records mcause/mtval/mepc in s8/s9/s10 and resumes in S at s11. */

#define PTE_V 0x01
#define PTE_R 0x02
#define PTE_W 0x04
#define PTE_X 0x08
#define PTE_U 0x10
#define PTE_A 0x40
#define PTE_D 0x80

/* t0 = PTE for the physical address in reg with flags */
.macro MKPTE reg, flags
  srli t0, \reg, 12
  slli t0, t0, 10
  ori t0, t0, \flags
.endm

  START
  la t0, mhandler
  csrw mtvec, t0
  /* Sv39 root: [1] and [2] identity gigapages (devices, RAM), [0] -> l1 */
  la s0, root
  li t1, 0x40000000
  MKPTE t1, PTE_V|PTE_R|PTE_W|PTE_A|PTE_D
  sd t0, 8(s0)
  li t1, 0x80000000
  MKPTE t1, PTE_V|PTE_R|PTE_W|PTE_X|PTE_A|PTE_D
  sd t0, 16(s0)
  la t1, l1
  MKPTE t1, PTE_V
  sd t0, 0(s0)
  la s1, l1
  la t1, l0
  MKPTE t1, PTE_V
  sd t0, 0(s1)
  /* l1[1]: a 2 MiB superpage whose PPN is not 2 MiB aligned (reserved: page fault) */
  li t1, 0x80001000
  MKPTE t1, PTE_V|PTE_R|PTE_A
  sd t0, 8(s1)
  la s2, l0
  la t1, page1
  MKPTE t1, PTE_V|PTE_R|PTE_W|PTE_U        /* 0x1000: user RW, A and D clear */
  sd t0, 8(s2)
  MKPTE t1, PTE_V|PTE_R|PTE_A              /* 0x2000: read-only */
  sd t0, 16(s2)
  MKPTE t1, PTE_V|PTE_X|PTE_A              /* 0x3000: execute-only */
  sd t0, 24(s2)
  la t1, ucode
  MKPTE t1, PTE_V|PTE_R|PTE_X|PTE_U|PTE_A  /* 0x4000: user code */
  sd t0, 32(s2)
  MKPTE t1, PTE_V|PTE_R|PTE_X|PTE_A        /* 0x5000: supervisor code */
  sd t0, 40(s2)
  /* Sv48 root: [0] and [1] -> the Sv39 root used as a level-2 table */
  la s3, root4
  MKPTE s0, PTE_V
  sd t0, 0(s3)
  sd t0, 8(s3)

  srli a0, s0, 12
  li a1, 8 << 60
  or a0, a0, a1
  csrw satp, a0
  li a0, 3 << 11
  csrc mstatus, a0
  li a0, 1 << 11
  csrs mstatus, a0
  la a0, s_start
  csrw mepc, a0
  mret

s_start:
  TEST(1)                         /* S may not touch U pages without SUM */
  la s11, 1f
  li a1, 0x1000
  ld a0, 0(a1)
1:
  CHECK s8, 13
  CHECK s9, 0x1000
  TEST(2)                         /* with SUM it may; A then D get set */
  li a0, 1 << 18
  csrs sstatus, a0
  li s8, 0
  ld a0, 0(a1)
  CHECK s8, 0
  CHECK a0, 0x1122334455667788
  ld a0, 8(s2)
  andi a0, a0, PTE_A|PTE_D
  CHECK a0, PTE_A
  li a0, 77
  sd a0, 8(a1)
  ld a0, 8(s2)
  andi a0, a0, PTE_A|PTE_D
  CHECK a0, PTE_A|PTE_D
  la a0, page1
  ld a0, 8(a0)
  CHECK a0, 77
  TEST(3)                         /* store to a read-only page */
  la s11, 1f
  li a1, 0x2008
  sd a0, 0(a1)
1:
  CHECK s8, 15
  CHECK s9, 0x2008
  TEST(4)                         /* execute-only pages are readable only with MXR */
  la s11, 1f
  li a1, 0x3000
  ld a0, 0(a1)
1:
  CHECK s8, 13
  li a0, 1 << 19
  csrs sstatus, a0
  li s8, 0
  ld a0, 0(a1)
  CHECK s8, 0
  CHECK a0, 0x1122334455667788
  li a0, 1 << 19
  csrc sstatus, a0
  TEST(5)                         /* non-canonical Sv39 address */
  la s11, 1f
  li a1, 0x8000001000
  ld a0, 0(a1)
1:
  CHECK s8, 13
  CHECK s9, 0x8000001000
  TEST(6)                         /* U-mode code on a U page */
  la s11, 1f
  li a0, 1 << 8
  csrc sstatus, a0                /* SPP = U */
  li a0, 0x4000
  csrw sepc, a0
  sret
1:
  CHECK s8, 8                     /* its ecall */
  CHECK a0, 0x1122334455667788
  TEST(7)                         /* U-mode may not execute a supervisor page */
  la s11, 1f
  li a0, 1 << 8
  csrc sstatus, a0
  li a0, 0x5000
  csrw sepc, a0
  sret
1:
  CHECK s8, 12
  CHECK s9, 0x5000
  TEST(8)                         /* misaligned superpage */
  la s11, 1f
  li a1, 0x200000
  ld a0, 0(a1)
1:
  CHECK s8, 13
  TEST(9)                         /* a changed PTE is seen after sfence.vma */
  li a1, 0x1000
  ld a0, 0(a1)                    /* cached translation */
  la t1, page2
  MKPTE t1, PTE_V|PTE_R|PTE_W|PTE_A|PTE_D
  sd t0, 8(s2)
  sfence.vma
  ld a0, 0(a1)
  CHECK a0, 0x99aabbccddeeff00
  TEST(10)                        /* Sv48: the same tables one level down */
  srli a0, s3, 12
  li t1, 9 << 60
  or a0, a0, t1
  csrw satp, a0
  sfence.vma
  li s8, 0
  ld a0, 0(a1)
  CHECK a0, 0x99aabbccddeeff00
  li a1, 0x8000001000             /* canonical in Sv48: root4[1] */
  ld a0, 0(a1)
  CHECK s8, 0
  CHECK a0, 0x99aabbccddeeff00
  la s11, 1f
  li a1, 0x800000000000           /* bit 47 without sign extension */
  ld a0, 0(a1)
1:
  CHECK s8, 13
  j pass

  .align 2
mhandler:
  csrr s8, mcause
  csrr s9, mtval
  csrr s10, mepc
  li t0, 3 << 11
  csrc mstatus, t0
  li t0, 1 << 11
  csrs mstatus, t0
  csrw mepc, s11
  mret
  END

  .text
  .align 12
ucode:                            /* runs at VA 0x4000 / 0x5000 */
  li a1, 0x1000
  ld a0, 0(a1)
  ecall
  .align 12

  .data
  .align 12
page1: .dword 0x1122334455667788, 0
  .align 12
page2: .dword 0x99aabbccddeeff00, 0
  .bss
  .align 12
root: .zero 4096
root4: .zero 4096
l1: .zero 4096
l0: .zero 4096
