/*
 * Nearest-node kernels for the parent search: a block of 16 candidates (the page layout of
 * idx_simd.h) scored against up to 16 keys in the lifted space, keeping each key's best. The
 * lift adds hx * h to every inner product (hx the key's height, h the candidate's), so the
 * winner is the nearest lifted node.
 */
#ifndef ICE_INDEX_IDX_SIMD_DOT_H
#define ICE_INDEX_IDX_SIMD_DOT_H

#include <stdint.h>

/*
 * For each key i < g (xs[g][dim]): s_l = xs_i . lane l of blk + hx[i] * h[l] over the lanes
 * l < lanes (1..16); when max_l s_l > best[i], best[i] takes it and arg[i] = base + l (the first
 * such l). Keys and blocks as for idx_simd()->score_block; the same SIMD path.
 */
void idx_lift_best(const float *blk, const float *h, const float *xs, const float *hx, uint32_t g,
		   uint32_t dim, uint32_t lanes, uint32_t base, float *best, uint32_t *arg);

/*
 * The same scores kept as each key's `p` best (p <= 16) in best-first order: top[i * p + r],
 * arg[i * p + r]; *cnt[i] entries are filled (the caller starts them at 0).
 */
void idx_lift_top(const float *blk, const float *h, const float *xs, const float *hx, uint32_t g,
		  uint32_t dim, uint32_t lanes, uint32_t base, uint32_t p, float *top,
		  uint32_t *arg, uint32_t *cnt);

#endif
