/*
 * Random sparse-attention problems for the kernel tests: dense per-KV-head K/V (what a model
 * would attend to), scattered into pages of random fill in shuffled pool slots, with the page
 * tables kern_attn takes. Shared by the CPU reference tests and the GPU tests.
 */
#ifndef ICE_TESTS_ATTN_CASE_H
#define ICE_TESTS_ATTN_CASE_H

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kern.h"

struct attn_case {
	struct kern_attn_args a;
	uint32_t ntok_max; /* tokens per head upper bound (dense arrays are sized by it) */
	uint32_t *ntok;    /* [hkv] tokens attended per head */
	float *kd, *vd;    /* [hkv][ntok_max][d] dense, values as stored (dtype-rounded) */
	float *qf;         /* [hq][d] dtype-rounded query */
	void *pool, *q, *out;
	struct kern_page *pages;
	uint32_t *head_off;
	uint32_t npages;
	float *rest; /* NULL, or [hq][d + 1] rest terms (attn_case_add_rest) */
};

static inline uint64_t case_rand(uint64_t *s)
{
	/* splitmix64: cheap, good enough, and fresh per seed. */
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static inline float case_unif(uint64_t *s)
{
	return (float)((case_rand(s) >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static inline void case_store(void *buf, enum ice_dtype dt, size_t i, float v, float *ret_rounded)
{
	dtype_store_f32(buf, dt, i, v);
	*ret_rounded = dtype_load_f32(buf, dt, i);
}

static inline void attn_case_free(struct attn_case *c)
{
	free(c->ntok);
	free(c->kd);
	free(c->vd);
	free(c->qf);
	free(c->pool);
	free(c->q);
	free(c->out);
	free(c->pages);
	free(c->head_off);
	free(c->rest);
	memset(c, 0, sizeof(*c));
}

/* Writes a page's rows: random K/V for the rows it attends (also appended to head h's dense
 * arrays), NaN for the rows it skips. Returns the rows attended. */
static inline uint32_t case_fill_rows(struct attn_case *c, enum ice_dtype dt, uint32_t d,
				      uint32_t h, const struct kern_page *pg, unsigned char *slot,
				      uint64_t *s)
{
	uint32_t t, i, n = 0, fill = pg->fill;
	float r;

	for (t = 0; t < fill; t++) {
		size_t tok = (size_t)h * c->ntok_max + c->ntok[h] + n;

		if (t < KERN_SKIP_ROWS && (pg->skip >> t & 1)) {
			for (i = 0; i < d; i++) {
				case_store(slot, dt, (size_t)t * d + i, NAN, &r);
				case_store(slot, dt, (size_t)(fill + t) * d + i, NAN, &r);
			}
			continue;
		}
		for (i = 0; i < d; i++) {
			case_store(slot, dt, (size_t)t * d + i, case_unif(s), &c->kd[tok * d + i]);
			case_store(slot, dt, (size_t)(fill + t) * d + i, case_unif(s),
				   &c->vd[tok * d + i]);
		}
		n++;
	}
	return n;
}

/*
 * Builds a case: each KV head gets up to max_pages pages with fills drawn in [0, P] (some
 * full, a few empty, head `empty_head` none at all if < hkv), about a quarter of them with
 * random rows skipped (as IceCache's token choice leaves them; those rows hold NaN, so a kernel
 * that reads one poisons its output), placed in random distinct slots
 * of a pool with `spare` extra unused slots. Query magnitudes are scaled by `qscale` so that
 * softmax is neither flat nor one-hot. Returns 0 or -ENOMEM.
 */
static inline int attn_case_init(struct attn_case *c, enum ice_dtype dt, uint32_t hq, uint32_t hkv,
				 uint32_t d, uint32_t P, uint32_t max_pages, uint32_t empty_head,
				 uint32_t spare, float qscale, uint64_t seed)
{
	size_t es = dtype_size(dt), slot_bytes = 2 * (size_t)P * d * es;
	uint32_t nslots = hkv * max_pages + spare, h, p, i, x;
	uint32_t *perm = NULL;
	uint64_t s = seed;

	memset(c, 0, sizeof(*c));
	c->ntok_max = max_pages * P;
	c->ntok = calloc(hkv, sizeof(*c->ntok));
	c->kd = calloc((size_t)hkv * c->ntok_max * d, sizeof(float));
	c->vd = calloc((size_t)hkv * c->ntok_max * d, sizeof(float));
	c->qf = calloc((size_t)hq * d, sizeof(float));
	c->pool = aligned_alloc(64, (size_t)nslots * slot_bytes);
	c->q = aligned_alloc(64, (size_t)hq * d * es + 64);
	c->out = aligned_alloc(64, (size_t)hq * d * es + 64);
	c->pages = calloc((size_t)hkv * max_pages + 1, sizeof(*c->pages));
	c->head_off = calloc(hkv + 1, sizeof(*c->head_off));
	perm = calloc(nslots, sizeof(*perm));
	if (!c->ntok || !c->kd || !c->vd || !c->qf || !c->pool || !c->q || !c->out || !c->pages ||
	    !c->head_off || !perm) {
		free(perm);
		attn_case_free(c);
		return -ENOMEM;
	}
	/* Poison unused slot bytes: a kernel reading past a page's fill would pick up NaN. */
	memset(c->pool, 0xff, (size_t)nslots * slot_bytes);
	for (i = 0; i < nslots; i++)
		perm[i] = i;
	for (i = nslots; i > 1; i--) {
		uint32_t j = (uint32_t)(case_rand(&s) % i), tmp = perm[i - 1];

		perm[i - 1] = perm[j];
		perm[j] = tmp;
	}
	for (i = 0; i < hq * d; i++)
		case_store(c->q, dt, i, case_unif(&s) * qscale, &c->qf[i]);

	x = 0;
	for (h = 0; h < hkv; h++) {
		uint32_t np = h == empty_head ? 0 : 1 + (uint32_t)(case_rand(&s) % max_pages);

		if (h != empty_head && np < max_pages && case_rand(&s) % 2)
			np = max_pages; /* often use the whole budget */
		c->head_off[h] = x;
		for (p = 0; p < np; p++, x++) {
			uint32_t r = (uint32_t)(case_rand(&s) % 8);
			uint32_t fill = r < 5 ? P : r == 5 ? 0 : 1 + (uint32_t)(case_rand(&s) % P);
			unsigned char *slot =
				(unsigned char *)c->pool + (size_t)perm[x] * slot_bytes;

			c->pages[x].slot = perm[x];
			c->pages[x].fill = (uint16_t)fill;
			if (fill && P <= KERN_SKIP_ROWS && case_rand(&s) % 4 == 0)
				c->pages[x].skip = (uint16_t)(case_rand(&s) & ((1u << fill) - 1));
			c->ntok[h] += case_fill_rows(c, dt, d, h, &c->pages[x], slot, &s);
		}
	}
	c->head_off[hkv] = x;
	c->npages = x;
	free(perm);

	c->a.dtype = dt;
	c->a.hq = hq;
	c->a.hkv = hkv;
	c->a.d = d;
	c->a.page_cap = P;
	c->a.scale = 1.0f / sqrtf((float)d);
	c->a.q = c->q;
	c->a.out = c->out;
	c->a.pool = c->pool;
	c->a.slot_bytes = slot_bytes;
	c->a.nslots = nslots;
	c->a.pages = c->pages;
	c->a.head_off = c->head_off;
	c->a.max_pages = max_pages;
	return 0;
}

/* New random K/V values for every token, same pages, slots and fills. */
static inline void attn_case_refill(struct attn_case *c, uint64_t seed)
{
	const struct kern_attn_args *a = &c->a;
	uint32_t h, p;
	uint64_t s = seed;

	for (h = 0; h < a->hkv; h++) {
		c->ntok[h] = 0;
		for (p = c->head_off[h]; p < c->head_off[h + 1]; p++) {
			unsigned char *slot =
				(unsigned char *)c->pool + (size_t)c->pages[p].slot * a->slot_bytes;

			c->ntok[h] += case_fill_rows(c, a->dtype, a->d, h, &c->pages[p], slot, &s);
		}
	}
}

/*
 * Gives every query head a rest term (kern_attn_args.rest): a log weight in [-2, 2), about as
 * large as the tokens' scores so that it matters, or -INFINITY (none) for every third head,
 * and a random value. Returns 0 or -ENOMEM.
 */
static inline int attn_case_add_rest(struct attn_case *c, uint64_t seed)
{
	uint32_t d = c->a.d, qi, i;
	uint64_t s = seed;

	c->rest = calloc((size_t)c->a.hq * (d + 1), sizeof(float));
	if (!c->rest)
		return -ENOMEM;
	for (qi = 0; qi < c->a.hq; qi++) {
		float *r = c->rest + (size_t)qi * (d + 1);

		r[0] = qi % 3 == 2 ? -INFINITY : 2.0f * case_unif(&s);
		for (i = 0; i < d; i++)
			r[1 + i] = case_unif(&s);
	}
	c->a.rest = c->rest;
	return 0;
}

/* The plainest possible attention over the dense arrays, in double: out [hq][d]; a rest term
 * is one more token of that log weight and value. */
static inline void attn_case_naive(const struct attn_case *c, double *out)
{
	const struct kern_attn_args *a = &c->a;
	uint32_t g = a->hq / a->hkv, qi, t, i;

	for (qi = 0; qi < a->hq; qi++) {
		uint32_t h = qi / g, n = c->ntok[h];
		const float *K = c->kd + (size_t)h * c->ntok_max * a->d;
		const float *V = c->vd + (size_t)h * c->ntok_max * a->d;
		double *s = calloc(n + 1, sizeof(double)), m = -INFINITY, l = 0.0;
		const float *r = c->rest ? c->rest + (size_t)qi * (a->d + 1) : NULL;
		double rl = r ? (double)r[0] : -INFINITY;

		for (i = 0; i < a->d; i++)
			out[(size_t)qi * a->d + i] = 0.0;
		if (!s || (!n && !(rl > -INFINITY))) {
			free(s);
			continue;
		}
		m = rl;
		for (t = 0; t < n; t++) {
			double dot = 0.0;

			for (i = 0; i < a->d; i++)
				dot += (double)c->qf[(size_t)qi * a->d + i] *
				       K[(size_t)t * a->d + i];
			s[t] = dot * a->scale;
			m = s[t] > m ? s[t] : m;
		}
		for (t = 0; t < n; t++) {
			s[t] = exp(s[t] - m);
			l += s[t];
		}
		if (rl > -INFINITY)
			l += exp(rl - m);
		for (t = 0; t < n; t++)
			for (i = 0; i < a->d; i++)
				out[(size_t)qi * a->d + i] += s[t] / l * V[(size_t)t * a->d + i];
		for (i = 0; rl > -INFINITY && i < a->d; i++)
			out[(size_t)qi * a->d + i] += exp(rl - m) / l * r[1 + i];
		free(s);
	}
}

/* ||x - y|| / ||y||, with x read from a dtype buffer (NaN in x gives +inf). */
static inline double rel_err_dt(const void *x, enum ice_dtype dt, const double *y, size_t n)
{
	double num = 0.0, den = 0.0;
	size_t i;

	for (i = 0; i < n; i++) {
		double xi = dtype_load_f32(x, dt, i);

		if (!(xi == xi))
			return INFINITY;
		num += (xi - y[i]) * (xi - y[i]);
		den += y[i] * y[i];
	}
	return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

#endif
