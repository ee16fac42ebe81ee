#include <stdint.h>

/* Multiplicative hashing of two words (C compiled for the target by the build script). */
uint32_t cdemo_mix(uint32_t a, uint32_t b) { return (a * 2654435761u) ^ (b >> 3); }
