/*
 * Redis tier: page slots kept as keys of a Redis server or a Redis Cluster, past NVMe (or past
 * DRAM when there is no NVMe tier). Slot i is the string key `<prefix><i>` whose value is the
 * page's len bytes; fill, version and checksum stay in the store, which verifies every page read
 * back (docs/TIERS.md), so a key that was lost, rewritten or truncated on the server is an error,
 * never data.
 *
 * cfg->path is the server list: "redis://host:port" or "host:port", several comma-separated
 * (seeds for a cluster; a standalone server takes the first that answers). At open the tier asks
 * CLUSTER SLOTS: an instance without cluster support is standalone, otherwise the answer is the
 * slot map (CRC16 of the key, hash tags honoured, as the cluster spec says) and batches go to
 * the node owning each key; a MOVED reply updates the map and an ASK reply sends that key once
 * to the named node (after ASKING), both retried in the same batch (at most 5 redirections).
 * After a node fails the next batch reads the map again from a node that answers (at most once
 * per retry_ms), so slots a failover moved are found without a MOVED from the dead node.
 *
 * Batches are pipelined: every GET or SET of a batch is queued on its node's connection, all
 * nodes' output is written, then the replies are read, one round trip per node per batch (per
 * redirection round). cfg->nrings connections per node (0 = 2) let that many batches run at
 * once from different threads.
 *
 * Faults, per entry: the server unreachable (-ECONNREFUSED, -EHOSTUNREACH, ...), a reply later
 * than timeout_ms (-ETIMEDOUT; the connection is then dropped, its late replies would be
 * out of step), a full server (an OOM error reply under maxmemory: -ENOSPC), a missing key
 * (-ENODATA: the server restarted without the data, or a key was deleted), a cluster without
 * an owner for the slot (-EAGAIN), anything else -EIO. After a connection fails, batches on it
 * fail at once with the same error for retry_ms, then the tier reconnects. probe() is a PING.
 *
 * Open fails when no server answers, and with -EINVAL when the server would evict keys
 * (maxmemory-policy other than noeviction, where CONFIG GET answers): an evicted key is a lost
 * page. At close the keys the tier wrote are deleted (UNLINK, pipelined), if the server is
 * there. cfg->key_prefix NULL or "" is "ice:<host>:<pid>:<time>:", unique per open.
 */
#ifndef ICE_TIERS_REDIS_H
#define ICE_TIERS_REDIS_H

#include "tier.h"

extern const struct tier_ops redis_tier_ops;

struct redis_info {
	int cluster;      /* 1: Redis Cluster, 0: standalone */
	unsigned nodes;   /* nodes known (masters that own slots) */
	uint64_t batches; /* pipelined round trips (per node) */
	uint64_t moved, ask, reconnects, conn_errors, timeouts, oom, missing;
	uint64_t map_refreshes; /* cluster: slot map read again after a node failed */
};

void redis_get_info(struct tier *t, struct redis_info *ret_info);

/*
 * Named objects beside the slots, on the same servers and connections (the saved prefixes of
 * runtime/engine/prefix.c): names[i] is entry i's whole key (under 80 bytes; not under the
 * tier's prefix, and not deleted at close), pipelined like slot batches. put: ios[i].buf, len;
 * get: buf and cap in, len out (-ENODATA when missing, -EMSGSIZE when larger than cap); slot is
 * unused. The same per-entry results and return as tier_read/tier_write; -EINVAL for a tier
 * that is not this one. Nothing is checksummed here: the caller checks what it reads.
 */
int redis_obj_put(struct tier *t, const char *const *names, struct tier_io *ios, unsigned n);
int redis_obj_get(struct tier *t, const char *const *names, struct tier_io *ios, unsigned n);
int redis_obj_del(struct tier *t, const char *const *names, unsigned n);

/* CRC16 slot of a key (0..16383), as Redis Cluster hashes it: the part inside the first
 * non-empty {...} if there is one. Exposed for tests. */
unsigned redis_key_slot(const char *key, size_t len);

#endif
