/*
 * Selection: which of one KV head's indexed tokens a decode step attends, for the g query heads
 * of its GQA group, and (on request) one softmax term per query head for the tokens left out.
 * The engine's select (runtime/engine/select.c) and the runner's dci mode (tools/icerun) call
 * the same select_head; this is where its policy is explained.
 *
 * Page ranking. idx_search ranks the index's pages per query by their best token's q.k or, with
 * page_mass, by their total softmax weight at the softmax's scale s (the soft maximum
 * (1/s) log sum exp(s q.k) over the page's tokens, in score units): a page of many good tokens
 * outranks a page of one slightly better token. exact scores every page (the reference).
 *
 * Group merge. A group's queries compete for the retrieved pages by the softmax weight a page
 * would add next to what the query attends anyway (its sink and window): query j's offset is
 * bias[j] = (1/s) logsumexp(s q_j.k) over those rows, and a page counts max_j (score_j -
 * bias[j]), its weight relative to them for the query that gains most. A query whose attention
 * already sits there (most heads, most steps) yields its pages to one that looks far back (a
 * retrieval head). Round-robin instead gives every query the same share, so with fewer pages
 * than queries the last queries of a group get none (group_merge = 0 keeps that, for
 * comparisons). With g = 1, no rows to calibrate against, or offsets beyond float range, the
 * merge is round-robin (for g = 1: the query's own ranking).
 *
 * Overfetch. The retrieved budget is counted in tokens attended, not pages fetched: select
 * searches overfetch (SELECT_OVERFETCH by default) times the budget's pages and marks in each
 * the budget's best tokens among them, by the same per-query weight (idx_pick_tokens). A
 * semantic page seldom holds sixteen tokens a query needs; its two or three good ones then
 * cost two or three tokens of budget. Pages none of whose tokens made the cut are dropped.
 *
 * Rest term. What is not attended need not be ignored: per-page mean keys and values, kept
 * as pages are written (struct select_sums, int8), let every indexed page with no row selected stand in for its
 * tokens as `count` copies of their mean key and mean value. For query j the term is a log
 * weight log sum over those pages of count * exp(s q_j . mean key), at the softmax's scale,
 * and the mean values weighted by those terms: one more token of the softmax (kern_attn's
 * rest), the background a budget otherwise drops. One dot product and one axpy per page and
 * query: a sixteenth of scoring every key.
 *
 * Dense layers attend every page whole (in id order); nothing is left out for their rest term.
 *
 * Nothing here allocates but select_sums_reserve; select_head only reads the index and the
 * sums (any number of threads may call it at once, each with its own workspace).
 */
#ifndef ICE_INDEX_SELECT_H
#define ICE_INDEX_SELECT_H

#include <stddef.h>
#include <stdint.h>

#include "idx.h"

/* Pages searched per page of budget unless the caller says otherwise. */
#define SELECT_OVERFETCH 2u

struct select_opts {
	uint32_t budget_pages; /* retrieved budget: budget_pages * IDX_PAGE_CAP tokens */
	uint32_t overfetch;    /* pages searched per budget page; 0 or 1: whole pages */
	float scale;           /* the softmax's scale of q.k: 1/sqrt(d) for the queries as a
				* model computes them, 1 when q already carries it */
	int group_merge;       /* 1: a group's pages by the weight each adds; 0: round-robin */
	int page_mass;         /* 1: pages rank by their softmax weight; 0: by their best token */
	int exact;             /* 1: every page scored (IDX_SEARCH_ALL) */
	int dense;             /* 1: every page, whole, in id order; no search */
};

/* A run of n rows of the index's dim elements in dtype dt, contiguous: rows a group attends
 * anyway (a ring buffer is two runs). */
struct select_rows {
	const void *rows;
	uint32_t n;
	enum ice_dtype dt;
};

/*
 * Per index page, the sums of its tokens' keys and values (fp32) and its token count, for the
 * rest term. In caller memory; the fields are the module's (use the functions).
 */
/* One page's mean key and mean value, int8 codes with a scale each (value = code * scale),
 * followed by the codes: key[dim], then value[dim]. Means rounded to 1/254 of their largest
 * entry: the rest term is an estimate of what is left out, not attention. */
struct select_page_sum {
	float kscale, vscale;
	uint32_t cnt; /* tokens */
};

struct select_sums {
	unsigned char *rec; /* [cap] records of select_sums_page_bytes(dim) */
	uint32_t cap, dim;
	uint32_t n; /* pages [0, n) are initialised */
};

/* Empty sums for rows of dim elements (dim <= IDX_MAX_DIM). */
void select_sums_init(struct select_sums *ss, uint32_t dim);
/* Frees what reserve allocated; NULL is fine. */
void select_sums_done(struct select_sums *ss);
/* Room for pages [0, npages) (new pages start empty). 0 or -ENOMEM (the sums are unchanged). */
int select_sums_reserve(struct select_sums *ss, uint32_t npages);
/* Page `page`'s means from all its n rows k[n][dim], v[n][dim] (dtype dt), replacing what it
 * had (pages grow: the engine passes the whole page each time it writes it). The page must be
 * below the reserved count. */
void select_sums_set(struct select_sums *ss, uint32_t page, const void *k, const void *v,
		     uint32_t n, enum ice_dtype dt);
/* Bytes the sums hold per page, and in all (pages reserved so far): for memory accounting. */
size_t select_sums_page_bytes(uint32_t dim);
size_t select_sums_bytes(const struct select_sums *ss);

/* The inputs of one KV head's group: g (1..IDX_MAX_GROUP) queries q[g][dim] in fp32, at the
 * scale select_opts.scale applies, and the rows the group attends anyway att[0..natt) (they
 * calibrate the group merge; natt may be 0). */
struct select_group {
	const float *q;
	uint32_t g, dim;
	const struct select_rows *att;
	uint32_t natt;
};

/* Hits select_head can return for this index as it is now: every page when dense, else
 * min(pages, budget_pages * overfetch). ix NULL: an empty index. */
uint32_t select_max_hits(const struct idx *ix, const struct select_opts *o);

/* Workspace bytes for select_head with g queries on the index as it is now (it grows with
 * inserts: size it again after inserting); 0 for g out of range or NULL opts. */
size_t select_ws_size(const struct idx *ix, uint32_t g, const struct select_opts *o);

/*
 * Selection for one KV head over index ix (NULL: no pages yet, as an empty index). Writes to
 * ret_hits and ret_mask (select_max_hits entries each) the pages attended, best first (dense:
 * in id order), each with the rows taken (bit t: row t in idx_page_tokens order; never 0) and
 * hit.score its ranking score (0 when dense). ret_rest: NULL, or [g][dim + 1] floats for the
 * rest term (per query a log weight at the softmax's scale, -INFINITY when nothing is left
 * out, then the value, zeros then); it needs sums that cover every page of ix. ws:
 * select_ws_size bytes. Returns the number of hits; -EINVAL on NULL, g or dim out of range or
 * not the index's, non-finite q, a bad row dtype, ret_rest without sums that cover the index;
 * -ENOSPC if ws is too small. Outputs are written only on success.
 */
int select_head(const struct idx *ix, const struct select_sums *sums, const struct select_opts *o,
		const struct select_group *grp, void *ws, size_t ws_size, struct idx_hit *ret_hits,
		uint16_t *ret_mask, float *ret_rest);

#endif
