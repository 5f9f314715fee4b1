/*
 * The engine's state, shared by its phases: seq.c (the sequence table), append.c (sink, window,
 * index insert, page writes), select.c (the page table a step attends), fetch.c (pages out),
 * engine.c (tiers, memory accounting, stats). Internal to runtime/engine/.
 *
 * Per (sequence, layer, KV head) the state is
 *   sink   the first S tokens (S = sink budget rounded up to pages), attended always, kept here;
 *   window a ring of the last tokens, W..W+P-1 of them once warm (W = window budget rounded up),
 *          kept here;
 *   index  a DCI-tree (index/idx.h) over every token that left the window; its pages (which
 *          only grow) live in the page store (tiers/store.h), keyed {seq, layer, head, page}.
 */
#ifndef ICE_RUNTIME_ENGINE_IMPL_H
#define ICE_RUNTIME_ENGINE_IMPL_H

#include <pthread.h>
#include <stdint.h>

#include "buf.h"
#include "dtype.h"
#include "engine.h"
#include "hist.h"
#include "idx.h"
#include "select.h"
#include "store.h"
#include "tier.h"

#define P ICE_PAGE_TOKENS
#define SEQ_SLOT_BITS 16
#define BATCH 32u /* pages per store call */
#define MAX_HEAD_DIM 512u /* the API's bound (icecache.h) */
/* Host bytes the index holds per token: its fp32 key copy plus bookkeeping (estimate). */
#define IDX_TOKEN_OVERHEAD 64u

_Static_assert(ICE_PAGE_TOKENS == IDX_PAGE_CAP, "one page size for the API and the index");

struct head_state {
	unsigned char *sink_k, *sink_v;	/* S rows each */
	unsigned char *win_k, *win_v;	/* Wcap rows each, a ring starting at win_start */
	uint32_t win_start, win_n;
	struct idx *ix;
	struct select_sums sums;	/* per index page, for the rest term (index/select.h) */
};

struct seq {
	uint32_t id, owner;
	struct engine_params p;
	uint32_t S, W, Wcap, kpages, g;
	size_t es, row;			/* element size, bytes per token row (d * es) */
	enum ice_dtype dt;		/* p.shape.dtype (checked), typed */
	uint64_t bytes;			/* reserved from host_bytes */
	uint64_t pages;			/* index pages over all layers and heads (stats) */
	int broken;			/* an index/store update failed half-way: -errno */
	uint32_t *ntok;			/* per layer */
	uint32_t *sink_n;		/* per layer (same for all heads) */
	struct head_state *hs;		/* [layers][kv_heads] */
	unsigned char *scr;		/* append scratch: evicted rows, page assembly */
	size_t scr_cap;
};

struct engine {
	pthread_mutex_t lock;		/* the table and the generation counters */
	struct engine_opts o;
	struct seq **slot;
	uint32_t *gen;
	uint32_t nseqs;
	uint64_t used;			/* host bytes reserved (atomic) */
	uint64_t seqs_opened, seqs_dropped;
	struct tier *tiers[2];
	unsigned ntiers;
	struct store *store;
	struct policy *pol;		/* with an NVMe tier: watermarks, demotion, promotion */
	struct hist h_append, h_select, h_fetch;
};

/* Host bytes: charged against opts.host_bytes (-ENOSPC past it) and given back. */
int engine_reserve(struct engine *e, uint64_t bytes);
void engine_unreserve(struct engine *e, uint64_t bytes);

/* The owner's sequence id, or NULL. The owner's thread is the only one that mutates or frees
 * its sequences, so the pointer stays valid after the table lock is released. */
struct seq *engine_seq_get(struct engine *e, uint32_t owner, uint32_t id);
void engine_seq_free(struct engine *e, struct seq *s);

/* Page reads and writes through the placement policy when there is one. */
int engine_store_read(struct engine *e, struct store_page *pg, unsigned n);
int engine_store_write(struct engine *e, struct store_page *pg, unsigned n);

static inline uint32_t sink_pages(const struct seq *s, uint32_t layer)
{
	return (s->sink_n[layer] + P - 1) / P;
}

static inline uint32_t win_pages(const struct seq *s, uint32_t layer)
{
	return (s->hs[(size_t)layer * s->p.shape.kv_heads].win_n + P - 1) / P;
}

/* Pages in a head's index (0 before the layer's first tokens). */
static inline uint32_t head_pages(const struct head_state *st)
{
	return st->ix ? (uint32_t)idx_npages(st->ix) : 0;
}

#endif
