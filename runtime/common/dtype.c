/* Element sizes, names and row conversions of enum ice_dtype (the scalar ones are in dtype.h). */
#include "dtype.h"

#include <errno.h>
#include <math.h>

size_t dtype_size(enum ice_dtype dt)
{
	switch (dt) {
	case ICE_DTYPE_F32:
		return 4;
	case ICE_DTYPE_F16:
	case ICE_DTYPE_BF16:
		return 2;
	}
	return 0;
}

const char *dtype_name(enum ice_dtype dt)
{
	switch (dt) {
	case ICE_DTYPE_F32:
		return "f32";
	case ICE_DTYPE_F16:
		return "f16";
	case ICE_DTYPE_BF16:
		return "bf16";
	}
	return "?";
}

int dtype_to_f32(const void *src, enum ice_dtype dt, size_t n, float *dst)
{
	const uint16_t *h = src;
	size_t i;

	if (!src || !dst)
		return -EINVAL;
	switch (dt) {
	case ICE_DTYPE_F32:
		memcpy(dst, src, n * sizeof(float));
		return 0;
	case ICE_DTYPE_F16:
		for (i = 0; i < n; i++)
			dst[i] = dtype_f16_to_f32(h[i]);
		return 0;
	case ICE_DTYPE_BF16:
		for (i = 0; i < n; i++)
			dst[i] = dtype_bf16_to_f32(h[i]);
		return 0;
	}
	return -EINVAL;
}

int dtype_to_f32_finite(const void *src, enum ice_dtype dt, size_t n, float *dst)
{
	int rc = dtype_to_f32(src, dt, n, dst);
	size_t i;

	for (i = 0; rc == 0 && i < n; i++)
		if (!isfinite(dst[i]))
			rc = -EINVAL;
	return rc;
}
