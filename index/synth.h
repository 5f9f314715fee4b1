/*
 * Synthetic LLM-like keys and queries, shared by the index tests and `icebench index`
 * (docs/INDEX.md describes the model and why each ingredient is there). Deterministic in seed.
 *
 * Keys: topics (clusters with Zipf popularity) that recur in segments along the sequence, an
 * anisotropic per-channel scale, log-normal norm variation, a few large-magnitude outlier
 * channels (not rotated) and a RoPE rotation of every other channel pair by position.
 * Queries (at position n): a few needle keys they match strongly, a pull along the outlier
 * channels that gives every key some background score, and noise; scaled so that the needles'
 * logits q.k/sqrt(d) sit needle_logit above the mean background logit. The g queries of a GQA
 * group share their needles and differ in noise.
 */
#ifndef ICE_INDEX_SYNTH_H
#define ICE_INDEX_SYNTH_H

#include <stddef.h>
#include <stdint.h>

struct synth_params {
	uint32_t dim;
	uint64_t seed;       /* keys (and which tokens carry facts) */
	uint64_t qseed;      /* query randomness: vary this, not seed, for new queries */
	uint32_t nclusters;  /* topics, default 256 */
	float zipf;          /* topic popularity exponent, 1.0 */
	uint32_t seg_mean;   /* mean tokens per topic segment, 32 */
	float spread;        /* within-topic noise relative to the channel scale, 0.6 */
	float norm_sigma;    /* log-normal sigma of key norms, 0.25 */
	uint32_t noutliers;  /* outlier channels, 4 */
	float outlier_mag;   /* their mean magnitude in channel-scale units, 6 */
	float rope_base;     /* RoPE theta, 10000 */
	uint32_t needles;    /* mean carriers per fact = strongly matching keys per query, 4 */
	uint32_t fact_every; /* one token in fact_every carries a fact, 512 */
	float fact_mag;      /* a fact's size relative to the key it is added to, 1.0 */
	/* A query mixes four directions, each weighted by the logit spread it causes over the keys
	 * (logit = q.k/sqrt(d)); measured on a sample of keys. */
	float needle_logit;  /* needles' mean logit above the mean key's, 7 */
	float diffuse_share; /* share of query groups with no needle term (diffuse heads), 0.25 */
	float topic_std;     /* logit std from the needles' topic (neighbourhood mean), 2.0 */
	float bg_std;        /* logit std from the mean-key (outlier) direction, 0.5 */
	float noise_std;     /* logit std from a random direction, 0.5 */
};

void synth_params_default(struct synth_params *p, uint32_t dim);
/* keys: n x dim floats. -EINVAL (dim not even, n = 0, NULL), -ENOMEM. */
int synth_keys(const struct synth_params *p, size_t n, float *ret_keys);
/* Fact carried by token t of an n-key sequence, UINT32_MAX if none. */
uint32_t synth_fact_of(const struct synth_params *p, size_t n, size_t t);
/* nq groups of g queries (nq x g x dim floats) against keys[0..n); needles (nq x p->needles
 * positions of the fact's carriers, UINT32_MAX-padded) may be NULL. -EINVAL, -ENOMEM. */
int synth_queries(const struct synth_params *p, const float *keys, size_t n, size_t nq, uint32_t g,
		  float *ret_q, uint32_t *ret_needles);

#endif
