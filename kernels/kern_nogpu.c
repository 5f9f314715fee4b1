/* Builds without CUDA: every GPU entry point answers -ENODEV, so callers (the HBM page cache, the
 * benchmark, the GPU tests) take their no-GPU path with the same code. */
#include <errno.h>

#include "kern.h"

int kern_gather(const struct kern_copy *copies, uint32_t n, size_t bytes, void *stream)
{
	return -ENODEV;
}

int kern_gather_inline(const struct kern_copy *copies, uint32_t n, size_t bytes, void *stream)
{
	return -ENODEV;
}

int kern_attn(const struct kern_attn_args *a, void *ws, void *stream)
{
	return -ENODEV;
}

int kern_gpu_count(void)
{
	return -ENODEV;
}

int kern_gpu_select(int device)
{
	return -ENODEV;
}

int kern_gpu_check(void)
{
	return -ENODEV;
}

int kern_dev_alloc(size_t bytes, void **ret_ptr)
{
	return -ENODEV;
}

void kern_dev_free(void *ptr)
{
}

int kern_host_alloc(size_t bytes, void **ret_host, uint64_t *ret_dev)
{
	return -ENODEV;
}

void kern_host_free(void *host)
{
}

int kern_host_register(void *host, size_t bytes, uint64_t *ret_dev)
{
	return -ENODEV;
}

int kern_host_unregister(void *host)
{
	return -ENODEV;
}

int kern_memcpy(void *dst, const void *src, size_t bytes)
{
	return -ENODEV;
}

int kern_memcpy_async(void *dst, const void *src, size_t bytes, void *stream)
{
	return -ENODEV;
}

int kern_memset(void *dst, int byte, size_t bytes)
{
	return -ENODEV;
}

int kern_stream_new(void **ret_stream)
{
	return -ENODEV;
}

void kern_stream_free(void *stream)
{
}

int kern_stream_sync(void *stream)
{
	return -ENODEV;
}

int kern_event_new(void **ret_ev)
{
	return -ENODEV;
}

void kern_event_free(void *ev)
{
}

int kern_event_record(void *ev, void *stream)
{
	return -ENODEV;
}

int kern_event_ms(void *start, void *end, float *ret_ms)
{
	return -ENODEV;
}

int kern_event_sync(void *ev)
{
	return -ENODEV;
}

int kern_ipc_export(void *dev_ptr, struct kern_ipc_handle *ret_handle)
{
	return -ENODEV;
}

int kern_ipc_open(const struct kern_ipc_handle *h, void **ret_ptr)
{
	return -ENODEV;
}

int kern_ipc_close(void *ptr)
{
	return -ENODEV;
}
