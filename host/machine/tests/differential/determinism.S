/* Bare-metal program for the determinism tests.
 *
 * A loop mixes a checksum through integer, M, F/D and memory operations while CLINT timer
 * interrupts arrive (mtime = mcycle / 8192) and sometimes waits for them with wfi. Every
 * tick prints a letter through HTIF and re-arms mtimecmp at a distance that depends on the
 * checksum, so the interleaving of interrupts and work feeds back into the result. After
 * TICKS ticks it prints the checksum in hex and halts with exit code 0. Any other trap
 * halts with exit code 7.
 *
 * Registers: s0 ticks, s1 checksum, s2 buffer, s3 iterations; the trap handler uses only
 * t3..t6, which the loop leaves alone. */

#define HTIF_TOHOST 0x40008000
#define MTIMECMP 0x02004000
#define MTIME 0x0200bff8
#define TICKS 24

	.section .text.init, "ax"
	.globl _start
_start:
	li t0, 1 << 13
	csrs mstatus, t0           /* FPU on */
	lla t0, trap
	csrw mtvec, t0
	li s0, 0
	li s1, 0x123456789abcdef
	lla s2, buffer
	li s3, 0
	li t0, 0x3ff0000000000000
	fmv.d.x ft1, t0
	li t0, MTIME
	ld t1, 0(t0)
	addi t1, t1, 2
	li t0, MTIMECMP
	sd t1, 0(t0)
	li t0, 1 << 7              /* mie.MTIE */
	csrs mie, t0
	csrsi mstatus, 8           /* mstatus.MIE */

loop:
	srli t0, s1, 13            /* one of the 512 words of the buffer */
	andi t0, t0, 511
	slli t0, t0, 3
	add t1, s2, t0
	ld t2, 0(t1)
	add t2, t2, s1
	xor t2, t2, s0
	sd t2, 0(t1)
	li t0, 0x5851f42d4c957f2d
	mul s1, s1, t0
	add s1, s1, t2
	srli t0, s1, 40
	fcvt.d.l ft0, t0
	fmul.d ft1, ft1, ft0
	fsqrt.d ft1, ft1
	fmv.x.d t0, ft1
	xor s1, s1, t0
	addi s3, s3, 1
	andi t0, s3, 1023
	bnez t0, 1f
	/* Wait for the next tick with interrupts enabled: wfi may jump mcycle straight to
	 * the timer deadline, retires, and the interrupt is taken with mepc after it. */
	wfi
1:
	li t0, TICKS
	blt s0, t0, loop

	csrci mstatus, 8
	li a0, '\n'
	call putchar
	li t2, 60                  /* the checksum in hex, most significant digit first */
2:
	srl a0, s1, t2
	andi a0, a0, 15
	addi a0, a0, '0'
	li t0, '9'
	ble a0, t0, 3f
	addi a0, a0, 'a' - '9' - 1
3:
	call putchar
	addi t2, t2, -4
	bgez t2, 2b
	li a0, '\n'
	call putchar
	li t0, 1                   /* halt, exit code 0 */
	li t1, HTIF_TOHOST
	sd t0, 0(t1)
4:	j 4b

/* Prints the byte in a0 through HTIF; clobbers t0 and t1. */
putchar:
	li t0, 0x0101000000000000
	or t0, t0, a0
	li t1, HTIF_TOHOST
	sd t0, 0(t1)
	ret

	.align 2
trap:
	csrr t3, mcause
	li t4, (1 << 63) | 7       /* machine timer interrupt */
	bne t3, t4, unexpected
	addi s0, s0, 1
	andi t3, s0, 15            /* print 'a' + ticks % 16 */
	addi t3, t3, 'a'
	li t4, 0x0101000000000000
	or t3, t3, t4
	li t4, HTIF_TOHOST
	sd t3, 0(t4)
	li t4, MTIME               /* next deadline 1..4 ticks of mtime away */
	ld t5, 0(t4)
	andi t6, s1, 3
	add t5, t5, t6
	addi t5, t5, 1
	li t4, MTIMECMP
	sd t5, 0(t4)
	mret
unexpected:
	li t3, (7 << 1) | 1
	li t4, HTIF_TOHOST
	sd t3, 0(t4)
5:	j 5b

	.data
	.balign 8
buffer:
	.zero 4096
