/* Watermark placement over the store: see policy.h. */
#include "policy.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#define POLICY_CHUNK 256u

struct policy {
	struct store *s;
	unsigned fast, slow;
	uint64_t high_slots, low_slots, fast_slots;
	int promote;
	pthread_mutex_t lock;
	struct store_key *keys; /* workspace: up to fast_slots keys */
	uint64_t demoted, demoted_clean, promoted, direct_slow, balances;
	/* The tier past slow (policy_config.colder), and slow's watermarks for it. */
	int has_colder;
	unsigned colder;
	uint64_t slow_high, slow_low, cascaded;
	struct store_key ckeys[POLICY_CHUNK];
};

int policy_new(struct store *s, const struct policy_config *cfg, struct policy **ret_policy)
{
	struct policy *p;
	double high, low;

	if (!s || !cfg || !ret_policy || cfg->fast >= store_ntiers(s) ||
	    cfg->slow >= store_ntiers(s) || cfg->fast == cfg->slow)
		return -EINVAL;
	high = cfg->high > 0 ? cfg->high : 0.90;
	low = cfg->low > 0 ? cfg->low : 0.75;
	if (high > 1 || low > high)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->s = s;
	p->fast = cfg->fast;
	p->slow = cfg->slow;
	p->fast_slots = store_tier(s, cfg->fast)->nslots;
	p->high_slots = (uint64_t)(high * (double)p->fast_slots);
	p->low_slots = (uint64_t)(low * (double)p->fast_slots);
	p->promote = !cfg->no_promote;
	if (cfg->colder) {
		uint64_t ss = store_tier(s, cfg->slow)->nslots;

		if (cfg->colder >= store_ntiers(s) || cfg->colder == cfg->fast ||
		    cfg->colder == cfg->slow) {
			free(p);
			return -EINVAL;
		}
		p->has_colder = 1;
		p->colder = cfg->colder;
		p->slow_high = (uint64_t)(high * (double)ss);
		p->slow_low = (uint64_t)(low * (double)ss);
	}
	p->keys = calloc(p->fast_slots, sizeof(*p->keys));
	if (!p->keys) {
		free(p);
		return -ENOMEM;
	}
	pthread_mutex_init(&p->lock, NULL);
	*ret_policy = p;
	return 0;
}

void policy_free(struct policy *p)
{
	if (!p)
		return;
	pthread_mutex_destroy(&p->lock);
	free(p->keys);
	free(p);
}

/* Lock held: make room for k more slow slots below its high watermark by passing its coldest
 * pages on to the colder tier (clean copies first: they are just dropped). Best effort: a colder
 * tier that is full or down leaves slow as it is, and the demotion into slow then finds it
 * full. */
static void cascade_locked(struct policy *p, uint64_t k)
{
	struct tier *st = store_tier(p->s, p->slow);
	uint64_t used = tier_used_slots(st), target, now, want;
	int pass, n;

	if (!p->has_colder || used + k <= p->slow_high)
		return;
	target = p->slow_high > k ? p->slow_high - k : 0;
	if (target > p->slow_low)
		target = p->slow_low;
	for (pass = 2; pass >= 1; pass--) {
		while (used > target) {
			want = used - target < POLICY_CHUNK ? used - target : POLICY_CHUNK;
			n = store_coldest(p->s, p->slow, pass, p->ckeys, (unsigned)want);
			if (n <= 0)
				break;
			if (pass == 2)
				store_evict_copy(p->s, p->ckeys, (unsigned)n, p->slow, NULL);
			else
				store_migrate(p->s, p->ckeys, (unsigned)n, p->colder, 0, NULL);
			now = tier_used_slots(st);
			if (now >= used)
				break; /* nothing moved: colder full, down, or over quota */
			if (pass == 1)
				p->cascaded += used - now;
			used = now;
		}
	}
}

/* Lock held. Clean copies go first (free), then the coldest sole copies are written out. A
 * page the slow tier will not take (its account is at its quota there: -EDQUOT) stays, and the
 * next coldest goes instead. */
static int demote_locked(struct policy *p, uint64_t target)
{
	struct tier *ft = store_tier(p->s, p->fast);
	uint64_t used = tier_used_slots(ft), now, k;
	int n, r, done = 0, off;

	if (used <= target)
		return 0;
	p->balances++;
	/* Pass 0: drop fast copies that have a clean copy in a slower tier (no I/O). */
	k = used - target;
	n = store_coldest(p->s, p->fast, 2, p->keys,
			  (unsigned)(k < p->fast_slots ? k : p->fast_slots));
	if (n > 0) {
		store_evict_copy(p->s, p->keys, (unsigned)n, p->fast, NULL);
		now = tier_used_slots(ft);
		k = used > now ? used - now : 0;
		p->demoted_clean += k;
		p->demoted += k;
		done += (int)k;
		used = now;
	}
	if (used <= target)
		return done;
	/* Pass 1: write the coldest sole copies out, as many at a time as still needed. */
	n = store_coldest(p->s, p->fast, 1, p->keys, (unsigned)p->fast_slots);
	for (off = 0; off < n && used > target; off += (int)k) {
		k = used - target < (uint64_t)(n - off) ? used - target : (uint64_t)(n - off);
		cascade_locked(p, k);
		r = store_migrate(p->s, p->keys + off, (unsigned)k, p->slow, 0, NULL);
		if (r < 0 && r != -ENOSPC && r != -ENOENT && r != -EDQUOT)
			return r;
		now = tier_used_slots(ft);
		p->demoted += used > now ? used - now : 0;
		done += (int)(used > now ? used - now : 0);
		used = now;
		if (r == -ENOSPC && tier_free_slots(store_tier(p->s, p->slow)) == 0)
			break; /* the slow tier is full: nothing more can go */
	}
	return used > target ? -ENOSPC : done;
}

int policy_demote_to(struct policy *p, uint64_t target)
{
	int r;

	if (!p)
		return -EINVAL;
	pthread_mutex_lock(&p->lock);
	r = demote_locked(p, target);
	pthread_mutex_unlock(&p->lock);
	return r;
}

int policy_balance(struct policy *p)
{
	struct tier *ft;
	int r = 0;

	if (!p)
		return -EINVAL;
	ft = store_tier(p->s, p->fast);
	pthread_mutex_lock(&p->lock);
	if (tier_used_slots(ft) > p->high_slots)
		r = demote_locked(p, p->low_slots);
	pthread_mutex_unlock(&p->lock);
	return r;
}

/* Lock held: make room for k more fast slots without passing the high watermark. */
static void make_room_locked(struct policy *p, unsigned k)
{
	struct tier *ft = store_tier(p->s, p->fast);
	uint64_t target;

	if (tier_used_slots(ft) + k <= p->high_slots)
		return;
	target = p->high_slots > k ? p->high_slots - k : 0;
	if (target > p->low_slots)
		target = p->low_slots;
	demote_locked(p, target); /* a full slow tier leaves fewer free; puts then see -ENOSPC */
}

/* Lock held: what slow refused of a spill goes to colder (same rules as the spill to slow). */
static void spill_colder(struct policy *p, struct store_page *spill, unsigned ns,
			 struct store_resv *resv)
{
	struct store_page again[POLICY_CHUNK];
	unsigned map[POLICY_CHUNK], i, na = 0;

	for (i = 0; i < ns; i++) {
		if (spill[i].res == -ENOSPC || (!resv && spill[i].res == -EDQUOT)) {
			map[na] = i;
			again[na++] = spill[i];
		}
	}
	if (!na)
		return;
	if (resv)
		store_put_resv(p->s, again, na, p->colder, resv);
	else
		store_put(p->s, again, na, p->colder);
	for (i = 0; i < na; i++) {
		spill[map[i]].res = again[i].res;
		spill[map[i]].tier = again[i].tier;
	}
}

/*
 * Lock held: pages go to the fast tier, and those it refuses to the slow one. Without a
 * reservation the fast tier is first made room in, and a page over its owner's fast quota
 * spills too; with one (policy_reserve made the room), the reserved slots are drawn on.
 */
static int put_locked(struct policy *p, struct store_page *pages, unsigned n,
		      struct store_resv *resv)
{
	unsigned off;
	int first = 0;

	for (off = 0; off < n; off += POLICY_CHUNK) {
		struct store_page *pg = pages + off, spill[POLICY_CHUNK];
		unsigned k = n - off < POLICY_CHUNK ? n - off : POLICY_CHUNK, i, ns = 0,
			 map[POLICY_CHUNK];

		if (resv) {
			store_put_resv(p->s, pg, k, p->fast, resv);
		} else {
			make_room_locked(p, k);
			store_put(p->s, pg, k, p->fast);
		}
		for (i = 0; i < k; i++) {
			if (pg[i].res == -ENOSPC || (!resv && pg[i].res == -EDQUOT)) {
				map[ns] = i;
				spill[ns++] = pg[i];
			}
		}
		if (ns) {
			if (resv) {
				store_put_resv(p->s, spill, ns, p->slow, resv);
			} else {
				cascade_locked(p, ns);
				store_put(p->s, spill, ns, p->slow);
			}
			p->direct_slow += ns;
			if (p->has_colder)
				spill_colder(p, spill, ns, resv);
			for (i = 0; i < ns; i++) {
				pg[map[i]].res = spill[i].res;
				pg[map[i]].tier = spill[i].tier;
			}
		}
		for (i = 0; i < k; i++)
			if (pg[i].res < 0 && !first)
				first = pg[i].res;
	}
	return first;
}

int policy_put(struct policy *p, struct store_page *pages, unsigned n)
{
	int r;

	if (!p || (!pages && n))
		return -EINVAL;
	pthread_mutex_lock(&p->lock);
	r = put_locked(p, pages, n, NULL);
	pthread_mutex_unlock(&p->lock);
	return r;
}

int policy_reserve(struct policy *p, struct store_resv *resv, uint64_t n)
{
	unsigned order[3], t;
	uint64_t ffree;
	int r;

	if (!p || !resv)
		return -EINVAL;
	order[0] = p->fast;
	order[1] = p->slow;
	order[2] = p->colder;
	pthread_mutex_lock(&p->lock);
	make_room_locked(p, n > p->fast_slots ? (unsigned)p->fast_slots : (unsigned)n);
	ffree = tier_free_slots(store_tier(p->s, p->fast));
	if (n > ffree)
		cascade_locked(p, n - ffree);
	r = store_reserve(p->s, resv, order, p->has_colder ? 3 : 2, n);
	for (t = 0; r == 0 && t < store_ntiers(p->s); t++) {
		if (resv->n[t] && (r = tier_probe(store_tier(p->s, t))) < 0)
			store_unreserve(p->s, resv);
	}
	pthread_mutex_unlock(&p->lock);
	return r;
}

int policy_put_resv(struct policy *p, struct store_page *pages, unsigned n, struct store_resv *resv)
{
	int r;

	if (!p || (!pages && n) || !resv)
		return -EINVAL;
	pthread_mutex_lock(&p->lock);
	r = put_locked(p, pages, n, resv);
	pthread_mutex_unlock(&p->lock);
	return r;
}

int policy_get(struct policy *p, struct store_page *pages, unsigned n)
{
	unsigned off;
	int first;

	if (!p || (!pages && n))
		return -EINVAL;
	first = store_get(p->s, pages, n);
	if (!p->promote)
		return first;
	pthread_mutex_lock(&p->lock);
	for (off = 0; off < n; off += POLICY_CHUNK) {
		struct store_page up[POLICY_CHUNK];
		unsigned k = n - off < POLICY_CHUNK ? n - off : POLICY_CHUNK, i, nu = 0;

		for (i = 0; i < k; i++)
			if (pages[off + i].res == 0 &&
			    (pages[off + i].tier == (int)p->slow ||
			     (p->has_colder && pages[off + i].tier == (int)p->colder)))
				up[nu++] = pages[off + i];
		if (!nu)
			continue;
		make_room_locked(p, nu);
		/* Promotion is best effort: the caller already has its data. */
		store_install(p->s, up, nu, p->fast);
		for (i = 0; i < nu; i++)
			if (up[i].res == 0)
				p->promoted++;
	}
	pthread_mutex_unlock(&p->lock);
	return first;
}

void policy_stats(struct policy *p, struct stats_buf *sb)
{
	pthread_mutex_lock(&p->lock);
	stats_put_u64(sb, "policy", "high_slots", p->high_slots);
	stats_put_u64(sb, "policy", "low_slots", p->low_slots);
	stats_put_u64(sb, "policy", "demoted", p->demoted);
	stats_put_u64(sb, "policy", "demoted_clean", p->demoted_clean);
	stats_put_u64(sb, "policy", "promoted", p->promoted);
	stats_put_u64(sb, "policy", "direct_slow", p->direct_slow);
	stats_put_u64(sb, "policy", "balances", p->balances);
	stats_put_u64(sb, "policy", "workspace_bytes", p->fast_slots * sizeof(*p->keys));
	stats_put_u64(sb, "policy", "cascaded", p->cascaded);
	pthread_mutex_unlock(&p->lock);
}
