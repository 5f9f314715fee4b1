/*
 * 4-bit page sketches. Each key is stored a second time as 4-bit codes per channel (offset by
 * the channel mean, in steps of 3 sigma / 7.5 of that channel, both estimated without the
 * outlying values), 16 tokens per block as the scoring kernel wants them. A token with a value
 * beyond 7 steps in some channel gets a per-token scale alpha > 1 (all its codes shrink by
 * alpha) rather than a clipped code: the rare tokens with outlying values are the ones attention
 * tends to want. A search ranks every page by its sketch score (an eighth of the bytes of the
 * fp32 keys) and re-scores only the best pages exactly; the per-channel offset removes the
 * large, nearly constant outlier channels that would otherwise eat the code range.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "idx_impl.h"

/*
 * Per-channel mean and step from a sample of keys, row(ctx, i, tmp) giving key i. A plain mean
 * and variance let one key of a thousand times the usual norm set every channel's step (its
 * square outweighs all the others'), coarsening every code to a few levels: every query then
 * ranks pages by noise. So the estimate is clipped: after the first pass, values beyond
 * CLIP_SD standard deviations of the previous estimate are left out, twice. An outlier then
 * costs its own page (its per-token alpha), not the sketch.
 */
#define CLIP_SD 8.0
#define CLIP_PASSES 2

typedef const float *(*sk_row_fn)(const void *ctx, size_t i, float *tmp);

static void calibrate(struct idx *ix, sk_row_fn row, const void *ctx, size_t n)
{
	double s1[IDX_MAX_DIM], s2[IDX_MAX_DIM], cnt[IDX_MAX_DIM], mu[IDX_MAX_DIM], sd[IDX_MAX_DIM];
	float tmp[IDX_MAX_DIM];
	uint32_t j, pass;
	size_t t;

	for (pass = 0; pass <= CLIP_PASSES; pass++) {
		memset(s1, 0, sizeof(s1));
		memset(s2, 0, sizeof(s2));
		memset(cnt, 0, sizeof(cnt));
		for (t = 0; t < n; t++) {
			const float *x = row(ctx, t, tmp);

			for (j = 0; j < ix->dim; j++) {
				double v = x[j];

				if (pass && fabs(v - mu[j]) > CLIP_SD * sd[j])
					continue;
				s1[j] += v;
				s2[j] += v * v;
				cnt[j]++;
			}
		}
		for (j = 0; j < ix->dim; j++) {
			double m = cnt[j] ? s1[j] / cnt[j] : 0,
			       var = cnt[j] ? s2[j] / cnt[j] - m * m : 0;

			mu[j] = m;
			sd[j] = sqrt(var > 0 ? var : 0);
		}
	}
	for (j = 0; j < ix->dim; j++) {
		ix->sk_mu[j] = (float)mu[j];
		ix->sk_step[j] = (float)(sd[j] > 1e-12 ? 3.0 * sd[j] / 7.5 : 1.0);
	}
	ix->sk_ready = 1;
}

struct rows {
	const float *keys;
	size_t stride;
	uint32_t dim;
};

static const float *sample_row(const void *ctx, size_t i, float *tmp)
{
	const struct rows *r = ctx;

	(void)tmp;
	return r->keys + i * r->stride * r->dim;
}

void idx_sk_calibrate(struct idx *ix, const float *keys, size_t n)
{
	struct rows r = { keys, n > 65536 ? n / 65536 : 1, ix->dim };

	calibrate(ix, sample_row, &r, (n + r.stride - 1) / r.stride);
}

void idx_sk_clear(struct idx *ix, uint32_t page)
{
	uint32_t l;

	memset(ix->sk + (size_t)page * IDX_SK_BYTES(ix->dim), 0x88, IDX_SK_BYTES(ix->dim));
	for (l = 0; l < IDX_LANES; l++)
		ix->sk_alpha[(size_t)page * IDX_LANES + l] = 1.0f;
}

/* One slot back to what idx_sk_clear leaves (code 8 in every channel, scale 1). */
void idx_sk_clear_slot(struct idx *ix, uint32_t page, uint32_t slot)
{
	uint8_t *blk = ix->sk + (size_t)page * IDX_SK_BYTES(ix->dim);
	uint32_t j;

	ix->sk_alpha[(size_t)page * IDX_LANES + slot] = 1.0f;
	for (j = 0; j < ix->dim; j++) {
		uint8_t *b = blk + (size_t)(j / 8) * 64 + slot * 4 + (j % 4);

		if (j % 8 < 4)
			*b = (uint8_t)((*b & 0xf0) | 8);
		else
			*b = (uint8_t)((*b & 0x0f) | (8 << 4));
	}
}

void idx_sk_put(struct idx *ix, uint32_t page, uint32_t slot, const float *x)
{
	uint8_t *blk = ix->sk + (size_t)page * IDX_SK_BYTES(ix->dim), code[IDX_MAX_DIM];
	float alpha = 1.0f, inv, y[IDX_MAX_DIM];
	uint32_t j, c, b;

	/* in steps, then the token's scale, then codes: three passes the compiler vectorises */
	for (j = 0; j < ix->dim; j++) {
		y[j] = (x[j] - ix->sk_mu[j]) / ix->sk_step[j];
		alpha = fabsf(y[j]) / 7.0f > alpha ? fabsf(y[j]) / 7.0f : alpha;
	}
	ix->sk_alpha[(size_t)page * IDX_LANES + slot] = alpha;
	inv = 1.0f / alpha;
	for (j = 0; j < ix->dim; j++) {
		float v = rintf(y[j] * inv);

		code[j] = (uint8_t)((v < -8 ? -8 : v > 7 ? 7 : (int)v) + 8);
	}
	/* byte slot*4+b of group c: channel 8c+b low, 8c+4+b high */
	for (c = 0; c < ix->dim / 8; c++)
		for (b = 0; b < 4; b++)
			blk[(size_t)c * 64 + slot * 4 + b] =
				(uint8_t)(code[c * 8 + b] | (code[c * 8 + 4 + b] << 4));
}

int idx_sk_rebuild(struct idx *ix)
{
	size_t p;
	uint32_t s;

	if (!ix->pend) /* only an index that still keeps its keys is calibrated late */
		return -EINVAL;
	idx_sk_calibrate(ix, ix->pend, ix->ntok);
	for (p = 0; p < ix->npages; p++) {
		idx_sk_clear(ix, (uint32_t)p);
		for (s = 0; s < ix->pages[p].fill; s++)
			idx_sk_put(ix, (uint32_t)p, s,
				   ix->pend + (size_t)ix->pages[p].pos[s] * ix->dim);
	}
	return 0;
}
