/* Internal entry points of the client shim that the public header does not carry. */
#ifndef ICE_RUNTIME_SHIM_H
#define ICE_RUNTIME_SHIM_H

#include <stdint.h>

#include "icecache/icecache.h"
#include "proto.h"

/* timeout_ns for shim_connect: the default takes $ICECACHE_TIMEOUT_MS (else 5 s). */
#define SHIM_TIMEOUT_DEFAULT 0
#define SHIM_TIMEOUT_NONE UINT64_MAX

/* ice_connect with a connection kind (PROTO_KIND_CONTROL for icectl) and a timeout, which
 * bounds the handshake and every later wait for the daemon (see ice_connect). */
int shim_connect(const char *socket_path, uint32_t kind, uint64_t timeout_ns,
		 struct ice_ctx **ret_ctx);
/* Sends one raw entry and waits for its completion (tests and fuzzing: the entry is not
 * checked here). The arena is the context's; shim_arena tells where and how big. */
int shim_raw(struct ice_ctx *ctx, const struct ring_sqe *sqe, struct ring_cqe *ret_cqe);
void *shim_arena(struct ice_ctx *ctx, uint64_t *ret_bytes);
/* Sends n raw entries in one burst (as many in flight as the rings hold) and collects their n
 * completions into ret_cqes, in order. Embedded mode runs them one by one. */
int shim_raw_batch(struct ice_ctx *ctx, const struct ring_sqe *sqes, size_t n,
		   struct ring_cqe *ret_cqes);
uint32_t shim_client_id(const struct ice_ctx *ctx);
/* The segment fd (daemon mode; -1 embedded or after attach closed it). */
int shim_segment_fd(const struct ice_ctx *ctx);
/* The shared submission ring header (daemon mode), for tests that corrupt it. */
void *shim_sq_shared(struct ice_ctx *ctx);

#endif
