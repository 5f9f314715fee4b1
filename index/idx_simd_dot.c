/*
 * Nearest-node kernels (idx_simd_dot.h). The inner products come from the page kernel
 * (idx_simd()->score_block); what is added here is the lift and the running maximum. Done lane by
 * lane in C that was a third of the exact parent pass; AVX-512 does a block's 16 lanes in a few
 * instructions and looks at single lanes only when the block beats the key's best.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "idx_simd.h"
#include "idx_simd_dot.h"

static void best_portable(const float *out, const float *h, const float *hx, uint32_t g,
			  uint32_t lanes, uint32_t base, float *best, uint32_t *arg)
{
	uint32_t i, l;

	for (i = 0; i < g; i++)
		for (l = 0; l < lanes; l++) {
			float v = out[i * IDX_LANES + l] + hx[i] * h[l];

			if (v > best[i]) {
				best[i] = v;
				arg[i] = base + l;
			}
		}
}

#define AVX512 __attribute__((target("avx512f")))

AVX512 static void best_avx512(const float *out, const float *h, const float *hx, uint32_t g,
			       uint32_t lanes, uint32_t base, float *best, uint32_t *arg)
{
	__mmask16 lm = (__mmask16)(lanes >= IDX_LANES ? 0xffffu : (1u << lanes) - 1);
	__m512 hv = _mm512_loadu_ps(h), ninf = _mm512_set1_ps(-INFINITY);
	uint32_t i;

	for (i = 0; i < g; i++) {
		__m512 v =
			_mm512_mask_blend_ps(lm, ninf,
					     _mm512_fmadd_ps(_mm512_set1_ps(hx[i]), hv,
							     _mm512_loadu_ps(out + i * IDX_LANES)));
		float m = _mm512_reduce_max_ps(v);

		if (m > best[i]) {
			__mmask16 eq = _mm512_cmp_ps_mask(v, _mm512_set1_ps(m), _CMP_EQ_OQ);

			best[i] = m;
			arg[i] = base + (uint32_t)__builtin_ctz(eq);
		}
	}
}

/* Inserts (v, a) into the best-first list top[0..*n) of at most p. */
static void top_put(float *top, uint32_t *arg, uint32_t *n, uint32_t p, float v, uint32_t a)
{
	uint32_t i = *n;

	if (i == p) {
		if (v <= top[p - 1])
			return;
		i--;
	} else {
		(*n)++;
	}
	while (i > 0 && top[i - 1] < v) {
		top[i] = top[i - 1];
		arg[i] = arg[i - 1];
		i--;
	}
	top[i] = v;
	arg[i] = a;
}

static int use_avx512(void)
{
	static int have = -1;

	if (have < 0) {
		__builtin_cpu_init();
		have = __builtin_cpu_supports("avx512f") ? 1 : 0;
	}
	return have && !strcmp(idx_simd()->name, "avx512");
}

void idx_lift_best(const float *blk, const float *h, const float *xs, const float *hx, uint32_t g,
		   uint32_t dim, uint32_t lanes, uint32_t base, float *best, uint32_t *arg)
{
	float out[IDX_LANES * IDX_LANES];

	idx_simd()->score_block(blk, xs, g, dim, out);
	if (use_avx512())
		best_avx512(out, h, hx, g, lanes, base, best, arg);
	else
		best_portable(out, h, hx, g, lanes, base, best, arg);
}

AVX512 static void top_avx512(const float *out, const float *h, const float *hx, uint32_t g,
			      uint32_t lanes, uint32_t base, uint32_t p, float *top, uint32_t *arg,
			      uint32_t *cnt)
{
	__mmask16 lm = (__mmask16)(lanes >= IDX_LANES ? 0xffffu : (1u << lanes) - 1);
	__m512 hv = _mm512_loadu_ps(h);
	float v[IDX_LANES];
	uint32_t i;

	for (i = 0; i < g; i++) {
		float thr = cnt[i] == p ? top[i * p + p - 1] : -INFINITY;
		__m512 s = _mm512_fmadd_ps(_mm512_set1_ps(hx[i]), hv,
					   _mm512_loadu_ps(out + i * IDX_LANES));
		uint32_t m = _mm512_mask_cmp_ps_mask(lm, s, _mm512_set1_ps(thr), _CMP_GT_OQ);

		if (!m)
			continue;
		_mm512_storeu_ps(v, s);
		for (; m; m &= m - 1) {
			uint32_t l = (uint32_t)__builtin_ctz(m);

			top_put(top + i * p, arg + i * p, &cnt[i], p, v[l], base + l);
		}
	}
}

void idx_lift_top(const float *blk, const float *h, const float *xs, const float *hx, uint32_t g,
		  uint32_t dim, uint32_t lanes, uint32_t base, uint32_t p, float *top,
		  uint32_t *arg, uint32_t *cnt)
{
	float out[IDX_LANES * IDX_LANES];
	uint32_t i, l;

	idx_simd()->score_block(blk, xs, g, dim, out);
	if (use_avx512()) {
		top_avx512(out, h, hx, g, lanes, base, p, top, arg, cnt);
		return;
	}
	for (i = 0; i < g; i++)
		for (l = 0; l < lanes; l++)
			top_put(top + i * p, arg + i * p, &cnt[i], p,
				out[i * IDX_LANES + l] + hx[i] * h[l], base + l);
}
