/* The console path of Linux's 8250 driver, in M-mode, against a periodic timer whose
 * handler prints like printk's console_write: the program that uart_sweep.rs runs at every
 * start offset in a window, so that each instruction of the driver meets a timer
 * interrupt. A lost THRE interrupt leaves the writer waiting forever (the run hits its
 * mcycle limit instead of halting); a lost or duplicated byte shows in the console.
 *
 * - uart_write (tty write): copies into a 64-byte ring with interrupts off and calls
 *   start_tx, which sets IER.THRI only if the driver's copy of IER lacks it (as
 *   serial8250_set_THRI); when the ring is full it sleeps (WFI) until tx_chars made room.
 * - The external interrupt (PLIC context 0, claim/complete) runs serial8250_interrupt's
 *   loop: read IIR until it says no interrupt; each time, if LSR.THRE and THRI is enabled
 *   in the driver's IER copy, tx_chars sends up to 16 bytes and stops THRI once the ring is
 *   empty (__stop_tx).
 * - The timer interrupt is serial8250_console_write: save IER, clear it, send "<t>" by
 *   polling LSR.THRE, wait for TEMT, restore IER; then it re-arms the timer one tick on.
 *
 * The start offset (in instructions, through a sled of 4-byte nops) is read from
 * PARAM; the program returns 0 once every byte was handed to the UART and THRI is off.
 *
 * Built with -DSMODE, the driver runs in S-mode as Linux does: its interrupts come through
 * PLIC context 1 (SEIP) and a supervisor timer that an M-mode handler raises the way
 * OpenSBI does (the machine timer sets mip.STIP; the S handler re-arms it through an
 * ecall), so an M-mode trap can also land between any two instructions of the driver,
 * interrupts off or not. */

typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned char u8;

#define PARAM ((volatile u64 *)0x800f0000)
#define UART ((volatile u8 *)0x10000000)
#define PLIC_PRIORITY1 ((volatile u32 *)0x40100004)
#ifdef SMODE
#define PLIC_ENABLE ((volatile u32 *)0x40102080)
#define PLIC_THRESHOLD ((volatile u32 *)0x40301000)
#define PLIC_CLAIM ((volatile u32 *)0x40301004)
#define IRQ_OFF "csrci sstatus, 2"
#define IRQ_ON "csrsi sstatus, 2"
#define CAUSE_REG "scause"
#define TIMER_CAUSE ((1ul << 63) | 5)
#define EXTERNAL_CAUSE ((1ul << 63) | 9)
#define TRAP_KIND "supervisor"
#else
#define PLIC_ENABLE ((volatile u32 *)0x40102000)
#define PLIC_THRESHOLD ((volatile u32 *)0x40300000)
#define PLIC_CLAIM ((volatile u32 *)0x40300004)
#define IRQ_OFF "csrci mstatus, 8"
#define IRQ_ON "csrsi mstatus, 8"
#define CAUSE_REG "mcause"
#define TIMER_CAUSE ((1ul << 63) | 7)
#define EXTERNAL_CAUSE ((1ul << 63) | 11)
#define TRAP_KIND "machine"
#endif
#define MTIMECMP ((volatile u64 *)0x02004000)
#define MTIME ((volatile u64 *)0x0200bff8)

#define THR 0
#define IER 1
#define IIR 2
#define FCR 2
#define LCR 3
#define MCR 4
#define LSR 5
#define IER_THRI 0x02
#define IIR_NO_INT 0x01
#define LSR_THRE 0x20
#define LSR_TEMT 0x40

#define RING 64
#define TOTAL 600

static volatile u8 ring[RING];
static volatile u32 head, tail; /* head: next free slot; tail: next byte to send */
static volatile u8 ier_copy;    /* the driver's copy of IER (up->ier) */
static volatile u32 ticks;

static inline void irq_off(void) { __asm__ volatile(IRQ_OFF ::: "memory"); }
static inline void irq_on(void) { __asm__ volatile(IRQ_ON ::: "memory"); }

/* Halts with exit code `code` (M-mode directly; S-mode through the M handler). */
static void done(u64 code) {
#ifdef SMODE
  register u64 a0 __asm__("a0") = code;
  register u64 a7 __asm__("a7") = 1;
  __asm__ volatile("ecall" ::"r"(a0), "r"(a7) : "memory");
#else
  *(volatile u64 *)0x40008000 = (code << 1) | 1;
#endif
  for (;;) {}
}

/* Arms the timer one tick on (S-mode: through the M handler, as sbi_set_timer). */
static void arm_timer(void) {
#ifdef SMODE
  register u64 a0 __asm__("a0") = *MTIME + 1;
  register u64 a7 __asm__("a7") = 0;
  __asm__ volatile("ecall" ::"r"(a0), "r"(a7) : "memory");
#else
  *MTIMECMP = *MTIME + 1;
#endif
}
static inline void wfi(void) { __asm__ volatile("wfi" ::: "memory"); }

static void set_ier(u8 v) {
  ier_copy = v;
  UART[IER] = v;
}

static void stop_tx(void) {
  if (ier_copy & IER_THRI) set_ier(ier_copy & ~IER_THRI);
}

static void start_tx(void) {
  if (!(ier_copy & IER_THRI)) set_ier(ier_copy | IER_THRI);
}

static void tx_chars(void) {
  if (head == tail) {
    stop_tx();
    return;
  }
  int count = 16;
  do {
    UART[THR] = ring[tail % RING];
    tail++;
    if (head == tail) break;
  } while (--count > 0);
  if (head == tail) stop_tx();
}

static void serial_interrupt(void) {
  for (int pass = 0; pass < 256; pass++) {
    u8 iir = UART[IIR];
    if (iir & IIR_NO_INT) return;
    u8 lsr = UART[LSR];
    if ((lsr & LSR_THRE) && (ier_copy & IER_THRI)) tx_chars();
  }
}

static void console_write(const char *s) {
  u8 ier = UART[IER];
  UART[IER] = 0;
  for (; *s; s++) {
    while (!(UART[LSR] & LSR_THRE)) {}
    UART[THR] = (u8)*s;
  }
  while (!(UART[LSR] & LSR_TEMT)) {}
  UART[IER] = ier;
}

void __attribute__((interrupt(TRAP_KIND), aligned(4))) trap(void) {
  u64 cause;
  __asm__ volatile("csrr %0, " CAUSE_REG : "=r"(cause));
  if (cause == TIMER_CAUSE) {
    ticks++;
    console_write("<t>");
    arm_timer();
  } else if (cause == EXTERNAL_CAUSE) {
    u32 source = *PLIC_CLAIM;
    if (source == 1) serial_interrupt();
    if (source) *PLIC_CLAIM = source;
  } else {
    done(1000 + (cause & 0xfff)); /* nothing else may trap */
  }
}

#ifdef SMODE
/* The M-mode side, as OpenSBI: the machine timer raises the supervisor timer (mip.STIP)
 * and disarms itself; an ecall from S with a7 = 0 arms it at a0 and clears STIP, a7 = 1
 * halts with exit code a0. Anything else halts with 1000 + mcause. */
__asm__(".text\n"
        ".align 4\n"
        ".globl mtrap\n"
        "mtrap:\n"
        "  csrw mscratch, t0\n"
        "  la t0, msave\n"
        "  sd t1, 0(t0)\n"
        "  csrr t0, mcause\n"
        "  bltz t0, 3f\n"
        "  li t1, 9\n"
        "  bne t0, t1, 4f\n"
        "  bnez a7, 2f\n"
        "  li t0, 0x02004000\n"
        "  sd a0, 0(t0)\n"
        "  li t0, 32\n"
        "  csrc mip, t0\n"
        "  csrr t0, mepc\n"
        "  addi t0, t0, 4\n"
        "  csrw mepc, t0\n"
        "  j 5f\n"
        "2:\n"
        "  slli a0, a0, 1\n"
        "  ori a0, a0, 1\n"
        "  li t0, 0x40008000\n"
        "  sd a0, 0(t0)\n"
        "1: j 1b\n"
        "3:\n"
        "  li t0, 0x02004000\n"
        "  li t1, -1\n"
        "  sd t1, 0(t0)\n"
        "  li t0, 32\n"
        "  csrs mip, t0\n"
        "  j 5f\n"
        "4:\n"
        "  addi a0, t0, 1000\n"
        "  j 2b\n"
        "5:\n"
        "  la t0, msave\n"
        "  ld t1, 0(t0)\n"
        "  csrr t0, mscratch\n"
        "  mret\n"
        ".data\n"
        ".align 3\n"
        "msave: .dword 0\n"
        ".text\n");
extern char mtrap[];
#endif

/* A sled of 4-byte nops: calling 4 * n bytes before its end runs n nops. */
__asm__(".text\n"
        ".align 2\n"
        ".globl sled_start\n"
        "sled_start:\n"
        ".rept 9000\n"
        ".4byte 0x00000013\n"
        ".endr\n"
        ".globl sled_end\n"
        "sled_end:\n"
        "ret\n");
extern char sled_start[], sled_end[];

static void delay(u64 n) {
  if (n > 9000) n = 9000;
  ((void (*)(void))(sled_end - 4 * n))();
}

static void uart_write(const u8 *buf, u32 n) {
  while (n) {
    irq_off();
    while (head - tail == RING) {
      /* Sleep until tx_chars makes room: WFI with interrupts off wakes on a pending
       * interrupt, which is taken once they are back on. */
      wfi();
      irq_on();
      irq_off();
    }
    while (n && head - tail < RING) {
      ring[head % RING] = *buf++;
      head++;
      n--;
    }
    start_tx();
    irq_on();
  }
}

static void driver(void) {
  u64 offset = *PARAM;
  UART[LCR] = 0x03;
  UART[FCR] = 0x07;
  UART[MCR] = 0x08; /* OUT2 */
  set_ier(0);
  *PLIC_PRIORITY1 = 1;
  *PLIC_ENABLE = 1u << 1;
  *PLIC_THRESHOLD = 0;
  arm_timer();
  irq_on();
  delay(offset);
  static u8 chunk[37];
  u32 sent = 0;
  while (sent < TOTAL) {
    u32 n = TOTAL - sent < sizeof chunk ? TOTAL - sent : sizeof chunk;
    for (u32 k = 0; k < n; k++) chunk[k] = (u8)('a' + (sent + k) % 26);
    uart_write(chunk, n);
    sent += n;
  }
  /* Wait for the ring to drain through the interrupt path. */
  irq_off();
  while (head != tail || (ier_copy & IER_THRI)) {
    wfi();
    irq_on();
    irq_off();
  }
  done(ticks == 0 ? 2 : 0);
}

int main(void) {
#ifdef SMODE
  __asm__ volatile("csrw mtvec, %0" ::"r"(mtrap));
  __asm__ volatile("csrw stvec, %0" ::"r"(trap));
  __asm__ volatile("csrw mideleg, %0" ::"r"((1ul << 9) | (1ul << 5) | (1ul << 1)));
  __asm__ volatile("csrw mie, %0" ::"r"((1ul << 9) | (1ul << 7) | (1ul << 5)));
  __asm__ volatile("csrw mepc, %0" ::"r"(driver));
  __asm__ volatile("li t0, 3 << 11\n csrc mstatus, t0\n li t0, 1 << 11\n csrs mstatus, t0\n"
                   "mret" ::: "t0", "memory");
#else
  __asm__ volatile("csrw mtvec, %0" ::"r"(trap));
  __asm__ volatile("csrw mie, %0" ::"r"((1ul << 11) | (1ul << 7)));
  driver();
#endif
  return 3;
}
