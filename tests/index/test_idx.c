/*
 * DCI-tree tests: structural invariants after build and after many random inserts, exact
 * parents where the level above is small, lifting, search against brute force, planted needles,
 * SIMD paths against each other, dtypes, bad arguments, concurrent searches.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "idx.h"
#include "idx_simd.h"
#include "idx_simd_dot.h"
#include "synth.h"
#include "test_keys.h"

static float *gen_keys(uint32_t dim, size_t n, uint64_t seed)
{
	struct synth_params sp;
	float *k = malloc(n * dim * sizeof(float));

	ck_assert_ptr_nonnull(k);
	synth_params_default(&sp, dim);
	sp.seed = seed;
	sp.nclusters = 32;
	ck_assert_int_eq(synth_keys(&sp, n, k), 0);
	return k;
}

/* exact_max >= 100000 also lifts the cell cap, so every parent is the exact nearest (a capped
 * cell hands slabs of its tokens to new seeds instead). */
static struct idx *new_idx(uint32_t dim, float r1, uint32_t exact_max, uint32_t threads)
{
	struct idx_params p;
	struct idx *ix = NULL;

	idx_params_default(&p, dim);
	p.r1 = r1;
	p.exact_parent_max = exact_max;
	if (exact_max >= 100000)
		p.cell_cap = UINT32_MAX;
	p.threads = threads;
	ck_assert_int_eq(idx_new(&p, &ix), 0);
	return ix;
}

static double dotd(const float *a, const float *b, uint32_t d)
{
	double s = 0;
	uint32_t j;

	for (j = 0; j < d; j++)
		s += (double)a[j] * b[j];
	return s;
}

/* Every token in exactly one page, fills within bounds, stored keys equal to the input. */
static void check_structure(const struct idx *ix, const float *keys, size_t n, uint32_t dim)
{
	size_t np = idx_npages(ix), p, seen_total = 0;
	unsigned char *seen = calloc(n, 1);
	float *k = malloc(dim * sizeof(float));
	uint32_t pos[IDX_PAGE_CAP], fill, ver, s, pg;

	ck_assert_ptr_nonnull(seen);
	ck_assert_uint_eq(idx_ntokens(ix), n);
	for (p = 0; p < np; p++) {
		ck_assert_int_eq(idx_page_tokens(ix, (uint32_t)p, pos, &fill, &ver), 0);
		ck_assert_uint_ge(fill, 1);
		ck_assert_uint_le(fill, IDX_PAGE_CAP);
		ck_assert_uint_ge(ver, 1);
		for (s = 0; s < fill; s++) {
			ck_assert_uint_lt(pos[s], n);
			ck_assert_uint_eq(seen[pos[s]], 0);
			seen[pos[s]] = 1;
			ck_assert_int_eq(idx_token_page(ix, pos[s], &pg), 0);
			ck_assert_uint_eq(pg, p);
		}
		seen_total += fill;
	}
	ck_assert_uint_eq(seen_total, n);
	/* the index keeps the nodes' keys (and nothing else once its sketch is calibrated) */
	for (p = 0; p < n; p += 7) {
		uint32_t level;
		int rc = idx_token_key(ix, (uint32_t)p, k);

		ck_assert_int_eq(idx_token_parent(ix, (uint32_t)p, &level, NULL), 0);
		if (level >= 1)
			ck_assert_int_eq(rc, 0);
		if (rc == 0)
			ck_assert_mem_eq(k, keys + p * dim, dim * sizeof(float));
		else
			ck_assert_int_eq(rc, -ENOENT);
	}
	ck_assert_int_eq(idx_page_tokens(ix, (uint32_t)np, pos, &fill, &ver), -EINVAL);
	free(seen);
	free(k);
}

/*
 * Parent of every token is one level up (or the root when that level was empty) and the exact
 * lifted nearest among the nodes that existed when it was placed: for the first n0 (built
 * together) all of them, with M over all n0; for a later insert t those before t, with M over
 * keys 0..mend[t] (M covers each insert batch before it is placed; mend NULL: t + 1).
 */
static void check_parents_exact(const struct idx *ix, const float *keys, size_t n, uint32_t dim,
				size_t n0, const size_t *mend)
{
	uint32_t *lev = malloc(n * sizeof(uint32_t)), *par = malloc(n * sizeof(uint32_t));
	uint32_t *lst = malloc(n * sizeof(uint32_t));
	double *n2 = malloc(n * sizeof(double)), *mpre = malloc(n * sizeof(double)), m = 0;
	size_t t, u, checked = 0, nl, cnt[17] = { 0 }, off[18] = { 0 }, fillc[17] = { 0 };

	for (t = 0; t < n; t++) {
		ck_assert_int_eq(idx_token_parent(ix, (uint32_t)t, &lev[t], &par[t]), 0);
		ck_assert_uint_lt(lev[t], 16);
		cnt[lev[t]]++;
		n2[t] = dotd(keys + t * dim, keys + t * dim, dim);
	}
	for (t = 0; t < n; t++) {
		m = fmax(m, n2[t]);
		mpre[t] = m;
	}
	for (t = 0; t < n; t++) {
		size_t e = t < n0 ? n0 : mend ? mend[t] : t + 1;

		mpre[t] = mpre[e - 1];
	}
	for (nl = 0; nl < 16; nl++)
		off[nl + 1] = off[nl] + cnt[nl];
	for (t = 0; t < n; t++)
		lst[off[lev[t]] + fillc[lev[t]]++] = (uint32_t)t;
	for (t = 0; t < n; t++) {
		double mt = mpre[t], ht = sqrt(fmax(mt - n2[t], 0));
		double best = -INFINITY, mine = -INFINITY;
		size_t L = lev[t] + 1, i;
		int any = 0;

		for (i = off[L]; L < 16 && i < off[L + 1]; i++) {
			double s;

			u = lst[i];
			if (u >= (t < n0 ? n0 : t))
				continue;
			any = 1;
			s = dotd(keys + t * dim, keys + u * dim, dim) +
			    ht * sqrt(fmax(mt - n2[u], 0));
			if (s > best)
				best = s;
			if (u == par[t])
				mine = s;
		}
		if (!any) {
			ck_assert_uint_eq(par[t], UINT32_MAX);
			continue;
		}
		ck_assert_uint_ne(par[t], UINT32_MAX);
		ck_assert_uint_eq(lev[par[t]], lev[t] + 1);
		/* nearest up to float rounding of the two scores */
		ck_assert_msg(mine >= best - 1e-3 * (fabs(best) + 1),
			      "token %zu: parent %u scores %g, best %g", t, par[t], mine, best);
		checked++;
	}
	ck_assert_uint_gt(checked, n / 2);
	free(lev);
	free(par);
	free(lst);
	free(n2);
	free(mpre);
}

START_TEST(build_invariants_and_exact_parents)
{
	const uint32_t dim = 64;
	const size_t n = 3000;
	float *keys = gen_keys(dim, n, 1);
	struct idx *ix = new_idx(dim, 0.05f, 100000, 2);
	struct idx_info info;

	ck_assert_int_eq(idx_build(ix, keys, n, ICE_DTYPE_F32), 0);
	check_structure(ix, keys, n, dim);
	check_parents_exact(ix, keys, n, dim, n, NULL);
	idx_get_info(ix, &info);
	ck_assert_uint_gt(info.nseeds, 50);
	ck_assert_uint_ge(info.nlevels, 2);
	/* cells cut into full pages: at most one partial page per cell */
	ck_assert(info.mean_fill > 10.0);
	idx_free(ix);
	free(keys);
}
END_TEST

struct snap {
	uint32_t pos[IDX_PAGE_CAP], fill, ver;
};

START_TEST(inserts_keep_pages_growing)
{
	const uint32_t dim = 64;
	const size_t n0 = 2000, n = 6000;
	float *keys = gen_keys(dim, n, 2);
	struct idx *ix = new_idx(dim, 0.02f, _i ? 100000 : 4, 1);
	struct snap *old = calloc(n, sizeof(*old));
	uint32_t *dirty = malloc(n * sizeof(uint32_t)), pos[IDX_PAGE_CAP], fill, ver;
	unsigned char *isdirty = calloc(n, 1);
	size_t *mend = calloc(n, sizeof(size_t));
	size_t at = n0, np0, nd, p, i;

	srand(7);
	ck_assert_int_eq(idx_build(ix, keys, n0, ICE_DTYPE_F32), 0);
	/* build reports every page dirty, each once */
	nd = idx_take_dirty(ix, dirty, 5);
	ck_assert_uint_eq(nd, 5);
	nd += idx_take_dirty(ix, dirty + 5, n);
	ck_assert_uint_eq(nd, idx_npages(ix));
	ck_assert_uint_eq(idx_take_dirty(ix, dirty, n), 0);
	while (at < n) {
		size_t b = 1 + (size_t)rand() % 37;

		if (b > n - at)
			b = n - at;
		np0 = idx_npages(ix);
		for (p = 0; p < np0; p++)
			ck_assert_int_eq(idx_page_tokens(ix, (uint32_t)p, old[p].pos, &old[p].fill,
							 &old[p].ver),
					 0);
		ck_assert_int_eq(idx_insert(ix, keys + at * dim, b, ICE_DTYPE_F32), 0);
		for (i = at; i < at + b; i++)
			mend[i] = at + b;
		at += b;
		nd = idx_take_dirty(ix, dirty, n);
		memset(isdirty, 0, n);
		for (i = 0; i < nd; i++) {
			ck_assert_uint_lt(dirty[i], idx_npages(ix));
			ck_assert_uint_eq(isdirty[dirty[i]], 0);
			isdirty[dirty[i]] = 1;
		}
		/* old pages keep their tokens in place; only appends, and they bump the version */
		for (p = 0; p < np0; p++) {
			ck_assert_int_eq(idx_page_tokens(ix, (uint32_t)p, pos, &fill, &ver), 0);
			ck_assert_uint_ge(fill, old[p].fill);
			ck_assert_mem_eq(pos, old[p].pos, old[p].fill * sizeof(uint32_t));
			ck_assert_uint_eq(fill != old[p].fill, ver != old[p].ver);
			ck_assert_uint_eq(fill != old[p].fill, isdirty[p]);
		}
		for (p = np0; p < idx_npages(ix); p++)
			ck_assert_uint_eq(isdirty[p], 1);
	}
	check_structure(ix, keys, n, dim);
	if (_i)
		check_parents_exact(ix, keys, n, dim, n0, mend);
	idx_free(ix);
	free(keys);
	free(old);
	free(dirty);
	free(isdirty);
	free(mend);
}
END_TEST

/* Cells stop growing at cell_cap: newcomers become seeds instead. */
START_TEST(insert_bounds_cells)
{
	const uint32_t dim = 32;
	const size_t n = 4000;
	float *keys = calloc(n * dim, sizeof(float));
	struct idx_params p;
	struct idx *ix = NULL;
	struct idx_info info;
	size_t t;

	/* near-identical keys: every token's nearest seed is the same few */
	for (t = 0; t < n; t++)
		keys[t * dim + t % dim] = 1.0f + (float)(t % 3) * 1e-3f;
	idx_params_default(&p, dim);
	p.cell_cap = 100;
	ck_assert_int_eq(idx_new(&p, &ix), 0);
	if (_i) { /* bulk build splits big cells */
		ck_assert_int_eq(idx_build(ix, keys, n, ICE_DTYPE_F32), 0);
	} else { /* inserts send newcomers of a full cell to a new seed */
		ck_assert_int_eq(idx_insert(ix, keys, 10, ICE_DTYPE_F32), 0);
		for (t = 10; t < n; t++)
			ck_assert_int_eq(idx_insert(ix, keys + t * dim, 1, ICE_DTYPE_F32), 0);
	}
	idx_get_info(ix, &info);
	ck_assert_uint_le(info.max_cell, 100);
	check_structure(ix, keys, n, dim);
	idx_free(ix);
	free(keys);
}
END_TEST

/* With M >= every |k|^2, the lifted nearest neighbour of [q/|q|, 0] is the max-q.k key. */
/*
 * Past exact_parent_max seeds, level-0 parents come from the seed lists: nearly always the
 * exact nearest seed (lifted), and never far from it; the same for keys inserted later.
 */
START_TEST(list_parents_nearly_exact)
{
	const uint32_t dim = 32;
	const size_t n0 = 30000, n = 32000;
	float *keys = gen_keys(dim, n, 12);
	struct idx_params p;
	struct idx *ix = NULL;
	uint32_t *seeds = malloc(n * sizeof(uint32_t));
	size_t ns = 0, t, checked = 0, exact = 0, i;
	double m = 0, loss = 0, worst = 0;

	idx_params_default(&p, dim);
	p.r1 = 0.02f;
	p.exact_parent_max = 64;
	p.cell_cap = UINT32_MAX;
	ck_assert_int_eq(idx_new(&p, &ix), 0);
	ck_assert_int_eq(idx_build(ix, keys, n0, ICE_DTYPE_F32), 0);
	for (t = n0; t < n; t += 16)
		ck_assert_int_eq(idx_insert(ix, keys + t * dim, 16, ICE_DTYPE_F32), 0);
	for (t = 0; t < n; t++) {
		uint32_t lev;

		m = fmax(m, dotd(keys + t * dim, keys + t * dim, dim));
		ck_assert_int_eq(idx_token_parent(ix, (uint32_t)t, &lev, NULL), 0);
		if (lev == 1)
			seeds[ns++] = (uint32_t)t;
	}
	ck_assert_uint_gt(ns, 6 * 64);
	for (t = 0; t < n; t += 7) {
		const float *x = keys + t * dim;
		double hx = sqrt(fmax(m - dotd(x, x, dim), 0)), best = -INFINITY, mine = -INFINITY;
		uint32_t lev, par;

		ck_assert_int_eq(idx_token_parent(ix, (uint32_t)t, &lev, &par), 0);
		if (lev != 0)
			continue;
		/* a built token saw every seed of the build, an inserted one those before it */
		for (i = 0; i < ns && seeds[i] < (t < n0 ? n0 : t); i++) {
			const float *s = keys + (size_t)seeds[i] * dim;
			double v = dotd(x, s, dim) + hx * sqrt(fmax(m - dotd(s, s, dim), 0));

			best = fmax(best, v);
			if (seeds[i] == par)
				mine = v;
		}
		ck_assert(mine > -INFINITY); /* the parent is a seed placed before the token */
		checked++;
		exact += mine >= best - 1e-6 * m;
		loss += (best - mine) / m;
		worst = fmax(worst, (best - mine) / m);
	}
	printf("list parents: %zu checked, %.4f exact, mean loss %.2e, worst %.2e\n", checked,
	       (double)exact / checked, loss / checked, worst);
	ck_assert_uint_gt(checked, 2000);
	ck_assert(exact >= checked * 0.5);
	idx_free(ix);
	free(seeds);
	free(keys);
}
END_TEST

START_TEST(lifting_preserves_mips_order)
{
	const uint32_t dim = 64;
	const size_t n = 2000;
	float *keys = gen_keys(dim, n, 3), q[64];
	struct idx *ix = new_idx(dim, 0.01f, 64, 1);
	struct idx_info info;
	size_t t, u, trial;

	ck_assert_int_eq(idx_build(ix, keys, n, ICE_DTYPE_F32), 0);
	idx_get_info(ix, &info);
	for (t = 0; t < n; t++)
		ck_assert(dotd(keys + t * dim, keys + t * dim, dim) <= info.lift_m * (1 + 1e-5));
	srand(11);
	for (trial = 0; trial < 20; trial++) {
		double qn = 0, best_ip = -INFINITY, best_d = INFINITY;
		size_t arg_ip = 0, arg_d = 0;

		for (u = 0; u < dim; u++) {
			q[u] = (float)rand() / RAND_MAX - 0.5f;
			qn += (double)q[u] * q[u];
		}
		qn = sqrt(qn);
		for (t = 0; t < n; t++) {
			const float *k = keys + t * dim;
			double ip = dotd(q, k, dim), n2 = dotd(k, k, dim), d2 = 0, h;

			for (u = 0; u < dim; u++)
				d2 += (k[u] - q[u] / qn) * (k[u] - q[u] / qn);
			h = sqrt(fmax(info.lift_m - n2, 0));
			d2 += h * h;
			if (ip > best_ip)
				best_ip = ip, arg_ip = t;
			if (d2 < best_d)
				best_d = d2, arg_d = t;
		}
		ck_assert_uint_eq(arg_ip, arg_d);
	}
	idx_free(ix);
	free(keys);
}
END_TEST

/* Reference: best token score of every page from the input keys, then top-k. */
static void ref_top_pages(const struct idx *ix, const float *keys, const float *q, uint32_t dim,
			  uint32_t k, uint32_t *ret, float *ret_s)
{
	size_t np = idx_npages(ix), p, i, j;
	float *ps = malloc(np * sizeof(float));
	uint32_t pos[IDX_PAGE_CAP], fill, s;

	for (p = 0; p < np; p++) {
		idx_page_tokens(ix, (uint32_t)p, pos, &fill, NULL);
		ps[p] = -INFINITY;
		for (s = 0; s < fill; s++) {
			float v = (float)dotd(q, keys + (size_t)pos[s] * dim, dim);

			ps[p] = v > ps[p] ? v : ps[p];
		}
	}
	for (i = 0; i < k; i++) {
		size_t b = 0;

		for (j = 0; j < np; j++)
			if (ps[j] > ps[b])
				b = j;
		ret[i] = (uint32_t)b;
		ret_s[i] = ps[b];
		ps[b] = -INFINITY;
	}
	free(ps);
}

START_TEST(unlimited_beam_equals_brute_force)
{
	const uint32_t dim = 128, k = 16;
	const size_t n = 8000;
	float *keys = gen_keys(dim, n, 4), *q = malloc(4 * dim * sizeof(float)), rs[16];
	struct synth_params sp;
	struct idx *ix = new_idx(dim, 0.01f, 64, 2);
	struct idx_hit a[16], b[16];
	struct idx_search_opts all = { .beam = UINT32_MAX, .flags = 0 };
	uint32_t ref[16], trial, i, g;
	size_t ws_size;
	void *ws;

	ck_assert_int_eq(idx_build(ix, keys, n / 2, ICE_DTYPE_F32), 0);
	ck_assert_int_eq(idx_insert(ix, keys + n / 2 * dim, n / 2, ICE_DTYPE_F32), 0);
	synth_params_default(&sp, dim);
	sp.seed = 4;
	sp.nclusters = 32;
	ws_size = idx_search_ws_size(ix, 4, k);
	ws = malloc(ws_size);
	for (trial = 0; trial < 10; trial++) {
		sp.qseed = 100 + trial;
		ck_assert_int_eq(synth_queries(&sp, keys, n, 1, 4, q, NULL), 0);
		for (g = 1; g <= 4; g += 3) {
			int na = idx_search(ix, q, g, k, &all, ws, ws_size, a);
			int nb = idx_exact_search(ix, q, g, k, ws, ws_size, b);

			ck_assert_int_eq(na, (int)k);
			ck_assert_int_eq(nb, (int)k);
			for (i = 0; i < k; i++) {
				ck_assert_uint_eq(a[i].page, b[i].page);
				ck_assert(a[i].score == b[i].score);
				ck_assert_uint_ge(a[i].fill, 1);
			}
			if (g == 1) {
				ref_top_pages(ix, keys, q, dim, k, ref, rs);
				for (i = 0; i < k; i++)
					ck_assert(fabsf(b[i].score - rs[i]) <=
						  1e-4f * (fabsf(rs[i]) + 1));
			}
		}
		/* the tree walk over every cell, and sketch + cells together, also equal it */
		for (g = 0; g < 2; g++) {
			struct idx_search_opts walk = { .cells = UINT32_MAX,
							.flags = g ? 0 : IDX_SEARCH_NO_SKETCH };

			ck_assert_int_eq(idx_search(ix, q, 1, k, &walk, ws, ws_size, a), (int)k);
			ck_assert_int_eq(idx_exact_search(ix, q, 1, k, ws, ws_size, b), (int)k);
			ck_assert_mem_eq(a, b, sizeof(a));
		}
		all.flags = IDX_SEARCH_ALL;
		ck_assert_int_eq(idx_search(ix, q, 1, k, &all, ws, ws_size, a), (int)k);
		ck_assert_int_eq(idx_exact_search(ix, q, 1, k, ws, ws_size, b), (int)k);
		ck_assert_mem_eq(a, b, sizeof(a));
		all.flags = 0;
	}
	free(ws);
	idx_free(ix);
	free(keys);
	free(q);
}
END_TEST

/*
 * idx_top_k against a sort: the first k entries are the k largest (ties included) and the
 * k-th largest is returned, for every k, on data with many repeated values.
 */
START_TEST(top_k_is_a_partial_sort)
{
	enum { N = 257 };
	float x[N], y[N], sorted[N];
	uint64_t s = 3;
	size_t n, k, i;

	for (i = 0; i < N; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		sorted[i] = (float)((s >> 33) % 40); /* ties on purpose */
	}
	memcpy(x, sorted, sizeof(x));
	/* sort descending for the reference */
	for (i = 1; i < N; i++)
		for (n = i; n > 0 && sorted[n] > sorted[n - 1]; n--) {
			float t = sorted[n];

			sorted[n] = sorted[n - 1];
			sorted[n - 1] = t;
		}
	for (k = 1; k <= N; k++) {
		double want = 0, got = 0;

		memcpy(y, x, sizeof(y));
		ck_assert_float_eq(idx_top_k(y, N, k), sorted[k - 1]);
		for (i = 0; i < k; i++) {
			want += sorted[i];
			got += y[i];
		}
		ck_assert_double_eq(got, want);
	}
}
END_TEST

/*
 * idx_page_scores gives every token of every page its q.k for each query of a group, in
 * idx_page_tokens order: compared with a double-precision dot over the keys as given. Bad
 * arguments are refused.
 */
START_TEST(page_scores_match_dot_products)
{
	const uint32_t dim = 64, g = 3;
	const size_t n = 3000;
	float *keys = gen_keys(dim, n, 5), q[3 * 64], sc[3 * IDX_PAGE_CAP];
	struct idx *ix = new_idx(dim, 0.01f, 64, 2);
	uint32_t pg, np, j, t, i, pos[IDX_PAGE_CAP], fill, seen = 0;
	size_t wsz;
	void *ws;

	for (i = 0; i < g * dim; i++)
		q[i] = (float)sin(0.37 * i + 1.0);
	ck_assert_int_eq(idx_build(ix, keys, n, ICE_DTYPE_F32), 0);
	wsz = idx_page_ws_size(ix);
	ws = malloc(wsz);
	np = (uint32_t)idx_npages(ix);
	for (pg = 0; pg < np; pg++) {
		ck_assert_int_eq(idx_page_tokens(ix, pg, pos, &fill, NULL), 0);
		ck_assert_int_eq(idx_page_scores(ix, pg, q, g, ws, wsz, sc), (int)fill);
		for (j = 0; j < g; j++)
			for (t = 0; t < fill; t++) {
				double x = dotd(q + j * dim, keys + (size_t)pos[t] * dim, dim);

				ck_assert_double_eq_tol(sc[j * IDX_PAGE_CAP + t], x,
							1e-3 * (1 + fabs(x)));
			}
		seen += fill;
	}
	ck_assert_uint_eq(seen, n);
	ck_assert_int_eq(idx_page_scores(ix, np, q, g, ws, wsz, sc), -EINVAL);
	ck_assert_int_eq(idx_page_scores(ix, 0, q, 0, ws, wsz, sc), -EINVAL);
	ck_assert_int_eq(idx_page_scores(ix, 0, q, IDX_MAX_GROUP + 1, ws, wsz, sc), -EINVAL);
	ck_assert_int_eq(idx_page_scores(NULL, 0, q, g, ws, wsz, sc), -EINVAL);
	ck_assert_int_eq(idx_page_scores(ix, 0, q, g, ws, wsz, NULL), -EINVAL);
	ck_assert_int_eq(idx_page_scores(ix, 0, q, g, ws, wsz - 64, sc), -ENOSPC);
	q[5] = NAN;
	ck_assert_int_eq(idx_page_scores(ix, 0, q, g, ws, wsz, sc), -EINVAL);
	idx_free(ix);
	free(keys);
	free(ws);
}
END_TEST

/*
 * idx_pick_tokens takes the budget's best tokens among a search's pages: as many as the budget
 * (or all the pages hold), and no token left out outweighs one taken, the weight being
 * max_j (q_j.k - bias[j]) recomputed here in double; with and without offsets. Bad arguments
 * and a short workspace are refused.
 */
START_TEST(picked_tokens_are_the_heaviest)
{
	const uint32_t dim = 32, g = 3, k = 8;
	const size_t n = 4000;
	float *keys = gen_keys(dim, n, 6), q[3 * 32], bias[3] = { 1.5f, -2.0f, 0.25f };
	struct idx *ix = new_idx(dim, 0.01f, 64, 2);
	struct idx_hit hits[8];
	struct idx_search_opts so = { .flags = IDX_SEARCH_ALL };
	uint16_t mask[8];
	uint32_t trial, i, j, t, pos[IDX_PAGE_CAP], fill, budget, total;
	float ws_small[4];
	size_t ws_size;
	void *ws, *pws;
	int got, taken;

	ck_assert_int_eq(idx_build(ix, keys, n, ICE_DTYPE_F32), 0);
	ws_size = idx_search_ws_size(ix, g, k);
	ws = malloc(ws_size);
	pws = malloc(idx_pick_ws_size(ix, k));
	for (trial = 0; trial < 12; trial++) {
		const float *bp = trial % 2 ? bias : NULL;
		double in_min = 1e300, out_max = -1e300;
		uint32_t cnt = 0;

		for (i = 0; i < g * dim; i++)
			q[i] = (float)sin(0.71 * i + trial) * 2.0f;
		so.bias = bp;
		got = idx_search(ix, q, g, k, &so, ws, ws_size, hits);
		ck_assert_int_eq(got, (int)k);
		total = 0;
		for (i = 0; i < k; i++)
			total += hits[i].fill;
		budget = trial < 10 ? 8 + 9 * trial : total + 3;
		taken = idx_pick_tokens(ix, q, g, bp, hits, k, budget, pws, idx_pick_ws_size(ix, k),
					mask);
		ck_assert_int_eq(taken, (int)(budget < total ? budget : total));
		for (i = 0; i < k; i++) {
			ck_assert_int_eq(idx_page_tokens(ix, hits[i].page, pos, &fill, NULL), 0);
			ck_assert_uint_eq(mask[i] >> fill, 0);
			for (t = 0; t < fill; t++) {
				double w = -1e300;

				for (j = 0; j < g; j++) {
					double x = dotd(q + j * dim, keys + (size_t)pos[t] * dim,
							dim) -
						   (bp ? bp[j] : 0);

					w = x > w ? x : w;
				}
				if (mask[i] >> t & 1) {
					cnt++;
					in_min = w < in_min ? w : in_min;
				} else {
					out_max = w > out_max ? w : out_max;
				}
			}
		}
		ck_assert_uint_eq(cnt, (uint32_t)taken);
		ck_assert_msg(out_max <= in_min + 1e-4 * (1 + fabs(in_min)),
			      "left out %g > taken %g", out_max, in_min);
	}
	ck_assert_int_eq(idx_pick_tokens(ix, q, g, NULL, hits, k, 20, ws_small, sizeof(ws_small),
					 mask),
			 -ENOSPC);
	ck_assert_int_eq(idx_pick_tokens(NULL, q, g, NULL, hits, k, 20, pws,
					 idx_pick_ws_size(ix, k), mask),
			 -EINVAL);
	ck_assert_int_eq(idx_pick_tokens(ix, q, 0, NULL, hits, k, 20, pws, idx_pick_ws_size(ix, k),
					 mask),
			 -EINVAL);
	bias[1] = INFINITY;
	ck_assert_int_eq(idx_pick_tokens(ix, q, g, bias, hits, k, 20, pws, idx_pick_ws_size(ix, k),
					 mask),
			 -EINVAL);
	hits[2].page = (uint32_t)idx_npages(ix);
	ck_assert_int_eq(idx_pick_tokens(ix, q, g, NULL, hits, k, 20, pws, idx_pick_ws_size(ix, k),
					 mask),
			 -EINVAL);
	free(ws);
	free(pws);
	idx_free(ix);
	free(keys);
}
END_TEST

/*
 * A group merged by offset score (opts.bias) against brute force: every page scores
 * max_j(page score_j - bias[j]) in double, the k best in order, where a page's score is its
 * best q.k or (opts.mass_scale = s > 0) log(sum exp(s q.k)) / s over its tokens. Offsets are
 * drawn so that each query wins some pages; a non-finite offset or a negative scale is refused.
 */
START_TEST(biased_group_merge_equals_brute_force)
{
	const uint32_t dim = 64, k = 12, g = 4;
	const size_t n = 6000;
	float *keys = gen_keys(dim, n, 8), *q = malloc(g * dim * sizeof(float)), bias[4];
	struct synth_params sp;
	struct idx *ix = new_idx(dim, 0.01f, 64, 2);
	struct idx_hit a[12];
	struct idx_search_opts all = { .flags = IDX_SEARCH_ALL, .bias = bias };
	uint32_t trial, i, j, t, pg, np, pos[IDX_PAGE_CAP], fill, won[4] = { 0 };
	double *adj, *best;
	size_t ws_size;
	void *ws;

	ck_assert_int_eq(idx_build(ix, keys, n, ICE_DTYPE_F32), 0);
	np = (uint32_t)idx_npages(ix);
	adj = malloc(np * sizeof(double));
	best = malloc((size_t)np * g * sizeof(double));
	synth_params_default(&sp, dim);
	sp.seed = 8;
	sp.nclusters = 32;
	ws_size = idx_search_ws_size(ix, g, k);
	ws = malloc(ws_size);
	for (trial = 0; trial < 16; trial++) {
		double ms = trial % 2 ? 0.125 : 0;

		all.mass_scale = (float)ms;
		sp.qseed = 300 + trial / 2;
		ck_assert_int_eq(synth_queries(&sp, keys, n, 1, g, q, NULL), 0);
		for (pg = 0; pg < np; pg++) {
			ck_assert_int_eq(idx_page_tokens(ix, pg, pos, &fill, NULL), 0);
			for (j = 0; j < g; j++) {
				double m = -1e300, x[IDX_PAGE_CAP], sum = 0;

				for (t = 0; t < fill; t++) {
					x[t] = 0;
					for (i = 0; i < dim; i++)
						x[t] += (double)q[j * dim + i] *
							keys[(size_t)pos[t] * dim + i];
					m = x[t] > m ? x[t] : m;
				}
				if (ms > 0) {
					for (t = 0; t < fill; t++)
						sum += exp((x[t] - m) * ms);
					m += log(sum) / ms;
				}
				best[(size_t)pg * g + j] = m;
			}
		}
		/* offset each query by its own best page score, shifted by a trial-dependent amount */
		for (j = 0; j < g; j++) {
			double m = -1e300;

			for (pg = 0; pg < np; pg++)
				m = best[(size_t)pg * g + j] > m ? best[(size_t)pg * g + j] : m;
			bias[j] = (float)(m + 0.5 * ((trial / 2 + j) % 3) +
					  0.01 * j); /* no exact ties */
		}
		for (pg = 0; pg < np; pg++) {
			adj[pg] = -1e300;
			for (j = 0; j < g; j++)
				if (best[(size_t)pg * g + j] - bias[j] > adj[pg])
					adj[pg] = best[(size_t)pg * g + j] - bias[j];
		}
		ck_assert_int_eq(idx_search(ix, q, g, k, &all, ws, ws_size, a), (int)k);
		for (i = 0; i < k; i++) {
			uint32_t above = 0;

			/* a[i] is the page the reference ranks i-th, up to float rounding */
			for (pg = 0; pg < np; pg++)
				above += adj[pg] > adj[a[i].page] + 1e-3;
			ck_assert_uint_eq(above, i);
			if (i)
				ck_assert(adj[a[i].page] <= adj[a[i - 1].page] + 1e-3);
			for (j = 0; j < g; j++)
				if (fabs(best[(size_t)a[i].page * g + j] - bias[j] -
					 adj[a[i].page]) < 1e-3) {
					won[j]++;
					ck_assert(
						fabs(a[i].score - best[(size_t)a[i].page * g + j]) <
						1e-3 * (fabs(a[i].score) + 1));
					break;
				}
		}
	}
	for (j = 0; j < g; j++)
		ck_assert_uint_gt(won[j], 0);
	all.mass_scale = -1;
	ck_assert_int_eq(idx_search(ix, q, g, k, &all, ws, ws_size, a), -EINVAL);
	all.mass_scale = 0;
	bias[2] = NAN;
	ck_assert_int_eq(idx_search(ix, q, g, k, &all, ws, ws_size, a), -EINVAL);
	free(ws);
	free(adj);
	free(best);
	idx_free(ix);
	free(keys);
	free(q);
}
END_TEST

/* Needles planted among synthetic keys are found at budgets 64, 128, 256 (k = 4, 8, 16). */
START_TEST(planted_needles_found_at_every_budget)
{
	const uint32_t dim = 128;
	const size_t n = 20000;
	float *keys = gen_keys(dim, n, 5), q[128];
	struct idx *ix = new_idx(dim, 0.01f, 64, 2);
	struct idx_hit hits[16];
	uint32_t kk, trial, i, needle[3], page;
	size_t ws_size, j;
	void *ws;

	double maxn = 0;

	srand(5);
	for (j = 0; j < n; j++)
		maxn = fmax(maxn, sqrt(dotd(keys + j * dim, keys + j * dim, dim)));
	for (trial = 0; trial < 3; trial++) {
		float *nk;
		double nn = 0;

		needle[trial] = (uint32_t)((size_t)rand() % n);
		nk = keys + (size_t)needle[trial] * dim;
		/* a key 1.5x longer than any other along a random direction: the query's top key */
		for (j = 0; j < dim; j++) {
			nk[j] = (float)rand() / RAND_MAX - 0.5f;
			nn += (double)nk[j] * nk[j];
		}
		for (j = 0; j < dim; j++)
			nk[j] = (float)(nk[j] / sqrt(nn) * 1.5 * maxn);
	}
	ck_assert_int_eq(idx_build(ix, keys, n / 2, ICE_DTYPE_F32), 0);
	for (j = n / 2; j < n; j += 100)
		ck_assert_int_eq(idx_insert(ix, keys + j * dim, 100, ICE_DTYPE_F32), 0);
	ws_size = idx_search_ws_size(ix, 1, 16);
	ws = malloc(ws_size);
	for (trial = 0; trial < 3; trial++) {
		for (j = 0; j < dim; j++)
			q[j] = keys[(size_t)needle[trial] * dim + j] / (float)maxn;
		ck_assert_int_eq(idx_token_page(ix, needle[trial], &page), 0);
		for (kk = 4; kk <= 16; kk *= 2) {
			int nh = idx_search(ix, q, 1, kk, NULL, ws, ws_size, hits);

			ck_assert_int_eq(nh, (int)kk);
			for (i = 0; i < kk; i++)
				if (hits[i].page == page)
					break;
			ck_assert_msg(i < kk, "needle %u missing at k=%u", needle[trial], kk);
		}
	}
	free(ws);
	/* a k beyond the largest beam still gets k pages, the exact ones */
	{
		const uint32_t kbig = 1100;
		struct idx_hit *ha = malloc(kbig * sizeof(*ha)), *hb = malloc(kbig * sizeof(*hb));

		ck_assert_uint_gt(idx_npages(ix), kbig);
		ws_size = idx_search_ws_size(ix, 1, kbig);
		ws = malloc(ws_size);
		ck_assert_int_eq(idx_search(ix, q, 1, kbig, NULL, ws, ws_size, ha), (int)kbig);
		ck_assert_int_eq(idx_exact_search(ix, q, 1, kbig, ws, ws_size, hb), (int)kbig);
		ck_assert_mem_eq(ha, hb, kbig * sizeof(*ha));
		free(ha);
		free(hb);
		free(ws);
	}
	idx_free(ix);
	free(keys);
}
END_TEST

/* An index grown by inserts alone calibrates its sketch at 1024 tokens and then searches
 * through it: a planted needle is still found, and the result matches the exact pages. */
START_TEST(insert_only_index_searches_through_its_sketch)
{
	const uint32_t dim = 64, k = 8;
	const size_t n = 6000;
	float *keys = gen_keys(dim, n, 12), q[64];
	struct idx *ix = new_idx(dim, 0.01f, 64, 1);
	struct idx_hit hits[8], ex[8];
	struct idx_search_opts narrow = { .beam = 8 };
	uint32_t page, i;
	size_t at, ws_size, j;
	void *ws;
	double maxn = 0;

	for (j = 0; j < n; j++)
		maxn = fmax(maxn, sqrt(dotd(keys + j * dim, keys + j * dim, dim)));
	for (j = 0; j < dim; j++) /* needle at 4321: 1.5x the longest key, along channel 5 */
		keys[4321 * dim + j] = j == 5 ? (float)(1.5 * maxn) : 0.0f;
	for (at = 0; at < n; at += 7)
		ck_assert_int_eq(idx_insert(ix, keys + at * dim, at + 7 <= n ? 7 : n - at,
					    ICE_DTYPE_F32),
				 0);
	check_structure(ix, keys, n, dim);
	for (j = 0; j < dim; j++)
		q[j] = j == 5 ? 1.0f : 0.0f;
	ws_size = idx_search_ws_size(ix, 1, k);
	ws = malloc(ws_size);
	ck_assert_int_eq(idx_token_page(ix, 4321, &page), 0);
	ck_assert_int_eq(idx_search(ix, q, 1, k, &narrow, ws, ws_size, hits), (int)k);
	ck_assert_uint_eq(hits[0].page, page);
	/* with a beam of 8 pages the sketch alone picked them: the exact top 8 must be there */
	ck_assert_int_eq(idx_exact_search(ix, q, 1, k, ws, ws_size, ex), (int)k);
	ck_assert_uint_eq(ex[0].page, page);
	for (i = 0; i < k; i++)
		ck_assert(hits[i].score <= ex[0].score);
	free(ws);
	idx_free(ix);
	free(keys);
}
END_TEST

/* Page recall@k of idx_search against the exact pages, over nq queries. */
static double sketch_recall(const struct idx *ix, const float *q, size_t nq, uint32_t dim,
			    uint32_t k)
{
	size_t ws_size = idx_search_ws_size(ix, 1, k), i;
	struct idx_hit hits[16], ex[16];
	void *ws = malloc(ws_size);
	double rec = 0;
	int a, b, x, y;

	ck_assert_ptr_nonnull(ws);
	for (i = 0; i < nq; i++) {
		a = idx_search(ix, q + i * dim, 1, k, NULL, ws, ws_size, hits);
		b = idx_exact_search(ix, q + i * dim, 1, k, ws, ws_size, ex);
		ck_assert_int_eq(a, (int)k);
		ck_assert_int_eq(b, (int)k);
		for (x = 0; x < a; x++)
			for (y = 0; y < b; y++)
				if (hits[x].page == ex[y].page) {
					rec += 1.0 / k;
					break;
				}
	}
	free(ws);
	return rec / nq;
}

/*
 * One key a thousand times the usual size (a corrupted or extreme activation) must cost its own
 * page, not the sketch every query ranks by: its square once set every channel's step, and
 * recall fell to noise. Bulk build, and the insert path (sketch calibrated at IDX_SK_CALIB tokens
 * with the outlier among them).
 */
START_TEST(one_huge_key_costs_only_its_page)
{
	const uint32_t dim = 64, k = 8;
	const size_t n = 16384, nq = 32;
	float *keys = gen_keys(dim, n, 21), *q = malloc(nq * dim * sizeof(float));
	struct synth_params sp;
	double clean, huge, ins;
	struct idx *ix;
	size_t j, at;

	ck_assert_ptr_nonnull(q);
	synth_params_default(&sp, dim);
	sp.seed = 21;
	sp.nclusters = 32;
	ck_assert_int_eq(synth_queries(&sp, keys, n, nq, 1, q, NULL), 0);
	ix = new_idx(dim, 0.01f, 4096, 1);
	ck_assert_int_eq(idx_build(ix, keys, n, ICE_DTYPE_F32), 0);
	clean = sketch_recall(ix, q, nq, dim, k);
	idx_free(ix);
	for (j = 0; j < dim; j++)
		keys[500 * dim + j] *= 1000.0f;
	ix = new_idx(dim, 0.01f, 4096, 1);
	ck_assert_int_eq(idx_build(ix, keys, n, ICE_DTYPE_F32), 0);
	huge = sketch_recall(ix, q, nq, dim, k);
	idx_free(ix);
	ix = new_idx(dim, 0.01f, 4096, 1);
	for (at = 0; at < n; at += 64)
		ck_assert_int_eq(idx_insert(ix, keys + at * dim, 64, ICE_DTYPE_F32), 0);
	ins = sketch_recall(ix, q, nq, dim, k);
	idx_free(ix);
	ck_assert_msg(clean >= 0.9, "recall without the outlier %.3f", clean);
	ck_assert_msg(huge >= clean - 0.05,
		      "bulk build: recall %.3f with the outlier, %.3f without", huge, clean);
	ck_assert_msg(ins >= clean - 0.05, "inserts: recall %.3f with the outlier, %.3f without",
		      ins, clean);
	free(q);
	free(keys);
}
END_TEST

/* Two indexes hold the same thing: structure, every page, the dirty set, search results. */
static void check_same(struct idx *a, struct idx *b, uint32_t dim, uint64_t seed)
{
	struct idx_info ia, ib;
	uint32_t pa[IDX_PAGE_CAP], pb[IDX_PAGE_CAP], fa, fb, va, vb, ida[64], idb[64];
	struct idx_hit ha[8], hb[8];
	size_t p, na, nb, ws_size, i;
	float q[2 * 64];
	void *ws;
	int r;

	idx_get_info(a, &ia);
	idx_get_info(b, &ib);
	ck_assert_uint_eq(ia.ntokens, ib.ntokens);
	ck_assert_uint_eq(ia.npages, ib.npages);
	ck_assert_uint_eq(ia.nseeds, ib.nseeds);
	ck_assert_uint_eq(ia.nnodes, ib.nnodes);
	ck_assert_uint_eq(ia.nlevels, ib.nlevels);
	ck_assert_uint_eq(ia.max_cell, ib.max_cell);
	ck_assert(ia.lift_m == ib.lift_m);
	for (p = 0; p < ia.npages; p++) {
		ck_assert_int_eq(idx_page_tokens(a, (uint32_t)p, pa, &fa, &va), 0);
		ck_assert_int_eq(idx_page_tokens(b, (uint32_t)p, pb, &fb, &vb), 0);
		ck_assert_uint_eq(fa, fb);
		ck_assert_uint_eq(va, vb);
		ck_assert_mem_eq(pa, pb, fa * sizeof(uint32_t));
	}
	for (p = 0; p < ia.ntokens; p++) {
		uint32_t la, lb, ra, rb;

		ck_assert_int_eq(idx_token_parent(a, (uint32_t)p, &la, &ra), 0);
		ck_assert_int_eq(idx_token_parent(b, (uint32_t)p, &lb, &rb), 0);
		ck_assert_uint_eq(la, lb);
		ck_assert_uint_eq(ra, rb);
	}
	ck_assert_uint_eq(idx_ndirty(a), idx_ndirty(b));
	do {
		na = idx_take_dirty(a, ida, 64);
		nb = idx_take_dirty(b, idb, 64);
		ck_assert_uint_eq(na, nb);
		ck_assert_mem_eq(ida, idb, na * sizeof(uint32_t));
	} while (na == 64);
	ws_size = idx_search_ws_size(a, 2, 8);
	ck_assert_uint_eq(ws_size, idx_search_ws_size(b, 2, 8));
	ws = malloc(ws_size);
	for (i = 0; i < 20; i++) {
		float *k = gen_keys(dim, 2, seed + i);

		memcpy(q, k, sizeof(float) * 2 * dim);
		free(k);
		r = idx_search(a, q, 2, 8, NULL, ws, ws_size, ha);
		ck_assert_int_eq(idx_search(b, q, 2, 8, NULL, ws, ws_size, hb), r);
		ck_assert_mem_eq(ha, hb, (size_t)r * sizeof(*ha));
		r = idx_exact_search(a, q, 1, 8, ws, ws_size, ha);
		ck_assert_int_eq(idx_exact_search(b, q, 1, 8, ws, ws_size, hb), r);
		ck_assert_mem_eq(ha, hb, (size_t)r * sizeof(*ha));
	}
	free(ws);
}

static void insert_chunks(struct idx *ix, const float *k, size_t n, size_t chunk, uint32_t dim)
{
	size_t at;

	for (at = 0; at < n; at += chunk)
		ck_assert_int_eq(idx_insert(ix, k + at * dim, n - at < chunk ? n - at : chunk,
					    ICE_DTYPE_F32),
				 0);
}

/*
 * A rolled-back index is the index before: A gets tokens that are then rolled back, B never
 * sees them; after the same later inserts both must be identical. 0: after a build, 1: across
 * the sketch's calibration in an insert-only index, 2: the build of an empty index undone,
 * 3: a segment build (and inserts after it) undone.
 */
START_TEST(rollback_undoes_inserts_exactly)
{
	const uint32_t dim = 64;
	float *k0 = gen_keys(dim, 2000, 31), *k1 = gen_keys(dim, 900, 32);
	float *k2 = gen_keys(dim, 400, 33), nan_row[64 * 2];
	struct idx *a = new_idx(dim, 0.01f, 64, 1), *b = new_idx(dim, 0.01f, 64, 1);
	struct idx_mark m;
	uint32_t ids[64];

	if (_i == 0) {
		ck_assert_int_eq(idx_build(a, k0, 2000, ICE_DTYPE_F32), 0);
		ck_assert_int_eq(idx_build(b, k0, 2000, ICE_DTYPE_F32), 0);
		while (idx_take_dirty(a, ids, 64) == 64)
			;
		while (idx_take_dirty(b, ids, 64) == 64)
			;
		idx_mark(a, &m);
		insert_chunks(a, k1, 900, 16, dim);
		idx_rollback(a, &m);
	} else if (_i == 1) {
		insert_chunks(a, k0, 500, 7, dim);
		insert_chunks(b, k0, 500, 7, dim);
		idx_mark(a, &m);
		ck_assert_int_eq(idx_insert(a, k1, 900, ICE_DTYPE_F32), 0); /* calibrates: 1400 */
		idx_rollback(a, &m);
	} else if (_i == 3) {
		/* a segment build on a built index, undone */
		ck_assert_int_eq(idx_build(a, k0, 2000, ICE_DTYPE_F32), 0);
		ck_assert_int_eq(idx_build(b, k0, 2000, ICE_DTYPE_F32), 0);
		while (idx_take_dirty(a, ids, 64) == 64)
			;
		while (idx_take_dirty(b, ids, 64) == 64)
			;
		idx_mark(a, &m);
		ck_assert_int_eq(idx_build(a, k1, 900, ICE_DTYPE_F32), 0);
		insert_chunks(a, k2, 100, 16, dim);
		idx_rollback(a, &m);
	} else {
		idx_mark(a, &m);
		ck_assert_int_eq(idx_build(a, k1, 900, ICE_DTYPE_F32), 0);
		insert_chunks(a, k2, 400, 16, dim);
		idx_rollback(a, &m);
		ck_assert_uint_eq(idx_ntokens(a), 0);
		ck_assert_int_eq(idx_build(a, k0, 2000, ICE_DTYPE_F32), 0);
		ck_assert_int_eq(idx_build(b, k0, 2000, ICE_DTYPE_F32), 0);
	}
	check_same(a, b, dim, 100 + (uint64_t)_i);
	insert_chunks(a, k2, 400, 16, dim);
	insert_chunks(b, k2, 400, 16, dim);
	check_same(a, b, dim, 200 + (uint64_t)_i);
	/* A bad key anywhere in a batch: nothing of it goes in. */
	memcpy(nan_row, k2, sizeof(nan_row));
	nan_row[64 + 3] = NAN;
	ck_assert_int_eq(idx_insert(a, nan_row, 2, ICE_DTYPE_F32), -EINVAL);
	check_same(a, b, dim, 300 + (uint64_t)_i);
	idx_free(a);
	idx_free(b);
	free(k0);
	free(k1);
	free(k2);
}
END_TEST

/*
 * A bulk build on an index that has tokens is a segment: its own seeds and cells, new pages
 * only (no page that existed changes, so the owner rewrites nothing), the segment's tokens
 * parented inside it (or at the root), and searches over both exact against brute force.
 */
START_TEST(segment_build_rewrites_no_page)
{
	const uint32_t dim = 64, n0 = 3000, n1 = 2500, k = 8;
	float *keys = gen_keys(dim, n0 + n1, 51);
	struct idx *ix = new_idx(dim, 0.01f, 64, 2);
	uint32_t(*pos0)[IDX_PAGE_CAP], *fill0, *ver0, pos[IDX_PAGE_CAP], fill, ver, ids[64];
	uint32_t np0, np, p, t, got = 0, ref[8], level, par;
	struct idx_hit hits[8];
	size_t wsz, nd, i;
	float rs[8];
	void *ws;

	ck_assert_int_eq(idx_build(ix, keys, n0, ICE_DTYPE_F32), 0);
	while (idx_take_dirty(ix, ids, 64) == 64)
		;
	np0 = (uint32_t)idx_npages(ix);
	pos0 = malloc(np0 * sizeof(*pos0));
	fill0 = malloc(np0 * sizeof(*fill0));
	ver0 = malloc(np0 * sizeof(*ver0));
	for (p = 0; p < np0; p++)
		ck_assert_int_eq(idx_page_tokens(ix, p, pos0[p], &fill0[p], &ver0[p]), 0);
	ck_assert_int_eq(idx_build(ix, keys + (size_t)n0 * dim, n1, ICE_DTYPE_F32), 0);
	check_structure(ix, keys, n0 + n1, dim);
	np = (uint32_t)idx_npages(ix);
	ck_assert_uint_gt(np, np0);
	for (p = 0; p < np0; p++) {
		ck_assert_int_eq(idx_page_tokens(ix, p, pos, &fill, &ver), 0);
		ck_assert_uint_eq(fill, fill0[p]);
		ck_assert_uint_eq(ver, ver0[p]);
		ck_assert_mem_eq(pos, pos0[p], fill * sizeof(uint32_t));
	}
	/* the changed pages are the new ones, each once */
	ck_assert_uint_eq(idx_ndirty(ix), np - np0);
	do {
		nd = idx_take_dirty(ix, ids, 64);
		for (i = 0; i < nd; i++)
			ck_assert_uint_eq(ids[i], np0 + got++);
	} while (nd == 64);
	for (t = n0; t < n0 + n1; t++) {
		ck_assert_int_eq(idx_token_parent(ix, t, &level, &par), 0);
		ck_assert(par == UINT32_MAX || (par >= n0 && par < n0 + n1));
	}
	wsz = idx_search_ws_size(ix, 1, k);
	ws = malloc(wsz);
	for (i = 0; i < 10; i++) {
		const float *q = keys + (size_t)(i * 523 % (n0 + n1)) * dim;
		struct idx_search_opts so = { .flags = IDX_SEARCH_ALL };

		ck_assert_int_eq(idx_search(ix, q, 1, k, &so, ws, wsz, hits), (int)k);
		ref_top_pages(ix, keys, q, dim, k, ref, rs);
		for (t = 0; t < k; t++)
			ck_assert_double_eq_tol(hits[t].score, rs[t], 1e-3 * (1 + fabs(rs[t])));
	}
	free(ws);
	free(pos0);
	free(fill0);
	free(ver0);
	idx_free(ix);
	free(keys);
}
END_TEST

START_TEST(simd_paths_agree)
{
	const char *paths[] = { "portable", "avx2", "avx512" };
	const uint32_t dim = 64, k = 8;
	const size_t n = 4000;
	float *keys = gen_keys(dim, n, 6), *q = malloc(4 * dim * sizeof(float));
	struct synth_params sp;
	struct idx *ix = new_idx(dim, 0.01f, 64, 1);
	struct idx_hit ref[8], got[8];
	size_t ws_size;
	void *ws;
	uint32_t i, p;
	int tested = 0;

	synth_params_default(&sp, dim);
	sp.nclusters = 32;
	ck_assert_int_eq(synth_queries(&sp, keys, n, 1, 4, q, NULL), 0);
	ck_assert_int_eq(idx_simd_force("portable"), 0);
	ck_assert_int_eq(idx_build(ix, keys, n, ICE_DTYPE_F32), 0);
	ws_size = idx_search_ws_size(ix, 4, k);
	ws = malloc(ws_size);
	ck_assert_int_eq(idx_exact_search(ix, q, 4, k, ws, ws_size, ref), (int)k);
	for (p = 0; p < 3; p++) {
		int rc = idx_simd_force(paths[p]);

		if (rc == -ENOTSUP)
			continue;
		ck_assert_int_eq(rc, 0);
		ck_assert_str_eq(idx_simd_name(), paths[p]);
		ck_assert_int_eq(idx_exact_search(ix, q, 4, k, ws, ws_size, got), (int)k);
		for (i = 0; i < k; i++) {
			ck_assert_uint_eq(got[i].page, ref[i].page);
			ck_assert(fabsf(got[i].score - ref[i].score) <=
				  1e-4f * (fabsf(ref[i].score) + 1));
		}
		tested++;
	}
	ck_assert_int_ge(tested, 1);
	/* the sketch-guided search too: integer sketch scores are identical on every path */
	ck_assert_int_eq(idx_simd_force("portable"), 0);
	ck_assert_int_eq(idx_search(ix, q, 4, k, NULL, ws, ws_size, ref), (int)k);
	for (p = 1; p < 3; p++) {
		if (idx_simd_force(paths[p]) == -ENOTSUP)
			continue;
		ck_assert_int_eq(idx_search(ix, q, 4, k, NULL, ws, ws_size, got), (int)k);
		for (i = 0; i < k; i++)
			ck_assert(fabsf(got[i].score - ref[i].score) <=
				  1e-4f * (fabsf(ref[i].score) + 1));
	}
	ck_assert_int_eq(idx_simd_force("nonsense"), -EINVAL);
	ck_assert_int_eq(idx_simd_force("best"), 0);
	free(ws);
	idx_free(ix);
	free(keys);
	free(q);
}
END_TEST

/* Every SIMD path's kernels against plain loops on random data (odd fills, g = 1..6). */
START_TEST(kernels_match_reference)
{
	const char *paths[] = { "portable", "avx2", "avx512" };
	const uint32_t dim = 64;
	float *blk = aligned_alloc(64, dim * 16 * sizeof(float)),
	      *lo = aligned_alloc(64, dim * 16 * sizeof(float));
	uint8_t *sk = aligned_alloc(64, dim * 8);
	float q[6 * 64], out[6 * 16], ref;
	int8_t qq[6 * 64];
	int32_t so[16], off[6];
	float sm[6], alpha[16];
	uint32_t p, i, j, l, g, fill;

	srand(21);
	for (j = 0; j < dim * 16; j++) {
		blk[j] = (float)rand() / RAND_MAX - 0.5f;
		lo[j] = blk[j] - (float)rand() / RAND_MAX;
	}
	for (j = 0; j < dim * 8; j++)
		sk[j] = (uint8_t)rand();
	for (j = 0; j < 6 * dim; j++) {
		q[j] = (float)rand() / RAND_MAX - 0.5f;
		qq[j] = (int8_t)(rand() % 255 - 127);
	}
	for (l = 0; l < 16; l++)
		alpha[l] = 1.0f + (float)(rand() % 100) / 25.0f;
	for (i = 0; i < 6; i++)
		off[i] = rand() % 2000 - 1000;
	for (p = 0; p < 3; p++) {
		const struct idx_simd_ops *ops;

		if (idx_simd_force(paths[p]) != 0)
			continue;
		ops = idx_simd();
		for (g = 1; g <= 6; g++) {
			ops->score_block(blk, q, g, dim, out);
			for (i = 0; i < g; i++)
				for (l = 0; l < 16; l++) {
					ref = 0;
					for (j = 0; j < dim; j++)
						ref += q[i * dim + j] * blk[j * 16 + l];
					ck_assert(fabsf(out[i * 16 + l] - ref) < 1e-4f);
				}
			for (fill = 1; fill <= 16; fill += 5) {
				ops->sk_max(sk, alpha, qq, off, g, dim, fill, sm);
				for (i = 0; i < g; i++) {
					float m = -INFINITY;

					for (l = 0; l < fill; l++) {
						int32_t acc = 0;

						for (j = 0; j < dim; j++) {
							uint8_t x =
								sk[(j / 8) * 64 + l * 4 + j % 4];
							int code = j % 8 < 4 ? x & 15 : x >> 4;

							acc += code * qq[i * dim + j];
						}
						if (alpha[l] * (float)(acc - off[i]) > m)
							m = alpha[l] * (float)(acc - off[i]);
						if (i == 0 && fill == 16) {
							ops->sk_block(sk, qq, dim, so);
							ck_assert_int_eq(so[l], acc);
						}
					}
					ck_assert(fabsf(sm[i] - m) <= 1e-6f * fabsf(m));
				}
			}
		}
		ops->bound_block(blk, lo, q, dim, out);
		for (l = 0; l < 16; l++) {
			ref = 0;
			for (j = 0; j < dim; j++)
				ref += fmaxf(q[j] * blk[j * 16 + l], q[j] * lo[j * 16 + l]);
			ck_assert(fabsf(out[l] - ref) < 1e-4f);
		}
		ck_assert(fabsf(ops->dot(q, q + dim, dim) - (float)dotd(q, q + dim, dim)) < 1e-4f);
	}
	idx_simd_force("best");
	free(blk);
	free(lo);
	free(sk);
}
END_TEST

/* The nearest-node kernels on every SIMD path against double-precision lifted scores: the
 * best (and the p best, in order) of partial and full blocks, g = 1..16, a running best kept
 * across calls. */
START_TEST(lift_kernels_match_reference)
{
	const char *paths[] = { "portable", "avx2", "avx512" };
	const uint32_t dim = 48, p = 5;
	float *blk = aligned_alloc(64, dim * 16 * sizeof(float));
	float xs[16 * 48], hx[16], h[16], best[16], top[16 * 5];
	uint32_t arg[16], targ[16 * 5], cnt[16], path, g, lanes, i, j, l, r;
	double ref[16];

	srand(33);
	for (j = 0; j < dim * 16; j++)
		blk[j] = (float)rand() / RAND_MAX - 0.5f;
	for (j = 0; j < 16 * dim; j++)
		xs[j] = (float)rand() / RAND_MAX - 0.5f;
	for (l = 0; l < 16; l++) {
		h[l] = (float)rand() / RAND_MAX * 2.0f;
		hx[l] = (float)rand() / RAND_MAX * 2.0f;
	}
	for (path = 0; path < 3; path++) {
		if (idx_simd_force(paths[path]) != 0)
			continue;
		for (g = 1; g <= 16; g += 5)
			for (lanes = 1; lanes <= 16; lanes += 3) {
				for (i = 0; i < g; i++) {
					best[i] = i % 2 ? -INFINITY : 0.25f; /* a best to beat */
					arg[i] = 7777;
					cnt[i] = 0;
				}
				idx_lift_best(blk, h, xs, hx, g, dim, lanes, 100, best, arg);
				idx_lift_top(blk, h, xs, hx, g, dim, lanes, 100, p, top, targ, cnt);
				for (i = 0; i < g; i++) {
					double m = i % 2 ? -INFINITY : 0.25;
					uint32_t am = 7777, order[16];

					for (l = 0; l < lanes; l++) {
						ref[l] = 0;
						for (j = 0; j < dim; j++)
							ref[l] += (double)xs[i * dim + j] *
								  blk[j * 16 + l];
						ref[l] += (double)hx[i] * h[l];
						if (ref[l] > m + 1e-5) {
							m = ref[l];
							am = 100 + l;
						}
						order[l] = l;
					}
					ck_assert(fabs(best[i] - m) < 1e-4);
					if (am == 7777)
						ck_assert_uint_eq(arg[i], 7777);
					else
						ck_assert(fabs(ref[arg[i] - 100] - m) < 1e-4);
					/* the p best by the reference, best first */
					for (l = 1; l < lanes; l++)
						for (r = l;
						     r > 0 && ref[order[r]] > ref[order[r - 1]];
						     r--) {
							uint32_t t = order[r];

							order[r] = order[r - 1];
							order[r - 1] = t;
						}
					ck_assert_uint_eq(cnt[i], lanes < p ? lanes : p);
					for (r = 0; r < cnt[i]; r++) {
						ck_assert(fabs(top[i * p + r] - ref[order[r]]) <
							  1e-4);
						ck_assert(fabs(ref[targ[i * p + r] - 100] -
							       ref[order[r]]) < 1e-4);
					}
				}
			}
	}
	idx_simd_force("best");
	free(blk);
}
END_TEST

/* bf16 candidate scores against double precision: within the bound idx_simd_dot.h states,
 * and the bounds helper's upper and lower bounds around the exact lifted scores. */
START_TEST(bf16_scores_within_their_bound)
{
	const uint32_t dim = 64;
	float *blk = aligned_alloc(64, dim * 16 * sizeof(float)), out[16 * 16];
	float xs[16 * 64], bn[16], rn[16], sbn[16], srn[16], ca[16], cbb[16], h[16], hx[16];
	uint32_t *bb = malloc(dim * 8 * sizeof(uint32_t)), xb[16 * 32], tmp[32], g, i, j, l;
	float col[64];

	if (!idx_bf16_ok()) {
		free(blk);
		free(bb);
		return; /* no AVX-512 BF16 here: the exact pass is used */
	}
	srand(44);
	for (j = 0; j < dim * 16; j++)
		blk[j] = ((float)rand() / RAND_MAX - 0.5f) * (j % 7 == 0 ? 20.0f : 1.0f);
	for (j = 0; j < 16 * dim; j++)
		xs[j] = (float)rand() / RAND_MAX - 0.5f;
	idx_bf16_pack_block(blk, dim, bb);
	for (l = 0; l < 16; l++) {
		for (j = 0; j < dim; j++)
			col[j] = blk[j * 16 + l];
		idx_bf16_pack(col, dim, tmp, &sbn[l], &srn[l]);
		for (j = 0; j < dim / 2; j++)
			ck_assert_uint_eq(tmp[j], bb[j * 16 + l]);
		ca[l] = srn[l] + IDX_BF16_ACC * sbn[l];
		cbb[l] = sbn[l] + srn[l];
		h[l] = (float)rand() / RAND_MAX;
	}
	for (i = 0; i < 16; i++) {
		idx_bf16_pack(xs + i * dim, dim, xb + i * (dim / 2), &bn[i], &rn[i]);
		hx[i] = (float)rand() / RAND_MAX;
	}
	for (g = 1; g <= 16; g += 3) {
		idx_bf16_score(bb, xb, g, dim, out);
		for (i = 0; i < g; i++) {
			for (l = 0; l < 16; l++) {
				double ref = 0, e = (double)bn[i] * srn[l] +
						    (double)rn[i] * sbn[l] + (double)rn[i] * srn[l];

				for (j = 0; j < dim; j++)
					ref += (double)xs[i * dim + j] * blk[j * 16 + l];
				ck_assert(fabs(out[i * 16 + l] - ref) <= e + 1e-5 * bn[i] * sbn[l]);
			}
		}
		for (i = 0; i < g; i++) {
			float u, lo = -INFINITY;
			double best = -INFINITY;

			idx_bf16_bounds(out + i * 16, h, ca, cbb, hx + i, bn + i, rn + i, 0.0f, 1,
					16, &u, &lo);
			for (l = 0; l < 16; l++) {
				double ref = 0;

				for (j = 0; j < dim; j++)
					ref += (double)xs[i * dim + j] * blk[j * 16 + l];
				best = fmax(best, ref + (double)hx[i] * h[l]);
			}
			ck_assert(u >= best - 1e-5);
			ck_assert(lo <= best + 1e-5);
		}
	}
	free(blk);
	free(bb);
}
END_TEST

START_TEST(half_precision_input)
{
	const uint32_t dim = 32;
	const size_t n = 1500;
	float *keys = gen_keys(dim, n, 8), *conv = malloc(n * dim * sizeof(float));
	uint16_t *h = malloc(n * dim * 2);
	enum ice_dtype dt = _i ? ICE_DTYPE_F16 : ICE_DTYPE_BF16;
	struct idx *a = new_idx(dim, 0.02f, 64, 1), *b = new_idx(dim, 0.02f, 64, 1);
	size_t i;

	for (i = 0; i < n * dim; i++) {
		h[i] = dt == ICE_DTYPE_BF16 ? dtype_f32_to_bf16(keys[i]) :
					      dtype_f32_to_f16(keys[i]);
		conv[i] = dt == ICE_DTYPE_BF16 ? dtype_bf16_to_f32(h[i]) : dtype_f16_to_f32(h[i]);
		/* conversions round to the nearest representable value */
		ck_assert(fabsf(conv[i] - keys[i]) <=
			  fabsf(keys[i]) * (dt == ICE_DTYPE_BF16 ? 4e-3f : 1e-3f) + 1e-4f);
	}
	ck_assert_int_eq(idx_build(a, h, n, dt), 0);
	ck_assert_int_eq(idx_build(b, conv, n, ICE_DTYPE_F32), 0);
	check_structure(a, conv, n, dim);
	ck_assert_uint_eq(idx_npages(a), idx_npages(b));
	/* the same values give the same index */
	for (i = 0; i < n; i++) {
		uint32_t pa, pb;

		idx_token_page(a, (uint32_t)i, &pa);
		idx_token_page(b, (uint32_t)i, &pb);
		ck_assert_uint_eq(pa, pb);
	}
	ck_assert_float_eq(dtype_bf16_to_f32(dtype_f32_to_bf16(1.5f)), 1.5f);
	ck_assert_float_eq(dtype_f16_to_f32(dtype_f32_to_f16(-2.25f)), -2.25f);
	ck_assert_float_eq(dtype_f16_to_f32(dtype_f32_to_f16(65504.0f)), 65504.0f);
	ck_assert(isinf(dtype_f16_to_f32(dtype_f32_to_f16(1e6f))));
	ck_assert_float_eq(dtype_f16_to_f32(dtype_f32_to_f16(5.9604644775390625e-8f)),
			   5.9604644775390625e-8f);
	idx_free(a);
	idx_free(b);
	free(keys);
	free(conv);
	free(h);
}
END_TEST

static int failing_read(void *ctx, const struct idx *ix, const uint32_t *pages, uint32_t n,
			float *blocks, void *scratch)
{
	(void)ctx, (void)ix, (void)pages, (void)n, (void)blocks, (void)scratch;
	return -EIO;
}

/*
 * The index holds no keys once calibrated: exact scores come from its key source, whose
 * failure fails the search (never a guess), and with no source at all the search says so.
 * Until the sketch is calibrated (inserts alone, below IDX_SK_CALIB tokens) it needs none.
 */
START_TEST(exact_scores_come_from_the_key_source)
{
	const uint32_t dim = 64;
	const size_t n = 3000;
	float *keys = gen_keys(dim, n, 41), q[64];
	struct idx *ix = new_idx(dim, 0.01f, 64, 1), *small = new_idx(dim, 0.01f, 64, 1);
	struct idx_hit hits[8], ref[8];
	size_t wsz;
	void *ws;
	uint32_t i, ids[1];
	int got;

	for (i = 0; i < dim; i++)
		q[i] = keys[1234 * dim + i];
	ck_assert_int_eq((idx_build)(ix, keys, n, ICE_DTYPE_F32), 0); /* no source set */
	wsz = idx_search_ws_size(ix, 1, 8);
	ws = malloc(wsz);
	ck_assert_int_eq(idx_search(ix, q, 1, 8, NULL, ws, wsz, hits), -ENOKEY);
	ck_assert_int_eq(idx_exact_search(ix, q, 1, 8, ws, wsz, hits), -ENOKEY);
	idx_set_keys(ix, &(struct idx_keys){ failing_read, NULL, 0 });
	ck_assert_int_eq(idx_search(ix, q, 1, 8, NULL, ws, wsz, hits), -EIO);
	tk_keep(ix, 0, keys, n, ICE_DTYPE_F32); /* the test's own store */
	got = idx_search(ix, q, 1, 8, NULL, ws, wsz, hits);
	ck_assert_int_eq(got, 8);
	ck_assert_int_eq(idx_exact_search(ix, q, 1, 8, ws, wsz, ref), 8);
	ck_assert_uint_eq(hits[0].page, ref[0].page);
	ck_assert_float_eq(hits[0].score, ref[0].score);
	/* an index grown by inserts alone keeps its keys until its sketch is calibrated, then
	 * drops them once no mark reaches back (idx_take_dirty) */
	ck_assert_int_eq((idx_insert)(small, keys, 500, ICE_DTYPE_F32), 0);
	ck_assert_int_eq(idx_token_key(small, 7, q), 0);
	ck_assert_mem_eq(q, keys + 7 * dim, dim * sizeof(float));
	free(ws);
	wsz = idx_search_ws_size(small, 1, 8);
	ws = malloc(wsz);
	ck_assert_int_eq(idx_search(small, keys, 1, 8, NULL, ws, wsz, hits), 8);
	ck_assert_int_eq((idx_insert)(small, keys + 500 * dim, 600, ICE_DTYPE_F32), 0);
	while (idx_take_dirty(small, ids, 1) == 1)
		;
	free(ws);
	wsz = idx_search_ws_size(small, 1, 8); /* more seeds now */
	ws = malloc(wsz);
	ck_assert_int_eq(idx_search(small, keys, 1, 8, NULL, ws, wsz, hits), -ENOKEY);
	tk_keep(small, 0, keys, 1100, ICE_DTYPE_F32);
	ck_assert_int_eq(idx_search(small, keys, 1, 8, NULL, ws, wsz, hits), 8);
	free(ws);
	idx_free(ix);
	idx_free(small);
	free(keys);
}
END_TEST

START_TEST(bad_arguments)
{
	struct idx_params p;
	struct idx *ix = NULL;
	float keys[64 * 4] = { 0 }, q[64] = { 0 };
	struct idx_hit hits[4];
	static char ws[1 << 20];
	uint32_t pos[16], fill, ver, page;

	idx_params_default(&p, 60);
	ck_assert_int_eq(idx_new(&p, &ix), -EINVAL);
	idx_params_default(&p, 64);
	p.r1 = 0;
	ck_assert_int_eq(idx_new(&p, &ix), -EINVAL);
	p.r1 = 0.01f;
	p.r2 = 1.5f;
	ck_assert_int_eq(idx_new(&p, &ix), -EINVAL);
	ck_assert_ptr_null(ix);
	ck_assert_int_eq(idx_new(NULL, &ix), -EINVAL);
	idx_params_default(&p, 64);
	ck_assert_int_eq(idx_new(&p, NULL), -EINVAL);
	ck_assert_int_eq(idx_new(&p, &ix), 0);
	ck_assert_int_eq(idx_build(NULL, keys, 1, ICE_DTYPE_F32), -EINVAL);
	ck_assert_int_eq(idx_build(ix, NULL, 1, ICE_DTYPE_F32), -EINVAL);
	ck_assert_int_eq(idx_build(ix, keys, 0, ICE_DTYPE_F32), -EINVAL);
	ck_assert_int_eq(idx_build(ix, keys, 1, (enum ice_dtype)9), -EINVAL);
	ck_assert_int_eq(idx_insert(ix, keys, 0, ICE_DTYPE_F32), -EINVAL);
	keys[5] = NAN;
	ck_assert_int_eq(idx_build(ix, keys, 4, ICE_DTYPE_F32), -EINVAL);
	ck_assert_uint_eq(idx_ntokens(ix), 0);
	keys[5] = 1;
	/* searching an empty index finds nothing */
	ck_assert_int_eq(idx_search(ix, q, 1, 4, NULL, ws, sizeof(ws), hits), 0);
	ck_assert_int_eq(idx_build(ix, keys, 4, ICE_DTYPE_F32), 0);
	ck_assert_int_eq(idx_search(ix, q, 1, 4, NULL, ws, sizeof(ws), hits), 1);
	ck_assert_uint_eq(hits[0].fill, 4);
	ck_assert_int_eq(idx_search(ix, NULL, 1, 4, NULL, ws, sizeof(ws), hits), -EINVAL);
	ck_assert_int_eq(idx_search(ix, q, 0, 4, NULL, ws, sizeof(ws), hits), -EINVAL);
	ck_assert_int_eq(idx_search(ix, q, IDX_MAX_GROUP + 1, 4, NULL, ws, sizeof(ws), hits),
			 -EINVAL);
	ck_assert_int_eq(idx_search(ix, q, 1, 0, NULL, ws, sizeof(ws), hits), -EINVAL);
	ck_assert_int_eq(idx_search(ix, q, 1, 4, NULL, NULL, sizeof(ws), hits), -EINVAL);
	ck_assert_int_eq(idx_search(ix, q, 1, 4, NULL, ws, 8, hits), -ENOSPC);
	ck_assert_int_eq(idx_exact_search(ix, q, 1, 4, ws, 8, hits), -ENOSPC);
	ck_assert_int_eq(idx_search(ix, q, 1, 4, NULL, ws, sizeof(ws), NULL), -EINVAL);
	q[3] = INFINITY;
	ck_assert_int_eq(idx_search(ix, q, 1, 4, NULL, ws, sizeof(ws), hits), -EINVAL);
	ck_assert_uint_eq(idx_search_ws_size(ix, 0, 4), 0);
	ck_assert_uint_eq(idx_search_ws_size(ix, 1, 0), 0);
	ck_assert_int_eq(idx_page_tokens(ix, 99, pos, &fill, &ver), -EINVAL);
	ck_assert_int_eq(idx_page_tokens(NULL, 0, pos, &fill, &ver), -EINVAL);
	ck_assert_int_eq(idx_token_page(ix, 4, &page), -EINVAL);
	ck_assert_uint_eq(idx_take_dirty(ix, NULL, 4), 0);
	idx_free(ix);
	idx_free(NULL);
}
END_TEST

struct thr_arg {
	const struct idx *ix;
	const float *q;
	uint32_t nq, dim;
	struct idx_hit *out;
	int rc;
};

static void *search_thread(void *a)
{
	struct thr_arg *t = a;
	size_t ws_size = idx_search_ws_size(t->ix, 1, 16);
	void *ws = malloc(ws_size);
	uint32_t i;

	t->rc = 0;
	for (i = 0; i < t->nq; i++)
		if (idx_search(t->ix, t->q + (size_t)i * t->dim, 1, 16, NULL, ws, ws_size,
			       t->out + (size_t)i * 16) != 16)
			t->rc = -1;
	free(ws);
	return NULL;
}

START_TEST(concurrent_searches_match_serial)
{
	const uint32_t dim = 64, nq = 40;
	const size_t n = 10000;
	float *keys = gen_keys(dim, n, 9), *q = malloc(nq * dim * sizeof(float));
	struct synth_params sp;
	struct idx *ix = new_idx(dim, 0.01f, 64, 2);
	struct idx_hit *serial = malloc(nq * 16 * sizeof(*serial));
	struct idx_hit *par[3];
	struct thr_arg ta[3];
	pthread_t th[3];
	int i;

	synth_params_default(&sp, dim);
	sp.nclusters = 32;
	ck_assert_int_eq(synth_queries(&sp, keys, n, nq, 1, q, NULL), 0);
	ck_assert_int_eq(idx_build(ix, keys, n, ICE_DTYPE_F32), 0);
	ta[0] = (struct thr_arg){ ix, q, nq, dim, serial, 0 };
	search_thread(&ta[0]);
	ck_assert_int_eq(ta[0].rc, 0);
	for (i = 0; i < 3; i++) {
		par[i] = malloc(nq * 16 * sizeof(struct idx_hit));
		ta[i] = (struct thr_arg){ ix, q, nq, dim, par[i], 0 };
		ck_assert_int_eq(pthread_create(&th[i], NULL, search_thread, &ta[i]), 0);
	}
	for (i = 0; i < 3; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(ta[i].rc, 0);
		ck_assert_mem_eq(par[i], serial, nq * 16 * sizeof(struct idx_hit));
		free(par[i]);
	}
	idx_free(ix);
	free(keys);
	free(q);
	free(serial);
}
END_TEST

static Suite *idx_suite(void)
{
	Suite *s = suite_create("idx");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, build_invariants_and_exact_parents);
	tcase_add_loop_test(tc, inserts_keep_pages_growing, 0, 2);
	tcase_add_loop_test(tc, insert_bounds_cells, 0, 2);
	tcase_add_test(tc, list_parents_nearly_exact);
	tcase_add_test(tc, lifting_preserves_mips_order);
	tcase_add_test(tc, unlimited_beam_equals_brute_force);
	tcase_add_test(tc, biased_group_merge_equals_brute_force);
	tcase_add_test(tc, top_k_is_a_partial_sort);
	tcase_add_test(tc, page_scores_match_dot_products);
	tcase_add_test(tc, picked_tokens_are_the_heaviest);
	tcase_add_test(tc, planted_needles_found_at_every_budget);
	tcase_add_test(tc, insert_only_index_searches_through_its_sketch);
	tcase_add_test(tc, one_huge_key_costs_only_its_page);
	tcase_add_loop_test(tc, rollback_undoes_inserts_exactly, 0, 4);
	tcase_add_test(tc, segment_build_rewrites_no_page);
	tcase_add_test(tc, simd_paths_agree);
	tcase_add_test(tc, kernels_match_reference);
	tcase_add_test(tc, lift_kernels_match_reference);
	tcase_add_test(tc, bf16_scores_within_their_bound);
	tcase_add_loop_test(tc, half_precision_input, 0, 2);
	tcase_add_test(tc, exact_scores_come_from_the_key_source);
	tcase_add_test(tc, bad_arguments);
	tcase_add_test(tc, concurrent_searches_match_serial);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	Suite *suites[] = { idx_suite(), NULL };

	return check_run_suites(suites);
}
