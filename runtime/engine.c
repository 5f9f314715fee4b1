/*
 * Engine: see engine.h. Per (sequence, layer, KV head) the state is
 *   sink   the first S tokens (S = sink budget rounded up to pages), attended always;
 *   window a ring of the last tokens, W..W+P-1 of them once warm (W = window budget rounded up);
 *   pages  full pages that left the window: K/V in the page store, a float32 copy of the keys
 *          in DRAM for scoring.
 * Storage and ranking sit behind two small internal interfaces (pstore_*, pindex_*) so the
 * DCI-tree index and the tiered page store can replace the interim versions here without
 * touching the rest: the interim store keeps pages in DRAM, the interim index is exact (every
 * page scored by its best token, per query head, then the GQA group merged round-robin as the
 * DCI-tree search does).
 */
#include "engine.h"

#include <errno.h>
#include <float.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "hist.h"

#define P ICE_PAGE_TOKENS
#define SEQ_SLOT_BITS 16

struct head_state {
	unsigned char *sink_k, *sink_v;	/* S rows each */
	unsigned char *win_k, *win_v;	/* Wcap rows each, a ring starting at win_start */
	uint32_t win_start, win_n;
	uint32_t npages, pages_cap;
	unsigned char **page;		/* page store (interim): K rows then V rows, P each */
	uint64_t *loc;			/* page location in its tier */
	float *keys;			/* index (interim): npages * P * d float32 keys */
};

struct seq {
	uint32_t id, owner;
	struct engine_params p;
	uint32_t S, W, Wcap, kpages, g;
	size_t es, row;			/* element size, bytes per token row (d * es) */
	uint64_t bytes;			/* reserved from the DRAM budget, all of it */
	uint64_t pages;			/* pages over all heads, for stats */
	uint32_t *ntok;			/* per layer */
	uint32_t *sink_n;		/* per layer (same for all heads) */
	struct head_state *hs;		/* [layers][kv_heads] */
};

struct engine {
	pthread_mutex_t lock;		/* the table and the generation counters */
	struct engine_opts o;
	struct seq **slot;
	uint32_t *gen;
	uint32_t nseqs;
	uint64_t used;			/* all reserved bytes (atomic) */
	uint64_t page_bytes;		/* K/V page bytes (atomic) */
	uint64_t npages;		/* pages (atomic) */
	uint64_t next_loc;		/* allocation offset handed out as a page location */
	uint64_t seqs_opened, seqs_dropped;
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

static float f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
	float f;

	if (exp == 0) {
		/* zero or subnormal: value is man * 2^-24 */
		f = (float)man * (1.0f / 16777216.0f);
		return sign ? -f : f;
	}
	if (exp == 31)
		bits = sign | 0x7f800000u | (man << 13);
	else
		bits = sign | ((exp + 112) << 23) | (man << 13);
	memcpy(&f, &bits, 4);
	return f;
}

static void row_to_f32(float *dst, const unsigned char *src, uint32_t d, uint32_t dtype)
{
	uint32_t i;

	if (dtype == ICE_DTYPE_F32) {
		memcpy(dst, src, (size_t)d * 4);
		return;
	}
	for (i = 0; i < d; i++) {
		uint16_t h;

		memcpy(&h, src + 2 * i, 2);
		if (dtype == ICE_DTYPE_BF16) {
			uint32_t bits = (uint32_t)h << 16;

			memcpy(&dst[i], &bits, 4);
		} else {
			dst[i] = f16_to_f32(h);
		}
	}
}

static int reserve(struct engine *e, uint64_t bytes)
{
	uint64_t now = __atomic_add_fetch(&e->used, bytes, __ATOMIC_RELAXED);

	if (now > e->o.dram_bytes) {
		__atomic_sub_fetch(&e->used, bytes, __ATOMIC_RELAXED);
		return -ENOSPC;
	}
	return 0;
}

static void unreserve(struct engine *e, uint64_t bytes)
{
	__atomic_sub_fetch(&e->used, bytes, __ATOMIC_RELAXED);
}

int engine_new(const struct engine_opts *o, struct engine **ret_e)
{
	struct engine *e;

	if (!o || !ret_e || !o->max_seqs || o->max_seqs > (1u << SEQ_SLOT_BITS))
		return -EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->o = *o;
	e->slot = calloc(o->max_seqs, sizeof(*e->slot));
	e->gen = calloc(o->max_seqs, sizeof(*e->gen));
	if (!e->slot || !e->gen) {
		free(e->slot);
		free(e->gen);
		free(e);
		return -ENOMEM;
	}
	pthread_mutex_init(&e->lock, NULL);
	hist_init(&e->h_append);
	hist_init(&e->h_select);
	hist_init(&e->h_fetch);
	*ret_e = e;
	return 0;
}

static void seq_free(struct engine *e, struct seq *s)
{
	uint32_t i, j, nh;

	if (!s)
		return;
	nh = s->hs ? s->p.shape.layers * s->p.shape.kv_heads : 0;
	for (i = 0; i < nh; i++) {
		struct head_state *h = &s->hs[i];

		free(h->sink_k);
		free(h->sink_v);
		free(h->win_k);
		free(h->win_v);
		for (j = 0; j < h->npages; j++)
			free(h->page[j]);
		free(h->page);
		free(h->loc);
		free(h->keys);
	}
	__atomic_sub_fetch(&e->npages, s->pages, __ATOMIC_RELAXED);
	__atomic_sub_fetch(&e->page_bytes, s->pages * 2 * P * s->row, __ATOMIC_RELAXED);
	unreserve(e, s->bytes);
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
	pthread_mutex_destroy(&e->lock);
	free(e->slot);
	free(e->gen);
	free(e);
}

static int check_params(const struct engine_params *p)
{
	const struct ice_model_shape *s = &p->shape;
	const struct ice_budget *b = &p->budget;

	if (!s->layers || s->layers > 1024 || !s->kv_heads || s->kv_heads > 64 || !s->q_heads ||
	    s->q_heads > 256 || s->q_heads % s->kv_heads || s->head_dim < 8 || s->head_dim > 512 ||
	    s->head_dim % 8 || !engine_dtype_size(s->dtype))
		return -EINVAL;
	if (b->sink_tokens > 4096 || b->window_tokens > 4096 || b->retrieved_tokens > 65536 ||
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
	err = check_params(p);
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
	nh = p->shape.layers * p->shape.kv_heads;
	base = sizeof(*s) + (uint64_t)nh * sizeof(struct head_state) + 8ull * p->shape.layers;
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
		seq_free(e, s);
		return -ENOMEM;
	}
	pthread_mutex_lock(&e->lock);
	for (i = 0; i < e->o.max_seqs; i++)
		if (!e->slot[i])
			break;
	if (i == e->o.max_seqs) {
		pthread_mutex_unlock(&e->lock);
		seq_free(e, s);
		return -EMFILE;
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

/* ---- interim page store: one DRAM block per page (K rows, then V rows) ---- */

static int pstore_alloc(struct engine *e, struct seq *s, unsigned char **ret_page,
			uint64_t *ret_loc)
{
	unsigned char *pg = malloc(2 * P * s->row);

	if (!pg)
		return -ENOMEM;
	*ret_page = pg;
	*ret_loc = __atomic_fetch_add(&e->next_loc, 2 * P * s->row, __ATOMIC_RELAXED);
	return 0;
}

/* ---- append ---- */

static int layer_buffers(struct engine *e, struct seq *s, uint32_t layer)
{
	uint32_t h, hk = s->p.shape.kv_heads;
	struct head_state *hs = &s->hs[(size_t)layer * hk];
	uint64_t bytes;
	int err;

	if (hs[0].win_k)
		return 0;
	bytes = (uint64_t)hk * 2 * (s->S + s->Wcap) * s->row;
	err = reserve(e, bytes);
	if (err)
		return err;
	for (h = 0; h < hk; h++) {
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
		hs[h].sink_k = hs[h].sink_v = hs[h].win_k = hs[h].win_v = NULL;
	}
	unreserve(e, bytes);
	return -ENOMEM;
}

static int grow_pages(struct head_state *h, uint32_t want, uint32_t d)
{
	uint32_t cap = h->pages_cap ? h->pages_cap : 16;
	unsigned char **pg;
	uint64_t *loc;
	float *keys;

	if (want <= h->pages_cap)
		return 0;
	while (cap < want)
		cap *= 2;
	pg = realloc(h->page, cap * sizeof(*pg));
	if (!pg)
		return -ENOMEM;
	h->page = pg;
	loc = realloc(h->loc, cap * sizeof(*loc));
	if (!loc)
		return -ENOMEM;
	h->loc = loc;
	keys = realloc(h->keys, (size_t)cap * P * d * sizeof(float));
	if (!keys)
		return -ENOMEM;
	h->keys = keys;
	h->pages_cap = cap;
	return 0;
}

int engine_append(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer, uint32_t n,
		  const void *k, const void *v)
{
	struct seq *s = seq_get(e, owner, id);
	uint64_t t0 = clock_now_ns(), bytes;
	uint32_t hk, h, d, tosink, towin, w, evict, t, x;
	struct head_state *hs;
	int err;

	if (!s)
		return -ENOENT;
	if (layer >= s->p.shape.layers || !n || n > (1u << 24) || !k || !v)
		return -EINVAL;
	hk = s->p.shape.kv_heads;
	d = s->p.shape.head_dim;
	hs = &s->hs[(size_t)layer * hk];
	err = layer_buffers(e, s, layer);
	if (err)
		return err;
	/* How many pages leave the window: the same for every head of the layer. Reserve their
	 * bytes and grow every array before touching any state, so a failure changes nothing. */
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
	bytes = (uint64_t)hk * evict * (2 * P * s->row + (uint64_t)P * d * sizeof(float) +
					sizeof(void *) + 8);
	if (evict) {
		err = reserve(e, bytes);
		if (err)
			return err;
		for (h = 0; h < hk; h++) {
			err = grow_pages(&hs[h], hs[h].npages + evict, d);
			if (err) {
				unreserve(e, bytes);
				return err;
			}
			for (x = 0; x < evict; x++) {
				err = pstore_alloc(e, s, &hs[h].page[hs[h].npages + x],
						   &hs[h].loc[hs[h].npages + x]);
				if (err) {
					while (x--)
						free(hs[h].page[hs[h].npages + x]);
					while (h--)
						for (x = 0; x < evict; x++)
							free(hs[h].page[hs[h].npages + x]);
					unreserve(e, bytes);
					return err;
				}
			}
		}
		s->bytes += bytes;
	}
	for (h = 0; h < hk; h++) {
		struct head_state *st = &hs[h];
		const unsigned char *kh = (const unsigned char *)k + (size_t)h * n * s->row;
		const unsigned char *vh = (const unsigned char *)v + (size_t)h * n * s->row;
		uint32_t sn = s->sink_n[layer];

		for (t = 0; t < tosink; t++, sn++) {
			memcpy(st->sink_k + (size_t)sn * s->row, kh + (size_t)t * s->row, s->row);
			memcpy(st->sink_v + (size_t)sn * s->row, vh + (size_t)t * s->row, s->row);
		}
		for (; t < n; t++) {
			uint32_t pos = (st->win_start + st->win_n) % s->Wcap;

			memcpy(st->win_k + (size_t)pos * s->row, kh + (size_t)t * s->row, s->row);
			memcpy(st->win_v + (size_t)pos * s->row, vh + (size_t)t * s->row, s->row);
			st->win_n++;
			if (st->win_n == s->Wcap) {
				/* The oldest page's worth leaves the window: store + index. */
				unsigned char *pg = st->page[st->npages];
				float *kf = st->keys + (size_t)st->npages * P * d;

				for (x = 0; x < P; x++) {
					uint32_t r = (st->win_start + x) % s->Wcap;

					memcpy(pg + (size_t)x * s->row, st->win_k + (size_t)r * s->row,
					       s->row);
					memcpy(pg + (size_t)(P + x) * s->row,
					       st->win_v + (size_t)r * s->row, s->row);
					row_to_f32(kf + (size_t)x * d, st->win_k + (size_t)r * s->row, d,
						   s->p.shape.dtype);
				}
				st->npages++;
				st->win_start = (st->win_start + P) % s->Wcap;
				st->win_n -= P;
			}
		}
	}
	s->sink_n[layer] += tosink;
	s->ntok[layer] += n;
	s->pages += (uint64_t)hk * evict;
	__atomic_add_fetch(&e->npages, (uint64_t)hk * evict, __ATOMIC_RELAXED);
	__atomic_add_fetch(&e->page_bytes, (uint64_t)hk * evict * 2 * P * s->row, __ATOMIC_RELAXED);
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

static uint32_t ret_pages(const struct seq *s, uint32_t layer)
{
	uint32_t np = s->hs[(size_t)layer * s->p.shape.kv_heads].npages;

	if (layer < s->p.budget.dense_layers)
		return np;
	return np < s->kpages ? np : s->kpages;
}

int engine_select_cap(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer)
{
	struct seq *s = seq_get(e, owner, id);

	if (!s)
		return -ENOENT;
	if (layer >= s->p.shape.layers)
		return -EINVAL;
	return (int)(s->p.shape.kv_heads *
		     (sink_pages(s, layer) + ret_pages(s, layer) + win_pages(s, layer)));
}

/* d is a multiple of 8 (checked at open). GCC vector extensions: 8 lanes, split into what the
 * target has (two SSE registers, one AVX register), in a fixed order so results do not depend
 * on the machine. */
typedef float v8f __attribute__((vector_size(32)));

static float dot(const float *a, const float *b, uint32_t d)
{
	v8f acc = { 0 }, x, y;
	uint32_t i;

	for (i = 0; i < d; i += 8) {
		memcpy(&x, a + i, sizeof(x));
		memcpy(&y, b + i, sizeof(y));
		acc += x * y;
	}
	return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
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

/*
 * Interim index search for one KV head: per query head the best k pages by best-token score,
 * then the group's rankings merged round-robin into k distinct pages (the DCI-tree contract).
 * score: g * np floats of scratch; top: g * k; seen: np bytes.
 */
static uint32_t pindex_search(const struct head_state *st, const float *q, uint32_t g,
			      uint32_t d, uint32_t k, float *score, uint32_t *top,
			      unsigned char *seen, uint32_t *ret_pages, float *ret_scores)
{
	uint32_t np = st->npages, j, p, t, r, out = 0;

	for (p = 0; p < np; p++) {
		const float *kp = st->keys + (size_t)p * P * d;

		for (j = 0; j < g; j++) {
			float best = -FLT_MAX;

			for (t = 0; t < P; t++) {
				float s = dot(q + (size_t)j * d, kp + (size_t)t * d, d);

				if (s > best)
					best = s;
			}
			score[(size_t)j * np + p] = best;
		}
	}
	for (j = 0; j < g; j++) {
		uint32_t *tj = top + (size_t)j * k, n = 0;
		const float *sj = score + (size_t)j * np;

		/* Insertion into a sorted top-k: k is small next to np. Ties go to the lower id. */
		for (p = 0; p < np; p++) {
			uint32_t at = n < k ? n : k;

			if (n == k && !(sj[p] > sj[tj[k - 1]]))
				continue;
			while (at > 0 && sj[p] > sj[tj[at - 1]]) {
				if (at < k)
					tj[at] = tj[at - 1];
				at--;
			}
			tj[at] = p;
			if (n < k)
				n++;
		}
	}
	memset(seen, 0, np);
	for (r = 0; r < k && out < k; r++)
		for (j = 0; j < g && out < k; j++) {
			p = top[(size_t)j * k + r];
			if (seen[p])
				continue;
			seen[p] = 1;
			ret_pages[out] = p;
			ret_scores[out] = -FLT_MAX;
			for (t = 0; t < g; t++)
				if (score[(size_t)t * np + p] > ret_scores[out])
					ret_scores[out] = score[(size_t)t * np + p];
			out++;
		}
	return out;
}

int engine_select(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer, const float *q,
		  size_t q_len, struct ice_page_ref *out, size_t cap, struct engine_ws *ws)
{
	struct seq *s = seq_get(e, owner, id);
	uint64_t t0 = clock_now_ns();
	uint32_t hk, d, g, h, i, np, k, sp, wp, n = 0;
	size_t need;
	int err;

	if (!s)
		return -ENOENT;
	hk = s->p.shape.kv_heads;
	d = s->p.shape.head_dim;
	g = s->g;
	if (layer >= s->p.shape.layers || !q || !ws ||
	    q_len != (size_t)s->p.shape.q_heads * d * sizeof(float))
		return -EINVAL;
	sp = sink_pages(s, layer);
	wp = win_pages(s, layer);
	k = ret_pages(s, layer);
	if ((size_t)hk * (sp + k + wp) > cap)
		return -ENOSPC;
	np = s->hs[(size_t)layer * hk].npages;
	need = (size_t)g * np * sizeof(float) + (size_t)g * k * sizeof(uint32_t) + np +
	       (size_t)k * (sizeof(uint32_t) + sizeof(float)) + 64;
	err = ws_reserve(ws, need);
	if (err)
		return err;
	for (h = 0; h < hk; h++) {
		const struct head_state *st = &s->hs[(size_t)layer * hk + h];
		float *score = ws->buf;
		uint32_t *top = (uint32_t *)(score + (size_t)g * np);
		uint32_t *rp = top + (size_t)g * k;
		float *rs = (float *)(rp + k);
		unsigned char *seen = (unsigned char *)(rs + k);
		uint32_t got;

		for (i = 0; i < sp; i++) {
			uint32_t fill = s->sink_n[layer] - i * P;

			out[n++] = (struct ice_page_ref){ .page = i, .kv_head = (uint16_t)h,
				.kind = ICE_PAGE_SINK, .tier = ICE_TIER_DRAM,
				.fill = fill > P ? P : fill };
		}
		if (layer < s->p.budget.dense_layers) {
			/* Dense layer: every page, in id order. */
			for (i = 0; i < np; i++)
				out[n++] = (struct ice_page_ref){ .page = i, .kv_head = (uint16_t)h,
					.kind = ICE_PAGE_RETRIEVED, .tier = ICE_TIER_DRAM, .fill = P,
					.location = st->loc[i] };
		} else if (k) {
			got = pindex_search(st, q + (size_t)h * g * d, g, d, k, score, top, seen,
					    rp, rs);
			for (i = 0; i < got; i++)
				out[n++] = (struct ice_page_ref){ .page = rp[i],
					.kv_head = (uint16_t)h, .kind = ICE_PAGE_RETRIEVED,
					.tier = ICE_TIER_DRAM, .fill = P, .score = rs[i],
					.location = st->loc[rp[i]] };
		}
		for (i = 0; i < wp; i++) {
			uint32_t fill = st->win_n - i * P;

			out[n++] = (struct ice_page_ref){ .page = i, .kv_head = (uint16_t)h,
				.kind = ICE_PAGE_WINDOW, .tier = ICE_TIER_DRAM,
				.fill = fill > P ? P : fill };
		}
	}
	hist_add(&e->h_select, clock_now_ns() - t0);
	return (int)n;
}

/* ---- fetch ---- */

int engine_fetch(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer,
		 const struct ice_page_ref *refs, size_t n, void *buf, size_t cap)
{
	struct seq *s = seq_get(e, owner, id);
	uint64_t t0 = clock_now_ns();
	size_t pb, i;
	uint32_t hk, x;

	if (!s)
		return -ENOENT;
	if (layer >= s->p.shape.layers || (n && (!refs || !buf)))
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
		    (r->kind == ICE_PAGE_RETRIEVED && r->page >= st->npages) ||
		    r->kind > ICE_PAGE_WINDOW)
			return -EINVAL;
	}
	for (i = 0; i < n; i++) {
		const struct ice_page_ref *r = &refs[i];
		const struct head_state *st = &s->hs[(size_t)layer * hk + r->kv_head];
		unsigned char *ko = (unsigned char *)buf + i * pb, *vo = ko + P * s->row;
		uint32_t fill;

		memset(ko, 0, pb);
		if (r->kind == ICE_PAGE_RETRIEVED) {
			memcpy(ko, st->page[r->page], pb);
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
			uint32_t pos = (st->win_start + r->page * P + x) % s->Wcap;

			memcpy(ko + (size_t)x * s->row, st->win_k + (size_t)pos * s->row, s->row);
			memcpy(vo + (size_t)x * s->row, st->win_v + (size_t)pos * s->row, s->row);
		}
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
	stats_put_u64(sb, "tier.dram", "capacity_bytes", e->o.dram_bytes);
	stats_put_u64(sb, "tier.dram", "used_bytes", __atomic_load_n(&e->used, __ATOMIC_RELAXED));
	stats_put_u64(sb, "tier.dram", "page_bytes",
		      __atomic_load_n(&e->page_bytes, __ATOMIC_RELAXED));
	stats_put_u64(sb, "tier.dram", "pages", __atomic_load_n(&e->npages, __ATOMIC_RELAXED));
	stats_put_str(sb, "engine", "store", "interim-dram");
	stats_put_str(sb, "engine", "index", "interim-exact");
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
