/*
 * Bounded top-k of (score, page) in caller memory: a min-heap whose root is the weakest kept
 * entry. The order is total (higher score first, then lower page id) so the kept set does not
 * depend on the order pages are offered in: a search that scores every page returns exactly
 * what the brute-force scan returns. Shared by idx and posidx; internal to index/.
 */
#ifndef ICE_INDEX_IDX_TOPK_H
#define ICE_INDEX_IDX_TOPK_H

#include <stdint.h>

#include "idx.h"

struct topk {
	float *score;
	uint32_t *page;
	uint32_t n, k;
};

/* a ranks below b */
static inline int topk_below(float sa, uint32_t pa, float sb, uint32_t pb)
{
	return sa < sb || (sa == sb && pa > pb);
}

static inline void topk_sift_down(struct topk *t, uint32_t i)
{
	for (;;) {
		uint32_t l = 2 * i + 1, r = l + 1, m = i;
		float fs;
		uint32_t fp;

		if (l < t->n && topk_below(t->score[l], t->page[l], t->score[m], t->page[m]))
			m = l;
		if (r < t->n && topk_below(t->score[r], t->page[r], t->score[m], t->page[m]))
			m = r;
		if (m == i)
			return;
		fs = t->score[i], fp = t->page[i];
		t->score[i] = t->score[m], t->page[i] = t->page[m];
		t->score[m] = fs, t->page[m] = fp;
		i = m;
	}
}

static inline void topk_push(struct topk *t, float s, uint32_t page)
{
	uint32_t i;

	if (t->n < t->k) {
		i = t->n++;
		while (i > 0) {
			uint32_t up = (i - 1) / 2;

			if (!topk_below(s, page, t->score[up], t->page[up]))
				break;
			t->score[i] = t->score[up], t->page[i] = t->page[up];
			i = up;
		}
		t->score[i] = s, t->page[i] = page;
		return;
	}
	if (!topk_below(t->score[0], t->page[0], s, page))
		return;
	t->score[0] = s, t->page[0] = page;
	topk_sift_down(t, 0);
}

/* Lowest kept score, or -inf while fewer than k are kept (anything better may enter). */
static inline float topk_floor(const struct topk *t)
{
	return t->n < t->k ? -__builtin_inff() : t->score[0];
}

/* Turns the heap into a best-first array in place (heap sort). */
static inline void topk_sort(struct topk *t)
{
	uint32_t n = t->n;

	while (t->n > 1) {
		uint32_t last = t->n - 1;
		float fs = t->score[0];
		uint32_t fp = t->page[0];

		t->score[0] = t->score[last], t->page[0] = t->page[last];
		t->score[last] = fs, t->page[last] = fp;
		t->n--;
		topk_sift_down(t, 0);
	}
	t->n = n;
}

/*
 * Merges g best-first lists round-robin (rank 0 of every query, then rank 1, ...) into k
 * distinct pages; fill is looked up by the caller afterwards. Returns the number written.
 */
static inline uint32_t topk_merge(struct topk *lists, uint32_t g, uint32_t k, struct idx_hit *hits)
{
	uint32_t nh = 0, r, i, j, maxn = 0;

	for (i = 0; i < g; i++)
		if (lists[i].n > maxn)
			maxn = lists[i].n;
	for (r = 0; r < maxn && nh < k; r++) {
		for (i = 0; i < g && nh < k; i++) {
			uint32_t p;

			if (r >= lists[i].n)
				continue;
			p = lists[i].page[r];
			for (j = 0; j < nh; j++)
				if (hits[j].page == p)
					break;
			if (j < nh)
				continue;
			hits[nh].page = p;
			hits[nh].score = lists[i].score[r];
			hits[nh].fill = 0;
			nh++;
		}
	}
	return nh;
}

/*
 * Merges g best-first lists into the k distinct pages with the highest score - bias[i], a page
 * listed by several queries counting its best. Exact for the union of the lists: a page outside
 * query i's top-k has k pages above it for that query alone. Selection by repeated scans over
 * g * k entries, fine for the budgets a decode step asks (k of a few dozen).
 */
static inline uint32_t topk_merge_biased(struct topk *lists, uint32_t g, uint32_t k,
					 const float *bias, struct idx_hit *hits)
{
	uint32_t nh = 0, i, r, j;

	while (nh < k) {
		float best = -__builtin_inff(), raw = 0;
		uint32_t bp = UINT32_MAX;

		for (i = 0; i < g; i++)
			for (r = 0; r < lists[i].n; r++) {
				uint32_t p = lists[i].page[r];
				float a = lists[i].score[r] - bias[i];

				/* lists are best first: later entries of this list score lower */
				if (a < best || (a == best && p > bp))
					break;
				for (j = 0; j < nh; j++)
					if (hits[j].page == p)
						break;
				if (j < nh)
					continue;
				best = a, bp = p, raw = lists[i].score[r];
				break;
			}
		if (bp == UINT32_MAX)
			break;
		hits[nh].page = bp;
		hits[nh].score = raw;
		hits[nh].fill = 0;
		nh++;
	}
	return nh;
}

#endif
