    .text
    .globl cdemo_add
    .type cdemo_add, %function
cdemo_add:
    add w0, w0, w1
    ret
    .size cdemo_add, .-cdemo_add
    .section .note.GNU-stack,"",%progbits
