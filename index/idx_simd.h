/*
 * SIMD scoring shared by the DCI-tree, the positional baseline and the brute-force scan.
 * A block is dim channels x 16 lanes (channel-major: block[j * 16 + l] is channel j of lane l),
 * so scoring 16 keys against a query is dim broadcast-FMAs with no horizontal sums.
 * The implementation (AVX-512, AVX2+FMA, portable C) is chosen once at run time.
 */
#ifndef ICE_INDEX_IDX_SIMD_H
#define ICE_INDEX_IDX_SIMD_H

#include <stdint.h>

#define IDX_LANES 16u

struct idx_simd_ops {
	const char *name;
	/* out[i * 16 + l] = q[i * dim ..] . lane l of blk, for i < g */
	void (*score_block)(const float *blk, const float *q, uint32_t g, uint32_t dim, float *out);
	/* out[l] = sum_j max(q_j * hi[j][l], q_j * lo[j][l])  (Quest-style page upper bound) */
	void (*bound_block)(const float *hi, const float *lo, const float *q, uint32_t dim,
			    float *out);
	/* a . b over dim (a multiple of 16) */
	float (*dot)(const float *a, const float *b, uint32_t dim);
	/* 4-bit sketch block (dim/8 groups of 64 bytes; byte l*4+b of group c holds lane l's
	 * channel 8c+b in its low nibble and 8c+4+b in its high nibble):
	 * out[l] = sum_j code_j(l) * qq[j], codes 0..15, qq int8 */
	void (*sk_block)(const uint8_t *blk, const int8_t *qq, uint32_t dim, int32_t *out);
	/* ret[i] = max over lanes l < fill of alpha[l] * (sk_block score of query i - off[i]),
	 * qq[g][dim], g <= 16: the block is unpacked once for up to four queries */
	void (*sk_max)(const uint8_t *blk, const float *alpha, const int8_t *qq, const int32_t *off,
		       uint32_t g, uint32_t dim, uint32_t fill, float *ret);
};

/* Bytes of one 4-bit sketch block. */
#define IDX_SK_BYTES(dim) ((size_t)(dim)*IDX_LANES / 2)

/* The active implementation (resolved on first use). */
const struct idx_simd_ops *idx_simd(void);

#endif
