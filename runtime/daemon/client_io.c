/* A client's request path: see client_io.h. */
#include "client_io.h"

#include <errno.h>
#include <string.h>

void client_io_init(struct client_io *io, struct ring *sq, struct ring *cq, struct ops_ctx *oc)
{
	memset(io, 0, sizeof(*io));
	io->sq = sq;
	io->cq = cq;
	io->oc = oc;
}

int client_io_step(struct client_io *io)
{
	struct ring_sqe sqe;
	const void *e;
	void *slot;
	int err = 0;

	if (!io->held) {
		e = ring_peek(io->sq, &err);
		if (err) {
			io->why = "bad submission ring";
			return -EBADMSG;
		}
		if (!e)
			return 0;
		/* One private copy: what is checked is what is used. */
		memcpy(&sqe, e, sizeof(sqe));
		ring_consume(io->sq);
		ops_dispatch(io->oc, &sqe, &io->cqe);
		__atomic_add_fetch(&io->ops, 1, __ATOMIC_RELAXED);
		io->held = 1;
	}
	slot = ring_produce_slot(io->cq, &err);
	if (err) {
		io->why = "bad completion ring";
		return -EBADMSG;
	}
	if (!slot)
		return -EAGAIN; /* the client is not reaping completions */
	memcpy(slot, &io->cqe, sizeof(io->cqe));
	ring_produce_commit(io->cq);
	io->held = 0;
	return 1;
}
