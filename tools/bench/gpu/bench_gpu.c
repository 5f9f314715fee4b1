/*
 * icebench gpu: the GPU half of one decode step for a model shape, against baselines measured
 * in the same run.
 *
 *   ceiling   one large pinned cudaMemcpy host->device (the PCIe roof)
 *   percopy   one cudaMemcpyAsync per scattered page (what not to do)
 *   gather    kern_gather from mapped pinned host memory, scattered pages, one launch per layer
 *             (and one launch for all layers of a token)
 *   attn      kern_attn over the budget's pages (sink + selected + window) per layer
 *   full      kern_attn over every page of the context (our own full-KV decode)
 *   sdpa      PyTorch scaled_dot_product_attention over the full KV (tools/bench/gpu/sdpa.py,
 *             run as a child process with --sdpa PYTHON)
 *
 * Pages of the context live in one pinned host pool (--pool-mib); page (layer, head, id) sits
 * at a hashed position in it, so selected pages are scattered as they would be in the DRAM tier.
 * All timings are CUDA events around GPU work, medians over --iters tokens.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>
#include <unistd.h>

#include "bench.h"
#include "clock.h"
#include "dtype.h"
#include "hbm.h"
#include "idx.h"
#include "kern.h"
#include "synth.h"

struct gpu_opts {
	uint32_t layers, hq, hkv, d, P, budget, iters;
	uint32_t nctx;
	uint32_t ctx[8];
	size_t pool_mib;
	const char *sdpa_python;
	int json;
	int no_select;
};

struct ctx_result {
	uint32_t ctx;
	double gather_layer_gbs, gather_desc_gbs, gather_token_gbs, percopy_gbs;
	double move_token_us, attn_layer_us, full_layer_us, sdpa_layer_us;
	double select_search_us, select_token_us, select_build_s, move_attend_token_us;
	double tier_fresh_us, tier_fresh_pages, tier_repeat_us, tier_repeat_pages;
	uint32_t select_threads;
	char sdpa_variant[64];
};

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/*
 * The page the i-th entry of layer l's table reads at token tok: sink first, window last,
 * retrieved pages drawn from the middle of the context; and the host pool slot that page lives
 * in (hashed, so the gather sees scattered addresses). Shared by the gather and the HBM-tier
 * runs so both move the same pages.
 */
static uint32_t bench_page(uint64_t tok, uint32_t l, uint32_t i, uint32_t ppt, uint32_t ctx_pages)
{
	uint32_t k = i % ppt;

	if (k == 0)
		return 0;
	if (k == ppt - 1)
		return ctx_pages - 1;
	return 1 + (uint32_t)(mix64(tok + (uint64_t)l * 7919 + i) % (ctx_pages - 2));
}

static uint64_t bench_slot(uint32_t l, uint32_t h, uint32_t page, uint64_t pool_pages)
{
	return mix64(((uint64_t)l << 48) ^ ((uint64_t)h << 32) ^ page) % pool_pages;
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, uint32_t n)
{
	qsort(v, n, sizeof(*v), cmp_dbl);
	return n ? v[n / 2] : NAN;
}

static int parse_ctx(struct gpu_opts *o, const char *s)
{
	char *end;

	o->nctx = 0;
	while (*s && o->nctx < 8) {
		unsigned long v = strtoul(s, &end, 10);

		if (end == s || !v)
			return -EINVAL;
		if (*end == 'k' || *end == 'K') {
			v *= 1024;
			end++;
		}
		o->ctx[o->nctx++] = (uint32_t)v;
		s = *end == ',' ? end + 1 : end;
		if (*end && *end != ',')
			return -EINVAL;
	}
	return o->nctx ? 0 : -EINVAL;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: icebench gpu [--ctx 32k,128k,256k] [--layers 32] [--hq 32] [--hkv 8] [--d 128]\n"
		"                    [--page 16] [--budget 256] [--iters 30] [--pool-mib 2048]\n"
		"                    [--sdpa PYTHON] [--select on|off] [--json]\n"
		"Times one decode step's GPU work (bf16): scattered page gather from pinned host memory\n"
		"vs the pinned-copy ceiling, sparse attention vs full-KV attention (ours, and PyTorch SDPA\n"
		"through PYTHON running tools/bench/gpu/sdpa.py), and the CPU select (index/idx.h) for\n"
		"the per-token select + move + attend split. Needs a CUDA device.\n");
}

/* Fills n bytes with bf16 values in [-1, 1) (so data is never zeros or NaN). */
static void fill_bf16(uint16_t *p, size_t n_elems, uint64_t seed)
{
	size_t i;

	for (i = 0; i < n_elems; i++) {
		uint64_t r = mix64(seed + i);
		float f = (float)((r >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;

		p[i] = dtype_f32_to_bf16(f);
	}
}

#define CK(expr)                                                                         \
	do {                                                                             \
		int r_ = (expr);                                                         \
		if (r_ < 0) {                                                            \
			fprintf(stderr, "icebench gpu: %s: %s\n", #expr, strerror(-r_)); \
			rc = r_;                                                         \
			goto out;                                                        \
		}                                                                        \
	} while (0)

/*
 * Select, on the CPU with the index library (index/idx.h): one DCI-tree over ctx synthetic
 * LLM-like keys (index/synth.h) stands for each (layer, KV head); a token needs layers x hkv
 * group searches (g queries, the budget's retrieved pages). Measured: one search (median, one
 * thread), and a token's searches spread over the machine's cores (wall time, median).
 */
struct sel_job {
	const struct idx *ix;
	const float *q;
	uint32_t g, k, nq, from, count, d;
	void *ws;
	size_t ws_size;
	int rc;
};

static void *sel_worker(void *arg)
{
	struct sel_job *j = arg;
	struct idx_hit hits[256];
	uint32_t i;

	for (i = 0; i < j->count; i++) {
		const float *q = j->q + (size_t)((j->from + i) % j->nq) * j->g * j->d;
		int r = idx_search(j->ix, q, j->g, j->k, NULL, j->ws, j->ws_size, hits);

		if (r < 0)
			j->rc = r;
	}
	return NULL;
}

static int measure_select(const struct gpu_opts *o, uint32_t ctx, struct ctx_result *r)
{
	enum { NQ = 64, MAXT = 32 };
	uint32_t g = o->hq / o->hkv, k = o->budget / o->P - 2, nsearch = o->layers * o->hkv;
	struct sel_job jobs[MAXT];
	pthread_t th[MAXT];
	struct synth_params sp;
	struct idx_params ip;
	struct idx *ix = NULL;
	struct idx_rows rows = { 0 };
	float *keys = NULL, *q = NULL;
	double t[NQ];
	size_t ws_size;
	uint64_t t0;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	uint32_t nt = ncpu < 1 ? 1 : ncpu > MAXT ? MAXT : (uint32_t)ncpu, i, it;
	int rc;

	if (g > IDX_MAX_GROUP || k > 256 || !k)
		return -EINVAL;
	memset(jobs, 0, sizeof(jobs));
	keys = malloc((size_t)ctx * o->d * sizeof(float));
	q = malloc((size_t)NQ * g * o->d * sizeof(float));
	rc = keys && q ? 0 : -ENOMEM;
	if (!rc) {
		synth_params_default(&sp, o->d);
		rc = synth_keys(&sp, ctx, keys);
	}
	if (!rc)
		rc = synth_queries(&sp, keys, ctx, NQ, g, q, NULL);
	if (!rc) {
		idx_params_default(&ip, o->d);
		ip.threads = 0;
		rc = idx_new(&ip, &ix);
	}
	if (!rc) {
		t0 = clock_now_ns();
		rc = idx_build(ix, keys, ctx, ICE_DTYPE_F32);
		r->select_build_s = (double)(clock_now_ns() - t0) * 1e-9;
		rows = (struct idx_rows){ keys, ICE_DTYPE_F32, ctx };
		idx_set_keys(ix, &(struct idx_keys){ idx_rows_read, &rows, 0 });
	}
	ws_size = ix ? idx_search_ws_size(ix, g, k) : 0;
	for (i = 0; !rc && i < nt; i++) {
		jobs[i].ws = malloc(ws_size);
		if (!jobs[i].ws)
			rc = -ENOMEM;
	}
	if (rc)
		goto out;
	for (i = 0; i < NQ; i++) {
		struct sel_job one = { ix, q, g, k, NQ, i, 1, o->d, jobs[0].ws, ws_size, 0 };

		t0 = clock_now_ns();
		sel_worker(&one);
		t[i] = (double)(clock_now_ns() - t0) * 1e-3;
		if (one.rc) {
			rc = one.rc;
			goto out;
		}
	}
	r->select_search_us = median(t, NQ);
	for (it = 0; it < 7; it++) {
		t0 = clock_now_ns();
		for (i = 0; i < nt; i++) {
			jobs[i] = (struct sel_job){ ix,
						    q,
						    g,
						    k,
						    NQ,
						    i * (nsearch / nt),
						    nsearch / nt + (i < nsearch % nt),
						    o->d,
						    jobs[i].ws,
						    ws_size,
						    0 };
			if (pthread_create(&th[i], NULL, sel_worker, &jobs[i]))
				jobs[i].rc = -EAGAIN;
		}
		for (i = 0; i < nt; i++)
			if (jobs[i].rc != -EAGAIN)
				pthread_join(th[i], NULL);
		t[it] = (double)(clock_now_ns() - t0) * 1e-3;
		for (i = 0; i < nt; i++)
			if (jobs[i].rc)
				rc = jobs[i].rc;
	}
	r->select_token_us = median(t, 7);
	r->select_threads = nt;
out:
	for (i = 0; i < nt; i++)
		free(jobs[i].ws);
	idx_free(ix);
	free(q);
	free(keys);
	return rc;
}

/* Runs PYTHON tools/bench/gpu/sdpa.py for each context and reads "sdpa <ctx> <us> <variant>". */
/* Grows the attention workspace (zeroed, as kern_attn wants it) to what a needs. */
static int attn_ws_grow(const struct kern_attn_args *a, void **dws, size_t *ws_bytes)
{
	size_t need = kern_attn_ws_size(a);
	int err;

	if (need <= *ws_bytes)
		return 0;
	kern_dev_free(*dws);
	*dws = NULL;
	*ws_bytes = 0;
	err = kern_dev_alloc(need, dws);
	if (!err)
		err = kern_memset(*dws, 0, need);
	if (!err)
		*ws_bytes = need;
	return err;
}

static void run_sdpa(const struct gpu_opts *o, struct ctx_result *res)
{
	char cmd[1024], line[256], ctxs[128] = "";
	const char *root = getenv("ICE_SOURCE_ROOT");
	size_t len = 0;
	uint32_t i;
	FILE *p;

	for (i = 0; i < o->nctx; i++)
		len += (size_t)snprintf(ctxs + len, sizeof(ctxs) - len, "%s%u", i ? "," : "",
					o->ctx[i]);
	snprintf(cmd, sizeof(cmd), "%s %s/tools/bench/gpu/sdpa.py --ctx %s --hq %u --hkv %u --d %u",
		 o->sdpa_python, root ? root : ".", ctxs, o->hq, o->hkv, o->d);
	p = popen(cmd, "r");
	if (!p) {
		fprintf(stderr, "icebench gpu: cannot run %s\n", cmd);
		return;
	}
	while (fgets(line, sizeof(line), p)) {
		unsigned c;
		double us;
		char var[64];

		if (sscanf(line, "sdpa %u %lf %63s", &c, &us, var) != 3) {
			fputs(line, stderr);
			continue;
		}
		for (i = 0; i < o->nctx; i++)
			if (res[i].ctx == c) {
				res[i].sdpa_layer_us = us;
				snprintf(res[i].sdpa_variant, sizeof(res[i].sdpa_variant), "%s",
					 var);
			}
	}
	if (pclose(p) != 0)
		fprintf(stderr, "icebench gpu: %s failed\n", cmd);
}

static int bench_gpu_main(int argc, char **argv)
{
	struct gpu_opts o = { 32, 32, 8, 128, 16, 256, 30, 0, { 0 }, 2048, NULL, 0 };
	struct ctx_result res[8];
	const size_t es = 2;
	size_t slot_bytes, pool_pages, ws_bytes = 0, full_bytes = 0;
	uint32_t ppt, npl, i, l, c, it;
	double ceiling_gbs = 0.0, *samples = NULL;
	void *stream = NULL, *ev0 = NULL, *ev1 = NULL;
	void *hpool = NULL, *hcopies = NULL, *big_h = NULL, *big_d = NULL;
	void *dslots = NULL, *dq = NULL, *dout = NULL, *dws = NULL, *dtab = NULL, *dfull = NULL;
	void *dcopies = NULL, *dfulltab = NULL;
	uint64_t hpool_dev, hcopies_dev;
	struct kern_copy *copies = NULL;
	struct kern_page *tab = NULL, *fulltab = NULL, *ws_pages = NULL;
	struct hbm_req *reqs = NULL;
	struct hbm *hbm = NULL;
	uint32_t *head_off = NULL, *full_off = NULL;
	int rc = 0;

	for (i = 1; i < (uint32_t)argc; i++) {
		const char *a = argv[i], *v = i + 1 < (uint32_t)argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "--json")) {
			o.json = 1;
			continue;
		}
		if (!v) {
			usage(stderr);
			return 2;
		}
		i++;
		if (!strcmp(a, "--ctx")) {
			if (parse_ctx(&o, v)) {
				fprintf(stderr, "icebench gpu: bad --ctx '%s'\n", v);
				return 2;
			}
		} else if (!strcmp(a, "--layers"))
			o.layers = (uint32_t)atoi(v);
		else if (!strcmp(a, "--hq"))
			o.hq = (uint32_t)atoi(v);
		else if (!strcmp(a, "--hkv"))
			o.hkv = (uint32_t)atoi(v);
		else if (!strcmp(a, "--d"))
			o.d = (uint32_t)atoi(v);
		else if (!strcmp(a, "--page"))
			o.P = (uint32_t)atoi(v);
		else if (!strcmp(a, "--budget"))
			o.budget = (uint32_t)atoi(v);
		else if (!strcmp(a, "--iters"))
			o.iters = (uint32_t)atoi(v);
		else if (!strcmp(a, "--pool-mib"))
			o.pool_mib = (size_t)atoll(v);
		else if (!strcmp(a, "--sdpa"))
			o.sdpa_python = v;
		else if (!strcmp(a, "--select"))
			o.no_select = !strcmp(v, "off");
		else {
			usage(stderr);
			return 2;
		}
	}
	if (!o.nctx)
		parse_ctx(&o, "32k,128k,256k");
	if (!o.layers || !o.hkv || !o.hq || o.hq % o.hkv || (o.d != 64 && o.d != 128) || !o.P ||
	    o.budget < 2 * o.P || o.budget % o.P || !o.iters || o.iters > 10000 || !o.pool_mib) {
		fprintf(stderr, "icebench gpu: bad shape (d 64|128, budget a multiple of the page "
				"size and >= 2 pages)\n");
		return 2;
	}
	for (c = 0; c < o.nctx; c++)
		if (o.ctx[c] < o.budget * 2) {
			fprintf(stderr, "icebench gpu: context %u smaller than twice the budget\n",
				o.ctx[c]);
			return 2;
		}
	if (kern_gpu_count() < 0) {
		fprintf(stderr, "icebench gpu: no CUDA device (or built without CUDA)\n");
		return 1;
	}

	memset(res, 0, sizeof(res));
	slot_bytes = 2 * (size_t)o.P * o.d * es;
	ppt = o.budget / o.P; /* pages per KV head per layer */
	npl = o.hkv * ppt;    /* pages per layer */
	pool_pages = o.pool_mib * 1024 * 1024 / slot_bytes;
	samples = calloc(3 * (size_t)o.iters + 16, sizeof(double));
	copies = calloc((size_t)o.layers * npl, sizeof(*copies));
	tab = calloc((size_t)o.layers * npl, sizeof(*tab));
	head_off = calloc((size_t)o.layers * (o.hkv + 1), sizeof(*head_off));
	reqs = calloc(npl, sizeof(*reqs));
	ws_pages = calloc(npl, sizeof(*ws_pages));
	if (!samples || !copies || !tab || !head_off || !reqs || !ws_pages) {
		rc = -ENOMEM;
		goto out;
	}

	CK(kern_stream_new(&stream));
	{
		/* Room for every layer's working set twice over: the rest is the page cache. */
		struct hbm_config hc = { 0, 2 * o.layers * npl, slot_bytes, npl };

		CK(hbm_open(&hc, &hbm));
	}
	CK(kern_event_new(&ev0));
	CK(kern_event_new(&ev1));

	/* Ceiling: one large pinned copy, as large as PCIe wants (>= 16 MiB). */
	{
		const size_t big = 256u << 20;
		uint64_t dummy;

		CK(kern_host_alloc(big, &big_h, &dummy));
		CK(kern_dev_alloc(big, &big_d));
		memset(big_h, 0x3c, big);
		for (it = 0; it < 12; it++) {
			float ms;

			CK(kern_event_record(ev0, stream));
			CK(kern_memcpy_async(big_d, big_h, big, stream));
			CK(kern_event_record(ev1, stream));
			CK(kern_event_ms(ev0, ev1, &ms));
			samples[it] = (double)big / (ms * 1e-3) / 1e9;
		}
		ceiling_gbs = median(samples + 2, 10);
		kern_dev_free(big_d);
		big_d = NULL;
		kern_host_free(big_h);
		big_h = NULL;
	}

	/* The pinned host pool the pages come from, and device buffers for one token. */
	CK(kern_host_alloc(pool_pages * slot_bytes, &hpool, &hpool_dev));
	{
		/* Random bf16 in the first 64 MiB, repeated: real values, and seconds not minutes. */
		size_t total = pool_pages * slot_bytes,
		       chunk = total < (64u << 20) ? total : (64u << 20);

		fill_bf16(hpool, chunk / es, 1);
		for (size_t off = chunk; off < total; off += chunk)
			memcpy((char *)hpool + off, hpool,
			       total - off < chunk ? total - off : chunk);
	}
	CK(kern_host_alloc((size_t)o.layers * npl * sizeof(*copies), &hcopies, &hcopies_dev));
	CK(kern_dev_alloc((size_t)o.layers * npl * sizeof(*copies), &dcopies));
	CK(kern_dev_alloc((size_t)o.layers * npl * slot_bytes, &dslots));
	CK(kern_dev_alloc((size_t)o.hq * o.d * es, &dq));
	CK(kern_dev_alloc((size_t)o.hq * o.d * es, &dout));
	CK(kern_dev_alloc((size_t)o.layers * (npl * sizeof(*tab) + (o.hkv + 1) * sizeof(*head_off)),
			  &dtab));
	{
		uint16_t *q = malloc((size_t)o.hq * o.d * es);

		if (!q) {
			rc = -ENOMEM;
			goto out;
		}
		fill_bf16(q, (size_t)o.hq * o.d, 77);
		rc = kern_memcpy(dq, q, (size_t)o.hq * o.d * es);
		free(q);
		CK(rc);
	}

	/* Pass 0 repeats the first context as a warm-up (clocks ramp, modules load) and is
	 * overwritten by pass 1. */
	for (uint32_t pass = 0; pass <= o.nctx; pass++) {
		struct ctx_result *r;
		uint32_t ctx_pages;
		struct kern_attn_args a;
		void *tab_dev_base = dtab;

		c = pass ? pass - 1 : 0;
		r = &res[c];
		ctx_pages = o.ctx[c] / o.P; /* pages per KV head */

		r->ctx = o.ctx[c];

		/*
		 * Move, per token: a fresh selection for every layer, then
		 *   inline  one kern_gather_inline per layer (list in the launch: the engine's path)
		 *   desc    the token's lists uploaded once, then one kern_gather per layer
		 *   token   one kern_gather for every page of every layer (prefetch-style)
		 */
		for (it = 0; it < o.iters + 3; it++) {
			uint64_t tok = mix64(((uint64_t)c << 40) + it);
			struct kern_copy *hc = hcopies;
			float ms[3];

			for (l = 0; l < o.layers; l++) {
				for (i = 0; i < npl; i++) {
					uint32_t h = i / ppt;
					uint64_t where = bench_slot(
						l, h, bench_page(tok, l, i, ppt, ctx_pages),
						pool_pages);

					hc[(size_t)l * npl + i].src =
						hpool_dev + where * slot_bytes;
					hc[(size_t)l * npl + i].dst =
						(uint64_t)(uintptr_t)dslots +
						((size_t)l * npl + i) * slot_bytes;
				}
			}
			CK(kern_event_record(ev0, stream));
			for (l = 0; l < o.layers; l++)
				CK(kern_gather_inline(hc + (size_t)l * npl, npl, slot_bytes,
						      stream));
			CK(kern_event_record(ev1, stream));
			CK(kern_event_ms(ev0, ev1, &ms[0]));

			CK(kern_event_record(ev0, stream));
			CK(kern_memcpy_async(dcopies, hcopies,
					     (size_t)o.layers * npl * sizeof(*copies), stream));
			for (l = 0; l < o.layers; l++)
				CK(kern_gather((const struct kern_copy *)dcopies + (size_t)l * npl,
					       npl, slot_bytes, stream));
			CK(kern_event_record(ev1, stream));
			CK(kern_event_ms(ev0, ev1, &ms[1]));

			CK(kern_event_record(ev0, stream));
			CK(kern_gather((const struct kern_copy *)dcopies, o.layers * npl,
				       slot_bytes, stream));
			CK(kern_event_record(ev1, stream));
			CK(kern_event_ms(ev0, ev1, &ms[2]));
			if (it >= 3) {
				samples[it - 3] = ms[0] * 1e3;
				samples[o.iters + it - 3] = ms[1] * 1e3;
				samples[2 * o.iters + it - 3] = ms[2] * 1e3;
			}
		}
		{
			double bytes = (double)o.layers * npl * slot_bytes;

			r->move_token_us = median(samples, o.iters);
			r->gather_layer_gbs = bytes / (r->move_token_us * 1e-6) / 1e9;
			r->gather_desc_gbs =
				bytes / (median(samples + o.iters, o.iters) * 1e-6) / 1e9;
			r->gather_token_gbs =
				bytes / (median(samples + 2 * o.iters, o.iters) * 1e-6) / 1e9;
		}

		/* Baseline: one cudaMemcpyAsync per page, one layer's pages. */
		for (it = 0; it < 8; it++) {
			const struct kern_copy *hc = hcopies;
			float ms;

			CK(kern_event_record(ev0, stream));
			for (i = 0; i < npl; i++)
				CK(kern_memcpy_async((void *)(uintptr_t)hc[i].dst,
						     (char *)hpool + (hc[i].src - hpool_dev),
						     slot_bytes, stream));
			CK(kern_event_record(ev1, stream));
			CK(kern_event_ms(ev0, ev1, &ms));
			samples[it] = (double)npl * slot_bytes / (ms * 1e-3) / 1e9;
		}
		r->percopy_gbs = median(samples + 2, 6);

		/* Sparse attention over the gathered working set, each layer its own table. */
		for (l = 0; l < o.layers; l++) {
			for (i = 0; i < npl; i++) {
				tab[(size_t)l * npl + i].slot = l * npl + i;
				/* the window page is partly filled, as in decode */
				tab[(size_t)l * npl + i].fill = i % ppt == ppt - 1 ? o.P / 2 + 1 :
										     o.P;
			}
			for (i = 0; i <= o.hkv; i++)
				head_off[(size_t)l * (o.hkv + 1) + i] = i * ppt;
		}
		CK(kern_memcpy(dtab, tab, (size_t)o.layers * npl * sizeof(*tab)));
		CK(kern_memcpy((char *)dtab + (size_t)o.layers * npl * sizeof(*tab), head_off,
			       (size_t)o.layers * (o.hkv + 1) * sizeof(*head_off)));
		/* Real bf16 data in every slot (the gather above copied pool pages in). */
		memset(&a, 0, sizeof(a));
		a.dtype = ICE_DTYPE_BF16;
		a.hq = o.hq;
		a.hkv = o.hkv;
		a.d = o.d;
		a.page_cap = o.P;
		a.scale = 1.0f / sqrtf((float)o.d);
		a.q = dq;
		a.out = dout;
		a.pool = dslots;
		a.slot_bytes = slot_bytes;
		a.nslots = o.layers * npl;
		a.max_pages = ppt;
		a.pages = tab_dev_base;
		a.head_off =
			(const uint32_t *)((char *)dtab + (size_t)o.layers * npl * sizeof(*tab));
		CK(attn_ws_grow(&a, &dws, &ws_bytes));
		for (it = 0; it < o.iters + 3; it++) {
			float ms;

			CK(kern_event_record(ev0, stream));
			for (l = 0; l < o.layers; l++) {
				a.pages = (const struct kern_page *)tab_dev_base + (size_t)l * npl;
				a.head_off =
					(const uint32_t *)((char *)dtab +
							   (size_t)o.layers * npl * sizeof(*tab)) +
					(size_t)l * (o.hkv + 1);
				CK(kern_attn(&a, dws, stream));
			}
			CK(kern_event_record(ev1, stream));
			CK(kern_event_ms(ev0, ev1, &ms));
			if (it >= 3)
				samples[it - 3] = ms * 1e3 / o.layers;
		}
		r->attn_layer_us = median(samples, o.iters);

		/* The decode order: per layer, move its pages then attend to them. */
		for (it = 0; it < o.iters + 3; it++) {
			const struct kern_copy *hc = hcopies;
			float ms;

			CK(kern_event_record(ev0, stream));
			for (l = 0; l < o.layers; l++) {
				CK(kern_gather_inline(hc + (size_t)l * npl, npl, slot_bytes,
						      stream));
				a.pages = (const struct kern_page *)tab_dev_base + (size_t)l * npl;
				a.head_off =
					(const uint32_t *)((char *)dtab +
							   (size_t)o.layers * npl * sizeof(*tab)) +
					(size_t)l * (o.hkv + 1);
				CK(kern_attn(&a, dws, stream));
			}
			CK(kern_event_record(ev1, stream));
			CK(kern_event_ms(ev0, ev1, &ms));
			if (it >= 3)
				samples[it - 3] = ms * 1e3;
		}
		r->move_attend_token_us = median(samples, o.iters);

		/*
		 * The same move through the HBM page cache (tiers/hbm): per layer hbm_load (lookup,
		 * one inline gather for the misses) and hbm_release; host clock to the stream's end.
		 * "fresh": a new selection every token (sink hits, window page at a new version);
		 * "repeat": the previous token's selection again (only the window page moves).
		 */
		for (int mode = 0; mode < 2; mode++) {
			uint64_t moved0 = 0, moved1 = 0;

			for (it = 0; it < o.iters + 3; it++) {
				uint64_t tok = mix64(((uint64_t)c << 40) + (mode ? 7 : it) + 1000);
				uint64_t t0 = clock_now_ns();

				for (l = 0; l < o.layers; l++) {
					for (i = 0; i < npl; i++) {
						uint32_t h = i / ppt, k = i % ppt;
						uint32_t page =
							bench_page(tok, l, i, ppt, ctx_pages);
						uint64_t where = bench_slot(l, h, page, pool_pages);

						reqs[i].key.seq = 1 + c;
						reqs[i].key.layer = l;
						reqs[i].key.head = h;
						reqs[i].key.page = page;
						reqs[i].version = k == ppt - 1 ? 1 + it : 1;
						reqs[i].src = hpool_dev + where * slot_bytes;
						reqs[i].fill = k == ppt - 1 ? o.P / 2 + 1 : o.P;
						reqs[i].len = (uint32_t)slot_bytes;
					}
					rc = hbm_load(hbm, reqs, npl, ws_pages, stream);
					CK(rc);
					if (it >= 3)
						moved1 += (uint64_t)rc;
					moved0 += (uint64_t)rc;
					hbm_release(hbm, ws_pages, npl);
				}
				CK(hbm_sync(hbm, stream));
				if (it >= 3)
					samples[it - 3] = (double)(clock_now_ns() - t0) * 1e-3;
			}
			(void)moved0;
			if (mode == 0) {
				r->tier_fresh_us = median(samples, o.iters);
				r->tier_fresh_pages = (double)moved1 / o.iters;
			} else {
				r->tier_repeat_us = median(samples, o.iters);
				r->tier_repeat_pages = (double)moved1 / o.iters;
			}
		}

		/* Our own full-KV decode over every page of one layer's context (in HBM). */
		{
			size_t need = (size_t)o.hkv * ctx_pages * slot_bytes;
			size_t tab_n = (size_t)o.hkv * ctx_pages;
			uint32_t *foff;

			if (need > full_bytes) {
				kern_dev_free(dfull);
				dfull = NULL;
				CK(kern_dev_alloc(need, &dfull));
				full_bytes = need;
				/* Copy pool pages in so the data is real bf16, not zeros. */
				for (size_t off = 0; off < need; off += 64u << 20) {
					size_t n = need - off < (64u << 20) ? need - off :
									      (64u << 20);

					CK(kern_memcpy((char *)dfull + off, hpool, n));
				}
			}
			free(fulltab);
			free(full_off);
			fulltab = calloc(tab_n, sizeof(*fulltab));
			full_off = calloc(o.hkv + 1, sizeof(*full_off));
			if (!fulltab || !full_off) {
				rc = -ENOMEM;
				goto out;
			}
			for (size_t k = 0; k < tab_n; k++) {
				fulltab[k].slot = (uint32_t)k;
				fulltab[k].fill = o.P;
			}
			for (i = 0; i <= o.hkv; i++)
				full_off[i] = i * ctx_pages;
			kern_dev_free(dfulltab);
			dfulltab = NULL;
			CK(kern_dev_alloc(tab_n * sizeof(*fulltab) + (o.hkv + 1) * sizeof(*foff),
					  &dfulltab));
			CK(kern_memcpy(dfulltab, fulltab, tab_n * sizeof(*fulltab)));
			foff = (uint32_t *)((struct kern_page *)dfulltab + tab_n);
			CK(kern_memcpy(foff, full_off, (o.hkv + 1) * sizeof(*foff)));
			a.pool = dfull;
			a.nslots = (uint32_t)tab_n;
			a.pages = dfulltab;
			a.head_off = foff;
			a.max_pages = ctx_pages;
			CK(attn_ws_grow(&a, &dws, &ws_bytes));
			for (it = 0; it < o.iters + 3; it++) {
				float ms;

				CK(kern_event_record(ev0, stream));
				CK(kern_attn(&a, dws, stream));
				CK(kern_event_record(ev1, stream));
				CK(kern_event_ms(ev0, ev1, &ms));
				if (it >= 3)
					samples[it - 3] = ms * 1e3;
			}
			r->full_layer_us = median(samples, o.iters);
		}
		CK(kern_gpu_check());
	}

	/* Free our big buffers before PyTorch takes the GPU. */
	kern_dev_free(dfull);
	dfull = NULL;
	for (c = 0; c < o.nctx && !o.no_select; c++) {
		rc = measure_select(&o, o.ctx[c], &res[c]);
		if (rc < 0) {
			fprintf(stderr, "icebench gpu: select at %u: %s\n", o.ctx[c],
				strerror(-rc));
			goto out;
		}
	}
	if (o.sdpa_python)
		run_sdpa(&o, res);

	if (o.json) {
		bench_json_begin(stdout, "gpu");
		printf(",\"shape\":{\"layers\":%u,\"hq\":%u,\"hkv\":%u,\"d\":%u,\"page\":%u,"
		       "\"budget\":%u,\"dtype\":\"bf16\"},\"pinned_copy_ceiling_gbs\":%.2f,"
		       "\"pool_mib\":%zu,\"iters\":%u,\"results\":[",
		       o.layers, o.hq, o.hkv, o.d, o.P, o.budget, ceiling_gbs, o.pool_mib, o.iters);
		for (c = 0; c < o.nctx; c++) {
			struct ctx_result *r = &res[c];

			printf("%s{\"ctx\":%u,\"gather_per_layer_gbs\":%.2f,\"gather_one_launch_gbs\":%.2f,"
			       "\"gather_per_layer_desc_gbs\":%.2f,\"memcpy_per_page_gbs\":%.2f,\"move_token_us\":%.1f,"
			       "\"attn_sparse_layer_us\":%.2f,\"attn_full_ours_layer_us\":%.2f,"
			       "\"sdpa_full_layer_us\":%.2f,\"sdpa_variant\":\"%s\","
			       "\"attend_token_us\":%.1f,\"full_decode_token_us\":%.1f,"
			       "\"select_search_us\":%.1f,\"select_token_us\":%.1f,"
			       "\"select_threads\":%u,\"select_build_s\":%.2f,"
			       "\"token_select_move_attend_us\":%.1f,"
			       "\"move_then_attend_token_us\":%.1f,"
			       "\"tier_move_fresh_token_us\":%.1f,\"tier_move_fresh_pages\":%.1f,"
			       "\"tier_move_repeat_token_us\":%.1f,\"tier_move_repeat_pages\":%.1f}",
			       c ? "," : "", r->ctx, r->gather_layer_gbs, r->gather_token_gbs,
			       r->gather_desc_gbs, r->percopy_gbs, r->move_token_us,
			       r->attn_layer_us, r->full_layer_us, r->sdpa_layer_us,
			       r->sdpa_variant, r->attn_layer_us * o.layers,
			       r->sdpa_layer_us * o.layers, r->select_search_us, r->select_token_us,
			       r->select_threads, r->select_build_s,
			       r->select_token_us + r->move_token_us + r->attn_layer_us * o.layers,
			       r->move_attend_token_us, r->tier_fresh_us, r->tier_fresh_pages,
			       r->tier_repeat_us, r->tier_repeat_pages);
		}
		printf("]}\n");
	}
	{
		FILE *f = o.json ? stderr : stdout;

		fprintf(f,
			"gpu: %u layers, %u q / %u kv heads, d %u, bf16, page %u, budget %u tokens "
			"(%u pages/head), %u iters\n",
			o.layers, o.hq, o.hkv, o.d, o.P, o.budget, ppt, o.iters);
		fprintf(f, "pinned cudaMemcpy ceiling: %.1f GB/s\n", ceiling_gbs);
		fprintf(f, "%7s %9s %9s %9s %9s %9s | %9s %9s %9s %6s | %9s %9s\n", "ctx",
			"gath/lay", "gath/desc", "gath/tok", "memcpy/pg", "move us", "sparse us",
			"full us", "sdpa us", "x", "attend us", "full us");
		for (c = 0; c < o.nctx; c++) {
			struct ctx_result *r = &res[c];

			fprintf(f,
				"%7u %9.1f %9.1f %9.1f %9.1f %9.0f | %9.2f %9.1f %9.1f %6.1f | %9.0f %9.0f\n",
				r->ctx, r->gather_layer_gbs, r->gather_desc_gbs,
				r->gather_token_gbs, r->percopy_gbs, r->move_token_us,
				r->attn_layer_us, r->full_layer_us, r->sdpa_layer_us,
				r->sdpa_layer_us / r->attn_layer_us, r->attn_layer_us * o.layers,
				r->sdpa_layer_us * o.layers);
		}
		fprintf(f,
			"(GB/s: scattered %zu-byte pages; us per layer for attention; per token = "
			"%u layers)\n",
			slot_bytes, o.layers);
		fprintf(f, "per token: %7s %12s %10s %10s %10s %10s %10s %10s\n", "ctx",
			"select/srch", "select", "move", "attend", "mv+att seq", "total",
			"full-KV");
		for (c = 0; c < o.nctx; c++) {
			struct ctx_result *r = &res[c];

			fprintf(f,
				"per token: %7u %9.1f us %7.0f us %7.0f us %7.0f us %7.0f us %7.0f us "
				"%7.0f us\n",
				r->ctx, r->select_search_us, r->select_token_us, r->move_token_us,
				r->attn_layer_us * o.layers, r->move_attend_token_us,
				r->select_token_us + r->move_token_us + r->attn_layer_us * o.layers,
				r->sdpa_layer_us * o.layers);
		}
		for (c = 0; c < o.nctx; c++)
			fprintf(f,
				"hbm cache: %6u  new selection %7.0f us/token (%.0f pages moved), same "
				"selection again %7.0f us/token (%.0f pages moved)\n",
				res[c].ctx, res[c].tier_fresh_us, res[c].tier_fresh_pages,
				res[c].tier_repeat_us, res[c].tier_repeat_pages);
		if (!o.no_select && o.nctx)
			fprintf(f,
				"(select: %u x %u group searches of %u queries for %u pages on %u CPU "
				"threads, DCI-tree over synthetic keys; move: every budget page, cold)\n",
				o.layers, o.hkv, o.hq / o.hkv, o.budget / o.P - 2,
				res[0].select_threads);
	}
out:
	hbm_close(hbm);
	free(reqs);
	free(ws_pages);
	kern_dev_free(dfulltab);
	kern_dev_free(dfull);
	kern_dev_free(dws);
	kern_dev_free(dtab);
	kern_dev_free(dout);
	kern_dev_free(dq);
	kern_dev_free(dslots);
	kern_dev_free(dcopies);
	kern_host_free(hcopies);
	kern_host_free(hpool);
	kern_dev_free(big_d);
	kern_host_free(big_h);
	kern_event_free(ev1);
	kern_event_free(ev0);
	kern_stream_free(stream);
	free(full_off);
	free(fulltab);
	free(head_off);
	free(tab);
	free(copies);
	free(samples);
	return rc < 0 ? 1 : 0;
}

BENCH_COMMAND(gpu_cmd, "gpu", "page gather, sparse vs full-KV attention on the GPU", bench_gpu_main)
