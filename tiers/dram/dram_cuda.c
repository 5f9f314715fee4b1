/* cudaHostRegister for the DRAM pool; built only with CUDA (see dram_cuda.h). */
#include "dram_cuda.h"

#include <cuda_runtime_api.h>

int dram_cuda_register(void *p, size_t len)
{
	int n = 0;

	if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
		cudaGetLastError();
		return -ENODEV;
	}
	/* Portable: visible to every context; Mapped: kernels read it through a device pointer. */
	if (cudaHostRegister(p, len, cudaHostRegisterPortable | cudaHostRegisterMapped) !=
	    cudaSuccess) {
		cudaGetLastError();
		return -EIO;
	}
	return 0;
}

void dram_cuda_unregister(void *p)
{
	if (cudaHostUnregister(p) != cudaSuccess)
		cudaGetLastError();
}
