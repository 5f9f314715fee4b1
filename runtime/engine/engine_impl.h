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
#define BATCH 32u         /* pages per store call */
#define MAX_HEAD_DIM 512u /* the API's bound (icecache.h) */
/* What idx_new allocates for a head of dimension d: 64 nodes with their keys, the projection
 * and the sketch scales (estimate; from then on the index says what it uses, idx_host_bytes). */
#define IDX_HEAD_BYTES(d) (64u * (4u * (d) + 32u) + 12u * (d) + 1024u)

struct seq;
struct engine;

/* What the index of one head needs to read its pages' keys from the store. */
struct page_src {
	struct engine *e;
	struct seq *s;
	uint32_t layer, head;
};

_Static_assert(ICE_PAGE_TOKENS == IDX_PAGE_CAP, "one page size for the API and the index");

struct head_state {
	unsigned char *sink_k, *sink_v; /* S rows each */
	unsigned char *win_k, *win_v;   /* Wcap rows each, a ring starting at win_start */
	uint32_t win_start, win_n;
	struct idx *ix;
	struct select_sums sums; /* per index page, for the rest term (index/select.h) */
	struct page_src src;     /* the index's key source (engine_page_keys) */
};

struct seq {
	uint32_t id, owner;
	uint32_t acct; /* the owner's entry in engine.own: its store account */
	struct engine_params p;
	uint32_t S, W, Wcap, kpages, g;
	size_t es, row;        /* element size, bytes per token row (d * es) */
	enum ice_dtype dt;     /* p.shape.dtype (checked), typed */
	uint64_t bytes;        /* charged to host_bytes and the owner */
	uint64_t pages;        /* index pages over all layers and heads (stats) */
	int broken;            /* an index/store update failed half-way: -errno */
	uint32_t *ntok;        /* per layer */
	uint32_t *sink_n;      /* per layer (same for all heads) */
	struct head_state *hs; /* [layers][kv_heads] */
	unsigned char *scr;    /* append scratch: evicted rows, page assembly */
	size_t scr_cap;
};

/*
 * An owner with sequences: its index in engine.own is its account in the page store, which
 * counts the DRAM and NVMe slots of its pages as they are put, moved and dropped (the store
 * changes residency, so it is the one place that always knows; asking it per page would be a
 * lookup per page per check). The entry is taken at the owner's first open and freed with its
 * last sequence, when nothing is charged to it any more.
 */
struct owner {
	uint32_t id;
	uint32_t nseqs; /* 0: the entry is free */
	uint64_t host;  /* host bytes charged (atomic) */
};

struct engine {
	pthread_mutex_t lock; /* the table, the owners, the generation counters */
	struct engine_opts o;
	struct seq **slot;
	uint32_t *gen;
	uint32_t nseqs;
	uint64_t used;     /* host bytes charged (atomic) */
	struct owner *own; /* [max_seqs + 1]; entry 0 unused (store account 0) */
	uint64_t seqs_opened, seqs_dropped;
	struct tier *tiers[TIER_MAX]; /* dram, then nvme and redis when configured */
	unsigned ntiers;
	struct store *store;
	struct policy *pol; /* with a tier past DRAM: watermarks, demotion, promotion */
	struct hist h_append, h_select, h_fetch;
};

/* Host bytes for sequence s: charged to its owner (-EDQUOT past owner_host_bytes) and against
 * opts.host_bytes (-ENOSPC past it), and given back. */
int engine_charge(struct engine *e, const struct seq *s, uint64_t bytes);
void engine_uncharge(struct engine *e, const struct seq *s, uint64_t bytes);
/* Charges memory already in use, past the limits if it must (they refuse the next request). */
void engine_charge_force(struct engine *e, const struct seq *s, uint64_t bytes);

/* The owner's sequence id, or NULL. The owner's thread is the only one that mutates or frees
 * its sequences, so the pointer stays valid after the table lock is released. */
struct seq *engine_seq_get(struct engine *e, uint32_t owner, uint32_t id);
void engine_seq_free(struct engine *e, struct seq *s);

/* Page reads through the placement policy when there is one. */
int engine_store_read(struct engine *e, struct store_page *pg, unsigned n);

/* The index's key source (struct idx_keys.read, ctx a struct page_src): a head's pages from
 * the store, K rows as fp32 blocks; scratch: slot_bytes per page. */
int engine_page_keys(void *ctx, const struct idx *ix, const uint32_t *pages, uint32_t n,
		     float *blocks, void *scratch);

/* Host bytes a head's index and sums use now, and the store's entries for its pages. */
static inline size_t head_bytes(const struct head_state *st)
{
	return idx_host_bytes(st->ix) + select_sums_bytes(&st->sums) +
	       idx_npages(st->ix) * store_page_meta_bytes();
}

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
