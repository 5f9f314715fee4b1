/*
 * Append: a layer's new tokens fill the sink, then the window; each page's worth that leaves
 * the window is inserted into the index in one batch, and the pages the index reports changed
 * are (re)written to the store: the new tokens' rows are appended to the page's stored rows
 * (read back when the page already existed), and the pages' mean keys and values for the
 * rest term (index/select.h) are set from the whole page.
 *
 * All or nothing. Whatever can be refused is settled before anything visible changes:
 *   1. host memory is charged (the index's share of the tokens, the scratch);
 *   2. every head's index takes its tokens, with a mark to roll back to (idx_rollback): only
 *      now is it known how many store pages this append creates and rewrites;
 *   3. that many slots are reserved in the store for the owner (a reservation: no other
 *      client can take them before the writes; the owner's quotas are checked there). When the
 *      tiers are full or the quota is reached, the indexes roll back and the append returns
 *      -ENOSPC or -EDQUOT with the sequence exactly as it was;
 *   4. the pages are written from the reservation, which cannot run out;
 *   5. only then do the sink and the window take the new tokens.
 * What can still fail in 4 is a tier's I/O or a corrupt stored page (-EIO, -EBADMSG): then
 * the index and the store disagree and the sequence is broken (-EIO from then on).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "engine_impl.h"
#include "policy.h"

/*
 * Tokens leaving the window in one append from which they are indexed as a segment of their
 * own (idx_build: new cells and pages) rather than inserted into the nearest cells (each
 * insert appends to a cell's last page, which the store then rewrites: a read and a write of a
 * page per token and head, what held ingest to a few hundred tokens per second). Below it
 * (decode, small appends) a segment would be too small to group tokens well.
 */
#define SEGMENT_MIN 512u

/* Host bytes per token a head's index and sums grow by: what the layer's heads use per token
 * so far, or for a layer without tokens yet, a page of 8 tokens' share of the sketch and sums
 * plus the bookkeeping (the index fills pages to ~14). */
static uint64_t token_bytes(const struct seq *s, const struct head_state *hs, uint32_t hk,
			    uint64_t used)
{
	uint64_t ntok = (uint64_t)idx_ntokens(hs[0].ix) * hk, d = s->p.shape.head_dim;

	if (ntok >= 4096)
		return (used + ntok - 1) / ntok + 8;
	return (d * 8 + select_sums_page_bytes((uint32_t)d)) / 8 + d * 4 / 64 + 32;
}

/* The charge taken for an append (`charged`) becomes what it used (`used`): the estimate's
 * surplus comes back, a shortfall is charged even past the limits (the memory is in use; the
 * next append is refused instead). */
static void settle_charge(struct engine *e, struct seq *s, uint64_t charged, uint64_t used)
{
	if (used < charged)
		engine_uncharge(e, s, charged - used);
	else if (used > charged && engine_charge(e, s, used - charged))
		engine_charge_force(e, s, used - charged);
	s->bytes += used;
}

static int layer_buffers(struct engine *e, struct seq *s, uint32_t layer)
{
	uint32_t h, hk = s->p.shape.kv_heads;
	struct head_state *hs = &s->hs[(size_t)layer * hk];
	struct idx_params ip;
	uint64_t bytes;
	int err;

	if (hs[0].win_k)
		return 0;
	bytes = (uint64_t)hk *
		(2 * (s->S + s->Wcap) * s->row + IDX_HEAD_BYTES(s->p.shape.head_dim));
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
		hs[h].src = (struct page_src){ e, s, layer, h };
		idx_set_keys(hs[h].ix,
			     &(struct idx_keys){ engine_page_keys, &hs[h].src, e->o.slot_bytes });
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

static int store_write(struct engine *e, struct store_page *pg, unsigned n, struct store_resv *resv)
{
	return e->pol ? policy_put_resv(e->pol, pg, n, resv) :
			store_put_resv(e->store, pg, n, 0, resv);
}

/* Slots for this append's pages, for the owner, set aside before anything is written. */
static int store_reserve_for(struct engine *e, struct store_resv *resv, uint64_t n)
{
	static const unsigned dram_only[1] = { 0 };

	return e->pol ? policy_reserve(e->pol, resv, n) :
			store_reserve(e->store, resv, dram_only, 1, n);
}

/*
 * The rows that leave head st's window in this append, oldest first: the window is a FIFO, so
 * they are the first etok of (its tokens, then the new tokens after those for the sink).
 * Nothing changes; ek or ev may be NULL (that half is not wanted).
 */
static void evicted_rows(const struct seq *s, const struct head_state *st, const unsigned char *kh,
			 const unsigned char *vh, uint32_t tosink, uint32_t etok, unsigned char *ek,
			 unsigned char *ev)
{
	uint32_t x;

	for (x = 0; x < etok; x++) {
		const unsigned char *kr, *vr;

		if (x < st->win_n) {
			uint32_t r = (st->win_start + x) % s->Wcap;

			kr = st->win_k + (size_t)r * s->row;
			vr = st->win_v + (size_t)r * s->row;
		} else {
			uint32_t t = tosink + (x - st->win_n);

			kr = kh + (size_t)t * s->row;
			vr = vh + (size_t)t * s->row;
		}
		if (ek)
			memcpy(ek + (size_t)x * s->row, kr, s->row);
		if (ev)
			memcpy(ev + (size_t)x * s->row, vr, s->row);
	}
}

/* The new tokens into the sink and the window (step 5: cannot fail). */
static void commit_rows(const struct seq *s, struct head_state *st, const unsigned char *kh,
			const unsigned char *vh, uint32_t sn, uint32_t tosink, uint32_t n)
{
	uint32_t t;

	for (t = 0; t < tosink; t++, sn++) {
		memcpy(st->sink_k + (size_t)sn * s->row, kh + (size_t)t * s->row, s->row);
		memcpy(st->sink_v + (size_t)sn * s->row, vh + (size_t)t * s->row, s->row);
	}
	for (; t < n; t++) {
		uint32_t at = (st->win_start + st->win_n) % s->Wcap;

		memcpy(st->win_k + (size_t)at * s->row, kh + (size_t)t * s->row, s->row);
		memcpy(st->win_v + (size_t)at * s->row, vh + (size_t)t * s->row, s->row);
		if (++st->win_n == s->Wcap) {
			/* the oldest page's worth has left for the index */
			st->win_start = (st->win_start + P) % s->Wcap;
			st->win_n -= P;
		}
	}
}

/*
 * Rewrites every page head h's index reports changed since the insert of the n tokens ek/ev
 * (rows in storage dtype) that became tokens first..first+n-1: stored rows (read back) + the
 * new tokens' rows. Pages only grow and tokens are appended to a page's list, so a page's
 * first old-fill tokens are the stored rows.
 */
static int write_pages(struct engine *e, struct seq *s, uint32_t layer, uint32_t h,
		       const unsigned char *ek, const unsigned char *ev, uint32_t n, uint32_t first,
		       unsigned char *pbuf, struct store_resv *resv)
{
	struct head_state *st = &s->hs[(size_t)layer * s->p.shape.kv_heads + h];
	struct store_page pg[BATCH];
	uint32_t ids[BATCH], pos[P], fill, ver, t;
	size_t nd, i, slot = e->o.slot_bytes;
	int err;

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
				memcpy(b + (size_t)(fill + t) * s->row, ev + (size_t)r * s->row,
				       s->row);
			}
			/* the whole page is here: its means for the rest term, from all its rows */
			select_sums_set(&st->sums, ids[i], b, b + (size_t)fill * s->row, fill,
					s->dt);
			pg[i].buf = b;
			pg[i].len = (uint32_t)(2 * fill * s->row);
			pg[i].fill = fill;
			pg[i].version = ver;
		}
		if (nd) {
			err = store_write(e, pg, (unsigned)nd, resv);
			if (err)
				return err;
		}
	} while (nd == BATCH);
	return 0;
}

/* The append scratch (evicted rows, page assembly) holds nothing between appends: replaced,
 * not grown, and charged before it is allocated. */
static int scratch_grow(struct engine *e, struct seq *s, size_t need)
{
	unsigned char *p;
	int err;

	if (need <= s->scr_cap)
		return 0;
	err = engine_charge(e, s, need - s->scr_cap);
	if (err)
		return err;
	p = malloc(need);
	if (!p) {
		engine_uncharge(e, s, need - s->scr_cap);
		return -ENOMEM;
	}
	free(s->scr);
	s->bytes += need - s->scr_cap;
	s->scr = p;
	s->scr_cap = need;
	return 0;
}

/*
 * Every key finite (on the raw bits: an all-ones exponent is inf or NaN). The index refuses
 * others, and one taken into the window now would refuse every append that moves it to the
 * index later: refused here, it refuses only this append. K may be unaligned (embedded mode).
 */
static int keys_finite(const unsigned char *k, size_t n, enum ice_dtype dt)
{
	size_t i;

	if (dt == ICE_DTYPE_F32) {
		for (i = 0; i < n; i++) {
			uint32_t u;

			memcpy(&u, k + i * 4, 4);
			if ((u & 0x7f800000u) == 0x7f800000u)
				return 0;
		}
		return 1;
	}
	for (i = 0; i < n; i++) {
		uint16_t u, m = dt == ICE_DTYPE_F16 ? 0x7c00u : 0x7f80u;

		memcpy(&u, k + i * 2, 2);
		if ((u & m) == m)
			return 0;
	}
	return 1;
}

/*
 * Step 2 for a layer's heads: each head's leaving rows into its own buffer, a mark, then its
 * index takes them. Heads are independent (an index and its sums each), so a prefill-sized
 * append spreads them over two threads: a Llama-3-8B prefill spent most of its time here on
 * one core.
 */
struct index_job {
	const struct seq *s;
	struct head_state *hs;
	const unsigned char *k, *v;
	uint32_t n, tosink, etok;
	unsigned char *ek; /* [heads][etok] rows */
	struct idx_mark *mk;
	int *err;
	uint32_t nheads;
	_Atomic uint32_t next;
};

static void *index_heads(void *arg)
{
	struct index_job *j = arg;
	const struct seq *s = j->s;
	uint32_t h;

	while ((h = atomic_fetch_add(&j->next, 1)) < j->nheads) {
		struct head_state *st = &j->hs[h];
		unsigned char *ek = j->ek + (size_t)h * j->etok * s->row;
		int err;

		evicted_rows(s, st, j->k + (size_t)h * j->n * s->row,
			     j->v + (size_t)h * j->n * s->row, j->tosink, j->etok, ek, NULL);
		idx_mark(st->ix, &j->mk[h]);
		/* a prefill's worth becomes a segment of new pages (idx_build), which rewrites no
		 * stored page; a few decode tokens join existing cells */
		err = j->mk[h].ntok && j->etok < SEGMENT_MIN ?
			      idx_insert(st->ix, ek, j->etok, s->dt) :
			      idx_build(st->ix, ek, j->etok, s->dt);
		if (!err)
			err = select_sums_reserve(&st->sums, (uint32_t)idx_npages(st->ix));
		j->err[h] = err;
	}
	return NULL;
}

static void rollback_heads(struct seq *s, uint32_t layer, const struct idx_mark *mk, uint32_t nh)
{
	uint32_t h;

	for (h = nh; h-- > 0;)
		idx_rollback(s->hs[(size_t)layer * s->p.shape.kv_heads + h].ix, &mk[h]);
}

int engine_append(struct engine *e, uint32_t owner, uint32_t id, uint32_t layer, uint32_t n,
		  const void *k, const void *v)
{
	struct seq *s = engine_seq_get(e, owner, id);
	uint64_t t0 = clock_now_ns(), bytes = 0, newp = 0, rewr = 0, before = 0, after = 0;
	uint32_t hk, h, d, tosink, towin, w, evict, etok, sn;
	struct idx_mark mk[64];
	int herr[64];
	struct store_resv resv;
	unsigned char *ek, *ev, *pbuf;
	struct head_state *hs;
	int err;

	if (!s)
		return -ENOENT;
	if (s->broken)
		return -EIO;
	if (layer >= s->p.shape.layers || !n || n > (1u << 24) || !k || !v)
		return -EINVAL;
	hk = s->p.shape.kv_heads;
	d = s->p.shape.head_dim;
	if (!keys_finite(k, (size_t)hk * n * d, s->dt))
		return -EINVAL;
	hs = &s->hs[(size_t)layer * hk];
	err = layer_buffers(e, s, layer);
	if (err)
		return err;
	/* How many tokens leave the window: the same for every head of the layer. */
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
	sn = s->sink_n[layer];
	if (etok) {
		/* 1. What the indexes and sums will use: estimated from what they use per token so
		 * far (a fresh head: as if pages held 8 tokens), settled to the figure they give
		 * once they hold the tokens. */
		err = scratch_grow(e, s,
				   (size_t)(hk + 1) * etok * s->row + BATCH * e->o.slot_bytes);
		if (err)
			return err;
		for (h = 0; h < hk; h++)
			before += head_bytes(&hs[h]);
		bytes = (uint64_t)hk * etok * token_bytes(s, hs, hk, before);
		err = engine_charge(e, s, bytes);
		if (err)
			return err;
		/* the scratch: every head's leaving K rows (step 2, kept for step 4), one head's V
		 * rows, then the page assembly */
		ek = s->scr;
		ev = ek + (size_t)hk * etok * s->row;
		pbuf = ev + (size_t)etok * s->row;
		/* 2. The indexes, undoably (every head's mark is taken; a failed index is as it was). */
		{
			struct index_job job = {
				s, hs, k, v, n, tosink, etok, s->scr, mk, herr, hk
			};
			pthread_t tid;
			int helper;

			atomic_init(&job.next, 0);
			helper = etok >= SEGMENT_MIN && hk > 1 &&
				 pthread_create(&tid, NULL, index_heads, &job) == 0;
			index_heads(&job);
			if (helper)
				pthread_join(tid, NULL);
		}
		for (h = 0; h < hk && !err; h++)
			err = herr[h];
		if (err) {
			rollback_heads(s, layer, mk, hk);
			goto out_uncharge;
		}
		for (h = 0; h < hk; h++) {
			newp += idx_npages(hs[h].ix) - mk[h].npages;
			rewr += idx_ndirty(hs[h].ix) - (idx_npages(hs[h].ix) - mk[h].npages);
		}
		/* 3. Room in the store: every new page, and one batch of rewrites at a time (a
		 * rewrite's new copy is written before its old slot comes back to the reservation). */
		resv = (struct store_resv){ .acct = s->acct };
		err = store_reserve_for(e, &resv, newp + (rewr < BATCH ? rewr : BATCH));
		if (err) {
			rollback_heads(s, layer, mk, hk);
			goto out_uncharge;
		}
		/* 4. The pages. */
		for (h = 0; h < hk && !err; h++) {
			const unsigned char *kh = (const unsigned char *)k + (size_t)h * n * s->row;
			const unsigned char *vh = (const unsigned char *)v + (size_t)h * n * s->row;

			unsigned char *ekh = ek + (size_t)h * etok * s->row; /* from step 2 */

			evicted_rows(s, &hs[h], kh, vh, tosink, etok, NULL, ev);
			err = write_pages(e, s, layer, h, ekh, ev, etok, (uint32_t)mk[h].ntok, pbuf,
					  &resv);
		}
		store_unreserve(e->store, &resv);
		for (h = 0; h < hk; h++)
			after += head_bytes(&hs[h]);
		settle_charge(e, s, bytes, after - before);
		if (err) {
			/* The index and the store no longer agree: the sequence cannot be trusted
			 * any more. Its owner gets -EIO from now on and should drop it. */
			s->broken = err;
			return err;
		}
	}
	/* 5. The sink and the window. */
	for (h = 0; h < hk; h++)
		commit_rows(s, &hs[h], (const unsigned char *)k + (size_t)h * n * s->row,
			    (const unsigned char *)v + (size_t)h * n * s->row, sn, tosink, n);
	s->sink_n[layer] += tosink;
	s->ntok[layer] += n;
	__atomic_store_n(&s->pages, s->pages + newp, __ATOMIC_RELAXED);
	hist_add(&e->h_append, clock_now_ns() - t0);
	return 0;
out_uncharge:
	/* rolled back: what the heads use now is what they used before, bar sums set up for
	 * pages to come */
	for (h = 0; h < hk; h++)
		after += head_bytes(&hs[h]);
	settle_charge(e, s, bytes, after > before ? after - before : 0);
	return err;
}
