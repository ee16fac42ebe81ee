/* The offload channel seen from the guest (tests/offload.rs drives the host side).
 *
 * Three requests, each waited for a different way:
 *   1 "job-one" (byte stores)      polled: spin on STATUS
 *   2 8 + 4 bytes (sd, sw)         WFI with MEIE set and mstatus.MIE clear: wakes, no trap
 *   3 "three" (byte stores)        WFI with interrupts on: the PLIC's MEI traps
 * Each response is printed through HTIF. Results for the host to check, in registers:
 *   s1 = mcycle right after submitting 1 and 2
 *   s2, s3, s4 = mcycle when 1 was seen, its COMP_TAG, its COMP_AT
 *   s5, s6, s7 = the same for 2
 *   s9, s10, s11 = mepc, mcycle and COMP_TAG in the interrupt handler for 3
 * Exit codes: 0 pass; 3 wrong ID; 5 a SUBMIT refused; 7 an unexpected trap; 9 a
 * response seen before its COMP_AT. */

#define TOHOST   0x40008000
#define OFF      0x10001000
#define PLIC     0x40100000

#define ID          0x00
#define REQ_DATA    0x10
#define SUBMIT      0x20
#define STATUS      0x28
#define COMP_TAG    0x38
#define COMP_LEN    0x40
#define COMP_DATA   0x48
#define COMP_POP    0x50
#define IRQ_ENABLE  0x58
#define COMP_AT     0x60

	.section .text.init, "ax"
	.globl _start
_start:
	la t0, trap
	csrw mtvec, t0
	li s0, OFF
	li s8, 0
	lwu t0, ID(s0)
	li t1, 0x666f6d63              /* "cmof" */
	li a0, 3
	bne t0, t1, halt

	/* Request 1, byte by byte. */
	la a0, job1
	li a1, 7
	li a2, 1
	call send
	/* Request 2: one doubleword and one word. */
	li t0, 0x0807060504030201
	sd t0, REQ_DATA(s0)
	li t0, 0x0c0b0a09
	sw t0, REQ_DATA(s0)
	li t0, 2
	sd t0, SUBMIT(s0)
	call check_submit
	csrr s1, mcycle

	/* 1: poll. */
1:	ld t0, STATUS(s0)
	andi t0, t0, 1
	beqz t0, 1b
	csrr s2, mcycle
	ld s3, COMP_TAG(s0)
	ld s4, COMP_AT(s0)
	li a0, 9
	bltu s2, s4, halt
	call print_and_pop

	/* 2: WFI, woken by the line (MEIE) without a trap (mstatus.MIE = 0). */
	li t0, 1
	sd t0, IRQ_ENABLE(s0)
	li t1, PLIC
	li t0, 1
	sw t0, 8(t1)                   /* priority of source 2 */
	li t2, PLIC + 0x2000
	li t0, 1 << 2
	sw t0, 0(t2)                   /* source 2 enabled for context 0 (M) */
	li t0, 1 << 11
	csrw mie, t0
2:	ld t0, STATUS(s0)
	andi t0, t0, 1
	bnez t0, 3f
	wfi
	j 2b
3:	csrr s5, mcycle
	ld s6, COMP_TAG(s0)
	ld s7, COMP_AT(s0)
	li a0, 9
	bltu s5, s7, halt
	/* Claim and complete the PLIC source around the pop. */
	li t4, PLIC + 0x200004
	lw t5, 0(t4)
	call print_and_pop
	sw t5, 0(t4)

	/* 3: WFI with interrupts on; the handler takes the completion. */
	la a0, job3
	li a1, 5
	li a2, 3
	call send
	csrsi mstatus, 8
4:	wfi
	beqz s8, 4b
	csrci mstatus, 8
	li a0, 0
halt:
	slli a0, a0, 1
	ori a0, a0, 1
	li t0, TOHOST
	sd a0, 0(t0)
5:	j 5b

/* send(a0 = bytes, a1 = length, a2 = tag): byte stores to REQ_DATA, then SUBMIT. */
send:
	beqz a1, 6f
	lbu t0, 0(a0)
	sb t0, REQ_DATA(s0)
	addi a0, a0, 1
	addi a1, a1, -1
	j send
6:	sd a2, SUBMIT(s0)
check_submit:
	ld t0, STATUS(s0)
	andi t0, t0, 2
	li a0, 5
	bnez t0, halt
	ret

/* Prints the head completion through HTIF, then pops it. */
print_and_pop:
	ld t1, COMP_LEN(s0)
	li t2, TOHOST
	li t3, 0x0101000000000000
7:	beqz t1, 8f
	lbu t0, COMP_DATA(s0)
	or t0, t0, t3
	sd t0, 0(t2)
	addi t1, t1, -1
	j 7b
8:	li t0, '\n'
	or t0, t0, t3
	sd t0, 0(t2)
	sd zero, COMP_POP(s0)
	ret

	.align 2
trap:
	csrr t0, mcause
	li t1, 0x800000000000000b      /* machine external interrupt */
	li a0, 7
	bne t0, t1, halt
	csrr s9, mepc
	csrr s10, mcycle
	li t4, PLIC + 0x200004
	lw t5, 0(t4)                   /* claim */
	ld s11, COMP_TAG(s0)
	call print_and_pop             /* (the main code no longer needs ra) */
	sw t5, 0(t4)                   /* complete */
	li s8, 1
	mret

	.section .rodata
job1:	.ascii "job-one"
job3:	.ascii "three"
