/*
 * Latency histogram: log-linear buckets (8 sub-buckets per power of two, so any quantile is
 * within 12.5% of the true value), lock-free updates, fixed size (no allocation), so it can sit
 * in shared memory or in a hot path. Values are uint64_t nanoseconds (or any unit).
 */
#ifndef ICE_COMMON_HIST_H
#define ICE_COMMON_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 3
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS (64u * HIST_SUB)

struct hist {
	uint64_t count;
	uint64_t sum;
	uint64_t max;
	uint64_t bucket[HIST_BUCKETS];
};

void hist_init(struct hist *h);
/* Thread-safe (relaxed atomics); readers see a consistent-enough snapshot for stats. */
void hist_add(struct hist *h, uint64_t v);
/* q in [0, 1]; returns the upper edge of the bucket holding the q-quantile (0 when empty). */
uint64_t hist_quantile(const struct hist *h, double q);
/* Adds every sample of src into dst (not atomic with respect to concurrent adds into src). */
void hist_merge(struct hist *dst, const struct hist *src);

#endif
