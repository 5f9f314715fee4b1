/* The DCI-tree's internal layout, shared by idx.c (build, insert) and idx_search.c. */
#ifndef ICE_INDEX_IDX_IMPL_H
#define ICE_INDEX_IDX_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "idx.h"
#include "idx_simd.h"

#define IDX_NONE UINT32_MAX
#define IDX_ROOT 0u /* node 0: the virtual root whose cell holds the top level */
#define IDX_MAX_LEVELS 16u

struct idx_node {     /* a token on level >= 1, or the root */
	uint32_t pos; /* token position; IDX_NONE for the root */
	uint32_t level;
	uint32_t parent;     /* node id; IDX_NONE for the root */
	uint32_t head, tail; /* first and last page of its cell (IDX_NONE while empty) */
	uint32_t ntok;       /* tokens in its cell */
	float n2;            /* |key|^2 */
};

struct idx_page {
	uint32_t pos[IDX_PAGE_CAP];
	uint32_t cell; /* node id that owns the page */
	uint32_t next; /* next page of the same cell */
	uint32_t version;
	uint16_t fill;
	uint8_t dirty;
	uint8_t upper; /* holds level >= 1 tokens (scored on every search) */
};

struct idx_vec { /* growable uint32 array */
	uint32_t *v;
	size_t n, cap;
};

struct idx_scratch { /* parent-descent buffers (build workers, insert) */
	uint32_t *cand;
	float *cs;
	size_t cap;
};

/*
 * Seed lists for level-0 parents once there are more than exact_parent_max seeds (idx_ivf.c):
 * the first `nseeds` seeds, each filed under the nearest of `ncent` of them (the centres; lifted
 * at the largest seed norm, not at M, so the lists depend on the seeds alone; capped lists),
 * each list in 16-lane blocks. A key ranks the centres in the lifted space, scans the lists of
 * its `parent_probes` best exactly, and the seeds made since the lists were built (from seed
 * nseeds on) all.
 */
struct idx_ivf {
	size_t nseeds; /* seeds filed (0: no lists) */
	size_t base;   /* seed count the first lists were built for (0: exact_parent_max + 1) */
	size_t next;   /* seed count at which they are rebuilt */
	uint32_t ncent;
	float *cblk, *cn2, *ch; /* centres in blocks, |c|^2 and lift height per lane */
	uint32_t *boff;         /* list c: blocks boff[c] .. boff[c + 1] - 1 */
	uint8_t *blanes;        /* lanes used per list block */
	float *lblk, *ln2, *lh; /* list blocks, |s|^2 and height per lane */
	uint32_t *lnode;        /* node id per list lane */
	float hm;               /* M the heights are for (-1: none yet) */
};

struct idx {
	struct idx_params p;
	uint32_t dim;
	size_t blk; /* floats per 16-lane block: dim * 16 */

	size_t ntok, cap_tok;
	uint32_t *tok_page;
	uint32_t *tok_node; /* node id for level >= 1 tokens, IDX_NONE otherwise */

	struct idx_page *pages;
	size_t npages, cap_pages;
	/* Every token's fp32 key by position, from the first insert until the sketch is
	 * calibrated and no mark can take it back (idx_take_dirty); NULL otherwise. */
	float *pend;
	size_t cap_pend;
	struct idx_keys keys; /* where page keys are read from (read NULL: nowhere) */

	struct idx_node *nodes;
	size_t nnodes, cap_nodes;
	float *nkey; /* node keys, row-major, cap_nodes x dim */

	struct idx_vec lvl[IDX_MAX_LEVELS]; /* node ids per level (lvl[1] = seeds) */
	float *seedk; /* seed keys in 16-lane blocks (seed i: block i/16, lane i%16) */
	size_t cap_seed_blocks;

	struct idx_vec upages; /* pages with upper (level >= 1) tokens */
	struct idx_vec dirty;

	uint8_t *sk;            /* 4-bit page sketches: cap_pages blocks of IDX_SK_BYTES(dim) */
	float *sk_alpha;        /* per token (page * 16 + slot): its code scale, >= 1 */
	float *sk_mu, *sk_step; /* per channel: code = round((x - mu) / (step * alpha)) + 8 */
	int sk_ready;           /* calibrated (at build, or once inserts reach IDX_SK_CALIB) */

	float m;               /* lifting constant M = max |k|^2 seen */
	float *proj;           /* projection direction that orders a cell's tokens */
	struct idx_scratch sc; /* for the insert path */
	struct idx_ivf ivf;
	/* lift heights of seeds 0..sh_n under M = sh_m for the insert's exact pass (block
	 * padding lanes after them 0) */
	float *sh;
	size_t sh_n, sh_cap;
	float sh_m;
};

/* The keys of pages[0..n) (n <= IDX_KEYS_BATCH) as blocks: from pend while the index keeps the
 * keys, else from its source. scratch: n * ix->keys.scratch bytes. 0 or -errno. */
int idx_read_blocks(const struct idx *ix, const uint32_t *pages, uint32_t n, float *blocks,
		    void *scratch);

uint32_t idx_default_beam(const struct idx *ix, uint32_t k);

/* Brings the seed lists up to date for a parent pass over the seeds (single-threaded, before
 * it): 1 when level-0 parents go through them, 0 when the exact pass is used, -ENOMEM. */
int idx_ivf_sync(struct idx *ix);
/* Nearest seed (lifted) of keys xs[g][dim] (g <= 16) with heights hx: node and score. Reads
 * the index only (any number of threads). */
void idx_ivf_best(const struct idx *ix, const float *xs, const float *hx, uint32_t g,
		  uint32_t *ret_node, float *ret_score);
/* Forget the lists (the seeds they hold were taken back); never allocates. */
void idx_ivf_drop(struct idx *ix);
void idx_ivf_free(struct idx_ivf *v);
size_t idx_ivf_bytes(const struct idx *ix);

#define IDX_SK_CALIB 1024u
#define IDX_MAX_BEAM 1024u

void idx_sk_calibrate(struct idx *ix, const float *keys, size_t n);
void idx_sk_put(struct idx *ix, uint32_t page, uint32_t slot, const float *x);
void idx_sk_clear(struct idx *ix, uint32_t page);
void idx_sk_clear_slot(struct idx *ix, uint32_t page, uint32_t slot);
int idx_sk_rebuild(struct idx *ix);

#endif
