/* Builds without CUDA: the GPU select answers -ENODEV (its CPU references are ksel_ref.c). */
#include <errno.h>

#include "ksel.h"

int kern_sel_sum(const struct kern_sel_keys *keys, const struct kern_sel_upd *upd, uint32_t n,
		 void *sums, void *stream)
{
	return -ENODEV;
}

size_t kern_sel_ws_size(const struct kern_sel_args *a)
{
	if (kern_sel_check(a))
		return 0;
	return (size_t)a->hkv * a->keys.pstride * sizeof(float) + 256 +
	       (size_t)a->hkv * sizeof(uint32_t);
}

int kern_sel(const struct kern_sel_args *a, void *ws, void *stream)
{
	return -ENODEV;
}
