/*
 * DRAM tier: one pool of slots allocated at open (no allocation afterwards), placed on the
 * NUMA node nearest the GPU (else the local node), backed by huge pages where the system
 * allows (explicit MAP_HUGETLB, then transparent huge pages, then 4 KiB pages), pinned with
 * mlock, and registered with CUDA when built with CUDA and a GPU is present.
 *
 * mlock fallback: when mlock fails (RLIMIT_MEMLOCK too low without CAP_IPC_LOCK; the
 * default limit is often 8 MiB) the pool is still prefaulted at open and the tier reports
 * tier.dram.mlocked 0; it works, it can just be swapped out under memory pressure.
 */
#ifndef ICE_TIERS_DRAM_H
#define ICE_TIERS_DRAM_H

#include "tier.h"

extern const struct tier_ops dram_tier_ops;

/* What open ended up with (for tests and stats). */
struct dram_info {
	int node;      /* -1 when not bound */
	int hugepages; /* 0 none, 1 hugetlbfs pages, 2 transparent huge pages (advised) */
	int mlocked;
	int cuda_registered;
	size_t map_len;
};

void dram_get_info(struct tier *t, struct dram_info *ret_info);

#endif
