/* The snapshot tests' program (host/machine/tests/snapshot.rs and
 * host/cmbuild/tests/machine_snapshot.rs). Assembled with -DFLASH_BASE=<address of the
 * first flash drive>.
 *
 * Prints a letter per round, dirties a RAM page per round, arms the timer a few ticks
 * ahead and sleeps in WFI with interrupts masked (mcycle jumps to the deadline), takes the
 * timer interrupt (the handler prints '.'), feeds the mcycle it woke at into a checksum.
 * After ROUNDS rounds it writes the checksum into the flash drive, prints it in hex and
 * halts with exit code 3. Any unexpected trap halts with exit code 9. */
#define TOHOST 0x40008000
#define MTIMECMP 0x02004000
#define MTIME 0x0200bff8
#define ROUNDS 12
	.section .text.init, "ax"
	.globl _start
_start:
	lla t0, trap
	csrw mtvec, t0
	li s0, 0
	li s1, 0x9e3779b97f4a7c15
	li s2, 0x80100000          /* data pages start 1 MiB into RAM */
	li s5, 0
	li t0, 1 << 7              /* mie.MTIE; mstatus.MIE stays clear around wfi */
	csrw mie, t0
round:
	li a0, 'A'
	add a0, a0, s0
	call putchar
	slli t0, s0, 15            /* a page every 32 KiB */
	add t0, t0, s2
	sd s1, 0(t0)
	sd s0, 8(t0)
	li t1, 500
1:
	li t2, 0x5851f42d4c957f2d
	mul s1, s1, t2
	srli t2, s1, 29
	xor s1, s1, t2
	addi t1, t1, -1
	bnez t1, 1b
	li t0, MTIME
	ld t1, 0(t0)
	andi t2, s1, 3
	add t1, t1, t2
	addi t1, t1, 2
	li t0, MTIMECMP
	sd t1, 0(t0)
	wfi                        /* nothing pending: mcycle jumps to the deadline */
	csrr s4, mcycle
	csrsi mstatus, 8           /* the pending timer interrupt is taken here */
	nop
	csrci mstatus, 8
	beqz s5, unexpected
	li s5, 0
	xor s1, s1, s4
	addi s0, s0, 1
	li t0, ROUNDS
	blt s0, t0, round

	li t0, FLASH_BASE
	sd s1, 0(t0)
	li t1, 4096 * 5
	add t0, t0, t1
	sd s0, 0(t0)
	li a0, '\n'
	call putchar
	li s3, 60
2:
	srl a0, s1, s3
	andi a0, a0, 15
	addi a0, a0, '0'
	li t0, '9'
	ble a0, t0, 3f
	addi a0, a0, 'a' - '9' - 1
3:
	call putchar
	addi s3, s3, -4
	bgez s3, 2b
	li a0, '\n'
	call putchar
	li t0, (3 << 1) | 1
	li t1, TOHOST
	sd t0, 0(t1)
4:	j 4b

putchar:                       /* a0; clobbers t5, t6 */
	li t6, 0x0101000000000000
	or t6, t6, a0
	li t5, TOHOST
	sd t6, 0(t5)
	ret

	.align 2
trap:
	csrr t3, mcause
	li t4, (1 << 63) | 7
	bne t3, t4, unexpected
	li t3, MTIMECMP
	li t4, -1
	sd t4, 0(t3)
	li s5, 1
	li t4, 0x010100000000002e  /* '.' */
	li t3, TOHOST
	sd t4, 0(t3)
	mret
unexpected:
	li t0, (9 << 1) | 1
	li t1, TOHOST
	sd t0, 0(t1)
5:	j 5b
