/*
 * ksel: selection on the GPU (issue 20). GPU-resident summaries of the DCI-tree's pages and one
 * fused select launch per layer that scores them for every KV head's GQA group, keeps the best
 * candidates inside the kernel (radix select, no sort), re-scores the candidates' keys exactly
 * (token by token, from the pages' K held in HBM), keeps the best pages by the softmax mass
 * their tokens carry and writes the page table kern_attn reads and the copy list kern_gather
 * moves, so a decode step needs no host synchronisation between select, move and attend.
 *
 * Page summary (one record per (KV head, page), kern_sel_rec_bytes(d) bytes, 16-byte aligned):
 * a header (scale, fill), then per channel c the int8 bounds lo[c] <= k[c] / scale <= hi[c] of
 * the page's keys (floor and ceil of the page's min and max, scale = max |k| / 127). For a
 * query q, sum_c max(q_c lo_c, q_c hi_c) * scale bounds every token's q.k from above, so a page
 * whose best token matters cannot hide behind a poor average (a centroid can). d = 128: 272
 * bytes per 4 KiB of K (1/15). Records are written from the keys by kern_sel_sum (a list of
 * pages: the whole index after prefill, the dirty pages after inserts), so they follow the
 * index's page layout (idx_page_tokens) without the index knowing about the GPU.
 *
 * Pages of KV head h are h * pstride + p (p < npages); page (h, p)'s K block ([fill][d], one
 * dtype) sits at pool + slot * slot_bytes, slot = slot_of ? slot_of[h * pstride + p] :
 * h * pstride + p.
 */
#ifndef ICE_KERNELS_KSEL_H
#define ICE_KERNELS_KSEL_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "kern.h"

#define KERN_SEL_HDR 16u
#define KERN_SEL_MAX_CAND 64u
#define KERN_SEL_MAX_KEEP 32u

struct kern_sel_hdr {
	float scale;
	uint32_t fill; /* 0: an empty page, never selected */
	uint32_t pad[2];
};

static inline size_t kern_sel_rec_bytes(uint32_t d)
{
	return KERN_SEL_HDR + 2 * (size_t)d;
}

/* Where the keys are: see the file comment. */
struct kern_sel_keys {
	enum ice_dtype dtype;
	uint32_t d, page_cap;
	const void *pool;
	size_t slot_bytes;
	const uint32_t *slot_of; /* NULL: identity */
	uint32_t pstride;        /* pages per KV head in the summaries and slot_of */
};

/* One summary to (re)write: page `page` of KV head `head`, holding `fill` (<= page_cap) rows. */
struct kern_sel_upd {
	uint32_t head, page, fill, pad;
};

/* CPU reference: host pointers (keys.pool, upd, sums). 0 or -EINVAL. */
int kern_ref_sel_sum(const struct kern_sel_keys *keys, const struct kern_sel_upd *upd, uint32_t n,
		     void *sums);
/* GPU: one launch for n updates (each page at most once per call: they run in parallel); every
 * pointer device-visible. 0 once enqueued; -EINVAL,
 * -ENODEV, -EIO. */
int kern_sel_sum(const struct kern_sel_keys *keys, const struct kern_sel_upd *upd, uint32_t n,
		 void *sums, void *stream);

/*
 * Select for one layer. Per KV head h (query heads h * g .. h * g + g - 1, g = hq / hkv in
 * {1, 2, 4, 8}): every page's bound max_j scale * ub(q_j) ranks the pages; the best `cand`
 * are re-scored exactly (s = attn_scale: w_jt = s q_j . k_t, m_j the best w of query j).
 * rows = 0: whole pages; each candidate weighs max_j sum_t exp(w_jt - m_j) / Z_j (its share of
 * query j's mass over the candidates, Z_j their sum) and the best `keep` candidates are the
 * head's pages, best first, every row attended. rows > 0: the best `rows` tokens of all the
 * candidates by u_t = max_j (w_jt - m_j) are picked, a page weighs the sum of exp(u_t) over its
 * picked tokens, and the `keep` heaviest pages with a pick are the head's pages, each with its
 * picked rows (picks in lighter pages are dropped); ties go to the lower page, then row.
 *
 * Outputs, per head h, entries i < keep: ids[h * keep + i] (UINT32_MAX where fewer than keep
 * pages exist) and masks[h * keep + i] (0 there). Optional (NULL: not written): table[h *
 * tstride + toff + i] = { tslot + h * tstride + toff + i, fill, ~mask } (fill 0 where no page)
 * and copies[h * keep + i] = { src_base + (h * pstride + p) * src_bytes, dst_base + (h *
 * tstride + toff + i) * dst_bytes } (page 0 of the head where no page), so kern_gather (device
 * list) then kern_attn run on what select wrote.
 */
struct kern_sel_args {
	struct kern_sel_keys keys;
	uint32_t hq, hkv;
	float attn_scale;
	const float *q; /* [hq][d] fp32 */
	const void *sums;
	uint32_t npages; /* pages per head (<= keys.pstride) */
	uint32_t cand;   /* 1..KERN_SEL_MAX_CAND */
	uint32_t keep;   /* 1..min(cand, KERN_SEL_MAX_KEEP) */
	uint32_t rows;   /* 0: whole pages; else tokens picked (<= cand * page_cap) */
	uint32_t *ids;
	uint16_t *masks;
	struct kern_page *table;
	uint32_t tstride, toff, tslot;
	struct kern_copy *copies;
	uint64_t src_base, dst_base;
	size_t src_bytes, dst_bytes;
};

int kern_sel_check(const struct kern_sel_args *a);

/* CPU reference (host pointers; the workspace it needs is its own). Ties in the bound go to the
 * lower page. Also returns, when ret_cand is not NULL, the candidates ([hkv][cand] page ids, in
 * bound order): the test compares them. 0, -EINVAL, -ENOMEM. */
int kern_ref_sel(const struct kern_sel_args *a, uint32_t *ret_cand);

/* GPU workspace bytes; zero-filled once before first use (kern_memset), each launch leaves it
 * ready for the next. One per stream. */
size_t kern_sel_ws_size(const struct kern_sel_args *a);
/* GPU: one launch; d 64 or 128, slot_bytes a multiple of 16. Every pointer device-visible. 0 once enqueued; -EINVAL, -ENODEV, -EIO. */
int kern_sel(const struct kern_sel_args *a, void *ws, void *stream);

#endif
