    .text
    .globl cdemo_add
    .type cdemo_add, @function
cdemo_add:
    leal (%rdi,%rsi), %eax
    ret
    .size cdemo_add, .-cdemo_add
    .section .note.GNU-stack,"",@progbits
