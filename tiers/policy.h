/*
 * Placement policy over a page store: decides what moves, the store moves it.
 *
 * Two tiers matter here: `fast` (dram) and `slow` (nvme). Watermarks are fractions of the
 * fast tier's slots. Whenever a put or a promotion would take the fast tier past `high`, the
 * coldest pages there (lowest decayed heat from store_touch, older first) are demoted until it
 * is at `low` (or lower, to make room for the incoming batch):
 *   - pages that already have a clean copy in a slower tier just lose their fast copy (no I/O);
 *   - the others are written to `slow` once, then their fast slot is freed.
 * A page read from the slow tier through policy_get is promoted (a fast copy is added, the
 * slow copy stays as a clean copy, so demoting it again is free). Puts go to the fast tier;
 * when it cannot take them (after demotion), to the slow tier. Per-account quotas (store.h)
 * hold throughout: a page whose account is at its quota in the slow tier is not demoted, one at
 * its quota in the fast tier is not promoted.
 *
 * With a `colder` tier (policy_config) the same happens one step further down: slow sheds its
 * coldest pages there before a demotion would fill it.
 *
 * Thread-safety: all calls are safe from any thread; placement decisions are serialised by a
 * policy mutex, data moves by the store.
 */
#ifndef ICE_TIERS_POLICY_H
#define ICE_TIERS_POLICY_H

#include "stats.h"
#include "store.h"

struct policy_config {
	unsigned fast;  /* store tier index that takes puts and promotions */
	unsigned slow;  /* store tier index cold pages go to */
	double high;    /* fraction of fast slots; 0 = 0.90 */
	double low;     /* fraction of fast slots; 0 = 0.75; low <= high */
	int no_promote; /* 1: policy_get does not promote */
	/* 0: none. Else the store tier past slow (a remote tier past NVMe): before slow passes
	 * the same high watermark (of its own slots), its coldest pages move on there, down to
	 * low; puts slow cannot take go there too, and pages read from it are promoted into fast
	 * like slow's. */
	unsigned colder;
};

struct policy;

int policy_new(struct store *s, const struct policy_config *cfg, struct policy **ret_policy);
void policy_free(struct policy *p);

/* store_put into fast (demoting first when needed); pages fast cannot take (full, or their
 * account at its quota there) go to slow. */
int policy_put(struct policy *p, struct store_page *pages, unsigned n);
/*
 * Sets n slots aside for resv->acct (store_reserve): demotes first so the fast tier has room,
 * then takes the fast tier's free slots and the slow tier's (then colder's) for the rest.
 * -ENOSPC/-EDQUOT as store_reserve, nothing held then; a tier that would give slots and fails
 * its probe (tier_probe: a remote server down) fails the reservation with its -errno, so the
 * caller learns before it writes anything.
 */
int policy_reserve(struct policy *p, struct store_resv *resv, uint64_t n);
/* policy_put from a reservation: into fast while resv holds fast slots, the rest into slow. */
int policy_put_resv(struct policy *p, struct store_page *pages, unsigned n,
		    struct store_resv *resv);
/* store_get, then promotion of the pages served from slow (unless no_promote). */
int policy_get(struct policy *p, struct store_page *pages, unsigned n);
/* Demotes down to the low watermark if above high; returns pages demoted or -errno. */
int policy_balance(struct policy *p);
/* Demotes until at most `target` fast slots are used; returns pages demoted or -errno
 * (-ENOSPC when the slow tier is full and nothing more can go). */
int policy_demote_to(struct policy *p, uint64_t target);

/* policy.{high_slots,low_slots,demoted,demoted_clean,promoted,direct_slow,balances,
 * workspace_bytes,cascaded} (cascaded: pages slow passed on to colder) */
void policy_stats(struct policy *p, struct stats_buf *sb);

#endif
