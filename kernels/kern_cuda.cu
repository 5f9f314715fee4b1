/*
 * CUDA side of kern: the page gather and sparse decode attention kernels, and the thin device
 * plumbing (allocations, streams, events, IPC) the HBM page cache (tiers/hbm) and the benchmark
 * go through, so that CUDA headers stay inside kernels/. Every CUDA error becomes -errno here.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

extern "C" {
#include "kern.h"
#include "kern_split.h"
}

static int err_of(cudaError_t e)
{
	switch (e) {
	case cudaSuccess:
		return 0;
	case cudaErrorMemoryAllocation:
		return -ENOMEM;
	case cudaErrorInvalidValue:
	case cudaErrorInvalidDevicePointer:
	case cudaErrorInvalidResourceHandle:
	case cudaErrorInvalidDevice:
	case cudaErrorMapBufferObjectFailed:
	case cudaErrorDeviceUninitialized:
		return -EINVAL;
	case cudaErrorNoDevice:
	case cudaErrorInsufficientDriver:
	case cudaErrorCompatNotSupportedOnDevice:
		return -ENODEV;
	case cudaErrorHostMemoryAlreadyRegistered:
		return -EEXIST;
	case cudaErrorNotSupported:
		return -EOPNOTSUPP;
	default:
		return -EIO;
	}
}

/* ---------------------------------------------------------------- programmatic launch */

/*
 * Programmatic dependent launch (sm_90): the inline gather and the attention are launched with
 * programmaticStreamSerialization, so each may start while the kernel before it on the stream
 * is still finishing. Each kernel lets its successor start at once (trigger) and, before it
 * touches memory the predecessor may still be using, waits for the predecessor grid to
 * complete and flush (wait). The gather issues its PCIe reads before the wait (they read host
 * pages no kernel writes) and stores after it, which hides the read latency behind the
 * previous kernel's tail. Launched without the attribute, both instructions are no-ops.
 */
__device__ __forceinline__ void pdl_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

template <typename... KArgs, typename... Args>
static cudaError_t launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t st,
			      Args... args)
{
	cudaLaunchConfig_t cfg = {};
	cudaLaunchAttribute attr = {};

	cfg.gridDim = grid;
	cfg.blockDim = block;
	cfg.stream = st;
	attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
	attr.val.programmaticStreamSerializationAllowed = 1;
	cfg.attrs = &attr;
	cfg.numAttrs = 1;
	return cudaLaunchKernelEx(&cfg, kernel, args...);
}

/* ---------------------------------------------------------------- page gather */

enum { GATHER_THREADS = 128, GATHER_UNROLL = 4 };

/*
 * One block per page (grid-stride over pages). Each thread issues GATHER_UNROLL independent
 * 16-byte loads before its stores: reads from mapped host memory cross PCIe with ~1 us latency,
 * so bandwidth comes only from many loads in flight (a 8 KiB page is exactly one round).
 */
__global__ void __launch_bounds__(GATHER_THREADS)
gather_kernel(const struct kern_copy *__restrict__ copies, uint32_t n, uint32_t vecs)
{
	for (uint32_t i = blockIdx.x; i < n; i += gridDim.x) {
		const uint4 *src = (const uint4 *)copies[i].src;
		uint4 *dst = (uint4 *)copies[i].dst;

		for (uint32_t v = threadIdx.x; v < vecs; v += GATHER_THREADS * GATHER_UNROLL) {
			uint4 r[GATHER_UNROLL];
#pragma unroll
			for (int k = 0; k < GATHER_UNROLL; k++) {
				uint32_t idx = v + k * GATHER_THREADS;

				if (idx < vecs)
					r[k] = src[idx];
			}
#pragma unroll
			for (int k = 0; k < GATHER_UNROLL; k++) {
				uint32_t idx = v + k * GATHER_THREADS;

				if (idx < vecs)
					dst[idx] = r[k];
			}
		}
	}
}

extern "C" int kern_gather(const struct kern_copy *copies, uint32_t n, size_t bytes, void *stream)
{
	uint32_t grid;

	if (bytes % 16 || bytes / 16 > UINT32_MAX || (n && !copies))
		return -EINVAL;
	if (!n || !bytes)
		return 0;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	grid = n < 65535u ? n : 65535u;
	gather_kernel<<<grid, GATHER_THREADS, 0, (cudaStream_t)stream>>>(copies, n,
									 (uint32_t)(bytes / 16));
	return err_of(cudaGetLastError());
}

/* The copy list rides in the kernel's parameter space (4 KiB), read through the constant cache. */
struct gather_inline_params {
	struct kern_copy c[KERN_GATHER_INLINE_MAX];
	uint32_t n, vecs;
};

static_assert(sizeof(struct gather_inline_params) <= 4096, "kernel parameter limit");

__global__ void __launch_bounds__(GATHER_THREADS)
gather_inline_kernel(const __grid_constant__ struct gather_inline_params p)
{
	const uint32_t i = blockIdx.x;
	const uint4 *src = (const uint4 *)p.c[i].src;
	uint4 *dst = (uint4 *)p.c[i].dst;
	bool waited = false;

	pdl_trigger();
	for (uint32_t v = threadIdx.x; v < p.vecs; v += GATHER_THREADS * GATHER_UNROLL) {
		uint4 r[GATHER_UNROLL];
#pragma unroll
		for (int k = 0; k < GATHER_UNROLL; k++) {
			uint32_t idx = v + k * GATHER_THREADS;

			if (idx < p.vecs)
				r[k] = src[idx];
		}
		if (!waited) {
			pdl_wait(); /* slots may still be read by the kernel before */
			waited = true;
		}
#pragma unroll
		for (int k = 0; k < GATHER_UNROLL; k++) {
			uint32_t idx = v + k * GATHER_THREADS;

			if (idx < p.vecs)
				dst[idx] = r[k];
		}
	}
}

extern "C" int kern_gather_inline(const struct kern_copy *copies, uint32_t n, size_t bytes,
				  void *stream)
{
	struct gather_inline_params p;

	if (bytes % 16 || bytes / 16 > UINT32_MAX || (n && !copies) || n > KERN_GATHER_INLINE_MAX)
		return -EINVAL;
	if (!n || !bytes)
		return 0;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	memcpy(p.c, copies, n * sizeof(*copies));
	p.n = n;
	p.vecs = (uint32_t)(bytes / 16);
	return err_of(launch_pdl(gather_inline_kernel, dim3(n), dim3(GATHER_THREADS),
				 (cudaStream_t)stream, p));
}

/* ---------------------------------------------------------------- sparse decode attention */

/* cudaLaunchKernelEx reports launch errors by return value; kern_attn reads this after. */
static cudaError_t launch_err;

enum { ATTN_WARPS = 4, ATTN_THREADS = ATTN_WARPS * 32 };

struct attn_params {
	const void *q;
	void *out;
	const char *pool;
	size_t slot_bytes;
	const struct kern_page *pages;
	const uint32_t *head_off;
	/* nsplit > 1: [hkv][nsplit][g][d] partial sums, [hkv][nsplit][g][2] (m, l), then [hkv]
	 * arrival counters (zero between launches) */
	float *ws;
	uint32_t nslots, page_cap, g, hkv, pps, nsplit;
	float scale;
	const float *rest; /* NULL or [hq][D + 1]: log weight then value, one extra token */
};

/* Joins query head qi's rest term (if any) to a softmax state (max mx, sum L, dim c's sum A). */
template <int D>
__device__ __forceinline__ void join_rest(const struct attn_params &pr, uint32_t qi, uint32_t c,
					  float &mx, float &L, float &A)
{
	float rl, nm;

	if (!pr.rest)
		return;
	rl = pr.rest[(size_t)qi * (D + 1)];
	if (!(rl > -INFINITY))
		return;
	nm = fmaxf(mx, rl);
	if (mx != -INFINITY) {
		float e = __expf(mx - nm);

		L *= e;
		A *= e;
	}
	L += __expf(rl - nm);
	A += __expf(rl - nm) * pr.rest[(size_t)qi * (D + 1) + 1 + c];
	mx = nm;
}

/* Eight consecutive elements as floats: one 16-byte load for 2-byte types, two for fp32. */
__device__ __forceinline__ void load8(const float *p, float f[8])
{
	float4 a = ((const float4 *)p)[0], b = ((const float4 *)p)[1];

	f[0] = a.x;
	f[1] = a.y;
	f[2] = a.z;
	f[3] = a.w;
	f[4] = b.x;
	f[5] = b.y;
	f[6] = b.z;
	f[7] = b.w;
}

__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float f[8])
{
	uint4 u = *(const uint4 *)p;
	const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		float2 x = __bfloat1622float2(h[i]);

		f[2 * i] = x.x;
		f[2 * i + 1] = x.y;
	}
}

__device__ __forceinline__ void load8(const __half *p, float f[8])
{
	uint4 u = *(const uint4 *)p;
	const __half2 *h = (const __half2 *)&u;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		float2 x = __half22float2(h[i]);

		f[2 * i] = x.x;
		f[2 * i + 1] = x.y;
	}
}

__device__ __forceinline__ void store1(float *p, float v)
{
	*p = v;
}
__device__ __forceinline__ void store1(__nv_bfloat16 *p, float v)
{
	*p = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void store1(__half *p, float v)
{
	*p = __float2half_rn(v);
}

/* Merges softmax state (mo, lo, ao) into (m, l, a); empty states have m == -inf. */
__device__ __forceinline__ void merge_state(float &m, float &l, float *a, float mo, float lo,
					    const float *ao)
{
	float mn = fmaxf(m, mo), x, y;

	if (mn == -INFINITY)
		return;
	x = __expf(m - mn);
	y = __expf(mo - mn);
	l = l * x + lo * y;
#pragma unroll
	for (int c = 0; c < 8; c++)
		a[c] = a[c] * x + ao[c] * y;
	m = mn;
}

/* Loads this lane's 8 dims of token i's K and V rows (i counts the block's pages' token
 * positions); false for a position past a page's fill, a skipped row, an invalid slot, or past
 * the block. */
template <typename T, int D>
__device__ __forceinline__ bool load_token(const struct attn_params &pr, uint32_t p_begin,
					   uint32_t i, uint32_t total, int sl, float k[8],
					   float v[8])
{
	if (i < total) {
		struct kern_page pg = pr.pages[p_begin + i / pr.page_cap];
		uint32_t t = i % pr.page_cap;

		if (pg.slot < pr.nslots && pg.fill <= pr.page_cap && t < pg.fill &&
		    !(t < KERN_SKIP_ROWS && ((uint32_t)pg.skip >> t & 1))) {
			const T *row = (const T *)(pr.pool + (size_t)pg.slot * pr.slot_bytes) +
				       (size_t)t * D + sl * 8;

			load8(row, k);
			load8(row + (size_t)pg.fill * D, v);
			return true;
		}
	}
#pragma unroll
	for (int c = 0; c < 8; c++)
		k[c] = v[c] = 0.0f;
	return false;
}

/* One token into each query head's online softmax state (every lane of the warp must call:
 * the dot product is reduced across the LPT lanes that hold the token). */
template <int D, int G>
__device__ __forceinline__ void softmax_step(const float (&q)[G][8], float (&m)[G], float (&l)[G],
					     float (&a)[G][8], uint32_t g, bool valid,
					     const float k[8], const float v[8])
{
	constexpr int LPT = D / 8;

#pragma unroll
	for (int j = 0; j < G; j++) {
		float s = 0.0f;

#pragma unroll
		for (int c = 0; c < 8; c++)
			s = fmaf(q[j][c], k[c], s);
#pragma unroll
		for (int off = LPT / 2; off > 0; off >>= 1)
			s += __shfl_xor_sync(0xffffffffu, s, off);
		if (valid && (uint32_t)j < g) {
			float mn = fmaxf(m[j], s);
			float corr = __expf(m[j] - mn), p = __expf(s - mn);

			l[j] = l[j] * corr + p;
#pragma unroll
			for (int c = 0; c < 8; c++)
				a[j][c] = fmaf(p, v[c], a[j][c] * corr);
			m[j] = mn;
		}
	}
}

/*
 * Grid (nsplit, hkv): a block takes `pps` pages of one KV head and all g query heads of its
 * group, so each K/V row is read once per group (GQA). Within a warp, LPT = D/8 lanes hold one
 * token's row (8 dims each) and TPW = 32/LPT tokens go at once; each lane group keeps its own
 * online-softmax state, merged across the warp, then across warps through shared memory.
 */
template <typename T, int D, int G>
__global__ void __launch_bounds__(ATTN_THREADS) attn_kernel(struct attn_params pr)
{
	constexpr int LPT = D / 8;
	constexpr int TPW = 32 / LPT;
	__shared__ float sm_m[ATTN_WARPS][G], sm_l[ATTN_WARPS][G];
	__shared__ float sm_a[ATTN_WARPS][G][D];
	const uint32_t h = blockIdx.y, split = blockIdx.x;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const int sub = lane / LPT, sl = lane % LPT;
	const uint32_t g = pr.g;
	const T *qp = (const T *)pr.q;
	uint32_t p_begin, p_end, total;
	float q[G][8], m[G], l[G], a[G][8];

	pdl_trigger();
	pdl_wait(); /* the gather (or whatever wrote q and the tables) has completed */
	p_begin = pr.head_off[h] + split * pr.pps;
	p_end = pr.head_off[h + 1];
	if (p_end > p_begin + pr.pps)
		p_end = p_begin + pr.pps;
	total = p_end > p_begin ? (p_end - p_begin) * pr.page_cap : 0;

#pragma unroll
	for (int j = 0; j < G; j++) {
		if ((uint32_t)j < g) {
			load8(qp + ((size_t)(h * g + j) * D + sl * 8), q[j]);
#pragma unroll
			for (int c = 0; c < 8; c++)
				q[j][c] *= pr.scale;
		} else {
#pragma unroll
			for (int c = 0; c < 8; c++)
				q[j][c] = 0.0f;
		}
		m[j] = -INFINITY;
		l[j] = 0.0f;
#pragma unroll
		for (int c = 0; c < 8; c++)
			a[j][c] = 0.0f;
	}

	/* Two token rounds per iteration: both rounds' K/V loads are in flight before the first
	 * dot product, which halves the chain of dependent memory latencies per block. */
	for (uint32_t base = warp * TPW; base < total; base += 2 * ATTN_WARPS * TPW) {
		float k0[8], v0[8], k1[8], v1[8];
		bool ok0 = load_token<T, D>(pr, p_begin, base + sub, total, sl, k0, v0);
		bool ok1 = load_token<T, D>(pr, p_begin, base + ATTN_WARPS * TPW + sub, total, sl,
					    k1, v1);

		softmax_step<D, G>(q, m, l, a, g, ok0, k0, v0);
		softmax_step<D, G>(q, m, l, a, g, ok1, k1, v1);
	}

	/* Lane groups of the warp hold the same dims for different tokens: fold them together. */
#pragma unroll
	for (int off = LPT; off < 32; off <<= 1) {
#pragma unroll
		for (int j = 0; j < G; j++) {
			float mo = __shfl_xor_sync(0xffffffffu, m[j], off);
			float lo = __shfl_xor_sync(0xffffffffu, l[j], off);
			float ao[8];

#pragma unroll
			for (int c = 0; c < 8; c++)
				ao[c] = __shfl_xor_sync(0xffffffffu, a[j][c], off);
			merge_state(m[j], l[j], a[j], mo, lo, ao);
		}
	}
	if (sub == 0) {
#pragma unroll
		for (int j = 0; j < G; j++) {
#pragma unroll
			for (int c = 0; c < 8; c++)
				sm_a[warp][j][sl * 8 + c] = a[j][c];
			if (sl == 0) {
				sm_m[warp][j] = m[j];
				sm_l[warp][j] = l[j];
			}
		}
	}
	__syncthreads();

	for (uint32_t idx = threadIdx.x; idx < g * D; idx += ATTN_THREADS) {
		uint32_t j = idx / D, c = idx % D;
		float mx = -INFINITY, L = 0.0f, A = 0.0f;

#pragma unroll
		for (int w = 0; w < ATTN_WARPS; w++)
			mx = fmaxf(mx, sm_m[w][j]);
		if (mx != -INFINITY) {
#pragma unroll
			for (int w = 0; w < ATTN_WARPS; w++) {
				float e = __expf(sm_m[w][j] - mx);

				L += sm_l[w][j] * e;
				A += sm_a[w][j][c] * e;
			}
		}
		if (pr.nsplit == 1) {
			T *out = (T *)pr.out + (size_t)(h * g + j) * D + c;

			join_rest<D>(pr, h * g + j, c, mx, L, A);
			store1(out, L > 0.0f ? A / L : 0.0f);
		} else {
			size_t part = ((size_t)h * pr.nsplit + split) * g + j;
			float *ml = pr.ws + (size_t)pr.hkv * pr.nsplit * g * D;

			pr.ws[part * D + c] = A;
			if (c == 0) {
				ml[part * 2] = mx;
				ml[part * 2 + 1] = L;
			}
		}
	}
	if (pr.nsplit == 1)
		return;

	/*
	 * Split: the last block of this KV head to finish folds every block's partial state
	 * (one launch per layer instead of two). Each thread's partial writes are made visible
	 * device-wide before the block counts itself done.
	 */
	__shared__ uint32_t last;
	unsigned int *done = (unsigned int *)(pr.ws + (size_t)pr.hkv * pr.nsplit * g * (D + 2));

	__threadfence();
	__syncthreads();
	if (threadIdx.x == 0)
		last = atomicAdd(&done[h], 1u) == pr.nsplit - 1;
	__syncthreads();
	if (!last)
		return;
	__threadfence();
	{
		const float *ml = pr.ws + (size_t)pr.hkv * pr.nsplit * g * D;

		for (uint32_t idx = threadIdx.x; idx < g * D; idx += ATTN_THREADS) {
			uint32_t j = idx / D, c = idx % D;
			float mx = -INFINITY, L = 0.0f, A = 0.0f;

			for (uint32_t sp = 0; sp < pr.nsplit; sp++)
				mx = fmaxf(mx,
					   __ldcg(&ml[(((size_t)h * pr.nsplit + sp) * g + j) * 2]));
			if (mx != -INFINITY) {
				for (uint32_t sp = 0; sp < pr.nsplit; sp++) {
					size_t part = ((size_t)h * pr.nsplit + sp) * g + j;
					float e = __expf(__ldcg(&ml[part * 2]) - mx);

					L += __ldcg(&ml[part * 2 + 1]) * e;
					A += __ldcg(&pr.ws[part * D + c]) * e;
				}
			}
			join_rest<D>(pr, h * g + j, c, mx, L, A);
			store1((T *)pr.out + (size_t)(h * g + j) * D + c, L > 0.0f ? A / L : 0.0f);
		}
	}
	if (threadIdx.x == 0)
		done[h] = 0; /* ready for the next launch on this workspace */
}

template <typename T, int D, int G>
static void attn_launch(const struct attn_params &pr, cudaStream_t st)
{
	dim3 grid(pr.nsplit, pr.hkv);

	cudaError_t e = launch_pdl(attn_kernel<T, D, G>, grid, dim3(ATTN_THREADS), st, pr);

	if (e != cudaSuccess)
		launch_err = e;
}

template <typename T, int D>
static void attn_launch_g(const struct attn_params &pr, cudaStream_t st)
{
	if (pr.g <= 1)
		attn_launch<T, D, 1>(pr, st);
	else if (pr.g <= 2)
		attn_launch<T, D, 2>(pr, st);
	else if (pr.g <= 4)
		attn_launch<T, D, 4>(pr, st);
	else
		attn_launch<T, D, 8>(pr, st);
}

template <typename T>
static void attn_launch_d(const struct attn_params &pr, uint32_t d, cudaStream_t st)
{
	if (d == 64)
		attn_launch_g<T, 64>(pr, st);
	else
		attn_launch_g<T, 128>(pr, st);
}

extern "C" int kern_attn(const struct kern_attn_args *a, void *ws, void *stream)
{
	struct attn_params pr;
	struct kern_split sp;
	cudaStream_t st = (cudaStream_t)stream;
	int r = kern_attn_check(a);

	if (r)
		return r;
	if ((a->d != 64 && a->d != 128) || a->hq / a->hkv > KERN_ATTN_MAX_GROUP)
		return -EINVAL;
	if (a->slot_bytes % 16 || (uintptr_t)a->q % 16 || a->hkv > 65535)
		return -EINVAL;
	sp = kern_attn_split(a->hkv, a->max_pages);
	if (sp.nsplit > 1 && !ws)
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	pr.q = a->q;
	pr.out = a->out;
	pr.pool = (const char *)a->pool;
	pr.slot_bytes = a->slot_bytes;
	pr.pages = a->pages;
	pr.head_off = a->head_off;
	pr.ws = (float *)ws;
	pr.nslots = a->nslots;
	pr.page_cap = a->page_cap;
	pr.g = a->hq / a->hkv;
	pr.hkv = a->hkv;
	pr.pps = sp.pps;
	pr.nsplit = sp.nsplit;
	pr.scale = a->scale;
	pr.rest = a->rest;
	launch_err = cudaSuccess;
	switch (a->dtype) {
	case ICE_DTYPE_F32:
		attn_launch_d<float>(pr, a->d, st);
		break;
	case ICE_DTYPE_F16:
		attn_launch_d<__half>(pr, a->d, st);
		break;
	case ICE_DTYPE_BF16:
		attn_launch_d<__nv_bfloat16>(pr, a->d, st);
		break;
	}
	if (launch_err != cudaSuccess)
		return err_of(launch_err);
	return err_of(cudaGetLastError());
}

/* ---------------------------------------------------------------- device plumbing */

extern "C" int kern_gpu_count(void)
{
	static int cached; /* 0 unknown, > 0 count, < 0 error */
	int n = 0;

	if (cached)
		return cached;
	if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
		(void)cudaGetLastError();
		cached = -ENODEV;
	} else {
		cached = n;
	}
	return cached;
}

extern "C" int kern_gpu_select(int device)
{
	if (kern_gpu_count() < 0)
		return -ENODEV;
	return err_of(cudaSetDevice(device));
}

extern "C" int kern_gpu_check(void)
{
	if (kern_gpu_count() < 0)
		return -ENODEV;
	return err_of(cudaDeviceSynchronize());
}

extern "C" int kern_dev_alloc(size_t bytes, void **ret_ptr)
{
	void *p = NULL;
	int r;

	if (!ret_ptr || !bytes)
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	r = err_of(cudaMalloc(&p, bytes));
	if (r)
		return r;
	*ret_ptr = p;
	return 0;
}

extern "C" void kern_dev_free(void *ptr)
{
	if (ptr)
		cudaFree(ptr);
}

extern "C" int kern_host_alloc(size_t bytes, void **ret_host, uint64_t *ret_dev)
{
	void *h = NULL, *d = NULL;
	int r;

	if (!ret_host || !ret_dev || !bytes)
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	r = err_of(cudaHostAlloc(&h, bytes, cudaHostAllocMapped | cudaHostAllocPortable));
	if (r)
		return r;
	r = err_of(cudaHostGetDevicePointer(&d, h, 0));
	if (r) {
		cudaFreeHost(h);
		return r;
	}
	*ret_host = h;
	*ret_dev = (uint64_t)(uintptr_t)d;
	return 0;
}

extern "C" void kern_host_free(void *host)
{
	if (host)
		cudaFreeHost(host);
}

extern "C" int kern_host_register(void *host, size_t bytes, uint64_t *ret_dev)
{
	void *d = NULL;
	int r;

	if (!host || !bytes || !ret_dev)
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	r = err_of(
		cudaHostRegister(host, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable));
	if (r)
		return r;
	r = err_of(cudaHostGetDevicePointer(&d, host, 0));
	if (r) {
		cudaHostUnregister(host);
		return r;
	}
	*ret_dev = (uint64_t)(uintptr_t)d;
	return 0;
}

extern "C" int kern_host_unregister(void *host)
{
	if (!host)
		return -EINVAL;
	return err_of(cudaHostUnregister(host));
}

extern "C" int kern_memcpy(void *dst, const void *src, size_t bytes)
{
	if (bytes && (!dst || !src))
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	return err_of(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
}

extern "C" int kern_memcpy_async(void *dst, const void *src, size_t bytes, void *stream)
{
	if (bytes && (!dst || !src))
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	return err_of(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, (cudaStream_t)stream));
}

extern "C" int kern_memset(void *dst, int byte, size_t bytes)
{
	if (bytes && !dst)
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	return err_of(cudaMemset(dst, byte, bytes));
}

extern "C" int kern_stream_new(void **ret_stream)
{
	cudaStream_t s;
	int r;

	if (!ret_stream)
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	r = err_of(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
	if (r)
		return r;
	*ret_stream = (void *)s;
	return 0;
}

extern "C" void kern_stream_free(void *stream)
{
	if (stream)
		cudaStreamDestroy((cudaStream_t)stream);
}

extern "C" int kern_stream_sync(void *stream)
{
	if (kern_gpu_count() < 0)
		return -ENODEV;
	return err_of(cudaStreamSynchronize((cudaStream_t)stream));
}

extern "C" int kern_event_new(void **ret_ev)
{
	cudaEvent_t e;
	int r;

	if (!ret_ev)
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	r = err_of(cudaEventCreate(&e));
	if (r)
		return r;
	*ret_ev = (void *)e;
	return 0;
}

extern "C" void kern_event_free(void *ev)
{
	if (ev)
		cudaEventDestroy((cudaEvent_t)ev);
}

extern "C" int kern_event_record(void *ev, void *stream)
{
	if (!ev)
		return -EINVAL;
	return err_of(cudaEventRecord((cudaEvent_t)ev, (cudaStream_t)stream));
}

extern "C" int kern_event_sync(void *ev)
{
	if (!ev)
		return -EINVAL;
	return err_of(cudaEventSynchronize((cudaEvent_t)ev));
}

extern "C" int kern_event_ms(void *start, void *end, float *ret_ms)
{
	float ms = 0.0f;
	int r;

	if (!start || !end || !ret_ms)
		return -EINVAL;
	r = err_of(cudaEventSynchronize((cudaEvent_t)end));
	if (!r)
		r = err_of(cudaEventElapsedTime(&ms, (cudaEvent_t)start, (cudaEvent_t)end));
	if (r)
		return r;
	*ret_ms = ms;
	return 0;
}

/* ---------------------------------------------------------------- IPC */

static_assert(sizeof(cudaIpcMemHandle_t) == KERN_IPC_HANDLE_BYTES, "IPC handle size");

extern "C" int kern_ipc_export(void *dev_ptr, struct kern_ipc_handle *ret_handle)
{
	cudaIpcMemHandle_t h;
	int r;

	if (!dev_ptr || !ret_handle)
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	r = err_of(cudaIpcGetMemHandle(&h, dev_ptr));
	if (r)
		return r;
	memcpy(ret_handle->bytes, &h, sizeof(h));
	return 0;
}

extern "C" int kern_ipc_open(const struct kern_ipc_handle *hd, void **ret_ptr)
{
	cudaIpcMemHandle_t h;
	void *p = NULL;
	int r;

	if (!hd || !ret_ptr)
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	memcpy(&h, hd->bytes, sizeof(h));
	r = err_of(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess));
	if (r)
		return r;
	*ret_ptr = p;
	return 0;
}

extern "C" int kern_ipc_close(void *ptr)
{
	if (!ptr)
		return -EINVAL;
	return err_of(cudaIpcCloseMemHandle(ptr));
}
