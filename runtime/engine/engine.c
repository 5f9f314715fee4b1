/* Engine: see engine.h; the state and how the phases share it: engine_impl.h. This file
 * opens the tiers, accounts host memory and reports stats. */
#include "engine.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dram.h"
#include "engine_impl.h"
#include "nvme.h"
#include "policy.h"
#include "redis.h"

int engine_charge(struct engine *e, const struct seq *s, uint64_t bytes)
{
	struct owner *o = &e->own[s->acct];
	uint64_t now = __atomic_add_fetch(&o->host, bytes, __ATOMIC_RELAXED);

	if (e->o.owner_host_bytes && now > e->o.owner_host_bytes) {
		__atomic_sub_fetch(&o->host, bytes, __ATOMIC_RELAXED);
		return -EDQUOT;
	}
	now = __atomic_add_fetch(&e->used, bytes, __ATOMIC_RELAXED);
	if (now > e->o.host_bytes) {
		__atomic_sub_fetch(&e->used, bytes, __ATOMIC_RELAXED);
		__atomic_sub_fetch(&o->host, bytes, __ATOMIC_RELAXED);
		return -ENOSPC;
	}
	return 0;
}

void engine_charge_force(struct engine *e, const struct seq *s, uint64_t bytes)
{
	__atomic_add_fetch(&e->own[s->acct].host, bytes, __ATOMIC_RELAXED);
	__atomic_add_fetch(&e->used, bytes, __ATOMIC_RELAXED);
}

void engine_uncharge(struct engine *e, const struct seq *s, uint64_t bytes)
{
	__atomic_sub_fetch(&e->own[s->acct].host, bytes, __ATOMIC_RELAXED);
	__atomic_sub_fetch(&e->used, bytes, __ATOMIC_RELAXED);
}

/* The store index of the tier of this kind, or -1. */
static int tier_index(const struct engine *e, enum tier_kind kind)
{
	unsigned i;

	for (i = 0; i < e->ntiers; i++)
		if (e->tiers[i]->ops->kind == kind)
			return (int)i;
	return -1;
}

static void engine_close_tiers(struct engine *e)
{
	unsigned i;

	policy_free(e->pol);
	store_close(e->store);
	for (i = 0; i < e->ntiers; i++)
		tier_close(e->tiers[i]);
}

int engine_new(const struct engine_opts *o, struct engine **ret_e)
{
	struct store_config sc = { 0 };
	struct tier_config tc = { 0 };
	struct engine *e;
	int err, nvme, remote;

	if (!o || !ret_e || !o->max_seqs || o->max_seqs > (1u << SEQ_SLOT_BITS) || !o->slot_bytes ||
	    o->slot_bytes % TIER_ALIGN || o->dram_bytes < o->slot_bytes)
		return -EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->o = *o;
	if (e->o.overfetch < 1)
		e->o.overfetch = 1;
	/* The strings are the caller's, read only while engine_new runs. */
	e->o.nvme_path = NULL;
	e->o.remote_url = NULL;
	e->o.remote_prefix = NULL;
	e->slot = calloc(o->max_seqs, sizeof(*e->slot));
	e->gen = calloc(o->max_seqs, sizeof(*e->gen));
	e->own = calloc((size_t)o->max_seqs + 1, sizeof(*e->own));
	if (!e->slot || !e->gen || !e->own) {
		err = -ENOMEM;
		goto out_free;
	}
	tc.capacity_bytes = o->dram_bytes;
	tc.slot_size = o->slot_bytes;
	tc.numa_node = -1;
	err = tier_open(&dram_tier_ops, &tc, &e->tiers[e->ntiers]);
	if (err)
		goto out_free;
	e->ntiers++;
	if (o->nvme_path && o->nvme_path[0]) {
		tc.capacity_bytes = o->nvme_bytes;
		tc.path = o->nvme_path;
		err = tier_open(&nvme_tier_ops, &tc, &e->tiers[e->ntiers]);
		if (err)
			goto out_tiers;
		e->ntiers++;
	}
	/* Past NVMe, or past DRAM without it: the coldest pages of this host go to Redis. */
	if (o->remote_url && o->remote_url[0]) {
		tc = (struct tier_config){ .capacity_bytes = o->remote_bytes,
					   .slot_size = o->slot_bytes,
					   .path = o->remote_url,
					   .timeout_ms = o->remote_timeout_ms,
					   .retry_ms = o->remote_retry_ms,
					   .key_prefix = o->remote_prefix };
		err = tier_open(&redis_tier_ops, &tc, &e->tiers[e->ntiers]);
		if (err)
			goto out_tiers;
		e->ntiers++;
	}
	sc.slot_size = o->slot_bytes;
	sc.naccts = o->max_seqs + 1;
	err = store_open(&sc, e->tiers, e->ntiers, &e->store);
	if (err)
		goto out_tiers;
	nvme = tier_index(e, TIER_NVME);
	remote = tier_index(e, TIER_REMOTE);
	/* Quotas left at 0 are a share of what there is (engine.h). */
	if (e->o.owner_share > 1) {
		if (!e->o.owner_host_bytes)
			e->o.owner_host_bytes = e->o.host_bytes / e->o.owner_share;
		if (!e->o.owner_dram_pages)
			e->o.owner_dram_pages = e->tiers[0]->nslots / e->o.owner_share;
		if (!e->o.owner_nvme_pages && nvme > 0)
			e->o.owner_nvme_pages = e->tiers[nvme]->nslots / e->o.owner_share;
		if (!e->o.owner_remote_pages && remote > 0)
			e->o.owner_remote_pages = e->tiers[remote]->nslots / e->o.owner_share;
	}
	store_set_quota(e->store, 0, e->o.owner_dram_pages);
	if (nvme > 0)
		store_set_quota(e->store, (unsigned)nvme, e->o.owner_nvme_pages);
	if (remote > 0)
		store_set_quota(e->store, (unsigned)remote, e->o.owner_remote_pages);
	if (e->ntiers > 1) {
		/* dram -> nvme -> redis, or dram -> (nvme or redis) */
		struct policy_config pc = { .fast = 0, .slow = 1, .colder = e->ntiers > 2 ? 2 : 0 };

		err = policy_new(e->store, &pc, &e->pol);
		if (err)
			goto out_tiers;
	}
	pthread_mutex_init(&e->lock, NULL);
	hist_init(&e->h_append);
	hist_init(&e->h_select);
	hist_init(&e->h_fetch);
	*ret_e = e;
	return 0;
out_tiers:
	engine_close_tiers(e);
out_free:
	free(e->own);
	free(e->slot);
	free(e->gen);
	free(e);
	return err;
}

void engine_free(struct engine *e)
{
	uint32_t i;

	if (!e)
		return;
	for (i = 0; i < e->o.max_seqs; i++)
		engine_seq_free(e, e->slot[i]);
	engine_close_tiers(e);
	pthread_mutex_destroy(&e->lock);
	free(e->own);
	free(e->slot);
	free(e->gen);
	free(e);
}

/* ---- stats ---- */

void engine_stats(struct engine *e, struct stats_buf *sb)
{
	uint64_t tokens = 0;
	uint32_t i, nseqs;
	char names[64] = "tiers:";

	pthread_mutex_lock(&e->lock);
	nseqs = e->nseqs;
	for (i = 0; i < e->o.max_seqs; i++)
		if (e->slot[i])
			tokens += __atomic_load_n(&e->slot[i]->ntok[0], __ATOMIC_RELAXED);
	pthread_mutex_unlock(&e->lock);
	/* store.* then tier.<name>.* for every tier */
	store_stats(e->store, sb);
	if (e->pol)
		policy_stats(e->pol, sb);
	for (i = 0; i < e->ntiers; i++)
		snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", i ? "+" : "",
			 e->tiers[i]->name);
	stats_put_str(sb, "engine", "store", names);
	stats_put_str(sb, "engine", "index", e->o.exact_search ? "dci-tree(exact)" : "dci-tree");
	stats_put_u64(sb, "engine", "host_capacity_bytes", e->o.host_bytes);
	stats_put_u64(sb, "engine", "host_used_bytes", __atomic_load_n(&e->used, __ATOMIC_RELAXED));
	stats_put_u64(sb, "engine", "seqs", nseqs);
	stats_put_u64(sb, "engine", "seqs_max", e->o.max_seqs);
	stats_put_u64(sb, "engine", "seqs_opened", e->seqs_opened);
	stats_put_u64(sb, "engine", "seqs_dropped", e->seqs_dropped);
	stats_put_u64(sb, "engine", "tokens_layer0", tokens);
	/* Per-client quotas (each client's use: client.<id>.*) */
	stats_put_u64(sb, "engine", "client_host_bytes", e->o.owner_host_bytes);
	stats_put_u64(sb, "engine", "client_dram_pages", e->o.owner_dram_pages);
	stats_put_u64(sb, "engine", "client_nvme_pages", e->o.owner_nvme_pages);
	stats_put_u64(sb, "engine", "client_remote_pages", e->o.owner_remote_pages);
	stats_put_u64(sb, "engine", "client_max_seqs", e->o.owner_max_seqs);
	stats_put_u64(sb, "engine", "fetch_max_refs", e->o.fetch_max_refs);
	stats_put_hist(sb, "engine", "append", &e->h_append);
	stats_put_hist(sb, "engine", "select", &e->h_select);
	stats_put_hist(sb, "engine", "fetch", &e->h_fetch);
}

void engine_seqs(struct engine *e, struct stats_buf *sb)
{
	uint32_t i;

	pthread_mutex_lock(&e->lock);
	for (i = 0; i < e->o.max_seqs; i++) {
		const struct seq *s = e->slot[i];
		char pfx[32];

		if (!s)
			continue;
		snprintf(pfx, sizeof(pfx), "seq.%u", s->id);
		stats_put_u64(sb, pfx, "owner", s->owner);
		stats_put_u64(sb, pfx, "layers", s->p.shape.layers);
		stats_put_u64(sb, pfx, "q_heads", s->p.shape.q_heads);
		stats_put_u64(sb, pfx, "kv_heads", s->p.shape.kv_heads);
		stats_put_u64(sb, pfx, "head_dim", s->p.shape.head_dim);
		stats_put_str(sb, pfx, "dtype", dtype_name(s->dt));
		stats_put_u64(sb, pfx, "tokens", __atomic_load_n(&s->ntok[0], __ATOMIC_RELAXED));
		stats_put_u64(sb, pfx, "pages", __atomic_load_n(&s->pages, __ATOMIC_RELAXED));
		stats_put_u64(sb, pfx, "bytes", __atomic_load_n(&s->bytes, __ATOMIC_RELAXED));
	}
	pthread_mutex_unlock(&e->lock);
}

void engine_owner_stats(struct engine *e, uint32_t owner, const char *prefix, struct stats_buf *sb)
{
	uint64_t slots[TIER_MAX] = { 0 }, host = 0;
	uint32_t i, nseqs = 0;
	int nvme = tier_index(e, TIER_NVME), remote = tier_index(e, TIER_REMOTE);

	pthread_mutex_lock(&e->lock);
	for (i = 1; i <= e->o.max_seqs; i++) {
		if (!e->own[i].nseqs || e->own[i].id != owner)
			continue;
		nseqs = e->own[i].nseqs;
		host = __atomic_load_n(&e->own[i].host, __ATOMIC_RELAXED);
		store_acct_slots(e->store, i, slots);
		break;
	}
	pthread_mutex_unlock(&e->lock);
	stats_put_u64(sb, prefix, "host_bytes", host);
	stats_put_u64(sb, prefix, "dram_pages", slots[0]);
	stats_put_u64(sb, prefix, "nvme_pages", nvme > 0 ? slots[nvme] : 0);
	stats_put_u64(sb, prefix, "remote_pages", remote > 0 ? slots[remote] : 0);
	stats_put_u64(sb, prefix, "seqs", nseqs);
}
