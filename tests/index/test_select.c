/*
 * The selection module (index/select.h) against brute force in double precision: with exact
 * search the tokens chosen are the best by the same weight, among every page or among the
 * best-ranked pages; the rest term equals a direct computation; the group merge gives pages to
 * the query that gains most; and the edges (no pages, a budget above the index, g = 1, dense
 * layers, zero budget, split and half-precision attended rows, bad arguments).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "idx.h"
#include "ref_rest.h"
#include "select.h"
#include "synth.h"
#include "test_keys.h"

#define PC IDX_PAGE_CAP
#define NATT 32 /* attended rows (sink + window) the fixture holds back from the index */

/* An index over keys[0..n - NATT), values for it, page sums, and keys[n - NATT..n) as the rows
 * the group attends anyway. */
struct fix {
	uint32_t dim, np;
	size_t n;
	float *keys, *vals;
	struct idx *ix;
	struct select_sums sums;
	uint32_t (*pos)[PC];
	uint32_t *fill;
};

static void fix_init(struct fix *f, uint32_t dim, size_t n, uint64_t seed)
{
	struct synth_params sp;
	struct idx_params ip;
	uint32_t p, t;
	size_t i;

	memset(f, 0, sizeof(*f));
	f->dim = dim;
	f->n = n;
	f->keys = malloc(n * dim * sizeof(float));
	f->vals = malloc(n * dim * sizeof(float));
	ck_assert_ptr_nonnull(f->keys);
	ck_assert_ptr_nonnull(f->vals);
	synth_params_default(&sp, dim);
	sp.seed = seed;
	sp.nclusters = 32;
	ck_assert_int_eq(synth_keys(&sp, n, f->keys), 0);
	for (i = 0; i < n * dim; i++)
		f->vals[i] = (float)sin(0.37 * (double)i + (double)seed);
	idx_params_default(&ip, dim);
	ip.r1 = 0.01f;
	ip.threads = 2;
	ck_assert_int_eq(idx_new(&ip, &f->ix), 0);
	ck_assert_int_eq(idx_build(f->ix, f->keys, n - NATT, ICE_DTYPE_F32), 0);
	f->np = (uint32_t)idx_npages(f->ix);
	f->pos = malloc(f->np * sizeof(*f->pos));
	f->fill = malloc(f->np * sizeof(*f->fill));
	select_sums_init(&f->sums, dim);
	ck_assert_int_eq(select_sums_reserve(&f->sums, f->np), 0);
	for (p = 0; p < f->np; p++) {
		float kr[IDX_PAGE_CAP * 256], vr[IDX_PAGE_CAP * 256];

		ck_assert_uint_le(dim, 256);
		ck_assert_int_eq(idx_page_tokens(f->ix, p, f->pos[p], &f->fill[p], NULL), 0);
		for (t = 0; t < f->fill[p]; t++) {
			memcpy(kr + t * dim, f->keys + (size_t)f->pos[p][t] * dim, dim * 4);
			memcpy(vr + t * dim, f->vals + (size_t)f->pos[p][t] * dim, dim * 4);
		}
		select_sums_set(&f->sums, p, kr, vr, f->fill[p], ICE_DTYPE_F32);
	}
}

static void fix_done(struct fix *f)
{
	select_sums_done(&f->sums);
	idx_free(f->ix);
	free(f->keys);
	free(f->vals);
	free(f->pos);
	free(f->fill);
}

static const float *att_keys(const struct fix *f)
{
	return f->keys + (f->n - NATT) * f->dim;
}

static double dotd(const float *a, const float *b, uint32_t d)
{
	double s = 0;
	uint32_t i;

	for (i = 0; i < d; i++)
		s += (double)a[i] * b[i];
	return s;
}

/* bias[j] = logsumexp(s q_j.k) / s over rows kr[0..n). */
static void ref_bias(const float *kr, uint32_t n, const float *q, uint32_t g, uint32_t d, double s,
		     double *bias)
{
	uint32_t j, t;

	for (j = 0; j < g; j++) {
		double m = -INFINITY, sum = 0;

		for (t = 0; t < n; t++)
			m = fmax(m, s * dotd(q + (size_t)j * d, kr + (size_t)t * d, d));
		for (t = 0; t < n; t++)
			sum += exp(s * dotd(q + (size_t)j * d, kr + (size_t)t * d, d) - m);
		bias[j] = (m + log(sum)) / s;
	}
}

/* Query j's score of page p: its best token's q.k, or (mass) log sum exp(s q.k) / s. */
static double ref_page_score(const struct fix *f, uint32_t p, const float *q, int mass, double s)
{
	double m = -INFINITY, sum = 0, x[PC];
	uint32_t t;

	for (t = 0; t < f->fill[p]; t++) {
		x[t] = dotd(q, f->keys + (size_t)f->pos[p][t] * f->dim, f->dim);
		m = fmax(m, x[t]);
	}
	if (!mass)
		return m;
	for (t = 0; t < f->fill[p]; t++)
		sum += exp((x[t] - m) * s);
	return m + log(sum) / s;
}

/* A token's weight: max_j (q_j.k - bias[j]) (bias NULL: none). */
static double ref_weight(const struct fix *f, uint32_t pos, const float *q, uint32_t g,
			 const double *bias)
{
	double w = -INFINITY;
	uint32_t j;

	for (j = 0; j < g; j++)
		w = fmax(w, dotd(q + (size_t)j * f->dim, f->keys + (size_t)pos * f->dim, f->dim) -
				    (bias ? bias[j] : 0));
	return w;
}

static int cmp_desc(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? 1 : x > y ? -1 : 0;
}

static const float *fix_row(const void *ctx, uint32_t p, uint32_t t, int v)
{
	const struct fix *f = ctx;

	return (v ? f->vals : f->keys) + (size_t)f->pos[p][t] * f->dim;
}

/* The rest term over pages not in in[] (select.h), checked against r[g][d + 1]. */
static void check_rest(const struct fix *f, const unsigned char *in, const float *q, uint32_t g,
		       double s, const float *r)
{
	uint32_t j;

	for (j = 0; j < g; j++)
		ref_rest_check(f->np, in, f->fill, fix_row, f, q + (size_t)j * f->dim, f->dim, s,
			       1e-4, r + (size_t)j * (f->dim + 1));
}

static void *ws_for(const struct fix *f, uint32_t g, const struct select_opts *o, size_t *ret)
{
	size_t n = select_ws_size(f ? f->ix : NULL, g, o);
	void *ws = malloc(n);

	ck_assert_uint_gt(n, 0);
	ck_assert_ptr_nonnull(ws);
	*ret = n;
	return ws;
}

/*
 * Exact search, every combination of page ranking and group merge: the tokens chosen are the
 * budget's best by max_j (q_j.k - bias[j]), bias in double from the attended rows. With every
 * page searched (overfetch past the index) against all tokens; with overfetch 2 and the biased
 * merge, every hit is among the reference's best-ranked pages and no token of a page surely
 * searched outweighs one taken. Rest term on every trial.
 */
START_TEST(exact_selection_is_the_best_tokens)
{
	const uint32_t dim = 64, g = 4, bp = 4, budget = bp * PC;
	const double s = 1.0 / sqrt((double)dim);
	struct fix f;
	struct synth_params sp;
	float q[4 * 64], *rest = malloc(g * (dim + 1) * sizeof(float));
	struct select_rows att;
	struct select_group grp = { q, g, dim, &att, 1 };
	struct idx_hit *hits;
	uint16_t *mask;
	unsigned char *in;
	double bias[4], *adj, *srt;
	uint32_t trial, i, p, t, kmax;
	size_t ws_size;
	void *ws;

	fix_init(&f, dim, 3000, 11);
	att = (struct select_rows){ att_keys(&f), NATT, ICE_DTYPE_F32 };
	hits = malloc(f.np * sizeof(*hits));
	mask = malloc(f.np * sizeof(*mask));
	in = malloc(f.np);
	adj = malloc(f.np * sizeof(double));
	srt = malloc(f.np * sizeof(double));
	synth_params_default(&sp, dim);
	sp.seed = 11;
	sp.nclusters = 32;
	for (trial = 0; trial < 16; trial++) {
		int mass = trial & 1, gm = trial >> 1 & 1, all = trial >> 2 & 1;
		struct select_opts o = { .budget_pages = bp,
					 .overfetch = all ? 100000 : 2,
					 .scale = (float)s,
					 .group_merge = gm,
					 .page_mass = mass,
					 .exact = 1 };
		const double *b = gm ? bias : NULL;
		double in_min = INFINITY, out_max = -INFINITY, cut;
		uint32_t taken = 0;
		int got;

		if (!gm && !all)
			continue; /* a round-robin merge has no one weight to check against */
		sp.qseed = 40 + trial;
		ck_assert_int_eq(synth_queries(&sp, f.keys, f.n - NATT, 1, g, q, NULL), 0);
		ref_bias(att_keys(&f), NATT, q, g, dim, s, bias);
		kmax = select_max_hits(f.ix, &o);
		ck_assert_uint_eq(kmax, all ? f.np : bp * 2);
		ws = ws_for(&f, g, &o, &ws_size);
		got = select_head(f.ix, &f.sums, &o, &grp, ws, ws_size, hits, mask, rest);
		ck_assert_int_gt(got, 0);
		ck_assert_int_le(got, (int)kmax);
		for (p = 0; p < f.np; p++) {
			double a = -INFINITY;
			uint32_t j;

			for (j = 0; j < g; j++)
				a = fmax(a, ref_page_score(&f, p, q + j * dim, mass, s) -
						    (b ? b[j] : 0));
			adj[p] = srt[p] = a;
		}
		qsort(srt, f.np, sizeof(double), cmp_desc);
		cut = srt[kmax - 1];
		memset(in, 0, f.np);
		for (i = 0; i < (uint32_t)got; i++) {
			ck_assert_uint_ne(mask[i], 0);
			ck_assert_uint_eq(mask[i] >> f.fill[hits[i].page], 0);
			ck_assert_uint_eq(hits[i].fill, f.fill[hits[i].page]);
			ck_assert_uint_eq(in[hits[i].page], 0);
			in[hits[i].page] = 1;
			ck_assert_msg(adj[hits[i].page] >= cut - 1e-3 * (1 + fabs(cut)),
				      "page %u ranks %g below the cut %g", hits[i].page,
				      adj[hits[i].page], cut);
			taken += (uint32_t)__builtin_popcount(mask[i]);
		}
		ck_assert_uint_eq(taken, budget);
		/* pages surely searched: every page when all, else those clear of the cut */
		for (p = 0; p < f.np; p++) {
			uint32_t m = 0;

			for (i = 0; i < (uint32_t)got; i++)
				if (hits[i].page == p)
					m = mask[i];
			if (!all && !in[p] && adj[p] < cut + 1e-3 * (1 + fabs(cut)))
				continue;
			for (t = 0; t < f.fill[p]; t++) {
				double w = ref_weight(&f, f.pos[p][t], q, g, b);

				if (m >> t & 1)
					in_min = fmin(in_min, w);
				else
					out_max = fmax(out_max, w);
			}
		}
		ck_assert_msg(out_max <= in_min + 1e-4 * (1 + fabs(in_min)),
			      "trial %u: a token left out weighs %g, one taken %g", trial, out_max,
			      in_min);
		check_rest(&f, in, q, g, s, rest);
		free(ws);
	}
	free(hits);
	free(mask);
	free(in);
	free(adj);
	free(srt);
	free(rest);
	fix_done(&f);
}
END_TEST

/*
 * The rest term against double precision, from half-precision sums, with a zero budget (every
 * page left out), a budget of a few pages, all pages but one (whole pages: overfetch 1), and
 * a budget past the index (none left out).
 */
START_TEST(rest_term_equals_direct_computation)
{
	const uint32_t dim = 32, g = 3;
	const double s = 1.0 / sqrt((double)dim);
	struct fix f;
	float q[3 * 32], rest[3 * 33];
	struct select_sums h16;
	struct select_group grp = { q, g, dim, NULL, 0 };
	struct idx_hit *hits;
	uint16_t *mask, kb[IDX_PAGE_CAP * 32], vb[IDX_PAGE_CAP * 32];
	unsigned char *in;
	uint32_t i, p, t, trial;
	size_t ws_size;
	void *ws;
	int got;

	fix_init(&f, dim, 2000, 12);
	hits = malloc(f.np * sizeof(*hits));
	mask = malloc(f.np * sizeof(*mask));
	in = malloc(f.np);
	/* half-precision sums over the keys and values rounded to f16 (the fixture keeps them) */
	select_sums_init(&h16, dim);
	ck_assert_int_eq(select_sums_reserve(&h16, f.np), 0);
	for (p = 0; p < f.np; p++) {
		for (t = 0; t < f.fill[p]; t++) {
			float *k = f.keys + (size_t)f.pos[p][t] * dim;
			float *v = f.vals + (size_t)f.pos[p][t] * dim;

			for (i = 0; i < dim; i++) {
				kb[t * dim + i] = dtype_f32_to_f16(k[i]);
				vb[t * dim + i] = dtype_f32_to_f16(v[i]);
				k[i] = dtype_f16_to_f32(kb[t * dim + i]);
				v[i] = dtype_f16_to_f32(vb[t * dim + i]);
			}
		}
		select_sums_set(&h16, p, kb, vb, f.fill[p], ICE_DTYPE_F16);
	}
	for (trial = 0; trial < 8; trial++) {
		static const uint32_t want[8] = { 0, 0, 0, 0, 1, 1, 2, 2 }; /* 0, few, np - 1, np */
		struct select_opts o = { .budget_pages = trial < 2 ? 0 :
							 trial < 4 ? 3 :
							 trial < 6 ? f.np - 1 :
								     f.np,
					 .overfetch = trial < 4 || trial >= 6 ? 2 : 1,
					 .scale = (float)s,
					 .page_mass = 1,
					 .exact = trial & 1 };

		for (i = 0; i < g * dim; i++)
			q[i] = (float)sin(0.53 * i + trial) * 3.0f;
		ws = ws_for(&f, g, &o, &ws_size);
		got = select_head(f.ix, &h16, &o, &grp, ws, ws_size, hits, mask, rest);
		ck_assert_int_ge(got, 0);
		if (trial < 2)
			ck_assert_int_eq(got, 0);
		else if (want[trial])
			ck_assert_uint_eq((uint32_t)got, want[trial] == 1 ? f.np - 1 : f.np);
		memset(in, 0, f.np);
		for (i = 0; i < (uint32_t)got; i++)
			in[hits[i].page] = 1;
		check_rest(&f, in, q, g, s, rest);
		free(ws);
	}
	select_sums_done(&h16);
	select_sums_done(&h16); /* done twice is fine */
	/* int8 mean key and value, their scales and the count */
	ck_assert_uint_eq(select_sums_page_bytes(dim), 2 * dim + 3 * sizeof(float));
	ck_assert_uint_eq(select_sums_bytes(&h16), 0);
	free(hits);
	free(mask);
	free(in);
	fix_done(&f);
}
END_TEST

/*
 * Group merge: the attended rows hold the keys query 0 matches best (at twice their size), so
 * query 0 gains little from any page and query 1 takes every page: the hits are query 1's best
 * pages, each won by the query the reference says gains most. Round-robin instead gives query
 * 0 its best page; with g = 1 the bias changes nothing.
 */
START_TEST(group_merge_serves_the_query_that_gains_most)
{
	const uint32_t dim = 64, g = 2, bp = 4;
	const double s = 1.0 / sqrt((double)dim);
	struct fix f;
	struct synth_params sp;
	float q[2 * 64], *hot = malloc(PC * dim * sizeof(float));
	struct select_rows att;
	struct select_group grp = { q, g, dim, &att, 1 };
	struct idx_hit hits[8], h1[8];
	uint16_t mask[8], m1[8];
	double bias[2], *sc0, best0 = -INFINITY;
	uint32_t i, j, p, best0p = 0, won1 = 0;
	size_t ws_size, n = 3000 - NATT;
	void *ws;
	int got, got1;

	fix_init(&f, dim, 3000, 13);
	synth_params_default(&sp, dim);
	sp.seed = 13;
	sp.nclusters = 32;
	sp.qseed = 77;
	ck_assert_int_eq(synth_queries(&sp, f.keys, n, 2, 1, q, NULL), 0);
	/* the PC keys query 0 scores highest, doubled, are what the group attends anyway */
	sc0 = malloc(n * sizeof(double));
	for (i = 0; i < n; i++)
		sc0[i] = dotd(q, f.keys + i * dim, dim);
	for (j = 0; j < PC; j++) {
		uint32_t b = 0;

		for (i = 1; i < n; i++)
			if (sc0[i] > sc0[b])
				b = i;
		sc0[b] = -INFINITY;
		for (i = 0; i < dim; i++)
			hot[j * dim + i] = 2 * f.keys[(size_t)b * dim + i];
	}
	att = (struct select_rows){ hot, PC, ICE_DTYPE_F32 };
	ref_bias(hot, PC, q, g, dim, s, bias);
	{
		struct select_opts o = { .budget_pages = bp,
					 .overfetch = 2,
					 .scale = (float)s,
					 .group_merge = 1,
					 .exact = 1 };

		ws = ws_for(&f, g, &o, &ws_size);
		got = select_head(f.ix, NULL, &o, &grp, ws, ws_size, hits, mask, NULL);
		ck_assert_int_gt(got, 0);
		for (i = 0; i < (uint32_t)got; i++) {
			double a0 = ref_page_score(&f, hits[i].page, q, 0, s) - bias[0];
			double a1 = ref_page_score(&f, hits[i].page, q + dim, 0, s) - bias[1];

			won1 += a1 > a0;
			/* the hit's score is the winning query's own */
			ck_assert(fabs(hits[i].score - (a1 > a0 ? a1 + bias[1] : a0 + bias[0])) <
				  1e-3 * (1 + fabs(hits[i].score)));
		}
		ck_assert_uint_eq(won1, (uint32_t)got);
		/* ... and they are query 1's own best pages, as it alone would rank them */
		grp.g = 1;
		grp.q = q + dim;
		got1 = select_head(f.ix, NULL, &o, &grp, ws, ws_size, h1, m1, NULL);
		ck_assert_int_gt(got1, 0);
		for (i = 0; i < (uint32_t)got1 && i < (uint32_t)got; i++)
			ck_assert_uint_eq(hits[i].page, h1[i].page);
		/* g = 1: the attended rows change nothing */
		grp.natt = 0;
		ck_assert_int_eq(select_head(f.ix, NULL, &o, &grp, ws, ws_size, hits, mask, NULL),
				 got1);
		for (i = 0; i < (uint32_t)got1; i++) {
			ck_assert_uint_eq(hits[i].page, h1[i].page);
			ck_assert_uint_eq(mask[i], m1[i]);
		}
		/* round-robin: query 0's best page is its first pick */
		grp.g = 2;
		grp.q = q;
		grp.natt = 1;
		o.group_merge = 0;
		for (p = 0; p < f.np; p++) {
			double x = ref_page_score(&f, p, q, 0, s);

			if (x > best0) {
				best0 = x;
				best0p = p;
			}
		}
		got = select_head(f.ix, NULL, &o, &grp, ws, ws_size, hits, mask, NULL);
		ck_assert_int_gt(got, 0);
		for (i = 0; i < (uint32_t)got; i++)
			if (hits[i].page == best0p)
				break;
		ck_assert_msg(i < (uint32_t)got, "round-robin left out query 0's best page %u",
			      best0p);
		free(ws);
	}
	free(sc0);
	free(hot);
	fix_done(&f);
}
END_TEST

/*
 * The attended rows as one run, as two (a ring buffer's), and in half precision give the same
 * bias, so the same selection; g = 1 is what idx_search and idx_pick_tokens give directly.
 */
START_TEST(attended_rows_in_runs_and_dtypes)
{
	const uint32_t dim = 64, g = 3;
	struct fix f;
	float q[3 * 64], r32[NATT * 64];
	uint16_t r16[NATT * 64];
	struct select_rows one, two[2], half[2];
	struct select_opts o = { .budget_pages = 3,
				 .overfetch = 2,
				 .scale = 1.0f / sqrtf(64.0f),
				 .group_merge = 1,
				 .page_mass = 1 };
	struct select_group grp = { q, g, dim, &one, 1 };
	struct idx_search_opts so = { .mass_scale = 1.0f / sqrtf(64.0f) };
	struct idx_hit a[6], b[6], c[6];
	uint16_t ma[6], mb[6], mc[6];
	uint32_t i;
	size_t ws_size;
	void *ws;
	int na, nb, nc;

	fix_init(&f, dim, 2500, 14);
	for (i = 0; i < NATT * dim; i++) {
		r16[i] = dtype_f32_to_f16(att_keys(&f)[i]);
		r32[i] = dtype_f16_to_f32(r16[i]);
	}
	for (i = 0; i < g * dim; i++)
		q[i] = (float)cos(0.29 * i) * 2.5f;
	one = (struct select_rows){ r32, NATT, ICE_DTYPE_F32 };
	two[0] = (struct select_rows){ r32, 5, ICE_DTYPE_F32 };
	two[1] = (struct select_rows){ r32 + 5 * dim, NATT - 5, ICE_DTYPE_F32 };
	half[0] = (struct select_rows){ r16, 20, ICE_DTYPE_F16 };
	half[1] = (struct select_rows){ r16 + 20 * dim, NATT - 20, ICE_DTYPE_F16 };
	ws = ws_for(&f, g, &o, &ws_size);
	na = select_head(f.ix, NULL, &o, &grp, ws, ws_size, a, ma, NULL);
	grp.att = two;
	grp.natt = 2;
	nb = select_head(f.ix, NULL, &o, &grp, ws, ws_size, b, mb, NULL);
	grp.att = half;
	nc = select_head(f.ix, NULL, &o, &grp, ws, ws_size, c, mc, NULL);
	ck_assert_int_gt(na, 0);
	ck_assert_int_eq(nb, na);
	ck_assert_int_eq(nc, na);
	for (i = 0; i < (uint32_t)na; i++) {
		ck_assert_uint_eq(a[i].page, b[i].page);
		ck_assert_uint_eq(a[i].page, c[i].page);
		ck_assert_uint_eq(ma[i], mb[i]);
		ck_assert_uint_eq(ma[i], mc[i]);
	}
	/* g = 1 against the index calls it makes */
	grp.g = 1;
	na = select_head(f.ix, NULL, &o, &grp, ws, ws_size, a, ma, NULL);
	{
		size_t sws = idx_search_ws_size(f.ix, 1, 6);
		void *w2 = malloc(sws), *pw = malloc(idx_pick_ws_size(f.ix, 6));
		uint32_t k = 0;

		nb = idx_search(f.ix, q, 1, 6, &so, w2, sws, b);
		ck_assert_int_eq(nb, 6);
		ck_assert_int_ge(idx_pick_tokens(f.ix, q, 1, NULL, b, 6, 3 * PC, pw,
						 idx_pick_ws_size(f.ix, 6), mb),
				 0);
		for (i = 0; i < 6; i++) {
			if (!mb[i])
				continue;
			ck_assert_uint_eq(a[k].page, b[i].page);
			ck_assert_uint_eq(ma[k], mb[i]);
			ck_assert(a[k].score == b[i].score);
			k++;
		}
		ck_assert_uint_eq(k, (uint32_t)na);
		free(w2);
		free(pw);
	}
	free(ws);
	fix_done(&f);
}
END_TEST

/* No pages (no index, an empty one), a budget past the index, dense, and bad arguments. */
#define BAD() select_head(f.ix, NULL, &o, &grp, ws, ws_size, &one, &onem, NULL)
START_TEST(edges_and_bad_arguments)
{
	const uint32_t dim = 32, g = 2;
	struct fix f;
	float q[2 * 32], rest[2 * 33];
	struct select_opts o = {
		.budget_pages = 4, .overfetch = 2, .scale = 0.25f, .group_merge = 1, .page_mass = 1
	};
	struct select_group grp = { q, g, dim, NULL, 0 };
	struct idx_params ip;
	struct idx *empty;
	struct idx_hit *hits, one;
	uint16_t *mask, onem;
	uint32_t i, j;
	size_t ws_size;
	void *ws;

	for (i = 0; i < g * dim; i++)
		q[i] = (float)sin(1.1 * i);
	/* no index yet, and an index with no tokens: nothing selected, nothing left out */
	idx_params_default(&ip, dim);
	ck_assert_int_eq(idx_new(&ip, &empty), 0);
	ck_assert_uint_eq(select_max_hits(NULL, &o), 0);
	ck_assert_uint_eq(select_max_hits(empty, &o), 0);
	ws = ws_for(NULL, g, &o, &ws_size);
	for (j = 0; j < 2; j++) {
		memset(rest, 0x55, sizeof(rest));
		ck_assert_int_eq(select_head(j ? empty : NULL, NULL, &o, &grp, ws, ws_size, NULL,
					     NULL, rest),
				 0);
		for (i = 0; i < g; i++) {
			ck_assert(isinf(rest[i * (dim + 1)]) && rest[i * (dim + 1)] < 0);
			ck_assert(rest[i * (dim + 1) + 1] == 0 && rest[i * (dim + 1) + dim] == 0);
		}
	}
	free(ws);
	idx_free(empty);

	fix_init(&f, dim, 300, 15);
	hits = malloc(f.np * sizeof(*hits));
	mask = malloc(f.np * sizeof(*mask));
	/* budget past the index: every page, every row, nothing left out */
	o.budget_pages = f.np * 2;
	ck_assert_uint_eq(select_max_hits(f.ix, &o), f.np);
	ws = ws_for(&f, g, &o, &ws_size);
	ck_assert_int_eq(select_head(f.ix, &f.sums, &o, &grp, ws, ws_size, hits, mask, rest),
			 (int)f.np);
	for (i = 0; i < f.np; i++)
		ck_assert_uint_eq(mask[i], (1u << hits[i].fill) - 1);
	for (i = 0; i < g; i++)
		ck_assert(isinf(rest[i * (dim + 1)]) && rest[i * (dim + 1)] < 0);
	free(ws);
	/* dense: every page in id order, whole, score 0; no sums needed for its rest term */
	o.budget_pages = 1;
	o.dense = 1;
	ck_assert_uint_eq(select_max_hits(f.ix, &o), f.np);
	ws = ws_for(&f, g, &o, &ws_size);
	ck_assert_int_eq(select_head(f.ix, NULL, &o, &grp, ws, ws_size, hits, mask, rest),
			 (int)f.np);
	for (i = 0; i < f.np; i++) {
		ck_assert_uint_eq(hits[i].page, i);
		ck_assert_uint_eq(hits[i].fill, f.fill[i]);
		ck_assert_uint_eq(mask[i], (1u << f.fill[i]) - 1);
		ck_assert(hits[i].score == 0);
	}
	ck_assert(isinf(rest[0]) && rest[0] < 0);
	q[3] = INFINITY; /* checked even where nothing is searched */
	ck_assert_int_eq(select_head(f.ix, NULL, &o, &grp, ws, ws_size, hits, mask, rest), -EINVAL);
	q[3] = 0;
	free(ws);
	/* bad arguments; outputs untouched */
	o.dense = 0;
	ws = ws_for(&f, g, &o, &ws_size);
	one.page = 12345;
	onem = 7;
	ck_assert_uint_eq(select_ws_size(f.ix, 0, &o), 0);
	ck_assert_uint_eq(select_ws_size(f.ix, IDX_MAX_GROUP + 1, &o), 0);
	ck_assert_uint_eq(select_ws_size(f.ix, g, NULL), 0);
	ck_assert_int_eq(select_head(f.ix, NULL, NULL, &grp, ws, ws_size, hits, mask, NULL),
			 -EINVAL);
	ck_assert_int_eq(select_head(f.ix, NULL, &o, NULL, ws, ws_size, hits, mask, NULL), -EINVAL);
	ck_assert_int_eq(select_head(f.ix, NULL, &o, &grp, ws, ws_size, NULL, mask, NULL), -EINVAL);
	ck_assert_int_eq(select_head(f.ix, NULL, &o, &grp, ws, ws_size - 65, hits, mask, NULL),
			 -ENOSPC);
	ck_assert_int_eq(select_head(f.ix, NULL, &o, &grp, NULL, ws_size, hits, mask, NULL),
			 -ENOSPC);
	/* a rest term needs sums that cover the index */
	ck_assert_int_eq(select_head(f.ix, NULL, &o, &grp, ws, ws_size, hits, mask, rest), -EINVAL);
	grp.g = 0;
	ck_assert_int_eq(BAD(), -EINVAL);
	grp.g = IDX_MAX_GROUP + 1;
	ck_assert_int_eq(BAD(), -EINVAL);
	grp.g = g;
	grp.dim = 16; /* not the index's */
	ck_assert_int_eq(BAD(), -EINVAL);
	grp.dim = dim;
	o.scale = 0;
	ck_assert_int_eq(BAD(), -EINVAL);
	o.scale = 0.25f;
	grp.natt = 1; /* att NULL */
	ck_assert_int_eq(BAD(), -EINVAL);
	{
		struct select_rows bad = { q, 1, (enum ice_dtype)7 };

		grp.att = &bad;
		ck_assert_int_eq(BAD(), -EINVAL);
		grp.att = NULL;
		grp.natt = 0;
	}
	q[5] = NAN;
	ck_assert_int_eq(BAD(), -EINVAL);
	ck_assert_uint_eq(one.page, 12345);
	ck_assert_uint_eq(onem, 7);
	free(ws);
	free(hits);
	free(mask);
	fix_done(&f);
}
END_TEST
#undef BAD

static Suite *select_suite(void)
{
	Suite *s = suite_create("select");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, exact_selection_is_the_best_tokens);
	tcase_add_test(tc, rest_term_equals_direct_computation);
	tcase_add_test(tc, group_merge_serves_the_query_that_gains_most);
	tcase_add_test(tc, attended_rows_in_runs_and_dtypes);
	tcase_add_test(tc, edges_and_bad_arguments);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	Suite *suites[] = { select_suite(), NULL };

	return check_run_suites(suites);
}
