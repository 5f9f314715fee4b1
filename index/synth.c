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
	p->nclusters = 256;
	p->zipf = 1.0f;
	p->seg_mean = 32;
	p->spread = 0.6f;
	p->norm_sigma = 0.25f;
	p->noutliers = 4;
	p->outlier_mag = 6.0f;
	p->rope_base = 10000.0f;
	p->needles = 4;
	p->needle_logit = 10.0f;
	p->bg_pull = 0.5f;
	p->q_noise = 0.5f;
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

int synth_keys(const struct synth_params *p, size_t n, float *ret_keys)
{
	uint32_t d, c, j, nc;
	float *sigma = NULL, *mu = NULL, *osign = NULL;
	double *cdf = NULL, tot = 0;
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
	if (!sigma || !mu || !cdf || !osign)
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

			if (is_outlier(p, j))
				v = osign[j] * p->outlier_mag * sigma[j] + 0.3f * sigma[j] * rng_gauss(&r);
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
	}
	rc = 0;
out:
	free(sigma);
	free(osign);
	free(mu);
	free(cdf);
	return rc;
}

static double dotd(const float *a, const float *b, uint32_t d)
{
	double s = 0;
	uint32_t j;

	for (j = 0; j < d; j++)
		s += (double)a[j] * b[j];
	return s;
}

int synth_queries(const struct synth_params *p, const float *keys, size_t n, size_t nq,
		  uint32_t g, float *ret_q, uint32_t *ret_needles)
{
	uint32_t d, j, i, m, nn;
	float *dir = NULL, *bg = NULL;
	struct rng r;
	size_t qi, t;
	int rc = -ENOMEM;

	if (!params_ok(p) || !keys || !ret_q || n == 0 || g == 0 || p->needles == 0)
		return -EINVAL;
	d = p->dim;
	nn = p->needles;
	dir = malloc(d * sizeof(float));
	bg = calloc(d, sizeof(float));
	if (!dir || !bg)
		goto out;
	rng_init(&r, p->seed ^ 0x9e37ull);
	/* background direction: the mean key (dominated by the outlier channels) */
	for (t = 0; t < n; t += 1 + n / 4096)
		for (j = 0; j < d; j++)
			bg[j] += keys[t * d + j];
	{
		double nb = sqrt(dotd(bg, bg, d)) + 1e-12;

		for (j = 0; j < d; j++)
			bg[j] = (float)(bg[j] / nb);
	}
	for (qi = 0; qi < nq; qi++) {
		uint32_t need[64];

		for (m = 0; m < nn && m < 64; m++) {
			need[m] = (uint32_t)(rng_next(&r) % n);
			if (ret_needles)
				ret_needles[qi * nn + m] = need[m];
		}
		for (i = 0; i < g; i++) {
			float *q = ret_q + (qi * g + i) * d;
			double nd, hit = 0, base = 0, alpha;

			memset(dir, 0, d * sizeof(float));
			for (m = 0; m < nn && m < 64; m++) {
				const float *k = keys + (size_t)need[m] * d;
				double kn = sqrt(dotd(k, k, d)) + 1e-12;

				for (j = 0; j < d; j++)
					dir[j] += (float)(k[j] / kn);
			}
			nd = sqrt(dotd(dir, dir, d)) + 1e-12;
			for (j = 0; j < d; j++)
				q[j] = (float)(dir[j] / nd) + p->bg_pull * bg[j] +
				       p->q_noise * rng_gauss(&r) / sqrtf((float)d);
			/* scale: mean needle logit sits needle_logit above the mean key's logit */
			for (m = 0; m < nn && m < 64; m++)
				hit += dotd(q, keys + (size_t)need[m] * d, d);
			hit /= nn < 64 ? nn : 64;
			for (t = 0; t < 256; t++)
				base += dotd(q, keys + (size_t)(rng_next(&r) % n) * d, d);
			base /= 256;
			alpha = hit > base ? p->needle_logit * sqrt((double)d) / (hit - base) : 1.0;
			for (j = 0; j < d; j++)
				q[j] = (float)(q[j] * alpha);
		}
	}
	rc = 0;
out:
	free(dir);
	free(bg);
	return rc;
}
