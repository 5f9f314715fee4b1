/* Sparse decode attention modes and their attention-mass accounting. */
#include "sel.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "dtype.h"
#include "gemma.h"
#include "idx.h"
#include "posidx.h"
#include "select.h"

#ifdef ICERUN_HAVE_ICECACHE
#include <icecache/icecache.h>

#include "kern.h"
#endif

#define P MODEL_PAGE
#define MAXG 16

static const char *const names[SEL_NKINDS] = { "full",   "stream", "quest",
					       "oracle", "dci",    "icecache" };

/* Where a tree's page keys are: index token i is position P + i of (layer, h) in kv. */
struct dci_src {
	const struct kv *kv;
	int layer, h;
};

struct sel {
	struct sel_cfg c;
	const struct model *m;
	int L, nkv, g, d, maxpages;
	/*
	 * Which layers the hook serves: every layer from dense on (Llama); for Gemma 3 only its
	 * global layers from dense on (the local ones keep their exact sliding window)
	 */
	bool *sparse;
	int first_sparse, last_sparse;
	/* quest: positional pages with Quest bounds (index/posidx) per (layer, kv head), over
	 * positions [P, px_end[layer]): the complete pages between the sink page and the window */
	struct posidx **px;
	int *px_end;
	/* dci: one DCI-tree per (layer, kv head) over positions [P, ix_end[layer]); the keys of
	 * its pages are read from the model's KV cache (dci_read) */
	struct idx **ix;
	struct dci_src *src;
	int *ix_end;
	void *ws;
	size_t ws_cap;
	float *keybuf;
	float *attk;          /* dci: a head's sink and window keys [2P][d] */
	struct idx_hit *hits; /* dci, quest: maxpages each */
	uint16_t *hmask;
	/* scratch */
	int32_t *idx;
	float *sc, *p, *tmp, *pagescore;
	int *cand;
	/* mass sums [length slot][layer] */
	double *msum, *osum;
	long *mcnt;
	int slot;
	float pmax[MAXG], psum[MAXG]; /* full softmax of the last full_probs call, per head */
	long att_tokens, att_calls;   /* this case: tokens attended per (layer, kv head, step) */
	long att_pages;               /* retrieved pages among them */
	char stats[2048];             /* icecache: engine stats taken before the sequence closed */
#ifdef ICERUN_HAVE_ICECACHE
	struct ice_ctx *ice;
	uint32_t seq;
	bool seq_open;
	int ice_n;      /* tokens appended to the sequence (all layers) */
	int *ice_layer; /* the engine's layer of each model layer, -1 where it holds none */
	int ice_L, ice_dense;
	struct ice_page_ref *refs;
	size_t nrefs_cap;
	float *pages; /* fetched pages */
	size_t pages_cap;
	uint16_t *kvbuf; /* [kv heads][n][d] f16 staging for ice_append */
	uint16_t *raw;   /* fetched pages as stored (f16) */
	float *qun;      /* the step's queries without the 1/sqrt(d) scale */
	float *rest;     /* the step's rest term per query head (ice_select_rest) */
	size_t raw_cap;
	size_t kvbuf_cap;
	struct kern_page *kpages; /* the fetched pages as kern_ref_attn's page table */
	size_t kpages_cap;
	uint32_t *head_off; /* [kv heads + 1] */
#endif
};

bool sel_have_icecache(void)
{
#ifdef ICERUN_HAVE_ICECACHE
	return true;
#else
	return false;
#endif
}

int sel_kind_parse(const char *name)
{
	int k;

	for (k = 0; k < SEL_NKINDS; k++)
		if (!strcmp(name, names[k]))
			return (k == SEL_ICECACHE && !sel_have_icecache()) ? -EINVAL : k;
	return -EINVAL;
}

const char *sel_kind_name(int kind)
{
	return kind >= 0 && kind < SEL_NKINDS ? names[kind] : "?";
}

int sel_kind(const struct sel *s)
{
	return s->c.kind;
}

int sel_budget(const struct sel *s)
{
	return s->c.budget;
}

void sel_free(struct sel *s)
{
	if (!s)
		return;
#ifdef ICERUN_HAVE_ICECACHE
	sel_end(s);
	ice_close(s->ice);
	free(s->refs);
	free(s->pages);
	free(s->kvbuf);
	free(s->raw);
	free(s->qun);
	free(s->rest);
	free(s->kpages);
	free(s->head_off);
	free(s->ice_layer);
#endif
	if (s->ix)
		for (int i = 0; i < s->L * s->nkv; i++)
			idx_free(s->ix[i]);
	free(s->ix);
	free(s->src);
	free(s->ix_end);
	free(s->ws);
	free(s->keybuf);
	free(s->attk);
	free(s->hits);
	free(s->hmask);
	if (s->px)
		for (int i = 0; i < s->L * s->nkv; i++)
			posidx_free(s->px[i]);
	free(s->px);
	free(s->px_end);
	free(s->idx);
	free(s->sc);
	free(s->p);
	free(s->tmp);
	free(s->pagescore);
	free(s->cand);
	free(s->msum);
	free(s->osum);
	free(s->mcnt);
	free(s->sparse);
	free(s);
}

int sel_new(const struct model *m, const struct sel_cfg *cfg, struct sel **ret)
{
	struct sel *s;
	size_t nl;
	int err = -ENOMEM;

	if (cfg->kind < 0 || cfg->kind >= SEL_NKINDS || cfg->cap < P || cfg->nlengths < 0 ||
	    (cfg->kind != SEL_FULL && (cfg->budget < 3 * P || cfg->budget % P)))
		return -EINVAL;
	if (m->cfg.n_head / m->cfg.n_kv > MAXG)
		return -EOPNOTSUPP;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->c = *cfg;
	s->c.socket = NULL;
	s->m = m;
	s->L = m->cfg.n_layer;
	s->nkv = m->cfg.n_kv;
	s->g = m->cfg.n_head / m->cfg.n_kv;
	s->d = m->cfg.head_dim;
	s->maxpages = cfg->cap / P;
	nl = (size_t)(cfg->nlengths + 1) * s->L;
	s->idx = malloc((size_t)cfg->cap * sizeof(*s->idx));
	s->sc = malloc((size_t)s->g * cfg->cap * sizeof(float));
	s->p = malloc((size_t)s->g * cfg->cap * sizeof(float));
	s->tmp = malloc((size_t)cfg->cap * sizeof(float));
	s->pagescore = malloc((size_t)s->g * s->maxpages * sizeof(float));
	s->cand = malloc((size_t)s->maxpages * sizeof(int));
	s->msum = calloc(nl, sizeof(double));
	s->osum = calloc(nl, sizeof(double));
	s->mcnt = calloc(nl, sizeof(long));
	s->sparse = calloc((size_t)s->L, sizeof(*s->sparse));
	if (!s->idx || !s->sc || !s->p || !s->tmp || !s->pagescore || !s->cand || !s->msum ||
	    !s->osum || !s->mcnt || !s->sparse)
		goto out_free;
	s->first_sparse = s->last_sparse = -1;
	for (int l = cfg->dense; l < s->L; l++) {
		s->sparse[l] = !m->gemma || gemma_layer_global(m, l);
		if (s->sparse[l] && s->first_sparse < 0)
			s->first_sparse = l;
		if (s->sparse[l])
			s->last_sparse = l;
	}
	if (cfg->kind == SEL_DCI) {
		s->ix = calloc((size_t)s->L * s->nkv, sizeof(*s->ix));
		s->src = calloc((size_t)s->L * s->nkv, sizeof(*s->src));
		s->ix_end = calloc((size_t)s->L, sizeof(int));
		s->keybuf = malloc((size_t)cfg->cap * s->d * sizeof(float));
		s->attk = malloc(2 * (size_t)P * s->d * sizeof(float));
		s->hits = malloc((size_t)s->maxpages * sizeof(*s->hits));
		s->hmask = malloc((size_t)s->maxpages * sizeof(*s->hmask));
		if (!s->ix || !s->src || !s->ix_end || !s->keybuf || !s->attk || !s->hits ||
		    !s->hmask)
			goto out_free;
	}
	if (cfg->kind == SEL_QUEST) {
		s->px = calloc((size_t)s->L * s->nkv, sizeof(*s->px));
		s->px_end = calloc((size_t)s->L, sizeof(int));
		s->keybuf = malloc((size_t)cfg->cap * s->d * sizeof(float));
		s->hits = malloc((size_t)s->maxpages * sizeof(*s->hits));
		if (!s->px || !s->px_end || !s->keybuf || !s->hits)
			goto out_free;
	}
#ifdef ICERUN_HAVE_ICECACHE
	if (cfg->kind == SEL_ICECACHE) {
		/* a slot holds one page's K and V in f16: 4 KiB for SmolLM2, where half of a
		 * default (8 KiB) slot would go unused; 16 KiB for Gemma's head dim 256 */
		char conf[512];

		if ((size_t)snprintf(conf, sizeof(conf), "slot_bytes = %d\n%s\n", 4 * P * s->d,
				     cfg->engine_config ? cfg->engine_config : "") >=
		    sizeof(conf)) {
			err = -E2BIG;
			goto out_free;
		}
		for (char *c = conf; *c; c++)
			if (*c == ',')
				*c = '\n';
		s->qun = malloc((size_t)s->g * s->nkv * s->d * sizeof(float));
		s->rest = malloc((size_t)s->g * s->nkv * (s->d + 1) * sizeof(float));
		s->head_off = malloc(((size_t)s->nkv + 1) * sizeof(*s->head_off));
		s->ice_layer = malloc((size_t)s->L * sizeof(*s->ice_layer));
		if (!s->qun || !s->rest || !s->head_off || !s->ice_layer)
			goto out_free;
		/* Llama: the engine holds every layer and keeps the first dense ones dense itself;
		 * Gemma: it holds only the sparse (global) layers, none dense */
		for (int l = 0; l < s->L; l++) {
			s->ice_layer[l] = !m->gemma ? l : s->sparse[l] ? s->ice_L : -1;
			if (s->ice_layer[l] >= 0)
				s->ice_L++;
		}
		s->ice_dense = m->gemma ? 0 : cfg->dense;
		if (!s->ice_L) {
			err = -EINVAL;
			goto out_free;
		}
		err = cfg->socket ? ice_connect(cfg->socket, &s->ice) :
				    ice_open_embedded(conf, &s->ice);
		if (err)
			goto out_free;
	}
#endif
	*ret = s;
	return 0;
out_free:
	sel_free(s);
	return err;
}

#ifdef ICERUN_HAVE_ICECACHE
static int ice_push(struct sel *s, const struct kv *kv, int layer, int from, int to);
#endif

static int dci_read(void *ctx, const struct idx *ix, const uint32_t *pages, uint32_t n,
		    float *blocks, void *scratch)
{
	const struct dci_src *src = ctx;
	uint32_t i, t, fill, pos[IDX_PAGE_CAP], d = idx_dim(ix);
	float x[IDX_MAX_DIM];

	(void)scratch;
	for (i = 0; i < n; i++) {
		float *b = blocks + (size_t)i * d * IDX_PAGE_CAP;

		if (idx_page_tokens(ix, pages[i], pos, &fill, NULL))
			return -EINVAL;
		for (t = 0; t < fill; t++) {
			kv_key(src->kv, src->layer, src->h, P + (int)pos[t], x);
			idx_block_put(b, d, t, x);
		}
	}
	return 0;
}

/* Adds positions [from, to) of one (layer, head) to its DCI-tree (bulk build when empty). */
static int dci_add(struct sel *s, const struct kv *kv, int layer, int h, int from, int to)
{
	struct idx *ix = s->ix[layer * s->nkv + h];
	int t;

	if (to <= from)
		return 0;
	for (t = from; t < to; t++)
		kv_key(kv, layer, h, t, s->keybuf + (size_t)(t - from) * s->d);
	return idx_ntokens(ix) ? idx_insert(ix, s->keybuf, (size_t)(to - from), ICE_DTYPE_F32) :
				 idx_build(ix, s->keybuf, (size_t)(to - from), ICE_DTYPE_F32);
}

/*
 * Fresh trees over the prefix: the sink page and the last P tokens (the window) stay out;
 * tokens enter the tree as they leave the window, as in the engine.
 */
static int dci_begin(struct sel *s, const struct kv *kv, int n0)
{
	struct idx_params ip;
	int l, h, err, end = n0 - P > P ? n0 - P : P;

	idx_params_default(&ip, (uint32_t)s->d);
	for (l = s->c.dense; l < s->L; l++) {
		if (!s->sparse[l])
			continue;
		for (h = 0; h < s->nkv; h++) {
			struct idx **ix = &s->ix[l * s->nkv + h];

			idx_free(*ix);
			*ix = NULL;
			err = idx_new(&ip, ix);
			if (!err) {
				struct dci_src *src = &s->src[l * s->nkv + h];

				*src = (struct dci_src){ kv, l, h };
				idx_set_keys(*ix, &(struct idx_keys){ dci_read, src, 0 });
				err = dci_add(s, kv, l, h, P, end);
			}
			if (err)
				return err;
		}
		s->ix_end[l] = end;
	}
	return 0;
}

/* Quest's pages at length n: the complete ones between the sink page and the window (the last
 * P tokens), i.e. positions [P, quest_end(n)). */
static int quest_end(int n)
{
	int end = (n - P) / P * P;

	return end > P ? end : P;
}

/* Adds every head's complete pages up to length n to layer's positional index. */
static int quest_add(struct sel *s, const struct kv *kv, int layer, int n)
{
	int h, t, from = s->px_end[layer], to = quest_end(n), err;

	if (to <= from)
		return 0;
	for (h = 0; h < s->nkv; h++) {
		for (t = from; t < to; t++)
			kv_key(kv, layer, h, t, s->keybuf + (size_t)(t - from) * s->d);
		err = posidx_append(s->px[layer * s->nkv + h], s->keybuf, (size_t)(to - from),
				    ICE_DTYPE_F32);
		if (err)
			return err;
	}
	s->px_end[layer] = to;
	return 0;
}

static int quest_begin(struct sel *s, const struct kv *kv, int n0)
{
	int l, h, err;

	for (l = s->c.dense; l < s->L; l++) {
		if (!s->sparse[l])
			continue;
		for (h = 0; h < s->nkv; h++) {
			struct posidx **px = &s->px[l * s->nkv + h];

			posidx_free(*px);
			*px = NULL;
			err = posidx_new((uint32_t)s->d, px);
			if (err)
				return err;
		}
		s->px_end[l] = P;
		err = quest_add(s, kv, l, n0);
		if (err)
			return err;
	}
	return 0;
}

int sel_begin_len(struct sel *s, const struct kv *kv, int n0, int length)
{
	int l, i;

	s->slot = s->c.nlengths; /* "other" */
	s->att_tokens = s->att_calls = s->att_pages = 0;
	for (i = 0; i < s->c.nlengths; i++)
		if (s->c.lengths[i] == length)
			s->slot = i;
	if (s->c.kind == SEL_QUEST) {
		int err = quest_begin(s, kv, n0);

		if (err)
			return err;
	}
	if (s->c.kind == SEL_DCI) {
		int err = dci_begin(s, kv, n0);

		if (err)
			return err;
	}
#ifdef ICERUN_HAVE_ICECACHE
	if (s->c.kind == SEL_ICECACHE) {
		struct ice_model_shape shape = { (uint32_t)s->ice_L, (uint32_t)(s->g * s->nkv),
						 (uint32_t)s->nkv, (uint32_t)s->d, ICE_DTYPE_F16 };
		struct ice_budget b = { P, P, (uint32_t)(s->c.budget - 2 * P),
					(uint32_t)s->ice_dense };
		int err;

		sel_end(s);
		err = ice_seq_open(s->ice, &shape, &b, &s->seq);
		if (err == -EINVAL)
			fprintf(stderr,
				"icerun: the engine refused a sequence of %u layers, head dim %d; "
				"a page of K and V takes %d bytes, more than a daemon's slot_bytes "
				"may hold (icecached --set slot_bytes=%d)\n",
				shape.layers, s->d, 4 * P * s->d, 4 * P * s->d);
		if (err)
			return err;
		s->seq_open = true;
		s->ice_n = 0;
		for (l = 0; l < s->L; l++) {
			err = s->ice_layer[l] < 0 ? 0 : ice_push(s, kv, l, 0, n0);
			if (err)
				return err;
		}
		s->ice_n = n0;
	}
#endif
	return 0;
}

void sel_end(struct sel *s)
{
#ifdef ICERUN_HAVE_ICECACHE
	if (s->seq_open) {
		char buf[16384];
		int n = ice_stats(s->ice, buf, sizeof(buf));
		static const char *const keep[] = { "engine.store ",
						    "engine.index ",
						    "tier.dram.used_bytes ",
						    "tier.dram.pages ",
						    "tier.dram.capacity_bytes ",
						    "engine.select.p50_ns ",
						    "engine.fetch.p50_ns ",
						    "daemon.clients " };

		/* the occupancy while the sequence is alive: closing frees its pages */
		s->stats[0] = 0;
		for (size_t k = 0; n > 0 && k < sizeof(keep) / sizeof(keep[0]); k++) {
			const char *p = strstr(buf, keep[k]), *e;

			if (!p || (p != buf && p[-1] != '\n'))
				continue;
			e = strchr(p, '\n');
			snprintf(s->stats + strlen(s->stats), sizeof(s->stats) - strlen(s->stats),
				 "%s%.*s", s->stats[0] ? ", " : "",
				 (int)(e ? e - p : (long)strlen(p)), p);
		}
		ice_seq_close(s->ice, s->seq);
		s->seq_open = false;
	}
#else
	(void)s;
#endif
}

/* Top-k of x[0..n) by value, indexes into out (best first); partial selection, k small. */
static int topk_idx(const float *x, const int *ids, int n, int k, int *out, unsigned char *used)
{
	int i, j, best;

	if (n <= 0)
		return 0;
	if (k > n)
		k = n;
	memset(used, 0, (size_t)n);
	for (j = 0; j < k; j++) {
		best = -1;
		for (i = 0; i < n; i++)
			if (!used[i] && (best < 0 || x[i] > x[best]))
				best = i;
		used[best] = 1;
		out[j] = ids[best];
	}
	return k;
}

/* Sum of the k largest of x[0..n) (x is clobbered). */
static double topk_sum(float *x, int n, int k)
{
	double s = 0;
	int i;

	if (k > 0 && k < n)
		idx_top_k(x, (size_t)n, (size_t)k);
	for (i = 0; i < k && i < n; i++)
		s += x[i];
	return s;
}

/* Full softmax of the g heads of KV head h into s->p (rows of n). */
static void full_probs(struct sel *s, const struct kv *kv, int layer, int h, const float *qg, int n)
{
	int hh, j;

	for (hh = 0; hh < s->g; hh++) {
		float *pr = s->p + (size_t)hh * s->c.cap, mx = -INFINITY, sum = 0;

		model_scores(kv, layer, h, qg + (size_t)hh * s->d, n, pr);
		for (j = 0; j < n; j++)
			mx = pr[j] > mx ? pr[j] : mx;
		sum = mm_softmax_exp(pr, n, mx);
		for (j = 0; j < n; j++)
			pr[j] /= sum;
		s->pmax[hh] = mx;
		s->psum[hh] = sum;
	}
}

static void account(struct sel *s, int layer, int n, double mass_g, int nsel)
{
	double orc = 0;
	int hh;

	for (hh = 0; hh < s->g; hh++) {
		memcpy(s->tmp, s->p + (size_t)hh * s->c.cap, (size_t)n * sizeof(float));
		orc += topk_sum(s->tmp, n, nsel);
	}
	s->att_tokens += nsel;
	s->att_calls++;
	s->msum[(size_t)s->slot * s->L + layer] += mass_g;
	s->osum[(size_t)s->slot * s->L + layer] += orc;
	s->mcnt[(size_t)s->slot * s->L + layer] += s->g;
}

/* IceCache's selection (index/select.h, the engine's defaults) over the head's tree, with its
 * sink and window keys as the rows the group attends anyway. */
static int dci_set(struct sel *s, const struct kv *kv, int layer, int h, const float *qg, int n)
{
	struct idx *ix = s->ix[layer * s->nkv + h];
	/* q carries the softmax's 1/sqrt(d): scale 1 */
	struct select_opts so = { .budget_pages = (uint32_t)(s->c.budget / P - 2),
				  .overfetch = SELECT_OVERFETCH,
				  .scale = 1.0f,
				  .group_merge = 1,
				  .page_mass = 1 };
	struct select_rows att = { s->attk, 2 * P, ICE_DTYPE_F32 };
	struct select_group grp = { qg, (uint32_t)s->g, (uint32_t)s->d, &att, 1 };
	uint32_t pos[IDX_PAGE_CAP], fill;
	int ns = 0, t, j, got, err;

	/* tokens that left the window since the last step join the tree (once per layer) */
	if (h == 0 && s->ix_end[layer] < n - P) {
		for (int hh = 0; hh < s->nkv; hh++)
			if ((err = dci_add(s, kv, layer, hh, s->ix_end[layer], n - P)))
				return err;
		s->ix_end[layer] = n - P;
	}
	for (t = 0; t < P; t++) {
		kv_key(kv, layer, h, t, s->attk + (size_t)t * s->d);
		kv_key(kv, layer, h, n - P + t, s->attk + (size_t)(P + t) * s->d);
	}
	err = buf_grow(&s->ws, &s->ws_cap, select_ws_size(ix, grp.g, &so), 1);
	if (err)
		return err;
	got = select_head(ix, NULL, &so, &grp, s->ws, s->ws_cap, s->hits, s->hmask, NULL);
	if (got < 0)
		return got;
	for (t = 0; t < P; t++)
		s->idx[ns++] = t;
	for (j = 0; j < got; j++) {
		if (idx_page_tokens(ix, s->hits[j].page, pos, &fill, NULL))
			continue;
		s->att_pages++;
		for (t = 0; t < (int)fill; t++)
			if (s->hmask[j] >> t & 1)
				s->idx[ns++] =
					(int32_t)pos[t] + P; /* tree token i is position P + i */
	}
	for (t = n - P; t < n; t++)
		s->idx[ns++] = t;
	return ns;
}

/* Quest: the pages between the sink page and the window with the best Quest bound (posidx:
 * each query's top k, then round-robin over ranks until k distinct pages). */
static int quest_set(struct sel *s, const struct kv *kv, int layer, int h, const float *qg, int n)
{
	struct posidx *px = s->px[layer * s->nkv + h];
	int k = s->c.budget / P - 2, ns = 0, t, j, got = 0, err;

	/* pages completed since the last step join the index (once per layer) */
	if (h == 0 && (err = quest_add(s, kv, layer, n)))
		return err;
	if (posidx_npages(px)) {
		err = buf_grow(&s->ws, &s->ws_cap, posidx_ws_size(px, (uint32_t)s->g, (uint32_t)k),
			       1);
		if (err)
			return err;
		got = posidx_search(px, qg, (uint32_t)s->g, (uint32_t)k, s->ws, s->ws_cap, s->hits);
		if (got < 0)
			return got;
	}
	for (t = 0; t < P; t++)
		s->idx[ns++] = t;
	for (j = 0; j < got; j++)
		for (t = 0; t < P; t++)
			s->idx[ns++] = (int32_t)(s->hits[j].page + 1) * P + t; /* page i + 1 */
	for (t = n - P; t < n; t++)
		s->idx[ns++] = t;
	return ns;
}

/* Token set of one KV head for the other modes; returns its size. */
static int build_set(struct sel *s, const struct kv *kv, int layer, int h, const float *qg, int n)
{
	int B = s->c.budget, ns = 0, t, c, hh, k, ncand, got, j;
	int wstart = n - P, sel_pages[64];
	unsigned char used[4096];

	if (n <= B) {
		for (t = 0; t < n; t++)
			s->idx[ns++] = t;
		return ns;
	}
	if (s->c.kind == SEL_STREAM) {
		for (t = 0; t < P; t++)
			s->idx[ns++] = t;
		for (t = n - (B - P); t < n; t++)
			s->idx[ns++] = t;
		return ns;
	}
	if (s->c.kind == SEL_DCI)
		return dci_set(s, kv, layer, h, qg, n);
	if (s->c.kind == SEL_QUEST)
		return quest_set(s, kv, layer, h, qg, n);
	/* oracle: candidate pages lie wholly between the sink page and the window, ranked by their
	 * attention mass summed over the group */
	ncand = wstart / P - 1;
	k = B / P - 2;
	if (k > 64)
		k = 64;
	for (c = 0; c < ncand; c++)
		s->cand[c] = c + 1;
	got = 0;
	if (ncand > 0 && ncand <= 4096) {
		for (c = 0; c < ncand; c++) {
			float m = 0;

			for (hh = 0; hh < s->g; hh++)
				for (t = 0; t < P; t++)
					m += s->p[(size_t)hh * s->c.cap + (c + 1) * P + t];
			s->pagescore[c] = m;
		}
		got = topk_idx(s->pagescore, s->cand, ncand, k, sel_pages, used);
	}
	for (t = 0; t < P; t++)
		s->idx[ns++] = t;
	for (j = 0; j < got; j++)
		for (t = 0; t < P; t++)
			s->idx[ns++] = sel_pages[j] * P + t;
	for (t = wstart; t < n; t++)
		s->idx[ns++] = t;
	return ns;
}

#ifdef ICERUN_HAVE_ICECACHE
/*
 * Appends tokens [from, to) of one layer, all KV heads, as [kv heads][n][d] float16: the storage
 * a real deployment would use (half the bytes of float32; a SmolLM2 page is then 4 KiB).
 */
static int ice_push(struct sel *s, const struct kv *kv, int layer, int from, int to)
{
	size_t n = (size_t)(to - from), need = (size_t)s->nkv * n * s->d * 2;
	uint16_t *kb, *vb;
	float key[256];
	const float *vr;
	int h, t, i;

	if (n == 0)
		return 0;
	if (buf_grow(&s->kvbuf, &s->kvbuf_cap, need, sizeof(*s->kvbuf)))
		return -ENOMEM;
	kb = s->kvbuf;
	vb = s->kvbuf + (size_t)s->nkv * n * s->d;
	for (h = 0; h < s->nkv; h++)
		for (t = from; t < to; t++) {
			uint16_t *ko = kb + ((size_t)h * n + (t - from)) * s->d;
			uint16_t *vo = vb + ((size_t)h * n + (t - from)) * s->d;

			kv_key(kv, layer, h, t, key);
			vr = kv_vrow(kv, layer, h, t);
			for (i = 0; i < s->d; i++) {
				ko[i] = dtype_f32_to_f16(key[i]);
				vo[i] = dtype_f32_to_f16(vr[i]);
			}
		}
	return ice_append(s->ice, s->seq, (uint32_t)s->ice_layer[layer], (uint32_t)n, kb, vb);
}

static int ice_attend(struct sel *s, const struct kv *kv, int layer, int pos, const float *q,
		      float *out)
{
	int n = pos + 1, l, err, nref, i, h, hh, t;
	size_t pb = 2 * (size_t)P * s->d, need;
	uint32_t elayer = (uint32_t)s->ice_layer[layer];

	/* the new token: every layer the engine holds that the hook skips, then this one */
	if (layer == s->first_sparse && s->ice_n < n) {
		for (l = 0; l < s->L; l++)
			if (s->ice_layer[l] >= 0 && !s->sparse[l] &&
			    (err = ice_push(s, kv, l, s->ice_n, n)))
				return err;
	}
	err = ice_push(s, kv, layer, s->ice_n, n);
	if (err)
		return err;
	if (layer == s->last_sparse)
		s->ice_n = n;
	/* the model folds 1/sqrt(d) into q; the engine takes the query as the model computes it
	 * and applies the scale itself when it weighs a group's queries against each other */
	for (i = 0; i < s->g * s->nkv * s->d; i++)
		s->qun[i] = q[i] * sqrtf((float)s->d);
	/* one round trip per select: s->refs grows only when the engine says it needs more */
	for (size_t want = s->nrefs_cap ? s->nrefs_cap : 64;;) {
		if ((err = buf_grow(&s->refs, &s->nrefs_cap, want, sizeof(*s->refs))))
			return err;
		if (s->c.rest)
			nref = ice_select_rest(s->ice, s->seq, elayer, s->qun, s->refs,
					       s->nrefs_cap, s->rest,
					       (size_t)s->g * s->nkv * (s->d + 1) * sizeof(float),
					       &want);
		else
			nref = ice_select(s->ice, s->seq, elayer, s->qun, s->refs, s->nrefs_cap,
					  &want);
		if (nref != -ENOSPC || want <= s->nrefs_cap)
			break;
	}
	if (nref < 0)
		return nref;
	need = (size_t)nref * pb;
	if ((err = buf_grow(&s->pages, &s->pages_cap, need, sizeof(*s->pages))) ||
	    (err = buf_grow(&s->raw, &s->raw_cap, need, sizeof(*s->raw))))
		return err;
	err = ice_fetch(s->ice, s->seq, elayer, s->refs, (size_t)nref, s->raw,
			need * sizeof(uint16_t));
	if (err)
		return err;
	for (i = 0; i < nref; i++)
		for (t = 0; t < 2 * P * s->d; t++)
			s->pages[(size_t)i * pb + t] = dtype_f16_to_f32(s->raw[(size_t)i * pb + t]);
	/*
	 * Attention over the fetched pages: the kernels' CPU reference. A fetched page is P rows of
	 * K then P of V with zeros past its fill, so as a kern page it holds P rows with those past
	 * the fill and those not in its mask skipped. q stays the model's float32 query, which
	 * carries the 1/sqrt(d) (scale 1); the rest term's log weight is at that scale too.
	 */
	if ((err = buf_grow(&s->kpages, &s->kpages_cap, (size_t)nref, sizeof(*s->kpages))))
		return err;
	for (i = 0; i < nref; i++) {
		/* ice_select groups refs by KV head, in head order */
		if (s->refs[i].kv_head >= s->nkv ||
		    (i && s->refs[i].kv_head < s->refs[i - 1].kv_head))
			return -EIO;
		s->kpages[i] = (struct kern_page){ .slot = (uint32_t)i,
						   .fill = P,
						   .skip = (uint16_t)~s->refs[i].mask };
	}
	for (h = 0, i = 0; h <= s->nkv; h++) {
		while (i < nref && s->refs[i].kv_head < h)
			i++;
		s->head_off[h] = (uint32_t)i;
	}
	err = kern_ref_attn(&(struct kern_attn_args){ .dtype = ICE_DTYPE_F32,
						      .hq = (uint32_t)(s->g * s->nkv),
						      .hkv = (uint32_t)s->nkv,
						      .d = (uint32_t)s->d,
						      .page_cap = P,
						      .scale = 1.0f,
						      .q = q,
						      .out = out,
						      .pool = s->pages,
						      .slot_bytes = pb * sizeof(float),
						      .nslots = (uint32_t)nref,
						      .pages = s->kpages,
						      .head_off = s->head_off,
						      .rest = s->c.rest ? s->rest : NULL });
	if (err)
		return err;
	for (h = 0; h < s->nkv; h++) {
		const float *qg = q + (size_t)h * s->g * s->d;
		int ntok = 0;
		double mass = 0;

		for (i = (int)s->head_off[h]; i < (int)s->head_off[h + 1]; i++)
			ntok += __builtin_popcount(s->refs[i].mask & ((1u << s->refs[i].fill) - 1));
		/* mass: the fetched keys are the cached keys, so exp(q·k - max) / Z of a fetched
		 * row is exactly that token's share of the full softmax */
		full_probs(s, kv, layer, h, qg, n);
		for (hh = 0; hh < s->g; hh++) {
			const float *qh = qg + (size_t)hh * s->d;

			for (i = 0; i < nref; i++) {
				const float *kp = s->pages + (size_t)i * pb;

				if (s->refs[i].kv_head != h)
					continue;
				if (hh == 0 && s->refs[i].kind == ICE_PAGE_RETRIEVED)
					s->att_pages++;
				for (t = 0; t < (int)s->refs[i].fill; t++)
					if (s->refs[i].mask >> t & 1)
						mass += expf(mm_dot(qh, kp + (size_t)t * s->d,
								    s->d) -
							     s->pmax[hh]) /
							s->psum[hh];
			}
		}
		account(s, layer, n, mass, ntok);
	}
	return 0;
}
#endif

int sel_attend(void *ctx, const struct model *m, const struct kv *kv, int layer, int pos,
	       const float *q, float *out)
{
	struct sel *s = ctx;
	int n = pos + 1, h, hh, j, ns;

#ifdef ICERUN_HAVE_ICECACHE
	if (s->c.kind == SEL_ICECACHE)
		return ice_attend(s, kv, layer, pos, q, out);
#endif
	for (h = 0; h < s->nkv; h++) {
		const float *qg = q + (size_t)h * s->g * s->d;
		double mass = 0;

		full_probs(s, kv, layer, h, qg, n);
		ns = build_set(s, kv, layer, h, qg, n);
		if (ns < 0)
			return ns;
		model_attend_set(m, kv, layer, h, s->idx, ns, qg, out + (size_t)h * s->g * s->d,
				 s->sc);
		for (hh = 0; hh < s->g; hh++)
			for (j = 0; j < ns; j++)
				mass += s->p[(size_t)hh * s->c.cap + s->idx[j]];
		account(s, layer, n, mass, ns);
	}
	return 0;
}

double sel_pages(const struct sel *s)
{
	return s->att_calls ? (double)s->att_pages / s->att_calls : 0;
}

const char *sel_stats_text(const struct sel *s)
{
#ifdef ICERUN_HAVE_ICECACHE
	return s->stats;
#else
	(void)s;
	return "";
#endif
}

double sel_attended(const struct sel *s)
{
	return s->att_calls ? (double)s->att_tokens / s->att_calls : 0;
}

int sel_mass(const struct sel *s, int length, struct sel_mass *ret)
{
	int slot = s->c.nlengths, i, l;
	double ms = 0, os = 0;
	long cnt = 0;

	for (i = 0; i < s->c.nlengths; i++)
		if (s->c.lengths[i] == length)
			slot = i;
	for (l = 0; l < s->L; l++) {
		size_t k = (size_t)slot * s->L + l;

		ms += s->msum[k];
		os += s->osum[k];
		cnt += s->mcnt[k];
	}
	if (!cnt)
		return -ENOENT;
	ret->mass = ms / cnt;
	ret->oracle = os / cnt;
	ret->count = cnt;
	ret->nlayers = s->L;
	ret->layer_mass = s->msum + (size_t)slot * s->L;
	ret->layer_oracle = s->osum + (size_t)slot * s->L;
	ret->layer_count = s->mcnt + (size_t)slot * s->L;
	return 0;
}
