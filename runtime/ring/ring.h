/*
 * Single-producer single-consumer ring of fixed-size entries in shared memory.
 *
 * The shared part (struct ring_shared) holds only the two indexes and the wake-up words, each
 * written by one side and kept on its own cache line so producer and consumer never bounce a
 * line they both write. The private part (struct ring) holds the geometry: a side that does not
 * trust the other (the daemon) never re-reads the size, the mask or its own index from shared
 * memory, and checks the other side's index before using it (ring_peek/ring_produce_slot return
 * -EBADMSG when the other side's index is impossible).
 *
 * Wake-ups: the waiting side spins for a bounded time, then announces itself (`sleeping`),
 * re-checks, and sleeps on the `wake` futex word; the other side, after publishing its index,
 * issues a full fence and only makes a futex_wake system call when someone announced sleep.
 */
#ifndef ICE_RUNTIME_RING_H
#define ICE_RUNTIME_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RING_CACHELINE 64

struct ring_shared {
	/* Producer's index (entries published so far, free-running). */
	_Alignas(RING_CACHELINE) uint32_t tail;
	/* Consumer's index (entries consumed so far, free-running). */
	_Alignas(RING_CACHELINE) uint32_t head;
	/* Consumer wake-up: the consumer sets `sleeping` then waits on `wake`. */
	_Alignas(RING_CACHELINE) uint32_t wake;
	uint32_t sleeping;
	/* Producer wake-up when the ring was full (the consumer bumps `space` after consuming). */
	_Alignas(RING_CACHELINE) uint32_t space;
	uint32_t space_sleeping;
	/* Geometry, informational for the peer; never read back by the side that wrote it. */
	_Alignas(RING_CACHELINE) uint32_t entries;
	uint32_t entry_size;
};

_Static_assert(sizeof(uint32_t) == 4, "u32");
_Static_assert(__builtin_offsetof(struct ring_shared, tail) == 0, "tail on line 0");
_Static_assert(__builtin_offsetof(struct ring_shared, head) == RING_CACHELINE, "head on line 1");
_Static_assert(__builtin_offsetof(struct ring_shared, wake) == 2 * RING_CACHELINE,
	       "wake on line 2");
_Static_assert(__builtin_offsetof(struct ring_shared, space) == 3 * RING_CACHELINE, "space line 3");
_Static_assert(__builtin_offsetof(struct ring_shared, entries) == 4 * RING_CACHELINE, "geometry");
_Static_assert(sizeof(struct ring_shared) == 5 * RING_CACHELINE, "ring_shared is 5 lines");

struct ring {
	struct ring_shared *sh;
	unsigned char *slots;
	uint32_t mask;
	uint32_t esize;
	/* This side's own index, private: producer's tail or consumer's head. */
	uint32_t local;
};

/* Bytes a ring of `entries` (power of two) entries of `esize` bytes needs, header included. */
size_t ring_bytes(uint32_t entries, uint32_t esize);

/*
 * Lays a ring out in mem (ring_bytes() long, cache-line aligned) and attaches r to it. With
 * create the shared part is zeroed and written; without it only the private view is set up
 * (the geometry passed in is what this side trusts). -EINVAL on a bad geometry.
 */
int ring_init(struct ring *r, void *mem, uint32_t entries, uint32_t esize, bool create);

/* Producer: a free slot to fill, or NULL when full (-EBADMSG in *ret_err if head is bogus). */
void *ring_produce_slot(struct ring *r, int *ret_err);
/* Producer: publishes the slot returned by ring_produce_slot and wakes a sleeping consumer. */
void ring_produce_commit(struct ring *r);

/* Consumer: the next entry (stable until ring_consume), NULL when empty, or NULL with
 * *ret_err = -EBADMSG when the producer's tail is impossible. */
const void *ring_peek(struct ring *r, int *ret_err);
/* Consumer: releases the entry returned by ring_peek and wakes a producer waiting for space. */
void ring_consume(struct ring *r);
/* Entries ready for the consumer (0 also when the tail is bogus). */
uint32_t ring_ready(const struct ring *r);

/*
 * Consumer: waits until an entry is ready. Spins for spin_ns, then sleeps on the futex for at
 * most timeout_ns (0 = do not sleep). Returns 0 when ready, -ETIMEDOUT otherwise; a signal or a
 * spurious wake-up also returns -ETIMEDOUT so the caller can re-check its own stop conditions.
 */
int ring_wait_ready(struct ring *r, uint64_t spin_ns, uint64_t timeout_ns);
/* Producer: waits until a slot is free, same rules. */
int ring_wait_space(struct ring *r, uint64_t spin_ns, uint64_t timeout_ns);

/* Wakes the consumer of r regardless of state (used by the daemon to deliver a stop). */
void ring_kick(struct ring *r);

#endif
