/* Synthetic LLM-like keys and queries; see synth.h and docs/INDEX.md. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "synth.h"

struct rng {
	uint64_t s[4];
};

static uint64_t sm64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void rng_init(struct rng *r, uint64_t seed)
{
	int i;

	for (i = 0; i < 4; i++)
		r->s[i] = sm64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(struct rng *r)
{
	uint64_t res = rotl(r->s[1] * 5, 7) * 9, t = r->s[1] << 17;

	r->s[2] ^= r->s[0];
	r->s[3] ^= r->s[1];
	r->s[1] ^= r->s[2];
	r->s[0] ^= r->s[3];
	r->s[2] ^= t;
	r->s[3] = rotl(r->s[3], 45);
	return res;
}

static double rng_u01(struct rng *r)
{
	return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

static float rng_gauss(struct rng *r)
{
	double u1 = rng_u01(r) + 1e-300, u2 = rng_u01(r);

	return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

void synth_params_default(struct synth_params *p, uint32_t dim)
{
	memset(p, 0, sizeof(*p));
	p->dim = dim;
	p->seed = 42;
	p->qseed = 7;
	p->nclusters = 256;
	p->zipf = 1.0f;
	p->seg_mean = 32;
	p->spread = 0.6f;
	p->norm_sigma = 0.25f;
	p->noutliers = 4;
	p->outlier_mag = 6.0f;
	p->rope_base = 10000.0f;
	p->needles = 4;
	p->fact_every = 512;
	p->fact_mag = 1.0f;
	p->needle_logit = 7.0f;
	p->diffuse_share = 0.25f;
	p->topic_std = 2.0f;
	p->bg_std = 0.5f;
	p->noise_std = 0.5f;
}

static int params_ok(const struct synth_params *p)
{
	return p && p->dim >= 4 && p->dim % 2 == 0 && p->nclusters > 0 && p->seg_mean > 0 &&
	       p->noutliers * 2 < p->dim;
}

/* Outlier channels: the last noutliers channels (the slowest RoPE pairs), left unrotated. */
static int is_outlier(const struct synth_params *p, uint32_t j)
{
	return j >= p->dim - p->noutliers;
}

static double dotd(const float *a, const float *b, uint32_t d)
{
	double s = 0;
	uint32_t j;

	for (j = 0; j < d; j++)
		s += (double)a[j] * b[j];
	return s;
}

static void normalize(float *v, uint32_t d)
{
	double nv = sqrt(dotd(v, v, d)) + 1e-12;
	uint32_t j;

	for (j = 0; j < d; j++)
		v[j] = (float)(v[j] / nv);
}

/* Facts: token t carries fact f with probability 1/fact_every, f uniform over
 * max(1, n / (fact_every * needles)) facts, so each fact recurs about `needles` times at any n.
 * Both are hashes of (seed, t), so queries find the carriers without any shared state. */
static uint64_t hmix(uint64_t x)
{
	return sm64(&x);
}

static uint32_t nfacts(const struct synth_params *p, size_t n)
{
	size_t nf = n / ((size_t)p->fact_every * (p->needles ? p->needles : 1));

	return nf ? (uint32_t)(nf < UINT32_MAX ? nf : UINT32_MAX - 1) : 1;
}

uint32_t synth_fact_of(const struct synth_params *p, size_t n, size_t t)
{
	uint64_t h = hmix(p->seed * 0x2545f4914f6cdd1dull ^ (t + 0x51ull));

	if (p->fact_every == 0 || (h >> 11) % p->fact_every != 0)
		return UINT32_MAX;
	return (uint32_t)(hmix(h) % nfacts(p, n));
}

/* Unit direction of fact f, supported on the slow half of the channels (not the outliers). */
static void fact_dir(const struct synth_params *p, uint32_t f, float *v)
{
	struct rng r;
	uint32_t j, d = p->dim;
	double nv = 0;

	rng_init(&r, p->seed ^ (0xfac7ull << 32) ^ f);
	for (j = 0; j < d; j++) {
		v[j] = j >= d / 2 && !is_outlier(p, j) ? rng_gauss(&r) : 0.0f;
		nv += (double)v[j] * v[j];
	}
	for (j = 0; j < d; j++)
		v[j] = (float)(v[j] / sqrt(nv));
}

int synth_keys(const struct synth_params *p, size_t n, float *ret_keys)
{
	uint32_t d, c, j, nc;
	float *sigma = NULL, *mu = NULL, *osign = NULL, *fv = NULL;
	double *cdf = NULL, tot = 0;
	uint32_t f;
	struct rng r;
	size_t t, seg_left = 0, cur = 0;
	int rc = -ENOMEM;

	if (!params_ok(p) || !ret_keys || n == 0)
		return -EINVAL;
	d = p->dim;
	nc = p->nclusters;
	sigma = malloc(d * sizeof(float));
	osign = malloc(d * sizeof(float));
	mu = malloc((size_t)nc * d * sizeof(float));
	cdf = malloc(nc * sizeof(double));
	fv = malloc(d * sizeof(float));
	if (!sigma || !mu || !cdf || !osign || !fv)
		goto out;
	rng_init(&r, p->seed);
	/* anisotropic: a few channel pairs carry most of the variance */
	for (j = 0; j < d; j += 2) {
		double u = rng_u01(&r);

		sigma[j] = sigma[j + 1] = (float)(0.25 + 1.75 * u * u * u);
	}
	for (j = 0; j < d; j++)
		osign[j] = rng_u01(&r) < 0.5 ? -1.0f : 1.0f;
	for (c = 0; c < nc; c++) {
		for (j = 0; j < d; j++)
			mu[(size_t)c * d + j] = sigma[j] * rng_gauss(&r);
		tot += pow(c + 1.0, -p->zipf);
		cdf[c] = tot;
	}
	for (t = 0; t < n; t++) {
		float *k = ret_keys + t * d, scale;

		if (seg_left == 0) {
			double u = rng_u01(&r) * tot;
			uint32_t lo = 0, hi = nc - 1;

			while (lo < hi) {
				uint32_t mid = (lo + hi) / 2;

				if (cdf[mid] < u)
					lo = mid + 1;
				else
					hi = mid;
			}
			cur = lo;
			seg_left = 1 + (size_t)(-log(rng_u01(&r) + 1e-12) * p->seg_mean);
		}
		seg_left--;
		scale = expf(p->norm_sigma * rng_gauss(&r));
		for (j = 0; j < d; j++) {
			float v = mu[cur * d + j] + p->spread * sigma[j] * rng_gauss(&r);

			/* outlier channels: large, nearly constant across tokens (as in real keys) */
			if (is_outlier(p, j))
				k[j] = osign[j] * p->outlier_mag * sigma[j] +
				       0.1f * sigma[j] * rng_gauss(&r);
			else
				k[j] = v * scale;
		}
		/* RoPE: rotate pair i by t * base^(-2i/d) (outlier channels stay put) */
		for (j = 0; j + 1 < d; j += 2) {
			double ang, s, co;
			float a = k[j], b = k[j + 1];

			if (is_outlier(p, j) || is_outlier(p, j + 1))
				continue;
			ang = (double)t * pow(p->rope_base, -(double)j / d);
			sincos(ang, &s, &co);
			k[j] = (float)(a * co - b * s);
			k[j + 1] = (float)(a * s + b * co);
		}
		/* a few tokens carry a fact: a strong direction in the slow (position-stable)
		 * channels that some queries look for */
		f = synth_fact_of(p, n, t);
		if (f != UINT32_MAX) {
			double kn = sqrt(dotd(k, k, d));

			fact_dir(p, f, fv);
			for (j = 0; j < d; j++)
				k[j] += (float)(p->fact_mag * kn * fv[j]);
		}
	}
	rc = 0;
out:
	free(sigma);
	free(osign);
	free(mu);
	free(cdf);
	free(fv);
	return rc;
}

static uint64_t mix_q(uint64_t x)
{
	return sm64(&x) ^ 0x9e37ull;
}

#define SAMPLE 512

int synth_queries(const struct synth_params *p, const float *keys, size_t n, size_t nq, uint32_t g,
		  float *ret_q, uint32_t *ret_needles)
{
	uint32_t d, j, i, m, nn;
	float *dir = NULL, *bg = NULL, *top = NULL, *loc = NULL, *noise = NULL;
	uint32_t *samp = NULL;
	struct rng r;
	size_t qi, t;
	int rc = -ENOMEM;

	if (!params_ok(p) || !keys || !ret_q || n == 0 || g == 0 || p->needles == 0)
		return -EINVAL;
	d = p->dim;
	nn = p->needles;
	dir = malloc(d * sizeof(float));
	top = malloc(d * sizeof(float));
	loc = malloc(d * sizeof(float));
	bg = calloc(d, sizeof(float));
	noise = malloc(d * sizeof(float));
	samp = malloc(SAMPLE * sizeof(uint32_t));
	if (!dir || !bg || !top || !loc || !noise || !samp)
		goto out;
	rng_init(&r, p->seed ^ mix_q(p->qseed));
	/* background direction: the mean key (dominated by the outlier channels) */
	for (t = 0; t < n; t += 1 + n / 4096)
		for (j = 0; j < d; j++)
			bg[j] += keys[t * d + j];
	normalize(bg, d);
	for (qi = 0; qi < nq; qi++) {
		uint32_t need[64], fact = 0, tries;
		int diffuse = rng_u01(&r) < p->diffuse_share;

		/* a fact that occurs in keys[0..n); its carriers are the needles */
		for (tries = 0, nn = 0; nn == 0 && tries < 64; tries++) {
			fact = (uint32_t)(rng_next(&r) % nfacts(p, n));
			for (t = 0; t < n && nn < 64; t++)
				if (synth_fact_of(p, n, t) == fact)
					need[nn++] = (uint32_t)t;
		}
		if (nn == 0) { /* too few keys for facts: a random key stands in */
			need[0] = (uint32_t)(rng_next(&r) % n);
			nn = 1;
		}
		for (m = 0; ret_needles && m < p->needles; m++)
			ret_needles[qi * p->needles + m] = m < nn ? need[m] : UINT32_MAX;
		/* needle direction: the fact itself; topic direction: the mean of the needles'
		 * neighbourhoods (their topics near their RoPE phase), a milder semantic pull */
		if (tries && nn)
			fact_dir(p, fact, dir);
		else
			memcpy(dir, keys + (size_t)need[0] * d, d * sizeof(float));
		memset(top, 0, d * sizeof(float));
		for (m = 0; m < nn; m++) {
			size_t c = need[m], lo = c >= 8 ? c - 8 : 0, hi = c + 9 < n ? c + 9 : n, u;

			memset(loc, 0, d * sizeof(float));
			for (u = lo; u < hi; u++)
				for (j = 0; j < d; j++)
					loc[j] += keys[u * d + j];
			normalize(loc, d);
			for (j = 0; j < d; j++)
				top[j] += loc[j];
		}
		normalize(dir, d);
		normalize(top, d);
		for (i = 0; i < g; i++) {
			float *q = ret_q + (qi * g + i) * d;
			const float *comp[4] = { dir, top, bg, noise };
			double w[4], mean[4], sd[4], hit = 0;
			uint32_t ci;

			for (j = 0; j < d; j++)
				noise[j] = rng_gauss(&r);
			normalize(noise, d);
			/* each direction's logit statistics over a sample of keys */
			for (t = 0; t < SAMPLE; t++)
				samp[t] = (uint32_t)(rng_next(&r) % n);
			for (ci = 0; ci < 4; ci++) {
				double s1 = 0, s2 = 0;

				for (t = 0; t < SAMPLE; t++) {
					double v = dotd(comp[ci], keys + (size_t)samp[t] * d, d) /
						   sqrt(d);

					s1 += v;
					s2 += v * v;
				}
				mean[ci] = s1 / SAMPLE;
				sd[ci] = sqrt(fmax(s2 / SAMPLE - mean[ci] * mean[ci], 1e-12));
			}
			for (m = 0; m < nn; m++)
				hit += dotd(dir, keys + (size_t)need[m] * d, d) / sqrt(d);
			hit /= nn;
			w[0] = diffuse       ? 0.0 :
			       hit > mean[0] ? p->needle_logit / (hit - mean[0]) :
					       1.0;
			w[1] = p->topic_std / sd[1];
			w[2] = p->bg_std / sd[2];
			w[3] = p->noise_std / sd[3];
			for (j = 0; j < d; j++)
				q[j] = (float)(w[0] * dir[j] + w[1] * top[j] + w[2] * bg[j] +
					       w[3] * noise[j]);
		}
	}
	rc = 0;
out:
	free(dir);
	free(top);
	free(loc);
	free(noise);
	free(samp);
	free(bg);
	return rc;
}
