/*
 * Dequantisation of the GGUF block formats beyond the ones mm.c handles itself: Q5_0 and Q5_1
 * (32-element blocks with a fifth bit plane) and the K-quants Q4_K, Q5_K and Q6_K (256-element
 * super-blocks whose sub-blocks carry 6-bit scales). Gemma 3's Q4_K_M file mixes all of Q5_0,
 * Q4_K, Q6_K and Q8_0.
 */
#ifndef ICERUN_KQUANT_H
#define ICERUN_KQUANT_H

#include <stdbool.h>
#include <stdint.h>

/* Whether kq_dequant_row knows the type. */
bool kq_supported(uint32_t type);

/*
 * Dequantises one row of n elements (n a multiple of the type's block size; the row is
 * gguf_row_bytes(type, n) bytes) into out. Returns 0 or -EOPNOTSUPP (out untouched).
 */
int kq_dequant_row(uint32_t type, const uint8_t *row, int n, float *out);

#endif
