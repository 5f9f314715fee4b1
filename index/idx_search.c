/*
 * DCI-tree search. Every page is ranked by its 4-bit sketch (one pass over an eighth of the
 * bytes of the keys); the best `beam` pages per query are then scored exactly from their keys,
 * read from the index's key source in batches, and the best k by exact score are returned. Optionally (cells > 0) the best level-1
 * cells by seed score are scanned in full as well. A GQA group shares every block load; its
 * per-query rankings are merged round-robin, or by offset score (opts->bias). Nothing here
 * allocates or writes to the index.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "idx_impl.h"
#include "idx_topk.h"

struct ws_layout {
	size_t ns_pad; /* seeds rounded up to the block width */
	size_t sscore; /* float [g][ns_pad] */
	size_t comb;   /* float [ns_pad] */
	size_t cid;    /* uint32 [ns_pad] */
	size_t hscore; /* float [g][k] */
	size_t hpage;  /* uint32 [g][k] */
	size_t tmp;    /* float [g][16] */
	size_t skq;    /* int8 [g][dim] quantized queries */
	size_t sks;    /* float [g][IDX_MAX_BEAM] sketch heaps */
	size_t skp;    /* uint32 [g][IDX_MAX_BEAM] */
	size_t cand;   /* uint32 [g * IDX_MAX_BEAM] candidate union */
	size_t kblk;   /* float [IDX_KEYS_BATCH][dim * 16] page keys read */
	size_t kscr;   /* the key source's scratch, IDX_KEYS_BATCH pages' worth */
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
	w->skq = o, o = al64(o + (size_t)g * ix->dim);
	w->sks = o, o = al64(o + (size_t)g * IDX_MAX_BEAM * sizeof(float));
	w->skp = o, o = al64(o + (size_t)g * IDX_MAX_BEAM * sizeof(uint32_t));
	w->cand = o, o = al64(o + (size_t)g * IDX_MAX_BEAM * sizeof(uint32_t));
	w->kblk = o, o = al64(o + IDX_KEYS_BATCH * ix->blk * sizeof(float));
	w->kscr = o, o = al64(o + IDX_KEYS_BATCH * ix->keys.scratch);
	w->total = o + 64; /* room to align the caller's pointer */
}

#define IDX_MAX_K (1u << 16)
#define IDX_MASS_WIDEN 4u /* default beam multiplier when pages rank by mass */

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
	float *kblk;       /* IDX_KEYS_BATCH blocks of page keys */
	void *kscr;        /* the source's scratch */
	int dedupe;        /* a page may be offered twice (cells and sketch candidates) */
	const float *bias; /* NULL: merge a group round-robin; else by score - bias[i] */
	float mass_scale;  /* 0: a page scores its best token; else its soft maximum */
	float log_fill[IDX_PAGE_CAP + 1]; /* log(n), for the mass bound */
	struct topk heap[IDX_MAX_GROUP];
};

static int heap_has(const struct topk *t, uint32_t pg)
{
	uint32_t i;

	for (i = 0; i < t->n; i++)
		if (t->page[i] == pg)
			return 1;
	return 0;
}

/* Scores page pg (its keys in blk) and offers it to every query's list. */
static void offer_page(struct search *s, uint32_t pg, const float *blk)
{
	const struct idx_page *p = &s->ix->pages[pg];
	uint32_t i, l;

	s->ops->score_block(blk, s->q, s->g, s->ix->dim, s->tmp);
	for (i = 0; i < s->g; i++) {
		const float *t = s->tmp + (size_t)i * IDX_LANES;
		float m = t[0];

		for (l = 1; l < p->fill; l++)
			m = t[l] > m ? t[l] : m;
		if (s->mass_scale > 0) {
			/* the page's softmax weight at this scale, in score units: a page of many
			 * good tokens outranks a page of one slightly better token. It is at most
			 * m + log(fill) / scale: a page that cannot reach the list's floor even so is
			 * left out without its exps (the result is the same). */
			float sum = 0;

			if (m + s->log_fill[p->fill] / s->mass_scale < topk_floor(&s->heap[i]))
				continue;
			for (l = 0; l < p->fill; l++)
				sum += expf((t[l] - m) * s->mass_scale);
			m += logf(sum) / s->mass_scale;
		}
		if (s->dedupe && heap_has(&s->heap[i], pg))
			continue;
		topk_push(&s->heap[i], m, pg);
	}
}

/* Reads and offers pages[0..n) (repeats next to each other offered once), a batch at a time. */
static int offer_pages(struct search *s, const uint32_t *pages, size_t n)
{
	uint32_t uniq[IDX_KEYS_BATCH], nu, i;
	size_t p = 0;
	int rc;

	while (p < n) {
		for (nu = 0; nu < IDX_KEYS_BATCH && p < n; p++)
			if (!nu || pages[p] != uniq[nu - 1])
				uniq[nu++] = pages[p];
		rc = idx_read_blocks(s->ix, uniq, nu, s->kblk, s->kscr);
		if (rc < 0)
			return rc;
		for (i = 0; i < nu; i++)
			offer_page(s, uniq[i], s->kblk + (size_t)i * s->ix->blk);
	}
	return 0;
}

/* Offers pages [0, npages) of the index. */
static int offer_all(struct search *s)
{
	uint32_t ids[IDX_KEYS_BATCH], n;
	size_t p = 0;
	int rc;

	while (p < s->ix->npages) {
		for (n = 0; n < IDX_KEYS_BATCH && p < s->ix->npages; n++)
			ids[n] = (uint32_t)p++;
		rc = offer_pages(s, ids, n);
		if (rc < 0)
			return rc;
	}
	return 0;
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

static int check_query(const struct idx *ix, const float *q, uint32_t g, uint32_t k, const void *ws,
		       struct idx_hit *hits)
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
	s->dedupe = 0;
	s->bias = NULL;
	s->mass_scale = 0;
	s->tmp = (float *)(base + w->tmp);
	s->kblk = (float *)(base + w->kblk);
	s->kscr = base + w->kscr;
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
	} else if (s->bias) {
		n = topk_merge_biased(s->heap, s->g, k, s->bias, hits);
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
	int rc = check_query(ix, q, g, k, ws, ret_hits);

	if (rc < 0)
		return rc;
	rc = search_init(&s, ix, q, g, k, ws, ws_size, &w, &base);
	if (rc < 0)
		return rc;
	rc = offer_all(&s);
	return rc < 0 ? rc : search_finish(&s, k, ret_hits);
}

/* Quantizes q (scaled by each channel's sketch step) to int8 for the sketch kernel; returns
 * the offset 8 * sum(qq) that the codes' +8 bias adds to every score. */
static int32_t sk_query(const struct idx *ix, const float *q, int8_t *qq)
{
	int32_t sum = 0;
	float mx = 0, f;
	uint32_t j;

	for (j = 0; j < ix->dim; j++) {
		float v = fabsf(q[j] * ix->sk_step[j]);

		mx = v > mx ? v : mx;
	}
	f = mx > 0 ? 127.0f / mx : 0.0f;
	for (j = 0; j < ix->dim; j++) {
		qq[j] = (int8_t)lrintf(q[j] * ix->sk_step[j] * f);
		sum += qq[j];
	}
	return 8 * sum;
}

/* In-place heap sort (qsort may allocate; search must not). */
static void sort_u32(uint32_t *a, size_t n)
{
	size_t i, end;

	for (i = n / 2; i-- > 0;)
		for (size_t r = i;;) {
			size_t c = 2 * r + 1;
			uint32_t t;

			if (c >= n)
				break;
			if (c + 1 < n && a[c + 1] > a[c])
				c++;
			if (a[r] >= a[c])
				break;
			t = a[r], a[r] = a[c], a[c] = t;
			r = c;
		}
	for (end = n; end > 1; end--) {
		uint32_t t = a[0];

		a[0] = a[end - 1], a[end - 1] = t;
		for (size_t r = 0;;) {
			size_t c = 2 * r + 1;

			if (c >= end - 1)
				break;
			if (c + 1 < end - 1 && a[c + 1] > a[c])
				c++;
			if (a[r] >= a[c])
				break;
			t = a[r], a[r] = a[c], a[c] = t;
			r = c;
		}
	}
}

/* Seeds first, then the best `cells` level-1 cells scanned in full (exact scores). */
static int scan_cells(struct search *s, const struct ws_layout *w, char *base, uint64_t cells)
{
	const struct idx *ix = s->ix;
	float *sscore = (float *)(base + w->sscore), *comb = (float *)(base + w->comb);
	float best[IDX_MAX_GROUP], qinv[IDX_MAX_GROUP];
	uint32_t *cid = (uint32_t *)(base + w->cid), i, l, g = s->g;
	size_t ns = ix->lvl[1].n, nb = w->ns_pad / IDX_LANES, b, c;

	for (b = 0; b < nb; b++) {
		s->ops->score_block(ix->seedk + b * ix->blk, s->q, g, ix->dim, s->tmp);
		for (i = 0; i < g; i++)
			memcpy(sscore + i * w->ns_pad + b * IDX_LANES,
			       s->tmp + (size_t)i * IDX_LANES, IDX_LANES * sizeof(float));
	}
	/* a group ranks cells by the best score relative to each query's best seed, in units of
	 * that query's norm, so one loud head does not take every cell */
	for (i = 0; i < g; i++) {
		const float *si = sscore + i * w->ns_pad;
		float m = -INFINITY, n2 = 0;

		for (c = 0; c < ns; c++)
			m = si[c] > m ? si[c] : m;
		for (l = 0; l < ix->dim; l++)
			n2 += s->q[(size_t)i * ix->dim + l] * s->q[(size_t)i * ix->dim + l];
		best[i] = m;
		qinv[i] = n2 > 0 ? 1.0f / sqrtf(n2) : 0.0f;
	}
	for (c = 0; c < ns; c++) {
		float m = -INFINITY;

		for (i = 0; i < g; i++) {
			float v = (sscore[i * w->ns_pad + c] - best[i]) * qinv[i];

			m = v > m ? v : m;
		}
		comb[c] = ix->nodes[ix->lvl[1].v[c]].ntok ? m : -INFINITY;
		cid[c] = (uint32_t)c;
	}
	if (cells > ns)
		cells = ns;
	select_top(comb, cid, 0, ns, cells);
	for (c = 0; c < cells; c++) {
		uint32_t pg, ids[IDX_KEYS_BATCH], n = 0;
		int rc;

		for (pg = ix->nodes[ix->lvl[1].v[cid[c]]].head; pg != IDX_NONE;
		     pg = ix->pages[pg].next) {
			ids[n++] = pg;
			if (n == IDX_KEYS_BATCH || ix->pages[pg].next == IDX_NONE) {
				rc = offer_pages(s, ids, n);
				if (rc < 0)
					return rc;
				n = 0;
			}
		}
	}
	return 0;
}

int idx_search(const struct idx *ix, const float *q, uint32_t g, uint32_t k,
	       const struct idx_search_opts *opts, void *ws, size_t ws_size,
	       struct idx_hit *ret_hits)
{
	struct search s;
	struct ws_layout w;
	struct topk sk[IDX_MAX_GROUP];
	int8_t *qq;
	uint32_t *cand, i;
	int32_t off[IDX_MAX_GROUP];
	float out[IDX_MAX_GROUP];
	size_t p, nc = 0, skb;
	uint64_t beam, cells;
	char *base;
	int rc = check_query(ix, q, g, k, ws, ret_hits);

	if (rc < 0)
		return rc;
	if (opts && opts->bias)
		for (i = 0; i < g; i++)
			if (!isfinite(opts->bias[i]))
				return -EINVAL;
	if (opts && (!isfinite(opts->mass_scale) || opts->mass_scale < 0))
		return -EINVAL;
	rc = search_init(&s, ix, q, g, k, ws, ws_size, &w, &base);
	if (rc < 0)
		return rc;
	s.bias = opts ? opts->bias : NULL;
	s.mass_scale = opts ? opts->mass_scale : 0;
	for (i = 0; s.mass_scale > 0 && i <= IDX_PAGE_CAP; i++)
		s.log_fill[i] = i ? logf((float)i) : 0;
	beam = opts && opts->beam ? opts->beam : idx_default_beam(ix, k);
	/* the sketch ranks candidates by their best token: ranking by mass needs more of them
	 * (4x brings a synthetic GQA-4 set from 60% to 94% of the exact mass ranking) */
	if (s.mass_scale > 0 && !(opts && opts->beam))
		beam *= IDX_MASS_WIDEN;
	/* nothing to gain from the sketch when the beam would take (nearly) every page */
	if ((opts && (opts->flags & IDX_SEARCH_ALL)) || !ix->sk_ready || ix->lvl[1].n == 0 ||
	    k > IDX_MAX_BEAM || beam >= ix->npages) {
		rc = offer_all(&s);
		return rc < 0 ? rc : search_finish(&s, k, ret_hits);
	}
	if (g > 1) /* the group shares a union of candidates: fewer each */
		beam = (uint64_t)ceilf((float)beam * (1.0f + ix->p.gqa_widen * (float)(g - 1)) /
				       (float)g);
	if (beam < k)
		beam = k;
	if (beam > IDX_MAX_BEAM)
		beam = IDX_MAX_BEAM;
	cells = opts && opts->cells ? opts->cells : ix->p.cells;
	if (opts && (opts->flags & IDX_SEARCH_NO_SKETCH)) {
		/* the plain tree walk: pages of upper tokens, then the best cells */
		rc = offer_pages(&s, ix->upages.v, ix->upages.n);
		if (rc == 0)
			rc = scan_cells(&s, &w, base, cells ? cells : 1);
		return rc < 0 ? rc : search_finish(&s, k, ret_hits);
	}

	/* 1. rank every page by its sketch */
	qq = (int8_t *)(base + w.skq);
	for (i = 0; i < g; i++) {
		off[i] = sk_query(ix, q + (size_t)i * ix->dim, qq + (size_t)i * ix->dim);
		sk[i].score = (float *)(base + w.sks) + (size_t)i * IDX_MAX_BEAM;
		sk[i].page = (uint32_t *)(base + w.skp) + (size_t)i * IDX_MAX_BEAM;
		sk[i].n = 0;
		sk[i].k = (uint32_t)beam;
	}
	skb = IDX_SK_BYTES(ix->dim);
	for (p = 0; p < ix->npages; p++) {
		const uint8_t *blk = ix->sk + p * skb;
		uint32_t fill = ix->pages[p].fill;
		size_t ln;

		/* keep a few pages in flight: the pass is one long sequential read */
		if (p + 8 < ix->npages)
			for (ln = 0; ln < skb; ln += 64)
				__builtin_prefetch(blk + 8 * skb + ln);

		s.ops->sk_max(blk, ix->sk_alpha + p * IDX_LANES, qq, off, g, ix->dim, fill, out);
		for (i = 0; i < g; i++)
			if (out[i] >= topk_floor(&sk[i]))
				topk_push(&sk[i], out[i], (uint32_t)p);
	}

	/* 2. optional: best cells by seed score, scanned exactly */
	if (cells) {
		rc = scan_cells(&s, &w, base, cells);
		if (rc < 0)
			return rc;
		s.dedupe = 1;
	}

	/* 3. exact scores for the union of the candidates */
	cand = (uint32_t *)(base + w.cand);
	for (i = 0; i < g; i++) {
		memcpy(cand + nc, sk[i].page, sk[i].n * sizeof(uint32_t));
		nc += sk[i].n;
	}
	if (g > 1) /* the union: a page several queries want is read once */
		sort_u32(cand, nc);
	rc = offer_pages(&s, cand, nc);
	return rc < 0 ? rc : search_finish(&s, k, ret_hits);
}

size_t idx_page_ws_size(const struct idx *ix)
{
	return ix ? al64(ix->blk * sizeof(float)) + al64(ix->keys.scratch) + 64 : 0;
}

int idx_page_scores(const struct idx *ix, uint32_t page, const float *q, uint32_t g, void *ws,
		    size_t ws_size, float *ret_scores)
{
	char *base;
	size_t i;
	int rc;

	if (!ix || !q || !ret_scores || !ws || g == 0 || g > IDX_MAX_GROUP || page >= ix->npages)
		return -EINVAL;
	for (i = 0; i < (size_t)g * ix->dim; i++)
		if (!isfinite(q[i]))
			return -EINVAL;
	if (ws_size < idx_page_ws_size(ix))
		return -ENOSPC;
	base = (char *)(((uintptr_t)ws + 63) & ~(uintptr_t)63);
	rc = idx_read_blocks(ix, &page, 1, (float *)base, base + al64(ix->blk * sizeof(float)));
	if (rc < 0)
		return rc;
	idx_simd()->score_block((const float *)base, q, g, ix->dim, ret_scores);
	return (int)ix->pages[page].fill;
}

float idx_top_k(float *x, size_t n, size_t k)
{
	ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1, i, j, kk = (ptrdiff_t)k;
	float piv, t;

	while (lo < hi) {
		piv = x[lo + (hi - lo) / 2];
		i = lo;
		j = hi;
		while (i <= j) {
			while (x[i] > piv)
				i++;
			while (x[j] < piv)
				j--;
			if (i <= j) {
				t = x[i];
				x[i++] = x[j];
				x[j--] = t;
			}
		}
		/* now x[lo..j] >= piv >= x[i..hi], and x[j+1..i-1] == piv */
		if (kk - 1 <= j)
			hi = j;
		else if (kk - 1 >= i)
			lo = i;
		else
			break;
	}
	return x[k - 1];
}

/* pick workspace: float w[n][16], all[n * 16]; a batch of page blocks; the source's scratch */
size_t idx_pick_ws_size(const struct idx *ix, uint32_t n)
{
	return ix ? al64(2 * (size_t)n * IDX_PAGE_CAP * sizeof(float)) +
			       al64(IDX_KEYS_BATCH * ix->blk * sizeof(float)) +
			       al64(IDX_KEYS_BATCH * ix->keys.scratch) + 64 :
		    0;
}

int idx_pick_tokens(const struct idx *ix, const float *q, uint32_t g, const float *bias,
		    const struct idx_hit *hits, uint32_t n, uint32_t budget, void *ws,
		    size_t ws_size, uint16_t *ret_mask)
{
	float sc[IDX_MAX_GROUP * IDX_PAGE_CAP], *w, *all, *blk, thr;
	uint32_t i, j, t, b, nb, ids[IDX_KEYS_BATCH], nc = 0, total = 0, taken = 0;
	char *base;
	int rc;

	if (!ix || !q || (n && (!hits || !ret_mask)) || g == 0 || g > IDX_MAX_GROUP ||
	    n > IDX_MAX_K)
		return -EINVAL;
	for (i = 0; bias && i < g; i++)
		if (!isfinite(bias[i]))
			return -EINVAL;
	for (i = 0; i < n; i++) {
		if (hits[i].page >= ix->npages || hits[i].fill != ix->pages[hits[i].page].fill)
			return -EINVAL;
		total += hits[i].fill;
	}
	if (total <= budget) {
		for (i = 0; i < n; i++)
			ret_mask[i] = (uint16_t)((1u << hits[i].fill) - 1);
		return (int)total;
	}
	if (!ws || ws_size < idx_pick_ws_size(ix, n))
		return -ENOSPC;
	for (i = 0; i < (size_t)g * ix->dim; i++)
		if (!isfinite(q[i]))
			return -EINVAL;
	base = (char *)(((uintptr_t)ws + 63) & ~(uintptr_t)63);
	w = (float *)base;
	all = w + (size_t)n * IDX_PAGE_CAP;
	blk = (float *)(base + al64(2 * (size_t)n * IDX_PAGE_CAP * sizeof(float)));
	for (b = 0; b < n; b += nb) {
		nb = n - b < IDX_KEYS_BATCH ? n - b : IDX_KEYS_BATCH;
		for (i = 0; i < nb; i++)
			ids[i] = hits[b + i].page;
		rc = idx_read_blocks(ix, ids, nb, blk,
				     (char *)blk + al64(IDX_KEYS_BATCH * ix->blk * sizeof(float)));
		if (rc < 0)
			return rc;
		for (i = b; i < b + nb; i++) {
			idx_simd()->score_block(blk + (size_t)(i - b) * ix->blk, q, g, ix->dim, sc);
			for (t = 0; t < hits[i].fill; t++) {
				float x = -INFINITY;

				for (j = 0; j < g; j++) {
					float y =
						sc[j * IDX_PAGE_CAP + t] - (bias ? bias[j] : 0.0f);

					x = y > x ? y : x;
				}
				w[(size_t)i * IDX_PAGE_CAP + t] = x;
				all[nc++] = x;
			}
		}
	}
	if (budget == 0) {
		memset(ret_mask, 0, n * sizeof(*ret_mask));
		return 0;
	}
	thr = idx_top_k(all, nc, budget);
	/* Everything above the cut, then ties at it in hit order until the budget is met. */
	for (i = 0; i < n; i++) {
		ret_mask[i] = 0;
		for (t = 0; t < hits[i].fill; t++)
			if (w[(size_t)i * IDX_PAGE_CAP + t] > thr) {
				ret_mask[i] |= (uint16_t)(1u << t);
				taken++;
			}
	}
	for (i = 0; i < n && taken < budget; i++)
		for (t = 0; t < hits[i].fill && taken < budget; t++)
			if (w[(size_t)i * IDX_PAGE_CAP + t] == thr) {
				ret_mask[i] |= (uint16_t)(1u << t);
				taken++;
			}
	return (int)taken;
}
