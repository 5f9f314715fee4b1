/*
 * CPU side of kern: dtype conversions and the references the CUDA kernels are checked against.
 * The references favour being obviously right over being fast (double accumulation, one query
 * head at a time), since CI trusts them as the definition of each kernel.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "kern.h"
#include "kern_split.h"

/* Largest head dim the reference takes (its accumulator lives on the stack). */
#define KERN_REF_MAX_D 512

size_t kern_dtype_size(enum kern_dtype dt)
{
	switch (dt) {
	case KERN_F32:
		return 4;
	case KERN_F16:
	case KERN_BF16:
		return 2;
	}
	return 0;
}

const char *kern_dtype_name(enum kern_dtype dt)
{
	switch (dt) {
	case KERN_F32:
		return "fp32";
	case KERN_F16:
		return "fp16";
	case KERN_BF16:
		return "bf16";
	}
	return "?";
}

static uint32_t f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static float bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

uint16_t kern_f32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);

	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40); /* quiet NaN, sign kept */
	/* Round to nearest even on the 16 dropped bits; a carry into the exponent is correct
	 * (rounds up to the next binade or to infinity). */
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

float kern_bf16_to_f32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

uint16_t kern_f32_to_f16(float f)
{
	uint32_t u = f32_bits(f);
	uint32_t sign = (u >> 16) & 0x8000u;
	uint32_t absu = u & 0x7fffffffu;
	int32_t exp;
	uint32_t mant, half, rest, halfway;
	int shift;

	if (absu > 0x7f800000u)
		return (uint16_t)(sign | 0x7e00u);
	if (absu >= 0x477ff000u) /* rounds to >= 65520: infinity */
		return (uint16_t)(sign | 0x7c00u);
	exp = (int32_t)(absu >> 23) - 127;
	mant = absu & 0x7fffffu;
	if (exp >= -14) {
		/* Normal half: keep 10 mantissa bits, round the 13 dropped ones to nearest even. */
		half = ((uint32_t)(exp + 15) << 10) | (mant >> 13);
		rest = mant & 0x1fffu;
		if (rest > 0x1000u || (rest == 0x1000u && (half & 1u)))
			half++;
		return (uint16_t)(sign | half);
	}
	if (exp < -25)
		return (uint16_t)sign; /* below half the smallest subnormal: zero */
	/* Subnormal half: value = mant24 * 2^(exp-23), unit 2^-24. */
	mant |= 0x800000u;
	shift = -exp - 1; /* 14 .. 24: bits of mant24 dropped to reach units of 2^-24 */
	half = mant >> shift;
	rest = mant & ((1u << shift) - 1u);
	halfway = 1u << (shift - 1);
	if (rest > halfway || (rest == halfway && (half & 1u)))
		half++;
	return (uint16_t)(sign | half);
}

float kern_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t mant = h & 0x3ffu;

	if (exp == 0x1f)
		return bits_f32(sign | 0x7f800000u | (mant << 13));
	if (exp == 0) {
		float v = ldexpf((float)mant, -24);

		return sign ? -v : v;
	}
	return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

float kern_load_f32(const void *buf, enum kern_dtype dt, size_t i)
{
	switch (dt) {
	case KERN_F32:
		return ((const float *)buf)[i];
	case KERN_F16:
		return kern_f16_to_f32(((const uint16_t *)buf)[i]);
	case KERN_BF16:
		return kern_bf16_to_f32(((const uint16_t *)buf)[i]);
	}
	return NAN;
}

static void store_f32(void *buf, enum kern_dtype dt, size_t i, float v)
{
	switch (dt) {
	case KERN_F32:
		((float *)buf)[i] = v;
		break;
	case KERN_F16:
		((uint16_t *)buf)[i] = kern_f32_to_f16(v);
		break;
	case KERN_BF16:
		((uint16_t *)buf)[i] = kern_f32_to_bf16(v);
		break;
	}
}

int kern_convert(void *dst, enum kern_dtype dst_dt, const void *src, enum kern_dtype src_dt,
		 size_t n)
{
	size_t i;

	if (!kern_dtype_size(dst_dt) || !kern_dtype_size(src_dt))
		return -EINVAL;
	if (n && (!dst || !src))
		return -EINVAL;
	for (i = 0; i < n; i++)
		store_f32(dst, dst_dt, i, kern_load_f32(src, src_dt, i));
	return 0;
}

int kern_ref_gather(const struct kern_copy *copies, uint32_t n, size_t bytes)
{
	uint32_t i;

	if (bytes % 16 || (n && !copies))
		return -EINVAL;
	for (i = 0; i < n; i++)
		if (!copies[i].src || !copies[i].dst || (copies[i].src | copies[i].dst) % 16)
			return -EINVAL;
	for (i = 0; i < n; i++)
		memcpy((void *)(uintptr_t)copies[i].dst, (const void *)(uintptr_t)copies[i].src, bytes);
	return 0;
}

int kern_attn_check(const struct kern_attn_args *a)
{
	size_t es;

	if (!a)
		return -EINVAL;
	es = kern_dtype_size(a->dtype);
	if (!es || !a->hq || !a->hkv || a->hq % a->hkv || !a->d || a->d % 8 || !a->page_cap)
		return -EINVAL;
	if (!a->q || !a->out || !a->pool || !a->pages || !a->head_off)
		return -EINVAL;
	if (a->slot_bytes % 16 || a->slot_bytes < 2 * (size_t)a->page_cap * a->d * es)
		return -EINVAL;
	if ((uintptr_t)a->pool % 16 || !(a->scale == a->scale))
		return -EINVAL;
	return 0;
}

static int row_skipped(const struct kern_page *pg, uint32_t t)
{
	return t < KERN_SKIP_ROWS && (pg->skip >> t & 1);
}

int kern_ref_attn(const struct kern_attn_args *a)
{
	const unsigned char *pool;
	uint32_t g, h, j, p, t, c;
	size_t es;
	int r = kern_attn_check(a);

	if (r)
		return r;
	if (a->d > KERN_REF_MAX_D)
		return -EINVAL;
	es = kern_dtype_size(a->dtype);
	g = a->hq / a->hkv;
	pool = a->pool;
	if (a->head_off[0] != 0)
		return -EINVAL;
	for (h = 0; h < a->hkv; h++) {
		if (a->head_off[h + 1] < a->head_off[h])
			return -EINVAL;
		for (p = a->head_off[h]; p < a->head_off[h + 1]; p++)
			if (a->pages[p].slot >= a->nslots || a->pages[p].fill > a->page_cap)
				return -EINVAL;
	}

	for (h = 0; h < a->hkv; h++) {
		for (j = 0; j < g; j++) {
			uint32_t qi = h * g + j;
			double m = -INFINITY, l = 0.0;
			double accp[KERN_REF_MAX_D];
			const float *rv = a->rest ? a->rest + (size_t)qi * (a->d + 1) + 1 : NULL;
			double rl = a->rest ? (double)a->rest[(size_t)qi * (a->d + 1)] : -INFINITY;

			for (c = 0; c < a->d; c++)
				accp[c] = 0.0;
			/* Two passes keep the reference plain: max first, then the weighted sum. */
			for (p = a->head_off[h]; p < a->head_off[h + 1]; p++) {
				const void *k = pool + (size_t)a->pages[p].slot * a->slot_bytes;

				for (t = 0; t < a->pages[p].fill; t++) {
					double s = 0.0;

					if (row_skipped(&a->pages[p], t))
						continue;
					for (c = 0; c < a->d; c++)
						s += (double)kern_load_f32(a->q, a->dtype, (size_t)qi * a->d + c) *
						     kern_load_f32(k, a->dtype, (size_t)t * a->d + c);
					s *= a->scale;
					if (s > m)
						m = s;
				}
			}
			if (rl > m)
				m = rl; /* the rest term is one more token of log weight rl */
			if (rl > -INFINITY) {
				l += exp(rl - m);
				for (c = 0; c < a->d; c++)
					accp[c] += exp(rl - m) * rv[c];
			}
			for (p = a->head_off[h]; p < a->head_off[h + 1]; p++) {
				const void *k = pool + (size_t)a->pages[p].slot * a->slot_bytes;
				const void *v = (const unsigned char *)k +
						 (size_t)a->pages[p].fill * a->d * es;

				for (t = 0; t < a->pages[p].fill; t++) {
					double s = 0.0, w;

					if (row_skipped(&a->pages[p], t))
						continue;
					for (c = 0; c < a->d; c++)
						s += (double)kern_load_f32(a->q, a->dtype, (size_t)qi * a->d + c) *
						     kern_load_f32(k, a->dtype, (size_t)t * a->d + c);
					w = exp(s * a->scale - m);
					l += w;
					for (c = 0; c < a->d; c++)
						accp[c] += w * kern_load_f32(v, a->dtype, (size_t)t * a->d + c);
				}
			}
			for (c = 0; c < a->d; c++)
				store_f32(a->out, a->dtype, (size_t)qi * a->d + c,
					  l > 0.0 ? (float)(accp[c] / l) : 0.0f);
		}
	}
	return 0;
}

size_t kern_attn_ws_size(const struct kern_attn_args *a)
{
	struct kern_split sp;

	if (kern_attn_check(a))
		return 0;
	sp = kern_attn_split(a->hkv, a->max_pages);
	if (sp.nsplit <= 1)
		return 0;
	return (size_t)a->hkv * sp.nsplit * (a->hq / a->hkv) * (a->d + 2) * sizeof(float) +
	       (size_t)a->hkv * sizeof(uint32_t);
}
