/*
 * Positional pages, the baseline the DCI-tree is measured against (and which the real-model
 * runner uses too): page p holds tokens 16p .. 16p+15 in order, and a query ranks pages by a
 * Quest-style upper bound sum_j max(q_j * max_j, q_j * min_j) over the page's channel-wise key
 * minimum and maximum. Same hit struct, workspace rules and thread rules as idx.h: append
 * mutates, searches only read (any number of threads may search at once).
 */
#ifndef ICE_INDEX_POSIDX_H
#define ICE_INDEX_POSIDX_H

#include <stddef.h>
#include <stdint.h>

#include "idx.h"

struct posidx;

/* dim: multiple of 16, <= IDX_MAX_DIM. -EINVAL, -ENOMEM. */
int posidx_new(uint32_t dim, struct posidx **ret);
void posidx_free(struct posidx *px);
/* Appends n >= 1 keys (positions continue from ntokens). -EINVAL (NULL, n = 0, bad dtype,
 * non-finite key; nothing added), -ENOMEM (nothing added). */
int posidx_append(struct posidx *px, const void *keys, size_t n, enum ice_dtype dt);
size_t posidx_ntokens(const struct posidx *px);
size_t posidx_npages(const struct posidx *px);

size_t posidx_ws_size(const struct posidx *px, uint32_t g, uint32_t k);
/* Top-k pages by the Quest bound (group rankings merged round-robin); hit.score is the bound.
 * Returns the hit count or -EINVAL / -ENOSPC. */
int posidx_search(const struct posidx *px, const float *q, uint32_t g, uint32_t k, void *ws,
		  size_t ws_size, struct idx_hit *ret_hits);
/* Exact top-k pages by their best token score (every key scored). */
int posidx_exact_search(const struct posidx *px, const float *q, uint32_t g, uint32_t k, void *ws,
			size_t ws_size, struct idx_hit *ret_hits);

#endif
