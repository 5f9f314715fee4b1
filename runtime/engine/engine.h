/*
 * The engine: sequences of a model's KV-cache, per (layer, KV head) a sink, a window of recent
 * tokens and the indexed pages (a DCI-tree, index/idx.h, whose pages live in the page store,
 * tiers/store.h); select picks the pages a step attends, fetch copies them out.
 * Used by the daemon for all its clients and by libicecache in embedded mode.
 *
 * Ownership and threads: every sequence has an owner id (a client); calls name the owner and a
 * sequence of another owner does not exist for them (-ENOENT). Calls for one owner must come
 * from one thread at a time; different owners may call concurrently. engine_stats/engine_seqs
 * may run concurrently with anything.
 *
 * Memory and quotas: host memory (sequence tables, sinks, windows, index keys, fetch staging)
 * is charged when it is allocated, against host_bytes and the owner's owner_host_bytes; the
 * page store counts per owner the DRAM and NVMe slots its pages hold (an account per owner,
 * tiers/store.h) against owner_dram_pages, owner_nvme_pages and owner_remote_pages. Past an owner's quota a call
 * fails with -EDQUOT, past a shared limit with -ENOSPC.
 */
#ifndef ICE_RUNTIME_ENGINE_H
#define ICE_RUNTIME_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "icecache/icecache.h"
#include "stats.h"

struct engine;

/* The engine's share of the config keys (runtime/daemon/config.c has the one table and says
 * what each means); owner_* are the client_* keys. */
struct engine_opts {
	uint64_t dram_bytes; /* allocated at engine_new */
	uint64_t slot_bytes;
	uint64_t host_bytes;
	const char *nvme_path; /* NULL or "": no NVMe tier */
	uint64_t nvme_bytes;
	/* The Redis tier past NVMe (or past DRAM): tiers/redis/redis.h. NULL or "": none. */
	const char *remote_url;
	uint64_t remote_bytes;
	uint32_t remote_timeout_ms;
	uint32_t remote_retry_ms;
	const char *remote_prefix; /* NULL or "": unique per engine */
	uint32_t max_seqs;
	uint32_t owner_max_seqs; /* 0 = no limit below max_seqs */
	/* Selection (index/select.h's struct select_opts): exact, group_merge, page_mass,
	 * overfetch (0 or 1: whole pages). */
	int exact_search;
	int group_merge;
	int page_mass;
	uint32_t overfetch;
	/* Per owner: host bytes, DRAM slots and NVMe slots its sequences may hold. 0 = a share
	 * of the total: 1 / owner_share of it (owner_share 0 or 1: no limit). */
	uint64_t owner_host_bytes;
	uint64_t owner_dram_pages;
	uint64_t owner_nvme_pages;
	uint64_t owner_remote_pages;
	uint32_t owner_share;
	uint32_t fetch_max_refs; /* refs one engine_fetch_shared may carry; 0 = no limit */
};

struct engine_params {
	struct ice_model_shape shape;
	struct ice_budget budget;
};

/* Per-thread scratch for select (grown on demand, reused across calls). */
struct engine_ws {
	void *buf;
	size_t cap;
};

int engine_new(const struct engine_opts *o, struct engine **ret_e);
void engine_free(struct engine *e);

/* -EINVAL on a bad shape/budget, -EMFILE when the table is full, -EDQUOT when the owner
 * already holds owner_max_seqs or its host bytes would pass owner_host_bytes, -ENOSPC when
 * host_bytes would. */
int engine_seq_open(struct engine *e, uint32_t owner, const struct engine_params *p,
		    uint32_t *ret_id);
int engine_seq_drop(struct engine *e, uint32_t owner, uint32_t id);
/* Drops every sequence of owner; returns how many. */
int engine_drop_owner(struct engine *e, uint32_t owner);

/* Size of one append's K (or V) input: kv_heads * n * head_dim * element size. -ENOENT/-EINVAL. */
int engine_append_bytes(struct engine *e, uint32_t owner, uint32_t id, uint32_t n,
			size_t *ret_bytes);
/*
 * All or nothing: when the tokens cannot be stored (-ENOSPC: host memory or the tiers full;
 * -EDQUOT: the owner's quota; -EINVAL: a non-finite key; -ENOMEM) the sequence is exactly as
 * before and takes later appends. -EIO (a tier failed mid-write, or a stored page is corrupt)
 * marks the sequence broken: every later call on it is -EIO.
 */
int engine_append(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer, uint32_t n,
		  const void *k, const void *v);

int engine_select_cap(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer);
/* q: q_heads * head_dim floats (q_len bytes, checked). Returns the number of refs written;
 * -ENOSPC when cap is below the table's size (engine_select_cap), which then goes to
 * *ret_need (NULL: not wanted; untouched on any other result).
 * rest: NULL, or q_heads * (head_dim + 1) floats for the rest term (ice_select_rest); rest_len
 * is that size in bytes, or up to 7 bytes more (the ring pads it to 8). */
int engine_select(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer, const float *q,
		  size_t q_len, struct ice_page_ref *out, size_t cap, float *rest, size_t rest_len,
		  struct engine_ws *ws, size_t *ret_need);
/* refs must be private memory (they are checked, then used). ws: scratch for store reads. */
int engine_fetch(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer,
		 const struct ice_page_ref *refs, size_t n, void *buf, size_t cap,
		 struct engine_ws *ws);
/*
 * engine_fetch for refs in memory someone else can write (a client's arena): more than
 * fetch_max_refs refs is -E2BIG and a buf too small for n pages -ENOSPC, both before the refs
 * are read; then they are copied into refs_ws (private memory, charged to host bytes and the
 * owner while the call runs: -ENOSPC/-EDQUOT) and fetched. refs_ws keeps at most 64 KiB
 * between calls.
 */
int engine_fetch_shared(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer,
			const struct ice_page_ref *refs, size_t n, void *buf, size_t cap,
			struct engine_ws *refs_ws, struct engine_ws *ws);
/* Bytes per fetched page of sequence id. */
int engine_page_bytes(struct engine *e, uint32_t owner, uint32_t id, size_t *ret_bytes);

/*
 * Saved prefixes (prefix.c), kept on the Redis tier's servers so that any engine reaching them
 * (another process, another host) can open them. -EOPNOTSUPP without a Redis tier; names are
 * 1-32 of [A-Za-z0-9._-] (-EINVAL otherwise).
 * save: every token of sequence id (all layers must hold the same count: -EBUSY otherwise,
 *   -ENODATA when empty) under name, replacing a previous save of it only once the new one is
 *   whole; *ret_crc (may be NULL) is its content hash. Costs the rows of one layer in host bytes
 *   while it runs.
 * open: a new sequence of owner (budget p->budget) holding the saved tokens, appended (the index
 *   is rebuilt from the keys: no model run). The model shape must be the saved one (-EINVAL);
 *   -ENOENT when no whole save has that name; -EBADMSG when a byte read does not match the
 *   manifest's checksums, -ESTALE when the save was replaced half-way through the read: then
 *   no sequence is left open. *ret_crc, *ret_tokens (may be NULL): the content hash, and the
 *   tokens every layer now holds.
 * drop: deletes the save (-ENOENT if none).
 */
int engine_prefix_save(struct engine *e, uint32_t owner, uint32_t id, const char *name,
		       uint32_t *ret_crc);
int engine_prefix_open(struct engine *e, uint32_t owner, const char *name,
		       const struct engine_params *p, uint32_t *ret_id, uint32_t *ret_crc,
		       uint32_t *ret_tokens);
int engine_prefix_drop(struct engine *e, const char *name);

void engine_stats(struct engine *e, struct stats_buf *sb);
void engine_seqs(struct engine *e, struct stats_buf *sb);
/* An owner's use, under prefix: host_bytes, dram_pages, nvme_pages, remote_pages, seqs (its quotas are in
 * engine_stats: engine.client_*). */
void engine_owner_stats(struct engine *e, uint32_t owner, const char *prefix, struct stats_buf *sb);

void engine_ws_done(struct engine_ws *ws);

#endif
