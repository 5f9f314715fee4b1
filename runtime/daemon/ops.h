/*
 * The opcode table: one entry per opcode with a name, an argument check and a handler, checked
 * complete at start-up (ops_verify). The daemon runs it for every submission entry of every
 * client; embedded mode runs the very same table in-process, so both modes validate and answer
 * alike.
 *
 * The caller passes a private copy of the entry (never the one in shared memory) and the
 * arena geometry it trusts; handlers copy any structured input out of the arena before using it,
 * so a client rewriting its arena mid-request can only spoil its own results.
 */
#ifndef ICE_RUNTIME_OPS_H
#define ICE_RUNTIME_OPS_H

#include <stdint.h>

#include "config.h"
#include "engine.h"
#include "hist.h"
#include "proto.h"
#include "stats.h"

struct ops_stats {
	uint64_t count[OP__COUNT];
	uint64_t errors[OP__COUNT];
	struct hist lat[OP__COUNT];
};

struct ops_ctx {
	struct engine *eng;
	uint32_t owner;
	unsigned char *arena; /* private mapping address */
	uint64_t arena_bytes; /* private copy of the size */
	struct engine_ws ws;
	struct engine_ws ws_refs; /* private copy of fetch refs */
	const struct rt_config *cfg;
	struct ops_stats *st; /* shared by all clients (atomics) */
	/* Adds the host's lines (daemon, clients) to OP_STATS; may be NULL. viewer 0: every
	 * client's lines; else only that client's. */
	void (*host_stats)(void *arg, uint32_t viewer, struct stats_buf *sb);
	void *host_arg;
	/* 1: this connection sees only its own clients and sequences in stats and seqs (a user
	 * other than the daemon's and root); the totals it sees are everyone's. */
	int own_only;
};

struct op_def {
	const char *name;
	int (*check)(const struct ops_ctx *oc, const struct ring_sqe *sqe);
	int (*handle)(struct ops_ctx *oc, const struct ring_sqe *sqe, struct ring_cqe *cqe);
};

/* 0 when every opcode below OP__COUNT has a name, a check and a handler; -EINVAL otherwise. */
int ops_verify(void);
const char *ops_name(unsigned int op);

/* Runs one request: fills cqe (tag, res, val) whatever happens. */
void ops_dispatch(struct ops_ctx *oc, const struct ring_sqe *sqe, struct ring_cqe *cqe);

void ops_stats_init(struct ops_stats *st);
void ops_stats_put(const struct ops_stats *st, struct stats_buf *sb);

#endif
