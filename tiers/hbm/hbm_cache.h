/*
 * Which HBM slot holds which page: the bookkeeping of the HBM page cache's working sets
 * (tiers/hbm/hbm.h: a GPU-side page cache that the GPU tests and `icebench gpu` drive, not yet a
 * tier the engine opens), kept apart from CUDA so that it is tested everywhere.
 *
 * A page is cached by (key, version): asked for again unchanged, it is a hit and nothing moves;
 * asked for at a newer version (a window page that grew), its old copy is replaced. Slots in a
 * step's working set are pinned (a count, so two sets may share a page) and never evicted;
 * unpinned slots that hold valid pages are the cache, evicted least recently used first.
 *
 * One owner thread (the one that enqueues the GPU work); no locking.
 */
#ifndef ICE_TIERS_HBM_CACHE_H
#define ICE_TIERS_HBM_CACHE_H

#include <stdint.h>

/* Same fields as the page store's key (tiers/store.h struct store_key). */
struct hbm_key {
	uint64_t seq;
	uint32_t layer, head, page;
};

struct hbm_cache_stats {
	uint64_t hits;
	uint64_t misses;
	uint64_t evictions;
	uint64_t stale;  /* misses that replaced an older version of the same page */
	uint32_t pinned; /* slots pinned now */
	uint32_t cached; /* unpinned slots holding a valid page now */
};

struct hbm_cache;

/* nslots >= 1. -EINVAL, -ENOMEM. */
int hbm_cache_new(uint32_t nslots, struct hbm_cache **ret_cache);
void hbm_cache_free(struct hbm_cache *c);

/*
 * Finds or places (key, version) and pins its slot.
 *   1: hit, the slot already holds this version;
 *   0: miss, the slot (free, or the least recently used unpinned one, evicted) is now assigned
 *      to the page, which the caller must fill, or hbm_cache_invalidate it if the fill fails;
 *   -ENOSPC: every slot is pinned; -EINVAL: NULL arguments.
 */
int hbm_cache_get(struct hbm_cache *c, const struct hbm_key *key, uint64_t version,
		  uint32_t *ret_slot);
/* Drops one pin; at zero the slot joins the cache (valid) or the free list (invalid). A slot
 * that is not pinned is ignored. */
void hbm_cache_unpin(struct hbm_cache *c, uint32_t slot);
/* Forgets a slot's content (a failed fill, a dropped page). Pins are kept. */
void hbm_cache_invalidate(struct hbm_cache *c, uint32_t slot);
/* Invalidates every page of a sequence; returns how many. */
uint32_t hbm_cache_drop_seq(struct hbm_cache *c, uint64_t seq);
/* Invalidates everything (a lost GPU context). */
void hbm_cache_reset(struct hbm_cache *c);

void hbm_cache_get_stats(const struct hbm_cache *c, struct hbm_cache_stats *ret_stats);
uint32_t hbm_cache_nslots(const struct hbm_cache *c);

#endif
