/* The engine's sequence table: open, look up, drop (per owner), and a sequence's sizes. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "engine_impl.h"

void engine_seq_free(struct engine *e, struct seq *s)
{
	uint32_t i, nh;

	if (!s)
		return;
	nh = s->hs ? s->p.shape.layers * s->p.shape.kv_heads : 0;
	for (i = 0; i < nh; i++) {
		struct head_state *h = &s->hs[i];

		free(h->sink_k);
		free(h->sink_v);
		free(h->win_k);
		free(h->win_v);
		select_sums_done(&h->sums);
		idx_free(h->ix);
	}
	store_drop_seq(e->store, s->id);
	if (s->acct) {
		engine_uncharge(e, s, s->bytes);
		pthread_mutex_lock(&e->lock);
		e->own[s->acct].nseqs--; /* at 0 the entry is free again */
		pthread_mutex_unlock(&e->lock);
	}
	free(s->scr);
	free(s->hs);
	free(s->ntok);
	free(s->sink_n);
	free(s);
}

static int check_params(const struct engine *e, const struct engine_params *p)
{
	const struct ice_model_shape *s = &p->shape;
	const struct ice_budget *b = &p->budget;

	/* head_dim: the index scores 16 lanes at a time; GQA groups: the index searches at most
	 * IDX_MAX_GROUP queries together; a page must fit a store slot. */
	if (!s->layers || s->layers > 1024 || !s->kv_heads || s->kv_heads > 64 || !s->q_heads ||
	    s->q_heads > 256 || s->q_heads % s->kv_heads ||
	    s->q_heads / s->kv_heads > IDX_MAX_GROUP || s->head_dim < 16 ||
	    s->head_dim > MAX_HEAD_DIM || s->head_dim % 16 || !dtype_size(s->dtype))
		return -EINVAL;
	if (2ull * P * s->head_dim * dtype_size(s->dtype) > e->o.slot_bytes)
		return -EINVAL;
	if (b->sink_tokens > 4096 || b->window_tokens > 4096 || b->retrieved_tokens > 16384 ||
	    b->dense_layers > s->layers)
		return -EINVAL;
	return 0;
}

static uint32_t round_pages(uint32_t t)
{
	return (t + P - 1) / P * P;
}

/* Table lock held: the owner's entry, taken if it has none (there is always room: an owner
 * with an entry holds a sequence, and there are at most max_seqs). */
static uint32_t owner_entry(struct engine *e, uint32_t owner)
{
	uint32_t i, free_i = 0;

	for (i = 1; i <= e->o.max_seqs; i++) {
		if (e->own[i].nseqs && e->own[i].id == owner)
			return i;
		if (!e->own[i].nseqs && !free_i)
			free_i = i;
	}
	e->own[free_i] = (struct owner){ .id = owner };
	return free_i;
}

int engine_seq_open(struct engine *e, uint32_t owner, const struct engine_params *p,
		    uint32_t *ret_id)
{
	struct seq *s;
	uint32_t i, nh;
	uint64_t base;
	int err;

	if (!e || !p || !ret_id)
		return -EINVAL;
	err = check_params(e, p);
	if (err)
		return err;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->owner = owner;
	s->p = *p;
	s->S = round_pages(p->budget.sink_tokens);
	s->W = round_pages(p->budget.window_tokens);
	s->Wcap = s->W + P;
	s->kpages = p->budget.retrieved_tokens / P;
	s->g = p->shape.q_heads / p->shape.kv_heads;
	s->es = dtype_size(p->shape.dtype);
	s->row = (size_t)p->shape.head_dim * s->es;
	s->dt = p->shape.dtype;
	nh = p->shape.layers * p->shape.kv_heads;
	/* What is allocated now: a layer's buffers and indexes come with its first tokens. */
	base = sizeof(*s) + (uint64_t)nh * sizeof(struct head_state) +
	       2ull * sizeof(uint32_t) * p->shape.layers;
	s->hs = calloc(nh, sizeof(*s->hs));
	s->ntok = calloc(p->shape.layers, sizeof(*s->ntok));
	s->sink_n = calloc(p->shape.layers, sizeof(*s->sink_n));
	if (!s->hs || !s->ntok || !s->sink_n) {
		err = -ENOMEM;
		goto out_free;
	}
	pthread_mutex_lock(&e->lock);
	if (e->o.owner_max_seqs) {
		uint32_t mine = 0;

		for (i = 0; i < e->o.max_seqs; i++)
			mine += e->slot[i] && e->slot[i]->owner == owner;
		if (mine >= e->o.owner_max_seqs) {
			pthread_mutex_unlock(&e->lock);
			err = -EDQUOT;
			goto out_free;
		}
	}
	for (i = 0; i < e->o.max_seqs; i++)
		if (!e->slot[i])
			break;
	if (i == e->o.max_seqs) {
		pthread_mutex_unlock(&e->lock);
		err = -EMFILE;
		goto out_free;
	}
	s->acct = owner_entry(e, owner);
	err = engine_charge(e, s, base);
	if (err) {
		s->acct = 0; /* nothing charged, no sequence counted: the entry stays as it was */
		pthread_mutex_unlock(&e->lock);
		goto out_free;
	}
	s->bytes = base;
	e->own[s->acct].nseqs++;
	/* Generation in the high bits: a stale handle never reaches a reused slot. Never 0, so a
	 * zeroed entry does not name a live sequence. */
	e->gen[i] = (e->gen[i] + 1) & 0xffff;
	if (!e->gen[i])
		e->gen[i] = 1;
	s->id = (e->gen[i] << SEQ_SLOT_BITS) | i;
	e->slot[i] = s;
	e->nseqs++;
	e->seqs_opened++;
	pthread_mutex_unlock(&e->lock);
	*ret_id = s->id;
	return 0;
out_free:
	s->id = UINT32_MAX; /* names no store pages */
	engine_seq_free(e, s);
	return err;
}

struct seq *engine_seq_get(struct engine *e, uint32_t owner, uint32_t id)
{
	uint32_t i = id & ((1u << SEQ_SLOT_BITS) - 1);
	struct seq *s = NULL;

	if (!e || i >= e->o.max_seqs)
		return NULL;
	pthread_mutex_lock(&e->lock);
	if (e->slot[i] && e->slot[i]->id == id && e->slot[i]->owner == owner)
		s = e->slot[i];
	pthread_mutex_unlock(&e->lock);
	return s;
}

int engine_seq_drop(struct engine *e, uint32_t owner, uint32_t id)
{
	uint32_t i = id & ((1u << SEQ_SLOT_BITS) - 1);
	struct seq *s = NULL;

	if (!e || i >= e->o.max_seqs)
		return -ENOENT;
	pthread_mutex_lock(&e->lock);
	if (e->slot[i] && e->slot[i]->id == id && e->slot[i]->owner == owner) {
		s = e->slot[i];
		e->slot[i] = NULL;
		e->nseqs--;
		e->seqs_dropped++;
	}
	pthread_mutex_unlock(&e->lock);
	if (!s)
		return -ENOENT;
	engine_seq_free(e, s);
	return 0;
}

int engine_drop_owner(struct engine *e, uint32_t owner)
{
	uint32_t i;
	int n = 0;

	if (!e)
		return -EINVAL;
	for (i = 0; i < e->o.max_seqs; i++) {
		struct seq *s = NULL;

		pthread_mutex_lock(&e->lock);
		if (e->slot[i] && e->slot[i]->owner == owner) {
			s = e->slot[i];
			e->slot[i] = NULL;
			e->nseqs--;
			e->seqs_dropped++;
		}
		pthread_mutex_unlock(&e->lock);
		if (s) {
			engine_seq_free(e, s);
			n++;
		}
	}
	return n;
}

int engine_append_bytes(struct engine *e, uint32_t owner, uint32_t id, uint32_t n,
			size_t *ret_bytes)
{
	struct seq *s = engine_seq_get(e, owner, id);

	if (!s)
		return -ENOENT;
	if (!n || n > (1u << 24))
		return -EINVAL;
	*ret_bytes = (size_t)s->p.shape.kv_heads * n * s->row;
	return 0;
}

int engine_page_bytes(struct engine *e, uint32_t owner, uint32_t id, size_t *ret_bytes)
{
	struct seq *s = engine_seq_get(e, owner, id);

	if (!s)
		return -ENOENT;
	*ret_bytes = 2 * P * s->row;
	return 0;
}
