/* The stall watchdog's test program (host/cmbuild/tests/machine_stall.rs).
 *
 * Prints two lines, then sleeps in WFI forever with the machine timer interrupting every
 * half guest second (7812 ticks of mtime). What the interrupt handler does depends on the
 * variant:
 *   (default)  nothing: the machine is silent and idle, and the watchdog must stop it;
 *   -DCHATTY   prints '.': visible progress, never stopped;
 *   -DDRIVE    stores a counter into the flash drive at FLASH_BASE: progress too.
 * -DBUSY skips the sleep: it spins without printing (silent but not idle: never stopped). */
#define TOHOST 0x40008000
#define MTIMECMP 0x02004000
#define MTIME 0x0200bff8
#define TICKS 7812
	.section .text.init, "ax"
	.globl _start
_start:
	lla t0, trap
	csrw mtvec, t0
	lla s0, message
1:
	lbu a0, 0(s0)
	beqz a0, 2f
	call putchar
	addi s0, s0, 1
	j 1b
2:
#ifdef BUSY
3:
	addi s1, s1, 1
	j 3b
#endif
	call arm
	li t0, 1 << 7              /* mie.MTIE */
	csrw mie, t0
	csrsi mstatus, 8           /* mstatus.MIE */
3:
	wfi
	j 3b

arm:                               /* mtimecmp = mtime + TICKS */
	li t0, MTIME
	ld t1, 0(t0)
	li t2, TICKS
	add t1, t1, t2
	li t0, MTIMECMP
	sd t1, 0(t0)
	ret

putchar:                           /* HTIF console: device 1, command 1 */
	li t0, TOHOST
	li t1, 0x0101
	slli t1, t1, 48
	or t1, t1, a0
	sd t1, 0(t0)
	ret

	.align 2
trap:
	csrr t0, mcause
	bgez t0, unexpected
	mv s2, ra
	call arm
#ifdef CHATTY
	li a0, '.'
	call putchar
#endif
#ifdef DRIVE
	addi s3, s3, 1
	li t0, FLASH_BASE
	sd s3, 0(t0)
#endif
	mv ra, s2
	mret

unexpected:                        /* halt with exit code 9 */
	li t0, TOHOST
	li t1, (9 << 1) | 1
	sd t1, 0(t0)
4:
	j 4b

	.section .rodata
message:
	.string "stall test: booted\nnow waiting \x1b[31mfor nothing\n"
