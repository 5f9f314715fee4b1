/*
 * The tier interface: what a storage tier (dram, nvme) implements so the page store can
 * keep pages in it. Modelled on SPDK's bdev_module: each tier folder (tiers/<name>/) provides one
 * `const struct tier_ops` and a small header declaring it; the store only calls through the table.
 *
 * A tier is an array of fixed-size slots (`slot_size`, a multiple of TIER_ALIGN) with a hard
 * capacity fixed at open. Slots are allocated and freed in batches from a free-slot bitmap
 * that lives in the common part (`struct tier`), so a tier only moves bytes. Reads and writes
 * take a batch of `struct tier_io` and report a result per entry.
 *
 * Adding a tier:
 *   - tiers/<name>/meson.build appends its sources to `tiers_src` and its libraries to
 *     `tiers_deps` (tiers/meson.build picks the folder up when it exists);
 *   - its open() allocates a struct that embeds `struct tier` FIRST, calls tier_init_common(),
 *     and hands back `&x->tier`; close() calls tier_done_common() and frees.
 *
 * Thread-safety: tier_alloc/tier_free/tier_stats and the counters are safe from any thread.
 * read/write batches from several threads at once must be safe for the tier (dram: plain
 * copies; nvme: a pool of rings). Callers (the store) guarantee that no slot is written while
 * it is being read or freed.
 */
#ifndef ICE_TIERS_TIER_H
#define ICE_TIERS_TIER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "hist.h"
#include "stats.h"

/* Slot sizes and NVMe transfers are multiples of this (the O_DIRECT logical block). */
#define TIER_ALIGN 4096u
/* Most tiers one store holds (dram, nvme, redis, and room for one more). */
#define TIER_MAX 4
/* Longest tier name ("dram", "nvme"); the stats prefix is "tier.<name>". */
#define TIER_NAME_MAX 16

/* dram: do not try huge pages (MAP_HUGETLB, then transparent huge pages). */
#define TIER_F_NO_HUGEPAGES (1u << 0)
/* dram: do not mlock the pool (it is still allocated and touched up front). */
#define TIER_F_NO_MLOCK (1u << 1)
/* nvme: fail open with -EINVAL when the filesystem refuses O_DIRECT (default: fall back to
 * buffered I/O, reported as tier.nvme.o_direct 0). */
#define TIER_F_REQUIRE_DIRECT (1u << 2)
/* nvme: never use O_DIRECT (buffered I/O through the page cache). */
#define TIER_F_NO_DIRECT (1u << 3)
/* nvme: synchronous pread/pwrite instead of io_uring. Also what the tier falls back to by
 * itself when io_uring is unavailable (ENOSYS, or EPERM under a seccomp filter). */
#define TIER_F_NO_URING (1u << 4)

struct tier_config {
	/* Hard limit in bytes, rounded down to whole slots; at least one slot. */
	uint64_t capacity_bytes;
	/* Bytes per slot: a multiple of TIER_ALIGN (8192 for d=128 bf16 K+V of 16 tokens). */
	size_t slot_size;
	/* nvme: a regular file (created, preallocated with fallocate) or a block device.
	 * redis: the server list, "redis://host:port[,host:port...]" (tiers/redis/redis.h). */
	const char *path;
	/* dram: NUMA node for the pool, -1 = nearest the GPU if one is found, else the local node. */
	int numa_node;
	/* TIER_F_*. */
	unsigned flags;
	/* nvme: io_uring entries per ring, i.e. the most reads in flight per batch (0 = 256). */
	unsigned queue_depth;
	/* nvme: rings, i.e. batches that can run concurrently from different threads (0 = 2).
	 * redis: connections per server node, for the same purpose (0 = 2). */
	unsigned nrings;
	/* redis: ms a connect or a batch's reply may take before -ETIMEDOUT (0 = 1000). */
	unsigned timeout_ms;
	/* redis: ms a failed connection fails batches at once before reconnecting (0 = 1000). */
	unsigned retry_ms;
	/* redis: prefix of the tier's keys (NULL or "": one unique to this open). */
	const char *key_prefix;
};

/*
 * One slot transfer. `buf` is host memory; `len` bytes move (len <= slot_size); `cap` is how
 * many bytes `buf` can hold (>= len): a tier that moves whole TIER_ALIGN blocks may use the
 * buffer in place when cap >= round_up(len, TIER_ALIGN) and buf is TIER_ALIGN-aligned, and
 * copies through its own staging memory otherwise. A write pads the slot past `len` with
 * unspecified bytes. `res` is set to 0 or -errno for every entry.
 */
struct tier_io {
	uint64_t slot;
	void *buf;
	uint32_t len;
	uint32_t cap;
	int res;
	uint32_t pad_;
};

struct tier;

/* What a tier is, for the code that must tell tiers apart (the engine reports it in each page
 * ref as enum ice_tier). Code asks the kind, never the name. A kind comes with the tier that
 * has it: the HBM page cache (tiers/hbm) is not a tier. */
enum tier_kind {
	TIER_DRAM = 0,
	TIER_NVME = 1,
	TIER_REMOTE = 2, /* a store other hosts can reach (tiers/redis) */
};

struct tier_ops {
	/* Stats prefix "tier.<name>", and what icectl shows; for people, not for comparing. */
	const char *name;
	enum tier_kind kind;
	int (*open)(const struct tier_config *cfg, struct tier **ret_tier);
	void (*close)(struct tier *t);
	/* Batches: 0 if every entry succeeded, else the first entry's -errno (all entries get res). */
	int (*read)(struct tier *t, struct tier_io *ios, unsigned n);
	int (*write)(struct tier *t, struct tier_io *ios, unsigned n);
	/* Optional: CPU address of a slot for memory tiers (dram); NULL if not host-addressable. */
	void *(*slot_addr)(struct tier *t, uint64_t slot);
	/* Optional: tells the tier that later io buffers may come from [base, base+len) (the store
	 * passes the dram pool to nvme, which registers it with io_uring for zero-copy moves).
	 * Failure is not fatal: the tier falls back to unregistered or staged transfers. */
	int (*register_mem)(struct tier *t, void *base, size_t len);
	/* Optional: 0 when the tier can take I/O now, else the -errno a batch would get (a remote
	 * tier's server down). The policy asks before it reserves slots there. */
	int (*probe)(struct tier *t);
	/* Optional: lines beyond the common ones (numa node, huge pages, o_direct, ...). */
	void (*stats)(struct tier *t, struct stats_buf *sb, const char *prefix);
};

/* Counters every tier keeps; updated with relaxed atomics by the tier_* wrappers. */
struct tier_counters {
	uint64_t reads;
	uint64_t writes;
	uint64_t read_bytes;
	uint64_t write_bytes;
	uint64_t read_batches;
	uint64_t write_batches;
	uint64_t errors;
	uint64_t csum_failures;
	struct hist read_batch_ns;
	struct hist write_batch_ns;
};

/* The common part every tier embeds first. Fields are read-only after open except through
 * the functions below. */
struct tier {
	const struct tier_ops *ops;
	char name[TIER_NAME_MAX];
	size_t slot_size;
	uint64_t nslots;
	/* Free-slot bitmap (bit set = used), guarded by lock. */
	pthread_mutex_t lock;
	uint64_t *bitmap;
	uint64_t used;
	/* Free slots set aside (tier_reserve): plain tier_alloc cannot take them. */
	uint64_t reserved;
	uint64_t hint;
	struct tier_counters ctr;
};

/* Opens a tier through its ops table; checks cfg first (-EINVAL on bad sizes). */
int tier_open(const struct tier_ops *ops, const struct tier_config *cfg, struct tier **ret_tier);
/* Closes and frees; NULL is fine. */
void tier_close(struct tier *t);

/* For tier implementations: set up/tear down the common part (nslots from capacity). */
int tier_init_common(struct tier *t, const struct tier_ops *ops, const struct tier_config *cfg);
void tier_done_common(struct tier *t);

/* Allocates n slots, all or nothing: 0 and ret_slots[0..n) on success, -ENOSPC if fewer than
 * n are free and not reserved. */
int tier_alloc(struct tier *t, unsigned n, uint64_t *ret_slots);
/* Frees slots; a slot out of range or already free is ignored (and counted as an error). */
void tier_free(struct tier *t, const uint64_t *slots, unsigned n);

/*
 * Reservations: a caller that must not find the tier full half-way through a job sets the free
 * slots it may need aside first (tier_reserve, all or nothing, -ENOSPC), takes them with
 * tier_alloc_reserved (which cannot fail for slots it holds) and gives back what it did not use
 * (tier_unreserve). tier_free_reserved frees slots into the caller's reservation instead of the
 * free pool (a rewrite that releases the old copy keeps its slot for the next one). The caller
 * keeps count of what it holds; the tier keeps only the total.
 */
int tier_reserve(struct tier *t, uint64_t n);
void tier_unreserve(struct tier *t, uint64_t n);
/* -ENOSPC when fewer than n slots are reserved (a caller bug: it took more than it holds). */
int tier_alloc_reserved(struct tier *t, unsigned n, uint64_t *ret_slots);
void tier_free_reserved(struct tier *t, const uint64_t *slots, unsigned n);

/* Slots not available to tier_alloc: held by pages, or reserved. */
uint64_t tier_used_slots(struct tier *t);
uint64_t tier_free_slots(struct tier *t);
uint64_t tier_reserved_slots(struct tier *t);

/* Batch I/O with latency and byte accounting; same contract as the ops. */
int tier_read(struct tier *t, struct tier_io *ios, unsigned n);
int tier_write(struct tier *t, struct tier_io *ios, unsigned n);
/* CPU address of a slot, or NULL when the tier is not host-addressable. */
void *tier_slot_addr(struct tier *t, uint64_t slot);
/* The tier's probe(), or 0 for a tier without one. */
int tier_probe(struct tier *t);

/* Appends tier.<name>.{capacity_bytes,slot_size,slots,used_slots,used_bytes,pages,reserved_slots,
 * reads,writes,read_bytes,write_bytes,errors,csum_failures,read_batch.*,write_batch.*} and the
 * tier's own (used_* and pages count the slots pages hold, not reserved ones). */
void tier_stats(struct tier *t, struct stats_buf *sb);

static inline size_t tier_round_up(size_t v)
{
	return (v + TIER_ALIGN - 1) & ~(size_t)(TIER_ALIGN - 1);
}

#endif
