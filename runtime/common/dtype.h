/*
 * The storage dtype (enum ice_dtype, the public one) and what every layer needs of it: element
 * size, name, and the f16/bf16 <-> f32 conversions. Conversions to a half round to nearest
 * even, keep NaN a (quiet) NaN with its sign and overflow to infinity, as IEEE 754 does.
 *
 * The scalar conversions are inline: the index converts every key it takes, the kernels'
 * references every element they read.
 */
#ifndef ICE_COMMON_DTYPE_H
#define ICE_COMMON_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <icecache/dtype.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element size in bytes: 4, 2, 2; 0 for a value that is no enum ice_dtype. */
size_t dtype_size(enum ice_dtype dt);
/* "f32", "f16", "bf16" (the names stats print); "?" for an unknown value. */
const char *dtype_name(enum ice_dtype dt);

/* n elements of dtype dt at src to float32 at dst (F32 is a copy): the index's key path.
 * -EINVAL on NULL src or dst or an unknown dtype. The other direction, rarer, goes element by
 * element through dtype_store_f32. */
int dtype_to_f32(const void *src, enum ice_dtype dt, size_t n, float *dst);
/* dtype_to_f32 for keys and queries, which must be finite: -EINVAL also when a converted value
 * is NaN or infinite (dst then holds the conversion, unchecked past that value). */
int dtype_to_f32_finite(const void *src, enum ice_dtype dt, size_t n, float *dst);

static inline uint32_t dtype_f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static inline float dtype_bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

static inline float dtype_bf16_to_f32(uint16_t h)
{
	return dtype_bits_f32((uint32_t)h << 16);
}

static inline uint16_t dtype_f32_to_bf16(float f)
{
	uint32_t u = dtype_f32_bits(f);

	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40); /* quiet NaN, sign kept */
	/* Round to nearest even on the 16 dropped bits; a carry into the exponent is correct
	 * (rounds up to the next binade or to infinity). */
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

static inline float dtype_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
	float f;

	if (exp == 0x1f)
		return dtype_bits_f32(sign | 0x7f800000u | (man << 13));
	if (exp != 0)
		return dtype_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
	/* zero or subnormal: man * 2^-24, exact in float */
	f = (float)man * 5.9604644775390625e-8f;
	return sign ? -f : f;
}

static inline uint16_t dtype_f32_to_f16(float f)
{
	uint32_t u = dtype_f32_bits(f), sign = (u >> 16) & 0x8000u, exp = (u >> 23) & 0xffu;
	uint32_t man = u & 0x7fffffu;
	int e;

	if (exp == 0xff)
		return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0)); /* inf, or a quiet NaN */
	e = (int)exp - 127 + 15;
	if (e >= 31)
		return (uint16_t)(sign | 0x7c00u);
	if (e <= 0) {
		uint32_t shift, m;

		if (e < -10)
			return (uint16_t)sign; /* below half the smallest subnormal */
		/* subnormal half: units of 2^-24 */
		m = man | 0x800000u;
		shift = (uint32_t)(14 - e);
		u = m >> shift;
		if ((m >> (shift - 1)) & 1u && ((m & ((1u << (shift - 1)) - 1)) || (u & 1u)))
			u++;
		return (uint16_t)(sign | u);
	}
	u = (uint32_t)e << 10 | (man >> 13);
	if ((man & 0x1000u) && ((man & 0xfffu) || (u & 1u)))
		u++; /* may carry into the exponent, which is the right rounding */
	return (uint16_t)(sign | u);
}

/* Element i of a buffer of dtype dt, as float (NaN for an unknown dtype). */
static inline float dtype_load_f32(const void *buf, enum ice_dtype dt, size_t i)
{
	switch (dt) {
	case ICE_DTYPE_F32:
		return ((const float *)buf)[i];
	case ICE_DTYPE_F16:
		return dtype_f16_to_f32(((const uint16_t *)buf)[i]);
	case ICE_DTYPE_BF16:
		return dtype_bf16_to_f32(((const uint16_t *)buf)[i]);
	}
	return dtype_bits_f32(0x7fc00000u);
}

/* Stores v as element i of a buffer of dtype dt (nothing for an unknown dtype). */
static inline void dtype_store_f32(void *buf, enum ice_dtype dt, size_t i, float v)
{
	switch (dt) {
	case ICE_DTYPE_F32:
		((float *)buf)[i] = v;
		break;
	case ICE_DTYPE_F16:
		((uint16_t *)buf)[i] = dtype_f32_to_f16(v);
		break;
	case ICE_DTYPE_BF16:
		((uint16_t *)buf)[i] = dtype_f32_to_bf16(v);
		break;
	}
}

#ifdef __cplusplus
}
#endif

#endif
