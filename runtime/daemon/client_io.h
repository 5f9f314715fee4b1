/*
 * One client's request path in the daemon: take an entry off its submission ring, run it,
 * post the completion. The serving thread of server.c calls client_io_step in its loop and
 * does the waiting and the stop checks itself; the step never blocks and uses no socket or
 * thread, so tests/runtime/fuzz_ring.c runs the very same code over a segment it writes as a
 * hostile client would.
 */
#ifndef ICE_RUNTIME_CLIENT_IO_H
#define ICE_RUNTIME_CLIENT_IO_H

#include <stdint.h>

#include "ops.h"
#include "proto.h"
#include "ring.h"

struct client_io {
	struct ring *sq, *cq; /* the daemon's private views of the client's rings */
	struct ops_ctx *oc;
	uint64_t ops; /* entries run (atomic: stats readers) */
	/* A completion that found the CQ full, posted before any other entry is taken. */
	int held;
	struct ring_cqe cqe;
	const char *why; /* set with -EBADMSG: which ring was impossible */
};

/* Attaches io to the rings and the opcode context (kept by pointer). */
void client_io_init(struct client_io *io, struct ring *sq, struct ring *cq, struct ops_ctx *oc);

/*
 * One step: posts the held completion if there is one, else runs the next entry and posts its
 * completion. Returns 1 when a completion was posted, 0 when the SQ is empty, -EAGAIN when the
 * CQ is full (the completion is held; wait for space and step again), -EBADMSG when the
 * client wrote an impossible index (io->why says which ring): disconnect it.
 */
int client_io_step(struct client_io *io);

#endif
