/*
 * kern: the GPU data path (page gather, sparse decode attention, CUDA IPC export) and the CPU
 * references it is checked against.
 *
 * The references (kern_ref_*) are always built; dtypes and their conversions are runtime/common's
 * (dtype.h). The GPU functions
 * (kern_gpu_*, kern_gather, kern_attn, kern_ipc_*) are always declared; without CUDA, or with
 * no usable device, they return -ENODEV. CUDA types never leave this module: streams are
 * `void *` (a cudaStream_t, NULL for the default stream), device memory is `void *` or a
 * uint64_t device address.
 *
 * Page layout (the page store's payload, tiers/store.h, kept byte for byte in an HBM slot and
 * in pinned DRAM): the K block [fill][d] then the V block [fill][d], one dtype, rows contiguous,
 * so V starts fill * d elements after K. A slot holds up to page_cap (P) tokens:
 * slot_bytes >= 2 * P * d * elem size, a multiple of 16; d a multiple of 8.
 */
#ifndef ICE_KERNELS_KERN_H
#define ICE_KERNELS_KERN_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

/* ---------------------------------------------------------------- page gather */

/* One page move: `bytes` (kern_gather's argument) from src to dst. Addresses are device-visible:
 * an HBM slot, or the device alias of mapped pinned host memory. 16-byte aligned. */
struct kern_copy {
	uint64_t src;
	uint64_t dst;
};

/* CPU reference: copies[i].src/dst are host addresses. -EINVAL if bytes is not a multiple of 16,
 * an address is unaligned or NULL. */
int kern_ref_gather(const struct kern_copy *copies, uint32_t n, size_t bytes);

/* GPU: one launch moves all n pages. `copies` is device-visible memory (device memory or
 * mapped pinned host memory) that must stay valid until the launch has run. Returns 0 once
 * enqueued on `stream`; -EINVAL for bad arguments, -ENODEV without a GPU, -EIO on a CUDA error. */
int kern_gather(const struct kern_copy *copies, uint32_t n, size_t bytes, void *stream);

/* GPU: the same move with the copy list passed by value in the launch itself (host memory,
 * read at the call), so there is no descriptor upload and no dependent load before the first
 * PCIe read. n <= KERN_GATHER_INLINE_MAX (one layer's budget: 8 KV heads x 16 pages = 128).
 * Launched with programmatic dependent launch: it reads its sources before the kernels ahead
 * of it on the stream have finished (its writes wait for them). So its sources must not be
 * written by GPU work still in flight: pinned host pages the CPU wrote before the call are the
 * intended case; for sources a kernel on the stream writes, use kern_gather. */
#define KERN_GATHER_INLINE_MAX 240
int kern_gather_inline(const struct kern_copy *copies, uint32_t n, size_t bytes, void *stream);

/* ---------------------------------------------------------------- sparse decode attention */

/* One page of a KV head's page table: the slot it sits in, how many tokens it holds, and
 * which of them are left out (bit t: row t, for t < KERN_SKIP_ROWS; 0 attends every row). A
 * page retrieved whole has skip 0; IceCache's retrieved pages attend only their chosen tokens
 * (ice_page_ref.mask: skip = ~mask within the fill). */
struct kern_page {
	uint32_t slot;
	uint16_t fill;
	uint16_t skip;
};

#define KERN_SKIP_ROWS 16

/*
 * Decode attention for one layer and one new token: for each query head i (KV head
 * h = i / (hq / hkv)), out[i] = softmax(scale * q[i] . K_h) V_h over every token of every page in
 * h's page table (pages[head_off[h] .. head_off[h + 1]), the first `fill` rows of each but
 * those its `skip` bits leave out), which
 * the caller makes up of the sink page, the selected pages and the window pages, plus the
 * optional rest term. Exact softmax, fp32 arithmetic whatever the storage dtype. A head with no
 * tokens and no rest term gets zeros.
 */
struct kern_attn_args {
	enum ice_dtype dtype; /* q, pool and out */
	uint32_t hq, hkv;     /* hq % hkv == 0, hq / hkv <= KERN_ATTN_MAX_GROUP on the GPU */
	uint32_t d;           /* head dim; the GPU kernel takes 64 or 128 */
	uint32_t page_cap;    /* P, tokens per page */
	float scale;          /* usually 1 / sqrt(d) */
	const void *q;        /* [hq][d] */
	void *out;            /* [hq][d] */
	const void *pool;     /* slot 0; 16-byte aligned */
	size_t slot_bytes;    /* bytes per slot */
	uint32_t nslots;      /* slots in the pool (page slots must be below) */
	const struct kern_page *pages;
	const uint32_t *head_off; /* [hkv + 1], non-decreasing, head_off[0] == 0 */
	uint32_t max_pages; /* >= pages of any head (GPU: sizes the split; ignored by the ref) */
	/* NULL, or per query head a rest term (ice_select_rest): [hq][d + 1] float32, a log
	 * weight (at the softmax's scale; -INFINITY: none) then a value, joined to the softmax
	 * as one more token of that weight and value. */
	const float *rest;
};

#define KERN_ATTN_MAX_GROUP 8

/* Checks the shape fields (not the tables). 0 or -EINVAL. */
int kern_attn_check(const struct kern_attn_args *a);

/* CPU reference (double accumulation; every pointer is a host pointer). Also validates the
 * page tables: -EINVAL for a slot >= nslots, fill > page_cap or non-monotonic head_off. */
int kern_ref_attn(const struct kern_attn_args *a);

/* GPU workspace for kern_attn, in bytes (0 when none is needed, or for a shape kern_attn_check
 * rejects). The workspace must be zero-filled once before its first use (kern_memset); each
 * kern_attn leaves it ready for the next. One workspace per stream: launches that may run at
 * the same time must not share one. */
size_t kern_attn_ws_size(const struct kern_attn_args *a);

/* GPU: every pointer in `a` is device-visible; ws is device memory of kern_attn_ws_size bytes.
 * Tables are not validated on the device: a slot >= nslots or a fill > page_cap is treated as
 * an empty page. 0 once enqueued; -EINVAL, -ENODEV, -EIO. */
int kern_attn(const struct kern_attn_args *a, void *ws, void *stream);

/* ---------------------------------------------------------------- device plumbing */

/* Number of usable CUDA devices (>= 1) or -ENODEV. Cheap after the first call. */
int kern_gpu_count(void);
/* Makes `device` current for the calling thread. */
int kern_gpu_select(int device);
/* Last asynchronous error on the current device, as -errno (0 if none). Sticky errors (an
 * illegal address) stay: the context is lost, so callers mark themselves failed. */
int kern_gpu_check(void);

int kern_dev_alloc(size_t bytes, void **ret_ptr);
void kern_dev_free(void *ptr);
/* Pinned, mapped host memory (cudaHostAlloc mapped|portable); ret_dev gets its device alias. */
int kern_host_alloc(size_t bytes, void **ret_host, uint64_t *ret_dev);
void kern_host_free(void *host);
/* Registers existing host memory (page aligned) as pinned + mapped; ret_dev its alias. */
int kern_host_register(void *host, size_t bytes, uint64_t *ret_dev);
int kern_host_unregister(void *host);

/* Synchronous copies (cudaMemcpy, direction inferred). */
int kern_memcpy(void *dst, const void *src, size_t bytes);
int kern_memcpy_async(void *dst, const void *src, size_t bytes, void *stream);
int kern_memset(void *dst, int byte, size_t bytes);

int kern_stream_new(void **ret_stream);
void kern_stream_free(void *stream);
int kern_stream_sync(void *stream);

/* Events for timing on a stream (the benchmark's clock). */
int kern_event_new(void **ret_ev);
void kern_event_free(void *ev);
int kern_event_record(void *ev, void *stream);
int kern_event_ms(void *start, void *end, float *ret_ms);
/* Waits until the work before the event's last record has run. */
int kern_event_sync(void *ev);

/* ---------------------------------------------------------------- export to other processes */

#define KERN_IPC_HANDLE_BYTES 64

struct kern_ipc_handle {
	unsigned char bytes[KERN_IPC_HANDLE_BYTES];
};

/* Exports a kern_dev_alloc allocation (its base) to other processes on the same host. */
int kern_ipc_export(void *dev_ptr, struct kern_ipc_handle *ret_handle);
/* Opens a handle exported by another process; ret_ptr is valid until kern_ipc_close. The
 * exporting process cannot open its own handle (-EINVAL from CUDA). */
int kern_ipc_open(const struct kern_ipc_handle *h, void **ret_ptr);
int kern_ipc_close(void *ptr);

#endif
