/*
 * Append: a layer's new tokens fill the sink, then the window; each page's worth that leaves
 * the window is inserted into the index in one batch, and the pages the index reports changed
 * are (re)written to the store: the new tokens' rows are appended to the page's stored rows
 * (read back when the page already existed), and the pages' key and value sums for the rest
 * term (index/select.h) are kept up to date.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "engine_impl.h"
#include "policy.h"

static int layer_buffers(struct engine *e, struct seq *s, uint32_t layer)
{
	uint32_t h, hk = s->p.shape.kv_heads;
	struct head_state *hs = &s->hs[(size_t)layer * hk];
	struct idx_params ip;
	uint64_t bytes;
	int err;

	if (hs[0].win_k)
		return 0;
	bytes = (uint64_t)hk * (2 * (s->S + s->Wcap) * s->row + IDX_HEAD_BYTES(s->p.shape.head_dim));
	err = engine_charge(e, s, bytes);
	if (err)
		return err;
	/* A layer's buffers and indexes come with its first tokens: opening a sequence of a large
	 * model costs nothing until it is used. */
	idx_params_default(&ip, s->p.shape.head_dim);
	for (h = 0; h < hk; h++) {
		/* A seed per head, so heads do not share projections by accident. */
		ip.seed = 0x1ce0000ull + (uint64_t)layer * hk + h;
		if (idx_new(&ip, &hs[h].ix))
			goto out_free;
		select_sums_init(&hs[h].sums, s->p.shape.head_dim);
		hs[h].sink_k = s->S ? malloc(s->S * s->row) : NULL;
		hs[h].sink_v = s->S ? malloc(s->S * s->row) : NULL;
		hs[h].win_k = malloc(s->Wcap * s->row);
		hs[h].win_v = malloc(s->Wcap * s->row);
		if ((s->S && (!hs[h].sink_k || !hs[h].sink_v)) || !hs[h].win_k || !hs[h].win_v)
			goto out_free;
	}
	s->bytes += bytes;
	return 0;
out_free:
	for (h = 0; h < hk; h++) {
		free(hs[h].sink_k);
		free(hs[h].sink_v);
		free(hs[h].win_k);
		free(hs[h].win_v);
		idx_free(hs[h].ix);
		hs[h].sink_k = hs[h].sink_v = hs[h].win_k = hs[h].win_v = NULL;
		hs[h].ix = NULL;
	}
	engine_uncharge(e, s, bytes);
	return -ENOMEM;
}

int engine_store_read(struct engine *e, struct store_page *pg, unsigned n)
{
	return e->pol ? policy_get(e->pol, pg, n) : store_get(e->store, pg, n);
}

static int engine_store_write(struct engine *e, struct store_page *pg, unsigned n)
{
	return e->pol ? policy_put(e->pol, pg, n) : store_put(e->store, pg, n, 0);
}

/*
 * Inserts n evicted tokens (rows ek/ev, storage dtype) into head h's index and rewrites every
 * page it reports changed: stored rows (read back) + the new tokens' rows. Pages only grow and
 * tokens are appended to a page's list, so a page's first old-fill tokens are the stored rows.
 */
static int index_tokens(struct engine *e, struct seq *s, uint32_t layer, uint32_t h,
			const unsigned char *ek, const unsigned char *ev, uint32_t n,
			unsigned char *pbuf)
{
	struct head_state *st = &s->hs[(size_t)layer * s->p.shape.kv_heads + h];
	struct store_page pg[BATCH];
	uint32_t ids[BATCH], pos[P], first, fill, ver, t;
	size_t nd, i, slot = e->o.slot_bytes;
	int err;

	first = (uint32_t)idx_ntokens(st->ix);
	err = first ? idx_insert(st->ix, ek, n, s->dt) : idx_build(st->ix, ek, n, s->dt);
	if (err)
		return err;
	err = select_sums_reserve(&st->sums, (uint32_t)idx_npages(st->ix));
	if (err)
		return err;
	do {
		nd = idx_take_dirty(st->ix, ids, BATCH);
		for (i = 0; i < nd; i++) {
			struct store_page_info info;
			unsigned char *b = pbuf + i * slot;
			uint32_t old = 0;

			pg[i] = (struct store_page){ .key = { s->id, layer, h, ids[i] },
						     .acct = s->acct };
			err = idx_page_tokens(st->ix, ids[i], pos, &fill, &ver);
			if (err)
				return err;
			if (store_lookup(e->store, &pg[i].key, &info) == 0) {
				old = info.fill;
				pg[i].buf = b;
				pg[i].len = (uint32_t)slot;
				err = engine_store_read(e, &pg[i], 1);
				if (err)
					return err;
				if (pg[i].fill != old || old > fill)
					return -EIO;
				/* V rows move right to make room for the new K rows. */
				memmove(b + (size_t)fill * s->row, b + (size_t)old * s->row,
					(size_t)old * s->row);
			}
			for (t = 0; t < fill; t++) {
				uint32_t r = pos[t] - first;

				/* The contract, checked: old tokens first, then this batch's. */
				if ((t < old) != (pos[t] < first) || (t >= old && r >= n))
					return -EIO;
				if (t < old)
					continue;
				memcpy(b + (size_t)t * s->row, ek + (size_t)r * s->row, s->row);
				memcpy(b + (size_t)(fill + t) * s->row, ev + (size_t)r * s->row, s->row);
				select_sums_add(&st->sums, ids[i], ek + (size_t)r * s->row,
						ev + (size_t)r * s->row, s->dt);
			}
			pg[i].buf = b;
			pg[i].len = (uint32_t)(2 * fill * s->row);
			pg[i].fill = fill;
			pg[i].version = ver;
		}
		if (nd) {
			err = engine_store_write(e, pg, (unsigned)nd);
			if (err)
				return err;
		}
	} while (nd == BATCH);
	return 0;
}

int engine_append(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer, uint32_t n,
		  const void *k, const void *v)
{
	struct seq *s = engine_seq_get(e, owner, id);
	uint64_t t0 = clock_now_ns(), bytes;
	uint32_t hk, h, d, tosink, towin, w, evict, t, x, etok;
	unsigned char *ek, *ev, *pbuf;
	struct head_state *hs;
	uint64_t pages = 0;
	int err;

	if (!s)
		return -ENOENT;
	if (s->broken)
		return -EIO;
	if (layer >= s->p.shape.layers || !n || n > (1u << 24) || !k || !v)
		return -EINVAL;
	hk = s->p.shape.kv_heads;
	d = s->p.shape.head_dim;
	hs = &s->hs[(size_t)layer * hk];
	err = layer_buffers(e, s, layer);
	if (err)
		return err;
	/* How many tokens leave the window: the same for every head of the layer. Everything that
	 * can be refused (memory, store space) is checked before any state changes. */
	tosink = s->sink_n[layer] < s->S ? s->S - s->sink_n[layer] : 0;
	if (tosink > n)
		tosink = n;
	towin = n - tosink;
	w = hs[0].win_n + towin;
	evict = 0;
	while (w >= s->Wcap) {
		w -= P;
		evict++;
	}
	etok = evict * P;
	/* Per token: the index's fp32 key and overhead, plus its share of the page sums (counted
	 * as if pages held 4 tokens, which covers the arrays' doubling: the index fills pages to
	 * ~14). */
	bytes = (uint64_t)hk * etok * ((uint64_t)d * sizeof(float) + IDX_TOKEN_OVERHEAD +
				       select_sums_page_bytes(d) / 4);
	if (etok) {
		/* Without a slower tier to demote to, the DRAM tier must have room for what this
		 * append creates, or it fails half-way and the sequence is lost (-EIO). The index
		 * fills pages to ~14-15 tokens on average (docs/INDEX.md); twice the full-page
		 * count plus one batch of rewritten pages is the margin asked for. */
		if (!e->pol && tier_free_slots(e->tiers[0]) < (uint64_t)hk * 2 * evict + BATCH)
			return -ENOSPC;
		err = engine_charge(e, s, bytes);
		if (err)
			return err;
		err = buf_grow(&s->scr, &s->scr_cap, 2 * (size_t)etok * s->row + BATCH * e->o.slot_bytes, 1);
		if (err) {
			engine_uncharge(e, s, bytes);
			return err;
		}
		s->bytes += bytes;
	}
	ek = s->scr;
	ev = ek + (size_t)etok * s->row;
	pbuf = ev + (size_t)etok * s->row;
	for (h = 0; h < hk; h++) {
		struct head_state *st = &hs[h];
		const unsigned char *kh = (const unsigned char *)k + (size_t)h * n * s->row;
		const unsigned char *vh = (const unsigned char *)v + (size_t)h * n * s->row;
		uint32_t sn = s->sink_n[layer], ne = 0;

		for (t = 0; t < tosink; t++, sn++) {
			memcpy(st->sink_k + (size_t)sn * s->row, kh + (size_t)t * s->row, s->row);
			memcpy(st->sink_v + (size_t)sn * s->row, vh + (size_t)t * s->row, s->row);
		}
		for (; t < n; t++) {
			uint32_t at = (st->win_start + st->win_n) % s->Wcap;

			memcpy(st->win_k + (size_t)at * s->row, kh + (size_t)t * s->row, s->row);
			memcpy(st->win_v + (size_t)at * s->row, vh + (size_t)t * s->row, s->row);
			st->win_n++;
			if (st->win_n < s->Wcap)
				continue;
			/* The oldest page's worth leaves the window for the index. */
			for (x = 0; x < P; x++, ne++) {
				uint32_t r = (st->win_start + x) % s->Wcap;

				memcpy(ek + (size_t)ne * s->row, st->win_k + (size_t)r * s->row, s->row);
				memcpy(ev + (size_t)ne * s->row, st->win_v + (size_t)r * s->row, s->row);
			}
			st->win_start = (st->win_start + P) % s->Wcap;
			st->win_n -= P;
		}
		if (ne) {
			err = index_tokens(e, s, layer, h, ek, ev, ne, pbuf);
			if (err) {
				/* The index and the store no longer agree for this head: the sequence
				 * cannot be trusted any more. Its owner gets -EIO and should drop it. */
				s->broken = err;
				return err;
			}
		}
	}
	s->sink_n[layer] += tosink;
	s->ntok[layer] += n;
	for (h = 0; h < hk * s->p.shape.layers; h++)
		pages += s->hs[h].ix ? idx_npages(s->hs[h].ix) : 0;
	__atomic_store_n(&s->pages, pages, __ATOMIC_RELAXED);
	hist_add(&e->h_append, clock_now_ns() - t0);
	return 0;
}
