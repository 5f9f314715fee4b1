/* The DRAM tier: see dram.h. */
#include "dram.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "dram_cuda.h"
#include "topo.h"

#define HUGE_2M (2ul << 20)

struct dram_tier {
	struct tier tier;
	uint8_t *base;
	size_t map_len;
	struct dram_info info;
	enum topo_reason why;
};

static int thp_enabled(void)
{
	char buf[128] = { 0 };
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
	int on;

	if (!f)
		return 0;
	on = fgets(buf, sizeof(buf), f) && !strstr(buf, "[never]");
	fclose(f);
	return on;
}

static int dram_open(const struct tier_config *cfg, struct tier **ret_tier)
{
	struct dram_tier *d;
	size_t len;
	int r, node;

	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	r = tier_init_common(&d->tier, &dram_tier_ops, cfg);
	if (r < 0)
		goto out_free;
	len = d->tier.nslots * d->tier.slot_size;
	len = (len + HUGE_2M - 1) & ~(HUGE_2M - 1);
	d->map_len = len;
	d->info.map_len = len;
	d->base = MAP_FAILED;
	if (!(cfg->flags & TIER_F_NO_HUGEPAGES)) {
		d->base = mmap(NULL, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		if (d->base != MAP_FAILED)
			d->info.hugepages = 1;
	}
	if (d->base == MAP_FAILED) {
		/* No reserved huge pages (the usual case): ask for transparent ones. */
		d->base =
			mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (d->base == MAP_FAILED) {
			r = -errno;
			goto out_done;
		}
		if (!(cfg->flags & TIER_F_NO_HUGEPAGES) && thp_enabled() &&
		    madvise(d->base, len, MADV_HUGEPAGE) == 0)
			d->info.hugepages = 2;
	}
	/* Place before the first touch: mbind only steers pages faulted in afterwards. */
	if (cfg->numa_node >= 0) {
		node = cfg->numa_node;
		d->why = TOPO_CONFIG;
	} else {
		node = topo_pick_node(&d->why);
	}
	d->info.node = -1;
	if (node >= 0) {
		r = topo_bind(d->base, len, node);
		if (r == 0)
			d->info.node = node;
		else if (cfg->numa_node >= 0 && r != -ENOSYS)
			goto out_unmap; /* an explicit node that cannot be had is an error */
	}
	if (!(cfg->flags & TIER_F_NO_MLOCK) && mlock(d->base, len) == 0)
		d->info.mlocked = 1;
	else
		memset(d->base, 0, len); /* prefault: no page faults on the data path */
	if (dram_cuda_register(d->base, len) == 0)
		d->info.cuda_registered = 1;
	*ret_tier = &d->tier;
	return 0;
out_unmap:
	munmap(d->base, len);
out_done:
	tier_done_common(&d->tier);
out_free:
	free(d);
	return r;
}

static void dram_close(struct tier *t)
{
	struct dram_tier *d = (struct dram_tier *)t;

	if (d->info.cuda_registered)
		dram_cuda_unregister(d->base);
	if (d->info.mlocked)
		munlock(d->base, d->map_len);
	munmap(d->base, d->map_len);
	tier_done_common(t);
	free(d);
}

static int dram_read(struct tier *t, struct tier_io *ios, unsigned n)
{
	struct dram_tier *d = (struct dram_tier *)t;
	unsigned i;

	for (i = 0; i < n; i++)
		memcpy(ios[i].buf, d->base + ios[i].slot * t->slot_size, ios[i].len);
	return 0;
}

static int dram_write(struct tier *t, struct tier_io *ios, unsigned n)
{
	struct dram_tier *d = (struct dram_tier *)t;
	unsigned i;

	for (i = 0; i < n; i++) {
		uint8_t *dst = d->base + ios[i].slot * t->slot_size;

		/* A migration may write a slot from itself (same tier listed twice). */
		if (dst != ios[i].buf)
			memmove(dst, ios[i].buf, ios[i].len);
	}
	return 0;
}

static void *dram_slot_addr(struct tier *t, uint64_t slot)
{
	return ((struct dram_tier *)t)->base + slot * t->slot_size;
}

static void dram_stats(struct tier *t, struct stats_buf *sb, const char *prefix)
{
	struct dram_tier *d = (struct dram_tier *)t;

	stats_put_u64(sb, prefix, "numa_node", (uint64_t)(int64_t)d->info.node);
	stats_put_str(sb, prefix, "numa_reason", topo_reason_name(d->why));
	stats_put_u64(sb, prefix, "numa_nodes", (uint64_t)topo_nodes());
	stats_put_str(sb, prefix, "hugepages",
		      d->info.hugepages == 1 ? "hugetlb" :
		      d->info.hugepages == 2 ? "thp" :
					       "none");
	stats_put_u64(sb, prefix, "mlocked", (uint64_t)d->info.mlocked);
	stats_put_u64(sb, prefix, "cuda_registered", (uint64_t)d->info.cuda_registered);
	stats_put_u64(sb, prefix, "pool_bytes", d->map_len);
}

void dram_get_info(struct tier *t, struct dram_info *ret_info)
{
	*ret_info = ((struct dram_tier *)t)->info;
}

const struct tier_ops dram_tier_ops = {
	.name = "dram",
	.kind = TIER_DRAM,
	.open = dram_open,
	.close = dram_close,
	.read = dram_read,
	.write = dram_write,
	.slot_addr = dram_slot_addr,
	.stats = dram_stats,
};
