/*
 * DCI-tree search. One SIMD pass scores every level-1 seed (and the few pages that hold level
 * >= 1 tokens); the best `beam` seeds' cells are then scanned in full, page by page, each page a
 * contiguous channel-major block. A GQA group shares every block load: the g queries are scored
 * together, cells are ranked by the best relative seed score over the group, and the per-query
 * page rankings are merged round-robin. Nothing here allocates or writes to the index.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "idx_impl.h"
#include "idx_topk.h"

struct ws_layout {
	size_t ns_pad;     /* seeds rounded up to the block width */
	size_t sscore;     /* float [g][ns_pad] */
	size_t comb;       /* float [ns_pad] */
	size_t cid;        /* uint32 [ns_pad] */
	size_t hscore;     /* float [g][k] */
	size_t hpage;      /* uint32 [g][k] */
	size_t tmp;        /* float [g][16] */
	size_t total;
};

static size_t al64(size_t x)
{
	return (x + 63) & ~(size_t)63;
}

static void ws_plan(const struct idx *ix, uint32_t g, uint32_t k, struct ws_layout *w)
{
	size_t o = 0;

	w->ns_pad = (ix->lvl[1].n + IDX_LANES - 1) / IDX_LANES * IDX_LANES;
	w->sscore = o, o = al64(o + (size_t)g * w->ns_pad * sizeof(float));
	w->comb = o, o = al64(o + w->ns_pad * sizeof(float));
	w->cid = o, o = al64(o + w->ns_pad * sizeof(uint32_t));
	w->hscore = o, o = al64(o + (size_t)g * k * sizeof(float));
	w->hpage = o, o = al64(o + (size_t)g * k * sizeof(uint32_t));
	w->tmp = o, o = al64(o + (size_t)g * IDX_LANES * sizeof(float));
	w->total = o + 64; /* room to align the caller's pointer */
}

#define IDX_MAX_K (1u << 16)

size_t idx_search_ws_size(const struct idx *ix, uint32_t g, uint32_t k)
{
	struct ws_layout w;

	if (!ix || g == 0 || g > IDX_MAX_GROUP || k == 0 || k > IDX_MAX_K)
		return 0;
	ws_plan(ix, g, k, &w);
	return w.total;
}

struct search {
	const struct idx *ix;
	const struct idx_simd_ops *ops;
	const float *q;
	uint32_t g;
	float *tmp;
	struct topk heap[IDX_MAX_GROUP];
};

static void offer_page(struct search *s, uint32_t pg)
{
	const struct idx_page *p = &s->ix->pages[pg];
	uint32_t i, l;

	s->ops->score_block(idx_page_keys(s->ix, pg), s->q, s->g, s->ix->dim, s->tmp);
	for (i = 0; i < s->g; i++) {
		const float *t = s->tmp + (size_t)i * IDX_LANES;
		float m = t[0];

		for (l = 1; l < p->fill; l++)
			m = t[l] > m ? t[l] : m;
		topk_push(&s->heap[i], m, pg);
	}
}

/* Moves the `want` largest of comb[lo..n) (with their ids) to comb[lo..lo+want). */
static void select_top(float *comb, uint32_t *cid, size_t lo, size_t n, size_t want)
{
	size_t l = lo, r = n - 1, target = lo + want - 1;

	if (want == 0 || lo + want >= n)
		return;
	while (l < r) {
		size_t i = l, j = r, mid = l + (r - l) / 2;
		float a = comb[l], b = comb[mid], c = comb[r];
		float piv = a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b));

		while (i <= j) {
			while (comb[i] > piv)
				i++;
			while (comb[j] < piv)
				j--;
			if (i <= j) {
				float tf = comb[i];
				uint32_t tu = cid[i];

				comb[i] = comb[j], cid[i] = cid[j];
				comb[j] = tf, cid[j] = tu;
				i++;
				if (j == 0)
					break;
				j--;
			}
		}
		if (target <= j)
			r = j;
		else if (target >= i)
			l = i;
		else
			break;
	}
}

static int check_query(const struct idx *ix, const float *q, uint32_t g, uint32_t k,
		       const void *ws, struct idx_hit *hits)
{
	size_t i;

	if (!ix || !q || !ws || !hits || g == 0 || g > IDX_MAX_GROUP || k == 0 || k > IDX_MAX_K)
		return -EINVAL;
	for (i = 0; i < (size_t)g * ix->dim; i++)
		if (!isfinite(q[i]))
			return -EINVAL;
	return 0;
}

static int search_init(struct search *s, const struct idx *ix, const float *q, uint32_t g,
		       uint32_t k, void *ws, size_t ws_size, struct ws_layout *w, char **ret_base)
{
	char *base;
	uint32_t i;

	ws_plan(ix, g, k, w);
	if (ws_size < w->total)
		return -ENOSPC;
	base = (char *)(((uintptr_t)ws + 63) & ~(uintptr_t)63);
	s->ix = ix;
	s->ops = idx_simd();
	s->q = q;
	s->g = g;
	s->tmp = (float *)(base + w->tmp);
	for (i = 0; i < g; i++) {
		s->heap[i].score = (float *)(base + w->hscore) + (size_t)i * k;
		s->heap[i].page = (uint32_t *)(base + w->hpage) + (size_t)i * k;
		s->heap[i].n = 0;
		s->heap[i].k = k;
	}
	*ret_base = base;
	return 0;
}

static int search_finish(struct search *s, uint32_t k, struct idx_hit *hits)
{
	uint32_t i, n;

	for (i = 0; i < s->g; i++)
		topk_sort(&s->heap[i]);
	if (s->g == 1) {
		n = s->heap[0].n;
		for (i = 0; i < n; i++) {
			hits[i].page = s->heap[0].page[i];
			hits[i].score = s->heap[0].score[i];
		}
	} else {
		n = topk_merge(s->heap, s->g, k, hits);
	}
	for (i = 0; i < n; i++)
		hits[i].fill = s->ix->pages[hits[i].page].fill;
	return (int)n;
}

int idx_exact_search(const struct idx *ix, const float *q, uint32_t g, uint32_t k, void *ws,
		     size_t ws_size, struct idx_hit *ret_hits)
{
	struct search s;
	struct ws_layout w;
	char *base;
	size_t pg;
	int rc = check_query(ix, q, g, k, ws, ret_hits);

	if (rc < 0)
		return rc;
	rc = search_init(&s, ix, q, g, k, ws, ws_size, &w, &base);
	if (rc < 0)
		return rc;
	for (pg = 0; pg < ix->npages; pg++)
		offer_page(&s, (uint32_t)pg);
	return search_finish(&s, k, ret_hits);
}

int idx_search(const struct idx *ix, const float *q, uint32_t g, uint32_t k,
	       const struct idx_search_opts *opts, void *ws, size_t ws_size,
	       struct idx_hit *ret_hits)
{
	struct search s;
	struct ws_layout w;
	float *sscore, *comb, best[IDX_MAX_GROUP], qinv[IDX_MAX_GROUP];
	uint32_t *cid, i, l;
	size_t ns, b, nb, c, sel, pages;
	uint64_t beam;
	char *base;
	int rc = check_query(ix, q, g, k, ws, ret_hits);

	if (rc < 0)
		return rc;
	rc = search_init(&s, ix, q, g, k, ws, ws_size, &w, &base);
	if (rc < 0)
		return rc;
	ns = ix->lvl[1].n;
	if ((opts && (opts->flags & IDX_SEARCH_ALL)) || ns == 0) {
		for (c = 0; c < ix->npages; c++)
			offer_page(&s, (uint32_t)c);
		return search_finish(&s, k, ret_hits);
	}
	sscore = (float *)(base + w.sscore);
	comb = (float *)(base + w.comb);
	cid = (uint32_t *)(base + w.cid);

	/* 1. every seed, 16 at a time, all g queries per block load */
	nb = w.ns_pad / IDX_LANES;
	for (b = 0; b < nb; b++) {
		s.ops->score_block(ix->seedk + b * ix->blk, q, g, ix->dim, s.tmp);
		for (i = 0; i < g; i++)
			memcpy(sscore + i * w.ns_pad + b * IDX_LANES, s.tmp + (size_t)i * IDX_LANES,
			       IDX_LANES * sizeof(float));
	}
	/* 2. the pages of upper tokens are always candidates (about r1 of all keys) */
	for (c = 0; c < ix->upages.n; c++)
		offer_page(&s, ix->upages.v[c]);

	/* 3. rank cells: a seed's score, or for a group its best score relative to each query's
	 * best seed, in units of that query's norm (so one loud head does not take every cell) */
	if (g == 1) {
		memcpy(comb, sscore, ns * sizeof(float));
	} else {
		for (i = 0; i < g; i++) {
			const float *si = sscore + i * w.ns_pad;
			float m = -INFINITY, n2 = 0;

			for (c = 0; c < ns; c++)
				m = si[c] > m ? si[c] : m;
			for (l = 0; l < ix->dim; l++)
				n2 += q[(size_t)i * ix->dim + l] * q[(size_t)i * ix->dim + l];
			best[i] = m;
			qinv[i] = n2 > 0 ? 1.0f / sqrtf(n2) : 0.0f;
		}
		for (c = 0; c < ns; c++) {
			float m = -INFINITY;

			for (i = 0; i < g; i++) {
				float v = (sscore[i * w.ns_pad + c] - best[i]) * qinv[i];

				m = v > m ? v : m;
			}
			comb[c] = m;
		}
	}
	for (c = 0; c < ns; c++) {
		cid[c] = (uint32_t)c;
		if (ix->nodes[ix->lvl[1].v[c]].ntok == 0)
			comb[c] = -INFINITY;
	}

	/* 4. the beam: best cells first; widen until they hold at least k pages */
	beam = opts && opts->beam ? opts->beam : idx_default_beam(ix);
	if (g > 1)
		beam = (uint64_t)ceilf((float)beam * (1.0f + ix->p.gqa_widen * (float)(g - 1)));
	if (beam > ns)
		beam = ns;
	select_top(comb, cid, 0, ns, beam);
	sel = beam;
	pages = 0;
	for (c = 0; c < sel; c++)
		pages += (ix->nodes[ix->lvl[1].v[cid[c]]].ntok + IDX_PAGE_CAP - 1) / IDX_PAGE_CAP;
	while (pages < k && sel < ns) {
		size_t more = sel < ns - sel ? sel : ns - sel;

		select_top(comb, cid, sel, ns, more);
		for (c = sel; c < sel + more; c++)
			pages += (ix->nodes[ix->lvl[1].v[cid[c]]].ntok + IDX_PAGE_CAP - 1) /
				 IDX_PAGE_CAP;
		sel += more;
	}

	/* 5. scan the chosen cells in full */
	for (c = 0; c < sel; c++) {
		uint32_t pg;

		for (pg = ix->nodes[ix->lvl[1].v[cid[c]]].head; pg != IDX_NONE;
		     pg = ix->pages[pg].next)
			offer_page(&s, pg);
	}
	return search_finish(&s, k, ret_hits);
}
