/* Q5_0, Q5_1 and the K-quants, element by element as the GGUF block layouts define them. */
#include "kquant.h"

#include <errno.h>
#include <immintrin.h>
#include <string.h>

#include "dtype.h"
#include "gguf.h"
#include "mm.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,fma,f16c")))

static float f16_at(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return dtype_f16_to_f32(v);
}

/*
 * Q5_0 / Q5_1 block of 32: f16 d (Q5_1: then f16 m), 32 high bits (bit j belongs to element j),
 * 16 bytes of low nibbles (element j low, element j + 16 high). Q5_0 is signed around 16.
 */
static void q5(const uint8_t *b, float *y, bool has_min)
{
	float d = f16_at(b), m = has_min ? f16_at(b + 2) : 0;
	const uint8_t *qhp = b + (has_min ? 4 : 2), *qs = qhp + 4;
	int off = has_min ? 0 : 16, j;
	uint32_t qh;

	memcpy(&qh, qhp, 4);
	for (j = 0; j < 16; j++) {
		int lo = (qs[j] & 0x0F) | (int)((qh >> j) & 1) << 4;
		int hi = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;

		y[j] = d * (float)(lo - off) + m;
		y[j + 16] = d * (float)(hi - off) + m;
	}
}

/*
 * The 12 scale bytes of Q4_K / Q5_K hold 8 (scale, min) pairs of 6 bits: pairs 0-3 in the low
 * 6 bits of bytes 0-3 (scales) and 4-7 (mins); pairs 4-7 take their low 4 bits from bytes
 * 8-11 (scale low nibble, min high nibble) and their top 2 bits from the spare top bits of
 * bytes 0-3 (scales) and 4-7 (mins).
 */
static void scale_min(const uint8_t *s, int j, int *sc, int *mn)
{
	if (j < 4) {
		*sc = s[j] & 63;
		*mn = s[j + 4] & 63;
	} else {
		*sc = (s[j + 4] & 0x0F) | (s[j - 4] >> 6) << 4;
		*mn = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
	}
}

/*
 * Q4_K (144 bytes) and Q5_K (176 bytes) super-block of 256: f16 d, f16 dmin, 12 scale bytes,
 * (Q5_K: 32 bytes of fifth bits), 128 bytes of nibbles. Each 64 elements use 32 nibble bytes,
 * low nibbles for sub-block 2i, high nibbles for 2i + 1; element = d·sc·q − dmin·mn. Q5_K's
 * fifth bit of element l in sub-block k is bit k of byte l of the high-bit plane.
 */
static void qk45(const uint8_t *b, float *y, bool five)
{
	float d = f16_at(b), dmin = f16_at(b + 2);
	const uint8_t *s = b + 4, *qh = b + 16, *q = b + (five ? 48 : 16);
	int i, l, sc, mn;

	for (i = 0; i < 4; i++, q += 32) {
		for (int half = 0; half < 2; half++) {
			int k = 2 * i + half;
			float ds, dm;

			scale_min(s, k, &sc, &mn);
			ds = d * (float)sc;
			dm = dmin * (float)mn;
			for (l = 0; l < 32; l++) {
				int v = half ? q[l] >> 4 : q[l] & 0x0F;

				if (five)
					v |= ((qh[l] >> k) & 1) << 4;
				y[32 * k + l] = ds * (float)v - dm;
			}
		}
	}
}

/*
 * Q6_K super-block of 256 (210 bytes): 128 bytes of low nibbles, 64 bytes of 2-bit high parts,
 * 16 int8 scales (one per 16 elements), f16 d last. In each half of 128 elements, element
 * l + 32c (l < 32, c < 4) has its low 4 bits in byte l (c even) or l + 32 (c odd) of the half's
 * 64 low bytes, low nibble for c < 2 and high nibble otherwise, and its top 2 bits in bits
 * 2c..2c+1 of high byte l; value = d · scale · (q − 32).
 */
static void q6k(const uint8_t *b, float *y)
{
	const uint8_t *ql = b, *qh = b + 128;
	const int8_t *sc = (const int8_t *)(b + 192);
	float d = f16_at(b + 208);
	int half, l, c;

	for (half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128) {
		for (l = 0; l < 32; l++) {
			for (c = 0; c < 4; c++) {
				int lo = c & 1 ? ql[l + 32] : ql[l];
				int q = ((c & 2 ? lo >> 4 : lo & 0x0F) | ((qh[l] >> (2 * c)) & 3)
										 << 4) -
					32;

				y[l + 32 * c] = d * (float)sc[l / 16 + 2 * c] * (float)q;
			}
		}
	}
}

/* ---- AVX-512: the same layouts, 16 elements per vector ---- */

static uint16_t rd16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return v;
}

AVX512 static __m512 u8x16_ps(__m128i b)
{
	return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
}

AVX512 static void q5_0_avx(const uint8_t *b, float *y)
{
	const __m128i lo = _mm_set1_epi8(0x0F);
	__m512 d = _mm512_set1_ps(_cvtsh_ss(rd16(b)));
	__m512i sixteen = _mm512_set1_epi32(16);
	__m128i qs = _mm_loadu_si128((const __m128i *)(b + 6));
	__m512i vl = _mm512_cvtepu8_epi32(_mm_and_si128(qs, lo));
	__m512i vh = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(qs, 4), lo));
	uint32_t qh;

	memcpy(&qh, b + 2, 4);
	/* the fifth bit adds 16; Q5_0 is centred on 16 */
	vl = _mm512_sub_epi32(_mm512_mask_add_epi32(vl, (__mmask16)qh, vl, sixteen), sixteen);
	vh = _mm512_sub_epi32(_mm512_mask_add_epi32(vh, (__mmask16)(qh >> 16), vh, sixteen),
			      sixteen);
	_mm512_storeu_ps(y, _mm512_mul_ps(d, _mm512_cvtepi32_ps(vl)));
	_mm512_storeu_ps(y + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(vh)));
}

AVX512 static void q4k_avx(const uint8_t *b, float *y)
{
	const __m128i lo = _mm_set1_epi8(0x0F);
	float d = _cvtsh_ss(rd16(b)), dmin = _cvtsh_ss(rd16(b + 2));
	const uint8_t *q = b + 16;
	int i, k, sc, mn, h;

	for (i = 0; i < 4; i++, q += 32) {
		for (h = 0; h < 2; h++) {
			__m128i q0 = _mm_loadu_si128((const __m128i *)(q + 16 * h));
			__m512 ds, dm;

			for (k = 0; k < 2; k++) {
				__m128i nib = k ? _mm_and_si128(_mm_srli_epi16(q0, 4), lo) :
						  _mm_and_si128(q0, lo);

				scale_min(b + 4, 2 * i + k, &sc, &mn);
				ds = _mm512_set1_ps(d * (float)sc);
				dm = _mm512_set1_ps(dmin * (float)mn);
				_mm512_storeu_ps(y + 32 * (2 * i + k) + 16 * h,
						 _mm512_fmsub_ps(ds, u8x16_ps(nib), dm));
			}
		}
	}
}

AVX512 static void q6k_avx(const uint8_t *b, float *y)
{
	const __m128i lo = _mm_set1_epi8(0x0F), three = _mm_set1_epi8(3);
	const uint8_t *ql = b, *qh = b + 128;
	const int8_t *sc = (const int8_t *)(b + 192);
	float d = _cvtsh_ss(rd16(b + 208));
	__m512i off = _mm512_set1_epi32(32);
	int half, l, c;

	for (half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128) {
		for (l = 0; l < 32; l += 16) {
			__m128i h = _mm_loadu_si128((const __m128i *)(qh + l));

			for (c = 0; c < 4; c++) {
				__m128i b8 =
					_mm_loadu_si128((const __m128i *)(ql + l + (c & 1) * 32));
				__m128i nib = c & 2 ? _mm_and_si128(_mm_srli_epi16(b8, 4), lo) :
						      _mm_and_si128(b8, lo);
				/* within-byte after the mask: shifts of 16-bit lanes by <= 6 */
				__m128i top = _mm_slli_epi16(
					_mm_and_si128(_mm_srli_epi16(h, 2 * c), three), 4);
				__m512i v = _mm512_sub_epi32(
					_mm512_cvtepu8_epi32(_mm_or_si128(nib, top)), off);

				_mm512_storeu_ps(
					y + l + 32 * c,
					_mm512_mul_ps(_mm512_set1_ps(d * (float)sc[l / 16 + 2 * c]),
						      _mm512_cvtepi32_ps(v)));
			}
		}
	}
}

bool kq_supported(uint32_t type)
{
	return type == GGUF_T_Q5_0 || type == GGUF_T_Q5_1 || type == GGUF_T_Q4_K ||
	       type == GGUF_T_Q5_K || type == GGUF_T_Q6_K;
}

int kq_dequant_row(uint32_t type, const uint8_t *row, int n, float *out)
{
	int i;

	if (mm_simd() && (type == GGUF_T_Q5_0 || type == GGUF_T_Q4_K || type == GGUF_T_Q6_K)) {
		for (i = 0; type == GGUF_T_Q5_0 && i < n / 32; i++)
			q5_0_avx(row + (size_t)i * 22, out + 32 * i);
		for (i = 0; type == GGUF_T_Q4_K && i < n / 256; i++)
			q4k_avx(row + (size_t)i * 144, out + 256 * i);
		for (i = 0; type == GGUF_T_Q6_K && i < n / 256; i++)
			q6k_avx(row + (size_t)i * 210, out + 256 * i);
		return 0;
	}
	switch (type) {
	case GGUF_T_Q5_0:
	case GGUF_T_Q5_1:
		for (i = 0; i < n / 32; i++)
			q5(row + (size_t)i * (type == GGUF_T_Q5_0 ? 22 : 24), out + 32 * i,
			   type == GGUF_T_Q5_1);
		return 0;
	case GGUF_T_Q4_K:
	case GGUF_T_Q5_K:
		for (i = 0; i < n / 256; i++)
			qk45(row + (size_t)i * (type == GGUF_T_Q4_K ? 144 : 176), out + 256 * i,
			     type == GGUF_T_Q5_K);
		return 0;
	case GGUF_T_Q6_K:
		for (i = 0; i < n / 256; i++)
			q6k(row + (size_t)i * 210, out + 256 * i);
		return 0;
	default:
		return -EOPNOTSUPP;
	}
}
