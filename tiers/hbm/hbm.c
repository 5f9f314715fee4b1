/*
 * HBM page cache: the slot pool in GPU memory and the per-layer working-set loads, driven by
 * the GPU tests and `icebench gpu` (not yet by the engine, see hbm.h). CUDA stays behind kern_*
 * (kernels/kern.h); this file only decides what moves where.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hbm.h"

/* Copy-descriptor chunks in flight: a chunk is rewritten only after the gather that read it
 * has run (its event), so loads of consecutive layers do not wait for each other. */
#define HBM_RING 8

struct hbm {
	struct hbm_config cfg;
	struct hbm_cache *cache;
	void *pool;
	struct kern_copy *desc; /* pinned mapped host: HBM_RING chunks of max_batch */
	uint64_t desc_dev;
	void *ev[HBM_RING];
	uint8_t ev_live[HBM_RING];
	uint32_t ring_next;
	int failed;
	uint64_t loads, moved_pages, moved_bytes;
};

/* Errors that mean the GPU (or its context) is gone, not that the call was wrong. */
static int gpu_fatal(int r)
{
	return r == -EIO || r == -ENODEV;
}

static int note(struct hbm *h, int r)
{
	if (r < 0 && gpu_fatal(r)) {
		h->failed = 1;
		/* Whatever the slots held can no longer be trusted. */
		hbm_cache_reset(h->cache);
		return -EIO;
	}
	return r;
}

int hbm_open(const struct hbm_config *cfg, struct hbm **ret_hbm)
{
	struct hbm *h;
	int r, i;

	if (!cfg || !ret_hbm || !cfg->nslots || !cfg->slot_bytes || cfg->slot_bytes % 16)
		return -EINVAL;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->cfg = *cfg;
	if (!h->cfg.max_batch)
		h->cfg.max_batch = 1024;
	r = kern_gpu_select(cfg->device);
	if (r)
		goto out_free;
	r = hbm_cache_new(cfg->nslots, &h->cache);
	if (r)
		goto out_free;
	r = kern_dev_alloc((size_t)cfg->nslots * cfg->slot_bytes, &h->pool);
	if (r)
		goto out_cache;
	r = kern_host_alloc((size_t)HBM_RING * h->cfg.max_batch * sizeof(*h->desc),
			    (void **)&h->desc, &h->desc_dev);
	if (r)
		goto out_pool;
	for (i = 0; i < HBM_RING; i++) {
		r = kern_event_new(&h->ev[i]);
		if (r)
			goto out_events;
	}
	*ret_hbm = h;
	return 0;

out_events:
	while (i-- > 0)
		kern_event_free(h->ev[i]);
	kern_host_free(h->desc);
out_pool:
	kern_dev_free(h->pool);
out_cache:
	hbm_cache_free(h->cache);
out_free:
	free(h);
	return r;
}

void hbm_close(struct hbm *h)
{
	int i;

	if (!h)
		return;
	for (i = 0; i < HBM_RING; i++)
		kern_event_free(h->ev[i]);
	kern_host_free(h->desc);
	kern_dev_free(h->pool);
	hbm_cache_free(h->cache);
	free(h);
}

int hbm_failed(const struct hbm *h)
{
	return h ? h->failed : 1;
}

void *hbm_pool(const struct hbm *h)
{
	return h ? h->pool : NULL;
}

size_t hbm_slot_bytes(const struct hbm *h)
{
	return h ? h->cfg.slot_bytes : 0;
}

uint32_t hbm_nslots(const struct hbm *h)
{
	return h ? h->cfg.nslots : 0;
}

void hbm_release(struct hbm *h, const struct kern_page *pages, uint32_t n)
{
	uint32_t i;

	if (!h || !pages)
		return;
	for (i = 0; i < n; i++)
		hbm_cache_unpin(h->cache, pages[i].slot);
}

static uint32_t slot_of(const struct hbm *h, uint64_t dst)
{
	return (uint32_t)((dst - (uint64_t)(uintptr_t)h->pool) / h->cfg.slot_bytes);
}

int hbm_load(struct hbm *h, const struct hbm_req *reqs, uint32_t n, struct kern_page *ret_pages,
	     void *stream)
{
	struct kern_copy *chunk;
	uint32_t i, j, nmiss = 0, ci;
	size_t len = 0;
	int r;

	if (!h || (n && (!reqs || !ret_pages)) || n > h->cfg.max_batch)
		return -EINVAL;
	if (h->failed)
		return -EIO;
	for (i = 0; i < n; i++) {
		if (reqs[i].len > h->cfg.slot_bytes || reqs[i].len % 16 || !reqs[i].src ||
		    reqs[i].src % 16 || reqs[i].fill > UINT16_MAX)
			return -EINVAL;
		/* One gather moves one length for every page: the longest asked for. */
		if (reqs[i].len > len)
			len = reqs[i].len;
	}

	/* Misses are listed in the next descriptor chunk (pinned, device-mapped); a short list is
	 * passed inline instead and the chunk is only scratch. */
	ci = h->ring_next;
	chunk = h->desc + (size_t)ci * h->cfg.max_batch;
	if (h->ev_live[ci]) {
		/* The gather that last read this chunk must have run before it is rewritten. */
		r = kern_event_sync(h->ev[ci]);
		if (r)
			return note(h, r);
		h->ev_live[ci] = 0;
	}
	for (i = 0; i < n; i++) {
		uint32_t slot;

		r = hbm_cache_get(h->cache, &reqs[i].key, reqs[i].version, &slot);
		if (r < 0)
			goto out_undo;
		if (r == 0) {
			chunk[nmiss].src = reqs[i].src;
			chunk[nmiss].dst =
				(uint64_t)(uintptr_t)h->pool + (uint64_t)slot * h->cfg.slot_bytes;
			nmiss++;
		}
		ret_pages[i].slot = slot;
		ret_pages[i].fill = (uint16_t)reqs[i].fill;
		ret_pages[i].skip = 0;
	}
	if (nmiss && nmiss <= KERN_GATHER_INLINE_MAX) {
		/* A layer's worth: the list travels in the launch itself (no upload, no ring). */
		r = kern_gather_inline(chunk, nmiss, len, stream);
		if (r) {
			r = note(h, r);
			goto out_undo;
		}
	} else if (nmiss) {
		const struct kern_copy *dev_chunk =
			(const struct kern_copy *)(uintptr_t)(h->desc_dev +
							      (uint64_t)ci * h->cfg.max_batch *
								      sizeof(*chunk));

		r = kern_gather(dev_chunk, nmiss, len, stream);
		if (!r)
			r = kern_event_record(h->ev[ci], stream);
		if (r) {
			r = note(h, r);
			goto out_undo;
		}
		h->ev_live[ci] = 1;
		h->ring_next = (ci + 1) % HBM_RING;
	}
	h->loads++;
	h->moved_pages += nmiss;
	h->moved_bytes += (uint64_t)nmiss * len;
	return (int)nmiss;

out_undo:
	/* Misses were never filled; nothing placed by this call stays pinned. */
	for (j = 0; j < nmiss; j++)
		hbm_cache_invalidate(h->cache, slot_of(h, chunk[j].dst));
	for (j = 0; j < i; j++)
		hbm_cache_unpin(h->cache, ret_pages[j].slot);
	return r;
}

int hbm_sync(struct hbm *h, void *stream)
{
	if (!h)
		return -EINVAL;
	if (h->failed)
		return -EIO;
	return note(h, kern_stream_sync(stream));
}

uint32_t hbm_drop_seq(struct hbm *h, uint64_t seq)
{
	return h ? hbm_cache_drop_seq(h->cache, seq) : 0;
}

int hbm_export(struct hbm *h, struct kern_ipc_handle *ret_handle)
{
	if (!h || !ret_handle)
		return -EINVAL;
	if (h->failed)
		return -EIO;
	return note(h, kern_ipc_export(h->pool, ret_handle));
}

static int slot_check(const struct hbm *h, uint32_t slot, const void *buf, size_t len)
{
	if (!h || !buf || slot >= h->cfg.nslots || len > h->cfg.slot_bytes)
		return -EINVAL;
	return h->failed ? -EIO : 0;
}

int hbm_write_slot(struct hbm *h, uint32_t slot, const void *buf, size_t len)
{
	int r = slot_check(h, slot, buf, len);

	if (r)
		return r;
	return note(h, kern_memcpy((char *)h->pool + (size_t)slot * h->cfg.slot_bytes, buf, len));
}

int hbm_read_slot(struct hbm *h, uint32_t slot, void *buf, size_t len)
{
	int r = slot_check(h, slot, buf, len);

	if (r)
		return r;
	return note(h, kern_memcpy(buf, (char *)h->pool + (size_t)slot * h->cfg.slot_bytes, len));
}

void hbm_stats(const struct hbm *h, struct stats_buf *sb, const char *p)
{
	struct hbm_cache_stats st;

	if (!h || !sb)
		return;
	hbm_cache_get_stats(h->cache, &st);
	stats_put_u64(sb, p, "failed", (uint64_t)h->failed);
	stats_put_u64(sb, p, "hits", st.hits);
	stats_put_u64(sb, p, "misses", st.misses);
	stats_put_u64(sb, p, "evictions", st.evictions);
	stats_put_u64(sb, p, "stale", st.stale);
	stats_put_u64(sb, p, "pinned", st.pinned);
	stats_put_u64(sb, p, "cached", st.cached);
	stats_put_u64(sb, p, "loads", h->loads);
	stats_put_u64(sb, p, "moved_pages", h->moved_pages);
	stats_put_u64(sb, p, "moved_bytes", h->moved_bytes);
}
