/*
 * Engine: see engine.h. Per (sequence, layer, KV head) the state is
 *   sink   the first S tokens (S = sink budget rounded up to pages), attended always, kept here;
 *   window a ring of the last tokens, W..W+P-1 of them once warm (W = window budget rounded up),
 *          kept here;
 *   index  a DCI-tree (index/idx.h) over every token that left the window; its pages (which
 *          only grow) live in the page store (tiers/store.h), keyed {seq, layer, head, page}.
 * When tokens leave the window they are inserted into the index in one batch; the pages the
 * index reports changed are (re)written to the store: the new tokens' rows are appended to the
 * page's stored rows (read back when the page already existed). Select searches the index (the
 * GQA group together) and reports where each page can be read now; fetch reads pages through the
 * store, checksums verified.
 *
 * A group's queries compete for the retrieved pages by the softmax weight a page would add next
 * to what the query attends anyway (its sink and window): a query whose attention already sits
 * there (most heads, most steps) yields its pages to one that looks far back (a retrieval head).
 * Round-robin instead gives every query the same share, so with fewer pages than queries the
 * last queries of a group get none (group_merge = 0 keeps that, for comparisons).
 *
 * The retrieved budget is counted in tokens attended, not pages fetched: select finds overfetch
 * (default 2) times the budget's pages and marks in each ref the budget's best tokens among
 * them, by the same per-query weight (idx_pick_tokens). A semantic page seldom holds sixteen
 * tokens a query needs; its two or three good ones now cost two or three tokens of budget.
 *
 * What is not attended is not ignored when the client asks (select_rest): per-page key and
 * value sums, kept at insert, let every page with no row in the table stand in for its tokens
 * as one softmax term per query head (rest_term), the background a budget otherwise drops.
 */
#include "engine.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "dram.h"
#include "hist.h"
#include "idx.h"
#include "nvme.h"
#include "policy.h"
#include "store.h"

#define P ICE_PAGE_TOKENS
#define SEQ_SLOT_BITS 16
#define BATCH 32u /* pages per store call */
#define MAX_HEAD_DIM 512u /* the API's bound (icecache.h) */
/* Host bytes the index holds per token: its fp32 key copy plus bookkeeping (estimate). */
#define IDX_TOKEN_OVERHEAD 64u

_Static_assert(ICE_PAGE_TOKENS == IDX_PAGE_CAP, "one page size for the API and the index");

struct head_state {
	unsigned char *sink_k, *sink_v;	/* S rows each */
	unsigned char *win_k, *win_v;	/* Wcap rows each, a ring starting at win_start */
	uint32_t win_start, win_n;
	struct idx *ix;
	/* Per index page: the sums of its tokens' keys and values (fp32, d each) and its token
	 * count, kept at insert, so select can stand a page in for its tokens (select_rest). */
	float *ksum, *vsum;
	uint32_t *pcnt;
	uint32_t pcap;
};

struct seq {
	uint32_t id, owner;
	struct engine_params p;
	uint32_t S, W, Wcap, kpages, g;
	size_t es, row;			/* element size, bytes per token row (d * es) */
	enum idx_dtype idt;
	uint64_t bytes;			/* reserved from host_bytes */
	uint64_t pages;			/* index pages over all layers and heads (stats) */
	int broken;			/* an index/store update failed half-way: -errno */
	uint32_t *ntok;			/* per layer */
	uint32_t *sink_n;		/* per layer (same for all heads) */
	struct head_state *hs;		/* [layers][kv_heads] */
	unsigned char *scr;		/* append scratch: evicted rows, page assembly */
	size_t scr_cap;
};

struct engine {
	pthread_mutex_t lock;		/* the table and the generation counters */
	struct engine_opts o;
	struct seq **slot;
	uint32_t *gen;
	uint32_t nseqs;
	uint64_t used;			/* host bytes reserved (atomic) */
	uint64_t seqs_opened, seqs_dropped;
	struct tier *tiers[2];
	unsigned ntiers;
	struct store *store;
	struct policy *pol;		/* with an NVMe tier: watermarks, demotion, promotion */
	struct hist h_append, h_select, h_fetch;
};

size_t engine_dtype_size(uint32_t dtype)
{
	switch (dtype) {
	case ICE_DTYPE_F32:
		return 4;
	case ICE_DTYPE_F16:
	case ICE_DTYPE_BF16:
		return 2;
	default:
		return 0;
	}
}

static int reserve(struct engine *e, uint64_t bytes)
{
	uint64_t now = __atomic_add_fetch(&e->used, bytes, __ATOMIC_RELAXED);

	if (now > e->o.host_bytes) {
		__atomic_sub_fetch(&e->used, bytes, __ATOMIC_RELAXED);
		return -ENOSPC;
	}
	return 0;
}

static void unreserve(struct engine *e, uint64_t bytes)
{
	__atomic_sub_fetch(&e->used, bytes, __ATOMIC_RELAXED);
}

static void engine_close_tiers(struct engine *e)
{
	unsigned i;

	policy_free(e->pol);
	store_close(e->store);
	for (i = 0; i < e->ntiers; i++)
		tier_close(e->tiers[i]);
}

int engine_new(const struct engine_opts *o, struct engine **ret_e)
{
	struct store_config sc = { 0 };
	struct tier_config tc = { 0 };
	struct engine *e;
	int err;

	if (!o || !ret_e || !o->max_seqs || o->max_seqs > (1u << SEQ_SLOT_BITS) ||
	    !o->slot_bytes || o->slot_bytes % TIER_ALIGN || o->dram_bytes < o->slot_bytes)
		return -EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->o = *o;
	if (e->o.overfetch < 1)
		e->o.overfetch = 1;
	e->o.nvme_path = NULL;
	e->slot = calloc(o->max_seqs, sizeof(*e->slot));
	e->gen = calloc(o->max_seqs, sizeof(*e->gen));
	if (!e->slot || !e->gen) {
		err = -ENOMEM;
		goto out_free;
	}
	tc.capacity_bytes = o->dram_bytes;
	tc.slot_size = o->slot_bytes;
	tc.numa_node = -1;
	err = tier_open(&dram_tier_ops, &tc, &e->tiers[e->ntiers]);
	if (err)
		goto out_free;
	e->ntiers++;
	if (o->nvme_path && o->nvme_path[0]) {
		tc.capacity_bytes = o->nvme_bytes;
		tc.path = o->nvme_path;
		err = tier_open(&nvme_tier_ops, &tc, &e->tiers[e->ntiers]);
		if (err)
			goto out_tiers;
		e->ntiers++;
	}
	sc.slot_size = o->slot_bytes;
	err = store_open(&sc, e->tiers, e->ntiers, &e->store);
	if (err)
		goto out_tiers;
	if (e->ntiers > 1) {
		struct policy_config pc = { .fast = 0, .slow = 1 };

		err = policy_new(e->store, &pc, &e->pol);
		if (err)
			goto out_tiers;
	}
	pthread_mutex_init(&e->lock, NULL);
	hist_init(&e->h_append);
	hist_init(&e->h_select);
	hist_init(&e->h_fetch);
	*ret_e = e;
	return 0;
out_tiers:
	engine_close_tiers(e);
out_free:
	free(e->slot);
	free(e->gen);
	free(e);
	return err;
}

static void seq_free(struct engine *e, struct seq *s)
{
	uint32_t i, nh;

	if (!s)
		return;
	nh = s->hs ? s->p.shape.layers * s->p.shape.kv_heads : 0;
	for (i = 0; i < nh; i++) {
		struct head_state *h = &s->hs[i];

		free(h->sink_k);
		free(h->sink_v);
		free(h->win_k);
		free(h->win_v);
		free(h->ksum);
		free(h->vsum);
		free(h->pcnt);
		idx_free(h->ix);
	}
	store_drop_seq(e->store, s->id);
	unreserve(e, s->bytes);
	free(s->scr);
	free(s->hs);
	free(s->ntok);
	free(s->sink_n);
	free(s);
}

void engine_free(struct engine *e)
{
	uint32_t i;

	if (!e)
		return;
	for (i = 0; i < e->o.max_seqs; i++)
		seq_free(e, e->slot[i]);
	engine_close_tiers(e);
	pthread_mutex_destroy(&e->lock);
	free(e->slot);
	free(e->gen);
	free(e);
}

static int check_params(const struct engine *e, const struct engine_params *p)
{
	const struct ice_model_shape *s = &p->shape;
	const struct ice_budget *b = &p->budget;

	/* head_dim: the index scores 16 lanes at a time; GQA groups: the index searches at most
	 * IDX_MAX_GROUP queries together; a page must fit a store slot. */
	if (!s->layers || s->layers > 1024 || !s->kv_heads || s->kv_heads > 64 || !s->q_heads ||
	    s->q_heads > 256 || s->q_heads % s->kv_heads || s->q_heads / s->kv_heads > IDX_MAX_GROUP ||
	    s->head_dim < 16 || s->head_dim > MAX_HEAD_DIM || s->head_dim % 16 ||
	    !engine_dtype_size(s->dtype))
		return -EINVAL;
	if (2ull * P * s->head_dim * engine_dtype_size(s->dtype) > e->o.slot_bytes)
		return -EINVAL;
	if (b->sink_tokens > 4096 || b->window_tokens > 4096 || b->retrieved_tokens > 16384 ||
	    b->dense_layers > s->layers)
		return -EINVAL;
	return 0;
}

static uint32_t round_pages(uint32_t t)
{
	return (t + P - 1) / P * P;
}

int engine_seq_open(struct engine *e, uint32_t owner, const struct engine_params *p,
		    uint32_t *ret_id)
{
	struct seq *s;
	uint32_t i, nh;
	uint64_t base;
	int err;

	if (!e || !p || !ret_id)
		return -EINVAL;
	err = check_params(e, p);
	if (err)
		return err;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->owner = owner;
	s->p = *p;
	s->S = round_pages(p->budget.sink_tokens);
	s->W = round_pages(p->budget.window_tokens);
	s->Wcap = s->W + P;
	s->kpages = p->budget.retrieved_tokens / P;
	s->g = p->shape.q_heads / p->shape.kv_heads;
	s->es = engine_dtype_size(p->shape.dtype);
	s->row = (size_t)p->shape.head_dim * s->es;
	s->idt = p->shape.dtype == ICE_DTYPE_F32 ? IDX_F32 :
		 p->shape.dtype == ICE_DTYPE_BF16 ? IDX_BF16 : IDX_F16;
	nh = p->shape.layers * p->shape.kv_heads;
	base = sizeof(*s) + (uint64_t)nh * (sizeof(struct head_state) + 4096) +
	       8ull * p->shape.layers;
	err = reserve(e, base);
	if (err) {
		free(s);
		return err;
	}
	s->bytes = base;
	s->hs = calloc(nh, sizeof(*s->hs));
	s->ntok = calloc(p->shape.layers, sizeof(*s->ntok));
	s->sink_n = calloc(p->shape.layers, sizeof(*s->sink_n));
	if (!s->hs || !s->ntok || !s->sink_n) {
		err = -ENOMEM;
		goto out_free;
	}
	pthread_mutex_lock(&e->lock);
	if (e->o.owner_max_seqs) {
		uint32_t mine = 0;

		for (i = 0; i < e->o.max_seqs; i++)
			mine += e->slot[i] && e->slot[i]->owner == owner;
		if (mine >= e->o.owner_max_seqs) {
			pthread_mutex_unlock(&e->lock);
			err = -EDQUOT;
			goto out_free;
		}
	}
	for (i = 0; i < e->o.max_seqs; i++)
		if (!e->slot[i])
			break;
	if (i == e->o.max_seqs) {
		pthread_mutex_unlock(&e->lock);
		err = -EMFILE;
		goto out_free;
	}
	/* Generation in the high bits: a stale handle never reaches a reused slot. Never 0, so a
	 * zeroed entry does not name a live sequence. */
	e->gen[i] = (e->gen[i] + 1) & 0xffff;
	if (!e->gen[i])
		e->gen[i] = 1;
	s->id = (e->gen[i] << SEQ_SLOT_BITS) | i;
	e->slot[i] = s;
	e->nseqs++;
	e->seqs_opened++;
	pthread_mutex_unlock(&e->lock);
	*ret_id = s->id;
	return 0;
out_free:
	s->id = UINT32_MAX; /* names no store pages */
	seq_free(e, s);
	return err;
}

/* The owner's thread is the only one that mutates or frees its sequences, so the pointer stays
 * valid after the lock is released. */
static struct seq *seq_get(struct engine *e, uint32_t owner, uint32_t id)
{
	uint32_t i = id & ((1u << SEQ_SLOT_BITS) - 1);
	struct seq *s = NULL;

	if (!e || i >= e->o.max_seqs)
		return NULL;
	pthread_mutex_lock(&e->lock);
	if (e->slot[i] && e->slot[i]->id == id && e->slot[i]->owner == owner)
		s = e->slot[i];
	pthread_mutex_unlock(&e->lock);
	return s;
}

int engine_seq_drop(struct engine *e, uint32_t owner, uint32_t id)
{
	uint32_t i = id & ((1u << SEQ_SLOT_BITS) - 1);
	struct seq *s = NULL;

	if (!e || i >= e->o.max_seqs)
		return -ENOENT;
	pthread_mutex_lock(&e->lock);
	if (e->slot[i] && e->slot[i]->id == id && e->slot[i]->owner == owner) {
		s = e->slot[i];
		e->slot[i] = NULL;
		e->nseqs--;
		e->seqs_dropped++;
	}
	pthread_mutex_unlock(&e->lock);
	if (!s)
		return -ENOENT;
	seq_free(e, s);
	return 0;
}

int engine_drop_owner(struct engine *e, uint32_t owner)
{
	uint32_t i;
	int n = 0;

	if (!e)
		return -EINVAL;
	for (i = 0; i < e->o.max_seqs; i++) {
		struct seq *s = NULL;

		pthread_mutex_lock(&e->lock);
		if (e->slot[i] && e->slot[i]->owner == owner) {
			s = e->slot[i];
			e->slot[i] = NULL;
			e->nseqs--;
			e->seqs_dropped++;
		}
		pthread_mutex_unlock(&e->lock);
		if (s) {
			seq_free(e, s);
			n++;
		}
	}
	return n;
}

int engine_append_bytes(struct engine *e, uint32_t owner, uint32_t id, uint32_t n,
			size_t *ret_bytes)
{
	struct seq *s = seq_get(e, owner, id);

	if (!s)
		return -ENOENT;
	if (!n || n > (1u << 24))
		return -EINVAL;
	*ret_bytes = (size_t)s->p.shape.kv_heads * n * s->row;
	return 0;
}

int engine_page_bytes(struct engine *e, uint32_t owner, uint32_t id, size_t *ret_bytes)
{
	struct seq *s = seq_get(e, owner, id);

	if (!s)
		return -ENOENT;
	*ret_bytes = 2 * P * s->row;
	return 0;
}

/* ---- append ---- */

static int layer_buffers(struct engine *e, struct seq *s, uint32_t layer)
{
	uint32_t h, hk = s->p.shape.kv_heads;
	struct head_state *hs = &s->hs[(size_t)layer * hk];
	struct idx_params ip;
	uint64_t bytes;
	int err;

	if (hs[0].win_k)
		return 0;
	bytes = (uint64_t)hk * 2 * (s->S + s->Wcap) * s->row;
	err = reserve(e, bytes);
	if (err)
		return err;
	/* A layer's buffers and indexes come with its first tokens: opening a sequence of a large
	 * model costs nothing until it is used. */
	idx_params_default(&ip, s->p.shape.head_dim);
	for (h = 0; h < hk; h++) {
		/* A seed per head, so heads do not share projections by accident. */
		ip.seed = 0x1ce0000ull + (uint64_t)layer * hk + h;
		if (idx_new(&ip, &hs[h].ix))
			goto out_free;
		hs[h].sink_k = s->S ? malloc(s->S * s->row) : NULL;
		hs[h].sink_v = s->S ? malloc(s->S * s->row) : NULL;
		hs[h].win_k = malloc(s->Wcap * s->row);
		hs[h].win_v = malloc(s->Wcap * s->row);
		if ((s->S && (!hs[h].sink_k || !hs[h].sink_v)) || !hs[h].win_k || !hs[h].win_v)
			goto out_free;
	}
	s->bytes += bytes;
	return 0;
out_free:
	for (h = 0; h < hk; h++) {
		free(hs[h].sink_k);
		free(hs[h].sink_v);
		free(hs[h].win_k);
		free(hs[h].win_v);
		idx_free(hs[h].ix);
		hs[h].sink_k = hs[h].sink_v = hs[h].win_k = hs[h].win_v = NULL;
		hs[h].ix = NULL;
	}
	unreserve(e, bytes);
	return -ENOMEM;
}

static int scratch(struct seq *s, size_t bytes)
{
	void *b;

	if (s->scr_cap >= bytes)
		return 0;
	b = realloc(s->scr, bytes);
	if (!b)
		return -ENOMEM;
	s->scr = b;
	s->scr_cap = bytes;
	return 0;
}

static int store_read(struct engine *e, struct store_page *pg, unsigned n)
{
	return e->pol ? policy_get(e->pol, pg, n) : store_get(e->store, pg, n);
}

static int store_write(struct engine *e, struct store_page *pg, unsigned n)
{
	return e->pol ? policy_put(e->pol, pg, n) : store_put(e->store, pg, n, 0);
}

/* Room for page sums of pages [0, np). */
static int sums_grow(struct head_state *st, uint32_t np, uint32_t d)
{
	uint32_t cap = st->pcap ? st->pcap : 64;
	float *k, *v;
	uint32_t *c;

	if (np <= st->pcap)
		return 0;
	while (cap < np)
		cap *= 2;
	k = realloc(st->ksum, (size_t)cap * d * sizeof(float));
	if (k)
		st->ksum = k;
	v = realloc(st->vsum, (size_t)cap * d * sizeof(float));
	if (v)
		st->vsum = v;
	c = realloc(st->pcnt, (size_t)cap * sizeof(uint32_t));
	if (c)
		st->pcnt = c;
	if (!k || !v || !c)
		return -ENOMEM;
	memset(st->ksum + (size_t)st->pcap * d, 0, (size_t)(cap - st->pcap) * d * sizeof(float));
	memset(st->vsum + (size_t)st->pcap * d, 0, (size_t)(cap - st->pcap) * d * sizeof(float));
	memset(st->pcnt + st->pcap, 0, (size_t)(cap - st->pcap) * sizeof(uint32_t));
	st->pcap = cap;
	return 0;
}

/* Adds one token's K and V rows (storage dtype) to page pg's sums. */
static void sums_add(const struct seq *s, struct head_state *st, uint32_t pg,
		     const unsigned char *kr, const unsigned char *vr)
{
	uint32_t d = s->p.shape.head_dim, i;
	float kf[MAX_HEAD_DIM], vf[MAX_HEAD_DIM];
	float *ks = st->ksum + (size_t)pg * d, *vs = st->vsum + (size_t)pg * d;

	idx_to_f32(kr, s->idt, d, kf);
	idx_to_f32(vr, s->idt, d, vf);
	for (i = 0; i < d; i++) {
		ks[i] += kf[i];
		vs[i] += vf[i];
	}
	st->pcnt[pg]++;
}

/*
 * Inserts n evicted tokens (rows ek/ev, storage dtype) into head h's index and rewrites every
 * page it reports changed: stored rows (read back) + the new tokens' rows. Pages only grow and
 * tokens are appended to a page's list, so a page's first old-fill tokens are the stored rows.
 */
static int index_tokens(struct engine *e, struct seq *s, uint32_t layer, uint32_t h,
			const unsigned char *ek, const unsigned char *ev, uint32_t n,
			unsigned char *pbuf)
{
	struct head_state *st = &s->hs[(size_t)layer * s->p.shape.kv_heads + h];
	struct store_page pg[BATCH];
	uint32_t ids[BATCH], pos[P], first, fill, ver, t;
	size_t nd, i, slot = e->o.slot_bytes;
	int err;

	first = (uint32_t)idx_ntokens(st->ix);
	err = first ? idx_insert(st->ix, ek, n, s->idt) : idx_build(st->ix, ek, n, s->idt);
	if (err)
		return err;
	err = sums_grow(st, (uint32_t)idx_npages(st->ix), s->p.shape.head_dim);
	if (err)
		return err;
	do {
		nd = idx_take_dirty(st->ix, ids, BATCH);
		for (i = 0; i < nd; i++) {
			struct store_page_info info;
			unsigned char *b = pbuf + i * slot;
			uint32_t old = 0;

			pg[i] = (struct store_page){ .key = { s->id, layer, h, ids[i] } };
			err = idx_page_tokens(st->ix, ids[i], pos, &fill, &ver);
			if (err)
				return err;
			if (store_lookup(e->store, &pg[i].key, &info) == 0) {
				old = info.fill;
				pg[i].buf = b;
				pg[i].len = (uint32_t)slot;
				err = store_read(e, &pg[i], 1);
				if (err)
					return err;
				if (pg[i].fill != old || old > fill)
					return -EIO;
				/* V rows move right to make room for the new K rows. */
				memmove(b + (size_t)fill * s->row, b + (size_t)old * s->row,
					(size_t)old * s->row);
			}
			for (t = 0; t < fill; t++) {
				uint32_t r = pos[t] - first;

				/* The contract, checked: old tokens first, then this batch's. */
				if ((t < old) != (pos[t] < first) || (t >= old && r >= n))
					return -EIO;
				if (t < old)
					continue;
				memcpy(b + (size_t)t * s->row, ek + (size_t)r * s->row, s->row);
				memcpy(b + (size_t)(fill + t) * s->row, ev + (size_t)r * s->row, s->row);
				sums_add(s, st, ids[i], ek + (size_t)r * s->row, ev + (size_t)r * s->row);
			}
			pg[i].buf = b;
			pg[i].len = (uint32_t)(2 * fill * s->row);
			pg[i].fill = fill;
			pg[i].version = ver;
		}
		if (nd) {
			err = store_write(e, pg, (unsigned)nd);
			if (err)
				return err;
		}
	} while (nd == BATCH);
	return 0;
}

int engine_append(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer, uint32_t n,
		  const void *k, const void *v)
{
	struct seq *s = seq_get(e, owner, id);
	uint64_t t0 = clock_now_ns(), bytes;
	uint32_t hk, h, d, tosink, towin, w, evict, t, x, etok;
	unsigned char *ek, *ev, *pbuf;
	struct head_state *hs;
	uint64_t pages = 0;
	int err;

	if (!s)
		return -ENOENT;
	if (s->broken)
		return -EIO;
	if (layer >= s->p.shape.layers || !n || n > (1u << 24) || !k || !v)
		return -EINVAL;
	hk = s->p.shape.kv_heads;
	d = s->p.shape.head_dim;
	hs = &s->hs[(size_t)layer * hk];
	err = layer_buffers(e, s, layer);
	if (err)
		return err;
	/* How many tokens leave the window: the same for every head of the layer. Everything that
	 * can be refused (memory, store space) is checked before any state changes. */
	tosink = s->sink_n[layer] < s->S ? s->S - s->sink_n[layer] : 0;
	if (tosink > n)
		tosink = n;
	towin = n - tosink;
	w = hs[0].win_n + towin;
	evict = 0;
	while (w >= s->Wcap) {
		w -= P;
		evict++;
	}
	etok = evict * P;
	/* Per token: the index's fp32 key and overhead, plus its share of the page sums (2 d
	 * floats and a count per page; counted as if pages held 4 tokens, which covers the
	 * arrays' doubling: the index fills pages to ~14). */
	bytes = (uint64_t)hk * etok * ((uint64_t)d * sizeof(float) + IDX_TOKEN_OVERHEAD +
				       (2 * (uint64_t)d * sizeof(float) + sizeof(uint32_t)) / 4);
	if (etok) {
		/* Without a slower tier to demote to, the DRAM tier must have room for what this
		 * append creates, or it fails half-way and the sequence is lost (-EIO). The index
		 * fills pages to ~14-15 tokens on average (docs/INDEX.md); twice the full-page
		 * count plus one batch of rewritten pages is the margin asked for. */
		if (!e->pol && tier_free_slots(e->tiers[0]) < (uint64_t)hk * 2 * evict + BATCH)
			return -ENOSPC;
		err = reserve(e, bytes);
		if (err)
			return err;
		err = scratch(s, 2 * (size_t)etok * s->row + BATCH * e->o.slot_bytes);
		if (err) {
			unreserve(e, bytes);
			return err;
		}
		s->bytes += bytes;
	}
	ek = s->scr;
	ev = ek + (size_t)etok * s->row;
	pbuf = ev + (size_t)etok * s->row;
	for (h = 0; h < hk; h++) {
		struct head_state *st = &hs[h];
		const unsigned char *kh = (const unsigned char *)k + (size_t)h * n * s->row;
		const unsigned char *vh = (const unsigned char *)v + (size_t)h * n * s->row;
		uint32_t sn = s->sink_n[layer], ne = 0;

		for (t = 0; t < tosink; t++, sn++) {
			memcpy(st->sink_k + (size_t)sn * s->row, kh + (size_t)t * s->row, s->row);
			memcpy(st->sink_v + (size_t)sn * s->row, vh + (size_t)t * s->row, s->row);
		}
		for (; t < n; t++) {
			uint32_t at = (st->win_start + st->win_n) % s->Wcap;

			memcpy(st->win_k + (size_t)at * s->row, kh + (size_t)t * s->row, s->row);
			memcpy(st->win_v + (size_t)at * s->row, vh + (size_t)t * s->row, s->row);
			st->win_n++;
			if (st->win_n < s->Wcap)
				continue;
			/* The oldest page's worth leaves the window for the index. */
			for (x = 0; x < P; x++, ne++) {
				uint32_t r = (st->win_start + x) % s->Wcap;

				memcpy(ek + (size_t)ne * s->row, st->win_k + (size_t)r * s->row, s->row);
				memcpy(ev + (size_t)ne * s->row, st->win_v + (size_t)r * s->row, s->row);
			}
			st->win_start = (st->win_start + P) % s->Wcap;
			st->win_n -= P;
		}
		if (ne) {
			err = index_tokens(e, s, layer, h, ek, ev, ne, pbuf);
			if (err) {
				/* The index and the store no longer agree for this head: the sequence
				 * cannot be trusted any more. Its owner gets -EIO and should drop it. */
				s->broken = err;
				return err;
			}
		}
	}
	s->sink_n[layer] += tosink;
	s->ntok[layer] += n;
	for (h = 0; h < hk * s->p.shape.layers; h++)
		pages += s->hs[h].ix ? idx_npages(s->hs[h].ix) : 0;
	__atomic_store_n(&s->pages, pages, __ATOMIC_RELAXED);
	hist_add(&e->h_append, clock_now_ns() - t0);
	return 0;
}

/* ---- select ---- */

static uint32_t sink_pages(const struct seq *s, uint32_t layer)
{
	return (s->sink_n[layer] + P - 1) / P;
}

static uint32_t win_pages(const struct seq *s, uint32_t layer)
{
	return (s->hs[(size_t)layer * s->p.shape.kv_heads].win_n + P - 1) / P;
}

/* Pages in a head's index (0 before the layer's first tokens). */
static uint32_t head_pages(const struct head_state *st)
{
	return st->ix ? (uint32_t)idx_npages(st->ix) : 0;
}

/* Pages searched for a sparse layer: the budget's pages times overfetch (tokens are then
 * chosen among them). */
static uint32_t search_pages(const struct engine *e, const struct seq *s)
{
	return s->kpages * e->o.overfetch;
}

static uint32_t ret_pages(const struct engine *e, const struct seq *s, uint32_t layer, uint32_t h)
{
	uint32_t np = head_pages(&s->hs[(size_t)layer * s->p.shape.kv_heads + h]);

	if (layer < s->p.budget.dense_layers)
		return np;
	return np < search_pages(e, s) ? np : search_pages(e, s);
}

static size_t table_size(const struct engine *e, const struct seq *s, uint32_t layer)
{
	size_t n = 0;
	uint32_t h;

	for (h = 0; h < s->p.shape.kv_heads; h++)
		n += sink_pages(s, layer) + ret_pages(e, s, layer, h) + win_pages(s, layer);
	return n;
}

int engine_select_cap(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer)
{
	struct seq *s = seq_get(e, owner, id);

	if (!s)
		return -ENOENT;
	if (s->broken)
		return -EIO;
	if (layer >= s->p.shape.layers)
		return -EINVAL;
	return (int)table_size(e, s, layer);
}

static int ws_reserve(struct engine_ws *ws, size_t bytes)
{
	void *b;

	if (ws->cap >= bytes)
		return 0;
	b = realloc(ws->buf, bytes);
	if (!b)
		return -ENOMEM;
	ws->buf = b;
	ws->cap = bytes;
	return 0;
}

void engine_ws_done(struct engine_ws *ws)
{
	if (!ws)
		return;
	free(ws->buf);
	ws->buf = NULL;
	ws->cap = 0;
}

/* Row t of what head st attends besides retrieved pages: its sink, then its window. */
static const unsigned char *attended_row(const struct seq *s, const struct head_state *st,
					 uint32_t ns, uint32_t t)
{
	return t < ns ? st->sink_k + (size_t)t * s->row :
			st->win_k + (size_t)((st->win_start + t - ns) % s->Wcap) * s->row;
}

/*
 * bias[j] = sqrt(d) * logsumexp(q_j.k / sqrt(d)) over head st's sink and window tokens: a page
 * whose score is b adds weight exp((b - bias[j]) / sqrt(d)) relative to them. One pass: each
 * row is converted once and feeds every query's running log-sum-exp. Returns false when the
 * head has no such tokens yet (nothing to calibrate against) or a sum overflows.
 */
static bool group_bias(const struct seq *s, const struct head_state *st, uint32_t layer,
		       const float *qg, float *bias)
{
	uint32_t d = s->p.shape.head_dim, dt = s->p.shape.dtype, ns = s->sink_n[layer];
	uint32_t n = ns + st->win_n, j, t, i;
	float sc = 1.0f / sqrtf((float)d), m[IDX_MAX_GROUP], sum[IDX_MAX_GROUP];
	float kf[MAX_HEAD_DIM];

	if (!n)
		return false;
	for (j = 0; j < s->g; j++) {
		m[j] = -INFINITY;
		sum[j] = 0;
	}
	for (t = 0; t < n; t++) {
		const unsigned char *r = attended_row(s, st, ns, t);
		const float *k = kf;

		if (dt == ICE_DTYPE_F32)
			k = (const float *)(const void *)r;
		else
			idx_to_f32(r, dt == ICE_DTYPE_BF16 ? IDX_BF16 : IDX_F16, d, kf);
		for (j = 0; j < s->g; j++) {
			const float *q = qg + (size_t)j * d;
			float x = 0;

			for (i = 0; i < d; i++)
				x += k[i] * q[i];
			x *= sc;
			if (x > m[j]) {
				sum[j] = sum[j] * expf(m[j] - x) + 1.0f;
				m[j] = x;
			} else {
				sum[j] += expf(x - m[j]);
			}
		}
	}
	for (j = 0; j < s->g; j++) {
		bias[j] = (m[j] + logf(sum[j])) / sc;
		if (!isfinite(bias[j]))
			return false; /* scores beyond float range: fall back to round-robin */
	}
	return true;
}

/* Rows 0..fill-1 of a page. */
static uint16_t full_mask(uint32_t fill)
{
	return (uint16_t)((1u << fill) - 1);
}

/* Where a page can be read now: the fastest tier holding it, and its slot there. */
static void page_where(struct engine *e, const struct store_key *key, struct ice_page_ref *r)
{
	struct store_page_info info;
	unsigned i;

	r->tier = ICE_TIER_DRAM;
	if (store_lookup(e->store, key, &info))
		return;
	for (i = 0; i < e->ntiers; i++) {
		if (!(info.resident & (1u << i)))
			continue;
		r->tier = !strcmp(e->tiers[i]->name, "nvme") ? ICE_TIER_NVME :
			  !strcmp(e->tiers[i]->name, "hbm") ? ICE_TIER_HBM : ICE_TIER_DRAM;
		r->location = info.slot[i] * e->o.slot_bytes;
		return;
	}
}

/*
 * The rest term of one KV head's g queries: every index page not in the table (in[p] == 0)
 * stands in for its tokens as that many copies of their mean key and mean value. For query j,
 * out[j * (d + 1)] = log of the sum over those pages of count * exp(q_j . mean key / sqrt(d))
 * and out[j * (d + 1) + 1 ..] the mean values weighted by those terms; -INFINITY and zeros when
 * no page is left out. One dot product and one axpy per page and query: a sixteenth of scoring
 * every key.
 */
static void rest_term(const struct seq *s, const struct head_state *st, uint32_t np,
		      const unsigned char *in, const float *qg, float *out)
{
	uint32_t d = s->p.shape.head_dim, j, p, i;
	float sc = 1.0f / sqrtf((float)d);

	for (j = 0; j < s->g; j++) {
		const float *q = qg + (size_t)j * d;
		float *o = out + (size_t)j * (d + 1), *acc = o + 1, m = -INFINITY, l = 0;

		memset(acc, 0, d * sizeof(float));
		for (p = 0; p < np; p++) {
			const float *ks = st->ksum + (size_t)p * d, *vs = st->vsum + (size_t)p * d;
			float c = (float)st->pcnt[p], x = 0, w;

			if (in[p] || !st->pcnt[p])
				continue;
			for (i = 0; i < d; i++)
				x += q[i] * ks[i];
			x = x * sc / c + logf(c);
			if (x > m) {
				float r = expf(m - x); /* 0 for the first page */

				l *= r;
				for (i = 0; i < d; i++)
					acc[i] *= r;
				m = x;
			}
			w = expf(x - m);
			l += w;
			w /= c; /* the page's value sum -> its mean */
			for (i = 0; i < d; i++)
				acc[i] += w * vs[i];
		}
		o[0] = l > 0 ? m + logf(l) : -INFINITY;
		for (i = 0; l > 0 && i < d; i++)
			acc[i] /= l;
	}
}

/* The rest term of a head none of whose tokens is left out. */
static void rest_none(const struct seq *s, float *out)
{
	uint32_t d = s->p.shape.head_dim, j;

	for (j = 0; j < s->g; j++) {
		out[(size_t)j * (d + 1)] = -INFINITY;
		memset(out + (size_t)j * (d + 1) + 1, 0, d * sizeof(float));
	}
}

int engine_select(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer, const float *q,
		  size_t q_len, struct ice_page_ref *out, size_t cap, float *rest, size_t rest_len,
		  struct engine_ws *ws)
{
	struct seq *s = seq_get(e, owner, id);
	uint64_t t0 = clock_now_ns();
	uint32_t hk, d, g, h, i, k, sp, wp, n = 0, nkeys = 0, pos[P], kmax, npmax = 0;
	size_t need = 0, wsz, hsz, ksz, msz, psz, sz;
	unsigned char *intab;
	struct store_key *keys;
	struct idx_hit *hits;
	uint16_t *mask;
	void *iws, *tokw;
	int err, got;

	if (!s)
		return -ENOENT;
	if (s->broken)
		return -EIO;
	hk = s->p.shape.kv_heads;
	d = s->p.shape.head_dim;
	g = s->g;
	if (layer >= s->p.shape.layers || !q || !ws ||
	    q_len != (size_t)s->p.shape.q_heads * d * sizeof(float) ||
	    (rest && (rest_len < (size_t)s->p.shape.q_heads * (d + 1) * sizeof(float) ||
		      rest_len >= (size_t)s->p.shape.q_heads * (d + 1) * sizeof(float) + 8)))
		return -EINVAL;
	if (table_size(e, s, layer) > cap)
		return -ENOSPC;
	sp = sink_pages(s, layer);
	wp = win_pages(s, layer);
	for (h = 0; h < hk; h++) {
		k = ret_pages(e, s, layer, h);
		sz = k ? idx_search_ws_size(s->hs[(size_t)layer * hk + h].ix, g, k) : 0;
		if (sz > need)
			need = sz;
		if (head_pages(&s->hs[(size_t)layer * hk + h]) > npmax)
			npmax = head_pages(&s->hs[(size_t)layer * hk + h]);
	}
	/* Workspace: index search | hits | page keys (all heads) | row masks | token weights. */
	kmax = search_pages(e, s);
	wsz = (need + 63) & ~(size_t)63;
	hsz = ((size_t)kmax * sizeof(*hits) + 63) & ~(size_t)63;
	ksz = ((size_t)hk * kmax * sizeof(*keys) + 63) & ~(size_t)63;
	msz = ((size_t)kmax * sizeof(*mask) + 63) & ~(size_t)63;
	psz = (idx_pick_ws_size(kmax) + 63) & ~(size_t)63;
	err = ws_reserve(ws, wsz + hsz + ksz + msz + psz + (rest ? npmax : 0));
	if (err)
		return err;
	iws = ws->buf;
	hits = (struct idx_hit *)(void *)((char *)ws->buf + wsz);
	keys = (struct store_key *)(void *)((char *)ws->buf + wsz + hsz);
	mask = (uint16_t *)(void *)((char *)ws->buf + wsz + hsz + ksz);
	tokw = (char *)ws->buf + wsz + hsz + ksz + msz;
	intab = (unsigned char *)ws->buf + wsz + hsz + ksz + msz + psz;
	for (h = 0; h < hk; h++) {
		const struct head_state *st = &s->hs[(size_t)layer * hk + h];
		uint32_t np = head_pages(st);

		for (i = 0; i < sp; i++) {
			uint32_t fill = s->sink_n[layer] - i * P;

			fill = fill > P ? P : fill;
			out[n++] = (struct ice_page_ref){ .page = i, .kv_head = (uint16_t)h,
				.kind = ICE_PAGE_SINK, .tier = ICE_TIER_DRAM,
				.fill = (uint16_t)fill, .mask = full_mask(fill) };
		}
		if (rest) /* nothing left out, unless the retrieved branch below finds otherwise */
			rest_none(s, rest + (size_t)h * g * (d + 1));
		if (layer < s->p.budget.dense_layers) {
			/* Dense layer: every page, in id order. */
			for (i = 0; i < np; i++) {
				struct store_key key = { s->id, layer, h, i };
				uint32_t fill = 0;

				idx_page_tokens(st->ix, i, pos, &fill, NULL);
				out[n] = (struct ice_page_ref){ .page = i, .kv_head = (uint16_t)h,
					.kind = ICE_PAGE_RETRIEVED, .fill = (uint16_t)fill,
					.mask = full_mask(fill) };
				page_where(e, &key, &out[n++]);
			}
		} else if ((k = ret_pages(e, s, layer, h))) {
			struct idx_search_opts so = { 0 };
			const float *qg = q + (size_t)h * g * d;
			float bias[IDX_MAX_GROUP];
			const float *bp = NULL;

			if (e->o.exact_search)
				so.flags = IDX_SEARCH_ALL; /* every page scored: idx_exact_search's result */
			if (g > 1 && e->o.group_merge && group_bias(s, st, layer, qg, bias))
				so.bias = bp = bias;
			if (e->o.page_mass)
				so.mass_scale = 1.0f / sqrtf((float)d);
			got = idx_search(st->ix, qg, g, k, &so, iws, need, hits);
			if (got < 0)
				return got;
			err = idx_pick_tokens(st->ix, qg, g, bp, hits, (uint32_t)got, s->kpages * P,
					      tokw, idx_pick_ws_size(kmax), mask);
			if (err < 0)
				return err;
			for (i = 0; i < (uint32_t)got; i++) {
				if (!mask[i])
					continue; /* none of its tokens made the budget */
				keys[nkeys] = (struct store_key){ s->id, layer, h, hits[i].page };
				out[n] = (struct ice_page_ref){ .page = hits[i].page,
					.kv_head = (uint16_t)h, .kind = ICE_PAGE_RETRIEVED,
					.fill = (uint16_t)hits[i].fill, .mask = mask[i],
					.score = hits[i].score };
				page_where(e, &keys[nkeys++], &out[n++]);
			}
			if (rest) {
				memset(intab, 0, np);
				for (i = 0; i < (uint32_t)got; i++)
					intab[hits[i].page] = mask[i] != 0;
				rest_term(s, st, np, intab, qg, rest + (size_t)h * g * (d + 1));
			}
		}
		for (i = 0; i < wp; i++) {
			uint32_t fill = st->win_n - i * P;

			fill = fill > P ? P : fill;
			out[n++] = (struct ice_page_ref){ .page = i, .kv_head = (uint16_t)h,
				.kind = ICE_PAGE_WINDOW, .tier = ICE_TIER_DRAM,
				.fill = (uint16_t)fill, .mask = full_mask(fill) };
		}
	}
	/* The heat hook: what was selected now is what placement keeps close. */
	if (nkeys)
		store_touch(e->store, keys, nkeys);
	hist_add(&e->h_select, clock_now_ns() - t0);
	return (int)n;
}

/* ---- fetch ---- */

static int fetch_batch(struct engine *e, struct seq *s, struct store_page *pg, unsigned nb,
		       unsigned char *const *outs)
{
	unsigned i;
	int err;

	err = store_read(e, pg, nb);
	if (err)
		return err;
	for (i = 0; i < nb; i++) {
		size_t rows = (size_t)pg[i].fill * s->row;

		if (pg[i].fill > P || pg[i].len != 2 * rows)
			return -EIO;
		memcpy(outs[i], pg[i].buf, rows);
		memcpy(outs[i] + P * s->row, (unsigned char *)pg[i].buf + rows, rows);
	}
	return 0;
}

int engine_fetch(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer,
		 const struct ice_page_ref *refs, size_t n, void *buf, size_t cap,
		 struct engine_ws *ws)
{
	struct seq *s = seq_get(e, owner, id);
	uint64_t t0 = clock_now_ns();
	struct store_page pg[BATCH];
	unsigned char *outs[BATCH];
	unsigned nb = 0;
	size_t pb, i;
	uint32_t hk, x;
	int err;

	if (!s)
		return -ENOENT;
	if (s->broken)
		return -EIO;
	if (layer >= s->p.shape.layers || (n && (!refs || !buf)) || !ws)
		return -EINVAL;
	hk = s->p.shape.kv_heads;
	pb = 2 * P * s->row;
	if (n > cap / pb)
		return -ENOSPC;
	/* Check every ref before writing anything. */
	for (i = 0; i < n; i++) {
		const struct ice_page_ref *r = &refs[i];
		const struct head_state *st;

		if (r->kv_head >= hk)
			return -EINVAL;
		st = &s->hs[(size_t)layer * hk + r->kv_head];
		if ((r->kind == ICE_PAGE_SINK && r->page >= sink_pages(s, layer)) ||
		    (r->kind == ICE_PAGE_WINDOW && r->page >= (st->win_n + P - 1) / P) ||
		    (r->kind == ICE_PAGE_RETRIEVED && r->page >= head_pages(st)) ||
		    r->kind > ICE_PAGE_WINDOW)
			return -EINVAL;
	}
	err = ws_reserve(ws, BATCH * e->o.slot_bytes);
	if (err)
		return err;
	for (i = 0; i < n; i++) {
		const struct ice_page_ref *r = &refs[i];
		const struct head_state *st = &s->hs[(size_t)layer * hk + r->kv_head];
		unsigned char *ko = (unsigned char *)buf + i * pb, *vo = ko + P * s->row;
		uint32_t fill;

		memset(ko, 0, pb);
		if (r->kind == ICE_PAGE_RETRIEVED) {
			pg[nb] = (struct store_page){ .key = { s->id, layer, r->kv_head, r->page },
				.buf = (unsigned char *)ws->buf + (size_t)nb * e->o.slot_bytes,
				.len = (uint32_t)e->o.slot_bytes };
			outs[nb++] = ko;
			if (nb == BATCH) {
				err = fetch_batch(e, s, pg, nb, outs);
				if (err)
					return err;
				nb = 0;
			}
			continue;
		}
		if (r->kind == ICE_PAGE_SINK) {
			fill = s->sink_n[layer] - r->page * P;
			fill = fill > P ? P : fill;
			memcpy(ko, st->sink_k + (size_t)r->page * P * s->row, fill * s->row);
			memcpy(vo, st->sink_v + (size_t)r->page * P * s->row, fill * s->row);
			continue;
		}
		fill = st->win_n - r->page * P;
		fill = fill > P ? P : fill;
		for (x = 0; x < fill; x++) {
			uint32_t at = (st->win_start + r->page * P + x) % s->Wcap;

			memcpy(ko + (size_t)x * s->row, st->win_k + (size_t)at * s->row, s->row);
			memcpy(vo + (size_t)x * s->row, st->win_v + (size_t)at * s->row, s->row);
		}
	}
	if (nb) {
		err = fetch_batch(e, s, pg, nb, outs);
		if (err)
			return err;
	}
	hist_add(&e->h_fetch, clock_now_ns() - t0);
	return 0;
}

/* ---- stats ---- */

void engine_stats(struct engine *e, struct stats_buf *sb)
{
	uint64_t tokens = 0;
	uint32_t i, nseqs;

	pthread_mutex_lock(&e->lock);
	nseqs = e->nseqs;
	for (i = 0; i < e->o.max_seqs; i++)
		if (e->slot[i])
			tokens += __atomic_load_n(&e->slot[i]->ntok[0], __ATOMIC_RELAXED);
	pthread_mutex_unlock(&e->lock);
	/* store.* then tier.<name>.* for every tier */
	store_stats(e->store, sb);
	if (e->pol)
		policy_stats(e->pol, sb);
	stats_put_str(sb, "engine", "store", e->ntiers > 1 ? "tiers:dram+nvme" : "tiers:dram");
	stats_put_str(sb, "engine", "index", e->o.exact_search ? "dci-tree(exact)" : "dci-tree");
	stats_put_u64(sb, "engine", "host_capacity_bytes", e->o.host_bytes);
	stats_put_u64(sb, "engine", "host_used_bytes", __atomic_load_n(&e->used, __ATOMIC_RELAXED));
	stats_put_u64(sb, "engine", "seqs", nseqs);
	stats_put_u64(sb, "engine", "seqs_max", e->o.max_seqs);
	stats_put_u64(sb, "engine", "seqs_opened", e->seqs_opened);
	stats_put_u64(sb, "engine", "seqs_dropped", e->seqs_dropped);
	stats_put_u64(sb, "engine", "tokens_layer0", tokens);
	stats_put_hist(sb, "engine", "append", &e->h_append);
	stats_put_hist(sb, "engine", "select", &e->h_select);
	stats_put_hist(sb, "engine", "fetch", &e->h_fetch);
}

void engine_seqs(struct engine *e, struct stats_buf *sb)
{
	static const char *const dt[] = { "f32", "f16", "bf16" };
	uint32_t i;

	pthread_mutex_lock(&e->lock);
	for (i = 0; i < e->o.max_seqs; i++) {
		const struct seq *s = e->slot[i];
		char pfx[32];

		if (!s)
			continue;
		snprintf(pfx, sizeof(pfx), "seq.%u", s->id);
		stats_put_u64(sb, pfx, "owner", s->owner);
		stats_put_u64(sb, pfx, "layers", s->p.shape.layers);
		stats_put_u64(sb, pfx, "q_heads", s->p.shape.q_heads);
		stats_put_u64(sb, pfx, "kv_heads", s->p.shape.kv_heads);
		stats_put_u64(sb, pfx, "head_dim", s->p.shape.head_dim);
		stats_put_str(sb, pfx, "dtype", dt[s->p.shape.dtype]);
		stats_put_u64(sb, pfx, "tokens", __atomic_load_n(&s->ntok[0], __ATOMIC_RELAXED));
		stats_put_u64(sb, pfx, "pages", __atomic_load_n(&s->pages, __ATOMIC_RELAXED));
		stats_put_u64(sb, pfx, "bytes", __atomic_load_n(&s->bytes, __ATOMIC_RELAXED));
	}
	pthread_mutex_unlock(&e->lock);
}
