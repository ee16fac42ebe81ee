/*
 * Reference oracle for cmbuild's softfloat differential test (tests/softfloat_qemu.rs).
 *
 * A freestanding static riscv64 Linux program (no libc needed: build with
 * `riscv64-linux-gnu-gcc -static -O2 -nostdlib -ffreestanding`), run under qemu-riscv64 or
 * on real RISC-V hardware. Reads fixed 32-byte records from stdin until EOF:
 *     u32 op, u32 rm, u64 a, u64 b, u64 c          (little endian)
 * and, once all input is read (so the caller may write everything before reading), writes
 * one 16-byte record per input:  u64 result register bits, u64 fflags.
 *
 * Every operation is a real RISC-V F/D instruction with a static rounding-mode field;
 * fflags is cleared right before it and read right after it inside the same asm block.
 * op = base + 32 * fmt, fmt 0 = single (.s), 1 = double (.d); base numbers below must
 * match the Rust test. Results are raw register contents (the test masks 32-bit ones).
 */
#include <stdint.h>

typedef unsigned long size_t;
typedef long ssize_t;

struct vec {
    uint32_t op, rm;
    uint64_t a, b, c;
};

static long syscall3(long n, long a0, long a1, long a2) {
    register long x10 __asm__("a0") = a0;
    register long x11 __asm__("a1") = a1;
    register long x12 __asm__("a2") = a2;
    register long x17 __asm__("a7") = n;
    __asm__ volatile("ecall" : "+r"(x10) : "r"(x11), "r"(x12), "r"(x17) : "memory");
    return x10;
}

static ssize_t sys_read(int fd, void *buf, size_t len) { return syscall3(63, fd, (long)buf, (long)len); }
static ssize_t sys_write(int fd, const void *buf, size_t len) { return syscall3(64, fd, (long)buf, (long)len); }
static void __attribute__((noreturn)) sys_exit(int code) {
    syscall3(93, code, 0, 0);
    for (;;) {}
}

static void write_all(int fd, const char *p, size_t len) {
    while (len > 0) {
        ssize_t n = sys_write(fd, p, len);
        if (n <= 0) sys_exit(3);
        p += n;
        len -= (size_t)n;
    }
}

static void write_uint(unsigned v) {
    char buf[12];
    int i = sizeof buf;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    write_all(2, buf + i, sizeof buf - (size_t)i);
}

static void __attribute__((noreturn)) die(const char *msg, unsigned op, unsigned rm) {
    size_t len = 0;
    while (msg[len]) len++;
    write_all(2, "fpref: ", 7);
    write_all(2, msg, len);
    write_all(2, " (op ", 5);
    write_uint(op);
    write_all(2, " rm ", 4);
    write_uint(rm);
    write_all(2, ")\n", 2);
    sys_exit(2);
}

#define RM_CASES(M, ...)                                                                 \
    switch (rm) {                                                                        \
    case 0: M(__VA_ARGS__, "rne"); break;                                                \
    case 1: M(__VA_ARGS__, "rtz"); break;                                                \
    case 2: M(__VA_ARGS__, "rdn"); break;                                                \
    case 3: M(__VA_ARGS__, "rup"); break;                                                \
    case 4: M(__VA_ARGS__, "rmm"); break;                                                \
    default: die("bad rounding mode", op, rm);                                           \
    }

/* float op float -> float, rounded */
#define F2(mvi, mvo, insn, RM)                                                           \
    __asm__ volatile(mvi " ft0, %2\n\t" mvi " ft1, %3\n\tcsrw fflags, zero\n\t" insn     \
                     " ft2, ft0, ft1, " RM "\n\tcsrr %1, fflags\n\t" mvo " %0, ft2"      \
                     : "=r"(r), "=r"(fl) : "r"(a), "r"(b) : "ft0", "ft1", "ft2")
/* float op float -> float, no rounding (fmin/fmax) */
#define F2N(mvi, mvo, insn)                                                              \
    __asm__ volatile(mvi " ft0, %2\n\t" mvi " ft1, %3\n\tcsrw fflags, zero\n\t" insn     \
                     " ft2, ft0, ft1\n\tcsrr %1, fflags\n\t" mvo " %0, ft2"              \
                     : "=r"(r), "=r"(fl) : "r"(a), "r"(b) : "ft0", "ft1", "ft2")
/* float op float -> integer register (comparisons) */
#define CMP(mvi, insn)                                                                   \
    __asm__ volatile(mvi " ft0, %2\n\t" mvi " ft1, %3\n\tcsrw fflags, zero\n\t" insn     \
                     " %0, ft0, ft1\n\tcsrr %1, fflags"                                  \
                     : "=&r"(r), "=r"(fl) : "r"(a), "r"(b) : "ft0", "ft1")
/* float -> float, rounded (sqrt, narrowing conversion) */
#define F1(mvi, mvo, insn, RM)                                                           \
    __asm__ volatile(mvi " ft0, %2\n\tcsrw fflags, zero\n\t" insn " ft2, ft0, " RM       \
                     "\n\tcsrr %1, fflags\n\t" mvo " %0, ft2"                            \
                     : "=r"(r), "=r"(fl) : "r"(a) : "ft0", "ft2")
/* float -> float, exact (widening conversion) */
#define F1N(mvi, mvo, insn)                                                              \
    __asm__ volatile(mvi " ft0, %2\n\tcsrw fflags, zero\n\t" insn " ft2, ft0"            \
                     "\n\tcsrr %1, fflags\n\t" mvo " %0, ft2"                            \
                     : "=r"(r), "=r"(fl) : "r"(a) : "ft0", "ft2")
/* float -> integer register, rounded */
#define TOI(mvi, insn, RM)                                                               \
    __asm__ volatile(mvi " ft0, %2\n\tcsrw fflags, zero\n\t" insn " %0, ft0, " RM        \
                     "\n\tcsrr %1, fflags"                                               \
                     : "=&r"(r), "=r"(fl) : "r"(a) : "ft0")
/* float -> integer register, no rounding (fclass) */
#define CLASS(mvi, insn)                                                                 \
    __asm__ volatile(mvi " ft0, %2\n\tcsrw fflags, zero\n\t" insn " %0, ft0"             \
                     "\n\tcsrr %1, fflags"                                               \
                     : "=&r"(r), "=r"(fl) : "r"(a) : "ft0")
/* integer register -> float, rounded */
#define FROMI(mvo, insn, RM)                                                             \
    __asm__ volatile("csrw fflags, zero\n\t" insn " ft2, %2, " RM                        \
                     "\n\tcsrr %1, fflags\n\t" mvo " %0, ft2"                            \
                     : "=r"(r), "=r"(fl) : "r"(a) : "ft2")
/* integer register -> float, exact (binutils rejects an rm field on fcvt.d.w/wu) */
#define FROMIN(mvo, insn)                                                                \
    __asm__ volatile("csrw fflags, zero\n\t" insn " ft2, %2"                              \
                     "\n\tcsrr %1, fflags\n\t" mvo " %0, ft2"                            \
                     : "=r"(r), "=r"(fl) : "r"(a) : "ft2")
/* fused multiply-add family */
#define F3(mvi, mvo, insn, RM)                                                           \
    __asm__ volatile(mvi " ft0, %2\n\t" mvi " ft1, %3\n\t" mvi " ft2, %4\n\t"            \
                     "csrw fflags, zero\n\t" insn " ft3, ft0, ft1, ft2, " RM             \
                     "\n\tcsrr %1, fflags\n\t" mvo " %0, ft3"                            \
                     : "=r"(r), "=r"(fl) : "r"(a), "r"(b), "r"(c)                        \
                     : "ft0", "ft1", "ft2", "ft3")

/* The same table for each format: S = .s or .d suffix, mvi/mvo = moves in and out. */
#define FORMAT_CASES(base, S, mvi, mvo, FROM_W, FROM_WU, OTHER_CVT)                                       \
    case base + 0: RM_CASES(F2, mvi, mvo, "fadd" S); break;                              \
    case base + 1: RM_CASES(F2, mvi, mvo, "fsub" S); break;                              \
    case base + 2: RM_CASES(F2, mvi, mvo, "fmul" S); break;                              \
    case base + 3: RM_CASES(F2, mvi, mvo, "fdiv" S); break;                              \
    case base + 4: RM_CASES(F1, mvi, mvo, "fsqrt" S); break;                             \
    case base + 5: RM_CASES(F3, mvi, mvo, "fmadd" S); break;                             \
    case base + 6: RM_CASES(F3, mvi, mvo, "fmsub" S); break;                             \
    case base + 7: RM_CASES(F3, mvi, mvo, "fnmsub" S); break;                            \
    case base + 8: RM_CASES(F3, mvi, mvo, "fnmadd" S); break;                            \
    case base + 9: F2N(mvi, mvo, "fmin" S); break;                                       \
    case base + 10: F2N(mvi, mvo, "fmax" S); break;                                      \
    case base + 11: CMP(mvi, "feq" S); break;                                            \
    case base + 12: CMP(mvi, "flt" S); break;                                            \
    case base + 13: CMP(mvi, "fle" S); break;                                            \
    case base + 14: CLASS(mvi, "fclass" S); break;                                       \
    case base + 15: RM_CASES(TOI, mvi, "fcvt.w" S); break;                               \
    case base + 16: RM_CASES(TOI, mvi, "fcvt.wu" S); break;                              \
    case base + 17: RM_CASES(TOI, mvi, "fcvt.l" S); break;                               \
    case base + 18: RM_CASES(TOI, mvi, "fcvt.lu" S); break;                              \
    case base + 19: FROM_W; break;                                                       \
    case base + 20: FROM_WU; break;                                                      \
    case base + 21: RM_CASES(FROMI, mvo, "fcvt" S ".l"); break;                          \
    case base + 22: RM_CASES(FROMI, mvo, "fcvt" S ".lu"); break;                         \
    case base + 23: OTHER_CVT; break;

static void run(const struct vec *v, uint64_t *out) {
    uint64_t r = 0, fl = 0, a = v->a, b = v->b, c = v->c;
    unsigned op = v->op, rm = v->rm;
    switch (op) {
        FORMAT_CASES(0, ".s", "fmv.w.x", "fmv.x.w",
                     RM_CASES(FROMI, "fmv.x.w", "fcvt.s.w"),
                     RM_CASES(FROMI, "fmv.x.w", "fcvt.s.wu"),
                     F1N("fmv.w.x", "fmv.x.d", "fcvt.d.s"))
        FORMAT_CASES(32, ".d", "fmv.d.x", "fmv.x.d",
                     FROMIN("fmv.x.d", "fcvt.d.w"),
                     FROMIN("fmv.x.d", "fcvt.d.wu"),
                     RM_CASES(F1, "fmv.d.x", "fmv.x.w", "fcvt.s.d"))
    default:
        die("bad op", op, rm);
    }
    out[0] = r;
    out[1] = fl;
}

/* Input records are consumed before their results are written: result i occupies bytes
 * [16i, 16i + 16), inside records already read, so one buffer serves both. */
#define MAX_VECTORS (1u << 21)
static struct vec buffer[MAX_VECTORS];

static int run_all(void) {
    char *bytes = (char *)buffer;
    size_t cap = sizeof buffer, len = 0;
    for (;;) {
        char probe; /* once full, only end-of-file is acceptable */
        ssize_t n = len < cap ? sys_read(0, bytes + len, cap - len) : sys_read(0, &probe, 1);
        if (n < 0) die("read failed", 0, 0);
        if (n == 0) break;
        if (len == cap) die("too many vectors", 0, 0);
        len += (size_t)n;
    }
    if (len % sizeof(struct vec) != 0) die("truncated input", 0, 0);
    size_t count = len / sizeof(struct vec);
    uint64_t *out = (uint64_t *)buffer;
    for (size_t i = 0; i < count; i++) {
        struct vec v = buffer[i];
        run(&v, out + 2 * i);
    }
    write_all(1, bytes, count * 16);
    return 0;
}

void __attribute__((noreturn)) start_c(void) { sys_exit(run_all()); }

/* The kernel (or qemu-user) enters here with sp set; gp must point at the small-data area
 * because the linker relaxes accesses against it. */
__asm__(".section .text._start\n"
        ".global _start\n"
        "_start:\n"
        ".option push\n"
        ".option norelax\n"
        "  la gp, __global_pointer$\n"
        ".option pop\n"
        "  andi sp, sp, -16\n"
        "  call start_c\n");
