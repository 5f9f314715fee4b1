/*
 * The page store: a fixed-size metadata table (hash of store_key -> entry), and batch moves
 * between tiers through their ops tables. See store.h for the contract.
 */
#include "store.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "crc32c.h"

#define NIL UINT32_MAX
/* Pages handled per internal batch: bounds the stack arrays of the data path. */
#define STORE_CHUNK 256u
/* Staging slots for moves between two tiers the CPU cannot address (none with dram + nvme: a
 * move then reads or writes the dram slot in place). */
#define STORE_STAGE 256u

struct store_ent {
	struct store_key key;
	uint32_t next; /* hash chain, or free list */
	uint32_t len;
	uint32_t fill;
	uint32_t crc;
	uint32_t heat_step;
	float heat;
	uint8_t resident;
	uint8_t live;
	uint16_t pad_;
	uint32_t acct;
	uint64_t version;
	uint64_t slot[TIER_MAX];
};

struct cold_ent {
	float heat;
	uint32_t step;
	uint32_t idx;
};

struct store {
	pthread_rwlock_t lock;
	size_t slot_size;
	unsigned ntiers;
	struct tier *tier[TIER_MAX];
	uint64_t max_pages;
	uint64_t npages;
	struct store_ent *ent;
	uint32_t *bucket;
	uint64_t bucket_mask;
	uint32_t free_head;
	uint32_t step;
	double decay;
	struct cold_ent *cold;
	uint8_t *stage;
	size_t stage_len;
	uint64_t puts, gets, migrations, drops, csum_failures, touches;
	/* Per account and tier (acct * TIER_MAX + tier): slots its pages hold, slots reserved for
	 * it. Changed only under the write lock, with the residency they count. */
	uint32_t naccts;
	uint64_t *held, *resvd;
	uint64_t quota[TIER_MAX];
};

/* Header hashed in front of the payload: ties a checksum to its page and version, so a
 * stale slot or a misdirected read fails the check even when its bytes are intact. */
struct crc_hdr {
	uint64_t seq;
	uint32_t layer, head, page, fill;
	uint64_t version;
	uint32_t len, zero;
};

uint32_t store_page_crc(const struct store_key *key, uint64_t version, uint32_t fill,
			const void *buf, uint32_t len)
{
	struct crc_hdr h = {
		.seq = key->seq,
		.layer = key->layer,
		.head = key->head,
		.page = key->page,
		.fill = fill,
		.version = version,
		.len = len,
		.zero = 0,
	};

	return crc32c(crc32c(0, &h, sizeof(h)), buf, len);
}

static uint64_t key_hash(const struct store_key *k)
{
	uint64_t x = k->seq * 0x9E3779B97F4A7C15ull;

	x ^= ((uint64_t)k->layer << 40) ^ ((uint64_t)k->head << 24) ^ k->page;
	x ^= x >> 31;
	x *= 0xBF58476D1CE4E5B9ull;
	x ^= x >> 29;
	return x;
}

static int key_eq(const struct store_key *a, const struct store_key *b)
{
	return a->seq == b->seq && a->layer == b->layer && a->head == b->head && a->page == b->page;
}

static uint32_t ent_find(struct store *s, const struct store_key *k)
{
	uint32_t i = s->bucket[key_hash(k) & s->bucket_mask];

	while (i != NIL && !key_eq(&s->ent[i].key, k))
		i = s->ent[i].next;
	return i;
}

static uint32_t ent_insert(struct store *s, const struct store_key *k)
{
	uint64_t b = key_hash(k) & s->bucket_mask;
	uint32_t i = s->free_head;

	if (i == NIL)
		return NIL;
	s->free_head = s->ent[i].next;
	memset(&s->ent[i], 0, sizeof(s->ent[i]));
	s->ent[i].key = *k;
	s->ent[i].live = 1;
	s->ent[i].next = s->bucket[b];
	s->bucket[b] = i;
	s->npages++;
	return i;
}

static uint64_t *acct_held(struct store *s, uint32_t acct, unsigned t)
{
	return s->naccts ? &s->held[(size_t)acct * TIER_MAX + t] : NULL;
}

/* Account acct may take one more slot in tier t outside a reservation. */
static int acct_room(const struct store *s, uint32_t acct, unsigned t)
{
	size_t i = (size_t)acct * TIER_MAX + t;

	return !acct || !s->quota[t] || acct >= s->naccts || s->held[i] + s->resvd[i] < s->quota[t];
}

/* A slot of tier t allocated for (+1) or given back by (-1) account acct: counted when it is
 * allocated, so the pages of one batch see each other's slots against the quota. */
static void acct_charge(struct store *s, uint32_t acct, unsigned t, int d)
{
	uint64_t *h = acct_held(s, acct, t);

	if (h)
		*h += (uint64_t)(int64_t)d;
}

/* A slot taken from resv in tier t (counts kept in step with the tier's). */
static void resv_take(struct store *s, struct store_resv *r, unsigned t)
{
	r->n[t]--;
	if (s->naccts)
		s->resvd[(size_t)r->acct * TIER_MAX + t]--;
}

static void resv_give(struct store *s, struct store_resv *r, unsigned t, uint64_t slot)
{
	tier_free_reserved(s->tier[t], &slot, 1);
	r->n[t]++;
	if (s->naccts)
		s->resvd[(size_t)r->acct * TIER_MAX + t]++;
}

/* Frees the entry's slots in every tier it is resident in but keep_mask; into resv when the
 * page is resv's account's (NULL: into the free pool). */
static void ent_release_slots(struct store *s, struct store_ent *e, unsigned keep_mask,
			      struct store_resv *resv)
{
	unsigned t;

	for (t = 0; t < s->ntiers; t++) {
		if (!(e->resident & (1u << t)) || (keep_mask & (1u << t)))
			continue;
		if (resv && resv->acct == e->acct)
			resv_give(s, resv, t, e->slot[t]);
		else
			tier_free(s->tier[t], &e->slot[t], 1);
		acct_charge(s, e->acct, t, -1);
	}
	e->resident &= (uint8_t)keep_mask;
}

static void ent_remove(struct store *s, uint32_t i)
{
	uint32_t *pp = &s->bucket[key_hash(&s->ent[i].key) & s->bucket_mask];

	while (*pp != i)
		pp = &s->ent[*pp].next;
	*pp = s->ent[i].next;
	s->ent[i].live = 0;
	s->ent[i].next = s->free_head;
	s->free_head = i;
	s->npages--;
}

static float ent_heat(const struct store *s, const struct store_ent *e)
{
	uint32_t dt = s->step - e->heat_step;

	if (dt == 0)
		return e->heat;
	return (float)(e->heat * pow(s->decay, (double)dt));
}

size_t store_page_meta_bytes(void)
{
	return sizeof(struct store_ent) + sizeof(struct cold_ent);
}

int store_open(const struct store_config *cfg, struct tier *const *tiers, unsigned ntiers,
	       struct store **ret_store)
{
	struct store *s;
	uint64_t max = 0, nb = 1, i;
	unsigned t;
	int r = -ENOMEM;

	if (!cfg || !tiers || !ret_store || ntiers == 0 || ntiers > TIER_MAX)
		return -EINVAL;
	if (!cfg->slot_size || cfg->slot_size % TIER_ALIGN)
		return -EINVAL;
	if (cfg->heat_decay < 0 || cfg->heat_decay > 1 || cfg->naccts > NIL)
		return -EINVAL;
	for (t = 0; t < ntiers; t++) {
		if (!tiers[t] || tiers[t]->slot_size != cfg->slot_size)
			return -EINVAL;
		max += tiers[t]->nslots;
	}
	if (cfg->max_pages)
		max = cfg->max_pages;
	if (max >= NIL)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->slot_size = cfg->slot_size;
	s->ntiers = ntiers;
	for (t = 0; t < ntiers; t++)
		s->tier[t] = tiers[t];
	s->max_pages = max;
	s->decay = cfg->heat_decay > 0 ? cfg->heat_decay : 0.9;
	while (nb < max)
		nb <<= 1;
	s->bucket_mask = nb - 1;
	s->ent = calloc(max, sizeof(*s->ent));
	s->bucket = malloc(nb * sizeof(*s->bucket));
	s->cold = calloc(max, sizeof(*s->cold));
	s->naccts = cfg->naccts;
	if (s->naccts) {
		s->held = calloc((size_t)s->naccts * TIER_MAX, sizeof(*s->held));
		s->resvd = calloc((size_t)s->naccts * TIER_MAX, sizeof(*s->resvd));
	}
	if (!s->ent || !s->bucket || !s->cold || (s->naccts && (!s->held || !s->resvd)))
		goto out_free;
	for (i = 0; i < nb; i++)
		s->bucket[i] = NIL;
	for (i = 0; i < max; i++)
		s->ent[i].next = i + 1 < max ? (uint32_t)(i + 1) : NIL;
	s->free_head = 0;
	s->stage_len = STORE_STAGE * s->slot_size;
	s->stage = mmap(NULL, s->stage_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			0);
	if (s->stage == MAP_FAILED) {
		s->stage = NULL;
		goto out_free;
	}
	/* Let slower tiers move pages straight to and from the CPU-addressable ones. */
	for (t = 0; t < ntiers; t++) {
		unsigned u;

		if (!tiers[t]->ops->register_mem)
			continue;
		for (u = 0; u < ntiers; u++) {
			void *base = u != t ? tier_slot_addr(tiers[u], 0) : NULL;

			if (base)
				tiers[t]->ops->register_mem(tiers[t], base,
							    tiers[u]->nslots * tiers[u]->slot_size);
		}
		tiers[t]->ops->register_mem(tiers[t], s->stage, s->stage_len);
	}
	pthread_rwlock_init(&s->lock, NULL);
	*ret_store = s;
	return 0;
out_free:
	free(s->held);
	free(s->resvd);
	free(s->cold);
	free(s->bucket);
	free(s->ent);
	free(s);
	return r;
}

void store_close(struct store *s)
{
	uint64_t i;

	if (!s)
		return;
	for (i = 0; i < s->max_pages; i++)
		if (s->ent[i].live)
			ent_release_slots(s, &s->ent[i], 0, NULL);
	pthread_rwlock_destroy(&s->lock);
	munmap(s->stage, s->stage_len);
	free(s->held);
	free(s->resvd);
	free(s->cold);
	free(s->bucket);
	free(s->ent);
	free(s);
}

unsigned store_ntiers(const struct store *s)
{
	return s->ntiers;
}

struct tier *store_tier(const struct store *s, unsigned idx)
{
	return idx < s->ntiers ? s->tier[idx] : NULL;
}

size_t store_slot_size(const struct store *s)
{
	return s->slot_size;
}

uint64_t store_npages(struct store *s)
{
	uint64_t n;

	pthread_rwlock_rdlock(&s->lock);
	n = s->npages;
	pthread_rwlock_unlock(&s->lock);
	return n;
}

static void set_res(int *first, int *res, int v)
{
	*res = v;
	if (v < 0 && *first == 0)
		*first = v;
}

/* One chunk of a put (write lock held); new slots from resv when it is not NULL. */
static int put_chunk(struct store *s, struct store_page *pg, unsigned n, unsigned ti,
		     struct store_resv *resv)
{
	struct tier *t = s->tier[ti];
	struct tier_io io[STORE_CHUNK];
	uint32_t crc[STORE_CHUNK], acct[STORE_CHUNK];
	unsigned map[STORE_CHUNK], nio = 0, i;
	uint8_t inplace[STORE_CHUNK];
	int first = 0, host = t->ops->slot_addr != NULL;

	for (i = 0; i < n; i++) {
		struct store_page *p = &pg[i];
		uint32_t e = ent_find(s, &p->key), a;
		int here = e != NIL && (s->ent[e].resident & (1u << ti));
		uint64_t slot;
		int r;

		p->res = 0;
		p->tier = -1;
		inplace[i] = 0;
		a = acct[i] = e != NIL ? s->ent[e].acct : p->acct;
		if (!p->buf || p->len == 0 || p->len > s->slot_size ||
		    (s->naccts ? a >= s->naccts : a != 0) || (resv && a != resv->acct)) {
			set_res(&first, &p->res, -EINVAL);
			continue;
		}
		if (resv) {
			r = resv->n[ti] ? tier_alloc_reserved(t, 1, &slot) : -ENOSPC;
			if (r == 0)
				resv_take(s, resv, ti);
		} else {
			/* A new version of a page already here replaces its copy: no quota needed. */
			r = here || acct_room(s, a, ti) ? tier_alloc(t, 1, &slot) : -EDQUOT;
		}
		if (r == 0)
			acct_charge(s, a, ti, 1);
		if (r < 0 && host && here) {
			/* A full memory tier can still take a new version over the old copy:
			 * a CPU copy cannot fail half-way. */
			slot = s->ent[e].slot[ti];
			inplace[i] = 1;
			r = 0;
		}
		if (r < 0) {
			set_res(&first, &p->res, r);
			continue;
		}
		crc[i] = store_page_crc(&p->key, p->version, p->fill, p->buf, p->len);
		io[nio] = (struct tier_io){
			.slot = slot, .buf = p->buf, .len = p->len, .cap = p->len
		};
		map[nio++] = i;
	}
	tier_write(t, io, nio);
	for (i = 0; i < nio; i++) {
		struct store_page *p = &pg[map[i]];
		unsigned keep = 0;
		uint32_t e = NIL;
		int r = io[i].res;

		/* Look up at commit time so a key repeated in one batch ends as the last write. */
		if (r == 0) {
			e = ent_find(s, &p->key);
			if (e == NIL) {
				e = ent_insert(s, &p->key);
				if (e == NIL) {
					r = -ENOSPC;
				} else {
					s->ent[e].acct = acct[map[i]];
					s->ent[e].heat = 1;
					s->ent[e].heat_step = s->step;
				}
			}
		}
		if (r < 0) {
			/* an in-place write's slot is still the old copy's */
			if (!inplace[map[i]]) {
				acct_charge(s, acct[map[i]], ti, -1);
				if (resv)
					resv_give(s, resv, ti, io[i].slot);
				else
					tier_free(t, &io[i].slot, 1);
			}
			set_res(&first, &p->res, r);
			continue;
		}
		if ((s->ent[e].resident & (1u << ti)) && s->ent[e].slot[ti] == io[i].slot)
			keep = 1u << ti;
		ent_release_slots(s, &s->ent[e], keep, resv);
		s->ent[e].len = p->len;
		s->ent[e].fill = p->fill;
		s->ent[e].version = p->version;
		s->ent[e].crc = crc[map[i]];
		s->ent[e].slot[ti] = io[i].slot;
		s->ent[e].resident = (uint8_t)(1u << ti);
		p->tier = (int)ti;
	}
	return first;
}

static int put_locked(struct store *s, struct store_page *pages, unsigned n, unsigned tier,
		      struct store_resv *resv)
{
	unsigned off;
	int first = 0, r;

	for (off = 0; off < n; off += STORE_CHUNK) {
		unsigned k = n - off < STORE_CHUNK ? n - off : STORE_CHUNK;

		r = put_chunk(s, pages + off, k, tier, resv);
		if (r < 0 && !first)
			first = r;
	}
	s->puts += n;
	return first;
}

int store_put(struct store *s, struct store_page *pages, unsigned n, unsigned tier)
{
	int r;

	if (!s || (!pages && n) || tier >= s->ntiers)
		return -EINVAL;
	pthread_rwlock_wrlock(&s->lock);
	r = put_locked(s, pages, n, tier, NULL);
	pthread_rwlock_unlock(&s->lock);
	return r;
}

int store_put_resv(struct store *s, struct store_page *pages, unsigned n, unsigned tier,
		   struct store_resv *resv)
{
	int r;

	if (!s || (!pages && n) || tier >= s->ntiers || !resv ||
	    (s->naccts ? resv->acct >= s->naccts : resv->acct != 0))
		return -EINVAL;
	pthread_rwlock_wrlock(&s->lock);
	r = put_locked(s, pages, n, tier, resv);
	pthread_rwlock_unlock(&s->lock);
	return r;
}

int store_reserve(struct store *s, struct store_resv *resv, const unsigned *tiers, unsigned ntiers,
		  uint64_t n)
{
	uint64_t take[TIER_MAX] = { 0 }, need = n, free_total = 0;
	unsigned i, j;
	int r = 0;

	if (!s || !resv || (!tiers && ntiers) || ntiers > s->ntiers ||
	    (s->naccts ? resv->acct >= s->naccts : resv->acct != 0))
		return -EINVAL;
	for (i = 0; i < ntiers; i++)
		if (tiers[i] >= s->ntiers)
			return -EINVAL;
	if (!n)
		return 0;
	/* Puts, migrations and installs allocate under the write lock: holding it, what is free
	 * now is still free below. */
	pthread_rwlock_wrlock(&s->lock);
	for (i = 0; i < ntiers && need; i++) {
		unsigned t = tiers[i];
		uint64_t room = tier_free_slots(s->tier[t]), q;

		for (j = 0; j < i; j++)
			if (tiers[j] == t)
				room = 0; /* listed twice */
		free_total += room;
		if (resv->acct && s->quota[t]) {
			size_t a = (size_t)resv->acct * TIER_MAX + t;

			q = s->held[a] + s->resvd[a] < s->quota[t] ?
				    s->quota[t] - s->held[a] - s->resvd[a] :
				    0;
			room = room < q ? room : q;
		}
		take[t] = room < need ? room : need;
		need -= take[t];
	}
	if (need) {
		r = free_total >= n ? -EDQUOT : -ENOSPC;
		goto out;
	}
	for (i = 0; i < s->ntiers; i++) {
		if (!take[i])
			continue;
		r = tier_reserve(s->tier[i], take[i]);
		if (r < 0) {
			/* someone took slots behind the store's back (a direct tier_alloc) */
			while (i-- > 0)
				tier_unreserve(s->tier[i], take[i]);
			goto out;
		}
	}
	for (i = 0; i < s->ntiers; i++) {
		resv->n[i] += take[i];
		if (s->naccts)
			s->resvd[(size_t)resv->acct * TIER_MAX + i] += take[i];
	}
out:
	pthread_rwlock_unlock(&s->lock);
	return r;
}

void store_unreserve(struct store *s, struct store_resv *resv)
{
	unsigned t;

	if (!s || !resv)
		return;
	pthread_rwlock_wrlock(&s->lock);
	for (t = 0; t < s->ntiers; t++) {
		tier_unreserve(s->tier[t], resv->n[t]);
		if (s->naccts && resv->acct < s->naccts)
			s->resvd[(size_t)resv->acct * TIER_MAX + t] -= resv->n[t];
		resv->n[t] = 0;
	}
	pthread_rwlock_unlock(&s->lock);
}

int store_set_quota(struct store *s, unsigned tier, uint64_t slots)
{
	if (!s || tier >= s->ntiers)
		return -EINVAL;
	pthread_rwlock_wrlock(&s->lock);
	s->quota[tier] = slots;
	pthread_rwlock_unlock(&s->lock);
	return 0;
}

int store_acct_slots(struct store *s, uint32_t acct, uint64_t *ret_slots)
{
	unsigned t;

	if (!s || !ret_slots || acct >= s->naccts)
		return -EINVAL;
	pthread_rwlock_rdlock(&s->lock);
	for (t = 0; t < TIER_MAX; t++)
		ret_slots[t] = s->held[(size_t)acct * TIER_MAX + t];
	pthread_rwlock_unlock(&s->lock);
	return 0;
}

int store_install(struct store *s, struct store_page *pages, unsigned n, unsigned tier)
{
	struct tier_io io[STORE_CHUNK];
	uint32_t ent[STORE_CHUNK];
	unsigned map[STORE_CHUNK], off, i, nio;
	int first = 0;

	if (!s || (!pages && n) || tier >= s->ntiers)
		return -EINVAL;
	pthread_rwlock_wrlock(&s->lock);
	for (off = 0; off < n; off += STORE_CHUNK) {
		struct store_page *pg = pages + off;
		unsigned k = n - off < STORE_CHUNK ? n - off : STORE_CHUNK;

		nio = 0;
		for (i = 0; i < k; i++) {
			uint32_t e = ent_find(s, &pg[i].key);
			uint64_t slot;

			pg[i].res = 0;
			if (e == NIL || !pg[i].buf) {
				set_res(&first, &pg[i].res, e == NIL ? -ENOENT : -EINVAL);
				continue;
			}
			if (s->ent[e].resident & (1u << tier))
				continue;
			if (s->ent[e].version != pg[i].version || s->ent[e].len != pg[i].len ||
			    store_page_crc(&pg[i].key, pg[i].version, s->ent[e].fill, pg[i].buf,
					   pg[i].len) != s->ent[e].crc) {
				set_res(&first, &pg[i].res, -ESTALE);
				continue;
			}
			if (!acct_room(s, s->ent[e].acct, tier)) {
				set_res(&first, &pg[i].res, -EDQUOT);
				continue;
			}
			if (tier_alloc(s->tier[tier], 1, &slot) < 0) {
				set_res(&first, &pg[i].res, -ENOSPC);
				continue;
			}
			acct_charge(s, s->ent[e].acct, tier, 1);
			ent[nio] = e;
			map[nio] = i;
			io[nio++] = (struct tier_io){
				.slot = slot, .buf = pg[i].buf, .len = pg[i].len, .cap = pg[i].len
			};
		}
		tier_write(s->tier[tier], io, nio);
		for (i = 0; i < nio; i++) {
			struct store_ent *e = &s->ent[ent[i]];

			if (io[i].res < 0 || (e->resident & (1u << tier))) {
				/* failed, or the same key twice in the batch */
				tier_free(s->tier[tier], &io[i].slot, 1);
				acct_charge(s, e->acct, tier, -1);
				if (io[i].res < 0)
					set_res(&first, &pg[map[i]].res, io[i].res);
				continue;
			}
			e->slot[tier] = io[i].slot;
			e->resident |= (uint8_t)(1u << tier);
			s->migrations++;
		}
	}
	pthread_rwlock_unlock(&s->lock);
	return first;
}

/* Verifies a page read into buf (cap bytes); on mismatch scrubs everything a tier may have
 * written there (whole 4 KiB blocks). */
static int verify(struct store *s, const struct store_ent *e, void *buf, size_t cap, unsigned ti)
{
	size_t n = tier_round_up(e->len);

	if (store_page_crc(&e->key, e->version, e->fill, buf, e->len) == e->crc)
		return 0;
	memset(buf, 0, n < cap ? n : cap);
	__atomic_add_fetch(&s->tier[ti]->ctr.csum_failures, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&s->csum_failures, 1, __ATOMIC_RELAXED);
	return -EBADMSG;
}

static int get_chunk(struct store *s, struct store_page *pg, unsigned n)
{
	struct tier_io io[STORE_CHUNK];
	uint32_t ent[STORE_CHUNK];
	unsigned map[STORE_CHUNK], i, ti;
	int first = 0;

	for (i = 0; i < n; i++) {
		struct store_page *p = &pg[i];
		uint32_t e = ent_find(s, &p->key);

		p->res = 0;
		p->tier = -1;
		ent[i] = e;
		if (!p->buf) {
			set_res(&first, &p->res, -EINVAL);
		} else if (e == NIL || !s->ent[e].resident) {
			set_res(&first, &p->res, -ENOENT);
		} else if (s->ent[e].len > p->len) {
			set_res(&first, &p->res, -EMSGSIZE);
		} else {
			p->tier = __builtin_ctz(s->ent[e].resident);
		}
	}
	for (ti = 0; ti < s->ntiers; ti++) {
		unsigned nio = 0;

		for (i = 0; i < n; i++) {
			if (pg[i].tier != (int)ti)
				continue;
			io[nio] = (struct tier_io){ .slot = s->ent[ent[i]].slot[ti],
						    .buf = pg[i].buf,
						    .len = s->ent[ent[i]].len,
						    .cap = pg[i].len };
			map[nio++] = i;
		}
		if (!nio)
			continue;
		tier_read(s->tier[ti], io, nio);
		for (i = 0; i < nio; i++) {
			struct store_page *p = &pg[map[i]];
			const struct store_ent *e = &s->ent[ent[map[i]]];
			int r = io[i].res;

			if (r == 0)
				r = verify(s, e, p->buf, p->len, ti);
			if (r < 0) {
				set_res(&first, &p->res, r);
				continue;
			}
			p->len = e->len;
			p->fill = e->fill;
			p->version = e->version;
		}
	}
	return first;
}

int store_get(struct store *s, struct store_page *pages, unsigned n)
{
	unsigned off;
	int first = 0, r;

	if (!s || (!pages && n))
		return -EINVAL;
	pthread_rwlock_rdlock(&s->lock);
	for (off = 0; off < n; off += STORE_CHUNK) {
		unsigned k = n - off < STORE_CHUNK ? n - off : STORE_CHUNK;

		r = get_chunk(s, pages + off, k);
		if (r < 0 && !first)
			first = r;
	}
	pthread_rwlock_unlock(&s->lock);
	__atomic_add_fetch(&s->gets, n, __ATOMIC_RELAXED);
	return first;
}

/* One chunk (<= STORE_STAGE pages) of a migration (write lock held). */
static int migrate_chunk(struct store *s, const struct store_key *keys, unsigned n, unsigned dst,
			 unsigned flags, int *res)
{
	struct tier *dt = s->tier[dst];
	struct tier_io io[STORE_STAGE];
	uint32_t ent[STORE_STAGE];
	uint64_t dslot[STORE_STAGE];
	void *data[STORE_STAGE];
	int src[STORE_STAGE], wmap[STORE_STAGE];
	unsigned i, ti, nio;
	int first = 0;
	void *dbase = tier_slot_addr(dt, 0);

	for (i = 0; i < n; i++) {
		uint32_t e = ent_find(s, &keys[i]);

		ent[i] = e;
		src[i] = -1;
		data[i] = NULL;
		res[i] = 0;
		if (e == NIL || !s->ent[e].resident) {
			set_res(&first, &res[i], -ENOENT);
			continue;
		}
		if (s->ent[e].resident & (1u << dst))
			continue; /* already there */
		if (!acct_room(s, s->ent[e].acct, dst)) {
			set_res(&first, &res[i], -EDQUOT);
			continue;
		}
		if (tier_alloc(dt, 1, &dslot[i]) < 0) {
			set_res(&first, &res[i], -ENOSPC);
			continue;
		}
		acct_charge(s, s->ent[e].acct, dst, 1);
		src[i] = __builtin_ctz(s->ent[e].resident);
	}
	/* Phase 1: get every source copy into CPU memory (in place when possible), verified. */
	for (ti = 0; ti < s->ntiers; ti++) {
		struct tier *st = s->tier[ti];
		int host = st->ops->slot_addr != NULL;

		nio = 0;
		for (i = 0; i < n; i++) {
			const struct store_ent *e;

			if (src[i] != (int)ti)
				continue;
			e = &s->ent[ent[i]];
			if (host) {
				data[i] = tier_slot_addr(st, e->slot[ti]);
				res[i] = verify(s, e, data[i], s->slot_size, ti);
				continue;
			}
			data[i] = dbase ? tier_slot_addr(dt, dslot[i]) :
					  s->stage + i * s->slot_size;
			io[nio] = (struct tier_io){ .slot = e->slot[ti],
						    .buf = data[i],
						    .len = e->len,
						    .cap = (uint32_t)s->slot_size };
			wmap[nio++] = (int)i;
		}
		tier_read(st, io, nio);
		for (i = 0; i < nio; i++) {
			unsigned k = (unsigned)wmap[i];

			res[k] = io[i].res;
			if (res[k] == 0)
				res[k] = verify(s, &s->ent[ent[k]], data[k], s->slot_size, ti);
		}
	}
	/* Phase 2: write into dst unless phase 1 already read straight into its slot. */
	nio = 0;
	for (i = 0; i < n; i++) {
		if (src[i] < 0 || res[i] < 0)
			continue;
		if (dbase && data[i] == tier_slot_addr(dt, dslot[i]))
			continue;
		io[nio] = (struct tier_io){ .slot = dslot[i],
					    .buf = data[i],
					    .len = s->ent[ent[i]].len,
					    .cap = (uint32_t)s->slot_size };
		wmap[nio++] = (int)i;
	}
	tier_write(dt, io, nio);
	for (i = 0; i < nio; i++)
		res[wmap[i]] = io[i].res;
	/* Commit. */
	for (i = 0; i < n; i++) {
		struct store_ent *e;

		if (ent[i] == NIL || !s->ent[ent[i]].resident)
			continue;
		e = &s->ent[ent[i]];
		if (src[i] >= 0 && res[i] < 0) {
			tier_free(dt, &dslot[i], 1);
			acct_charge(s, e->acct, dst, -1);
			set_res(&first, &res[i], res[i]);
			continue;
		}
		if (res[i] < 0)
			continue;
		if (src[i] >= 0 && (e->resident & (1u << dst))) {
			/* The same key twice in one batch: the first copy already landed. */
			tier_free(dt, &dslot[i], 1);
			acct_charge(s, e->acct, dst, -1);
		} else if (src[i] >= 0) {
			e->slot[dst] = dslot[i];
			e->resident |= (uint8_t)(1u << dst);
			s->migrations++;
		}
		if (!(flags & STORE_MIGRATE_COPY))
			ent_release_slots(s, e, 1u << dst, NULL);
	}
	return first;
}

int store_migrate(struct store *s, const struct store_key *keys, unsigned n, unsigned dst,
		  unsigned flags, int *res_out)
{
	int res[STORE_STAGE];
	unsigned off;
	int first = 0, r;

	if (!s || (!keys && n) || dst >= s->ntiers || (flags & ~STORE_MIGRATE_COPY))
		return -EINVAL;
	pthread_rwlock_wrlock(&s->lock);
	for (off = 0; off < n; off += STORE_STAGE) {
		unsigned k = n - off < STORE_STAGE ? n - off : STORE_STAGE;

		r = migrate_chunk(s, keys + off, k, dst, flags, res);
		if (r < 0 && !first)
			first = r;
		if (res_out)
			memcpy(res_out + off, res, k * sizeof(int));
	}
	pthread_rwlock_unlock(&s->lock);
	return first;
}

int store_evict_copy(struct store *s, const struct store_key *keys, unsigned n, unsigned tier,
		     int *res_out)
{
	unsigned i;
	int first = 0, dummy;

	if (!s || (!keys && n) || tier >= s->ntiers)
		return -EINVAL;
	pthread_rwlock_wrlock(&s->lock);
	for (i = 0; i < n; i++) {
		uint32_t e = ent_find(s, &keys[i]);
		int *res = res_out ? &res_out[i] : &dummy;

		*res = 0;
		if (e == NIL || !(s->ent[e].resident & (1u << tier)))
			set_res(&first, res, -ENOENT);
		else if (s->ent[e].resident == (1u << tier))
			set_res(&first, res, -EBUSY);
		else
			ent_release_slots(s, &s->ent[e], s->ent[e].resident & ~(1u << tier), NULL);
	}
	pthread_rwlock_unlock(&s->lock);
	return first;
}

int store_drop_seq(struct store *s, uint64_t seq)
{
	uint64_t i;
	int n = 0;

	if (!s)
		return -EINVAL;
	pthread_rwlock_wrlock(&s->lock);
	for (i = 0; i < s->max_pages; i++) {
		if (!s->ent[i].live || s->ent[i].key.seq != seq)
			continue;
		ent_release_slots(s, &s->ent[i], 0, NULL);
		ent_remove(s, (uint32_t)i);
		n++;
	}
	s->drops += (uint64_t)n;
	pthread_rwlock_unlock(&s->lock);
	return n;
}

int store_touch(struct store *s, const struct store_key *keys, unsigned n)
{
	unsigned i;
	int found = 0;

	if (!s || (!keys && n))
		return -EINVAL;
	pthread_rwlock_wrlock(&s->lock);
	s->step++;
	for (i = 0; i < n; i++) {
		uint32_t e = ent_find(s, &keys[i]);

		if (e == NIL)
			continue;
		s->ent[e].heat = ent_heat(s, &s->ent[e]) + 1.0f;
		s->ent[e].heat_step = s->step;
		found++;
	}
	s->touches += n;
	pthread_rwlock_unlock(&s->lock);
	return found;
}

static int cold_cmp(const void *a, const void *b)
{
	const struct cold_ent *x = a, *y = b;

	if (x->heat != y->heat)
		return x->heat < y->heat ? -1 : 1;
	if (x->step != y->step)
		return x->step < y->step ? -1 : 1;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

int store_coldest(struct store *s, unsigned tier, int only_sole, struct store_key *ret_keys,
		  unsigned max)
{
	uint64_t i, n = 0;
	unsigned k;

	if (!s || tier >= s->ntiers || (!ret_keys && max))
		return -EINVAL;
	/* Write lock: the ranking workspace is shared. */
	pthread_rwlock_wrlock(&s->lock);
	for (i = 0; i < s->max_pages; i++) {
		const struct store_ent *e = &s->ent[i];
		unsigned bit = 1u << tier;

		if (!e->live || !(e->resident & bit))
			continue;
		if (only_sole == 1 && e->resident != bit)
			continue;
		if (only_sole == 2 && e->resident == bit)
			continue;
		s->cold[n++] = (struct cold_ent){ ent_heat(s, e), e->heat_step, (uint32_t)i };
	}
	qsort(s->cold, n, sizeof(s->cold[0]), cold_cmp);
	for (k = 0; k < max && k < n; k++)
		ret_keys[k] = s->ent[s->cold[k].idx].key;
	pthread_rwlock_unlock(&s->lock);
	return (int)k;
}

int store_lookup(struct store *s, const struct store_key *key, struct store_page_info *ret_info)
{
	struct store_page_info info;
	uint32_t e;
	unsigned t;

	if (!s || !key || !ret_info)
		return -EINVAL;
	pthread_rwlock_rdlock(&s->lock);
	e = ent_find(s, key);
	if (e == NIL) {
		pthread_rwlock_unlock(&s->lock);
		return -ENOENT;
	}
	memset(&info, 0, sizeof(info));
	info.len = s->ent[e].len;
	info.fill = s->ent[e].fill;
	info.version = s->ent[e].version;
	info.crc = s->ent[e].crc;
	info.resident = s->ent[e].resident;
	for (t = 0; t < s->ntiers; t++)
		if (info.resident & (1u << t))
			info.slot[t] = s->ent[e].slot[t];
	info.heat = ent_heat(s, &s->ent[e]);
	info.acct = s->ent[e].acct;
	pthread_rwlock_unlock(&s->lock);
	*ret_info = info;
	return 0;
}

void store_stats(struct store *s, struct stats_buf *sb)
{
	unsigned t;

	pthread_rwlock_rdlock(&s->lock);
	stats_put_u64(sb, "store", "pages", s->npages);
	stats_put_u64(sb, "store", "max_pages", s->max_pages);
	stats_put_u64(sb, "store", "slot_size", s->slot_size);
	stats_put_u64(sb, "store", "puts", s->puts);
	stats_put_u64(sb, "store", "gets", __atomic_load_n(&s->gets, __ATOMIC_RELAXED));
	stats_put_u64(sb, "store", "migrations", s->migrations);
	stats_put_u64(sb, "store", "drops", s->drops);
	stats_put_u64(sb, "store", "touches", s->touches);
	stats_put_u64(sb, "store", "step", s->step);
	stats_put_u64(sb, "store", "csum_failures",
		      __atomic_load_n(&s->csum_failures, __ATOMIC_RELAXED));
	stats_put_u64(sb, "store", "metadata_bytes",
		      s->max_pages * (sizeof(struct store_ent) + sizeof(struct cold_ent)) +
			      (s->bucket_mask + 1) * sizeof(uint32_t));
	for (t = 0; t < s->ntiers; t++)
		tier_stats(s->tier[t], sb);
	pthread_rwlock_unlock(&s->lock);
}
