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

/*
 * bf16 candidate scores (AVX-512 BF16 only: idx_bf16_ok). A bf16 block is dim/2 rows of 16
 * lanes, each lane a uint32 holding channels 2r (low half) and 2r+1 of its candidate; keys
 * are packed the same way, dim/2 uint32 each. out[i * 16 + l] = bf16(x_i) . bf16(lane l),
 * accumulated in fp32. With b = bf16(v) and r = v - b for both sides, x.s - bx.bs = bx.rs +
 * rx.bs + rx.rs, so |x.s - bx.bs| <= |bx||rs| + |rx||bs| + |rx||rs| (Cauchy-Schwarz), plus
 * fp32 accumulation (IDX_BF16_ACC * |bx||bs| covers both kernels' rounding).
 */
#define IDX_BF16_ACC 2e-5f
int idx_bf16_ok(void);
/* Packs x[0..n) (n even); ret_bn: |bf16(x)|, ret_rn: |x - bf16(x)|. */
void idx_bf16_pack(const float *x, uint32_t n, uint32_t *ret, float *ret_bn, float *ret_rn);
void idx_bf16_pack_block(const float *blk, uint32_t dim, uint32_t *ret);
void idx_bf16_score(const uint32_t *bblk, const uint32_t *xb, uint32_t g, uint32_t dim, float *out);
/* Bounds from bf16 scores out (as idx_bf16_score gives): for key i and lane l < lanes, a =
 * out + hx[i] * h[l] and e = xa[i] * ca[l] + xb[i] * cb[l] + slack; ret_ub[i] = max_l (a + e),
 * maxlb[i] = max(maxlb[i], max_l (a - e)). */
void idx_bf16_bounds(const float *out, const float *h, const float *ca, const float *cb,
		     const float *hx, const float *xa, const float *xb, float slack, uint32_t g,
		     uint32_t lanes, float *ret_ub, float *maxlb);

#endif
