/* The HBM tier's tier_ops (tiers/tier.h) and the way from a tier handle to its working-set API
 * (tiers/hbm/hbm.h). Open it with tier_open(&hbm_tier_ops, cfg) (cfg->device picks the GPU);
 * without a GPU the open fails with -ENODEV and the store runs on the other tiers. */
#ifndef ICE_TIERS_HBM_TIER_H
#define ICE_TIERS_HBM_TIER_H

#include "hbm.h"
#include "tier.h"

extern const struct tier_ops hbm_tier_ops;

/* The working sets and page cache of an HBM tier; NULL if t is not one. */
struct hbm *hbm_tier_hbm(struct tier *t);

#endif
