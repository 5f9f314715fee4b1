/* The common part of every tier: checks, the free-slot bitmap, counters and stats lines. */
#include "tier.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

int tier_init_common(struct tier *t, const struct tier_ops *ops, const struct tier_config *cfg)
{
	uint64_t words;

	if (!cfg->slot_size || cfg->slot_size % TIER_ALIGN || cfg->slot_size > (1u << 30))
		return -EINVAL;
	if (cfg->capacity_bytes / cfg->slot_size == 0)
		return -EINVAL;
	t->ops = ops;
	strncpy(t->name, ops->name, sizeof(t->name) - 1);
	t->name[sizeof(t->name) - 1] = '\0';
	t->slot_size = cfg->slot_size;
	t->nslots = cfg->capacity_bytes / cfg->slot_size;
	words = (t->nslots + 63) / 64;
	t->bitmap = calloc(words, sizeof(uint64_t));
	if (!t->bitmap)
		return -ENOMEM;
	/* Bits past nslots in the last word stay set so the scan never hands them out. */
	if (t->nslots % 64)
		t->bitmap[words - 1] = ~0ull << (t->nslots % 64);
	t->used = 0;
	t->reserved = 0;
	t->hint = 0;
	memset(&t->ctr, 0, sizeof(t->ctr));
	hist_init(&t->ctr.read_batch_ns);
	hist_init(&t->ctr.write_batch_ns);
	pthread_mutex_init(&t->lock, NULL);
	return 0;
}

void tier_done_common(struct tier *t)
{
	if (!t->bitmap)
		return;
	pthread_mutex_destroy(&t->lock);
	free(t->bitmap);
	t->bitmap = NULL;
}

int tier_open(const struct tier_ops *ops, const struct tier_config *cfg, struct tier **ret_tier)
{
	struct tier *t;
	int r;

	if (!ops || !cfg || !ret_tier || !ops->open || !ops->read || !ops->write)
		return -EINVAL;
	if (!cfg->slot_size || cfg->slot_size % TIER_ALIGN || cfg->capacity_bytes < cfg->slot_size)
		return -EINVAL;
	r = ops->open(cfg, &t);
	if (r < 0)
		return r;
	*ret_tier = t;
	return 0;
}

void tier_close(struct tier *t)
{
	if (t)
		t->ops->close(t);
}

/* Lock held, n slots known free: next-fit from the hint keeps allocation O(1) amortised while
 * the map is sparse. */
static void take_slots(struct tier *t, unsigned n, uint64_t *ret_slots)
{
	uint64_t words = (t->nslots + 63) / 64, w, i;
	unsigned got = 0;

	for (i = 0; i < words && got < n; i++) {
		w = (t->hint + i) % words;
		while (t->bitmap[w] != ~0ull && got < n) {
			unsigned bit = (unsigned)__builtin_ctzll(~t->bitmap[w]);

			t->bitmap[w] |= 1ull << bit;
			ret_slots[got++] = w * 64 + bit;
		}
		if (got == n)
			t->hint = w;
	}
	t->used += got;
}

int tier_alloc(struct tier *t, unsigned n, uint64_t *ret_slots)
{
	if (n == 0)
		return 0;
	pthread_mutex_lock(&t->lock);
	if (t->nslots - t->used - t->reserved < n) {
		pthread_mutex_unlock(&t->lock);
		return -ENOSPC;
	}
	take_slots(t, n, ret_slots);
	pthread_mutex_unlock(&t->lock);
	return 0;
}

int tier_alloc_reserved(struct tier *t, unsigned n, uint64_t *ret_slots)
{
	if (n == 0)
		return 0;
	pthread_mutex_lock(&t->lock);
	if (t->reserved < n) {
		pthread_mutex_unlock(&t->lock);
		return -ENOSPC;
	}
	t->reserved -= n;
	take_slots(t, n, ret_slots);
	pthread_mutex_unlock(&t->lock);
	return 0;
}

/* Lock held; returns how many were freed. */
static unsigned free_slots(struct tier *t, const uint64_t *slots, unsigned n)
{
	unsigned i, freed = 0;

	for (i = 0; i < n; i++) {
		uint64_t s = slots[i], bit = 1ull << (s % 64);

		if (s >= t->nslots || !(t->bitmap[s / 64] & bit)) {
			__atomic_add_fetch(&t->ctr.errors, 1, __ATOMIC_RELAXED);
			continue;
		}
		t->bitmap[s / 64] &= ~bit;
		t->used--;
		freed++;
	}
	return freed;
}

void tier_free(struct tier *t, const uint64_t *slots, unsigned n)
{
	pthread_mutex_lock(&t->lock);
	free_slots(t, slots, n);
	pthread_mutex_unlock(&t->lock);
}

void tier_free_reserved(struct tier *t, const uint64_t *slots, unsigned n)
{
	pthread_mutex_lock(&t->lock);
	t->reserved += free_slots(t, slots, n);
	pthread_mutex_unlock(&t->lock);
}

int tier_reserve(struct tier *t, uint64_t n)
{
	int r = 0;

	pthread_mutex_lock(&t->lock);
	if (t->nslots - t->used - t->reserved < n)
		r = -ENOSPC;
	else
		t->reserved += n;
	pthread_mutex_unlock(&t->lock);
	return r;
}

void tier_unreserve(struct tier *t, uint64_t n)
{
	pthread_mutex_lock(&t->lock);
	t->reserved -= n < t->reserved ? n : t->reserved;
	pthread_mutex_unlock(&t->lock);
}

uint64_t tier_used_slots(struct tier *t)
{
	uint64_t u;

	pthread_mutex_lock(&t->lock);
	u = t->used + t->reserved;
	pthread_mutex_unlock(&t->lock);
	return u;
}

uint64_t tier_free_slots(struct tier *t)
{
	return t->nslots - tier_used_slots(t);
}

uint64_t tier_reserved_slots(struct tier *t)
{
	uint64_t r;

	pthread_mutex_lock(&t->lock);
	r = t->reserved;
	pthread_mutex_unlock(&t->lock);
	return r;
}

static void tier_account(struct tier *t, const struct tier_io *ios, unsigned n, int write,
			 uint64_t t0)
{
	uint64_t bytes = 0, ok = 0, bad = 0;
	unsigned i;

	for (i = 0; i < n; i++) {
		if (ios[i].res == 0) {
			bytes += ios[i].len;
			ok++;
		} else {
			bad++;
		}
	}
	if (write) {
		__atomic_add_fetch(&t->ctr.writes, ok, __ATOMIC_RELAXED);
		__atomic_add_fetch(&t->ctr.write_bytes, bytes, __ATOMIC_RELAXED);
		__atomic_add_fetch(&t->ctr.write_batches, 1, __ATOMIC_RELAXED);
		hist_add(&t->ctr.write_batch_ns, clock_now_ns() - t0);
	} else {
		__atomic_add_fetch(&t->ctr.reads, ok, __ATOMIC_RELAXED);
		__atomic_add_fetch(&t->ctr.read_bytes, bytes, __ATOMIC_RELAXED);
		__atomic_add_fetch(&t->ctr.read_batches, 1, __ATOMIC_RELAXED);
		hist_add(&t->ctr.read_batch_ns, clock_now_ns() - t0);
	}
	if (bad)
		__atomic_add_fetch(&t->ctr.errors, bad, __ATOMIC_RELAXED);
}

static int tier_check_ios(struct tier *t, struct tier_io *ios, unsigned n)
{
	int first = 0;
	unsigned i;

	for (i = 0; i < n; i++) {
		ios[i].res = 0;
		if (ios[i].slot >= t->nslots || !ios[i].buf || ios[i].len == 0 ||
		    ios[i].len > t->slot_size || ios[i].cap < ios[i].len) {
			ios[i].res = -EINVAL;
			if (!first)
				first = -EINVAL;
		}
	}
	return first;
}

/* Checks the batch, runs it through the tier's op, accounts it (latency, bytes, errors). */
static int tier_batch(struct tier *t, struct tier_io *ios, unsigned n, int write)
{
	uint64_t t0 = clock_now_ns();
	int r;

	if (n == 0)
		return 0;
	r = tier_check_ios(t, ios, n);
	if (r < 0)
		return r;
	r = write ? t->ops->write(t, ios, n) : t->ops->read(t, ios, n);
	tier_account(t, ios, n, write, t0);
	return r;
}

int tier_read(struct tier *t, struct tier_io *ios, unsigned n)
{
	return tier_batch(t, ios, n, 0);
}

int tier_write(struct tier *t, struct tier_io *ios, unsigned n)
{
	return tier_batch(t, ios, n, 1);
}

void *tier_slot_addr(struct tier *t, uint64_t slot)
{
	if (!t->ops->slot_addr || slot >= t->nslots)
		return NULL;
	return t->ops->slot_addr(t, slot);
}

int tier_probe(struct tier *t)
{
	return t->ops->probe ? t->ops->probe(t) : 0;
}

void tier_stats(struct tier *t, struct stats_buf *sb)
{
	char prefix[8 + TIER_NAME_MAX];
	uint64_t used, resv;

	pthread_mutex_lock(&t->lock);
	used = t->used;
	resv = t->reserved;
	pthread_mutex_unlock(&t->lock);
	snprintf(prefix, sizeof(prefix), "tier.%s", t->name);
	stats_put_u64(sb, prefix, "capacity_bytes", t->nslots * t->slot_size);
	stats_put_u64(sb, prefix, "slot_size", t->slot_size);
	stats_put_u64(sb, prefix, "slots", t->nslots);
	stats_put_u64(sb, prefix, "used_slots", used);
	stats_put_u64(sb, prefix, "used_bytes", used * t->slot_size);
	stats_put_u64(sb, prefix, "pages", used); /* a page copy takes one slot */
	stats_put_u64(sb, prefix, "reserved_slots", resv);
	stats_put_u64(sb, prefix, "reads", __atomic_load_n(&t->ctr.reads, __ATOMIC_RELAXED));
	stats_put_u64(sb, prefix, "writes", __atomic_load_n(&t->ctr.writes, __ATOMIC_RELAXED));
	stats_put_u64(sb, prefix, "read_bytes",
		      __atomic_load_n(&t->ctr.read_bytes, __ATOMIC_RELAXED));
	stats_put_u64(sb, prefix, "write_bytes",
		      __atomic_load_n(&t->ctr.write_bytes, __ATOMIC_RELAXED));
	stats_put_u64(sb, prefix, "errors", __atomic_load_n(&t->ctr.errors, __ATOMIC_RELAXED));
	stats_put_u64(sb, prefix, "csum_failures",
		      __atomic_load_n(&t->ctr.csum_failures, __ATOMIC_RELAXED));
	stats_put_hist(sb, prefix, "read_batch", &t->ctr.read_batch_ns);
	stats_put_hist(sb, prefix, "write_batch", &t->ctr.write_batch_ns);
	if (t->ops->stats)
		t->ops->stats(t, sb, prefix);
}
