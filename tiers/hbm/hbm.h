/*
 * The HBM page cache: a pool of page slots in GPU memory (cudaMalloc, never managed memory)
 * holding each layer's attention working set (sink + selected + window pages) and, in the slots
 * not in use, a cache of recently selected pages so that a page selected again, unchanged, is
 * not moved again (tiers/hbm/hbm_cache.h keeps the books).
 *
 * What drives it today: the GPU tests (tests/kernels/test_hbm_gpu.c) and `icebench gpu`. It is
 * not yet a tier the engine opens: icecached and embedded contexts keep pages in the DRAM and
 * NVMe tiers only, and clients fetch them (ice_fetch) and attend them themselves. Nor is it a
 * struct tier_ops tier: the working sets own every slot, the page store places nothing here.
 *
 * A step, per layer: hbm_load() places every requested page (hit: nothing to do; miss: a slot,
 * then one kern_gather launch moves all misses from pinned DRAM, zero-copy), and fills the
 * kern_attn page table; after the attention has been enqueued, hbm_release() unpins them.
 *
 * Failure: a CUDA error other than a bad argument or out-of-memory (an illegal address, a lost
 * device) marks the cache failed: every later call returns -EIO without touching the GPU, so a
 * caller (hbm_failed()) can keep serving from host memory.
 *
 * Export: hbm_export() gives a CUDA IPC handle for the whole pool; a client process opens it
 * (kern_ipc_open) and reads slot s at s * slot_bytes, so its attention kernel reads the working
 * set in place.
 *
 * One owner thread; the stream passed to hbm_load orders the gather before the attention.
 */
#ifndef ICE_TIERS_HBM_H
#define ICE_TIERS_HBM_H

#include <stddef.h>
#include <stdint.h>

#include "hbm_cache.h"
#include "kern.h"
#include "stats.h"

struct hbm_config {
	int device;         /* CUDA device ordinal */
	uint32_t nslots;    /* slots in the pool */
	size_t slot_bytes;  /* a multiple of 16 (the store's slot_size) */
	uint32_t max_batch; /* most pages one hbm_load takes (0 = 1024) */
};

/* One page a working set needs. src: device-visible address of the page in pinned DRAM (the
 * DRAM tier's pool, registered with kern_host_register); len: bytes to move (<= slot_bytes,
 * a multiple of 16; the whole slot is fine). */
struct hbm_req {
	struct hbm_key key;
	uint64_t version;
	uint64_t src;
	uint32_t fill;
	uint32_t len;
};

struct hbm;

/* -EINVAL bad config, -ENODEV no GPU, -ENOMEM. */
int hbm_open(const struct hbm_config *cfg, struct hbm **ret_hbm);
void hbm_close(struct hbm *h);

/*
 * Places n pages (n <= max_batch) and enqueues one gather for the misses on `stream`.
 * ret_pages[i] = {slot, fill, skip 0} of reqs[i], ready for kern_attn once the stream reaches
 * it (set skip from the page ref's mask to attend only chosen rows).
 * Returns the number of pages moved (>= 0); every page is then pinned until hbm_release.
 * On error nothing stays pinned: -EINVAL, -ENOSPC (all slots pinned), -EIO (GPU failed).
 */
int hbm_load(struct hbm *h, const struct hbm_req *reqs, uint32_t n, struct kern_page *ret_pages,
	     void *stream);
/* Unpins pages returned by hbm_load (after the work that reads them is enqueued). */
void hbm_release(struct hbm *h, const struct kern_page *pages, uint32_t n);
/* Waits for `stream`; a GPU error found here marks the cache failed (-EIO). */
int hbm_sync(struct hbm *h, void *stream);
/* Drops a sequence's cached pages. */
uint32_t hbm_drop_seq(struct hbm *h, uint64_t seq);

int hbm_failed(const struct hbm *h);
/* Device address of slot 0, slot size and count (for kern_attn_args). */
void *hbm_pool(const struct hbm *h);
size_t hbm_slot_bytes(const struct hbm *h);
uint32_t hbm_nslots(const struct hbm *h);

/* CUDA IPC handle of the pool (the client opens it with kern_ipc_open). */
int hbm_export(struct hbm *h, struct kern_ipc_handle *ret_handle);

/* Host <-> slot copies (synchronous), for checks and tools. */
int hbm_write_slot(struct hbm *h, uint32_t slot, const void *buf, size_t len);
int hbm_read_slot(struct hbm *h, uint32_t slot, void *buf, size_t len);

/* <prefix>.{failed,hits,misses,evictions,stale,pinned,cached,loads,moved_pages,moved_bytes}
 * (the GPU tests pass "hbm"). */
void hbm_stats(const struct hbm *h, struct stats_buf *sb, const char *prefix);

#endif
