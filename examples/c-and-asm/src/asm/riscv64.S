    .text
    .globl cdemo_add
    .type cdemo_add, @function
cdemo_add:
    addw a0, a0, a1
    ret
    .size cdemo_add, .-cdemo_add
    .section .note.GNU-stack,"",@progbits
