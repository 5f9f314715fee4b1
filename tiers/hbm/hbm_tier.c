/*
 * The HBM tier behind the tier interface (tiers/tier.h). Its slots belong to the working sets
 * and the page cache (hbm.h), which the engine drives per layer; so at open every slot is
 * taken out of the common free-slot bitmap, and the page store never places pages here on its
 * own (its tier_alloc gets -ENOSPC). read/write move whole slots between host buffers and the
 * GPU (used for checks and tools), and stats report the cache.
 */
#include <errno.h>
#include <stdlib.h>

#include "hbm.h"
#include "hbm_tier.h"

struct hbm_tier {
	struct tier tier; /* first: the common part */
	struct hbm *h;
};

static int hbm_tier_open(const struct tier_config *cfg, struct tier **ret_tier)
{
	struct hbm_config hc = { 0 };
	struct hbm_tier *ht;
	uint64_t *slots = NULL;
	int r;

	ht = calloc(1, sizeof(*ht));
	if (!ht)
		return -ENOMEM;
	r = tier_init_common(&ht->tier, &hbm_tier_ops, cfg);
	if (r < 0)
		goto out_free;
	if (ht->tier.nslots > UINT32_MAX) {
		r = -EINVAL;
		goto out_done;
	}
	hc.device = cfg->device;
	hc.nslots = (uint32_t)ht->tier.nslots;
	hc.slot_bytes = cfg->slot_size;
	r = hbm_open(&hc, &ht->h);
	if (r < 0)
		goto out_done;
	slots = malloc(ht->tier.nslots * sizeof(*slots));
	if (!slots) {
		r = -ENOMEM;
		goto out_hbm;
	}
	r = tier_alloc(&ht->tier, (unsigned)ht->tier.nslots, slots);
	free(slots);
	if (r < 0)
		goto out_hbm;
	*ret_tier = &ht->tier;
	return 0;

out_hbm:
	hbm_close(ht->h);
out_done:
	tier_done_common(&ht->tier);
out_free:
	free(ht);
	return r;
}

static void hbm_tier_close(struct tier *t)
{
	struct hbm_tier *ht = (struct hbm_tier *)t;

	hbm_close(ht->h);
	tier_done_common(t);
	free(ht);
}

static int hbm_tier_rw(struct tier *t, struct tier_io *ios, unsigned n, int write)
{
	struct hbm_tier *ht = (struct hbm_tier *)t;
	int first = 0;
	unsigned i;

	for (i = 0; i < n; i++) {
		int r;

		if (ios[i].slot >= t->nslots)
			r = -EINVAL;
		else if (write)
			r = hbm_write_slot(ht->h, (uint32_t)ios[i].slot, ios[i].buf, ios[i].len);
		else
			r = hbm_read_slot(ht->h, (uint32_t)ios[i].slot, ios[i].buf, ios[i].len);
		ios[i].res = r;
		if (r && !first)
			first = r;
	}
	return first;
}

static int hbm_tier_read(struct tier *t, struct tier_io *ios, unsigned n)
{
	return hbm_tier_rw(t, ios, n, 0);
}

static int hbm_tier_write(struct tier *t, struct tier_io *ios, unsigned n)
{
	return hbm_tier_rw(t, ios, n, 1);
}

static void hbm_tier_stats(struct tier *t, struct stats_buf *sb, const char *prefix)
{
	hbm_stats(((struct hbm_tier *)t)->h, sb, prefix);
}

struct hbm *hbm_tier_hbm(struct tier *t)
{
	if (!t || t->ops != &hbm_tier_ops)
		return NULL;
	return ((struct hbm_tier *)t)->h;
}

const struct tier_ops hbm_tier_ops = {
	.name = "hbm",
	.open = hbm_tier_open,
	.close = hbm_tier_close,
	.read = hbm_tier_read,
	.write = hbm_tier_write,
	.stats = hbm_tier_stats,
};
