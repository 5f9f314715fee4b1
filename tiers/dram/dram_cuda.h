/*
 * CUDA registration of the DRAM pool (cudaHostRegister), so GPU kernels gather pages straight
 * out of it. The only CUDA calls in tiers/dram; compiled only with -Dcuda (ICE_HAVE_CUDA).
 * Returns 0, -ENODEV without a GPU, or -EIO when CUDA refuses.
 */
#ifndef ICE_TIERS_DRAM_CUDA_H
#define ICE_TIERS_DRAM_CUDA_H

#include <errno.h>
#include <stddef.h>

#if defined(ICE_HAVE_CUDA) && ICE_HAVE_CUDA
int dram_cuda_register(void *p, size_t len);
void dram_cuda_unregister(void *p);
#else
static inline int dram_cuda_register(void *p, size_t len)
{
	(void)p;
	(void)len;
	return -ENODEV;
}

static inline void dram_cuda_unregister(void *p)
{
	(void)p;
}
#endif

#endif
