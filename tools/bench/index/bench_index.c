/*
 * icebench index: DCI-tree against brute force and positional (Quest-style) pages on synthetic
 * LLM-like keys (index/synth.h) or a raw dump of real keys and queries (docs/KVDUMP.md).
 * For each (N, d): build keys/s (1 thread and all threads), then per token budget (64, 128,
 * 256 = k pages of 16) page recall@k, attention-mass recall and the token-oracle mass share,
 * query us per head on 1 thread and on all threads; GQA-4 group cost against a single query;
 * and the recall-vs-time curve over the beam width. Metric definitions in docs/INDEX.md.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "clock.h"
#include "idx.h"
#include "idx_simd.h"
#include "kvdump.h"
#include "posidx.h"
#include "synth.h"

#define MAXV 16
#define GQA 4
#define NBUDGET 3

static const uint32_t budgets[NBUDGET] = { 64, 128, 256 };

struct opts {
	size_t ns[MAXV];
	int nn;
	uint32_t ds[MAXV];
	int nd;
	uint32_t beams[32];
	int nbeams;
	uint32_t cells[32];
	int ncells;
	uint32_t nq;
	uint32_t threads;
	uint32_t reps;
	int json;
	int quick;
	const char *dump;
	uint64_t seed;
	float needle_logit;
	uint32_t needles, clusters;
	uint32_t exact_parents, probes; /* idx_params overrides (0: default) */
};

/* CPU seconds of the whole process: for a 1-thread build, what it cost its core whatever
 * else the machine runs (wall time on a shared machine counts the others' turns too). */
static double cpu_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- search adapters --------------------------------------------------------------------- */

struct method {
	const char *name;
	const struct idx *ix;
	const struct posidx *px;
	int kind; /* 0 dci, 1 brute, 2 positional, 3 positional exact, 4 dci+cells */
	struct idx_search_opts so;
};

static size_t method_ws(const struct method *m, uint32_t g, uint32_t k)
{
	return m->kind <= 1 || m->kind == 4 ? idx_search_ws_size(m->ix, g, k) :
					      posidx_ws_size(m->px, g, k);
}

/* No page: what a search leaves in the hits it did not fill (fewer pages than k). */
#define NO_PAGE UINT32_MAX

static int method_search_raw(const struct method *m, const float *q, uint32_t g, uint32_t k,
			     void *ws, size_t wss, struct idx_hit *h)
{
	switch (m->kind) {
	case 0:
	case 4:
		return idx_search(m->ix, q, g, k, &m->so, ws, wss, h);
	case 1:
		return idx_exact_search(m->ix, q, g, k, ws, wss, h);
	case 2:
		return posidx_search(m->px, q, g, k, ws, wss, h);
	default:
		return posidx_exact_search(m->px, q, g, k, ws, wss, h);
	}
}

/* A search whose k hits are all defined: those past the count it returns (k > pages) name
 * NO_PAGE, which the scoring skips. */
static int method_search(const struct method *m, const float *q, uint32_t g, uint32_t k, void *ws,
			 size_t wss, struct idx_hit *h)
{
	int got = method_search_raw(m, q, g, k, ws, wss, h);
	uint32_t i;

	for (i = got < 0 ? 0 : (uint32_t)got; i < k; i++)
		h[i] = (struct idx_hit){ .page = NO_PAGE, .score = -INFINITY, .fill = 0 };
	return got;
}

struct run {
	const struct method *m;
	const float *qs; /* query groups, stride qstride floats */
	size_t qstride;
	uint32_t nq, g, k;
	struct idx_hit *hits; /* nq x k, may be NULL */
	_Atomic uint32_t next;
	_Atomic int err;
};

static void *run_worker(void *a)
{
	struct run *r = a;
	size_t wss = method_ws(r->m, r->g, r->k);
	void *ws = malloc(wss);
	struct idx_hit tmp[256];

	if (!ws) {
		atomic_store(&r->err, -ENOMEM);
		return NULL;
	}
	for (;;) {
		uint32_t i = atomic_fetch_add(&r->next, 1);
		struct idx_hit *h = r->hits ? r->hits + (size_t)i * r->k : tmp;

		if (i >= r->nq)
			break;
		if (method_search(r->m, r->qs + i * r->qstride, r->g, r->k, ws, wss, h) < 0)
			atomic_store(&r->err, -EINVAL);
	}
	free(ws);
	return NULL;
}

static int cold; /* --cold: evict the caches before every 1-thread query */
static char *evict_buf;
#define EVICT_BYTES (96u << 20)

static void evict(void)
{
	size_t i;

	if (!evict_buf)
		evict_buf = malloc(EVICT_BYTES);
	if (!evict_buf)
		return;
	for (i = 0; i < EVICT_BYTES; i += 64)
		evict_buf[i]++;
}

/* Sum of single-query times with the caches evicted before each (1 thread). */
static double time_cold(const struct method *m, const float *qs, size_t qstride, uint32_t nq,
			uint32_t g, uint32_t k, struct idx_hit *hits)
{
	size_t wss = method_ws(m, g, k);
	void *ws = malloc(wss);
	struct idx_hit tmp[256];
	uint64_t tot = 0;
	uint32_t i;

	if (!ws)
		return NAN;
	for (i = 0; i < nq; i++) {
		uint64_t t0;

		evict();
		t0 = clock_now_ns();
		method_search(m, qs + i * qstride, g, k, ws, wss,
			      hits ? hits + (size_t)i * k : tmp);
		tot += clock_now_ns() - t0;
	}
	free(ws);
	return (double)tot / 1e3 / nq;
}

/* Best-of-reps wall time per query (us), running the queries on `threads` threads. */
static double time_queries(const struct method *m, const float *qs, size_t qstride, uint32_t nq,
			   uint32_t g, uint32_t k, struct idx_hit *hits, uint32_t threads,
			   uint32_t reps)
{
	double best = INFINITY;
	uint32_t rep, t;

	if (cold && threads == 1)
		return time_cold(m, qs, qstride, nq, g, k, hits);
	for (rep = 0; rep < reps; rep++) {
		struct run r = {
			.m = m, .qs = qs, .qstride = qstride, .nq = nq, .g = g, .k = k, .hits = hits
		};
		pthread_t th[64];
		uint32_t started = 0;
		uint64_t t0;

		atomic_init(&r.next, 0);
		atomic_init(&r.err, 0);
		t0 = clock_now_ns();
		for (t = 1; t < threads && t < 64; t++)
			if (pthread_create(&th[started], NULL, run_worker, &r) == 0)
				started++;
		run_worker(&r);
		for (t = 0; t < started; t++)
			pthread_join(th[t], NULL);
		if (atomic_load(&r.err)) {
			fprintf(stderr, "icebench index: %s search failed\n", m->name);
			return NAN;
		}
		best = fmin(best, (double)(clock_now_ns() - t0) / 1e3 / nq);
	}
	return best;
}

/* Several timings measured in turns (one pass each per round, best of `reps` rounds), so a
 * burst of load from other processes hits them alike. */
struct tjob {
	const struct method *m;
	const float *qs;
	size_t qstride;
	uint32_t g, k, threads;
	struct idx_hit *hits;
	double best;
};

static void time_interleaved(struct tjob *j, int nj, uint32_t nq, uint32_t reps)
{
	uint32_t r;
	int i;

	for (i = 0; i < nj; i++)
		j[i].best = INFINITY;
	for (r = 0; r < reps; r++)
		for (i = 0; i < nj; i++)
			j[i].best = fmin(j[i].best,
					 time_queries(j[i].m, j[i].qs, j[i].qstride, nq, j[i].g,
						      j[i].k, j[i].hits, j[i].threads, 1));
}

/* ---- reference: softmax over all keys ---------------------------------------------------- */

struct ref {
	float *p;               /* nq x n attention probabilities */
	double oracle[NBUDGET]; /* mean mass of the exact top-B tokens */
	double *omass;          /* nq x NBUDGET */
};

static int cmp_desc(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return (x < y) - (x > y);
}

static void softmax_ref(const float *keys, size_t n, uint32_t d, const float *q, float *p,
			double *omass)
{
	const struct idx_simd_ops *ops = idx_simd();
	float top[256], mx = -INFINITY;
	double sum = 0, acc = 0;
	size_t t, ntop = 0, b, i;

	for (t = 0; t < n; t++) {
		p[t] = ops->dot(q, keys + t * d, d) / sqrtf((float)d);
		mx = p[t] > mx ? p[t] : mx;
	}
	for (t = 0; t < n; t++) {
		p[t] = expf(p[t] - mx);
		sum += p[t];
	}
	for (t = 0; t < n; t++) {
		p[t] = (float)(p[t] / sum);
		/* keep the 256 largest (a small sorted buffer is enough: most lose at once) */
		if (ntop < 256 || p[t] > top[255]) {
			size_t j = ntop < 256 ? ntop++ : 255;

			while (j > 0 && top[j - 1] < p[t]) {
				top[j] = top[j - 1];
				j--;
			}
			top[j] = p[t];
		}
	}
	qsort(top, ntop, sizeof(float), cmp_desc);
	for (b = 0, i = 0; b < NBUDGET; b++) {
		for (; i < budgets[b] && i < ntop; i++)
			acc += top[i];
		omass[b] = acc;
	}
}

static double page_mass(const struct method *m, const struct idx_hit *h, int nh, const float *p)
{
	uint32_t pos[IDX_PAGE_CAP], fill, s;
	double acc = 0;
	int i;

	for (i = 0; i < nh; i++) {
		if (h[i].page == NO_PAGE)
			continue;
		if (m->kind <= 1 || m->kind == 4) {
			idx_page_tokens(m->ix, h[i].page, pos, &fill, NULL);
			for (s = 0; s < fill; s++)
				acc += p[pos[s]];
		} else {
			for (s = 0; s < h[i].fill; s++)
				acc += p[(size_t)h[i].page * IDX_PAGE_CAP + s];
		}
	}
	return acc;
}

/* Share of the exact pages b (those that exist: fewer than k when the index is smaller) that
 * a found. */
static double page_overlap(const struct idx_hit *a, const struct idx_hit *b, uint32_t k)
{
	uint32_t i, j, c = 0, nb = 0;

	for (j = 0; j < k; j++) {
		if (b[j].page == NO_PAGE)
			continue;
		nb++;
		for (i = 0; i < k; i++)
			if (a[i].page == b[j].page) {
				c++;
				break;
			}
	}
	return nb ? (double)c / nb : 1.0;
}

/* ---- one configuration ------------------------------------------------------------------- */

struct quality {
	double page_rec, mass_rec, oracle;
};

/* Mean recall of hits against exact hits (same layout), plus mass share of the token oracle. */
static struct quality score_hits(const struct method *m, const struct idx_hit *hits,
				 const struct method *mex, const struct idx_hit *ex, uint32_t nq,
				 uint32_t k, const struct ref *ref, size_t n, int b)
{
	struct quality qq = { 0 };
	uint32_t i;

	for (i = 0; i < nq; i++) {
		const float *p = ref->p + (size_t)i * n;
		double mh = page_mass(m, hits + (size_t)i * k, (int)k, p);
		double me = page_mass(mex, ex + (size_t)i * k, (int)k, p);

		qq.page_rec += page_overlap(hits + (size_t)i * k, ex + (size_t)i * k, k);
		qq.mass_rec += me > 0 ? mh / me : 1;
		qq.oracle += mh / ref->omass[(size_t)i * NBUDGET + b];
	}
	qq.page_rec /= nq;
	qq.mass_rec /= nq;
	qq.oracle /= nq;
	return qq;
}

static void json_sep(FILE *f, int *first)
{
	if (!*first)
		fputc(',', f);
	*first = 0;
}

static int run_config(const struct opts *o, const float *keys, size_t n, uint32_t d,
		      const float *qg, uint32_t nq, uint32_t g_file, FILE *js, int *first_cfg)
{
	uint32_t threads = o->threads, g = g_file >= GQA ? GQA : g_file, b, i, bi;
	struct idx_params ip;
	struct idx *ix = NULL, *ix1 = NULL;
	struct posidx *px = NULL;
	struct idx_info info;
	struct idx_rows rows = { keys, ICE_DTYPE_F32, n };
	struct ref ref = { 0 };
	struct idx_hit *hd = NULL, *he = NULL, *hp = NULL, *hpe = NULL, *hm = NULL;
	float *q1 = NULL;
	double tb1 = NAN, tbn, tq, tins = NAN, cb1 = NAN, cins = NAN, c0;
	size_t qstride = (size_t)g_file * d;
	uint64_t t0;
	int rc = -ENOMEM, first;
	struct method mdci = { "dci", 0 }, mex = { "brute", 0 }, mpos = { "positional", 0 },
		      mpex = { "positional-exact", 0 }, mmass = { "dci-mass", 0 };

	/* single-query set: the first query of every group */
	q1 = malloc((size_t)nq * d * sizeof(float));
	ref.p = malloc((size_t)nq * n * sizeof(float));
	ref.omass = malloc((size_t)nq * NBUDGET * sizeof(double));
	hd = malloc((size_t)nq * 256 * sizeof(*hd));
	he = malloc((size_t)nq * 256 * sizeof(*he));
	hp = malloc((size_t)nq * 256 * sizeof(*hp));
	hpe = malloc((size_t)nq * 256 * sizeof(*hpe));
	hm = malloc((size_t)nq * 256 * sizeof(*hm));
	if (!q1 || !ref.p || !ref.omass || !hd || !he || !hp || !hpe || !hm)
		goto out;
	for (i = 0; i < nq; i++)
		memcpy(q1 + (size_t)i * d, qg + i * qstride, d * sizeof(float));

	idx_params_default(&ip, d);
	if (o->exact_parents)
		ip.exact_parent_max = o->exact_parents;
	if (o->probes)
		ip.parent_probes = o->probes;
	if (!o->quick && threads > 1) {
		ip.threads = 1;
		if ((rc = idx_new(&ip, &ix1)) < 0)
			goto out;
		t0 = clock_now_ns();
		c0 = cpu_s();
		if ((rc = idx_build(ix1, keys, n, ICE_DTYPE_F32)) < 0)
			goto out;
		tb1 = (double)(clock_now_ns() - t0) / 1e9;
		cb1 = cpu_s() - c0;
		idx_free(ix1);
		ix1 = NULL;
	}
	ip.threads = threads;
	if ((rc = idx_new(&ip, &ix)) < 0)
		goto out;
	t0 = clock_now_ns();
	c0 = cpu_s();
	if ((rc = idx_build(ix, keys, n, ICE_DTYPE_F32)) < 0)
		goto out;
	tbn = (double)(clock_now_ns() - t0) / 1e9;
	if (threads == 1) {
		tb1 = tbn;
		cb1 = cpu_s() - c0;
	}
	/* the keys stay here, as the engine keeps them in its pages: the index reads the pages
	 * it scores exactly from them */
	idx_set_keys(ix, &(struct idx_keys){ idx_rows_read, &rows, 0 });
	idx_get_info(ix, &info);
	/* decode inserts: the last 2048 keys in batches of 16 onto a build of the rest */
	if (n > 4096) {
		struct idx *ixd = NULL;
		size_t nb = n - 2048, t;

		ip.threads = threads;
		if ((rc = idx_new(&ip, &ixd)) < 0 ||
		    (rc = idx_build(ixd, keys, nb, ICE_DTYPE_F32)) < 0) {
			idx_free(ixd);
			goto out;
		}
		t0 = clock_now_ns();
		c0 = cpu_s();
		for (t = nb; t < n && rc == 0; t += 16) /* the engine's 16-token window */
			rc = idx_insert(ixd, keys + t * d, 16, ICE_DTYPE_F32);
		tins = (double)(clock_now_ns() - t0) / 1e3 / (double)(n - nb);
		cins = (cpu_s() - c0) * 1e6 / (double)(n - nb);
		idx_free(ixd);
		if (rc < 0)
			goto out;
	}
	if ((rc = posidx_new(d, &px)) < 0 || (rc = posidx_append(px, keys, n, ICE_DTYPE_F32)) < 0)
		goto out;
	for (i = 0; i < nq; i++)
		softmax_ref(keys, n, d, q1 + (size_t)i * d, ref.p + (size_t)i * n,
			    ref.omass + (size_t)i * NBUDGET);
	mdci.ix = mex.ix = mmass.ix = ix;
	mpos.px = mpex.px = px;
	mdci.kind = 0, mex.kind = 1, mpos.kind = 2, mpex.kind = 3, mmass.kind = 0;
	/* the engine's default ranking (page_mass = 1): pages by softmax weight at 1/sqrt(d) */
	mmass.so.mass_scale = 1.0f / sqrtf((float)d);

	if (!o->json) {
		printf("\nN=%zu d=%u  simd=%s  build: ", n, d, idx_simd_name());
		if (!isnan(tb1))
			printf("1 thread %.3f s (%.0f keys/s, %.2f us/key/core, %.2f of CPU time), ",
			       tb1, n / tb1, tb1 * 1e6 / n, cb1 * 1e6 / n);
		printf("%u threads %.3f s (%.0f keys/s); insert (batches of 16) %.1f us/key "
		       "(%.1f of CPU time)\n",
		       threads, tbn, n / tbn, tins, cins);
		printf("  seeds %zu, levels %u, pages %zu (%.1f tokens/page), largest cell %u, "
		       "default beam %u pages at k=16\n",
		       info.nseeds, info.nlevels, info.npages, info.mean_fill, info.max_cell,
		       info.default_beam);
		printf("  %-6s %-11s %3s %8s %8s %7s %10s %10s %8s\n", "budget", "method", "k",
		       "page_rec", "mass_rec", "oracle", "us/q 1T", "us/q allT", "vs brute");
	} else {
		json_sep(js, first_cfg);
		fprintf(js,
			"{\"n\":%zu,\"d\":%u,\"simd\":\"%s\",\"threads\":%u,\"queries\":%u,\"cold\":%d,"
			"\"build\":{\"s_1t\":%.4f,\"keys_per_s_1t\":%.0f,\"s_all\":%.4f,"
			"\"keys_per_s_all\":%.0f,\"insert_us_per_key\":%.2f,\"us_per_key_1t\":%.3f,"
			"\"cpu_us_per_key_1t\":%.3f,\"insert_cpu_us_per_key\":%.2f},\"seeds\":%zu,\"levels\":%u,\"pages\":%zu,"
			"\"tokens_per_page\":%.2f,\"max_cell\":%u,\"default_beam\":%u,\"budgets\":[",
			n, d, idx_simd_name(), threads, nq, cold, isnan(tb1) ? -1.0 : tb1,
			isnan(tb1) ? -1.0 : n / tb1, tbn, n / tbn, isnan(tins) ? -1.0 : tins,
			isnan(tb1) ? -1.0 : tb1 * 1e6 / n, isnan(cb1) ? -1.0 : cb1 * 1e6 / n,
			isnan(cins) ? -1.0 : cins, info.nseeds, info.nlevels, info.npages,
			info.mean_fill, info.max_cell, info.default_beam);
	}
	first = 1;
	for (bi = 0; bi < NBUDGET; bi++) {
		uint32_t k = budgets[bi] / IDX_PAGE_CAP;
		const struct method *ms[4] = { &mex, &mdci, &mpos, &mmass };
		double t1[4], tn[4];
		struct quality qs[4];
		uint32_t mi;

		struct tjob tj[8] = {
			{ &mex, q1, d, 1, k, 1, he, 0 },
			{ &mdci, q1, d, 1, k, 1, hd, 0 },
			{ &mpos, q1, d, 1, k, 1, hp, 0 },
			{ &mmass, q1, d, 1, k, 1, hm, 0 },
			{ &mex, q1, d, 1, k, threads, NULL, 0 },
			{ &mdci, q1, d, 1, k, threads, NULL, 0 },
			{ &mpos, q1, d, 1, k, threads, NULL, 0 },
			{ &mmass, q1, d, 1, k, threads, NULL, 0 },
		};

		time_interleaved(tj, 8, nq, o->reps);
		for (mi = 0; mi < 4; mi++) {
			t1[mi] = tj[mi].best;
			tn[mi] = tj[4 + mi].best;
		}
		time_queries(&mpex, q1, d, nq, 1, k, hpe, 1, 1);
		qs[0] = score_hits(&mex, he, &mex, he, nq, k, &ref, n, (int)bi);
		qs[1] = score_hits(&mdci, hd, &mex, he, nq, k, &ref, n, (int)bi);
		qs[2] = score_hits(&mpos, hp, &mpex, hpe, nq, k, &ref, n, (int)bi);
		qs[3] = score_hits(&mmass, hm, &mex, he, nq, k, &ref, n, (int)bi);
		for (mi = 0; mi < 4; mi++) {
			if (!o->json) {
				printf("  %-6u %-11s %3u %8.3f %8.3f %7.3f %10.1f %10.1f %7.1fx\n",
				       budgets[bi], ms[mi]->name, k, qs[mi].page_rec,
				       qs[mi].mass_rec, qs[mi].oracle, t1[mi], tn[mi],
				       t1[0] / t1[mi]);
			} else {
				json_sep(js, &first);
				fprintf(js,
					"{\"budget\":%u,\"k\":%u,\"method\":\"%s\",\"page_recall\":%.4f,"
					"\"mass_recall\":%.4f,\"oracle_mass\":%.4f,\"us_per_query_1t\":%.2f,"
					"\"us_per_query_all\":%.2f,\"speedup_vs_brute_1t\":%.3f}",
					budgets[bi], k, ms[mi]->name, qs[mi].page_rec,
					qs[mi].mass_rec, qs[mi].oracle, t1[mi], tn[mi],
					t1[0] / t1[mi]);
			}
		}
	}

	/* GQA: a group of g queries searched together against one query, k = 16 */
	if (g > 1) {
		uint32_t k = 16;
		struct tjob tj[3] = {
			{ &mdci, q1, d, 1, k, 1, NULL, 0 },
			{ &mdci, qg, qstride, g, k, 1, hd, 0 },
			{ &mex, qg, qstride, g, k, 1, he, 0 },
		};
		double ts, tg, tgb, prec = 0, mrec = 0;
		float *pq = malloc(n * sizeof(float));
		double om[NBUDGET];

		if (!pq)
			goto out;
		time_interleaved(tj, 3, nq, o->reps);
		ts = tj[0].best;
		tg = tj[1].best;
		tgb = tj[2].best;
		/* group quality: mass summed over the group's queries, against the exact group pick */
		for (i = 0; i < nq; i++) {
			double mh = 0, me = 0;
			uint32_t j;

			prec += page_overlap(hd + (size_t)i * k, he + (size_t)i * k, k);
			for (j = 0; j < g; j++) {
				softmax_ref(keys, n, d, qg + i * qstride + (size_t)j * d, pq, om);
				mh += page_mass(&mdci, hd + (size_t)i * k, (int)k, pq);
				me += page_mass(&mex, he + (size_t)i * k, (int)k, pq);
			}
			mrec += me > 0 ? mh / me : 1;
		}
		free(pq);
		prec /= nq;
		mrec /= nq;
		if (!o->json)
			printf("  GQA-%u k=16: group %.1f us vs single %.1f us = %.2fx (brute group %.1f us); "
			       "group page_rec %.3f, mass_rec %.3f\n",
			       g, tg, ts, tg / ts, tgb, prec, mrec);
		else
			fprintf(js,
				"],\"gqa\":{\"g\":%u,\"us_group\":%.2f,\"us_single\":%.2f,\"ratio\":%.3f,"
				"\"us_brute_group\":%.2f,\"page_recall\":%.4f,\"mass_recall\":%.4f},\"curve\":[",
				g, tg, ts, tg / ts, tgb, prec, mrec);
	} else if (o->json) {
		fprintf(js, "],\"curve\":[");
	}

	/* recall-vs-time over the beam width, k = 16 (positional and brute beside it) */
	tq = time_queries(&mex, q1, d, nq, 1, 16, he, 1, o->reps);
	if (!o->json)
		printf("  curve k=16 (beam = pages re-scored exactly after the sketch pass; cells = "
		       "seed-ranked level-1 cells\n  scanned instead, no sketch):\n  %8s %10s %8s %8s %7s\n",
		       "beam", "us/q 1T", "page_rec", "mass_rec", "oracle");
	first = 1;
	for (b = 0; b < (uint32_t)o->nbeams; b++) {
		struct method mb = mdci;
		struct quality qq;
		double t;

		if (o->beams[b] > info.nseeds && b > 0 && o->beams[b - 1] >= info.nseeds)
			break;
		mb.so.beam = o->beams[b];
		t = time_queries(&mb, q1, d, nq, 1, 16, hd, 1, o->reps);
		qq = score_hits(&mb, hd, &mex, he, nq, 16, &ref, n, 2);
		if (!o->json) {
			printf("  %8u %10.1f %8.3f %8.3f %7.3f\n", o->beams[b], t, qq.page_rec,
			       qq.mass_rec, qq.oracle);
		} else {
			json_sep(js, &first);
			fprintf(js,
				"{\"beam\":%u,\"us_per_query_1t\":%.2f,\"page_recall\":%.4f,"
				"\"mass_recall\":%.4f,\"oracle_mass\":%.4f}",
				o->beams[b], t, qq.page_rec, qq.mass_rec, qq.oracle);
		}
	}
	/* the seed-only tree walk (level-1 cells by seed score, no sketch), for comparison */
	if (o->json)
		fprintf(js, "],\"curve_cells\":[");
	first = 1;
	for (b = 0; b < (uint32_t)o->ncells; b++) {
		struct method mb = mdci;
		struct quality qq;
		double t;

		if (o->cells[b] > info.nseeds)
			break;
		mb.so.cells = o->cells[b];
		mb.so.flags = IDX_SEARCH_NO_SKETCH;
		mb.kind = 4;
		t = time_queries(&mb, q1, d, nq, 1, 16, hd, 1, o->reps);
		qq = score_hits(&mb, hd, &mex, he, nq, 16, &ref, n, 2);
		if (!o->json) {
			char lab[32];

			snprintf(lab, sizeof(lab), "cells %u", o->cells[b]);
			printf("  %8s %10.1f %8.3f %8.3f %7.3f\n", lab, t, qq.page_rec, qq.mass_rec,
			       qq.oracle);
		} else {
			json_sep(js, &first);
			fprintf(js,
				"{\"cells\":%u,\"us_per_query_1t\":%.2f,\"page_recall\":%.4f,"
				"\"mass_recall\":%.4f,\"oracle_mass\":%.4f}",
				o->cells[b], t, qq.page_rec, qq.mass_rec, qq.oracle);
		}
	}
	{
		struct quality qq;
		double t = time_queries(&mpos, q1, d, nq, 1, 16, hp, 1, o->reps);

		time_queries(&mpex, q1, d, nq, 1, 16, hpe, 1, 1);
		qq = score_hits(&mpos, hp, &mpex, hpe, nq, 16, &ref, n, 2);
		if (!o->json) {
			printf("  %8s %10.1f %8.3f %8.3f %7.3f\n", "position", t, qq.page_rec,
			       qq.mass_rec, qq.oracle);
			printf("  %8s %10.1f %8.3f %8.3f %7.3f\n", "brute", tq, 1.0, 1.0,
			       score_hits(&mex, he, &mex, he, nq, 16, &ref, n, 2).oracle);
		} else {
			fprintf(js,
				"],\"curve_positional\":{\"us_per_query_1t\":%.2f,\"page_recall\":%.4f,"
				"\"mass_recall\":%.4f,\"oracle_mass\":%.4f},\"curve_brute_us\":%.2f}",
				t, qq.page_rec, qq.mass_rec, qq.oracle, tq);
		}
	}
	fflush(stdout);
	rc = 0;
out:
	idx_free(ix);
	idx_free(ix1);
	posidx_free(px);
	free(q1);
	free(ref.p);
	free(ref.omass);
	free(hd);
	free(he);
	free(hp);
	free(hpe);
	free(hm);
	return rc;
}

/* ---- main -------------------------------------------------------------------------------- */

static int parse_list_u64(const char *s, size_t *out, int max)
{
	int n = 0;
	char *end;

	while (*s && n < max) {
		unsigned long long v = strtoull(s, &end, 10);

		if (end == s || v == 0)
			return -EINVAL;
		out[n++] = (size_t)v;
		s = *end == ',' ? end + 1 : end;
		if (*end && *end != ',')
			return -EINVAL;
	}
	return n ? n : -EINVAL;
}

static int parse_list_u32(const char *s, uint32_t *out, int max)
{
	size_t tmp[32];
	int n = parse_list_u64(s, tmp, max < 32 ? max : 32), i;

	for (i = 0; i < n; i++) {
		if (tmp[i] > UINT32_MAX)
			return -EINVAL;
		out[i] = (uint32_t)tmp[i];
	}
	return n;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: icebench index [--quick] [--n N,...] [--d D,...] [--queries Q] [--threads T]\n"
		"                      [--beams B,...] [--cells C,...] [--reps R] [--seed S] [--dump FILE]\n"
		"                      [--cold] [--json]\n"
		"                      [--needle-logit X] [--needles M] [--clusters C]  (synthetic data)\n"
		"                      [--exact-parents N] [--probes P]  (idx_params exact_parent_max,\n"
		"                      parent_probes: level-0 parents exact up to N seeds, else P lists)\n"
		"  DCI-tree vs brute force vs positional pages (Quest bound) on synthetic LLM-like keys\n"
		"  (or the keys and queries of a dump file, docs/KVDUMP.md).\n"
		"  defaults: --n 32768,131072,262144 --d 64,128 --queries 64 --threads <online cpus>\n"
		"            --beams 16,24,32,48,64,96,128,256 --cells 64,256 --reps 3\n"
		"  --quick   N=131072, d=128 and 64, 48 queries, no 1-thread build: well under a minute\n"
		"  --cold    evict the caches (96 MiB) before every 1-thread query, timing only the search\n"
		"  --json    one JSON object on stdout instead of the table\n");
}

static int bench_index(int argc, char **argv)
{
	struct opts o = { 0 };
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int i, c, rc = 0, first = 1;
	size_t n_i;

	o.ns[0] = 32768, o.ns[1] = 131072, o.ns[2] = 262144, o.nn = 3;
	o.ds[0] = 64, o.ds[1] = 128, o.nd = 2;
	o.nbeams = parse_list_u32("16,24,32,48,64,96,128,256", o.beams, 32);
	o.ncells = parse_list_u32("64,256", o.cells, 32);
	o.nq = 64;
	o.threads = ncpu > 0 ? (uint32_t)ncpu : 1;
	o.reps = 3;
	o.seed = 42;
	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "--json")) {
			o.json = 1;
		} else if (!strcmp(a, "--cold")) {
			cold = 1;
		} else if (!strcmp(a, "--quick")) {
			o.quick = 1;
			o.ns[0] = 131072, o.nn = 1;
			o.ds[0] = 128, o.ds[1] = 64, o.nd = 2;
			o.nq = 48;
		} else if (v && !strcmp(a, "--n")) {
			if ((o.nn = parse_list_u64(v, o.ns, MAXV)) < 0)
				goto bad;
			i++;
		} else if (v && !strcmp(a, "--d")) {
			if ((o.nd = parse_list_u32(v, o.ds, MAXV)) < 0)
				goto bad;
			i++;
		} else if (v && !strcmp(a, "--beams")) {
			if ((o.nbeams = parse_list_u32(v, o.beams, 32)) < 0)
				goto bad;
			i++;
		} else if (v && !strcmp(a, "--cells")) {
			if ((o.ncells = parse_list_u32(v, o.cells, 32)) < 0)
				goto bad;
			i++;
		} else if (v && !strcmp(a, "--queries")) {
			o.nq = (uint32_t)strtoul(v, NULL, 10);
			i++;
		} else if (v && !strcmp(a, "--threads")) {
			o.threads = (uint32_t)strtoul(v, NULL, 10);
			i++;
		} else if (v && !strcmp(a, "--reps")) {
			o.reps = (uint32_t)strtoul(v, NULL, 10);
			i++;
		} else if (v && !strcmp(a, "--seed")) {
			o.seed = strtoull(v, NULL, 10);
			i++;
		} else if (v && !strcmp(a, "--needle-logit")) {
			o.needle_logit = strtof(v, NULL);
			i++;
		} else if (v && !strcmp(a, "--needles")) {
			o.needles = (uint32_t)strtoul(v, NULL, 10);
			i++;
		} else if (v && !strcmp(a, "--clusters")) {
			o.clusters = (uint32_t)strtoul(v, NULL, 10);
			i++;
		} else if (v && !strcmp(a, "--exact-parents")) {
			o.exact_parents = (uint32_t)strtoul(v, NULL, 10);
			i++;
		} else if (v && !strcmp(a, "--probes")) {
			o.probes = (uint32_t)strtoul(v, NULL, 10);
			i++;
		} else if (v && !strcmp(a, "--dump")) {
			o.dump = v;
			i++;
		} else {
			goto bad;
		}
	}
	if (o.nq == 0 || o.nq > 100000 || o.threads == 0 || o.threads > 64 || o.reps == 0)
		goto bad;
	if (o.json) {
		bench_json_begin(stdout, "index");
		printf(",\"results\":[");
	} else {
		printf("icebench index: DCI-tree vs brute force vs positional pages; %u queries, "
		       "%u threads%s\n",
		       o.nq, o.threads, cold ? ", cold caches for 1-thread times" : "");
		printf("  page_rec: share of the exact top-k pages (same page layout) returned; "
		       "mass_rec: softmax mass of the\n  returned pages / that of the exact top-k pages; "
		       "oracle: returned mass / mass of the exact top k*16 tokens\n");
	}
	if (o.dump) {
		struct kvdump dmp;

		rc = kvdump_read(o.dump, &dmp);
		if (rc < 0) {
			fprintf(stderr, "icebench index: %s: %s\n", o.dump, strerror(-rc));
			return 1;
		}
		if (dmp.dim % 16 || dmp.dim > IDX_MAX_DIM || dmp.ngroups == 0) {
			fprintf(stderr,
				"icebench index: %s: dim must be a multiple of 16 and queries "
				"present\n",
				o.dump);
			kvdump_done(&dmp);
			return 1;
		}
		rc = run_config(&o, dmp.keys, dmp.nkeys, dmp.dim, dmp.queries,
				dmp.ngroups < o.nq ? (uint32_t)dmp.ngroups : o.nq, dmp.group,
				stdout, &first);
		kvdump_done(&dmp);
	} else {
		for (c = 0; c < o.nd && rc == 0; c++) {
			for (n_i = 0; n_i < (size_t)o.nn && rc == 0; n_i++) {
				size_t n = o.ns[n_i];
				uint32_t d = o.ds[c];
				struct synth_params sp;
				float *keys = malloc(n * d * sizeof(float));
				float *qs = malloc((size_t)o.nq * GQA * d * sizeof(float));

				if (!keys || !qs || d % 16 || d > IDX_MAX_DIM) {
					free(keys);
					free(qs);
					rc = -EINVAL;
					break;
				}
				synth_params_default(&sp, d);
				sp.seed = o.seed;
				if (o.needle_logit > 0)
					sp.needle_logit = o.needle_logit;
				if (o.needles)
					sp.needles = o.needles;
				if (o.clusters)
					sp.nclusters = o.clusters;
				rc = synth_keys(&sp, n, keys);
				if (rc == 0)
					rc = synth_queries(&sp, keys, n, o.nq, GQA, qs, NULL);
				if (rc == 0)
					rc = run_config(&o, keys, n, d, qs, o.nq, GQA, stdout,
							&first);
				free(keys);
				free(qs);
			}
		}
	}
	if (o.json)
		printf("]}\n");
	if (rc < 0) {
		fprintf(stderr, "icebench index: %s\n", strerror(-rc));
		return 1;
	}
	return 0;
bad:
	usage(stderr);
	return 2;
}

BENCH_COMMAND(index_cmd, "index",
	      "DCI-tree vs brute force vs positional pages (recall, us/query, build)", bench_index)
