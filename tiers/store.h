/*
 * The page store: every KV page lives here, in one or more tiers, with its checksum.
 *
 * A page is the K block then the V block of up to 16 tokens of one (sequence, layer, KV head):
 * `len` = 2 × fill × bytes-per-token bytes, stored in one fixed-size slot (slot_size, chosen at
 * open, a multiple of 4 KiB). The store keeps, per page: fill, len, version, a CRC-32C over
 * (key, version, fill, len, payload), the residency set (which tiers hold a valid copy) and the
 * slot in each. The store is mechanism only: it puts, gets, migrates and drops what it is told
 * to; tiers/policy.h decides what moves where (watermarks, heat).
 *
 * Tiers are given at open, fastest first ({dram} or {dram, nvme}: what the engine opens); a
 * tier's index in that array is how the calls below name it. The store borrows the tiers:
 * close the store before the tiers.
 *
 * Batch calls take arrays and fill a per-entry result; they return 0 when every entry
 * succeeded, otherwise the first failing entry's -errno (the other entries are still done).
 * Data-path calls do not allocate.
 *
 * Checksums: a get verifies every page it returns, from any tier; on mismatch the entry gets
 * -EBADMSG, the caller's buffer is zeroed (never stale or corrupt data) and the tier's
 * csum_failures counter goes up. A migration verifies the source before writing the copy.
 *
 * Accounts and quotas: every page is charged to an account (store_page.acct at its first put;
 * the engine uses one per client), and the store counts per account the slots its pages hold in
 * each tier, at every put, migration, install, eviction and drop, under the same lock that
 * changes residency, so the counts are exact without anyone asking which tier a page is in.
 * With a per-tier quota (store_set_quota), a new slot that would take an account past it is
 * refused with -EDQUOT, like a full tier's -ENOSPC. Account 0 is counted but never limited.
 *
 * Reservations (struct store_resv): store_reserve sets free slots aside for one account, all or
 * nothing, within its quotas; store_put_resv draws on them, so a job that reserved what it needs
 * cannot find the tiers full half-way, whatever other callers do meanwhile; slots its rewrites
 * release go back into the reservation; store_unreserve returns the rest.
 *
 * Thread-safety: every call is safe from any thread. Gets run concurrently with each other;
 * puts, migrations, drops and touches are serialised against everything else (a read-write
 * lock), so a page is never read while its slot is rewritten or freed.
 */
#ifndef ICE_TIERS_STORE_H
#define ICE_TIERS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "stats.h"
#include "tier.h"

/* page = the index's page id for that (seq, layer, kv head). */
struct store_key {
	uint64_t seq;
	uint32_t layer, head, page;
};

struct store_config {
	/* Bytes per page slot; every tier must use the same slot_size. */
	size_t slot_size;
	/* Pages the store can track (metadata is sized once at open); 0 = the sum of the tiers'
	 * slots (every page holds at least one slot). */
	uint64_t max_pages;
	/* Heat decay per store_touch step, in (0, 1]; 0 = 0.9. */
	double heat_decay;
	/* Accounts whose slots are counted: 0..naccts-1 (0: no accounting, every acct must be 0). */
	uint32_t naccts;
};

/*
 * One page in a batch.
 *   put: key, buf (len bytes of payload, K then V), len (<= slot_size), fill, version in.
 *   get: key, buf in, len in = bytes buf can hold; out: len, fill, version, tier (index it
 *        was read from). A page longer than the buffer gets -EMSGSIZE.
 * A TIER_ALIGN-aligned buffer that holds round_up(len, 4096) bytes lets the nvme tier move
 * the page in place; any other buffer is staged through the tier's own memory.
 */
struct store_page {
	struct store_key key;
	void *buf;
	uint32_t len;
	uint32_t fill;
	uint64_t version;
	int res;
	int tier;
	/* put: the account a new page is charged to (an existing page keeps its own). */
	uint32_t acct;
};

/* Slots set aside for one account's puts: per tier, how many this reservation holds. Caller
 * memory; set acct and zero the counts before store_reserve. */
struct store_resv {
	uint32_t acct;
	uint64_t n[TIER_MAX];
};

/* What the store knows about one page (store_lookup). */
struct store_page_info {
	uint32_t len, fill;
	uint64_t version;
	uint32_t crc;
	unsigned resident;       /* bit i set: tier i holds a valid copy */
	uint64_t slot[TIER_MAX]; /* valid where resident */
	double heat;             /* decayed to the current step */
	uint32_t acct;
};

struct store;

/* Host bytes the store keeps per page it holds (its entry and its place in the cold list):
 * what an owner of pages accounts for them besides their slots. */
size_t store_page_meta_bytes(void);

int store_open(const struct store_config *cfg, struct tier *const *tiers, unsigned ntiers,
	       struct store **ret_store);
/* Frees every slot the store holds in its tiers; NULL is fine. */
void store_close(struct store *s);

unsigned store_ntiers(const struct store *s);
struct tier *store_tier(const struct store *s, unsigned idx);
size_t store_slot_size(const struct store *s);
/* Pages currently held. */
uint64_t store_npages(struct store *s);

/*
 * Writes new pages, or new contents of existing pages (a new version), into tier `tier`.
 * The new copy is written before the old copies are released, so a failed put (-ENOSPC when
 * the tier is full, -EDQUOT past the page's account's quota there, -EIO) leaves the previous
 * version readable. All other copies of a replaced page are dropped (they are stale). New pages
 * start with heat 1.
 */
int store_put(struct store *s, struct store_page *pages, unsigned n, unsigned tier);

/*
 * Sets n more slots aside for resv->acct, taken from tiers[0..ntiers) in that order (as many
 * as each has free and the account's quota there allows), all or nothing: -EDQUOT when the
 * account's quotas are what falls short, -ENOSPC when the tiers are full. Adds to resv->n.
 */
int store_reserve(struct store *s, struct store_resv *resv, const unsigned *tiers, unsigned ntiers,
		  uint64_t n);
/* Returns every slot resv still holds; resv->n becomes zero. NULL is fine. */
void store_unreserve(struct store *s, struct store_resv *resv);
/*
 * store_put, with the new slots in `tier` taken from resv (pages beyond what it holds there get
 * -ENOSPC, so the caller can put them into another tier it holds slots in); copies the put
 * releases go back into resv. Every page must be resv->acct's (-EINVAL otherwise). No quota
 * check: store_reserve made it.
 */
int store_put_resv(struct store *s, struct store_page *pages, unsigned n, unsigned tier,
		   struct store_resv *resv);

/* Per-account limit of slots in a tier (0: none). Does not evict anything already over it. */
int store_set_quota(struct store *s, unsigned tier, uint64_t slots);
/* Slots account acct's pages hold in each tier (ret_slots[TIER_MAX]); -EINVAL past naccts. */
int store_acct_slots(struct store *s, uint32_t acct, uint64_t *ret_slots);

/* Reads pages from the fastest tier holding each; checksum verified (see above). -ENOENT for
 * an unknown key. */
int store_get(struct store *s, struct store_page *pages, unsigned n);

/* Keep the copies in other tiers (copy instead of move). */
#define STORE_MIGRATE_COPY (1u << 0)

/*
 * Makes each page resident in tier `dst`. Without STORE_MIGRATE_COPY the page then lives only
 * in `dst` (a move: slots elsewhere are freed after the new copy is written); with it, other
 * copies stay (a clean copy left in a slower tier makes a later demotion free). A page already
 * in `dst` is left as it is (plus the release of other copies for a move). res_out (n entries,
 * one result per key, written whether or not the call succeeds) may be NULL.
 */
int store_migrate(struct store *s, const struct store_key *keys, unsigned n, unsigned dst,
		  unsigned flags, int *res_out);

/*
 * Adds a copy in tier `tier` of pages the caller holds verified contents of (typically just
 * returned by store_get from a slower tier): the payload in buf must match the page's current
 * version and checksum (-ESTALE otherwise) and the other copies stay. This is promotion
 * without reading the slower tier a second time. A page already in `tier` is left alone.
 */
int store_install(struct store *s, struct store_page *pages, unsigned n, unsigned tier);

/* Drops one copy (the one in `tier`) of pages that have a copy elsewhere; -EBUSY for a page
 * whose only copy is there. Used by the policy to demote clean pages without any I/O.
 * res_out as for store_migrate. */
int store_evict_copy(struct store *s, const struct store_key *keys, unsigned n, unsigned tier,
		     int *res_out);

/* Drops every page of a sequence; returns how many were dropped. */
int store_drop_seq(struct store *s, uint64_t seq);

/*
 * Heat hook (the index calls it with the pages selected at a step): advances the step, decays
 * every page's heat by heat_decay per step (lazily) and adds 1 to the listed pages. Unknown
 * keys are ignored. Returns how many pages were found.
 */
int store_touch(struct store *s, const struct store_key *keys, unsigned n);

/*
 * The coldest pages resident in `tier` (lowest decayed heat first, older first on ties), up
 * to max of them, into ret_keys; `only_sole` = 1 lists only pages whose only copy is there,
 * 2 only pages with a copy elsewhere, 0 both. Returns the count. O(pages) per call; the
 * workspace is allocated at open.
 */
int store_coldest(struct store *s, unsigned tier, int only_sole, struct store_key *ret_keys,
		  unsigned max);

/* 0 and *ret_info, or -ENOENT. */
int store_lookup(struct store *s, const struct store_key *key, struct store_page_info *ret_info);

/* store.{pages,max_pages,puts,gets,migrations,drops,csum_failures,step} then every tier's lines. */
void store_stats(struct store *s, struct stats_buf *sb);

/* The checksum a page of this key, version, fill and payload carries (exposed for tests). */
uint32_t store_page_crc(const struct store_key *key, uint64_t version, uint32_t fill,
			const void *buf, uint32_t len);

#endif
