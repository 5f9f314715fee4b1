/* Quantized matmul kernels: C reference and AVX-512 (dequantise a tile, then FMA). */
#include "mm.h"

#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "gguf.h"
#include "kquant.h"

#define TILE_ROWS 16
#define QK 32

static int force_scalar;
static int have_avx512 = -1;

void mm_force_scalar(int on)
{
	force_scalar = on;
}

int mm_simd(void)
{
	if (have_avx512 < 0) {
		__builtin_cpu_init();
		have_avx512 = __builtin_cpu_supports("avx512f") ? 1 : 0;
	}
	return have_avx512 && !force_scalar;
}

static uint16_t rd16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return v;
}

void mm_dequant_row(const struct qmat *w, int r, float *out)
{
	const uint8_t *row = w->data + (size_t)r * w->row_bytes, *b;
	int nb = w->cols / QK, i, j;
	float d, m;

	switch (w->type) {
	case GGUF_T_F32:
		memcpy(out, row, (size_t)w->cols * 4);
		return;
	case GGUF_T_F16:
		for (i = 0; i < w->cols; i++)
			out[i] = dtype_f16_to_f32(rd16(row + 2 * i));
		return;
	case GGUF_T_Q4_0:
		for (i = 0; i < nb; i++) {
			b = row + i * 18;
			d = dtype_f16_to_f32(rd16(b));
			for (j = 0; j < 16; j++) {
				out[i * QK + j] = d * (float)((b[2 + j] & 0x0F) - 8);
				out[i * QK + j + 16] = d * (float)((b[2 + j] >> 4) - 8);
			}
		}
		return;
	case GGUF_T_Q4_1:
		/* block: f16 d, f16 m, 16 bytes; element j = low nibble, j + 16 = high nibble */
		for (i = 0; i < nb; i++) {
			b = row + i * 20;
			d = dtype_f16_to_f32(rd16(b));
			m = dtype_f16_to_f32(rd16(b + 2));
			for (j = 0; j < 16; j++) {
				out[i * QK + j] = d * (float)(b[4 + j] & 0x0F) + m;
				out[i * QK + j + 16] = d * (float)(b[4 + j] >> 4) + m;
			}
		}
		return;
	case GGUF_T_Q8_0:
		for (i = 0; i < nb; i++) {
			b = row + i * 34;
			d = dtype_f16_to_f32(rd16(b));
			for (j = 0; j < QK; j++)
				out[i * QK + j] = d * (float)(int8_t)b[2 + j];
		}
		return;
	default:
		if (kq_dequant_row(w->type, row, w->cols, out))
			memset(out, 0, (size_t)w->cols * 4);
	}
}

void mm_matmul_ref(const struct qmat *w, const float *x, int n, float *y, int ldy)
{
	float *row = malloc((size_t)w->cols * sizeof(float));
	int r, t, k;
	double acc;

	if (!row)
		return;
	for (r = 0; r < w->rows; r++) {
		mm_dequant_row(w, r, row);
		for (t = 0; t < n; t++) {
			acc = 0;
			for (k = 0; k < w->cols; k++)
				acc += (double)row[k] * x[(size_t)t * w->cols + k];
			y[(size_t)t * ldy + r] = (float)acc;
		}
	}
	free(row);
}

/* ---- AVX-512 ---- */

#define AVX512 __attribute__((target("avx512f,fma,f16c")))

AVX512 static void dequant_row_avx(const struct qmat *w, int r, float *out)
{
	const uint8_t *row = w->data + (size_t)r * w->row_bytes, *b;
	int nb = w->cols / QK, i;
	const __m128i lo = _mm_set1_epi8(0x0F);
	__m512 d, m;
	__m128i q;

	switch (w->type) {
	case GGUF_T_Q4_1:
		for (i = 0; i < nb; i++) {
			b = row + i * 20;
			d = _mm512_set1_ps(_cvtsh_ss(rd16(b)));
			m = _mm512_set1_ps(_cvtsh_ss(rd16(b + 2)));
			q = _mm_loadu_si128((const __m128i *)(b + 4));
			_mm512_storeu_ps(out + i * QK,
					 _mm512_fmadd_ps(d,
							 _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
								 _mm_and_si128(q, lo))),
							 m));
			_mm512_storeu_ps(
				out + i * QK + 16,
				_mm512_fmadd_ps(d,
						_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
							_mm_and_si128(_mm_srli_epi16(q, 4), lo))),
						m));
		}
		return;
	case GGUF_T_Q8_0:
		for (i = 0; i < nb; i++) {
			b = row + i * 34;
			d = _mm512_set1_ps(_cvtsh_ss(rd16(b)));
			_mm512_storeu_ps(
				out + i * QK,
				_mm512_mul_ps(d,
					      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
						      _mm_loadu_si128((const __m128i *)(b + 2))))));
			_mm512_storeu_ps(
				out + i * QK + 16,
				_mm512_mul_ps(
					d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
						   _mm_loadu_si128((const __m128i *)(b + 18))))));
		}
		return;
	default:
		mm_dequant_row(w, r, out);
	}
}

/*
 * 4 rows × 4 tokens register tile over a dequantised tile (cols % 16 == 0). Written out by hand:
 * with an indexed accumulator array GCC keeps the tile in memory at -O2.
 */
AVX512 static void tile_4x4(const float *wt, int cols, const float *x, int ldx, int nt, int nr,
			    float *y, int ldy)
{
	__m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
	__m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
	__m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00;
	__m512 a30 = a00, a31 = a00, a32 = a00, a33 = a00;
	const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * (size_t)ldx, *x3 = x + 3 * (size_t)ldx;
	const float *w0 = wt, *w1 = wt + cols, *w2 = wt + 2 * (size_t)cols,
		    *w3 = wt + 3 * (size_t)cols;
	float r[4][4];
	int i, j, k;

	for (k = 0; k < cols; k += 16) {
		__m512 v0 = _mm512_loadu_ps(w0 + k), v1 = _mm512_loadu_ps(w1 + k);
		__m512 v2 = _mm512_loadu_ps(w2 + k), v3 = _mm512_loadu_ps(w3 + k);
		__m512 xv;

		xv = _mm512_loadu_ps(x0 + k);
		a00 = _mm512_fmadd_ps(v0, xv, a00);
		a10 = _mm512_fmadd_ps(v1, xv, a10);
		a20 = _mm512_fmadd_ps(v2, xv, a20);
		a30 = _mm512_fmadd_ps(v3, xv, a30);
		xv = _mm512_loadu_ps(x1 + k);
		a01 = _mm512_fmadd_ps(v0, xv, a01);
		a11 = _mm512_fmadd_ps(v1, xv, a11);
		a21 = _mm512_fmadd_ps(v2, xv, a21);
		a31 = _mm512_fmadd_ps(v3, xv, a31);
		xv = _mm512_loadu_ps(x2 + k);
		a02 = _mm512_fmadd_ps(v0, xv, a02);
		a12 = _mm512_fmadd_ps(v1, xv, a12);
		a22 = _mm512_fmadd_ps(v2, xv, a22);
		a32 = _mm512_fmadd_ps(v3, xv, a32);
		xv = _mm512_loadu_ps(x3 + k);
		a03 = _mm512_fmadd_ps(v0, xv, a03);
		a13 = _mm512_fmadd_ps(v1, xv, a13);
		a23 = _mm512_fmadd_ps(v2, xv, a23);
		a33 = _mm512_fmadd_ps(v3, xv, a33);
	}
	r[0][0] = _mm512_reduce_add_ps(a00);
	r[0][1] = _mm512_reduce_add_ps(a01);
	r[0][2] = _mm512_reduce_add_ps(a02);
	r[0][3] = _mm512_reduce_add_ps(a03);
	r[1][0] = _mm512_reduce_add_ps(a10);
	r[1][1] = _mm512_reduce_add_ps(a11);
	r[1][2] = _mm512_reduce_add_ps(a12);
	r[1][3] = _mm512_reduce_add_ps(a13);
	r[2][0] = _mm512_reduce_add_ps(a20);
	r[2][1] = _mm512_reduce_add_ps(a21);
	r[2][2] = _mm512_reduce_add_ps(a22);
	r[2][3] = _mm512_reduce_add_ps(a23);
	r[3][0] = _mm512_reduce_add_ps(a30);
	r[3][1] = _mm512_reduce_add_ps(a31);
	r[3][2] = _mm512_reduce_add_ps(a32);
	r[3][3] = _mm512_reduce_add_ps(a33);
	for (j = 0; j < nt; j++)
		for (i = 0; i < nr; i++)
			y[(size_t)j * ldy + i] = r[i][j];
}

/* One row against one token with on-the-fly dequantisation (decode path). */
AVX512 static float dot_q_avx(const struct qmat *w, int r, const float *x)
{
	const uint8_t *row = w->data + (size_t)r * w->row_bytes, *b;
	const __m128i lo = _mm_set1_epi8(0x0F);
	__m512 acc = _mm512_setzero_ps(), macc = _mm512_setzero_ps(), x0, x1, qx;
	int nb = w->cols / QK, i;
	__m128i q;

	if (w->type == GGUF_T_Q4_1) {
		for (i = 0; i < nb; i++) {
			b = row + i * 20;
			x0 = _mm512_loadu_ps(x + i * QK);
			x1 = _mm512_loadu_ps(x + i * QK + 16);
			q = _mm_loadu_si128((const __m128i *)(b + 4));
			qx = _mm512_mul_ps(
				_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, lo))), x0);
			qx = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
						     _mm_and_si128(_mm_srli_epi16(q, 4), lo))),
					     x1, qx);
			acc = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(rd16(b))), qx, acc);
			macc = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(rd16(b + 2))),
					       _mm512_add_ps(x0, x1), macc);
		}
		return _mm512_reduce_add_ps(_mm512_add_ps(acc, macc));
	}
	/* Q8_0 */
	for (i = 0; i < nb; i++) {
		b = row + i * 34;
		qx = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
					   _mm_loadu_si128((const __m128i *)(b + 2)))),
				   _mm512_loadu_ps(x + i * QK));
		qx = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
					     _mm_loadu_si128((const __m128i *)(b + 18)))),
				     _mm512_loadu_ps(x + i * QK + 16), qx);
		acc = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(rd16(b))), qx, acc);
	}
	return _mm512_reduce_add_ps(acc);
}

struct mm_job {
	const struct qmat *w;
	const float *x;
	int n, ldy;
	float *y;
	float *tiles; /* per thread: TILE_ROWS × cols */
	int simd;
};

static float dot_scalar(const float *a, const float *b, int n)
{
	float s = 0;
	int i;

	for (i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

AVX512 static float dot_avx(const float *a, const float *b, int n);

static void mm_task(void *arg, int task, int thread)
{
	struct mm_job *j = arg;
	const struct qmat *w = j->w;
	int r0 = task * TILE_ROWS, nr = w->rows - r0 < TILE_ROWS ? w->rows - r0 : TILE_ROWS;
	float *wt = j->tiles + (size_t)thread * TILE_ROWS * w->cols;
	int r, t, rr, nt;

	/* other quantized types at decode: one dequantised row, then one dot per token (the
	 * 4-token register tile would repeat the single token four times) */
	if (j->simd && j->n < 4 && kq_supported(w->type)) {
		for (r = 0; r < nr; r++) {
			dequant_row_avx(w, r0 + r, wt);
			for (t = 0; t < j->n; t++)
				j->y[(size_t)t * j->ldy + r0 + r] =
					dot_avx(wt, j->x + (size_t)t * w->cols, w->cols);
		}
		return;
	}
	if (j->simd && j->n < 4 && (w->type == GGUF_T_Q4_1 || w->type == GGUF_T_Q8_0)) {
		for (t = 0; t < j->n; t++)
			for (r = 0; r < nr; r++)
				j->y[(size_t)t * j->ldy + r0 + r] =
					dot_q_avx(w, r0 + r, j->x + (size_t)t * w->cols);
		return;
	}
	for (r = 0; r < nr; r++) {
		if (j->simd)
			dequant_row_avx(w, r0 + r, wt + (size_t)r * w->cols);
		else
			mm_dequant_row(w, r0 + r, wt + (size_t)r * w->cols);
	}
	if (j->simd && w->cols % 16 == 0) {
		for (r = nr; r < TILE_ROWS; r++)
			memset(wt + (size_t)r * w->cols, 0, (size_t)w->cols * 4);
		for (t = 0; t < j->n; t += 4) {
			nt = j->n - t < 4 ? j->n - t : 4;
			for (rr = 0; rr < nr; rr += 4) {
				int nrr = nr - rr < 4 ? nr - rr : 4;
				const float *xb = j->x + (size_t)t * w->cols;
				float tmp[4];

				if (nt == 4) {
					tile_4x4(wt + (size_t)rr * w->cols, w->cols, xb, w->cols, 4,
						 nrr, j->y + (size_t)t * j->ldy + r0 + rr, j->ldy);
					continue;
				}
				/* a partial token block: one token at a time (stride 0 repeats the row,
				 * so the kernel never reads past the last token) */
				for (int u = 0; u < nt; u++) {
					tile_4x4(wt + (size_t)rr * w->cols, w->cols,
						 xb + (size_t)u * w->cols, 0, 1, nrr, tmp, 1);
					for (int v = 0; v < nrr; v++)
						j->y[(size_t)(t + u) * j->ldy + r0 + rr + v] =
							tmp[v];
				}
			}
		}
		return;
	}
	for (t = 0; t < j->n; t++)
		for (r = 0; r < nr; r++)
			j->y[(size_t)t * j->ldy + r0 + r] = dot_scalar(
				wt + (size_t)r * w->cols, j->x + (size_t)t * w->cols, w->cols);
}

int mm_matmul(const struct qmat *w, const float *x, int n, float *y, int ldy, struct pool *p)
{
	struct mm_job j = { w, x, n, ldy, y, NULL, mm_simd() };
	int nthr = pool_threads(p);

	j.tiles = aligned_alloc(64, ((size_t)nthr * TILE_ROWS * w->cols * 4 + 63) / 64 * 64);
	if (!j.tiles)
		return -ENOMEM;
	pool_run(p, mm_task, &j, (w->rows + TILE_ROWS - 1) / TILE_ROWS);
	free(j.tiles);
	return 0;
}

/* ---- vector helpers ---- */

AVX512 static __m512 exp512(__m512 x)
{
	const __m512 l2e = _mm512_set1_ps(1.44269504088896341f);
	const __m512 c1 = _mm512_set1_ps(0.693145751953125f),
		     c2 = _mm512_set1_ps(1.428606765330187e-6f);
	__m512 n, r, p;

	x = _mm512_max_ps(x, _mm512_set1_ps(-100.0f));
	n = _mm512_roundscale_ps(_mm512_mul_ps(x, l2e),
				 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm512_fnmadd_ps(n, c1, x);
	r = _mm512_fnmadd_ps(n, c2, r);
	/* Taylor to degree 7 on |r| <= ln2/2: relative error < 2e-8 before rounding */
	p = _mm512_set1_ps(1.0f / 5040);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
	return _mm512_scalef_ps(p, n);
}

AVX512 static float softmax_exp_avx(float *x, int n, float max)
{
	__m512 s = _mm512_setzero_ps(), mv = _mm512_set1_ps(max), e;
	int i = 0;
	float tail = 0;

	for (; i + 16 <= n; i += 16) {
		e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
		_mm512_storeu_ps(x + i, e);
		s = _mm512_add_ps(s, e);
	}
	if (i < n) {
		__mmask16 k = (__mmask16)((1u << (n - i)) - 1);

		e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), mv));
		_mm512_mask_storeu_ps(x + i, k, e);
		s = _mm512_add_ps(s, _mm512_maskz_mov_ps(k, e));
	}
	return _mm512_reduce_add_ps(s) + tail;
}

float mm_softmax_exp(float *x, int n, float max)
{
	float s = 0;
	int i;

	if (mm_simd())
		return softmax_exp_avx(x, n, max);
	for (i = 0; i < n; i++) {
		x[i] = expf(x[i] - max);
		s += x[i];
	}
	return s;
}

AVX512 static float dot_avx(const float *a, const float *b, int n)
{
	__m512 s = _mm512_setzero_ps();
	int i = 0;
	float t = 0;

	for (; i + 16 <= n; i += 16)
		s = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s);
	for (; i < n; i++)
		t += a[i] * b[i];
	return _mm512_reduce_add_ps(s) + t;
}

float mm_dot(const float *a, const float *b, int n)
{
	return mm_simd() ? dot_avx(a, b, n) : dot_scalar(a, b, n);
}

AVX512 static void axpy_avx(float *y, float a, const float *x, int n)
{
	__m512 av = _mm512_set1_ps(a);
	int i = 0;

	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i),
							_mm512_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] += a * x[i];
}

void mm_axpy(float *y, float a, const float *x, int n)
{
	int i;

	if (mm_simd()) {
		axpy_avx(y, a, x, n);
		return;
	}
	for (i = 0; i < n; i++)
		y[i] += a * x[i];
}
