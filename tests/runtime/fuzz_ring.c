/*
 * Fuzz target for the daemon's side of the rings: the input is a script played by a hostile
 * client over its shared segment, between steps of the daemon's real request path
 * (client_io_step: ring_peek, private copy, ops_dispatch, ring_produce_slot / commit).
 *
 * The segment has the daemon's layout (seg_layout) but lives in one heap buffer rather than a
 * memfd, so that ASan sees any access outside it; the daemon's private ring views are made by
 * ring_init as seg_create makes them. Input: a u32 index base (all four ring indexes start
 * there, as on a connection that has run that many entries: wraps the 32-bit indexes), then
 * commands, one byte each and their operands:
 *   0 SQE   64 bytes: an entry written at the client's tail (read from shared memory, as the
 *           client owns it), tail published; seq with the low bit set names the open sequence
 *   1 SQIX  u8 field, u32 value: written to one field of the SQ's shared header
 *   2 CQIX  u8 field, u32 value: the same for the CQ (head is the client's consumer index)
 *   3 REAP  u8 n: the client takes up to n completions, as libicecache does
 *   4 POKE  u16 offset, u8 length, bytes: raw bytes anywhere in the segment (slots, arena...)
 *   5 STEP  u8 n: up to n + 1 daemon steps, stopping at an empty SQ or a full CQ
 * then the daemon drains what is left (reaping when the CQ is full), within MAX_STEPS steps.
 * The arena starts as the input repeated, so offsets land on fuzzer-chosen bytes.
 *
 * Checked: every step returns one of its four answers; a posted completion carries the tag of
 * the entry it answers; the daemon's own indexes never run ahead (at most one completion held);
 * an impossible index ends the client with a reason, after which it is never stepped again.
 * FUZZ_RING_VERBOSE=1 prints how each input ended (to see what a reproducer or a seed reaches).
 * Built with clang -fsanitize=fuzzer when available (fuzz_ring), and always as
 * fuzz_ring_replay, which runs the same function on random or given inputs in the unit suite.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_io.h"
#include "engine.h"
#include "ops.h"
#include "segment.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t fuzz_wrap_entries(const uint8_t *sqes, size_t n, uint64_t seed, uint8_t *out, size_t cap);

#define SQ_ENTRIES 8 /* small rings: wrapped and full within a few entries */
#define CQ_ENTRIES 4
#define ARENA (16 * 1024)
#define MAX_STEPS 4096

enum { C_SQE, C_SQIX, C_CQIX, C_REAP, C_POKE, C_STEP, C__COUNT };

static const size_t ix_fields[] = {
	offsetof(struct ring_shared, tail),    offsetof(struct ring_shared, head),
	offsetof(struct ring_shared, wake),    offsetof(struct ring_shared, sleeping),
	offsetof(struct ring_shared, space),   offsetof(struct ring_shared, space_sleeping),
	offsetof(struct ring_shared, entries), offsetof(struct ring_shared, entry_size),
};
#define NFIELDS (sizeof(ix_fields) / sizeof(ix_fields[0]))

struct fz {
	struct seg_layout lay;
	unsigned char *mem;
	struct ring sq, cq; /* the daemon's private views */
	struct ops_ctx oc;
	struct client_io io;
	uint32_t base, seq;
	unsigned steps;
	int broken;
};

static void check(int ok)
{
	if (!ok)
		abort();
}

static struct ring_shared *sh_of(struct fz *f, uint64_t off)
{
	return (struct ring_shared *)(f->mem + off);
}

/* One daemon step and the invariants around it; returns what the step said. */
static int step(struct fz *f)
{
	uint64_t want_tag = 0;
	uint32_t used, done;
	int rc, fresh = 0, held = f->io.held;

	if (f->broken || f->steps >= MAX_STEPS)
		return -EBADMSG;
	f->steps++;
	if (f->io.held) {
		want_tag = f->io.cqe.tag;
	} else if (ring_ready(&f->sq)) {
		const struct ring_sqe *e =
			(const void *)(f->sq.slots +
				       (size_t)(f->sq.local & f->sq.mask) * f->sq.esize);

		want_tag = e->tag;
		fresh = 1;
	}
	rc = client_io_step(&f->io);
	used = f->sq.local - f->base;
	done = f->cq.local - f->base;
	check(done <= used && used - done == (uint32_t)f->io.held);
	switch (rc) {
	case 1:
		check(!f->io.held && (held || fresh));
		check(((const struct ring_cqe *)(const void *)(f->cq.slots +
							       (size_t)((f->cq.local - 1) &
									f->cq.mask) *
								       f->cq.esize))
			      ->tag == want_tag);
		break;
	case 0:
		check(!f->io.held && !fresh);
		/* What the serving thread does next, without sleeping. */
		ring_wait_ready(&f->sq, 0, 0);
		break;
	case -EAGAIN:
		check(f->io.held);
		ring_wait_space(&f->cq, 0, 0);
		break;
	case -EBADMSG:
		check(f->io.why != NULL);
		f->broken = 1; /* the daemon disconnects it: never touched again */
		break;
	default:
		check(0);
	}
	return rc;
}

/* The client takes up to n completions: head read and written in shared memory. */
static void reap(struct fz *f, unsigned n)
{
	struct ring_shared *sh = sh_of(f, f->lay.cq_off);
	volatile const struct ring_cqe *c;
	uint32_t head;

	while (n--) {
		head = __atomic_load_n(&sh->head, __ATOMIC_ACQUIRE);
		if (head == __atomic_load_n(&sh->tail, __ATOMIC_ACQUIRE))
			return;
		c = (const void *)(f->cq.slots + (size_t)(head & f->cq.mask) * f->cq.esize);
		(void)c->res;
		__atomic_store_n(&sh->head, head + 1, __ATOMIC_RELEASE);
	}
}

static void submit(struct fz *f, const uint8_t *p)
{
	struct ring_shared *sh = sh_of(f, f->lay.sq_off);
	uint32_t tail = __atomic_load_n(&sh->tail, __ATOMIC_RELAXED);
	struct ring_sqe s;

	memcpy(&s, p, sizeof(s));
	if (s.seq & 1)
		s.seq = f->seq;
	memcpy(f->sq.slots + (size_t)(tail & f->sq.mask) * f->sq.esize, &s, sizeof(s));
	__atomic_store_n(&sh->tail, tail + 1, __ATOMIC_RELEASE);
}

static void set_field(struct fz *f, uint64_t ring_off, uint8_t which, uint32_t v)
{
	unsigned char *p = f->mem + ring_off + ix_fields[which % NFIELDS];

	__atomic_store_n((uint32_t *)(void *)p, v, __ATOMIC_RELEASE);
}

static uint32_t rd32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

/* One engine and one segment buffer for the whole run; each input starts from the same
 * fixture (fresh rings at its base, the owner's sequences dropped and one opened anew). */
static struct fz *fixture(const uint8_t *data, size_t size)
{
	static struct fz f;
	static struct engine *e;
	static struct rt_config cfg;
	static struct ops_stats st;
	static float kv[2 * 2 * 80 * 16];
	struct engine_opts eo = {
		.dram_bytes = 2u << 20, .slot_bytes = 4096, .host_bytes = 64u << 20, .max_seqs = 16
	};
	struct engine_params p = { { 2, 4, 2, 16, ICE_DTYPE_F32 }, { 16, 16, 32, 1 } };
	unsigned char *arena;
	size_t i;

	if (!e) {
		if (engine_new(&eo, &e) || seg_layout(SQ_ENTRIES, CQ_ENTRIES, ARENA, &f.lay))
			abort();
		f.mem = aligned_alloc(SEG_ALIGN, f.lay.total_bytes);
		if (!f.mem)
			abort();
		config_defaults(&cfg);
		ops_stats_init(&st);
		for (i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
			kv[i] = (float)(i % 13) - 6.0f;
	}
	engine_drop_owner(e, 1);
	if (engine_seq_open(e, 1, &p, &f.seq) ||
	    engine_append(e, 1, f.seq, 0, 80, kv, kv + 2 * 80 * 16) ||
	    engine_append(e, 1, f.seq, 1, 80, kv, kv + 2 * 80 * 16))
		abort(); /* the set-up itself must work, or the target tests nothing */
	memset(f.mem, 0, f.lay.arena_off);
	if (ring_init(&f.sq, f.mem + f.lay.sq_off, SQ_ENTRIES, sizeof(struct ring_sqe), true) ||
	    ring_init(&f.cq, f.mem + f.lay.cq_off, CQ_ENTRIES, sizeof(struct ring_cqe), true))
		abort();
	arena = f.mem + f.lay.arena_off;
	for (i = 0; i < ARENA; i++)
		arena[i] = size ? data[i % (size < 4096 ? size : 4096)] : 0;
	f.base = size >= 4 ? rd32(data) : 0;
	f.sq.local = f.cq.local = f.base;
	f.sq.sh->head = f.sq.sh->tail = f.base;
	f.cq.sh->head = f.cq.sh->tail = f.base;
	memset(&f.oc, 0, sizeof(f.oc));
	f.oc.eng = e;
	f.oc.owner = 1;
	f.oc.arena = arena;
	f.oc.arena_bytes = ARENA;
	f.oc.cfg = &cfg;
	f.oc.st = &st;
	client_io_init(&f.io, &f.sq, &f.cq, &f.oc);
	f.steps = 0;
	f.broken = 0;
	return &f;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int verbose = -1;
	struct fz *f = fixture(data, size);
	size_t i = size >= 4 ? 4 : size;
	unsigned n;
	int rc;

	while (i < size) {
		uint8_t op = data[i++] % C__COUNT;

		switch (op) {
		case C_SQE:
			if (size - i < sizeof(struct ring_sqe))
				goto drain;
			submit(f, data + i);
			i += sizeof(struct ring_sqe);
			break;
		case C_SQIX:
		case C_CQIX:
			if (size - i < 5)
				goto drain;
			set_field(f, op == C_SQIX ? f->lay.sq_off : f->lay.cq_off, data[i],
				  rd32(data + i + 1));
			i += 5;
			break;
		case C_REAP:
			if (size - i < 1)
				goto drain;
			reap(f, data[i++]);
			break;
		case C_POKE: {
			size_t off, len;

			if (size - i < 3)
				goto drain;
			off = (size_t)(data[i] | data[i + 1] << 8) * 8 % f->lay.total_bytes;
			len = data[i + 2];
			i += 3;
			if (len > size - i)
				len = size - i;
			if (len > f->lay.total_bytes - off)
				len = f->lay.total_bytes - off;
			memcpy(f->mem + off, data + i, len);
			i += len;
			break;
		}
		case C_STEP:
			if (size - i < 1)
				goto drain;
			for (n = data[i++] + 1u; n; n--)
				if (step(f) != 1)
					break;
			break;
		}
	}
drain:
	/* The daemon serves what is left; the client reaps whenever the CQ is full. */
	while (!f->broken && f->steps < MAX_STEPS) {
		rc = step(f);
		if (rc == 0)
			break;
		if (rc == -EAGAIN)
			reap(f, CQ_ENTRIES);
	}
	if (verbose < 0)
		verbose = getenv("FUZZ_RING_VERBOSE") != NULL;
	if (verbose)
		fprintf(stderr, "fuzz_ring: %u steps, %u entries run, %u completed, %s\n", f->steps,
			f->sq.local - f->base, f->cq.local - f->base,
			f->broken ? f->io.why : "client kept");
	engine_ws_done(&f->oc.ws);
	engine_ws_done(&f->oc.ws_refs);
	return 0;
}

/*
 * For fuzz_replay's --random: the random entries become a script of submits, daemon steps and
 * reaps, with now and then an index of either ring overwritten (a racing or broken client).
 */
size_t fuzz_wrap_entries(const uint8_t *sqes, size_t n, uint64_t seed, uint8_t *out, size_t cap)
{
	static const uint32_t bases[] = { 0, 5, 0xfffffff9u, 0x7ffffffeu };
	uint32_t base = bases[seed % 4];
	size_t len = 0, j, since = 0;

	if (cap < 4 + n * 88)
		return 0;
	memcpy(out, &base, sizeof(base));
	len = 4;
	for (j = 0; j < n; j++) {
		uint64_t r = seed >> (j % 48) ^ j * 0x9e3779b97f4a7c15ull;

		out[len++] = C_SQE;
		memcpy(out + len, sqes + j * sizeof(struct ring_sqe), sizeof(struct ring_sqe));
		len += sizeof(struct ring_sqe);
		/* Mostly a client that waits for room: most inputs get past the ring checks. */
		if (++since >= 6) {
			static const uint8_t wait_room[] = { C_REAP, CQ_ENTRIES, C_STEP, 3,
							     C_REAP, CQ_ENTRIES, C_STEP, 3 };

			memcpy(out + len, wait_room, sizeof(wait_room));
			len += sizeof(wait_room);
			since = 0;
		}
		if (r % 3 == 0) {
			out[len++] = C_STEP;
			out[len++] = (uint8_t)(r >> 8) % 4;
		}
		if (r % 5 == 0) {
			out[len++] = C_REAP;
			out[len++] = (uint8_t)(r >> 16) % 6;
		}
		if (r % 29 == 0) {
			uint32_t v = (uint32_t)(r >> 24) % 3 ? base + (uint32_t)(r >> 32) % 16 :
							       (uint32_t)(r >> 20);

			out[len++] = (r >> 4) & 1 ? C_SQIX : C_CQIX;
			out[len++] = (uint8_t)(r >> 12) % 2; /* tail or head */
			memcpy(out + len, &v, sizeof(v));
			len += sizeof(v);
		}
	}
	return len;
}
