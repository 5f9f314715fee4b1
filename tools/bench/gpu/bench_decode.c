/*
 * icebench gpu-decode: one decode token with the select on the GPU (kernels/ksel.h), for a model
 * shape, against full-KV attention in the same run.
 *
 * Per context: synthetic LLM-like keys (index/synth.h) go into one DCI-tree (index/idx.h) that
 * stands for every (layer, KV head); its pages (idx_page_tokens) give the K blocks in HBM that
 * select re-scores, the page summaries (kern_sel_sum, built on the GPU from those blocks) and
 * the K+V pages in one pinned host pool that the gather moves. A token runs, per layer:
 * kern_sel (all KV heads; it writes the page table and the copy list), kern_gather (device
 * list) and kern_attn over sink + selected + window pages, with no host synchronisation.
 * --layer-copies distinct copies of the summaries and K blocks rotate over the layers so the
 * 50 MB L2 does not hold a layer's summaries from one launch to the next.
 *
 * Recall, on the CPU from the same keys and index: attention-mass recall (docs: DESIGN.md 7)
 * of the GPU select and of the CPU select (select_head, the engine's defaults) at each budget
 * of --recall-budgets, against the exact top tokens of each query head.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "clock.h"
#include "dtype.h"
#include "idx.h"
#include "kern.h"
#include "ksel.h"
#include "select.h"
#include "synth.h"

struct dec_opts {
	uint32_t layers, hq, hkv, d, budget, iters, cand, copies, overfetch;
	uint32_t nctx, ctx[8];
	uint32_t nrb, rb[4];
	const char *sdpa_python;
	int json;
};

struct dec_result {
	uint32_t ctx, npages, cand, keep;
	double select_us, move_us, attn_us, chain_us, full_us, sdpa_us;
	double sum_build_us, sum_update_us, build_s;
	size_t sum_bytes, k_bytes;
	double rec_gpu[4], rec_cpu[4], rec_gpu_cpu[4];
};

#define P 16u
#define NQ 8u

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

static int cmp_desc_f(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return x > y ? -1 : x < y;
}

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static int parse_list(const char *s, uint32_t *out, uint32_t max, uint32_t *ret_n)
{
	char *end;
	uint32_t n = 0;

	while (*s && n < max) {
		unsigned long v = strtoul(s, &end, 10);

		if (end == s || !v)
			return -EINVAL;
		if (*end == 'k' || *end == 'K') {
			v *= 1024;
			end++;
		}
		out[n++] = (uint32_t)v;
		if (*end && *end != ',')
			return -EINVAL;
		s = *end == ',' ? end + 1 : end;
	}
	*ret_n = n;
	return n ? 0 : -EINVAL;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: icebench gpu-decode [--ctx 32k,128k,256k] [--layers 32] [--hq 32] [--hkv 8]\n"
		"                           [--d 128] [--budget 256] [--cand N] [--iters 20]\n"
		"                           [--layer-copies 4] [--recall-budgets 64,256]\n"
		"                           [--sdpa PYTHON] [--json]\n"
		"Times a decode token with the select on the GPU (select, move, attend per token)\n"
		"against full-KV attention, and reports summary bytes and attention-mass recall\n"
		"of the GPU select and of the CPU select on the same keys. Needs a CUDA device.\n");
}

#define CK(expr)                                                                                \
	do {                                                                                    \
		int r_ = (expr);                                                                \
		if (r_ < 0) {                                                                   \
			fprintf(stderr, "icebench gpu-decode: %s: %s\n", #expr, strerror(-r_)); \
			rc = r_;                                                                \
			goto out;                                                               \
		}                                                                               \
	} while (0)

/* Softmax over every key for each query of a group, at scale s: p[j][t]. */
static void softmax_all(const float *keys, uint32_t n, uint32_t d, const float *q, uint32_t g,
			float s, float *p)
{
	uint32_t j, t, c;

	for (j = 0; j < g; j++) {
		float *pj = p + (size_t)j * n, m = -INFINITY;
		double z = 0.0;

		for (t = 0; t < n; t++) {
			float dot = 0.0f;

			for (c = 0; c < d; c++)
				dot += q[(size_t)j * d + c] * keys[(size_t)t * d + c];
			pj[t] = dot * s;
			m = fmaxf(m, pj[t]);
		}
		for (t = 0; t < n; t++)
			z += exp((double)pj[t] - m);
		for (t = 0; t < n; t++)
			pj[t] = (float)(exp((double)pj[t] - m) / z);
	}
}

/*
 * Mass recall of one selection for a group: for each query j, the softmax mass of sink +
 * window + the selected tokens (sel: 1 per middle token) over the mass of sink + window + the
 * R best middle tokens for that query. Returns the mean over the group.
 */
static double group_recall(const float *p, uint32_t n, uint32_t g, const unsigned char *sel,
			   uint32_t R, float *tmp)
{
	uint32_t j, t;
	double sum = 0.0;

	for (j = 0; j < g; j++) {
		const float *pj = p + (size_t)j * n;
		double base = 0.0, got = 0.0, best = 0.0;

		for (t = 0; t < P; t++)
			base += pj[t] + pj[n - 1 - t];
		for (t = P; t < n - P; t++) {
			tmp[t - P] = pj[t];
			if (sel[t - P])
				got += pj[t];
		}
		qsort(tmp, n - 2 * P, sizeof(*tmp), cmp_desc_f);
		for (t = 0; t < R && t < n - 2 * P; t++)
			best += tmp[t];
		sum += (base + got) / (base + best);
	}
	return sum / g;
}

static int run_sdpa(const struct dec_opts *o, struct dec_result *res)
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
	if (!p)
		return -errno;
	while (fgets(line, sizeof(line), p)) {
		unsigned c;
		double us;
		char var[64];

		if (sscanf(line, "sdpa %u %lf %63s", &c, &us, var) != 3) {
			fputs(line, stderr);
			continue;
		}
		for (i = 0; i < o->nctx; i++)
			if (res[i].ctx == c)
				res[i].sdpa_us = us * o->layers;
	}
	pclose(p);
	return 0;
}

static int run_ctx(const struct dec_opts *o, uint32_t ctx, struct dec_result *r)
{
	uint32_t g = o->hq / o->hkv, d = o->d, hkv = o->hkv, nmid = ctx - 2 * P;
	uint32_t keep = o->overfetch * (o->budget / P - 2), cand, tstride = keep + 2, np, pstride,
		 L = o->copies;
	size_t kpage = (size_t)P * d * 2, slot = 2 * kpage, rb = kern_sel_rec_bytes(d);
	struct synth_params sp;
	struct idx_params ip;
	struct idx *ix = NULL;
	struct idx_rows rows;
	float *keys = NULL, *q = NULL, *prob = NULL, *tmp = NULL;
	uint16_t *kblk = NULL, *qbf = NULL;
	uint32_t *fills = NULL, pos[IDX_PAGE_CAP], f, ver, i, h, l, t, c, it, b;
	struct kern_sel_upd *upd = NULL;
	void *dk[8] = { 0 }, *dsum[8] = { 0 }, *dupd = NULL, *dq = NULL, *dqb = NULL;
	void *dids = NULL, *dmasks = NULL, *dtab = NULL, *dcp = NULL, *dset = NULL;
	void *dout = NULL, *dattws = NULL, *dfull = NULL, *dfulltab = NULL, *dfulloff = NULL;
	void *doff = NULL, *hpool = NULL, *st = NULL, *e0 = NULL, *e1 = NULL, *ws_sel = NULL;
	void *dattws2 = NULL;
	uint64_t hpool_dev;
	struct kern_page *tab = NULL, *fulltab = NULL;
	uint32_t *off = NULL, *fulloff = NULL, *ids = NULL;
	uint16_t *gm = NULL;
	unsigned char *sel = NULL;
	struct kern_sel_args a;
	struct kern_attn_args at, full;
	size_t wsz, attws, fullws;
	double *smp = NULL;
	uint64_t t0;
	float ms;
	int rc = 0;

	memset(r, 0, sizeof(*r));
	r->ctx = ctx;
	if (L > 8)
		L = 8;
	keys = malloc((size_t)ctx * d * sizeof(float));
	q = malloc((size_t)NQ * g * d * sizeof(float));
	smp = malloc((size_t)o->iters * sizeof(double));
	CK(keys && q && smp ? 0 : -ENOMEM);
	synth_params_default(&sp, d);
	CK(synth_keys(&sp, ctx, keys));
	CK(synth_queries(&sp, keys, ctx, NQ, g, q, NULL));
	idx_params_default(&ip, d);
	ip.threads = 0;
	CK(idx_new(&ip, &ix));
	t0 = clock_now_ns();
	CK(idx_build(ix, keys + (size_t)P * d, nmid, ICE_DTYPE_F32));
	r->build_s = (double)(clock_now_ns() - t0) * 1e-9;
	rows = (struct idx_rows){ keys + (size_t)P * d, ICE_DTYPE_F32, nmid };
	idx_set_keys(ix, &(struct idx_keys){ idx_rows_read, &rows, 0 });
	np = (uint32_t)idx_npages(ix);
	pstride = np;
	r->npages = np;
	cand = o->cand ? o->cand : KERN_SEL_MAX_CAND;
	cand = cand < 16 ? 16 : cand > KERN_SEL_MAX_CAND ? KERN_SEL_MAX_CAND : cand;
	if (cand < keep)
		cand = keep;
	r->cand = cand;
	r->keep = keep;

	/* K blocks of the index's pages (bf16, [P][d] each, rows in idx_page_tokens order), the
	 * same for every KV head; K+V pages in the pinned pool. */
	kblk = calloc((size_t)np, kpage);
	fills = calloc(np, sizeof(*fills));
	upd = calloc((size_t)hkv * np, sizeof(*upd));
	CK(kblk && fills && upd ? 0 : -ENOMEM);
	for (i = 0; i < np; i++) {
		CK(idx_page_tokens(ix, i, pos, &f, &ver));
		fills[i] = f;
		for (t = 0; t < f; t++)
			for (c = 0; c < d; c++)
				kblk[((size_t)i * P + t) * d + c] =
					dtype_f32_to_bf16(keys[((size_t)pos[t] + P) * d + c]);
	}
	for (h = 0; h < hkv; h++)
		for (i = 0; i < np; i++)
			upd[(size_t)h * np + i] = (struct kern_sel_upd){ h, i, fills[i], 0 };
	CK(kern_host_alloc((size_t)hkv * np * slot, &hpool, &hpool_dev));
	for (h = 0; h < hkv; h++)
		for (i = 0; i < np; i++) {
			uint16_t *pg = (uint16_t *)((char *)hpool + ((size_t)h * np + i) * slot);

			memcpy(pg, kblk + (size_t)i * P * d, kpage);
			for (t = 0; t < P * d; t++)
				pg[P * d + t] = dtype_f32_to_bf16(
					(float)(mix64(i * 4099 + t) >> 40) * (1.0f / 16777216.0f) -
					0.5f);
		}
	CK(kern_stream_new(&st));
	CK(kern_event_new(&e0));
	CK(kern_event_new(&e1));
	CK(kern_dev_alloc((size_t)hkv * np * sizeof(*upd), &dupd));
	CK(kern_memcpy(dupd, upd, (size_t)hkv * np * sizeof(*upd)));
	for (l = 0; l < L; l++) {
		struct kern_sel_keys kk;

		CK(kern_dev_alloc((size_t)hkv * np * kpage, &dk[l]));
		CK(kern_dev_alloc((size_t)hkv * np * rb, &dsum[l]));
		for (h = 0; h < hkv; h++)
			CK(kern_memcpy((char *)dk[l] + (size_t)h * np * kpage, kblk,
				       (size_t)np * kpage));
		kk = (struct kern_sel_keys){ ICE_DTYPE_BF16, d, P, dk[l], kpage, NULL, pstride };
		CK(kern_event_record(e0, st));
		CK(kern_sel_sum(&kk, dupd, hkv * np, dsum[l], st));
		CK(kern_event_record(e1, st));
		CK(kern_event_sync(e1));
		CK(kern_event_ms(e0, e1, &ms));
		r->sum_build_us = ms * 1e3;
		/* A decode insert rewrites about one page per KV head. */
		CK(kern_event_record(e0, st));
		CK(kern_sel_sum(&kk, dupd, hkv, dsum[l], st));
		CK(kern_event_record(e1, st));
		CK(kern_event_sync(e1));
		CK(kern_event_ms(e0, e1, &ms));
		r->sum_update_us = ms * 1e3;
	}
	r->sum_bytes = (size_t)hkv * np * rb;
	r->k_bytes = (size_t)hkv * ctx * d * 2;

	/* Queries: group h of a token is query group (h + token) % NQ. */
	CK(kern_dev_alloc((size_t)NQ * g * d * sizeof(float) * 2, &dq));
	CK(kern_memcpy(dq, q, (size_t)NQ * g * d * sizeof(float)));
	CK(kern_memcpy((char *)dq + (size_t)NQ * g * d * sizeof(float), q,
		       (size_t)NQ * g * d * sizeof(float)));
	qbf = malloc((size_t)o->hq * d * 2);
	CK(qbf ? 0 : -ENOMEM);
	for (i = 0; i < o->hq * d; i++)
		qbf[i] = dtype_f32_to_bf16(q[i % (NQ * g * d)] * 0.1f);
	CK(kern_dev_alloc((size_t)o->hq * d * 2, &dqb));
	CK(kern_memcpy(dqb, qbf, (size_t)o->hq * d * 2));
	CK(kern_dev_alloc((size_t)o->hq * d * 2, &dout));

	/* Per layer: ids, masks, table, copies; one working set of hkv * tstride slots each. */
	CK(kern_dev_alloc((size_t)o->layers * hkv * keep * 4, &dids));
	CK(kern_dev_alloc((size_t)o->layers * hkv * keep * 2, &dmasks));
	CK(kern_dev_alloc((size_t)o->layers * hkv * tstride * sizeof(struct kern_page), &dtab));
	CK(kern_dev_alloc((size_t)o->layers * hkv * keep * sizeof(struct kern_copy), &dcp));
	CK(kern_dev_alloc((size_t)o->layers * hkv * tstride * slot, &dset));
	CK(kern_memset(dset, 0x11, (size_t)o->layers * hkv * tstride * slot));
	tab = calloc((size_t)o->layers * hkv * tstride, sizeof(*tab));
	off = calloc(hkv + 1, sizeof(*off));
	CK(tab && off ? 0 : -ENOMEM);
	for (l = 0; l < o->layers; l++)
		for (h = 0; h < hkv; h++) {
			size_t e = ((size_t)l * hkv + h) * tstride;

			/* sink and window: slots of their own, always full */
			tab[e] = (struct kern_page){ (uint32_t)(e - (size_t)l * hkv * tstride), P,
						     0 };
			tab[e + tstride - 1] = (struct kern_page){
				(uint32_t)(e + tstride - 1 - (size_t)l * hkv * tstride), P, 0
			};
		}
	for (h = 0; h <= hkv; h++)
		off[h] = h * tstride;
	CK(kern_memcpy(dtab, tab, (size_t)o->layers * hkv * tstride * sizeof(*tab)));
	CK(kern_dev_alloc((hkv + 1) * sizeof(*off), &doff));
	CK(kern_memcpy(doff, off, (hkv + 1) * sizeof(*off)));

	memset(&a, 0, sizeof(a));
	a.keys = (struct kern_sel_keys){ ICE_DTYPE_BF16, d, P, dk[0], kpage, NULL, pstride };
	a.hq = o->hq;
	a.hkv = hkv;
	a.attn_scale = 1.0f / sqrtf((float)d);
	a.q = dq;
	a.sums = dsum[0];
	a.npages = np;
	a.cand = cand;
	a.keep = keep;
	a.rows = o->overfetch > 1 ? o->budget - 2 * P : 0;
	a.ids = dids;
	a.masks = dmasks;
	a.table = dtab;
	a.tstride = tstride;
	a.toff = 1;
	a.tslot = 0;
	a.copies = dcp;
	a.src_base = hpool_dev;
	a.src_bytes = slot;
	a.dst_bytes = slot;
	wsz = kern_sel_ws_size(&a);
	CK(wsz ? 0 : -EINVAL);
	CK(kern_dev_alloc(wsz, &ws_sel));
	CK(kern_memset(ws_sel, 0, wsz));

	memset(&at, 0, sizeof(at));
	at.dtype = ICE_DTYPE_BF16;
	at.hq = o->hq;
	at.hkv = hkv;
	at.d = d;
	at.page_cap = P;
	at.scale = 1.0f / sqrtf((float)d);
	at.q = dqb;
	at.out = dout;
	at.slot_bytes = slot;
	at.nslots = hkv * tstride;
	at.head_off = doff;
	at.max_pages = tstride;
	at.pool = dset;
	at.pages = dtab;
	attws = kern_attn_ws_size(&at);
	if (attws) {
		CK(kern_dev_alloc(attws, &dattws));
		CK(kern_memset(dattws, 0, attws));
	}

#define LAYER_SEL(l, tok)                                                                       \
	do {                                                                                    \
		struct kern_sel_args al = a;                                                    \
		al.keys.pool = dk[(l) % L];                                                     \
		al.sums = dsum[(l) % L];                                                        \
		al.q = (const float *)dq + (size_t)(((tok) + (l)) % NQ) * g * d;                \
		al.ids = (uint32_t *)dids + (size_t)(l)*hkv * keep;                             \
		al.masks = (uint16_t *)dmasks + (size_t)(l)*hkv * keep;                         \
		al.table = (struct kern_page *)dtab + (size_t)(l)*hkv * tstride;                \
		al.copies = (struct kern_copy *)dcp + (size_t)(l)*hkv * keep;                   \
		al.dst_base =                                                                   \
			(uint64_t)(uintptr_t)((char *)dset + (size_t)(l)*hkv * tstride * slot); \
		CK(kern_sel(&al, ws_sel, st));                                                  \
	} while (0)
#define LAYER_MOVE(l) \
	CK(kern_gather((struct kern_copy *)dcp + (size_t)(l)*hkv * keep, hkv * keep, slot, st))
#define LAYER_ATTN(l)                                                            \
	do {                                                                     \
		struct kern_attn_args al = at;                                   \
		al.pool = (char *)dset + (size_t)(l)*hkv * tstride * slot;       \
		al.pages = (struct kern_page *)dtab + (size_t)(l)*hkv * tstride; \
		CK(kern_attn(&al, dattws, st));                                  \
	} while (0)

	/* warm-up, then each part alone and the chain */
	for (l = 0; l < o->layers; l++) {
		LAYER_SEL(l, 0);
		LAYER_MOVE(l);
		LAYER_ATTN(l);
	}
	CK(kern_stream_sync(st));
	CK(kern_gpu_check());
	for (b = 0; b < 4; b++) {
		for (it = 0; it < o->iters; it++) {
			CK(kern_event_record(e0, st));
			for (l = 0; l < o->layers; l++) {
				if (b == 0 || b == 3)
					LAYER_SEL(l, it + 1);
				if (b == 1 || b == 3)
					LAYER_MOVE(l);
				if (b == 2 || b == 3)
					LAYER_ATTN(l);
			}
			CK(kern_event_record(e1, st));
			CK(kern_event_sync(e1));
			CK(kern_event_ms(e0, e1, &ms));
			smp[it] = ms * 1e3;
		}
		double med = median(smp, o->iters);

		if (b == 0)
			r->select_us = med;
		else if (b == 1)
			r->move_us = med;
		else if (b == 2)
			r->attn_us = med;
		else
			r->chain_us = med;
	}
	CK(kern_gpu_check());

	/* Full-KV decode attention with kern_attn over every page (one layer, times layers). */
	{
		size_t fb = (size_t)hkv * np * slot;

		CK(kern_dev_alloc(fb, &dfull));
		CK(kern_memcpy(dfull, hpool, fb));
		fulltab = calloc((size_t)hkv * np, sizeof(*fulltab));
		fulloff = calloc(hkv + 1, sizeof(*fulloff));
		CK(fulltab && fulloff ? 0 : -ENOMEM);
		for (i = 0; i < hkv * np; i++)
			fulltab[i] = (struct kern_page){ i, (uint16_t)fills[i % np], 0 };
		for (h = 0; h <= hkv; h++)
			fulloff[h] = h * np;
		CK(kern_dev_alloc((size_t)hkv * np * sizeof(*fulltab), &dfulltab));
		CK(kern_memcpy(dfulltab, fulltab, (size_t)hkv * np * sizeof(*fulltab)));
		CK(kern_dev_alloc((hkv + 1) * sizeof(*fulloff), &dfulloff));
		CK(kern_memcpy(dfulloff, fulloff, (hkv + 1) * sizeof(*fulloff)));
		full = at;
		full.pool = dfull;
		full.nslots = hkv * np;
		full.pages = dfulltab;
		full.head_off = dfulloff;
		full.max_pages = np;
		fullws = kern_attn_ws_size(&full);
		if (fullws) {
			CK(kern_dev_alloc(fullws, &dattws2));
			CK(kern_memset(dattws2, 0, fullws));
		}
		CK(kern_attn(&full, dattws2, st));
		for (it = 0; it < o->iters; it++) {
			CK(kern_event_record(e0, st));
			CK(kern_attn(&full, dattws2, st));
			CK(kern_event_record(e1, st));
			CK(kern_event_sync(e1));
			CK(kern_event_ms(e0, e1, &ms));
			smp[it] = ms * 1e3;
		}
		r->full_us = median(smp, o->iters) * o->layers;
	}

	/* Recall at each budget: the GPU select (one launch, head h on query group h % NQ) and
	 * the CPU select on the same index. */
	prob = malloc((size_t)g * ctx * sizeof(float));
	tmp = malloc((size_t)ctx * sizeof(float));
	sel = malloc(nmid);
	ids = malloc((size_t)hkv * KERN_SEL_MAX_KEEP * sizeof(*ids));
	gm = malloc((size_t)hkv * KERN_SEL_MAX_KEEP * sizeof(*gm));
	CK(prob && tmp && sel && ids && gm ? 0 : -ENOMEM);
	for (b = 0; b < o->nrb; b++) {
		uint32_t R = o->rb[b] - 2 * P, kb = R / P * o->overfetch, cb = cand, n = 0;
		struct select_opts so = { 0 };
		struct kern_sel_args ar = a;
		double sg = 0.0, sc = 0.0, sgc = 0.0;
		size_t cws;
		void *cw = NULL;
		struct idx_hit *hits = NULL;
		uint16_t *cm = NULL;

		if (o->rb[b] <= 2 * P || R % P)
			continue;
		cb = cb < 16 ? 16 : cb > KERN_SEL_MAX_CAND ? KERN_SEL_MAX_CAND : cb;
		if (cb < kb)
			cb = kb;
		ar.keep = kb;
		ar.cand = cb;
		ar.rows = o->overfetch > 1 ? R : 0;
		ar.table = NULL;
		ar.copies = NULL;
		CK(kern_sel(&ar, ws_sel, st));
		CK(kern_stream_sync(st));
		CK(kern_memcpy(ids, dids, (size_t)hkv * kb * sizeof(*ids)));
		CK(kern_memcpy(gm, dmasks, (size_t)hkv * kb * sizeof(*gm)));
		so.budget_pages = R / P;
		so.overfetch = SELECT_OVERFETCH;
		so.scale = 1.0f / sqrtf((float)d);
		so.group_merge = 1;
		so.page_mass = 1;
		cws = select_ws_size(ix, g, &so);
		cw = malloc(cws);
		hits = calloc(select_max_hits(ix, &so), sizeof(*hits));
		cm = calloc(select_max_hits(ix, &so), sizeof(*cm));
		if (!cw || !hits || !cm) {
			free(cw);
			free(hits);
			free(cm);
			CK(-ENOMEM);
		}
		for (h = 0; h < hkv && !rc; h++) {
			const float *qg = q + (size_t)(h % NQ) * g * d;
			struct select_rows att[2] = {
				{ keys, P, ICE_DTYPE_F32 },
				{ keys + (size_t)(ctx - P) * d, P, ICE_DTYPE_F32 },
			};
			struct select_group grp = { qg, g, d, att, 2 };
			double rg, rcpu;
			int nh;

			softmax_all(keys, ctx, d, qg, g, 1.0f / sqrtf((float)d), prob);
			memset(sel, 0, nmid);
			for (i = 0; i < kb; i++) {
				uint32_t pg = ids[h * kb + i];

				if (pg == UINT32_MAX)
					continue;
				idx_page_tokens(ix, pg, pos, &f, &ver);
				for (t = 0; t < f; t++)
					if (gm[h * kb + i] >> t & 1)
						sel[pos[t]] = 1;
			}
			rg = group_recall(prob, ctx, g, sel, R, tmp);
			nh = select_head(ix, NULL, &so, &grp, cw, cws, hits, cm, NULL);
			if (nh < 0) {
				rc = nh;
				break;
			}
			memset(sel, 0, nmid);
			for (i = 0; i < (uint32_t)nh; i++) {
				idx_page_tokens(ix, hits[i].page, pos, &f, &ver);
				for (t = 0; t < f; t++)
					if (cm[i] >> t & 1)
						sel[pos[t]] = 1;
			}
			rcpu = group_recall(prob, ctx, g, sel, R, tmp);
			sg += rg;
			sc += rcpu;
			sgc += rg / rcpu;
			n++;
		}
		free(cw);
		free(hits);
		free(cm);
		if (rc)
			goto out;
		r->rec_gpu[b] = sg / n;
		r->rec_cpu[b] = sc / n;
		r->rec_gpu_cpu[b] = sgc / n;
	}
out:
	if (st)
		kern_stream_sync(st);
	kern_dev_free(dattws2);
	kern_dev_free(dfulloff);
	kern_dev_free(dfulltab);
	kern_dev_free(dfull);
	kern_dev_free(dattws);
	kern_dev_free(ws_sel);
	kern_dev_free(doff);
	kern_dev_free(dset);
	kern_dev_free(dcp);
	kern_dev_free(dtab);
	kern_dev_free(dmasks);
	kern_dev_free(dids);
	kern_dev_free(dout);
	kern_dev_free(dqb);
	kern_dev_free(dq);
	for (l = 0; l < 8; l++) {
		kern_dev_free(dk[l]);
		kern_dev_free(dsum[l]);
	}
	kern_dev_free(dupd);
	kern_event_free(e1);
	kern_event_free(e0);
	kern_stream_free(st);
	kern_host_free(hpool);
	free(gm);
	free(ids);
	free(sel);
	free(tmp);
	free(prob);
	free(fulloff);
	free(fulltab);
	free(off);
	free(tab);
	free(qbf);
	free(upd);
	free(fills);
	free(kblk);
	idx_free(ix);
	free(smp);
	free(q);
	free(keys);
	return rc;
}

static int bench_decode_main(int argc, char **argv)
{
	struct dec_opts o = { 32, 32, 8, 128, 256, 20, 0, 4, 2, 0, { 0 }, 0, { 0 }, NULL, 0 };
	struct dec_result res[8];
	uint32_t i, c, b;
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
			if (parse_list(v, o.ctx, 8, &o.nctx))
				return 2;
		} else if (!strcmp(a, "--recall-budgets")) {
			if (parse_list(v, o.rb, 4, &o.nrb))
				return 2;
		} else if (!strcmp(a, "--layers"))
			o.layers = (uint32_t)atoi(v);
		else if (!strcmp(a, "--hq"))
			o.hq = (uint32_t)atoi(v);
		else if (!strcmp(a, "--hkv"))
			o.hkv = (uint32_t)atoi(v);
		else if (!strcmp(a, "--d"))
			o.d = (uint32_t)atoi(v);
		else if (!strcmp(a, "--budget"))
			o.budget = (uint32_t)atoi(v);
		else if (!strcmp(a, "--cand"))
			o.cand = (uint32_t)atoi(v);
		else if (!strcmp(a, "--iters"))
			o.iters = (uint32_t)atoi(v);
		else if (!strcmp(a, "--overfetch"))
			o.overfetch = (uint32_t)atoi(v);
		else if (!strcmp(a, "--layer-copies"))
			o.copies = (uint32_t)atoi(v);
		else if (!strcmp(a, "--sdpa"))
			o.sdpa_python = v;
		else {
			usage(stderr);
			return 2;
		}
	}
	if (!o.nctx)
		parse_list("32k,128k,256k", o.ctx, 8, &o.nctx);
	if (!o.nrb)
		parse_list("64,256", o.rb, 4, &o.nrb);
	if (!o.layers || !o.hkv || o.hkv > 8 || !o.hq || o.hq % o.hkv || o.hq / o.hkv > 8 ||
	    (o.d != 64 && o.d != 128) || o.budget < 3 * P || o.budget % P || !o.overfetch ||
	    o.overfetch * (o.budget / P - 2) > KERN_SEL_MAX_KEEP || !o.iters || o.iters > 1000 ||
	    !o.copies) {
		fprintf(stderr, "icebench gpu-decode: bad shape\n");
		return 2;
	}
	if (kern_gpu_count() < 0) {
		fprintf(stderr, "icebench gpu-decode: no CUDA device\n");
		return 77;
	}
	for (c = 0; c < o.nctx && !rc; c++) {
		rc = run_ctx(&o, o.ctx[c], &res[c]);
		if (rc)
			fprintf(stderr, "icebench gpu-decode: ctx %u: %s\n", o.ctx[c],
				strerror(-rc));
	}
	if (rc)
		return 1;
	if (o.sdpa_python)
		run_sdpa(&o, res);
	fprintf(stderr,
		"gpu-decode: %u layers, %u/%u heads, d %u, budget %u (sink + %u tokens in up to %u pages + "
		"window), bf16\n"
		"%8s %8s %5s %9s %9s %9s %9s %9s %9s %9s %8s %10s\n",
		o.layers, o.hq, o.hkv, o.d, o.budget, o.budget - 2 * P,
		o.overfetch * (o.budget / P - 2), "ctx", "pages", "cand", "select", "move",
		"attend", "sum", "chain", "full", "sdpa", "vs sdpa", "sum/K");
	for (c = 0; c < o.nctx; c++) {
		struct dec_result *r = &res[c];
		double sum = r->select_us + r->move_us + r->attn_us;
		double base = r->sdpa_us > 0 ? r->sdpa_us : r->full_us;

		fprintf(stderr,
			"%8u %8u %5u %7.0fus %7.0fus %7.0fus %7.0fus %7.0fus %7.0fus %7.0fus %7.1fx "
			"%9.4f\n",
			r->ctx, r->npages, r->cand, r->select_us, r->move_us, r->attn_us, sum,
			r->chain_us, r->full_us, r->sdpa_us, base / r->chain_us,
			(double)r->sum_bytes / (double)r->k_bytes);
	}
	fprintf(stderr, "mass recall (vs exact top tokens; GPU/CPU ratio):\n");
	for (c = 0; c < o.nctx; c++)
		for (b = 0; b < o.nrb; b++)
			fprintf(stderr, "%8u budget %3u: gpu %.3f cpu %.3f gpu/cpu %.3f\n",
				res[c].ctx, o.rb[b], res[c].rec_gpu[b], res[c].rec_cpu[b],
				res[c].rec_gpu_cpu[b]);
	for (c = 0; c < o.nctx; c++)
		fprintf(stderr,
			"%8u summaries %.1f MiB per layer (%zu B/page), GPU build %.0f us per layer, "
			"update (one page per KV head) %.1f us; CPU index build %.2f s\n",
			res[c].ctx, (double)res[c].sum_bytes / 1048576.0, kern_sel_rec_bytes(o.d),
			res[c].sum_build_us, res[c].sum_update_us, res[c].build_s);
	if (o.json) {
		bench_json_begin(stdout, "gpu-decode");
		printf(",\"shape\":{\"layers\":%u,\"hq\":%u,\"hkv\":%u,\"d\":%u,\"budget\":%u,"
		       "\"overfetch\":%u},\"results\":[",
		       o.layers, o.hq, o.hkv, o.d, o.budget, o.overfetch);
		for (c = 0; c < o.nctx; c++) {
			struct dec_result *r = &res[c];

			printf("%s{\"ctx\":%u,\"pages_per_head\":%u,\"cand\":%u,\"keep\":%u,"
			       "\"token_select_us\":%.1f,\"token_move_us\":%.1f,\"token_attend_us\":%.1f,"
			       "\"token_chain_us\":%.1f,\"token_full_us\":%.1f,\"token_sdpa_us\":%.1f,"
			       "\"summary_bytes_per_layer\":%zu,\"k_bytes_per_layer\":%zu,"
			       "\"summary_build_us\":%.1f,\"summary_update_us\":%.1f,"
			       "\"index_build_s\":%.2f,\"recall\":[",
			       c ? "," : "", r->ctx, r->npages, r->cand, r->keep, r->select_us,
			       r->move_us, r->attn_us, r->chain_us, r->full_us, r->sdpa_us,
			       r->sum_bytes, r->k_bytes, r->sum_build_us, r->sum_update_us,
			       r->build_s);
			for (b = 0; b < o.nrb; b++)
				printf("%s{\"budget\":%u,\"gpu\":%.4f,\"cpu\":%.4f,\"gpu_over_cpu\":%.4f}",
				       b ? "," : "", o.rb[b], r->rec_gpu[b], r->rec_cpu[b],
				       r->rec_gpu_cpu[b]);
			printf("]}");
		}
		printf("]}\n");
	}
	return 0;
}

BENCH_COMMAND(bench_decode_cmd, "gpu-decode",
	      "decode token with the select on the GPU vs full-KV attention", bench_decode_main)
