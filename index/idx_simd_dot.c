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

/* ---- bf16 candidate scores ------------------------------------------------------------- */

static uint16_t to_bf16(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16); /* nearest even; finite */
}

int idx_bf16_ok(void)
{
	static int have = -1;

	if (have < 0) {
		__builtin_cpu_init();
		have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
	}
	return have && use_avx512();
}

static float from_bf16(uint16_t b)
{
	uint32_t u = (uint32_t)b << 16;
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

void idx_bf16_pack(const float *x, uint32_t n, uint32_t *ret, float *ret_bn, float *ret_rn)
{
	double bn = 0, rn = 0;
	uint32_t j;

	for (j = 0; j + 1 < n; j += 2) {
		uint16_t a = to_bf16(x[j]), b = to_bf16(x[j + 1]);
		double ra = (double)x[j] - from_bf16(a), rb = (double)x[j + 1] - from_bf16(b);

		ret[j / 2] = (uint32_t)a | (uint32_t)b << 16;
		bn += (double)from_bf16(a) * from_bf16(a) + (double)from_bf16(b) * from_bf16(b);
		rn += ra * ra + rb * rb;
	}
	/* rounded up a little: these bound an error */
	*ret_bn = (float)(sqrt(bn) * (1 + 1e-6));
	*ret_rn = (float)(sqrt(rn) * (1 + 1e-6));
}

void idx_bf16_pack_block(const float *blk, uint32_t dim, uint32_t *ret)
{
	uint32_t r, l;

	for (r = 0; r < dim / 2; r++)
		for (l = 0; l < IDX_LANES; l++)
			ret[r * IDX_LANES + l] = (uint32_t)to_bf16(blk[(2 * r) * IDX_LANES + l]) |
						 (uint32_t)to_bf16(blk[(2 * r + 1) * IDX_LANES + l])
							 << 16;
}

#define BF16 __attribute__((target("avx512f,avx512bf16")))

BF16 static void bf16_score4(const uint32_t *bblk, const uint32_t *xb, uint32_t dim, float *out)
{
	__m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	const uint32_t *x0 = xb, *x1 = xb + dim / 2, *x2 = xb + dim, *x3 = xb + 3 * (dim / 2);
	uint32_t r;

	for (r = 0; r < dim / 2; r++) {
		__m512bh k = (__m512bh)_mm512_loadu_si512(bblk + r * IDX_LANES);

		a0 = _mm512_dpbf16_ps(a0, k, (__m512bh)_mm512_set1_epi32((int)x0[r]));
		a1 = _mm512_dpbf16_ps(a1, k, (__m512bh)_mm512_set1_epi32((int)x1[r]));
		a2 = _mm512_dpbf16_ps(a2, k, (__m512bh)_mm512_set1_epi32((int)x2[r]));
		a3 = _mm512_dpbf16_ps(a3, k, (__m512bh)_mm512_set1_epi32((int)x3[r]));
	}
	_mm512_storeu_ps(out, a0);
	_mm512_storeu_ps(out + 16, a1);
	_mm512_storeu_ps(out + 32, a2);
	_mm512_storeu_ps(out + 48, a3);
}

BF16 static void bf16_score1(const uint32_t *bblk, const uint32_t *xb, uint32_t dim, float *out)
{
	__m512 a0 = _mm512_setzero_ps();
	uint32_t r;

	for (r = 0; r < dim / 2; r++)
		a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(bblk + r * IDX_LANES),
				      (__m512bh)_mm512_set1_epi32((int)xb[r]));
	_mm512_storeu_ps(out, a0);
}

void idx_bf16_score(const uint32_t *bblk, const uint32_t *xb, uint32_t g, uint32_t dim, float *out)
{
	uint32_t i = 0;

	for (; i + 4 <= g; i += 4)
		bf16_score4(bblk, xb + (size_t)i * (dim / 2), dim, out + i * IDX_LANES);
	for (; i < g; i++)
		bf16_score1(bblk, xb + (size_t)i * (dim / 2), dim, out + i * IDX_LANES);
}

AVX512 void idx_bf16_bounds(const float *out, const float *h, const float *ca, const float *cb,
			    const float *hx, const float *xa, const float *xb, float slack,
			    uint32_t g, uint32_t lanes, float *ret_ub, float *maxlb)
{
	__mmask16 lm = (__mmask16)(lanes >= IDX_LANES ? 0xffffu : (1u << lanes) - 1);
	__m512 hv = _mm512_loadu_ps(h), av = _mm512_loadu_ps(ca), bv = _mm512_loadu_ps(cb),
	       sl = _mm512_set1_ps(slack);
	uint32_t i;

	for (i = 0; i < g; i++) {
		__m512 a = _mm512_fmadd_ps(_mm512_set1_ps(hx[i]), hv,
					   _mm512_loadu_ps(out + i * IDX_LANES));
		__m512 e = _mm512_fmadd_ps(_mm512_set1_ps(xa[i]), av,
					   _mm512_fmadd_ps(_mm512_set1_ps(xb[i]), bv, sl));
		float lb = _mm512_mask_reduce_max_ps(lm, _mm512_sub_ps(a, e));

		ret_ub[i] = _mm512_mask_reduce_max_ps(lm, _mm512_add_ps(a, e));
		maxlb[i] = lb > maxlb[i] ? lb : maxlb[i];
	}
}
