/*
 * CUDA side of ksel (kernels/ksel.h): page summaries and the fused per-layer select.
 *
 * sel_kernel, grid (chunks, hkv), SEL_THREADS threads. Each block scores SEL_CHUNK pages of one
 * KV head from their summaries (eight lanes per page, four pages per warp step; the group's
 * queries, quantised to int8 in the block, meet the int8 bounds in dp4a) and writes the bounds
 * to the workspace. The last block of a head to finish (threadfence + counter, reset for the
 * next launch) then does the head's selection alone: a four-pass radix select of the best
 * `cand` bounds (no sort), the exact q.k of every candidate token from the K in HBM, the
 * per-page mass shares and the rank of each candidate, and writes ids, masks, table and copies.
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
#include "ksel.h"
}

static int sel_err(cudaError_t e)
{
	switch (e) {
	case cudaSuccess:
		return 0;
	case cudaErrorMemoryAllocation:
		return -ENOMEM;
	case cudaErrorInvalidValue:
	case cudaErrorInvalidDevicePointer:
		return -EINVAL;
	case cudaErrorNoDevice:
	case cudaErrorInsufficientDriver:
		return -ENODEV;
	default:
		return -EIO;
	}
}

enum { SEL_THREADS = 512, SEL_WARPS = SEL_THREADS / 32, SEL_CHUNK = 256, SUM_THREADS = 128 };

__device__ __forceinline__ float ld_f(const float *p, size_t i)
{
	return p[i];
}
__device__ __forceinline__ float ld_f(const __half *p, size_t i)
{
	return __half2float(p[i]);
}
__device__ __forceinline__ float ld_f(const __nv_bfloat16 *p, size_t i)
{
	return __bfloat162float(p[i]);
}

__device__ __forceinline__ const void *sel_page(const struct kern_sel_keys &k, uint32_t h,
						uint32_t p)
{
	size_t i = (size_t)h * k.pstride + p;
	size_t slot = k.slot_of ? k.slot_of[i] : i;

	return (const char *)k.pool + slot * k.slot_bytes;
}

/* ---------------------------------------------------------------- summaries */

template <typename T>
__global__ void __launch_bounds__(SUM_THREADS)
sum_kernel(struct kern_sel_keys k, const struct kern_sel_upd *__restrict__ upd, uint32_t n,
	   unsigned char *__restrict__ sums)
{
	__shared__ float red[SUM_THREADS / 32];
	__shared__ float s_scale;
	size_t rb = KERN_SEL_HDR + 2 * (size_t)k.d;

	for (uint32_t u = blockIdx.x; u < n; u += gridDim.x) {
		struct kern_sel_upd up = upd[u];
		const T *kp = (const T *)sel_page(k, up.head, up.page);
		unsigned char *rec = sums + ((size_t)up.head * k.pstride + up.page) * rb;
		float amax = 0.0f;

		for (uint32_t c = threadIdx.x; c < k.d; c += SUM_THREADS)
			for (uint32_t t = 0; t < up.fill; t++)
				amax = fmaxf(amax, fabsf(ld_f(kp, (size_t)t * k.d + c)));
		for (int off = 16; off; off >>= 1)
			amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
		if ((threadIdx.x & 31) == 0)
			red[threadIdx.x >> 5] = amax;
		__syncthreads();
		if (threadIdx.x == 0) {
			float m = 0.0f;

			for (int w = 0; w < SUM_THREADS / 32; w++)
				m = fmaxf(m, red[w]);
			s_scale = m > 0.0f ? m / 127.0f : 1.0f;
		}
		__syncthreads();
		for (uint32_t c = threadIdx.x; c < k.d; c += SUM_THREADS) {
			float mn = INFINITY, mx = -INFINITY;

			for (uint32_t t = 0; t < up.fill; t++) {
				float v = ld_f(kp, (size_t)t * k.d + c);

				mn = fminf(mn, v);
				mx = fmaxf(mx, v);
			}
			if (!up.fill)
				mn = mx = 0.0f;
			rec[KERN_SEL_HDR + c] = (unsigned char)(signed char)fminf(
				fmaxf(floorf(mn / s_scale), -128.0f), 127.0f);
			rec[KERN_SEL_HDR + k.d + c] = (unsigned char)(signed char)fminf(
				fmaxf(ceilf(mx / s_scale), -128.0f), 127.0f);
		}
		if (threadIdx.x == 0) {
			struct kern_sel_hdr hdr = { s_scale, up.fill, { 0, 0 } };

			*(struct kern_sel_hdr *)rec = hdr;
		}
		__syncthreads();
	}
}

extern "C" int kern_sel_sum(const struct kern_sel_keys *keys, const struct kern_sel_upd *upd,
			    uint32_t n, void *sums, void *stream)
{
	cudaStream_t st = (cudaStream_t)stream;
	uint32_t grid = n < 65535 ? n : 65535;

	if (!keys || !keys->pool || !keys->d || keys->d % 16 || !keys->page_cap ||
	    keys->page_cap > KERN_SKIP_ROWS || !keys->pstride || (n && (!upd || !sums)))
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	if (!n)
		return 0;
	switch (keys->dtype) {
	case ICE_DTYPE_F32:
		sum_kernel<float>
			<<<grid, SUM_THREADS, 0, st>>>(*keys, upd, n, (unsigned char *)sums);
		break;
	case ICE_DTYPE_F16:
		sum_kernel<__half>
			<<<grid, SUM_THREADS, 0, st>>>(*keys, upd, n, (unsigned char *)sums);
		break;
	case ICE_DTYPE_BF16:
		sum_kernel<__nv_bfloat16>
			<<<grid, SUM_THREADS, 0, st>>>(*keys, upd, n, (unsigned char *)sums);
		break;
	default:
		return -EINVAL;
	}
	return sel_err(cudaGetLastError());
}

/* ---------------------------------------------------------------- select */

struct sel_params {
	struct kern_sel_args a;
	uint32_t nchunk;
	float *scores;   /* [hkv][pstride] */
	uint32_t *count; /* [hkv] */
};

__device__ __forceinline__ uint32_t fkey(float f)
{
	uint32_t u = __float_as_uint(f);

	return u ^ ((u >> 31) ? 0xffffffffu : 0x80000000u);
}

/* Exact scores of the candidates' tokens: a warp per page, two lanes per token (half a row
 * each, loaded 16 bytes at a time, all in flight before the first use). */
template <typename T, int D, int G>
__device__ void sel_exact(const struct sel_params &pr, uint32_t h, uint32_t nc,
			  const uint32_t *cand, const float (*qf)[D], float *w, uint32_t *fills)
{
	constexpr int NV = (int)((D / 2) * sizeof(T) / 16);
	constexpr int EPV = (int)(16 / sizeof(T));
	const struct kern_sel_args &a = pr.a;
	const size_t rb = KERN_SEL_HDR + 2 * (size_t)D;
	uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	uint32_t t = lane >> 1, half = lane & 1;

	for (uint32_t i = warp; i < nc; i += SEL_WARPS) {
		uint32_t p = cand[i];
		const struct kern_sel_hdr *hd =
			(const struct kern_sel_hdr *)((const unsigned char *)a.sums +
						      ((size_t)h * a.keys.pstride + p) * rb);
		uint32_t fill = hd->fill;
		const uint4 *row = (const uint4 *)((const T *)sel_page(a.keys, h, p) +
						   (size_t)t * D + half * (D / 2));
		uint4 v[NV];
		float acc[G];

#pragma unroll
		for (int x = 0; x < NV; x++)
			v[x] = t < fill ? row[x] : make_uint4(0, 0, 0, 0);
#pragma unroll
		for (int j = 0; j < G; j++)
			acc[j] = 0.0f;
#pragma unroll
		for (int x = 0; x < NV; x++) {
			const T *e = (const T *)&v[x];

#pragma unroll
			for (int y = 0; y < EPV; y++) {
				float val = ld_f(e, y);

#pragma unroll
				for (int j = 0; j < G; j++)
					acc[j] = fmaf(qf[j][half * (D / 2) + x * EPV + y], val,
						      acc[j]);
			}
		}
#pragma unroll
		for (int j = 0; j < G; j++) {
			acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], 1);
			if (!half)
				w[(i * 16 + t) * G + j] = t < fill ? acc[j] * a.attn_scale :
								     -INFINITY;
		}
		if (lane == 0)
			fills[i] = fill;
	}
}

/*
 * The k-th largest of n keys (key(i), order-preserving uint32) by four 8-bit radix passes over
 * a shared histogram (lanes of a warp that fall in one bin add once: scores crowd into a few
 * top bins). Leaves in *ret_thr the k-th key and in *ret_eq how many keys equal to it belong to
 * the top k (those above it all do). Every thread of the block calls it; k <= n, k > 0.
 */
template <typename F>
__device__ void radix_kth(F key, uint32_t n, uint32_t k, uint32_t *hist, uint32_t *sh,
			  uint32_t *ret_thr, uint32_t *ret_eq)
{
	uint32_t tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	uint32_t need = k, prefix = 0, pmask = 0;

	for (int shift = 24; shift >= 0; shift -= 8) {
		for (uint32_t i = tid; i < 256; i += SEL_THREADS)
			hist[i] = 0;
		__syncthreads();
		for (uint32_t i0 = tid - lane; i0 < n; i0 += SEL_THREADS) {
			uint32_t i = i0 + lane, bin = 256;

			if (i < n) {
				uint32_t u = key(i);

				if ((u & pmask) == prefix)
					bin = (u >> shift) & 255u;
			}
			uint32_t same = __match_any_sync(0xffffffffu, bin);

			if (bin < 256 && lane == (uint32_t)(__ffs(same) - 1))
				atomicAdd(&hist[bin], (uint32_t)__popc(same));
		}
		__syncthreads();
		if (warp == 0) {
			uint32_t loc = 0, suf, excl;

			for (int b = 0; b < 8; b++)
				loc += hist[lane * 8 + b];
			suf = loc;
			for (int off = 1; off < 32; off <<= 1) {
				uint32_t v = __shfl_down_sync(0xffffffffu, suf, off);

				if (lane + off < 32)
					suf += v;
			}
			excl = suf - loc;
			if (excl < need && need <= suf) {
				uint32_t cum = excl;

				for (int b = 7; b >= 0; b--) {
					uint32_t hb = hist[lane * 8 + b];

					if (cum + hb >= need) {
						sh[0] = lane * 8 + b;
						sh[1] = need - cum;
						break;
					}
					cum += hb;
				}
			}
		}
		__syncthreads();
		prefix |= sh[0] << shift;
		pmask |= 255u << shift;
		need = sh[1];
		__syncthreads();
	}
	*ret_thr = prefix;
	*ret_eq = need;
}

template <typename T, int D, int G>
__global__ void __launch_bounds__(SEL_THREADS) sel_kernel(struct sel_params pr)
{
	const struct kern_sel_args &a = pr.a;
	constexpr int PER = D / 8;   /* channels per lane */
	constexpr int WPL = PER / 4; /* int8x4 words per lane */
	const size_t rb = KERN_SEL_HDR + 2 * (size_t)D;
	__shared__ float qf[G][D];
	__shared__ int qp[G][D / 4], qn[G][D / 4];
	__shared__ float qsc[G];
	__shared__ float w[KERN_SEL_MAX_CAND * 16 * G];
	__shared__ float mass[KERN_SEL_MAX_CAND * G];
	__shared__ float wt[KERN_SEL_MAX_CAND];
	__shared__ uint32_t fills[KERN_SEL_MAX_CAND], cand[KERN_SEL_MAX_CAND];
	__shared__ uint32_t out_p[KERN_SEL_MAX_KEEP];
	__shared__ float out_w[KERN_SEL_MAX_KEEP];
	__shared__ uint32_t out_f[KERN_SEL_MAX_KEEP], out_m[KERN_SEL_MAX_KEEP];
	__shared__ uint32_t hist[256];
	__shared__ float red[SEL_WARPS][G];
	__shared__ float mz[2][G];
	__shared__ uint32_t s_rad[2], s_ngt, s_neq;
	__shared__ float tu[KERN_SEL_MAX_CAND * 16];
	__shared__ uint32_t rmask[KERN_SEL_MAX_CAND];
	__shared__ int s_last;
	uint32_t h = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	uint32_t sub = lane & 7;
	const float *q = a.q + (size_t)h * G * D;

	/* The group's queries: fp32 for the exact pass, int8 (positive and negative parts) for
	 * the bound. */
	for (uint32_t i = tid; i < G * D; i += SEL_THREADS)
		qf[i / D][i % D] = q[i];
	if (warp < G) {
		float m = 0.0f;

		for (uint32_t c = lane; c < D; c += 32)
			m = fmaxf(m, fabsf(q[warp * D + c]));
		for (int off = 16; off; off >>= 1)
			m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
		if (!lane)
			qsc[warp] = m > 0.0f ? m / 127.0f : 1.0f;
	}
	__syncthreads();
	for (uint32_t i = tid; i < G * (D / 4); i += SEL_THREADS) {
		uint32_t j = i / (D / 4), c4 = i % (D / 4), pw = 0, nw = 0;

		for (int b = 0; b < 4; b++) {
			int v = __float2int_rn(qf[j][c4 * 4 + b] / qsc[j]);

			v = v > 127 ? 127 : v < -127 ? -127 : v;
			pw |= (uint32_t)(v > 0 ? v : 0) << (8 * b);
			nw |= (uint32_t)(unsigned char)(signed char)(v < 0 ? v : 0) << (8 * b);
		}
		qp[j][c4] = (int)pw;
		qn[j][c4] = (int)nw;
	}
	__syncthreads();

	{
		int rqp[G][WPL], rqn[G][WPL];
		uint32_t begin = blockIdx.x * SEL_CHUNK;
		uint32_t end = min(begin + SEL_CHUNK, a.npages);

#pragma unroll
		for (int j = 0; j < G; j++)
#pragma unroll
			for (int x = 0; x < WPL; x++) {
				rqp[j][x] = qp[j][sub * WPL + x];
				rqn[j][x] = qn[j][sub * WPL + x];
			}
		for (uint32_t base = begin + warp * 4; base < end; base += SEL_WARPS * 4) {
			uint32_t p = base + (lane >> 3);
			bool ok = p < end;
			int lo[WPL], hi[WPL], acc[G];
			struct kern_sel_hdr hd = { 0.0f, 0, { 0, 0 } };

			if (ok) {
				const unsigned char *rec = (const unsigned char *)a.sums +
							   ((size_t)h * a.keys.pstride + p) * rb;

				hd = *(const struct kern_sel_hdr *)rec;
#pragma unroll
				for (int x = 0; x < WPL; x++) {
					lo[x] = ((const int *)(rec + KERN_SEL_HDR))[sub * WPL + x];
					hi[x] = ((const int *)(rec + KERN_SEL_HDR +
							       D))[sub * WPL + x];
				}
			} else {
#pragma unroll
				for (int x = 0; x < WPL; x++)
					lo[x] = hi[x] = 0;
			}
#pragma unroll
			for (int j = 0; j < G; j++) {
				int s = 0;

#pragma unroll
				for (int x = 0; x < WPL; x++) {
					s = __dp4a(rqp[j][x], hi[x], s);
					s = __dp4a(rqn[j][x], lo[x], s);
				}
				s += __shfl_xor_sync(0xffffffffu, s, 1);
				s += __shfl_xor_sync(0xffffffffu, s, 2);
				s += __shfl_xor_sync(0xffffffffu, s, 4);
				acc[j] = s;
			}
			if (ok && sub == 0) {
				float best = -INFINITY;

#pragma unroll
				for (int j = 0; j < G; j++)
					best = fmaxf(best, (float)acc[j] * qsc[j]);
				pr.scores[(size_t)h * a.keys.pstride + p] =
					hd.fill ? best * hd.scale : -INFINITY;
			}
		}
	}

	/* The last block of this head to finish selects. */
	__threadfence();
	__syncthreads();
	if (tid == 0) {
		uint32_t done = atomicAdd(&pr.count[h], 1u);

		s_last = done == pr.nchunk - 1;
		if (s_last)
			pr.count[h] = 0;
	}
	__syncthreads();
	if (!s_last)
		return;
	__threadfence();

	const float *sc = pr.scores + (size_t)h * a.keys.pstride;
	uint32_t nc = min(a.cand, a.npages), thr = 0, neq = 0;

	if (nc)
		radix_kth([&](uint32_t i) { return fkey(__ldcg(sc + i)); }, a.npages, nc, hist,
			  s_rad, &thr, &neq);
	if (tid == 0)
		s_ngt = s_neq = 0;
	__syncthreads();
	for (uint32_t i = tid; nc && i < a.npages; i += SEL_THREADS) {
		uint32_t u = fkey(__ldcg(sc + i));

		if (u > thr)
			cand[atomicAdd(&s_ngt, 1u)] = i;
		else if (u == thr) {
			uint32_t e = atomicAdd(&s_neq, 1u);

			if (e < neq)
				cand[nc - neq + e] = i;
		}
	}
	__syncthreads();

	/* Exact scores of the candidates' tokens. */
	sel_exact<T, D, G>(pr, h, nc, cand, qf, w, fills);
	__syncthreads();
	{
		float m[G];

#pragma unroll
		for (int j = 0; j < G; j++)
			m[j] = -INFINITY;
		for (uint32_t e = tid; e < nc * 16; e += SEL_THREADS)
#pragma unroll
			for (int j = 0; j < G; j++)
				m[j] = fmaxf(m[j], w[e * G + j]);
#pragma unroll
		for (int j = 0; j < G; j++) {
			for (int off = 16; off; off >>= 1)
				m[j] = fmaxf(m[j], __shfl_xor_sync(0xffffffffu, m[j], off));
			if (!lane)
				red[warp][j] = m[j];
		}
	}
	__syncthreads();
	if (tid < G) {
		float m = -INFINITY;

		for (int x = 0; x < SEL_WARPS; x++)
			m = fmaxf(m, red[x][tid]);
		mz[0][tid] = m;
	}
	__syncthreads();
	if (tid < a.keep) {
		out_p[tid] = UINT32_MAX;
		out_w[tid] = -2.0f;
	}
	if (!a.rows) {
		/* whole pages: a page weighs its largest share of a query's candidate mass */
		for (uint32_t e = tid; e < nc * G; e += SEL_THREADS) {
			uint32_t i = e / G, j = e % G;
			float s = 0.0f;

			for (uint32_t t = 0; t < fills[i]; t++)
				s += __expf(w[(i * 16 + t) * G + j] - mz[0][j]);
			mass[e] = s;
		}
		__syncthreads();
		if (tid < G) {
			float z = 0.0f;

			for (uint32_t i = 0; i < nc; i++)
				z += mass[i * G + tid];
			mz[1][tid] = z;
		}
		__syncthreads();
		if (tid < nc) {
			float best = -1.0f;

			for (int j = 0; fills[tid] && j < G; j++)
				if (mz[1][j] > 0.0f)
					best = fmaxf(best, mass[tid * G + j] / mz[1][j]);
			wt[tid] = best;
			rmask[tid] = (1u << fills[tid]) - 1;
		}
	} else {
		/* the best `rows` tokens by max_j (w_jt - m_j); a page weighs its picked tokens'
		 * sum of exp of that */
		uint32_t ntok = nc * 16, R = min(a.rows, ntok), thr2 = 0, neq2 = 0;

		for (uint32_t e = tid; e < ntok; e += SEL_THREADS) {
			float u = -INFINITY;

			if (e % 16 < fills[e / 16])
#pragma unroll
				for (int j = 0; j < G; j++)
					u = fmaxf(u, w[e * G + j] - mz[0][j]);
			tu[e] = u;
		}
		if (tid < nc)
			rmask[tid] = 0;
		__syncthreads();
		if (R)
			radix_kth([&](uint32_t i) { return fkey(tu[i]); }, ntok, R, hist, s_rad,
				  &thr2, &neq2);
		if (tid == 0)
			s_neq = 0;
		__syncthreads();
		for (uint32_t e = tid; R && e < ntok; e += SEL_THREADS) {
			float u = tu[e];
			uint32_t k = fkey(u);
			bool pick = u > -INFINITY && k >= thr2;

			if (pick && k == thr2)
				pick = atomicAdd(&s_neq, 1u) < neq2;
			if (pick)
				atomicOr(&rmask[e / 16], 1u << (e % 16));
		}
		__syncthreads();
		if (tid < nc) {
			float s = 0.0f;

			for (uint32_t t = 0; t < 16; t++)
				if (rmask[tid] >> t & 1)
					s += __expf(tu[tid * 16 + t]);
			wt[tid] = rmask[tid] ? s : -1.0f;
		}
	}
	__syncthreads();
	if (tid < nc) {
		uint32_t r = 0, p = cand[tid];

		for (uint32_t i = 0; i < nc; i++)
			r += wt[i] > wt[tid] || (wt[i] == wt[tid] && cand[i] < p);
		if (r < a.keep) {
			out_p[r] = p;
			out_w[r] = wt[tid];
			out_f[r] = fills[tid];
			out_m[r] = rmask[tid];
		}
	}
	__syncthreads();
	if (tid < a.keep) {
		size_t o = (size_t)h * a.keep + tid;
		bool ok = out_w[tid] >= 0.0f;
		uint32_t p = ok ? out_p[tid] : 0, f = ok ? out_f[tid] : 0;
		uint16_t mask = ok ? (uint16_t)out_m[tid] : 0;
		a.ids[o] = ok ? p : UINT32_MAX;
		a.masks[o] = mask;
		if (a.table) {
			size_t e = (size_t)h * a.tstride + a.toff + tid;

			a.table[e] =
				kern_page{ a.tslot + (uint32_t)e, (uint16_t)f, (uint16_t)~mask };
		}
		if (a.copies) {
			a.copies[o].src =
				a.src_base + ((uint64_t)h * a.keys.pstride + p) * a.src_bytes;
			a.copies[o].dst =
				a.dst_base + ((uint64_t)h * a.tstride + a.toff + tid) * a.dst_bytes;
		}
	}
}

static uint32_t sel_chunks(const struct kern_sel_args *a)
{
	uint32_t n = (a->npages + SEL_CHUNK - 1) / SEL_CHUNK;

	return n ? n : 1;
}

extern "C" size_t kern_sel_ws_size(const struct kern_sel_args *a)
{
	if (kern_sel_check(a))
		return 0;
	return (size_t)a->hkv * a->keys.pstride * sizeof(float) + 256 +
	       (size_t)a->hkv * sizeof(uint32_t);
}

template <typename T, int D>
static void sel_launch_g(const struct sel_params &pr, uint32_t g, dim3 grid, cudaStream_t st)
{
	switch (g) {
	case 1:
		sel_kernel<T, D, 1><<<grid, SEL_THREADS, 0, st>>>(pr);
		break;
	case 2:
		sel_kernel<T, D, 2><<<grid, SEL_THREADS, 0, st>>>(pr);
		break;
	case 4:
		sel_kernel<T, D, 4><<<grid, SEL_THREADS, 0, st>>>(pr);
		break;
	default:
		sel_kernel<T, D, 8><<<grid, SEL_THREADS, 0, st>>>(pr);
		break;
	}
}

template <typename T>
static void sel_launch_t(const struct sel_params &pr, uint32_t g, dim3 grid, cudaStream_t st)
{
	if (pr.a.keys.d == 64)
		sel_launch_g<T, 64>(pr, g, grid, st);
	else
		sel_launch_g<T, 128>(pr, g, grid, st);
}

extern "C" int kern_sel(const struct kern_sel_args *a, void *ws, void *stream)
{
	struct sel_params pr;
	cudaStream_t st = (cudaStream_t)stream;
	size_t off;
	dim3 grid;

	if (kern_sel_check(a) || (a->keys.d != 64 && a->keys.d != 128) || !ws ||
	    a->keys.slot_bytes % 16 || (uintptr_t)a->keys.pool % 16 || a->keys.page_cap > 16 ||
	    a->hkv > 65535)
		return -EINVAL;
	if (kern_gpu_count() < 0)
		return -ENODEV;
	memset(&pr, 0, sizeof(pr));
	pr.a = *a;
	pr.nchunk = sel_chunks(a);
	pr.scores = (float *)ws;
	off = ((size_t)a->hkv * a->keys.pstride * sizeof(float) + 255) / 256 * 256;
	pr.count = (uint32_t *)((char *)ws + off);
	grid = dim3(pr.nchunk, a->hkv);
	switch (a->keys.dtype) {
	case ICE_DTYPE_F32:
		sel_launch_t<float>(pr, a->hq / a->hkv, grid, st);
		break;
	case ICE_DTYPE_F16:
		sel_launch_t<__half>(pr, a->hq / a->hkv, grid, st);
		break;
	default:
		sel_launch_t<__nv_bfloat16>(pr, a->hq / a->hkv, grid, st);
		break;
	}
	return sel_err(cudaGetLastError());
}
