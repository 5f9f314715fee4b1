/*
 * Positional pages with Quest-style bounds. Keys live in 16-lane channel-major page blocks (as
 * in the DCI-tree, so the exact scan uses the same kernel); each group of 16 pages keeps its
 * channel-wise max and min as two blocks, so one bound pass ranks 16 pages at once.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "idx_simd.h"
#include "idx_topk.h"
#include "posidx.h"

struct posidx {
	uint32_t dim;
	size_t blk;
	size_t ntok, npages, cap_pages; /* cap_pages is a multiple of 16 */
	float *pk;                      /* cap_pages blocks */
	float *bnd;                     /* cap_pages / 16 groups of [hi block, lo block] */
};

int posidx_new(uint32_t dim, struct posidx **ret)
{
	struct posidx *px;

	if (!ret || dim < 16 || dim > IDX_MAX_DIM || dim % 16)
		return -EINVAL;
	px = calloc(1, sizeof(*px));
	if (!px)
		return -ENOMEM;
	px->dim = dim;
	px->blk = (size_t)dim * IDX_LANES;
	*ret = px;
	return 0;
}

void posidx_free(struct posidx *px)
{
	if (!px)
		return;
	free(px->pk);
	free(px->bnd);
	free(px);
}

size_t posidx_ntokens(const struct posidx *px)
{
	return px ? px->ntok : 0;
}

size_t posidx_npages(const struct posidx *px)
{
	return px ? px->npages : 0;
}

static int reserve(struct posidx *px, size_t pages)
{
	size_t cap = px->cap_pages ? px->cap_pages : 64, ob, nb;
	float *pk, *bnd;

	if (pages <= px->cap_pages)
		return 0;
	while (cap < pages)
		cap *= 2;
	ob = px->cap_pages * px->blk * sizeof(float);
	nb = cap * px->blk * sizeof(float);
	pk = aligned_alloc(64, nb);
	bnd = aligned_alloc(64, nb / IDX_LANES * 2);
	if (!pk || !bnd) {
		free(pk);
		free(bnd);
		return -ENOMEM;
	}
	if (ob) {
		memcpy(pk, px->pk, ob);
		memcpy(bnd, px->bnd, ob / IDX_LANES * 2);
	}
	memset((char *)pk + ob, 0, nb - ob);
	memset((char *)bnd + ob / IDX_LANES * 2, 0, (nb - ob) / IDX_LANES * 2);
	free(px->pk);
	free(px->bnd);
	px->pk = pk;
	px->bnd = bnd;
	px->cap_pages = cap;
	return 0;
}

int posidx_append(struct posidx *px, const void *keys, size_t n, enum ice_dtype dt)
{
	float *k;
	size_t i, cnt;
	int rc;

	if (!px || !keys || n == 0 || !dtype_size(dt))
		return -EINVAL;
	if (n > (size_t)UINT32_MAX - px->ntok)
		return -EINVAL;
	cnt = n * px->dim;
	k = malloc(cnt * sizeof(float));
	if (!k)
		return -ENOMEM;
	rc = dtype_to_f32_finite(keys, dt, cnt, k);
	if (rc == 0)
		rc = reserve(px, (px->ntok + n + IDX_PAGE_CAP - 1) / IDX_PAGE_CAP);
	for (i = 0; rc == 0 && i < n; i++) {
		size_t page = px->ntok / IDX_PAGE_CAP, slot = px->ntok % IDX_PAGE_CAP;
		float *blk = px->pk + page * px->blk;
		float *hi = px->bnd + (page / IDX_LANES) * 2 * px->blk, *lo = hi + px->blk;
		size_t lane = page % IDX_LANES, j;
		const float *x = k + i * px->dim;

		for (j = 0; j < px->dim; j++) {
			float *h = &hi[j * IDX_LANES + lane], *o = &lo[j * IDX_LANES + lane];

			blk[j * IDX_LANES + slot] = x[j];
			if (slot == 0 || x[j] > *h)
				*h = x[j];
			if (slot == 0 || x[j] < *o)
				*o = x[j];
		}
		px->ntok++;
		px->npages = page + 1;
	}
	free(k);
	return rc;
}

size_t posidx_ws_size(const struct posidx *px, uint32_t g, uint32_t k)
{
	if (!px || g == 0 || g > IDX_MAX_GROUP || k == 0 || k > (1u << 16))
		return 0;
	return (size_t)g * k * (sizeof(float) + sizeof(uint32_t)) +
	       (size_t)g * IDX_LANES * sizeof(float) + 64;
}

static int setup(const struct posidx *px, const float *q, uint32_t g, uint32_t k, void *ws,
		 size_t ws_size, struct idx_hit *hits, struct topk *h, float **ret_tmp)
{
	char *base;
	size_t i;

	if (!px || !q || !ws || !hits || g == 0 || g > IDX_MAX_GROUP || k == 0 || k > (1u << 16))
		return -EINVAL;
	for (i = 0; i < (size_t)g * px->dim; i++)
		if (!isfinite(q[i]))
			return -EINVAL;
	if (ws_size < posidx_ws_size(px, g, k))
		return -ENOSPC;
	base = (char *)(((uintptr_t)ws + 63) & ~(uintptr_t)63);
	*ret_tmp = (float *)base;
	base += (size_t)g * IDX_LANES * sizeof(float);
	for (i = 0; i < g; i++) {
		h[i].score = (float *)base + i * k;
		h[i].page = (uint32_t *)((float *)base + (size_t)g * k) + i * k;
		h[i].n = 0;
		h[i].k = k;
	}
	return 0;
}

static int finish(const struct posidx *px, struct topk *h, uint32_t g, uint32_t k,
		  struct idx_hit *hits)
{
	uint32_t i, n;

	for (i = 0; i < g; i++)
		topk_sort(&h[i]);
	if (g == 1) {
		n = h[0].n;
		for (i = 0; i < n; i++) {
			hits[i].page = h[0].page[i];
			hits[i].score = h[0].score[i];
		}
	} else {
		n = topk_merge(h, g, k, hits);
	}
	for (i = 0; i < n; i++) {
		size_t end = ((size_t)hits[i].page + 1) * IDX_PAGE_CAP;

		hits[i].fill = (uint32_t)(end <= px->ntok ? IDX_PAGE_CAP :
							    IDX_PAGE_CAP - (end - px->ntok));
	}
	return (int)n;
}

int posidx_search(const struct posidx *px, const float *q, uint32_t g, uint32_t k, void *ws,
		  size_t ws_size, struct idx_hit *ret_hits)
{
	const struct idx_simd_ops *ops = idx_simd();
	struct topk h[IDX_MAX_GROUP];
	float *tmp;
	size_t gi, ng;
	uint32_t i, l;
	int rc = setup(px, q, g, k, ws, ws_size, ret_hits, h, &tmp);

	if (rc < 0)
		return rc;
	ng = (px->npages + IDX_LANES - 1) / IDX_LANES;
	for (gi = 0; gi < ng; gi++) {
		const float *hi = px->bnd + gi * 2 * px->blk;

		for (i = 0; i < g; i++) {
			ops->bound_block(hi, hi + px->blk, q + (size_t)i * px->dim, px->dim, tmp);
			for (l = 0; l < IDX_LANES && gi * IDX_LANES + l < px->npages; l++)
				topk_push(&h[i], tmp[l], (uint32_t)(gi * IDX_LANES + l));
		}
	}
	return finish(px, h, g, k, ret_hits);
}

int posidx_exact_search(const struct posidx *px, const float *q, uint32_t g, uint32_t k, void *ws,
			size_t ws_size, struct idx_hit *ret_hits)
{
	const struct idx_simd_ops *ops = idx_simd();
	struct topk h[IDX_MAX_GROUP];
	float *tmp;
	size_t p;
	uint32_t i, l;
	int rc = setup(px, q, g, k, ws, ws_size, ret_hits, h, &tmp);

	if (rc < 0)
		return rc;
	for (p = 0; p < px->npages; p++) {
		size_t fill = px->ntok - p * IDX_PAGE_CAP;

		if (fill > IDX_PAGE_CAP)
			fill = IDX_PAGE_CAP;
		ops->score_block(px->pk + p * px->blk, q, g, px->dim, tmp);
		for (i = 0; i < g; i++) {
			const float *t = tmp + (size_t)i * IDX_LANES;
			float m = t[0];

			for (l = 1; l < fill; l++)
				m = t[l] > m ? t[l] : m;
			topk_push(&h[i], m, (uint32_t)p);
		}
	}
	return finish(px, h, g, k, ret_hits);
}
