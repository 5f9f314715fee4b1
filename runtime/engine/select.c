/*
 * Select: the page table one decode step attends for one layer, per KV head its sink pages,
 * retrieved pages and window pages, each with the rows to attend (mask). Which pages and rows
 * are retrieved, and the rest term for the others, is index/select.h's select_head (the group
 * merge, overfetch and rest term are explained there); this file assembles the table.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "engine_impl.h"

int engine_page_keys(void *ctx, const struct idx *ix, const uint32_t *pages, uint32_t n,
		     float *blocks, void *scratch)
{
	const struct page_src *ps = ctx;
	const struct seq *s = ps->s;
	size_t slot = ps->e->o.slot_bytes, blk = (size_t)s->p.shape.head_dim * IDX_PAGE_CAP;
	struct store_page pg[IDX_KEYS_BATCH];
	float x[MAX_HEAD_DIM];
	uint32_t i, t, fill, d = s->p.shape.head_dim;
	int err;

	if (n > IDX_KEYS_BATCH)
		return -EINVAL;
	for (i = 0; i < n; i++)
		pg[i] = (struct store_page){ .key = { s->id, ps->layer, ps->head, pages[i] },
					     .buf = (unsigned char *)scratch + i * slot,
					     .len = (uint32_t)slot };
	err = engine_store_read(ps->e, pg, n);
	if (err)
		return err;
	for (i = 0; i < n; i++) {
		float *b = blocks + i * blk;

		/* the stored page is the index's page as it is (appends write both at once) */
		if (idx_page_tokens(ix, pages[i], NULL, &fill, NULL) || pg[i].fill != fill ||
		    pg[i].len != 2 * fill * s->row)
			return -EIO;
		for (t = 0; t < fill; t++) { /* K rows first (append.c's page layout) */
			dtype_to_f32((const unsigned char *)pg[i].buf + t * s->row, s->dt, d, x);
			idx_block_put(b, d, t, x);
		}
	}
	return 0;
}

/* What select_head does for one layer of sequence s. */
static struct select_opts layer_opts(const struct engine *e, const struct seq *s, uint32_t layer)
{
	return (struct select_opts){
		.budget_pages = s->kpages,
		.overfetch = e->o.overfetch,
		/* the client sends q as the model computes it; the softmax scales q.k by this */
		.scale = 1.0f / sqrtf((float)s->p.shape.head_dim),
		.group_merge = e->o.group_merge,
		.page_mass = e->o.page_mass,
		.exact = e->o.exact_search,
		.dense = layer < s->p.budget.dense_layers,
	};
}

static uint32_t ret_pages(const struct engine *e, const struct seq *s, uint32_t layer, uint32_t h)
{
	struct select_opts so = layer_opts(e, s, layer);

	return select_max_hits(s->hs[(size_t)layer * s->p.shape.kv_heads + h].ix, &so);
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
	struct seq *s = engine_seq_get(e, owner, id);

	if (!s)
		return -ENOENT;
	if (s->broken)
		return -EIO;
	if (layer >= s->p.shape.layers)
		return -EINVAL;
	return (int)table_size(e, s, layer);
}

void engine_ws_done(struct engine_ws *ws)
{
	if (!ws)
		return;
	free(ws->buf);
	ws->buf = NULL;
	ws->cap = 0;
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
		r->tier = e->tiers[i]->ops->kind == TIER_NVME ? ICE_TIER_NVME : ICE_TIER_DRAM;
		r->location = info.slot[i] * e->o.slot_bytes;
		return;
	}
}

/* The rows head st attends anyway, as select_head's runs: its sink, then its window (a ring:
 * one or two runs). Returns the number of runs. */
static uint32_t attended_rows(const struct seq *s, const struct head_state *st, uint32_t layer,
			      struct select_rows *att)
{
	uint32_t n = 0, first = s->Wcap - st->win_start;

	if (first > st->win_n)
		first = st->win_n;
	if (s->sink_n[layer])
		att[n++] = (struct select_rows){ st->sink_k, s->sink_n[layer], s->dt };
	if (first)
		att[n++] = (struct select_rows){ st->win_k + (size_t)st->win_start * s->row, first,
						 s->dt };
	if (st->win_n > first)
		att[n++] = (struct select_rows){ st->win_k, st->win_n - first, s->dt };
	return n;
}

int engine_select(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer, const float *q,
		  size_t q_len, struct ice_page_ref *out, size_t cap, float *rest, size_t rest_len,
		  struct engine_ws *ws, size_t *ret_need)
{
	struct seq *s = engine_seq_get(e, owner, id);
	uint64_t t0 = clock_now_ns();
	uint32_t hk, d, g, h, i, sp, wp, n = 0, nkeys = 0, kmax = 0, k;
	size_t need = 0, hsz, ksz, msz, sz;
	struct select_opts so;
	struct store_key *keys;
	struct idx_hit *hits;
	uint16_t *mask;
	void *sws;
	int got;
	int err;

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
	if (table_size(e, s, layer) > cap) {
		if (ret_need) /* so the caller's retry is the last one */
			*ret_need = table_size(e, s, layer);
		return -ENOSPC;
	}
	so = layer_opts(e, s, layer);
	sp = sink_pages(s, layer);
	wp = win_pages(s, layer);
	for (h = 0; h < hk; h++) {
		const struct idx *ix = s->hs[(size_t)layer * hk + h].ix;

		sz = select_ws_size(ix, g, &so);
		need = sz > need ? sz : need;
		k = select_max_hits(ix, &so);
		kmax = k > kmax ? k : kmax;
	}
	/* Workspace: select_head's | hits | page keys (all heads) | row masks. */
	need = (need + 63) & ~(size_t)63;
	hsz = ((size_t)kmax * sizeof(*hits) + 63) & ~(size_t)63;
	ksz = ((size_t)hk * kmax * sizeof(*keys) + 63) & ~(size_t)63;
	msz = (size_t)kmax * sizeof(*mask);
	err = buf_grow(&ws->buf, &ws->cap, need + hsz + ksz + msz, 1);
	if (err)
		return err;
	sws = ws->buf;
	hits = (struct idx_hit *)(void *)((char *)ws->buf + need);
	keys = (struct store_key *)(void *)((char *)ws->buf + need + hsz);
	mask = (uint16_t *)(void *)((char *)ws->buf + need + hsz + ksz);
	for (h = 0; h < hk; h++) {
		const struct head_state *st = &s->hs[(size_t)layer * hk + h];
		struct select_rows att[3];
		struct select_group grp = { q + (size_t)h * g * d, g, d, att, 0 };

		for (i = 0; i < sp; i++) {
			uint32_t fill = s->sink_n[layer] - i * P;

			fill = fill > P ? P : fill;
			out[n++] = (struct ice_page_ref){ .page = i,
							  .kv_head = (uint16_t)h,
							  .kind = ICE_PAGE_SINK,
							  .tier = ICE_TIER_DRAM,
							  .fill = (uint16_t)fill,
							  .mask = full_mask(fill) };
		}
		grp.natt = attended_rows(s, st, layer, att);
		got = select_head(st->ix, &st->sums, &so, &grp, sws, need, hits, mask,
				  rest ? rest + (size_t)h * g * (d + 1) : NULL);
		if (got < 0)
			return got;
		for (i = 0; i < (uint32_t)got; i++) {
			struct store_key key = { s->id, layer, h, hits[i].page };

			out[n] = (struct ice_page_ref){ .page = hits[i].page,
							.kv_head = (uint16_t)h,
							.kind = ICE_PAGE_RETRIEVED,
							.fill = (uint16_t)hits[i].fill,
							.mask = mask[i],
							.score = hits[i].score };
			page_where(e, &key, &out[n++]);
			if (!so.dense)
				keys[nkeys++] = key;
		}
		for (i = 0; i < wp; i++) {
			uint32_t fill = st->win_n - i * P;

			fill = fill > P ? P : fill;
			out[n++] = (struct ice_page_ref){ .page = i,
							  .kv_head = (uint16_t)h,
							  .kind = ICE_PAGE_WINDOW,
							  .tier = ICE_TIER_DRAM,
							  .fill = (uint16_t)fill,
							  .mask = full_mask(fill) };
		}
	}
	/* The heat hook: what was selected now is what placement keeps close (dense layers
	 * take every page, which says nothing about heat). */
	if (nkeys)
		store_touch(e->store, keys, nkeys);
	hist_add(&e->h_select, clock_now_ns() - t0);
	return (int)n;
}
