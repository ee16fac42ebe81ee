#include "test.h"
/* F and D through the hart: NaN-boxing, canonical NaNs, fflags, static and dynamic
 * rounding modes, fused multiply-add sign variants, conversions, fclass, and the
 * illegal-instruction cases (FS off, reserved rounding modes). */

.macro FS freg, val
  li t0, \val
  fmv.w.x \freg, t0
.endm
.macro FD freg, val
  li t0, \val
  fmv.d.x \freg, t0
.endm
/* a0 = fflags, then clear them */
.macro FLAGS
  csrrw a0, fflags, zero
.endm

  START
  la t0, mhandler
  csrw mtvec, t0

  TEST(1)                         /* FS = off: FP instructions and fcsr are illegal */
  la s11, 1f
  fadd.s fa0, fa0, fa0
1:
  CHECK s8, 2
  li s8, 0
  la s11, 1f
  csrr a0, fcsr
1:
  CHECK s8, 2
  li a0, 1 << 13                  /* FS = initial */
  csrs mstatus, a0
  li s8, 0

  TEST(2)                         /* single arithmetic, NaN-boxing */
  FS fa0, 0x3fc00000              /* 1.5 */
  FS fa1, 0x40100000              /* 2.25 */
  fadd.s fa2, fa0, fa1
  fmv.x.w a0, fa2
  CHECK a0, 0x40700000
  fmv.x.d a0, fa2
  CHECK a0, 0xffffffff40700000    /* boxed */
  csrr a0, mstatus
  srli a0, a0, 13
  andi a0, a0, 3
  CHECK a0, 3                     /* FS = dirty */
  csrr a0, mstatus
  bgez a0, fail                   /* SD set */
  FD fa3, 0x000000003f800000      /* not a boxed single */
  fadd.s fa2, fa3, fa0
  fmv.x.w a0, fa2
  CHECK a0, 0x7fc00000            /* unboxed input reads as the canonical NaN */
  FS fa0, 0xbf800000
  fmv.x.w a0, fa0
  CHECK a0, 0xffffffffbf800000    /* fmv.x.w sign-extends */
  FLAGS

  TEST(3)                         /* flags and canonical NaNs */
  FS fa0, 0x3f800000
  FS fa1, 0x00000000
  fdiv.s fa2, fa0, fa1
  fmv.x.w a0, fa2
  CHECK a0, 0x7f800000
  FLAGS
  CHECK a0, 0x08                  /* DZ */
  fdiv.s fa2, fa1, fa1
  fmv.x.w a0, fa2
  CHECK a0, 0x7fc00000
  FLAGS
  CHECK a0, 0x10                  /* NV */
  FD fa0, 0xbff0000000000000      /* -1.0 */
  fsqrt.d fa2, fa0
  fmv.x.d a0, fa2
  CHECK a0, 0x7ff8000000000000
  FLAGS
  CHECK a0, 0x10

  TEST(4)                         /* static rounding modes on 1/3 and -1/3 */
  FS fa0, 0x3f800000
  FS fa1, 0x40400000
  FS fa3, 0xbf800000
  fdiv.s fa2, fa0, fa1, rne
  fmv.x.w a0, fa2
  CHECK a0, 0x3eaaaaab
  fdiv.s fa2, fa0, fa1, rtz
  fmv.x.w a0, fa2
  CHECK a0, 0x3eaaaaaa
  fdiv.s fa2, fa0, fa1, rup
  fmv.x.w a0, fa2
  CHECK a0, 0x3eaaaaab
  fdiv.s fa2, fa3, fa1, rup
  fmv.x.w a0, fa2
  CHECK a0, 0xffffffffbeaaaaaa
  fdiv.s fa2, fa3, fa1, rdn
  fmv.x.w a0, fa2
  CHECK a0, 0xffffffffbeaaaaab
  FLAGS
  CHECK a0, 0x01                  /* NX */

  TEST(5)                         /* conversions: rounding, saturation */
  FS fa0, 0x40200000              /* 2.5 */
  fcvt.w.s a0, fa0, rne
  CHECK a0, 2
  fcvt.w.s a0, fa0, rmm
  CHECK a0, 3
  fcvt.w.s a0, fa0, rdn
  CHECK a0, 2
  csrwi frm, 3                    /* dynamic: RUP */
  fcvt.w.s a0, fa0
  CHECK a0, 3
  csrr a0, fcsr
  CHECK a0, 0x61                  /* frm = 3, NX */
  csrwi frm, 0
  FS fa1, 0x7fc00000
  fcvt.w.s a0, fa1
  CHECK a0, 0x7fffffff
  FS fa1, 0xbf800000
  fcvt.wu.s a0, fa1
  CHECK a0, 0
  fcvt.lu.s a0, fa1
  CHECK a0, 0
  FLAGS
  CHECK a0, 0x11
  FS fa1, 0xcf000000              /* -2^31 */
  fcvt.wu.s a0, fa1, rtz
  CHECK a0, 0
  FD fa1, 0x41dfffffffc00000      /* 2^31 - 1 */
  fcvt.w.d a0, fa1
  CHECK a0, 0x7fffffff
  fcvt.wu.d a0, fa1
  CHECK a0, 0x7fffffff
  FD fa1, 0x41f0000000000000      /* 2^32 */
  fcvt.wu.d a0, fa1
  CHECK a0, -1                    /* saturated 0xffffffff, sign-extended */
  FLAGS
  li a0, 0x20000000000001         /* 2^53 + 1 */
  fcvt.d.l fa2, a0
  fmv.x.d a0, fa2
  CHECK a0, 0x4340000000000000
  FLAGS
  CHECK a0, 0x01
  li a0, -1
  fcvt.s.lu fa2, a0
  fmv.x.w a0, fa2
  CHECK a0, 0x5f800000            /* 2^64 */
  fcvt.s.w fa2, a0               /* a0 = 0x5f800000 as an int */
  FD fa2, 0x3ff0000000000000
  fcvt.s.d fa3, fa2
  fmv.x.w a0, fa3
  CHECK a0, 0x3f800000
  fcvt.d.s fa4, fa3
  fmv.x.d a0, fa4
  CHECK a0, 0x3ff0000000000000
  FLAGS

  TEST(6)                         /* fused multiply-add variants, one rounding */
  FD fa0, 0x4000000000000000      /* 2 */
  FD fa1, 0x4008000000000000      /* 3 */
  FD fa2, 0x3ff0000000000000      /* 1 */
  fmadd.d fa3, fa0, fa1, fa2
  fmv.x.d a0, fa3
  CHECK a0, 0x401c000000000000    /* 7 */
  fmsub.d fa3, fa0, fa1, fa2
  fmv.x.d a0, fa3
  CHECK a0, 0x4014000000000000    /* 5 */
  fnmsub.d fa3, fa0, fa1, fa2
  fmv.x.d a0, fa3
  CHECK a0, 0xc014000000000000    /* -5 */
  fnmadd.d fa3, fa0, fa1, fa2
  fmv.x.d a0, fa3
  CHECK a0, 0xc01c000000000000    /* -7 */
  FS fa0, 0x3f800800              /* a = 1 + 2^-12 */
  FS fa1, 0xbf800000              /* -1 */
  fmadd.s fa3, fa0, fa0, fa1      /* a*a - 1 = 2^-11 + 2^-24 exactly */
  fmv.x.w a0, fa3
  CHECK a0, 0x3a000400
  fmul.s fa3, fa0, fa0            /* two roundings lose the 2^-24 */
  fadd.s fa3, fa3, fa1
  fmv.x.w a0, fa3
  CHECK a0, 0x3a000000

  TEST(7)                         /* sign injection, min/max, compare, classify */
  FLAGS
  FD fa0, 0x3ff0000000000000
  FD fa1, 0x8000000000000000      /* -0 */
  fsgnj.d fa2, fa0, fa1
  fmv.x.d a0, fa2
  CHECK a0, 0xbff0000000000000
  fsgnjn.d fa2, fa2, fa2
  fmv.x.d a0, fa2
  CHECK a0, 0x3ff0000000000000
  fsgnjx.d fa2, fa1, fa1
  fmv.x.d a0, fa2
  CHECK a0, 0
  FD fa2, 0
  fmin.d fa3, fa1, fa2
  fmv.x.d a0, fa3
  CHECK a0, 0x8000000000000000
  fmax.d fa3, fa1, fa2
  fmv.x.d a0, fa3
  CHECK a0, 0
  FD fa4, 0x7ff8000000000000
  fmin.d fa3, fa4, fa0
  fmv.x.d a0, fa3
  CHECK a0, 0x3ff0000000000000
  FLAGS
  CHECK a0, 0
  FD fa5, 0x7ff0000000000001      /* signaling NaN */
  feq.d a0, fa5, fa0
  CHECK a0, 0
  FLAGS
  CHECK a0, 0x10
  feq.d a0, fa4, fa0              /* quiet NaN: feq is quiet */
  FLAGS
  CHECK a0, 0
  flt.d a0, fa4, fa0              /* but flt signals */
  FLAGS
  CHECK a0, 0x10
  fle.d a0, fa1, fa2              /* -0 <= +0 */
  CHECK a0, 1
  flt.d a0, fa1, fa2
  CHECK a0, 0
  fclass.d a0, fa1
  CHECK a0, 0x8
  fclass.d a0, fa4
  CHECK a0, 0x200
  fclass.d a0, fa5
  CHECK a0, 0x100
  FS fa6, 0x7f800000
  fclass.s a0, fa6
  CHECK a0, 0x80

  TEST(8)                         /* memory: flw boxes, fsw stores the low bits */
  la s0, fpdata
  flw fa0, 0(s0)
  fmv.x.d a0, fa0
  CHECK a0, 0xffffffff3fc00000
  fsw fa0, 8(s0)
  lwu a0, 8(s0)
  CHECK a0, 0x3fc00000
  fld fa1, 16(s0)
  fsd fa1, 24(s0)
  ld a0, 24(s0)
  CHECK a0, 0x400921fb54442d18

  TEST(9)                         /* reserved rounding modes are illegal */
  la s11, 1f
  .word 0x00b55553                /* fadd.s fa0, fa0, fa1 with rm = 5 */
1:
  CHECK s8, 2
  li s8, 0
  csrwi frm, 6
  la s11, 1f
  fadd.s fa0, fa0, fa1            /* dynamic with frm = 6 */
1:
  CHECK s8, 2
  li s8, 0
  fsgnj.s fa0, fa0, fa1           /* no rm field: fine even with frm = 6 */
  CHECK s8, 0
  csrwi frm, 0
  j pass

  .align 2
mhandler:
  csrr s8, mcause
  csrr s9, mtval
  csrw mepc, s11
  mret
  END
  .data
  .align 3
fpdata: .word 0x3fc00000, 0
  .dword 0
  .dword 0x400921fb54442d18
  .dword 0
