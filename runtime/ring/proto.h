/*
 * The wire format between libicecache and icecached: the handshake on the unix socket, the
 * segment layout, the submission and completion entries and the opcode numbers. docs/RING.md
 * describes it for people; the static asserts below keep both in step with the code.
 */
#ifndef ICE_RUNTIME_PROTO_H
#define ICE_RUNTIME_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "ring.h"

#define PROTO_MAGIC 0x31454349u /* "ICE1" little-endian */
/* 2: ice_page_ref carries a token mask; 3: select's -ENOSPC gives the refs needed in val[0] */
#define PROTO_VERSION 3

/* Handshake: the client sends hello, the daemon answers welcome (+ the memfd on success). */
enum proto_kind {
	PROTO_KIND_CLIENT = 0,
	PROTO_KIND_CONTROL = 1, /* icectl: counted apart from clients */
};

struct proto_hello {
	uint32_t magic;
	uint32_t version;
	uint32_t kind;
	uint32_t reserved;
};

struct proto_welcome {
	uint32_t magic;
	uint32_t version;
	int32_t status; /* 0 or -errno; the memfd comes only with 0 */
	uint32_t client_id;
	uint64_t seg_bytes;
};

_Static_assert(sizeof(struct proto_hello) == 16, "hello");
_Static_assert(sizeof(struct proto_welcome) == 24, "welcome");

/* Segment: header page, SQ ring, CQ ring, data arena; each part starts on a 4 KiB boundary. */
#define SEG_ALIGN 4096u

struct seg_hdr {
	uint32_t magic;
	uint32_t version;
	uint32_t client_id;
	uint32_t sq_entries;
	uint32_t cq_entries;
	uint32_t sqe_size;
	uint32_t cqe_size;
	uint32_t reserved;
	uint64_t sq_off;
	uint64_t cq_off;
	uint64_t arena_off;
	uint64_t arena_bytes;
	uint64_t total_bytes;
	/* Set by the daemon when it stops serving this segment (drain or shutdown). */
	_Alignas(64) uint32_t closed;
};

_Static_assert(offsetof(struct seg_hdr, sq_off) == 32, "seg_hdr.sq_off");
_Static_assert(offsetof(struct seg_hdr, total_bytes) == 64, "seg_hdr.total_bytes");
_Static_assert(offsetof(struct seg_hdr, closed) == 128, "seg_hdr.closed");
_Static_assert(sizeof(struct seg_hdr) <= SEG_ALIGN, "seg_hdr fits its page");

/* Submission entry: 64 bytes, one cache line. Offsets are arena-relative. */
struct ring_sqe {
	uint8_t opcode;
	uint8_t flags; /* must be 0 */
	uint16_t layer;
	uint32_t seq;
	uint64_t tag; /* echoed in the completion */
	uint64_t arg[2];
	uint64_t in_off;
	uint64_t in_len;
	uint64_t out_off;
	uint64_t out_len;
};

_Static_assert(sizeof(struct ring_sqe) == 64, "sqe is one cache line");
_Static_assert(offsetof(struct ring_sqe, layer) == 2, "sqe.layer");
_Static_assert(offsetof(struct ring_sqe, seq) == 4, "sqe.seq");
_Static_assert(offsetof(struct ring_sqe, tag) == 8, "sqe.tag");
_Static_assert(offsetof(struct ring_sqe, arg) == 16, "sqe.arg");
_Static_assert(offsetof(struct ring_sqe, in_off) == 32, "sqe.in_off");
_Static_assert(offsetof(struct ring_sqe, in_len) == 40, "sqe.in_len");
_Static_assert(offsetof(struct ring_sqe, out_off) == 48, "sqe.out_off");
_Static_assert(offsetof(struct ring_sqe, out_len) == 56, "sqe.out_len");

/* Completion entry: 32 bytes. res is >= 0 or -errno; val carries small results. */
struct ring_cqe {
	uint64_t tag;
	int32_t res;
	uint32_t flags;
	uint64_t val[2];
};

_Static_assert(sizeof(struct ring_cqe) == 32, "cqe is 32 bytes");
_Static_assert(offsetof(struct ring_cqe, res) == 8, "cqe.res");
_Static_assert(offsetof(struct ring_cqe, val) == 16, "cqe.val");

/* Opcodes: the table in ops.c has one entry per value below OP__COUNT. */
enum proto_op {
	OP_NOOP = 0,
	OP_STATS = 1,
	OP_CONFIG = 2,
	OP_SEQS = 3,
	OP_SEQ_OPEN = 4,
	OP_SEQ_CLOSE = 5,
	OP_APPEND = 6,
	OP_SELECT = 7,
	OP_FETCH = 8,
	OP_SELECT_CAP = 9,
	OP_SELECT_REST = 10,
	OP_PREFIX_SAVE = 11, /* in: the name; seq: the sequence; cqe.val[1]: content hash */
	OP_PREFIX_OPEN = 12, /* in: proto_open_args then the name; cqe.val[0]: seq,
			      * val[1]: tokens << 32 | content hash */
	OP_PREFIX_DROP = 13, /* in: the name */
	OP__COUNT
};

/* A saved prefix's name: 1..PROTO_PREFIX_NAME_MAX bytes of [A-Za-z0-9._-], not terminated. */
#define PROTO_PREFIX_NAME_MAX 32u

/* OP_SEQ_OPEN's input in the arena. */
struct proto_open_args {
	uint32_t layers, q_heads, kv_heads, head_dim, dtype;
	uint32_t sink_tokens, window_tokens, retrieved_tokens, dense_layers;
	uint32_t reserved;
};

_Static_assert(sizeof(struct proto_open_args) == 40, "open args");

#endif
