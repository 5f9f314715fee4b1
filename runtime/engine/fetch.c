/* Fetch: copies a page table's pages out (sink and window from the engine's rows, retrieved
 * pages through the store, checksums verified), in the ice_fetch layout. */
#include <errno.h>
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "engine_impl.h"

static int fetch_batch(struct engine *e, struct seq *s, struct store_page *pg, unsigned nb,
		       unsigned char *const *outs)
{
	unsigned i;
	int err;

	err = engine_store_read(e, pg, nb);
	if (err)
		return err;
	for (i = 0; i < nb; i++) {
		size_t rows = (size_t)pg[i].fill * s->row;

		if (pg[i].fill > P || pg[i].len != 2 * rows)
			return -EIO;
		memcpy(outs[i], pg[i].buf, rows);
		memcpy(outs[i] + P * s->row, (unsigned char *)pg[i].buf + rows, rows);
	}
	return 0;
}

int engine_fetch(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer,
		 const struct ice_page_ref *refs, size_t n, void *buf, size_t cap,
		 struct engine_ws *ws)
{
	struct seq *s = engine_seq_get(e, owner, id);
	uint64_t t0 = clock_now_ns();
	struct store_page pg[BATCH];
	unsigned char *outs[BATCH];
	unsigned nb = 0;
	size_t pb, i;
	uint32_t hk, x;
	int err;

	if (!s)
		return -ENOENT;
	if (s->broken)
		return -EIO;
	if (layer >= s->p.shape.layers || (n && (!refs || !buf)) || !ws)
		return -EINVAL;
	hk = s->p.shape.kv_heads;
	pb = 2 * P * s->row;
	if (n > cap / pb)
		return -ENOSPC;
	/* Check every ref before writing anything. */
	for (i = 0; i < n; i++) {
		const struct ice_page_ref *r = &refs[i];
		const struct head_state *st;

		if (r->kv_head >= hk)
			return -EINVAL;
		st = &s->hs[(size_t)layer * hk + r->kv_head];
		if ((r->kind == ICE_PAGE_SINK && r->page >= sink_pages(s, layer)) ||
		    (r->kind == ICE_PAGE_WINDOW && r->page >= (st->win_n + P - 1) / P) ||
		    (r->kind == ICE_PAGE_RETRIEVED && r->page >= head_pages(st)) ||
		    r->kind > ICE_PAGE_WINDOW)
			return -EINVAL;
	}
	err = buf_grow(&ws->buf, &ws->cap, BATCH * e->o.slot_bytes, 1);
	if (err)
		return err;
	for (i = 0; i < n; i++) {
		const struct ice_page_ref *r = &refs[i];
		const struct head_state *st = &s->hs[(size_t)layer * hk + r->kv_head];
		unsigned char *ko = (unsigned char *)buf + i * pb, *vo = ko + P * s->row;
		uint32_t fill;

		memset(ko, 0, pb);
		if (r->kind == ICE_PAGE_RETRIEVED) {
			pg[nb] = (struct store_page){ .key = { s->id, layer, r->kv_head, r->page },
						      .buf = (unsigned char *)ws->buf +
							     (size_t)nb * e->o.slot_bytes,
						      .len = (uint32_t)e->o.slot_bytes };
			outs[nb++] = ko;
			if (nb == BATCH) {
				err = fetch_batch(e, s, pg, nb, outs);
				if (err)
					return err;
				nb = 0;
			}
			continue;
		}
		if (r->kind == ICE_PAGE_SINK) {
			fill = s->sink_n[layer] - r->page * P;
			fill = fill > P ? P : fill;
			memcpy(ko, st->sink_k + (size_t)r->page * P * s->row, fill * s->row);
			memcpy(vo, st->sink_v + (size_t)r->page * P * s->row, fill * s->row);
			continue;
		}
		fill = st->win_n - r->page * P;
		fill = fill > P ? P : fill;
		for (x = 0; x < fill; x++) {
			uint32_t at = (st->win_start + r->page * P + x) % s->Wcap;

			memcpy(ko + (size_t)x * s->row, st->win_k + (size_t)at * s->row, s->row);
			memcpy(vo + (size_t)x * s->row, st->win_v + (size_t)at * s->row, s->row);
		}
	}
	if (nb) {
		err = fetch_batch(e, s, pg, nb, outs);
		if (err)
			return err;
	}
	hist_add(&e->h_fetch, clock_now_ns() - t0);
	return 0;
}

/* What a connection's ref staging may keep between requests (uncharged then). */
#define REFS_KEEP (64u << 10)

int engine_fetch_shared(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer,
			const struct ice_page_ref *refs, size_t n, void *buf, size_t cap,
			struct engine_ws *refs_ws, struct engine_ws *ws)
{
	struct seq *s = engine_seq_get(e, owner, id);
	uint64_t bytes = (uint64_t)n * sizeof(*refs);
	int err;

	if (!s)
		return -ENOENT;
	if (s->broken)
		return -EIO;
	if (!refs_ws || (n && !refs))
		return -EINVAL;
	/* Both before a byte of the refs is read: a request that cannot be served costs nothing. */
	if (e->o.fetch_max_refs && n > e->o.fetch_max_refs)
		return -E2BIG;
	if (n > cap / (2 * P * s->row))
		return -ENOSPC;
	err = engine_charge(e, s, bytes);
	if (err)
		return err;
	err = buf_grow(&refs_ws->buf, &refs_ws->cap, bytes, 1);
	if (!err) {
		/* what is checked is what is used: the client cannot change the copy */
		memcpy(refs_ws->buf, refs, bytes);
		err = engine_fetch(e, owner, id, layer, refs_ws->buf, n, buf, cap, ws);
	}
	if (refs_ws->cap > REFS_KEEP)
		engine_ws_done(refs_ws);
	engine_uncharge(e, s, bytes);
	return err;
}
