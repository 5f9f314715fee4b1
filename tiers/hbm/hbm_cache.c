/* HBM slot bookkeeping: a chained hash from (key, version) to slot, a pin count per slot, an
 * LRU list of unpinned valid slots and a free stack. All O(1) per page except drop_seq. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hbm_cache.h"

#define NIL UINT32_MAX

struct slot_meta {
	struct hbm_key key;
	uint64_t version;
	uint32_t pins;
	uint32_t hnext;      /* hash chain */
	uint32_t prev, next; /* LRU list (unpinned and valid) */
	uint8_t valid;       /* holds key@version (or is being filled with it) */
	uint8_t in_lru;
};

struct hbm_cache {
	uint32_t nslots, nbuckets;
	uint32_t *buckets;
	struct slot_meta *m;
	uint32_t *free_stack;
	uint32_t nfree;
	uint32_t lru_head, lru_tail; /* head = most recent */
	struct hbm_cache_stats st;
};

static uint32_t key_hash(const struct hbm_cache *c, const struct hbm_key *k)
{
	uint64_t h = k->seq * 0x9e3779b97f4a7c15ull;

	h ^= ((uint64_t)k->layer << 40) ^ ((uint64_t)k->head << 24) ^ k->page;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 31;
	return (uint32_t)h & (c->nbuckets - 1);
}

static int key_eq(const struct hbm_key *a, const struct hbm_key *b)
{
	return a->seq == b->seq && a->layer == b->layer && a->head == b->head && a->page == b->page;
}

int hbm_cache_new(uint32_t nslots, struct hbm_cache **ret_cache)
{
	struct hbm_cache *c;

	if (!nslots || nslots > (1u << 30) || !ret_cache)
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->nslots = nslots;
	c->nbuckets = 1;
	while (c->nbuckets < 2 * nslots)
		c->nbuckets <<= 1;
	c->buckets = malloc(c->nbuckets * sizeof(*c->buckets));
	c->m = calloc(nslots, sizeof(*c->m));
	c->free_stack = malloc(nslots * sizeof(*c->free_stack));
	if (!c->buckets || !c->m || !c->free_stack) {
		hbm_cache_free(c);
		return -ENOMEM;
	}
	hbm_cache_reset(c);
	*ret_cache = c;
	return 0;
}

void hbm_cache_free(struct hbm_cache *c)
{
	if (!c)
		return;
	free(c->buckets);
	free(c->m);
	free(c->free_stack);
	free(c);
}

uint32_t hbm_cache_nslots(const struct hbm_cache *c)
{
	return c ? c->nslots : 0;
}

static void lru_remove(struct hbm_cache *c, uint32_t s)
{
	struct slot_meta *m = &c->m[s];

	if (!m->in_lru)
		return;
	if (m->prev != NIL)
		c->m[m->prev].next = m->next;
	else
		c->lru_head = m->next;
	if (m->next != NIL)
		c->m[m->next].prev = m->prev;
	else
		c->lru_tail = m->prev;
	m->in_lru = 0;
	c->st.cached--;
}

static void lru_push_front(struct hbm_cache *c, uint32_t s)
{
	struct slot_meta *m = &c->m[s];

	m->prev = NIL;
	m->next = c->lru_head;
	if (c->lru_head != NIL)
		c->m[c->lru_head].prev = s;
	else
		c->lru_tail = s;
	c->lru_head = s;
	m->in_lru = 1;
	c->st.cached++;
}

static uint32_t hash_find(const struct hbm_cache *c, const struct hbm_key *k)
{
	uint32_t s;

	for (s = c->buckets[key_hash(c, k)]; s != NIL; s = c->m[s].hnext)
		if (key_eq(&c->m[s].key, k))
			return s;
	return NIL;
}

static void hash_insert(struct hbm_cache *c, uint32_t s)
{
	uint32_t b = key_hash(c, &c->m[s].key);

	c->m[s].hnext = c->buckets[b];
	c->buckets[b] = s;
}

static void hash_remove(struct hbm_cache *c, uint32_t s)
{
	uint32_t *p = &c->buckets[key_hash(c, &c->m[s].key)];

	while (*p != NIL && *p != s)
		p = &c->m[*p].hnext;
	if (*p == s)
		*p = c->m[s].hnext;
	c->m[s].hnext = NIL;
}

static void assign(struct hbm_cache *c, uint32_t s, const struct hbm_key *k, uint64_t version)
{
	c->m[s].key = *k;
	c->m[s].version = version;
	c->m[s].valid = 1;
	c->m[s].pins = 1;
	c->st.pinned++;
	hash_insert(c, s);
	c->st.misses++;
}

int hbm_cache_get(struct hbm_cache *c, const struct hbm_key *key, uint64_t version,
		  uint32_t *ret_slot)
{
	uint32_t s;

	if (!c || !key || !ret_slot)
		return -EINVAL;
	s = hash_find(c, key);
	if (s != NIL) {
		struct slot_meta *m = &c->m[s];

		if (m->version == version) {
			if (!m->pins) {
				lru_remove(c, s);
				c->st.pinned++;
			}
			m->pins++;
			c->st.hits++;
			*ret_slot = s;
			return 1;
		}
		/* An older (or newer) copy: it can never be a hit again. */
		hash_remove(c, s);
		m->valid = 0;
		c->st.stale++;
		if (!m->pins) {
			lru_remove(c, s);
			assign(c, s, key, version);
			*ret_slot = s;
			return 0;
		}
		/* Pinned by a working set still in use: it goes to the free list at its unpin. */
	}
	if (c->nfree) {
		s = c->free_stack[--c->nfree];
	} else if (c->lru_tail != NIL) {
		s = c->lru_tail;
		lru_remove(c, s);
		hash_remove(c, s);
		c->m[s].valid = 0;
		c->st.evictions++;
	} else {
		return -ENOSPC;
	}
	assign(c, s, key, version);
	*ret_slot = s;
	return 0;
}

void hbm_cache_unpin(struct hbm_cache *c, uint32_t slot)
{
	struct slot_meta *m;

	if (!c || slot >= c->nslots || !c->m[slot].pins)
		return;
	m = &c->m[slot];
	if (--m->pins)
		return;
	c->st.pinned--;
	if (m->valid)
		lru_push_front(c, slot);
	else
		c->free_stack[c->nfree++] = slot;
}

void hbm_cache_invalidate(struct hbm_cache *c, uint32_t slot)
{
	struct slot_meta *m;

	if (!c || slot >= c->nslots)
		return;
	m = &c->m[slot];
	if (!m->valid)
		return;
	hash_remove(c, slot);
	m->valid = 0;
	if (!m->pins) {
		lru_remove(c, slot);
		c->free_stack[c->nfree++] = slot;
	}
}

uint32_t hbm_cache_drop_seq(struct hbm_cache *c, uint64_t seq)
{
	uint32_t s, n = 0;

	if (!c)
		return 0;
	for (s = 0; s < c->nslots; s++)
		if (c->m[s].valid && c->m[s].key.seq == seq) {
			hbm_cache_invalidate(c, s);
			n++;
		}
	return n;
}

void hbm_cache_reset(struct hbm_cache *c)
{
	uint32_t i;

	if (!c)
		return;
	for (i = 0; i < c->nbuckets; i++)
		c->buckets[i] = NIL;
	c->nfree = 0;
	/* Pins survive a reset (working sets still hold them); everything else is free. */
	for (i = c->nslots; i-- > 0;) {
		struct slot_meta *m = &c->m[i];

		m->valid = 0;
		m->in_lru = 0;
		m->hnext = NIL;
		m->prev = m->next = NIL;
		if (!m->pins)
			c->free_stack[c->nfree++] = i;
	}
	c->lru_head = c->lru_tail = NIL;
	c->st.cached = 0;
}

void hbm_cache_get_stats(const struct hbm_cache *c, struct hbm_cache_stats *ret_stats)
{
	if (c && ret_stats)
		*ret_stats = c->st;
}
