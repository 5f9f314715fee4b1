/*
 * Page scoring kernels. Keys sit channel-major in 16-lane blocks, so one query scores 16 keys
 * with dim broadcast-FMAs into one (AVX-512) or two (AVX2) accumulators and no horizontal sum.
 * Several independent accumulators hide the FMA latency; a group of queries shares each load of
 * the block (four queries per pass), which is what makes GQA search nearly free.
 */
#include <errno.h>
#include <immintrin.h>
#include <stdatomic.h>
#include <string.h>

#include "idx.h"
#include "idx_simd.h"

/* ---- portable ---------------------------------------------------------------------------- */

static void score_portable(const float *blk, const float *q, uint32_t g, uint32_t dim, float *out)
{
	uint32_t i, j, l;

	for (i = 0; i < g; i++) {
		float acc[IDX_LANES] = { 0 };
		const float *qi = q + (size_t)i * dim;

		for (j = 0; j < dim; j++) {
			const float *row = blk + (size_t)j * IDX_LANES;
			float qv = qi[j];

			for (l = 0; l < IDX_LANES; l++)
				acc[l] += qv * row[l];
		}
		memcpy(out + (size_t)i * IDX_LANES, acc, sizeof(acc));
	}
}

static void bound_portable(const float *hi, const float *lo, const float *q, uint32_t dim,
			   float *out)
{
	float acc[IDX_LANES] = { 0 };
	uint32_t j, l;

	for (j = 0; j < dim; j++) {
		const float *h = hi + (size_t)j * IDX_LANES, *o = lo + (size_t)j * IDX_LANES;
		float qv = q[j];

		for (l = 0; l < IDX_LANES; l++) {
			float a = qv * h[l], b = qv * o[l];

			acc[l] += a > b ? a : b;
		}
	}
	memcpy(out, acc, sizeof(acc));
}

static float dot_portable(const float *a, const float *b, uint32_t dim)
{
	float acc[8] = { 0 };
	uint32_t j, l;

	for (j = 0; j < dim; j += 8)
		for (l = 0; l < 8; l++)
			acc[l] += a[j + l] * b[j + l];
	return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static void sk_portable(const uint8_t *blk, const int8_t *qq, uint32_t dim, int32_t *out)
{
	uint32_t c, l, b;

	for (l = 0; l < IDX_LANES; l++) {
		int32_t acc = 0;

		for (c = 0; c < dim / 8; c++)
			for (b = 0; b < 4; b++) {
				uint8_t x = blk[(size_t)c * 64 + l * 4 + b];

				acc += (x & 15) * qq[c * 8 + b] + (x >> 4) * qq[c * 8 + 4 + b];
			}
		out[l] = acc;
	}
}

static int32_t q4(const int8_t *q)
{
	int32_t v;

	memcpy(&v, q, sizeof(v));
	return v;
}

static float max_fill(const int32_t *out, const float *alpha, int32_t off, uint32_t fill)
{
	float m = alpha[0] * (float)(out[0] - off);
	uint32_t l;

	for (l = 1; l < fill; l++) {
		float v = alpha[l] * (float)(out[l] - off);

		m = v > m ? v : m;
	}
	return m;
}

static void sk_max_portable(const uint8_t *blk, const float *alpha, const int8_t *qq,
			    const int32_t *off, uint32_t g, uint32_t dim, uint32_t fill, float *ret)
{
	int32_t out[IDX_LANES];
	uint32_t i;

	for (i = 0; i < g; i++) {
		sk_portable(blk, qq + (size_t)i * dim, dim, out);
		ret[i] = max_fill(out, alpha, off[i], fill);
	}
}

/* ---- AVX2 + FMA -------------------------------------------------------------------------- */

#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static void score1_avx2(const float *blk, const float *q, uint32_t dim, float *out)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
	uint32_t j;

	for (j = 0; j < dim; j += 2) {
		const float *r = blk + (size_t)j * IDX_LANES;
		__m256 q0 = _mm256_broadcast_ss(q + j), q1 = _mm256_broadcast_ss(q + j + 1);

		a0 = _mm256_fmadd_ps(q0, _mm256_load_ps(r), a0);
		a1 = _mm256_fmadd_ps(q0, _mm256_load_ps(r + 8), a1);
		b0 = _mm256_fmadd_ps(q1, _mm256_load_ps(r + 16), b0);
		b1 = _mm256_fmadd_ps(q1, _mm256_load_ps(r + 24), b1);
	}
	_mm256_storeu_ps(out, _mm256_add_ps(a0, b0));
	_mm256_storeu_ps(out + 8, _mm256_add_ps(a1, b1));
}

AVX2 static void score4_avx2(const float *blk, const float *q, uint32_t dim, float *out)
{
	__m256 a[4][2];
	uint32_t i, j;

	for (i = 0; i < 4; i++)
		a[i][0] = a[i][1] = _mm256_setzero_ps();
	for (j = 0; j < dim; j++) {
		const float *r = blk + (size_t)j * IDX_LANES;
		__m256 k0 = _mm256_load_ps(r), k1 = _mm256_load_ps(r + 8);

		for (i = 0; i < 4; i++) {
			__m256 qv = _mm256_broadcast_ss(q + (size_t)i * dim + j);

			a[i][0] = _mm256_fmadd_ps(qv, k0, a[i][0]);
			a[i][1] = _mm256_fmadd_ps(qv, k1, a[i][1]);
		}
	}
	for (i = 0; i < 4; i++) {
		_mm256_storeu_ps(out + i * IDX_LANES, a[i][0]);
		_mm256_storeu_ps(out + i * IDX_LANES + 8, a[i][1]);
	}
}

AVX2 static void score_avx2(const float *blk, const float *q, uint32_t g, uint32_t dim, float *out)
{
	uint32_t i = 0;

	for (; i + 4 <= g; i += 4)
		score4_avx2(blk, q + (size_t)i * dim, dim, out + (size_t)i * IDX_LANES);
	for (; i < g; i++)
		score1_avx2(blk, q + (size_t)i * dim, dim, out + (size_t)i * IDX_LANES);
}

AVX2 static void bound_avx2(const float *hi, const float *lo, const float *q, uint32_t dim,
			    float *out)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0;
	uint32_t j;

	for (j = 0; j < dim; j++) {
		const float *h = hi + (size_t)j * IDX_LANES, *o = lo + (size_t)j * IDX_LANES;
		__m256 qv = _mm256_broadcast_ss(q + j);

		a0 = _mm256_add_ps(a0, _mm256_max_ps(_mm256_mul_ps(qv, _mm256_load_ps(h)),
						     _mm256_mul_ps(qv, _mm256_load_ps(o))));
		a1 = _mm256_add_ps(a1, _mm256_max_ps(_mm256_mul_ps(qv, _mm256_load_ps(h + 8)),
						     _mm256_mul_ps(qv, _mm256_load_ps(o + 8))));
	}
	_mm256_storeu_ps(out, a0);
	_mm256_storeu_ps(out + 8, a1);
}

AVX2 static float dot_avx2(const float *a, const float *b, uint32_t dim)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = s0;
	__m128 h;
	uint32_t j;

	for (j = 0; j < dim; j += 16) {
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), s1);
	}
	s0 = _mm256_add_ps(s0, s1);
	h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
	h = _mm_add_ps(h, _mm_movehl_ps(h, h));
	h = _mm_add_ss(h, _mm_movehdup_ps(h));
	return _mm_cvtss_f32(h);
}

AVX2 static void sk_avx2(const uint8_t *blk, const int8_t *qq, uint32_t dim, int32_t *out)
{
	const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi16(1);
	__m256i a0 = _mm256_setzero_si256(), a1 = a0;
	uint32_t c;

	for (c = 0; c < dim / 8; c++) {
		const uint8_t *g = blk + (size_t)c * 64;
		__m256i ql = _mm256_set1_epi32(q4(qq + c * 8)),
			qh = _mm256_set1_epi32(q4(qq + c * 8 + 4));
		__m256i x0 = _mm256_load_si256((const __m256i *)g);
		__m256i x1 = _mm256_load_si256((const __m256i *)(g + 32));
		__m256i l0 = _mm256_and_si256(x0, m4),
			h0 = _mm256_and_si256(_mm256_srli_epi16(x0, 4), m4);
		__m256i l1 = _mm256_and_si256(x1, m4),
			h1 = _mm256_and_si256(_mm256_srli_epi16(x1, 4), m4);
		/* codes <= 15 and |q| <= 127: pair sums stay far inside int16 */
		__m256i s0 = _mm256_add_epi16(_mm256_maddubs_epi16(l0, ql),
					      _mm256_maddubs_epi16(h0, qh));
		__m256i s1 = _mm256_add_epi16(_mm256_maddubs_epi16(l1, ql),
					      _mm256_maddubs_epi16(h1, qh));

		a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(s0, one));
		a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(s1, one));
	}
	_mm256_storeu_si256((__m256i *)out, a0);
	_mm256_storeu_si256((__m256i *)(out + 8), a1);
}

AVX2 static void sk_max_avx2(const uint8_t *blk, const float *alpha, const int8_t *qq,
			     const int32_t *off, uint32_t g, uint32_t dim, uint32_t fill,
			     float *ret)
{
	int32_t out[IDX_LANES];
	uint32_t i;

	for (i = 0; i < g; i++) {
		sk_avx2(blk, qq + (size_t)i * dim, dim, out);
		ret[i] = max_fill(out, alpha, off[i], fill);
	}
}

/* ---- AVX-512 ----------------------------------------------------------------------------- */

#define AVX512 __attribute__((target("avx512f")))

AVX512 static void score1_avx512(const float *blk, const float *q, uint32_t dim, float *out)
{
	__m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	uint32_t j;

	for (j = 0; j < dim; j += 4) {
		const float *r = blk + (size_t)j * IDX_LANES;

		a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[j]), _mm512_load_ps(r), a0);
		a1 = _mm512_fmadd_ps(_mm512_set1_ps(q[j + 1]), _mm512_load_ps(r + 16), a1);
		a2 = _mm512_fmadd_ps(_mm512_set1_ps(q[j + 2]), _mm512_load_ps(r + 32), a2);
		a3 = _mm512_fmadd_ps(_mm512_set1_ps(q[j + 3]), _mm512_load_ps(r + 48), a3);
	}
	_mm512_storeu_ps(out, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

AVX512 static void score4_avx512(const float *blk, const float *q, uint32_t dim, float *out)
{
	__m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	__m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
	const float *q0 = q, *q1 = q + dim, *q2 = q + 2 * (size_t)dim, *q3 = q + 3 * (size_t)dim;
	uint32_t j;

	for (j = 0; j < dim; j += 2) {
		const float *r = blk + (size_t)j * IDX_LANES;
		__m512 k0 = _mm512_load_ps(r), k1 = _mm512_load_ps(r + 16);

		a0 = _mm512_fmadd_ps(_mm512_set1_ps(q0[j]), k0, a0);
		a1 = _mm512_fmadd_ps(_mm512_set1_ps(q1[j]), k0, a1);
		a2 = _mm512_fmadd_ps(_mm512_set1_ps(q2[j]), k0, a2);
		a3 = _mm512_fmadd_ps(_mm512_set1_ps(q3[j]), k0, a3);
		b0 = _mm512_fmadd_ps(_mm512_set1_ps(q0[j + 1]), k1, b0);
		b1 = _mm512_fmadd_ps(_mm512_set1_ps(q1[j + 1]), k1, b1);
		b2 = _mm512_fmadd_ps(_mm512_set1_ps(q2[j + 1]), k1, b2);
		b3 = _mm512_fmadd_ps(_mm512_set1_ps(q3[j + 1]), k1, b3);
	}
	_mm512_storeu_ps(out, _mm512_add_ps(a0, b0));
	_mm512_storeu_ps(out + 16, _mm512_add_ps(a1, b1));
	_mm512_storeu_ps(out + 32, _mm512_add_ps(a2, b2));
	_mm512_storeu_ps(out + 48, _mm512_add_ps(a3, b3));
}

AVX512 static void score_avx512(const float *blk, const float *q, uint32_t g, uint32_t dim,
				float *out)
{
	uint32_t i = 0;

	for (; i + 4 <= g; i += 4)
		score4_avx512(blk, q + (size_t)i * dim, dim, out + (size_t)i * IDX_LANES);
	for (; i < g; i++)
		score1_avx512(blk, q + (size_t)i * dim, dim, out + (size_t)i * IDX_LANES);
}

AVX512 static void bound_avx512(const float *hi, const float *lo, const float *q, uint32_t dim,
				float *out)
{
	__m512 a0 = _mm512_setzero_ps(), a1 = a0;
	uint32_t j;

	for (j = 0; j < dim; j += 2) {
		const float *h = hi + (size_t)j * IDX_LANES, *o = lo + (size_t)j * IDX_LANES;
		__m512 q0 = _mm512_set1_ps(q[j]), q1 = _mm512_set1_ps(q[j + 1]);

		a0 = _mm512_add_ps(a0, _mm512_max_ps(_mm512_mul_ps(q0, _mm512_load_ps(h)),
						     _mm512_mul_ps(q0, _mm512_load_ps(o))));
		a1 = _mm512_add_ps(a1, _mm512_max_ps(_mm512_mul_ps(q1, _mm512_load_ps(h + 16)),
						     _mm512_mul_ps(q1, _mm512_load_ps(o + 16))));
	}
	_mm512_storeu_ps(out, _mm512_add_ps(a0, a1));
}

AVX512 static float dot_avx512(const float *a, const float *b, uint32_t dim)
{
	__m512 s0 = _mm512_setzero_ps(), s1 = s0;
	uint32_t j = 0;

	for (; j + 32 <= dim; j += 32) {
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j), s0);
		s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j + 16), _mm512_loadu_ps(b + j + 16), s1);
	}
	if (j < dim)
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j), s0);
	return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
sk_vnni(const uint8_t *blk, const int8_t *qq, uint32_t dim, int32_t *out)
{
	const __m512i m4 = _mm512_set1_epi8(15);
	__m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
	uint32_t c = 0;

	for (; c + 2 <= dim / 8; c += 2) {
		__m512i x0 = _mm512_load_si512(blk + (size_t)c * 64);
		__m512i x1 = _mm512_load_si512(blk + (size_t)c * 64 + 64);

		a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(x0, m4),
					 _mm512_set1_epi32(q4(qq + c * 8)));
		a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(_mm512_srli_epi16(x0, 4), m4),
					 _mm512_set1_epi32(q4(qq + c * 8 + 4)));
		a2 = _mm512_dpbusd_epi32(a2, _mm512_and_si512(x1, m4),
					 _mm512_set1_epi32(q4(qq + c * 8 + 8)));
		a3 = _mm512_dpbusd_epi32(a3, _mm512_and_si512(_mm512_srli_epi16(x1, 4), m4),
					 _mm512_set1_epi32(q4(qq + c * 8 + 12)));
	}
	if (c < dim / 8) {
		__m512i x0 = _mm512_load_si512(blk + (size_t)c * 64);

		a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(x0, m4),
					 _mm512_set1_epi32(q4(qq + c * 8)));
		a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(_mm512_srli_epi16(x0, 4), m4),
					 _mm512_set1_epi32(q4(qq + c * 8 + 4)));
	}
	_mm512_storeu_si512(out,
			    _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
}

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

/* alpha * (acc - off), max over the fill lanes */
VNNI static float vnni_fin(__m512i acc, int32_t off, __m512 alpha, __mmask16 fm)
{
	__m512 v = _mm512_mul_ps(alpha,
				 _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_set1_epi32(off))));

	return _mm512_mask_reduce_max_ps(fm, v);
}

VNNI static void sk_max4_vnni(const uint8_t *blk, __m512 alpha, const int8_t *qq,
			      const int32_t *off, uint32_t dim, __mmask16 fm, float *ret)
{
	const __m512i m4 = _mm512_set1_epi8(15);
	__m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
	__m512i b0 = a0, b1 = a0, b2 = a0, b3 = a0;
	const int8_t *q0 = qq, *q1 = qq + dim, *q2 = qq + 2 * (size_t)dim,
		     *q3 = qq + 3 * (size_t)dim;
	uint32_t c;

	for (c = 0; c < dim / 8; c++) {
		__m512i x = _mm512_load_si512(blk + (size_t)c * 64);
		__m512i lo = _mm512_and_si512(x, m4),
			hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);

		a0 = _mm512_dpbusd_epi32(a0, lo, _mm512_set1_epi32(q4(q0 + c * 8)));
		b0 = _mm512_dpbusd_epi32(b0, hi, _mm512_set1_epi32(q4(q0 + c * 8 + 4)));
		a1 = _mm512_dpbusd_epi32(a1, lo, _mm512_set1_epi32(q4(q1 + c * 8)));
		b1 = _mm512_dpbusd_epi32(b1, hi, _mm512_set1_epi32(q4(q1 + c * 8 + 4)));
		a2 = _mm512_dpbusd_epi32(a2, lo, _mm512_set1_epi32(q4(q2 + c * 8)));
		b2 = _mm512_dpbusd_epi32(b2, hi, _mm512_set1_epi32(q4(q2 + c * 8 + 4)));
		a3 = _mm512_dpbusd_epi32(a3, lo, _mm512_set1_epi32(q4(q3 + c * 8)));
		b3 = _mm512_dpbusd_epi32(b3, hi, _mm512_set1_epi32(q4(q3 + c * 8 + 4)));
	}
	ret[0] = vnni_fin(_mm512_add_epi32(a0, b0), off[0], alpha, fm);
	ret[1] = vnni_fin(_mm512_add_epi32(a1, b1), off[1], alpha, fm);
	ret[2] = vnni_fin(_mm512_add_epi32(a2, b2), off[2], alpha, fm);
	ret[3] = vnni_fin(_mm512_add_epi32(a3, b3), off[3], alpha, fm);
}

VNNI static void sk_max_vnni(const uint8_t *blk, const float *alpha, const int8_t *qq,
			     const int32_t *off, uint32_t g, uint32_t dim, uint32_t fill,
			     float *ret)
{
	__mmask16 fm = (__mmask16)((1u << fill) - 1);
	__m512 av = _mm512_loadu_ps(alpha);
	int32_t out[IDX_LANES];
	uint32_t i = 0;

	for (; i + 4 <= g; i += 4)
		sk_max4_vnni(blk, av, qq + (size_t)i * dim, off + i, dim, fm, ret + i);
	for (; i < g; i++) {
		sk_vnni(blk, qq + (size_t)i * dim, dim, out);
		ret[i] = vnni_fin(_mm512_loadu_si512(out), off[i], av, fm);
	}
}

/* ---- dispatch ---------------------------------------------------------------------------- */

static const struct idx_simd_ops ops_portable = { "portable",   score_portable, bound_portable,
						  dot_portable, sk_portable,    sk_max_portable };
static const struct idx_simd_ops ops_avx2 = { "avx2",   score_avx2, bound_avx2,
					      dot_avx2, sk_avx2,    sk_max_avx2 };
/* AVX-512 without VNNI keeps the AVX2 sketch kernel */
static const struct idx_simd_ops ops_avx512 = { "avx512",   score_avx512, bound_avx512,
						dot_avx512, sk_avx2,      sk_max_avx2 };
static const struct idx_simd_ops ops_avx512vnni = { "avx512",   score_avx512, bound_avx512,
						    dot_avx512, sk_vnni,      sk_max_vnni };

static _Atomic(const struct idx_simd_ops *) active;

static const struct idx_simd_ops *best_ops(void)
{
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
	    __builtin_cpu_supports("avx512vnni"))
		return &ops_avx512vnni;
	if (__builtin_cpu_supports("avx512f"))
		return &ops_avx512;
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return &ops_avx2;
	return &ops_portable;
}

const struct idx_simd_ops *idx_simd(void)
{
	const struct idx_simd_ops *o = atomic_load_explicit(&active, memory_order_acquire);

	if (!o) {
		o = best_ops();
		atomic_store_explicit(&active, o, memory_order_release);
	}
	return o;
}

const char *idx_simd_name(void)
{
	return idx_simd()->name;
}

int idx_simd_force(const char *name)
{
	const struct idx_simd_ops *o;

	if (!name)
		return -EINVAL;
	__builtin_cpu_init();
	if (!strcmp(name, "portable"))
		o = &ops_portable;
	else if (!strcmp(name, "avx2"))
		o = &ops_avx2;
	else if (!strcmp(name, "avx512"))
		o = best_ops() == &ops_avx512vnni ? &ops_avx512vnni : &ops_avx512;
	else if (!strcmp(name, "best"))
		o = best_ops();
	else
		return -EINVAL;
	if ((o == &ops_avx512 || o == &ops_avx512vnni) && !__builtin_cpu_supports("avx512f"))
		return -ENOTSUP;
	if (o == &ops_avx2 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
		return -ENOTSUP;
	atomic_store_explicit(&active, o, memory_order_release);
	return 0;
}
