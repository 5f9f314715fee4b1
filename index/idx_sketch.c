/*
 * 4-bit page sketches. Each key is stored a second time as 4-bit codes per channel (offset by
 * the channel mean, in steps of 3 sigma / 7.5 of that channel), 16 tokens per block as the
 * scoring kernel wants them. A token with a value beyond 7 steps in some channel gets a
 * per-token scale alpha > 1 (all its codes shrink by alpha) rather than a clipped code: the rare
 * tokens with outlying values are the ones attention tends to want. A search ranks every page by its sketch score (an eighth of the
 * bytes of the fp32 keys) and re-scores only the best pages exactly; the per-channel offset
 * removes the large, nearly constant outlier channels that would otherwise eat the code range.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "idx_impl.h"

static void stats_done(struct idx *ix, const double *s1, const double *s2, size_t n)
{
	uint32_t j;

	for (j = 0; j < ix->dim; j++) {
		double mu = n ? s1[j] / n : 0, var = n ? s2[j] / n - mu * mu : 0;
		double sd = sqrt(var > 0 ? var : 0);

		ix->sk_mu[j] = (float)mu;
		ix->sk_step[j] = (float)(sd > 1e-12 ? 3.0 * sd / 7.5 : 1.0);
	}
	ix->sk_ready = 1;
}

void idx_sk_calibrate(struct idx *ix, const float *keys, size_t n)
{
	double s1[IDX_MAX_DIM] = { 0 }, s2[IDX_MAX_DIM] = { 0 };
	size_t t, stride = n > 65536 ? n / 65536 : 1, used = 0;
	uint32_t j;

	for (t = 0; t < n; t += stride, used++)
		for (j = 0; j < ix->dim; j++) {
			double v = keys[t * ix->dim + j];

			s1[j] += v;
			s2[j] += v * v;
		}
	stats_done(ix, s1, s2, used);
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
	uint8_t *blk = ix->sk + (size_t)page * IDX_SK_BYTES(ix->dim);
	float alpha = 1.0f, inv;
	uint32_t j;

	for (j = 0; j < ix->dim; j++) {
		float a = fabsf(x[j] - ix->sk_mu[j]) / (7.0f * ix->sk_step[j]);

		alpha = a > alpha ? a : alpha;
	}
	ix->sk_alpha[(size_t)page * IDX_LANES + slot] = alpha;
	inv = 1.0f / alpha;
	for (j = 0; j < ix->dim; j++) {
		float c = rintf((x[j] - ix->sk_mu[j]) / ix->sk_step[j] * inv);
		uint8_t code = (uint8_t)((c < -8 ? -8 : c > 7 ? 7 : (int)c) + 8);
		uint8_t *b = blk + (size_t)(j / 8) * 64 + slot * 4 + (j % 4);

		if (j % 8 < 4)
			*b = (uint8_t)((*b & 0xf0) | code);
		else
			*b = (uint8_t)((*b & 0x0f) | (code << 4));
	}
}

int idx_sk_rebuild(struct idx *ix)
{
	double s1[IDX_MAX_DIM] = { 0 }, s2[IDX_MAX_DIM] = { 0 };
	float x[IDX_MAX_DIM];
	size_t p, n = 0;
	uint32_t s, j;

	for (p = 0; p < ix->npages; p++) {
		const float *blk = idx_page_keys(ix, (uint32_t)p);

		for (s = 0; s < ix->pages[p].fill; s++, n++)
			for (j = 0; j < ix->dim; j++) {
				double v = blk[(size_t)j * IDX_LANES + s];

				s1[j] += v;
				s2[j] += v * v;
			}
	}
	stats_done(ix, s1, s2, n);
	for (p = 0; p < ix->npages; p++) {
		const float *blk = idx_page_keys(ix, (uint32_t)p);

		idx_sk_clear(ix, (uint32_t)p);
		for (s = 0; s < ix->pages[p].fill; s++) {
			for (j = 0; j < ix->dim; j++)
				x[j] = blk[(size_t)j * IDX_LANES + s];
			idx_sk_put(ix, (uint32_t)p, s, x);
		}
	}
	return 0;
}
