/*
 * Fault tests against a private daemon: a million random malformed ring entries from one client
 * while another client checks that its answers do not change; then a client that corrupts its
 * own ring indexes is cut off without harm to the other.
 */
#include <pthread.h>

#include "check_main.h"
#include "clock.h"
#include "rt_scenario.h"
#include "shim.h"
#include "stats.h"

#define FLOOD 1000000
#define BURST 250

static char sock[256];

struct victim {
	struct ice_ctx *c;
	uint32_t seq;
	int stop;
	long rounds;
	int bad;
};

static const struct ice_model_shape vsh = { 1, 4, 2, 32, ICE_DTYPE_F32 };
static const struct ice_budget vb = { 16, 16, 32, 0 };

static void *victim_main(void *arg)
{
	struct victim *v = arg;
	struct ice_page_ref r0[64], r[64];
	static float q[4 * 32], b0[64 * 2 * 16 * 32], b1[64 * 2 * 16 * 32];
	int n0, n, i;

	for (i = 0; i < 4 * 32; i++)
		q[i] = (float)((i * 13) % 11) - 5.0f;
	n0 = ice_select(v->c, v->seq, 0, q, r0, 64, NULL);
	if (n0 <= 0 || ice_fetch(v->c, v->seq, 0, r0, (size_t)n0, b0, sizeof(b0))) {
		v->bad = 1;
		return NULL;
	}
	while (!__atomic_load_n(&v->stop, __ATOMIC_RELAXED)) {
		n = ice_select(v->c, v->seq, 0, q, r, 64, NULL);
		if (n != n0 || memcmp(r, r0, (size_t)n * sizeof(*r)) ||
		    ice_fetch(v->c, v->seq, 0, r, (size_t)n, b1, sizeof(b1)) ||
		    memcmp(b0, b1, (size_t)n * ice_page_bytes(&vsh))) {
			v->bad = 1;
			return NULL;
		}
		v->rounds++;
		usleep(200);
	}
	return NULL;
}

static void random_entry(uint64_t *rng, struct ring_sqe *s, uint32_t seq, uint64_t arena)
{
	uint64_t r = rt_rand(rng);

	memset(s, 0, sizeof(*s));
	/* Mostly real opcodes with broken fields, some unknown opcodes, some pure noise. */
	if ((r & 15) == 0) {
		uint64_t *w = (uint64_t *)(void *)s;
		int i;

		for (i = 0; i < 8; i++)
			w[i] = rt_rand(rng);
		return;
	}
	s->opcode = (uint8_t)((r >> 4) % 8 ? (r >> 8) % OP__COUNT : (r >> 8));
	if ((r >> 16) % 16 == 0)
		s->flags = (uint8_t)(r >> 20) | 1;
	s->layer = (uint16_t)((r >> 28) % 3);
	s->seq = (r >> 30) & 1 ? seq : (uint32_t)rt_rand(rng);
	if ((r >> 31) & 1) {
		s->arg[0] = (r >> 32) & 1 ? rt_rand(rng) % 300 : rt_rand(rng);
		if ((r >> 33) & 1)
			s->arg[1] = rt_rand(rng);
	}
	if ((r >> 34) & 1) {
		s->in_off = (r >> 35) & 1 ? (rt_rand(rng) % arena) & ~7ull : rt_rand(rng);
		s->in_len = (r >> 36) & 1 ? rt_rand(rng) % (arena / 4) : rt_rand(rng);
	}
	if ((r >> 37) & 1) {
		s->out_off = (r >> 38) & 1 ? (rt_rand(rng) % arena) & ~7ull : rt_rand(rng);
		s->out_len = (r >> 39) & 1 ? rt_rand(rng) % (arena / 4) : rt_rand(rng);
	}
	/* The attacker never sends a valid close of its own sequence, so it can keep going. */
	if (s->opcode == OP_SEQ_CLOSE)
		s->layer = 1;
}

START_TEST(million_malformed_entries_get_error_completions)
{
	static float k[2 * 300 * 32], v[2 * 300 * 32];
	struct ice_ctx *att, *vc;
	struct victim vic = { 0 };
	static struct ring_sqe sb[BURST];
	static struct ring_cqe cb[BURST];
	uint64_t rng = 4242, arena, errs = 0, oks = 0, i, t0;
	uint32_t aseq;
	char *dir = rt_tmpdir();
	pthread_t t;
	pid_t d;
	int st;

	d = rt_daemon_start(dir, sock, sizeof(sock), "arena_bytes=1048576");
	ck_assert_int_gt(d, 0);
	ck_assert_int_eq(ice_connect(sock, &vc), 0);
	ck_assert_int_eq(ice_connect(sock, &att), 0);
	rt_make_kv(9, 2, 32, 0, 300, k, v);
	ck_assert_int_eq(ice_seq_open(vc, &vsh, &vb, &vic.seq), 0);
	ck_assert_int_eq(ice_append(vc, vic.seq, 0, 300, k, v), 0);
	ck_assert_int_eq(ice_seq_open(att, &vsh, &vb, &aseq), 0);
	vic.c = vc;
	pthread_create(&t, NULL, victim_main, &vic);
	ck_assert_ptr_nonnull(shim_arena(att, &arena));
	t0 = clock_now_ns();
	/* Bursts of 256 entries in flight at once: the ring's batching keeps a million requests
	 * to seconds even on a loaded machine. */
	for (i = 0; i < FLOOD; i += BURST) {
		size_t j;

		for (j = 0; j < BURST; j++)
			random_entry(&rng, &sb[j], aseq, arena);
		ck_assert_int_eq(shim_raw_batch(att, sb, BURST, cb), 0);
		for (j = 0; j < BURST; j++) {
			if (cb[j].res < 0)
				errs++;
			else
				oks++;
		}
	}
	__atomic_store_n(&vic.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	printf("%llu entries in %.1f s: %llu errors, %llu accepted; victim rounds %ld\n",
	       (unsigned long long)FLOOD, (double)(clock_now_ns() - t0) / 1e9,
	       (unsigned long long)errs, (unsigned long long)oks, vic.rounds);
	ck_assert_int_eq(vic.bad, 0);
	ck_assert_int_gt(vic.rounds, 0);
	/* Almost everything is malformed; what got through was a well-formed request by chance. */
	ck_assert_uint_gt(errs, FLOOD * 9 / 10);
	ck_assert_int_eq(ice_noop(att), 0);

	/* Now the attacker breaks its own ring: a tail far past the head. The daemon cuts it off. */
	((struct ring_shared *)shim_sq_shared(att))->tail += 1000000;
	ring_kick(&(struct ring){ .sh = shim_sq_shared(att) });
	for (i = 0; i < 300; i++) {
		char buf[8192];
		uint64_t bad = 0;

		ck_assert_int_gt(ice_stats(vc, buf, sizeof(buf)), 0);
		stats_find_u64(buf, "daemon.bad_rings", &bad);
		if (bad == 1)
			break;
		usleep(10000);
	}
	ck_assert_int_lt(i, 300);
	ck_assert_int_lt(ice_noop(att), 0);
	ck_assert_int_eq(ice_noop(vc), 0);
	ck_assert_int_eq(ice_seq_close(vc, vic.seq), 0);
	ice_close(att);
	ice_close(vc);
	st = rt_daemon_stop(d);
	ck_assert_int_eq(st, 0);
}
END_TEST

static Suite *fault_suite(void)
{
	Suite *s = suite_create("runtime-fault");
	TCase *t = tcase_create("malformed");

	tcase_set_timeout(t, 900);
	tcase_add_test(t, million_malformed_entries_get_error_completions);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	Suite *const suites[] = { fault_suite(), NULL };

	return check_run_suites(suites);
}
