#include "hist.h"

#include <string.h>

static unsigned hist_bucket_of(uint64_t v)
{
	unsigned msb, sub;

	if (v < HIST_SUB)
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	sub = (unsigned)(v >> (msb - HIST_SUB_BITS)) & (HIST_SUB - 1);
	return (msb - HIST_SUB_BITS + 1) * HIST_SUB + sub;
}

/* Largest value that falls in bucket b. */
static uint64_t hist_bucket_top(unsigned b)
{
	unsigned grp = b / HIST_SUB, sub = b % HIST_SUB, msb;

	if (grp == 0)
		return b;
	msb = grp + HIST_SUB_BITS - 1;
	if (msb >= 63)
		return UINT64_MAX;
	return ((uint64_t)(HIST_SUB + sub + 1) << (msb - HIST_SUB_BITS)) - 1;
}

void hist_init(struct hist *h)
{
	memset(h, 0, sizeof(*h));
}

void hist_add(struct hist *h, uint64_t v)
{
	uint64_t cur;

	__atomic_fetch_add(&h->count, 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&h->sum, v, __ATOMIC_RELAXED);
	__atomic_fetch_add(&h->bucket[hist_bucket_of(v)], 1, __ATOMIC_RELAXED);
	cur = __atomic_load_n(&h->max, __ATOMIC_RELAXED);
	while (v > cur && !__atomic_compare_exchange_n(&h->max, &cur, v, 1, __ATOMIC_RELAXED,
						       __ATOMIC_RELAXED))
		;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
	uint64_t n = __atomic_load_n(&h->count, __ATOMIC_RELAXED), want, seen = 0;
	unsigned b;

	if (n == 0)
		return 0;
	if (q <= 0)
		q = 0;
	if (q >= 1)
		return __atomic_load_n(&h->max, __ATOMIC_RELAXED);
	want = (uint64_t)(q * (double)n) + 1;
	for (b = 0; b < HIST_BUCKETS; b++) {
		seen += __atomic_load_n(&h->bucket[b], __ATOMIC_RELAXED);
		if (seen >= want) {
			uint64_t top = hist_bucket_top(b), mx = h->max;
			return top < mx ? top : mx;
		}
	}
	return h->max;
}

void hist_merge(struct hist *dst, const struct hist *src)
{
	unsigned b;

	dst->count += src->count;
	dst->sum += src->sum;
	if (src->max > dst->max)
		dst->max = src->max;
	for (b = 0; b < HIST_BUCKETS; b++)
		dst->bucket[b] += src->bucket[b];
}
