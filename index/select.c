/*
 * Selection for one KV head: group bias, search, token pick, rest term (see select.h for the
 * policy). The arithmetic is the engine's as it was before it moved here, operation for
 * operation, so its tables do not change.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "select.h"

void select_sums_init(struct select_sums *ss, uint32_t dim)
{
	memset(ss, 0, sizeof(*ss));
	ss->dim = dim;
}

void select_sums_done(struct select_sums *ss)
{
	if (!ss)
		return;
	free(ss->rec);
	ss->rec = NULL;
	ss->cap = ss->n = 0;
}

size_t select_sums_page_bytes(uint32_t dim)
{
	return sizeof(struct select_page_sum) + 2 * (size_t)dim;
}

static struct select_page_sum *page_sum(const struct select_sums *ss, uint32_t page)
{
	return (struct select_page_sum *)(void *)(ss->rec +
						  (size_t)page * select_sums_page_bytes(ss->dim));
}

int select_sums_reserve(struct select_sums *ss, uint32_t npages)
{
	size_t pb = select_sums_page_bytes(ss->dim);
	uint32_t cap = ss->cap ? ss->cap : 64;
	unsigned char *r;

	if (npages > ss->cap) {
		while (cap < npages)
			cap += cap / 2;
		r = realloc(ss->rec, (size_t)cap * pb);
		if (!r)
			return -ENOMEM;
		ss->rec = r;
		ss->cap = cap;
	}
	/* cleared as pages come, not to the capacity: what is never used is never touched */
	if (npages > ss->n) {
		memset(ss->rec + (size_t)ss->n * pb, 0, (size_t)(npages - ss->n) * pb);
		ss->n = npages;
	}
	return 0;
}

size_t select_sums_bytes(const struct select_sums *ss)
{
	return (size_t)ss->n * select_sums_page_bytes(ss->dim);
}

/* x[0..d) -> int8 codes and the scale that gives them back (code * scale) */
static float quantize(const float *x, uint32_t d, int8_t *code)
{
	float mx = 0, sc, inv;
	uint32_t i;

	for (i = 0; i < d; i++)
		mx = fabsf(x[i]) > mx ? fabsf(x[i]) : mx;
	sc = mx / 127.0f;
	inv = sc > 0 ? 1.0f / sc : 0.0f;
	for (i = 0; i < d; i++)
		code[i] = (int8_t)lrintf(x[i] * inv);
	return sc;
}

void select_sums_set(struct select_sums *ss, uint32_t page, const void *k, const void *v,
		     uint32_t n, enum ice_dtype dt)
{
	struct select_page_sum *ps = page_sum(ss, page);
	uint32_t d = ss->dim, i, t;
	size_t row = (size_t)d * dtype_size(dt);
	float km[IDX_MAX_DIM] = { 0 }, vm[IDX_MAX_DIM] = { 0 }, x[IDX_MAX_DIM];
	int8_t *codes = (int8_t *)(ps + 1);

	for (t = 0; t < n; t++) {
		dtype_to_f32((const char *)k + t * row, dt, d, x);
		for (i = 0; i < d; i++)
			km[i] += x[i];
		dtype_to_f32((const char *)v + t * row, dt, d, x);
		for (i = 0; i < d; i++)
			vm[i] += x[i];
	}
	for (i = 0; n && i < d; i++) {
		km[i] /= (float)n;
		vm[i] /= (float)n;
	}
	ps->cnt = n;
	ps->kscale = quantize(km, d, codes);
	ps->vscale = quantize(vm, d, codes + d);
}

static uint32_t npages_of(const struct idx *ix)
{
	return ix ? (uint32_t)idx_npages(ix) : 0;
}

/* Pages searched: the budget's times overfetch. */
static uint32_t search_pages(const struct select_opts *o)
{
	return o->budget_pages * (o->overfetch > 1 ? o->overfetch : 1);
}

uint32_t select_max_hits(const struct idx *ix, const struct select_opts *o)
{
	uint32_t np = npages_of(ix), k;

	if (!o || o->dense)
		return np;
	k = search_pages(o);
	return np < k ? np : k;
}

static size_t al64(size_t n)
{
	return (n + 63) & ~(size_t)63;
}

/* Workspace: hits | masks | index search | token pick | pages in the table (one byte each). */
struct ws_plan {
	size_t hits, mask, search, pick, in, total, search_size;
};

static void plan(const struct idx *ix, uint32_t g, const struct select_opts *o, struct ws_plan *w)
{
	uint32_t k = select_max_hits(ix, o);
	size_t at = 0;

	w->search_size = k && !o->dense ? idx_search_ws_size(ix, g, k) : 0;
	w->hits = at, at = al64(at + (size_t)k * sizeof(struct idx_hit));
	w->mask = at, at = al64(at + (size_t)k * sizeof(uint16_t));
	w->search = at, at = al64(at + w->search_size);
	w->pick = at, at = al64(at + (o->dense || !k ? 0 : idx_pick_ws_size(ix, k)));
	w->in = at, at = al64(at + npages_of(ix));
	w->total = at + 64; /* room to align the caller's pointer */
}

size_t select_ws_size(const struct idx *ix, uint32_t g, const struct select_opts *o)
{
	struct ws_plan w;

	if (!o || g == 0 || g > IDX_MAX_GROUP)
		return 0;
	plan(ix, g, o, &w);
	return w.total;
}

/* Row t of the runs att[0..natt) (t below their total). */
static const void *att_row(const struct select_group *grp, uint32_t t, enum ice_dtype *ret_dt)
{
	uint32_t r = 0;

	while (t >= grp->att[r].n)
		t -= grp->att[r++].n;
	*ret_dt = grp->att[r].dt;
	return (const char *)grp->att[r].rows +
	       (size_t)t * grp->dim * (grp->att[r].dt == ICE_DTYPE_F32 ? 4 : 2);
}

/*
 * bias[j] = logsumexp(s q_j.k) / s over the group's attended rows: a page whose score is b adds
 * weight exp(s (b - bias[j])) relative to them. One pass: each row is converted once and
 * feeds every query's running log-sum-exp. Returns false when there are no such rows (nothing
 * to calibrate against) or a sum overflows.
 */
static bool group_bias(const struct select_group *grp, float sc, float *bias)
{
	uint32_t d = grp->dim, g = grp->g, n = 0, j, t, i;
	float m[IDX_MAX_GROUP], sum[IDX_MAX_GROUP], kf[IDX_MAX_DIM];

	for (i = 0; i < grp->natt; i++)
		n += grp->att[i].n;
	if (!n)
		return false;
	for (j = 0; j < g; j++) {
		m[j] = -INFINITY;
		sum[j] = 0;
	}
	for (t = 0; t < n; t++) {
		enum ice_dtype dt;
		const void *r = att_row(grp, t, &dt);
		const float *k = kf;

		if (dt == ICE_DTYPE_F32)
			k = r;
		else
			dtype_to_f32(r, dt, d, kf);
		for (j = 0; j < g; j++) {
			const float *q = grp->q + (size_t)j * d;
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
	for (j = 0; j < g; j++) {
		bias[j] = (m[j] + logf(sum[j])) / sc;
		if (!isfinite(bias[j]))
			return false; /* scores beyond float range: fall back to round-robin */
	}
	return true;
}

/* The rest term of a group none of whose tokens is left out. */
static void rest_none(uint32_t g, uint32_t d, float *out)
{
	uint32_t j;

	for (j = 0; j < g; j++) {
		out[(size_t)j * (d + 1)] = -INFINITY;
		memset(out + (size_t)j * (d + 1) + 1, 0, d * sizeof(float));
	}
}

/* The rest term over the pages [0, np) with in[p] == 0 (select.h). */
static void rest_term(const struct select_sums *ss, uint32_t np, const unsigned char *in,
		      const struct select_group *grp, float sc, float *out)
{
	uint32_t d = grp->dim, j, p, i;

	for (j = 0; j < grp->g; j++) {
		const float *q = grp->q + (size_t)j * d;
		float *o = out + (size_t)j * (d + 1), *acc = o + 1, m = -INFINITY, l = 0;

		memset(acc, 0, d * sizeof(float));
		for (p = 0; p < np; p++) {
			const struct select_page_sum *ps = page_sum(ss, p);
			const int8_t *km = (const int8_t *)(ps + 1), *vm = km + d;
			float c = (float)ps->cnt, x = 0, w;

			if (in[p] || !ps->cnt)
				continue;
			for (i = 0; i < d; i++)
				x += q[i] * (float)km[i];
			x = x * ps->kscale * sc + logf(c);
			if (x > m) {
				float r = expf(m - x); /* 0 for the first page */

				l *= r;
				for (i = 0; i < d; i++)
					acc[i] *= r;
				m = x;
			}
			w = expf(x - m);
			l += w;
			w *= ps->vscale; /* the page's mean value, from its codes */
			for (i = 0; i < d; i++)
				acc[i] += w * (float)vm[i];
		}
		o[0] = l > 0 ? m + logf(l) : -INFINITY;
		for (i = 0; l > 0 && i < d; i++)
			acc[i] /= l;
	}
}

static int check_args(const struct idx *ix, const struct select_sums *sums,
		      const struct select_opts *o, const struct select_group *grp,
		      const float *rest)
{
	uint32_t i, np = npages_of(ix);

	if (!o || !grp || !grp->q || grp->g == 0 || grp->g > IDX_MAX_GROUP || grp->dim == 0 ||
	    grp->dim > IDX_MAX_DIM || (ix && idx_dim(ix) != grp->dim) || (grp->natt && !grp->att))
		return -EINVAL;
	if (!isfinite(o->scale) || o->scale <= 0)
		return -EINVAL;
	for (i = 0; i < (size_t)grp->g * grp->dim; i++)
		if (!isfinite(grp->q[i]))
			return -EINVAL;
	for (i = 0; i < grp->natt; i++)
		if ((grp->att[i].n && !grp->att[i].rows) ||
		    (grp->att[i].dt != ICE_DTYPE_F32 && grp->att[i].dt != ICE_DTYPE_BF16 &&
		     grp->att[i].dt != ICE_DTYPE_F16))
			return -EINVAL;
	if (rest && !o->dense && np &&
	    (!sums || sums->dim != grp->dim || sums->n < np || !sums->rec))
		return -EINVAL;
	return 0;
}

int select_head(const struct idx *ix, const struct select_sums *sums, const struct select_opts *o,
		const struct select_group *grp, void *ws, size_t ws_size, struct idx_hit *ret_hits,
		uint16_t *ret_mask, float *ret_rest)
{
	uint32_t np = npages_of(ix), k, i, n = 0, pos[IDX_PAGE_CAP], fill;
	struct idx_search_opts so = { 0 };
	float bias[IDX_MAX_GROUP];
	const float *bp = NULL;
	struct idx_hit *hits;
	struct ws_plan w;
	uint16_t *mask;
	unsigned char *in;
	char *base;
	int got, err = check_args(ix, sums, o, grp, ret_rest);

	if (err)
		return err;
	k = select_max_hits(ix, o);
	if (k && (!ret_hits || !ret_mask))
		return -EINVAL;
	plan(ix, grp->g, o, &w);
	if (!ws || ws_size < w.total)
		return -ENOSPC;
	base = (char *)(((uintptr_t)ws + 63) & ~(uintptr_t)63);
	hits = (struct idx_hit *)(void *)(base + w.hits);
	mask = (uint16_t *)(void *)(base + w.mask);
	in = (unsigned char *)base + w.in;
	if (o->dense) {
		/* every page, whole, in id order */
		for (i = 0; i < np; i++) {
			err = idx_page_tokens(ix, i, pos, &fill, NULL);
			if (err)
				return err;
			hits[i] = (struct idx_hit){ .page = i, .score = 0, .fill = fill };
			mask[i] = (uint16_t)((1u << fill) - 1);
		}
		n = np;
	} else if (k) {
		if (o->exact)
			so.flags = IDX_SEARCH_ALL; /* idx_exact_search's result */
		if (grp->g > 1 && o->group_merge && group_bias(grp, o->scale, bias))
			so.bias = bp = bias;
		if (o->page_mass)
			so.mass_scale = o->scale;
		got = idx_search(ix, grp->q, grp->g, k, &so, base + w.search, w.search_size, hits);
		if (got < 0)
			return got;
		err = idx_pick_tokens(ix, grp->q, grp->g, bp, hits, (uint32_t)got,
				      o->budget_pages * IDX_PAGE_CAP, base + w.pick,
				      idx_pick_ws_size(ix, k), mask);
		if (err < 0)
			return err;
		/* a page none of whose tokens made the budget is not attended */
		for (i = 0; i < (uint32_t)got; i++)
			if (mask[i]) {
				hits[n] = hits[i];
				mask[n++] = mask[i];
			}
	}
	if (ret_rest) {
		if (o->dense || n == np) {
			rest_none(grp->g, grp->dim, ret_rest);
		} else {
			memset(in, 0, np);
			for (i = 0; i < n; i++)
				in[hits[i].page] = 1;
			rest_term(sums, np, in, grp, o->scale, ret_rest);
		}
	}
	if (n) {
		memcpy(ret_hits, hits, n * sizeof(*hits));
		memcpy(ret_mask, mask, n * sizeof(*mask));
	}
	return (int)n;
}
