/*
 * Select: the page table one decode step attends for one layer, per KV head its sink pages,
 * retrieved pages and window pages, each with the rows to attend (mask).
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
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "engine_impl.h"


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
			dtype_to_f32(r, dt, d, kf);
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
	struct seq *s = engine_seq_get(e, owner, id);
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
	err = buf_grow(&ws->buf, &ws->cap, wsz + hsz + ksz + msz + psz + (rest ? npmax : 0), 1);
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
