/*
 * The DCI-tree: a semantic page index over the keys of one (sequence, layer, KV head).
 *
 * Tokens are numbered by insertion order (0, 1, 2, ...). Every token lives on exactly one level
 * (level >= 1 with probability r1, >= 2 with r1*r2, ...) and belongs to the cell of its parent:
 * the nearest token on the level above in the lifted space [k, sqrt(M - |k|^2)] (so nearest =
 * largest inner product). Each cell's tokens are sorted along a projection and cut into pages of
 * at most IDX_PAGE_CAP tokens. The index keeps what selection needs and not the keys: a 4-bit
 * sketch of every page that a search scans first, the nodes' keys (levels >= 1, about 1.25% of
 * the tokens) and the page layout. The pages worth scoring exactly are read from where the
 * caller keeps the keys (struct idx_keys: the engine's page store), in batches. Until the
 * sketch is calibrated (an index grown by inserts alone, below IDX_SK_CALIB tokens) it holds
 * the keys itself and needs no source.
 *
 * Pages only grow: once a token is in a page it never moves; page ids are dense (0..npages-1)
 * and stable; a page's version increases each time a token is appended to it.
 *
 * Threads: idx_build/idx_insert mutate the index and must not run concurrently with anything
 * else on the same idx. idx_search/idx_exact_search and the read accessors only read it: any
 * number of threads may search one idx at the same time (each with its own workspace).
 * See docs/INDEX.md for the algorithm and the tunables.
 */
#ifndef ICE_INDEX_IDX_H
#define ICE_INDEX_IDX_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#define IDX_PAGE_CAP 16u
/* Most queries searched together in one call (a GQA group). */
#define IDX_MAX_GROUP 16u
/* Head dimension limits: a multiple of 16 between 16 and 512. */
#define IDX_MAX_DIM 512u

struct idx_params {
	uint32_t dim; /* head dim d: multiple of 16, <= IDX_MAX_DIM */
	float r1;     /* share of tokens promoted to level 1 (seeds), default 0.01 */
	float r2;     /* share of level-i tokens promoted to level i+1, default 0.2 */
	/* Pages re-scored exactly per query, picked by their 4-bit sketch score; 0 = beam_mult * k
	 * + beam_add + npages / beam_pages (at most IDX_MAX_BEAM = 1024). */
	uint32_t beam;
	float beam_mult;     /* 1.0 */
	uint32_t beam_add;   /* 16 */
	uint32_t beam_pages; /* 1024 (0: no growth with the index size) */
	/* Level-1 cells scanned in full per query besides (best seeds first); default 0 (see
	 * docs/INDEX.md for why). */
	uint32_t cells;
	/* A group of g queries re-scores beam * (1 + gqa_widen * (g - 1)) / g pages per query,
	 * 0.25. */
	float gqa_widen;
	/* Parents found exactly (one blocked SIMD pass) while the level above has at most this
	 * many nodes, else through the seed lists (level 0) or a beam descent through the levels
	 * (levels >= 1); default 4096. */
	uint32_t exact_parent_max;
	uint32_t descent_beam; /* nodes kept per level in that descent, default 8 */
	/* Level-0 parents past exact_parent_max seeds: the seeds are filed under about
	 * sqrt(parent_probes * seeds) of them, and a key scans the seeds filed under its
	 * parent_probes nearest (1..16, default 8); docs/INDEX.md. */
	uint32_t parent_probes;
	/* Insert: a seed whose cell holds this many tokens takes no more (the newcomer becomes a
	 * seed); 0 = 4/r1. */
	uint32_t cell_cap;
	uint32_t threads; /* build threads, default 1 (0 = online CPUs) */
	uint64_t seed;    /* promotion hash and projection seed */
};

/* Fills *p with the defaults above for head dim `dim`. */
void idx_params_default(struct idx_params *p, uint32_t dim);

struct idx;

/* Creates an empty index. -EINVAL on bad params (dim not a multiple of 16, ratios out of
 * (0, 1)), -ENOMEM. *ret written only on success. */
int idx_new(const struct idx_params *p, struct idx **ret);
/* Frees the index; NULL is fine. */
void idx_free(struct idx *ix);

/*
 * Bulk build (prefill): adds keys[0..n) as tokens ntokens()..ntokens()+n-1. On an empty index
 * this is the multi-threaded path (params.threads). On a calibrated non-empty one it builds the
 * keys as a segment of their own (their own seeds, cells and new pages; no existing page
 * changes, so the owner rewrites nothing), on an uncalibrated one it inserts (idx_insert).
 * keys: n rows of dim elements of type dt. 0 on success; -EINVAL (NULL keys, n = 0, bad
 * dtype, non-finite key), -ENOMEM (the index is unchanged on error).
 */
int idx_build(struct idx *ix, const void *keys, size_t n, enum ice_dtype dt);
/* Decode insert: appends n >= 1 keys. Same arguments and errors as idx_build (unchanged on
 * error: a failure part-way is rolled back). */
int idx_insert(struct idx *ix, const void *keys, size_t n, enum ice_dtype dt);

/*
 * Undo: idx_mark records where the index is; idx_rollback takes it back there, undoing every
 * idx_insert since (and the idx_build of an index that was empty at the mark): the same
 * tokens, pages, versions, dirty set and search results as if they had never run. For a
 * caller that inserts into several indexes and must then find room for the pages elsewhere:
 * when that fails, nothing happened. Valid while only inserts, builds and reads happened since
 * the mark (no idx_take_dirty); marks are undone latest first. Never fails, never allocates.
 */
struct idx_mark {
	size_t ntok, npages, nnodes, upages, dirty;
	float m;
	int sk_ready;
};
void idx_mark(const struct idx *ix, struct idx_mark *ret);
void idx_rollback(struct idx *ix, const struct idx_mark *mark);

/*
 * Where the keys of the index's pages live. read() writes the keys of pages[0..n) (n <=
 * IDX_KEYS_BATCH) as n blocks of dim x 16 fp32, channel-major (block[j * 16 + t]: channel j of
 * the page's token t, in idx_page_tokens order; lanes past the fill are ignored), and may use
 * `scratch` bytes of scratch per page (scratch: n * that many). It must agree with the keys the
 * index was given (the search's exact scores come from it) and may be called from several
 * searching threads at once. 0 or -errno: a failed read fails the search that needed it.
 */
#define IDX_KEYS_BATCH 32u
struct idx_keys {
	int (*read)(void *ctx, const struct idx *ix, const uint32_t *pages, uint32_t n,
		    float *blocks, void *scratch);
	void *ctx;
	size_t scratch;
};
/* Sets the source (copied; NULL: none). Without one, a search that needs exact scores of a
 * calibrated index fails with -ENOKEY. Size search workspaces after setting it. */
void idx_set_keys(struct idx *ix, const struct idx_keys *src);

/* A source for keys kept by position, row-major (key of position t at rows + t * dim * esize
 * bytes), as tests, benchmarks and icerun hold them: ctx points to a struct idx_rows. */
struct idx_rows {
	const void *rows;
	enum ice_dtype dt;
	size_t n; /* positions held (a page naming one beyond fails with -EIO) */
};
int idx_rows_read(void *ctx, const struct idx *ix, const uint32_t *pages, uint32_t n, float *blocks,
		  void *scratch);
/* For key sources: puts key x[dim] as token t (lane t) of a channel-major block. */
static inline void idx_block_put(float *blk, uint32_t dim, uint32_t t, const float *x)
{
	uint32_t j;

	for (j = 0; j < dim; j++)
		blk[(size_t)j * IDX_PAGE_CAP + t] = x[j]; /* a block has a lane per page slot */
}

/* Host bytes the index uses now: what its owner accounts (spare capacity in its arrays is
 * never written, so it is not resident). */
size_t idx_host_bytes(const struct idx *ix);

size_t idx_ntokens(const struct idx *ix);
size_t idx_npages(const struct idx *ix);
uint32_t idx_dim(const struct idx *ix);

/* Token positions of a page (ret_pos: IDX_PAGE_CAP entries, the first *ret_fill used), its
 * fill and version. -EINVAL on NULL/out-of-range page. */
int idx_page_tokens(const struct idx *ix, uint32_t page, uint32_t *ret_pos, uint32_t *ret_fill,
		    uint32_t *ret_version);
/* Page holding token `pos`, or -EINVAL. */
int idx_token_page(const struct idx *ix, uint32_t pos, uint32_t *ret_page);

/*
 * Pages whose membership changed (created or appended to) since the last call, each once,
 * lowest id first in build order. Copies up to max ids into ids and removes them from the set;
 * returns how many were copied (call again while it returns max).
 */
size_t idx_take_dirty(struct idx *ix, uint32_t *ids, size_t max);
/* Pages in the dirty set now. */
size_t idx_ndirty(const struct idx *ix);

struct idx_search_opts {
	uint32_t beam;  /* pages re-scored per query; 0 = the index default */
	uint32_t cells; /* level-1 cells scanned in full per query; 0 = the index default */
	uint32_t flags; /* IDX_SEARCH_* */
	/* NULL, or g finite per-query offsets: a group's rankings are then merged by
	 * score - bias[j] (best first, distinct pages, a page taking its best query) instead of
	 * round-robin (index/select.h says which offsets and why). */
	const float *bias;
	/* 0: a page scores its best token's q.k. s > 0: its soft maximum
	 * (1/s) * log(sum over its tokens of exp(s * q.k)), i.e. its total softmax weight at scale
	 * s, in the same units (so bias above still applies). Exact re-scoring only: the sketch pass
	 * still picks candidates by best token. */
	float mass_scale;
};
/* Score every page (same result as idx_exact_search; for tests and unlimited beams). */
#define IDX_SEARCH_ALL 1u
/* Skip the sketch pass: only the seed-ranked cells (opts.cells, at least 1) are scanned, as
 * the plain tree walk does (for comparisons; recall is much lower, see docs/INDEX.md). */
#define IDX_SEARCH_NO_SKETCH 2u

struct idx_hit {
	uint32_t page;
	float score; /* the page's best q.k (for a group: of the query that picked it) */
	uint32_t fill;
};

/*
 * Exact scores of one page's tokens for g (1..IDX_MAX_GROUP) queries q[g][dim]:
 * ret_scores[j * IDX_PAGE_CAP + t] = q_j . k_t for the page's token t (t below its fill, in
 * idx_page_tokens order; entries past the fill are unspecified). The same SIMD code and keys
 * (the source's) as search, so a page's best token here is its idx_hit score. ws:
 * idx_page_ws_size(ix) bytes. Returns the fill; -EINVAL on NULL, a page out of range, g out of
 * range or a non-finite q; -ENOSPC for a small ws; the source's error. Reads only.
 */
int idx_page_scores(const struct idx *ix, uint32_t page, const float *q, uint32_t g, void *ws,
		    size_t ws_size, float *ret_scores);
size_t idx_page_ws_size(const struct idx *ix);

/*
 * Chooses the `budget` best tokens among the pages of hits[0..n) (usually idx_search's, asked
 * for more pages than the budget holds) for a group of g queries q[g][dim]. A token weighs
 * max_j (q_j.k - bias[j]) (bias NULL: max_j q_j.k), as idx_search_opts.bias ranks pages
 * (index/select.h). ret_mask[i] gets the rows of hits[i]'s page taken (bit t: row t in
 * idx_page_tokens order). When the pages hold no more than the budget every row is taken (ws
 * may then be NULL).
 * Ties at the cut go to earlier hits, then lower rows. ws: idx_pick_ws_size(ix, n) bytes.
 * Returns the number of tokens taken; -EINVAL on NULL, a hit that is not a page of the index
 * as it is, g out of range, non-finite q or bias; -ENOSPC if ws is too small; the key
 * source's error.
 */
int idx_pick_tokens(const struct idx *ix, const float *q, uint32_t g, const float *bias,
		    const struct idx_hit *hits, uint32_t n, uint32_t budget, void *ws,
		    size_t ws_size, uint16_t *ret_mask);
size_t idx_pick_ws_size(const struct idx *ix, uint32_t n);

/* Workspace bytes for idx_search/idx_exact_search with g queries and k hits on the index as it
 * is now (it grows with inserts: size it again after inserting). 0 if g or k is invalid. */
size_t idx_search_ws_size(const struct idx *ix, uint32_t g, uint32_t k);

/*
 * Top-k pages for a group of g (1..IDX_MAX_GROUP) queries q[g][dim] (fp32): the best distinct
 * pages ranked by their best token score q.k; for g > 1 the per-query rankings are merged
 * round-robin, or by offset score when opts->bias is set. Ranks every page by its 4-bit sketch, re-scores the best `beam` pages per query
 * exactly (the beam is never below k), and with cells > 0 also scans the best level-1 cells by
 * seed score. Returns the number of hits written to ret_hits[0..k) (min(k, npages)); -EINVAL on
 * bad arguments (NULL, g or k out of range, non-finite q or bias), -ENOSPC if ws_size is too
 * small, the key source's error (-ENOKEY without one).
 * Never allocates, never writes to the index.
 */
int idx_search(const struct idx *ix, const float *q, uint32_t g, uint32_t k,
	       const struct idx_search_opts *opts, void *ws, size_t ws_size,
	       struct idx_hit *ret_hits);

/* Exact top-k pages (every key scored with the same SIMD code), same contract as idx_search. */
int idx_exact_search(const struct idx *ix, const float *q, uint32_t g, uint32_t k, void *ws,
		     size_t ws_size, struct idx_hit *ret_hits);

/* Introspection for tests and benchmarks. */
struct idx_info {
	size_t ntokens, npages, nseeds, nnodes;
	uint32_t nlevels;  /* highest level + 1 */
	uint32_t max_cell; /* most tokens in one level-1 cell */
	double mean_fill;  /* tokens per page */
	float lift_m;      /* M: max |k|^2 seen */
	uint32_t default_beam;
};
void idx_get_info(const struct idx *ix, struct idx_info *ret);
/* Level of token pos and the position of its parent (UINT32_MAX for the root). -EINVAL. */
int idx_token_parent(const struct idx *ix, uint32_t pos, uint32_t *ret_level, uint32_t *ret_parent);
/* The fp32 key the index holds for token pos (dim floats): a node's, or any token's while the
 * index keeps the keys (before calibration); -ENOENT for the others, -EINVAL. */
int idx_token_key(const struct idx *ix, uint32_t pos, float *ret_key);

/* Which SIMD path scores pages ("avx512", "avx2", "portable"). */
const char *idx_simd_name(void);
/* Forces a SIMD path for tests ("avx512", "avx2", "portable"); -ENOTSUP if the CPU lacks it. */
int idx_simd_force(const char *name);

/* Quickselect: reorders x[0..n) so that x[0..k) hold its k largest values (in no order) and
 * returns the k-th largest; 1 <= k <= n. Shared with icerun's mass-recall oracle. */
float idx_top_k(float *x, size_t n, size_t k);

#endif
