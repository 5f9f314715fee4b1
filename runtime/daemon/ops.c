/* The opcode table and its dispatcher: see ops.h. */
#include "ops.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

/* [off, off+len) inside the arena, 8-byte aligned; len 0 only with off 0. */
static int range_ok(const struct ops_ctx *oc, uint64_t off, uint64_t len)
{
	if (!len)
		return off == 0;
	if (off % 8 || len > oc->arena_bytes || off > oc->arena_bytes - len)
		return 0;
	return 1;
}

static int no_in(const struct ring_sqe *s)
{
	return !s->in_off && !s->in_len;
}

static int no_out(const struct ring_sqe *s)
{
	return !s->out_off && !s->out_len;
}

static int no_args(const struct ring_sqe *s)
{
	return !s->arg[0] && !s->arg[1];
}

static int overlap(const struct ring_sqe *s)
{
	return s->in_len && s->out_len && s->in_off < s->out_off + s->out_len &&
	       s->out_off < s->in_off + s->in_len;
}

static int check_noop(const struct ops_ctx *oc, const struct ring_sqe *s)
{
	return (!s->seq && !s->layer && no_args(s) && no_in(s) && no_out(s)) ? 0 : -EINVAL;
}

static int handle_noop(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	return 0;
}

static int check_text(const struct ops_ctx *oc, const struct ring_sqe *s)
{
	if (s->seq || s->layer || !no_args(s) || !no_in(s) || !s->out_len ||
	    !range_ok(oc, s->out_off, s->out_len) || s->out_len > (1u << 30))
		return -EINVAL;
	return 0;
}

static int text_done(struct stats_buf *sb, struct ring_cqe *c)
{
	c->val[0] = sb->len;
	if (sb->err)
		return sb->err;
	return (int)sb->len;
}

static int handle_stats(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	struct stats_buf sb;

	stats_buf_init(&sb, (char *)oc->arena + s->out_off, s->out_len);
	if (oc->host_stats)
		oc->host_stats(oc->host_arg, oc->own_only ? oc->owner : 0, &sb);
	engine_stats(oc->eng, &sb);
	if (oc->st)
		ops_stats_put(oc->st, &sb);
	return text_done(&sb, c);
}

/*
 * A restricted client's view of seqs: its own sequences only. engine_seqs writes a sequence's
 * owner line first, and that line decides the rest of its group. It fails closed: a line of a
 * group whose owner line it has not seen is dropped.
 */
struct own_seqs {
	char owner[16]; /* the viewer, as the owner line writes it */
	char id[16];    /* the group the last owner line opened */
	int keep;       /* that group is the viewer's */
};

static int keep_own_seq(void *arg, const char *line, size_t len)
{
	struct own_seqs *f = arg;
	const char *id = line + 4, *dot;
	size_t idlen;

	if (len < 4 || memcmp(line, "seq.", 4))
		return 0;
	dot = memchr(id, '.', len - 4);
	if (!dot || (idlen = (size_t)(dot - id)) >= sizeof(f->id))
		return 0;
	if (!strncmp(dot, ".owner ", 7)) {
		memcpy(f->id, id, idlen);
		f->id[idlen] = '\0';
		f->keep = !strcmp(dot + 7, f->owner);
		return f->keep;
	}
	return f->keep && strlen(f->id) == idlen && !memcmp(f->id, id, idlen);
}

static int handle_seqs(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	struct own_seqs f = { .keep = 0 };
	struct stats_buf sb;

	stats_buf_init(&sb, (char *)oc->arena + s->out_off, s->out_len);
	if (oc->own_only) {
		snprintf(f.owner, sizeof(f.owner), "%u", oc->owner);
		sb.keep = keep_own_seq;
		sb.keep_arg = &f;
	}
	engine_seqs(oc->eng, &sb);
	return text_done(&sb, c);
}

static int handle_config(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	int n = config_print(oc->cfg, (char *)oc->arena + s->out_off, s->out_len);

	if (n >= 0)
		c->val[0] = (uint64_t)n;
	return n;
}

static int check_open(const struct ops_ctx *oc, const struct ring_sqe *s)
{
	if (s->seq || s->layer || !no_args(s) || !no_out(s) ||
	    s->in_len != sizeof(struct proto_open_args) || !range_ok(oc, s->in_off, s->in_len))
		return -EINVAL;
	return 0;
}

static int handle_open(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	struct proto_open_args a;
	struct engine_params p;
	uint32_t id;
	int err;

	memcpy(&a, oc->arena + s->in_off, sizeof(a));
	if (a.reserved)
		return -EINVAL;
	p.shape = (struct ice_model_shape){ a.layers, a.q_heads, a.kv_heads, a.head_dim, a.dtype };
	p.budget = (struct ice_budget){ a.sink_tokens, a.window_tokens, a.retrieved_tokens,
					a.dense_layers };
	err = engine_seq_open(oc->eng, oc->owner, &p, &id);
	if (err)
		return err;
	c->val[0] = id;
	return 0;
}

static int check_seq_only(const struct ops_ctx *oc, const struct ring_sqe *s)
{
	return (s->layer || !no_args(s) || !no_in(s) || !no_out(s)) ? -EINVAL : 0;
}

static int handle_close(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	return engine_seq_drop(oc->eng, oc->owner, s->seq);
}

static int check_select_cap(const struct ops_ctx *oc, const struct ring_sqe *s)
{
	return (!no_args(s) || !no_in(s) || !no_out(s)) ? -EINVAL : 0;
}

static int handle_select_cap(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	return engine_select_cap(oc->eng, oc->owner, s->seq, s->layer);
}

static int check_append(const struct ops_ctx *oc, const struct ring_sqe *s)
{
	if (!s->arg[0] || s->arg[0] > (1u << 24) || s->arg[1] || !no_out(s) || !s->in_len ||
	    s->in_len % 2 || !range_ok(oc, s->in_off, s->in_len))
		return -EINVAL;
	return 0;
}

static int handle_append(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	size_t half;
	int err;

	err = engine_append_bytes(oc->eng, oc->owner, s->seq, (uint32_t)s->arg[0], &half);
	if (err)
		return err;
	if (s->in_len != 2 * (uint64_t)half)
		return -EINVAL;
	/* K/V values are read straight from the arena: a client racing its own arena only
	 * spoils its own values; no length or index comes from there. */
	return engine_append(oc->eng, oc->owner, s->seq, s->layer, (uint32_t)s->arg[0],
			     oc->arena + s->in_off, oc->arena + s->in_off + half);
}

static int check_select(const struct ops_ctx *oc, const struct ring_sqe *s)
{
	if (!no_args(s) || !s->in_len || s->in_len % 4 || !range_ok(oc, s->in_off, s->in_len) ||
	    !s->out_len || s->out_len % sizeof(struct ice_page_ref) ||
	    !range_ok(oc, s->out_off, s->out_len) || overlap(s))
		return -EINVAL;
	return 0;
}

/* -ENOSPC carries the refs the table needs in val[0]: the client grows its buffer to that and
 * its next select succeeds, instead of asking select_cap before every select. */
static int select_done(int res, size_t need, struct ring_cqe *c)
{
	if (res == -ENOSPC)
		c->val[0] = need;
	return res;
}

static int handle_select(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	size_t need = 0;
	int r;

	r = engine_select(oc->eng, oc->owner, s->seq, s->layer,
			  (const float *)(const void *)(oc->arena + s->in_off), s->in_len,
			  (struct ice_page_ref *)(void *)(oc->arena + s->out_off),
			  s->out_len / sizeof(struct ice_page_ref), NULL, 0, &oc->ws, &need);
	return select_done(r, need, c);
}

/* select_rest: out = the rest term (arg[0] bytes, a multiple of 8), then the refs. */
static int check_select_rest(const struct ops_ctx *oc, const struct ring_sqe *s)
{
	uint64_t rb = s->arg[0];

	if (s->flags || s->arg[1] || !s->in_len || s->in_len % 4 ||
	    !range_ok(oc, s->in_off, s->in_len) || !rb || rb % 8 || rb >= s->out_len ||
	    (s->out_len - rb) % sizeof(struct ice_page_ref) ||
	    !range_ok(oc, s->out_off, s->out_len) || overlap(s))
		return -EINVAL;
	return 0;
}

static int handle_select_rest(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	uint64_t rb = s->arg[0];
	size_t need = 0;
	int r;

	/* The rest block is q_heads * (head_dim + 1) floats padded to 8 bytes; the engine checks
	 * that size against the sequence's shape. */
	r = engine_select(oc->eng, oc->owner, s->seq, s->layer,
			  (const float *)(const void *)(oc->arena + s->in_off), s->in_len,
			  (struct ice_page_ref *)(void *)(oc->arena + s->out_off + rb),
			  (s->out_len - rb) / sizeof(struct ice_page_ref),
			  (float *)(void *)(oc->arena + s->out_off), rb, &oc->ws, &need);
	return select_done(r, need, c);
}

static int check_fetch(const struct ops_ctx *oc, const struct ring_sqe *s)
{
	if (!no_args(s) || !s->in_len || s->in_len % sizeof(struct ice_page_ref) ||
	    !range_ok(oc, s->in_off, s->in_len) || !s->out_len ||
	    !range_ok(oc, s->out_off, s->out_len) || overlap(s))
		return -EINVAL;
	return 0;
}

static int handle_fetch(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	/* The refs are indexes: the engine bounds them, then copies them out of shared memory
	 * before checking them, so what is checked is what is used. */
	return engine_fetch_shared(
		oc->eng, oc->owner, s->seq, s->layer,
		(const struct ice_page_ref *)(const void *)(oc->arena + s->in_off),
		s->in_len / sizeof(struct ice_page_ref), oc->arena + s->out_off, s->out_len,
		&oc->ws_refs, &oc->ws);
}

/* ---- saved prefixes (the engine checks the name's characters and the shape) ---- */

static int name_in(const struct ops_ctx *oc, const struct ring_sqe *s, uint64_t skip, char *name)
{
	uint64_t n = s->in_len - skip;

	if (s->in_len <= skip || n > PROTO_PREFIX_NAME_MAX)
		return -EINVAL;
	memcpy(name, oc->arena + s->in_off + skip, n);
	name[n] = '\0';
	return strlen(name) == n ? 0 : -EINVAL;
}

static int check_prefix(const struct ops_ctx *oc, const struct ring_sqe *s, uint64_t skip)
{
	if (s->layer || !no_args(s) || !no_out(s) || s->in_len <= skip ||
	    s->in_len > skip + PROTO_PREFIX_NAME_MAX)
		return -EINVAL;
	/* the arena check wants 8-byte multiples: the name's bytes sit inside a rounded range */
	return range_ok(oc, s->in_off, (s->in_len + 7) & ~7ull) ? 0 : -EINVAL;
}

static int check_prefix_save(const struct ops_ctx *oc, const struct ring_sqe *s)
{
	return check_prefix(oc, s, 0);
}

static int handle_prefix_save(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	char name[PROTO_PREFIX_NAME_MAX + 1];
	uint32_t crc = 0;
	int err = name_in(oc, s, 0, name);

	/* Prefixes are shared by name across the fleet: a client of another user (one that sees
	 * only its own sequences) may open them, not replace or delete them. */
	if (!err && oc->own_only)
		err = -EPERM;
	if (!err)
		err = engine_prefix_save(oc->eng, oc->owner, s->seq, name, &crc);
	c->val[1] = crc;
	return err;
}

static int check_prefix_open(const struct ops_ctx *oc, const struct ring_sqe *s)
{
	return s->seq ? -EINVAL : check_prefix(oc, s, sizeof(struct proto_open_args));
}

static int handle_prefix_open(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	char name[PROTO_PREFIX_NAME_MAX + 1];
	struct proto_open_args a;
	struct engine_params p;
	uint32_t id, crc, tok;
	int err = name_in(oc, s, sizeof(a), name);

	if (err)
		return err;
	memcpy(&a, oc->arena + s->in_off, sizeof(a));
	if (a.reserved)
		return -EINVAL;
	p.shape = (struct ice_model_shape){ a.layers, a.q_heads, a.kv_heads, a.head_dim, a.dtype };
	p.budget = (struct ice_budget){ a.sink_tokens, a.window_tokens, a.retrieved_tokens,
					a.dense_layers };
	err = engine_prefix_open(oc->eng, oc->owner, name, &p, &id, &crc, &tok);
	if (err)
		return err;
	c->val[0] = id;
	c->val[1] = (uint64_t)tok << 32 | crc;
	return 0;
}

static int check_prefix_drop(const struct ops_ctx *oc, const struct ring_sqe *s)
{
	return s->seq ? -EINVAL : check_prefix(oc, s, 0);
}

static int handle_prefix_drop(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	char name[PROTO_PREFIX_NAME_MAX + 1];
	int err = name_in(oc, s, 0, name);

	if (!err && oc->own_only)
		err = -EPERM; /* as for save */
	return err ? err : engine_prefix_drop(oc->eng, name);
}

static const struct op_def op_table[OP__COUNT] = {
	[OP_NOOP] = { "noop", check_noop, handle_noop },
	[OP_STATS] = { "stats", check_text, handle_stats },
	[OP_CONFIG] = { "config", check_text, handle_config },
	[OP_SEQS] = { "seqs", check_text, handle_seqs },
	[OP_SEQ_OPEN] = { "seq_open", check_open, handle_open },
	[OP_SEQ_CLOSE] = { "seq_close", check_seq_only, handle_close },
	[OP_APPEND] = { "append", check_append, handle_append },
	[OP_SELECT] = { "select", check_select, handle_select },
	[OP_FETCH] = { "fetch", check_fetch, handle_fetch },
	[OP_SELECT_CAP] = { "select_cap", check_select_cap, handle_select_cap },
	[OP_SELECT_REST] = { "select_rest", check_select_rest, handle_select_rest },
	[OP_PREFIX_SAVE] = { "prefix_save", check_prefix_save, handle_prefix_save },
	[OP_PREFIX_OPEN] = { "prefix_open", check_prefix_open, handle_prefix_open },
	[OP_PREFIX_DROP] = { "prefix_drop", check_prefix_drop, handle_prefix_drop },
};

int ops_verify(void)
{
	unsigned int i, j;

	for (i = 0; i < OP__COUNT; i++) {
		if (!op_table[i].name || !op_table[i].check || !op_table[i].handle)
			return -EINVAL;
		for (j = 0; j < i; j++)
			if (!strcmp(op_table[i].name, op_table[j].name))
				return -EINVAL;
	}
	return 0;
}

const char *ops_name(unsigned int op)
{
	return op < OP__COUNT ? op_table[op].name : "unknown";
}

void ops_dispatch(struct ops_ctx *oc, const struct ring_sqe *s, struct ring_cqe *c)
{
	const struct op_def *d;
	uint64_t t0 = clock_now_ns();
	int res;

	memset(c, 0, sizeof(*c));
	c->tag = s->tag;
	if (s->opcode >= OP__COUNT) {
		c->res = -EOPNOTSUPP;
		return;
	}
	d = &op_table[s->opcode];
	res = s->flags ? -EINVAL : d->check(oc, s);
	if (!res)
		res = d->handle(oc, s, c);
	c->res = res;
	if (oc->st) {
		__atomic_add_fetch(&oc->st->count[s->opcode], 1, __ATOMIC_RELAXED);
		if (res < 0)
			__atomic_add_fetch(&oc->st->errors[s->opcode], 1, __ATOMIC_RELAXED);
		hist_add(&oc->st->lat[s->opcode], clock_now_ns() - t0);
	}
}

void ops_stats_init(struct ops_stats *st)
{
	unsigned int i;

	memset(st, 0, sizeof(*st));
	for (i = 0; i < OP__COUNT; i++)
		hist_init(&st->lat[i]);
}

void ops_stats_put(const struct ops_stats *st, struct stats_buf *sb)
{
	unsigned int i;
	char pfx[32];

	for (i = 0; i < OP__COUNT; i++) {
		uint64_t n = __atomic_load_n(&st->count[i], __ATOMIC_RELAXED);

		if (!n)
			continue;
		snprintf(pfx, sizeof(pfx), "op.%s", op_table[i].name);
		stats_put_u64(sb, pfx, "count", n);
		stats_put_u64(sb, pfx, "errors", __atomic_load_n(&st->errors[i], __ATOMIC_RELAXED));
		stats_put_hist(sb, pfx, "handle", &st->lat[i]);
	}
}
