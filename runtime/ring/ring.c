/* SPSC ring: see ring.h for the layout and the wake-up protocol. */
#include "ring.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD_RLX(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define STORE_RLX(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Shared (not private) futexes: the two sides are different processes mapping one memfd. */
static void futex_wake_all(uint32_t *word)
{
	syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static void futex_wait_ns(uint32_t *word, uint32_t val, uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };

	syscall(SYS_futex, word, FUTEX_WAIT, val, &ts, NULL, 0);
}

size_t ring_bytes(uint32_t entries, uint32_t esize)
{
	return sizeof(struct ring_shared) + (size_t)entries * esize;
}

int ring_init(struct ring *r, void *mem, uint32_t entries, uint32_t esize, bool create)
{
	if (!r || !mem || entries < 2 || (entries & (entries - 1)) || entries > (1u << 20) ||
	    esize == 0 || esize % 8 || esize > 4096 || ((uintptr_t)mem % RING_CACHELINE))
		return -EINVAL;
	r->sh = mem;
	r->slots = (unsigned char *)mem + sizeof(struct ring_shared);
	r->mask = entries - 1;
	r->esize = esize;
	if (create) {
		memset(mem, 0, ring_bytes(entries, esize));
		r->sh->entries = entries;
		r->sh->entry_size = esize;
		r->local = 0;
	} else {
		/* Attaching side: its own index starts where the shared one is (both are 0 on a
		 * fresh segment); only the creator's peer attaches, so this is read once. */
		r->local = 0;
	}
	return 0;
}

void *ring_produce_slot(struct ring *r, int *ret_err)
{
	uint32_t head = LOAD_ACQ(&r->sh->head);
	uint32_t used = r->local - head;

	if (used > r->mask + 1) {
		if (ret_err)
			*ret_err = -EBADMSG;
		return NULL;
	}
	if (ret_err)
		*ret_err = 0;
	if (used == r->mask + 1)
		return NULL;
	return r->slots + (size_t)(r->local & r->mask) * r->esize;
}

void ring_produce_commit(struct ring *r)
{
	r->local++;
	STORE_REL(&r->sh->tail, r->local);
	/* Pairs with the consumer's fence between announcing sleep and re-checking the tail: one
	 * of the two sides sees the other's store, so a wake-up is never lost. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (LOAD_RLX(&r->sh->sleeping)) {
		__atomic_fetch_add(&r->sh->wake, 1, __ATOMIC_RELAXED);
		futex_wake_all(&r->sh->wake);
	}
}

uint32_t ring_ready(const struct ring *r)
{
	uint32_t n = LOAD_ACQ(&r->sh->tail) - r->local;

	return n > r->mask + 1 ? 0 : n;
}

const void *ring_peek(struct ring *r, int *ret_err)
{
	uint32_t n = LOAD_ACQ(&r->sh->tail) - r->local;

	if (n > r->mask + 1) {
		if (ret_err)
			*ret_err = -EBADMSG;
		return NULL;
	}
	if (ret_err)
		*ret_err = 0;
	if (n == 0)
		return NULL;
	return r->slots + (size_t)(r->local & r->mask) * r->esize;
}

void ring_consume(struct ring *r)
{
	r->local++;
	STORE_REL(&r->sh->head, r->local);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (LOAD_RLX(&r->sh->space_sleeping)) {
		__atomic_fetch_add(&r->sh->space, 1, __ATOMIC_RELAXED);
		futex_wake_all(&r->sh->space);
	}
}

void ring_kick(struct ring *r)
{
	__atomic_fetch_add(&r->sh->wake, 1, __ATOMIC_SEQ_CST);
	futex_wake_all(&r->sh->wake);
}

static bool has_space(struct ring *r)
{
	uint32_t used = r->local - LOAD_ACQ(&r->sh->head);

	/* A bogus head counts as "space" so the caller goes on to ring_produce_slot and gets
	 * -EBADMSG instead of waiting forever. */
	return used != r->mask + 1;
}

static bool has_ready(struct ring *r)
{
	return LOAD_ACQ(&r->sh->tail) != r->local;
}

static int wait_for(struct ring *r, bool (*cond)(struct ring *), uint32_t *word, uint32_t *sleeping,
		    uint64_t spin_ns, uint64_t timeout_ns)
{
	uint64_t start = 0;
	unsigned int i;
	uint32_t w;

	for (i = 0;; i++) {
		if (cond(r))
			return 0;
		cpu_relax();
		/* Reading the clock costs ~20 ns: look at it every 64 spins only. */
		if ((i & 63) == 0) {
			uint64_t now = clock_now_ns();

			if (!start)
				start = now;
			else if (now - start >= spin_ns)
				break;
		}
	}
	if (!timeout_ns)
		return -ETIMEDOUT;
	w = LOAD_RLX(word);
	__atomic_store_n(sleeping, 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!cond(r))
		futex_wait_ns(word, w, timeout_ns);
	__atomic_store_n(sleeping, 0, __ATOMIC_RELAXED);
	return cond(r) ? 0 : -ETIMEDOUT;
}

int ring_wait_ready(struct ring *r, uint64_t spin_ns, uint64_t timeout_ns)
{
	return wait_for(r, has_ready, &r->sh->wake, &r->sh->sleeping, spin_ns, timeout_ns);
}

int ring_wait_space(struct ring *r, uint64_t spin_ns, uint64_t timeout_ns)
{
	return wait_for(r, has_space, &r->sh->space, &r->sh->space_sleeping, spin_ns, timeout_ns);
}
