/* Unit tests for runtime/: the ring, the config table, the opcode table, and the engine through
 * the public API in embedded mode (checked against a brute-force reference). */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>

#include "check_main.h"
#include "clock.h"
#include "config.h"
#include "engine.h"
#include "ops.h"
#include "proto.h"
#include "ring.h"
#include "rt_scenario.h"
#include "shim.h"

static _Alignas(64) unsigned char ring_mem[1 << 16];

START_TEST(ring_layout_is_what_the_doc_says)
{
	ck_assert_uint_eq(sizeof(struct ring_sqe), 64);
	ck_assert_uint_eq(sizeof(struct ring_cqe), 32);
	ck_assert_uint_eq(__builtin_offsetof(struct ring_shared, head), 64);
	ck_assert_uint_eq(ring_bytes(8, 64), 5 * 64 + 8 * 64);
}
END_TEST

START_TEST(ring_fills_drains_and_wraps_in_order)
{
	struct ring p, c;
	uint64_t next = 0, want = 0, *e;
	int err, round, i;

	ck_assert_int_eq(ring_init(&p, ring_mem, 8, 8, true), 0);
	ck_assert_int_eq(ring_init(&c, ring_mem, 8, 8, false), 0);
	ck_assert_ptr_null(ring_peek(&c, &err));
	ck_assert_int_eq(err, 0);
	for (round = 0; round < 100; round++) {
		int burst = round % 9;

		for (i = 0; i < burst; i++) {
			e = ring_produce_slot(&p, &err);
			if (i >= 8) {
				ck_assert_ptr_null(e);
				ck_assert_int_eq(err, 0);
				break;
			}
			ck_assert_ptr_nonnull(e);
			*e = next++;
			ring_produce_commit(&p);
		}
		ck_assert_uint_eq(ring_ready(&c), (uint32_t)(burst > 8 ? 8 : burst));
		while ((e = (uint64_t *)ring_peek(&c, &err))) {
			ck_assert_uint_eq(*e, want++);
			ring_consume(&c);
		}
	}
	ck_assert_uint_eq(want, next);
}
END_TEST

START_TEST(ring_refuses_impossible_indexes)
{
	struct ring p, c;
	int err;

	ck_assert_int_eq(ring_init(&p, ring_mem, 8, 64, true), 0);
	ck_assert_int_eq(ring_init(&c, ring_mem, 8, 64, false), 0);
	/* A producer claiming more entries than the ring holds. */
	p.sh->tail = 9;
	ck_assert_ptr_null(ring_peek(&c, &err));
	ck_assert_int_eq(err, -EBADMSG);
	ck_assert_uint_eq(ring_ready(&c), 0);
	p.sh->tail = 0;
	/* A consumer claiming to have consumed what was never produced. */
	p.sh->head = 3;
	ck_assert_ptr_null(ring_produce_slot(&p, &err));
	ck_assert_int_eq(err, -EBADMSG);
	ck_assert_int_eq(ring_init(&p, ring_mem, 6, 64, true), -EINVAL);
	ck_assert_int_eq(ring_init(&p, ring_mem + 8, 8, 64, true), -EINVAL);
	ck_assert_int_eq(ring_init(&p, ring_mem, 8, 12, true), -EINVAL);
}
END_TEST

#define XFER 300000
static void *producer_main(void *arg)
{
	struct ring *p = arg;
	uint64_t i, *e;
	int err;

	for (i = 0; i < XFER; i++) {
		while (!(e = ring_produce_slot(p, &err)))
			ring_wait_space(p, i & 1 ? 0 : 2000, 2000000000ull);
		*e = i;
		ring_produce_commit(p);
	}
	return NULL;
}

/* Two threads, spins of 0 and short: the futex path runs often and never loses a wake-up
 * (a lost one would stall for the whole 2 s timeout, which the bounds below catch; a wait
 * that ends early for a spurious wake-up is not counted: it comes back ready). */
START_TEST(ring_two_threads_keep_order_through_sleeps)
{
	struct ring p, c;
	pthread_t t;
	uint64_t want = 0, t0 = clock_now_ns(), timeouts = 0;
	const uint64_t *e;
	int err;

	ck_assert_int_eq(ring_init(&p, ring_mem, 16, 8, true), 0);
	ck_assert_int_eq(ring_init(&c, ring_mem, 16, 8, false), 0);
	pthread_create(&t, NULL, producer_main, &p);
	while (want < XFER) {
		e = ring_peek(&c, &err);
		ck_assert_int_eq(err, 0);
		if (!e) {
			if (ring_wait_ready(&c, want & 1 ? 0 : 1000, 2000000000ull) == -ETIMEDOUT)
				timeouts++;
			continue;
		}
		ck_assert_uint_eq(*e, want);
		want++;
		ring_consume(&c);
	}
	pthread_join(t, NULL);
	ck_assert_uint_le(timeouts, 2);
	ck_assert_uint_lt(clock_now_ns() - t0, 60ull * 1000000000ull);
}
END_TEST

START_TEST(config_round_trips_and_rejects_bad_values)
{
	struct rt_config a, b;
	char buf[4096];
	int line = -1;

	config_defaults(&a);
	ck_assert_int_eq(config_set(&a, "dram_bytes = 12345678"), 0);
	ck_assert_int_eq(config_set(&a, "socket_path=/tmp/x.sock"), 0);
	ck_assert_int_gt(config_print(&a, buf, sizeof(buf)), 0);
	config_defaults(&b);
	ck_assert_int_eq(config_parse(&b, buf, NULL), 0);
	ck_assert_mem_eq(&a, &b, sizeof(a));
	ck_assert_int_eq(config_parse(&b, "# c\n\nsq_entries = 64\nnope = 1\n", &line), -EINVAL);
	ck_assert_int_eq(line, 4);
	ck_assert_uint_eq(b.sq_entries, a.sq_entries); /* nothing applied on failure */
	ck_assert_int_eq(config_set(&b, "sq_entries=100"), -EINVAL);
	ck_assert_int_eq(config_set(&b, "dram_bytes=-1"), -EINVAL);
	ck_assert_int_eq(config_set(&b, "dram_bytes=1x"), -EINVAL);
	ck_assert_int_eq(config_set(&b, "arena_bytes=4097"), -EINVAL);
	ck_assert_int_eq(config_set(&b, "cq_entries=2"), -EINVAL); /* < sq_entries */
	ck_assert_int_eq(config_print(&a, buf, 10), -ENOSPC);
}
END_TEST

START_TEST(opcode_table_is_complete)
{
	unsigned int i;

	ck_assert_int_eq(ops_verify(), 0);
	for (i = 0; i < OP__COUNT; i++)
		ck_assert_str_ne(ops_name(i), "unknown");
	ck_assert_str_eq(ops_name(OP__COUNT), "unknown");
}
END_TEST

START_TEST(embedded_matches_reference)
{
	struct ice_ctx *c;
	struct rt_scn s;

	char cfg[256], nvme[64] = "/tmp/icert-nvme-XXXXXX";
	uint64_t slow_pages = 0;
	char stats[1 << 16];

	/* exact_search: the page table must equal the brute-force reference exactly. Run 3 puts
	 * most pages on an NVMe tier file behind a DRAM tier of 64 slots. */
	snprintf(cfg, sizeof(cfg), "exact_search = 1\ndram_bytes = 67108864\n");
	if (_i == 3) {
		int fd = mkstemp(nvme);

		ck_assert_int_ge(fd, 0);
		close(fd);
		snprintf(cfg, sizeof(cfg),
			 "exact_search = 1\ndram_bytes = 1048576\n"
			 "nvme_path = %s\nnvme_bytes = 67108864\n",
			 nvme);
	}
	if (_i == 4) /* the first ranking: best token, round-robin merge, whole pages */
		snprintf(cfg, sizeof(cfg),
			 "exact_search = 1\ndram_bytes = 67108864\ngroup_merge = 0\n"
			 "page_mass = 0\noverfetch = 1\n");
	ck_assert_int_eq(ice_open_embedded(cfg, &c), 0);
	ck_assert_int_eq(ice_is_embedded(c), 1);
	rt_scn_default(&s, 11 + (uint64_t)_i, _i == 0 || _i == 3 ? 777 : (_i == 1 ? 20 : 300));
	s.group_merge = _i != 4;
	s.page_mass = _i != 4;
	s.overfetch = _i == 4 ? 1 : 2;
	if (_i == 2) {
		/* GQA group of 4, no sink, no dense layers, bigger budget than pages. */
		s.shape = (struct ice_model_shape){ 2, 8, 2, 64, ICE_DTYPE_F32 };
		s.budget = (struct ice_budget){ 0, 16, 256, 0 };
	}
	rt_scenario(c, &s);
	if (_i == 3) {
		ck_assert_int_gt(ice_stats(c, stats, sizeof(stats)), 0);
		ck_assert_int_eq(stats_find_u64(stats, "tier.nvme.writes", &slow_pages), 0);
		ck_assert_uint_gt(slow_pages, 0);
		unlink(nvme);
	}
	ice_close(c);
}
END_TEST

START_TEST(half_precision_is_stored_exactly_and_ranked_in_f32)
{
	const uint32_t dts[] = { ICE_DTYPE_F16, ICE_DTYPE_BF16 };
	struct ice_model_shape sh = { 1, 2, 1, 16, dts[_i] };
	struct ice_budget b = { 0, 0, 16, 0 };
	struct ice_page_ref r[8];
	uint16_t k[64 * 16], v[64 * 16], out[2 * 16 * 16];
	float q[2 * 16] = { 0 };
	struct ice_ctx *c;
	uint32_t seq, i, t, found = 0;
	int n;

	/* Token 37's key is +1.0 in dimension 0, every other key is 0 there; V rows name tokens. */
	for (i = 0; i < 64 * 16; i++) {
		k[i] = (uint16_t)(i % 16 ? (i * 13) & 0x3bff : 0);
		v[i] = (uint16_t)(i + 1);
	}
	k[37 * 16] = dts[_i] == ICE_DTYPE_F16 ? 0x3c00 : 0x3f80;
	q[0] = 1.0f;
	ck_assert_int_eq(ice_open_embedded("dram_bytes = 4194304\nslot_bytes = 4096", &c), 0);
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), 0);
	ck_assert_int_eq(ice_append(c, seq, 0, 64, k, v), 0);
	n = ice_select(c, seq, 0, q, r, 8, NULL);
	ck_assert_int_ge(n, 1);
	ck_assert_uint_eq(r[0].kind, ICE_PAGE_RETRIEVED);
	/* The page's mass at scale 1/sqrt(16): token 37 scores 1, its page-mates 0 (the page ranks
	 * by log-sum-exp, reported in q.k units). */
	ck_assert(fabsf(r[0].score - 4.0f * logf(expf(0.25f) + (float)(r[0].fill - 1))) < 1e-5f);
	ck_assert_int_eq(ice_fetch(c, seq, 0, r, 1, out, sizeof(out)), 0);
	/* Every row fetched is a row appended, bit for bit, and token 37 is among them. */
	for (t = 0; t < r[0].fill; t++) {
		uint32_t tok = (uint32_t)(out[(16 + t) * 16] - 1) / 16;

		ck_assert_uint_lt(tok, 64);
		ck_assert_mem_eq(out + t * 16, k + tok * 16, 16 * 2);
		ck_assert_mem_eq(out + (16 + t) * 16, v + tok * 16, 16 * 2);
		found += tok == 37;
	}
	ck_assert_uint_eq(found, 1);
	ice_close(c);
}
END_TEST

/*
 * A GQA group of 3 with one retrieved page per step. Queries 0 and 1 look at dimension 1, where
 * the sink is loud (their attention sits there) and a cluster of filler tokens is fairly loud
 * too; query 2 looks at dimension 0, where only a cluster of needle tokens is. Merged by weight
 * (the default) the page goes to the needle: beside its sink, query 0 gains little from the
 * filler. Round-robin (group_merge = 0) gives it to query 0, whose best page is filler: the
 * failure this merge exists to avoid. Exact and DCI-tree search alike.
 */
START_TEST(group_gives_its_page_to_the_query_that_gains_most)
{
	static const char *const cfgs[] = {
		"dram_bytes = 4194304",
		"dram_bytes = 4194304\nexact_search = 1",
		"dram_bytes = 4194304\ngroup_merge = 0",
	};
	struct ice_model_shape sh = { 1, 3, 1, 16, ICE_DTYPE_F32 };
	struct ice_budget b = { 16, 16, 16, 0 };
	enum { N = 200, D = 16, NEEDLE = 100, FILLER = 50, CLUSTER = 16 };
	static float k[N * D], v[N * D], out[2 * 16 * D];
	struct ice_page_ref r[16];
	float q[3 * D] = { 0 };
	struct ice_ctx *c;
	uint64_t rng = 9;
	uint32_t seq, i, t, needle = 0, filler = 0, nret = 0, attended = 0;
	int n;

	for (t = 0; t < N; t++) {
		for (i = 0; i < D; i++)
			k[t * D + i] = 0.05f * rt_frand(&rng);
		v[t * D] = (float)t; /* V rows name their token */
	}
	for (t = 0; t < 16; t++)
		k[t * D + 1] = 4.0f;
	for (t = 0; t < CLUSTER; t++) {
		k[(FILLER + t) * D + 1] = 3.0f;
		k[(NEEDLE + t) * D + 0] = 3.0f;
	}
	q[0 * D + 1] = 10.0f;
	q[1 * D + 1] = 10.0f;
	q[2 * D + 0] = 5.0f;
	ck_assert_int_eq(ice_open_embedded(cfgs[_i], &c), 0);
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), 0);
	ck_assert_int_eq(ice_append(c, seq, 0, N, k, v), 0);
	n = ice_select(c, seq, 0, q, r, 16, NULL);
	ck_assert_int_gt(n, 0);
	for (i = 0; i < (uint32_t)n; i++) {
		if (r[i].kind != ICE_PAGE_RETRIEVED)
			continue;
		nret++;
		ck_assert_int_eq(ice_fetch(c, seq, 0, &r[i], 1, out, sizeof(out)), 0);
		for (t = 0; t < r[i].fill; t++) {
			uint32_t tok = (uint32_t)out[(16 + t) * D];

			if (!(r[i].mask >> t & 1))
				continue; /* fetched, not attended */
			attended++;
			needle += tok >= NEEDLE && tok < NEEDLE + CLUSTER;
			filler += tok >= FILLER && tok < FILLER + CLUSTER;
		}
	}
	/* One page's worth of tokens attended, from the up to 2 pages searched (overfetch 2). */
	ck_assert_uint_ge(nret, 1);
	ck_assert_uint_le(nret, 2);
	ck_assert_uint_eq(attended, 16);
	if (_i < 2) {
		/* most of the cluster (a few of its tokens may sit in pages not searched) */
		ck_assert_uint_ge(needle, CLUSTER * 3 / 4);
		ck_assert_uint_eq(filler, 0);
	} else {
		ck_assert_uint_gt(filler, 0);
		ck_assert_uint_eq(needle, 0);
	}
	ice_close(c);
}
END_TEST

/* The DCI-tree search (the default) against exact search on the same data: every page it
 * returns is a real page, distinct, each head attends the budget's tokens, and most of its
 * pages are the exact ones. */
START_TEST(dci_search_agrees_with_exact_search)
{
	struct ice_model_shape sh = { 1, 8, 2, 64, ICE_DTYPE_F32 };
	struct ice_budget b = { 16, 16, 128, 0 };
	enum { N = 4000 };
	static float k[2 * N * 64], v[2 * N * 64];
	struct ice_page_ref ra[256], rb[256];
	float q[8 * 64];
	struct ice_ctx *a, *x;
	uint32_t sa, sx;
	uint64_t rng = 5;
	int na, nb, i, j, it, hit = 0, tot = 0, tokens[2];

	rt_make_kv(3, 2, 64, 0, N, k, v);
	ck_assert_int_eq(ice_open_embedded("dram_bytes = 67108864", &a), 0);
	ck_assert_int_eq(ice_open_embedded("exact_search = 1\ndram_bytes = 67108864", &x), 0);
	ck_assert_int_eq(ice_seq_open(a, &sh, &b, &sa), 0);
	ck_assert_int_eq(ice_seq_open(x, &sh, &b, &sx), 0);
	ck_assert_int_eq(ice_append(a, sa, 0, N, k, v), 0);
	ck_assert_int_eq(ice_append(x, sx, 0, N, k, v), 0);
	for (it = 0; it < 20; it++) {
		/* queries near a stored key, as attention queries are */
		uint32_t tok = (uint32_t)(rt_rand(&rng) % N);

		for (i = 0; i < 8 * 64; i++)
			q[i] = k[(size_t)(i / 64 / 4) * N * 64 + (size_t)tok * 64 + i % 64] +
			       0.3f * rt_frand(&rng);
		na = ice_select(a, sa, 0, q, ra, 256, NULL);
		nb = ice_select(x, sx, 0, q, rb, 256, NULL);
		ck_assert_int_gt(na, 0);
		ck_assert_int_gt(nb, 0);
		tokens[0] = tokens[1] = 0;
		for (i = 0; i < na; i++) {
			if (ra[i].kind != ICE_PAGE_RETRIEVED)
				continue;
			tokens[ra[i].kv_head] += __builtin_popcount(ra[i].mask);
			for (j = 0; j < i; j++)
				ck_assert(!(ra[j].kind == ICE_PAGE_RETRIEVED &&
					    ra[j].kv_head == ra[i].kv_head &&
					    ra[j].page == ra[i].page));
			for (j = 0; j < nb; j++)
				if (rb[j].kind == ICE_PAGE_RETRIEVED &&
				    rb[j].kv_head == ra[i].kv_head && rb[j].page == ra[i].page)
					break;
			hit += j < nb;
			tot++;
		}
		ck_assert_int_eq(tokens[0], 128);
		ck_assert_int_eq(tokens[1], 128);
	}
	printf("dci vs exact page recall: %d / %d\n", hit, tot);
	ck_assert_int_ge(tot, 20 * 2 * 8);
	ck_assert_int_ge(hit * 10, tot * 6);
	ice_close(a);
	ice_close(x);
}
END_TEST

START_TEST(bad_arguments_get_errors)
{
	struct ice_model_shape sh = { 2, 4, 2, 16, ICE_DTYPE_F32 };
	struct ice_budget b = { 16, 16, 32, 0 };
	struct ice_page_ref r[16];
	float kv[2 * 40 * 16] = { 0 }, q[4 * 16] = { 0 }, out[2 * 16 * 16], rest[4 * 17];
	size_t need, rl = sizeof(rest);
	struct ice_seq_info si;
	struct ice_ctx *c, *c2;
	uint32_t seq, seq2;
	char small[8];

	ck_assert_int_eq(ice_open_embedded("dram_bytes = banana", &c), -EINVAL);
	ck_assert_int_eq(ice_open_embedded(NULL, NULL), -EINVAL);
	ck_assert_int_eq(ice_open_embedded("dram_bytes = 67108864", &c), 0);
	ck_assert_int_eq(ice_noop(NULL), -EINVAL);
	sh.q_heads = 3;
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), -EINVAL);
	sh.q_heads = 4;
	sh.dtype = 9;
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), -EINVAL);
	sh.dtype = ICE_DTYPE_F32;
	sh.head_dim = 12;
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), -EINVAL);
	sh.head_dim = 16;
	b.dense_layers = 3;
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), -EINVAL);
	b.dense_layers = 0;
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), 0);
	ck_assert_int_eq(ice_append(c, seq, 2, 40, kv, kv), -EINVAL);
	ck_assert_int_eq(ice_append(c, seq, 0, 0, kv, kv), -EINVAL);
	ck_assert_int_eq(ice_append(c, seq + 1, 0, 40, kv, kv), -ENOENT);
	ck_assert_int_eq(ice_append(c, seq, 0, 40, kv, kv), 0);
	/* ret_need: written on success and on -ENOSPC, untouched by any other error. */
	need = 77;
	ck_assert_int_eq(ice_select(c, seq, 5, q, r, 16, &need), -EINVAL);
	ck_assert_int_eq(ice_select(c, seq + 1, 0, q, r, 16, &need), -ENOENT);
	ck_assert_int_eq(ice_select(c, seq, 0, q, r, 0, &need), -EINVAL);
	ck_assert_int_eq(ice_select(c, seq, 0, NULL, r, 16, &need), -EINVAL);
	ck_assert_uint_eq(need, 77);
	ck_assert_int_eq(ice_select(c, seq, 0, q, r, 1, &need), -ENOSPC);
	ck_assert_uint_eq(need, (size_t)ice_select_cap(c, seq, 0));
	ck_assert_int_eq(ice_select(c, seq, 0, q, r, 1, NULL), -ENOSPC);
	ck_assert_int_gt(ice_select(c, seq, 0, q, r, 16, NULL), 0);
	need = 77;
	ck_assert_int_eq(ice_select_rest(c, seq, 0, q, r, 16, NULL, rl, &need), -EINVAL);
	ck_assert_int_eq(ice_select_rest(c, seq, 0, q, r, 16, rest, rl - 4, &need), -EINVAL);
	ck_assert_int_eq(ice_select_rest(c, seq, 5, q, r, 16, rest, rl, &need), -EINVAL);
	ck_assert_int_eq(ice_select_rest(c, seq + 1, 0, q, r, 16, rest, rl, &need), -ENOENT);
	ck_assert_uint_eq(need, 77);
	ck_assert_int_eq(ice_select_rest(c, seq, 0, q, r, 1, rest, rl, &need), -ENOSPC);
	ck_assert_uint_eq(need, (size_t)ice_select_cap(c, seq, 0));
	ck_assert_int_gt(ice_select_rest(c, seq, 0, q, r, 16, rest, rl, NULL), 0);
	ck_assert_int_eq(ice_seq_info(NULL, seq, &si), -EINVAL);
	ck_assert_int_eq(ice_seq_info(c, seq, NULL), -EINVAL);
	ck_assert_int_eq(ice_seq_info(c, seq + 1, &si), -ENOENT);
	r[0].page = 99;
	ck_assert_int_eq(ice_fetch(c, seq, 0, r, 1, out, sizeof(out)), -EINVAL);
	r[0].page = 0;
	r[0].kv_head = 2;
	ck_assert_int_eq(ice_fetch(c, seq, 0, r, 1, out, sizeof(out)), -EINVAL);
	r[0].kv_head = 0;
	r[0].kind = 7;
	ck_assert_int_eq(ice_fetch(c, seq, 0, r, 1, out, sizeof(out)), -EINVAL);
	r[0].kind = ICE_PAGE_SINK;
	ck_assert_int_eq(ice_fetch(c, seq, 0, r, 1, out, 100), -ENOSPC);
	ck_assert_int_eq(ice_stats(c, small, sizeof(small)), -ENOSPC);
	/* A per-client quota on sequences. */
	{
		struct ice_ctx *qc;
		uint32_t s1, s2, s3;

		ck_assert_int_eq(
			ice_open_embedded("client_max_seqs = 2\ndram_bytes = 67108864", &qc), 0);
		ck_assert_int_eq(ice_seq_open(qc, &sh, &b, &s1), 0);
		ck_assert_int_eq(ice_seq_open(qc, &sh, &b, &s2), 0);
		ck_assert_int_eq(ice_seq_open(qc, &sh, &b, &s3), -EDQUOT);
		ck_assert_int_eq(ice_seq_close(qc, s1), 0);
		ck_assert_int_eq(ice_seq_open(qc, &sh, &b, &s3), 0);
		ice_close(qc);
	}
	/* Another context's sequence does not exist for this one. */
	ck_assert_int_eq(ice_open_embedded("dram_bytes = 67108864", &c2), 0);
	ck_assert_int_eq(ice_seq_open(c2, &sh, &b, &seq2), 0);
	ck_assert_int_eq(ice_seq_close(c2, seq2), 0);
	ice_close(c2);
	ice_close(c);
}
END_TEST

/* Sum of op.<name>.count over every opcode but stats: what the context sent the engine. */
static uint64_t ops_sent(struct ice_ctx *c)
{
	static char st[1 << 16];
	uint64_t n = 0, v;
	char *p;

	ck_assert_int_gt(ice_stats(c, st, sizeof(st)), 0);
	for (p = st; (p = strstr(p, "\nop.")); p++) {
		char name[64];

		if (sscanf(p + 1, "%63s %" SCNu64, name, &v) == 2 && strlen(name) > 6 &&
		    !strcmp(name + strlen(name) - 6, ".count") && strncmp(name, "op.stats.", 9))
			n += v;
	}
	return n;
}

/* ice_seq_info answers from what the context knows, without a request: the shape and budget
 * it opened with, the longest layer, and the page size fetch uses. */
START_TEST(seq_info_is_answered_without_a_round_trip)
{
	struct ice_model_shape sh = { 3, 4, 2, 16, ICE_DTYPE_BF16 };
	struct ice_budget b = { 16, 16, 32, 1 };
	static uint16_t kv[2 * 100 * 16];
	struct ice_seq_info si;
	struct ice_ctx *c;
	uint64_t sent;
	uint32_t seq;
	int i;

	ck_assert_int_eq(ice_open_embedded("dram_bytes = 67108864", &c), 0);
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), 0);
	ck_assert_int_eq(ice_seq_info(c, seq, &si), 0);
	ck_assert_mem_eq(&si.shape, &sh, sizeof(sh));
	ck_assert_mem_eq(&si.budget, &b, sizeof(b));
	ck_assert_uint_eq(si.tokens, 0);
	ck_assert_uint_eq(si.page_bytes, ice_page_bytes(&sh));
	ck_assert_int_eq(ice_append(c, seq, 0, 40, kv, kv), 0);
	ck_assert_int_eq(ice_append(c, seq, 1, 10, kv, kv), 0);
	ck_assert_int_eq(ice_append(c, seq, 3, 100, kv, kv), -EINVAL); /* no layer 3 */
	ck_assert_int_eq(ice_seq_info(c, seq, &si), 0);
	ck_assert_uint_eq(si.tokens, 40);
	ck_assert_int_eq(ice_append(c, seq, 1, 100, kv, kv), 0);
	sent = ops_sent(c);
	ck_assert_uint_ge(sent, 5); /* seq_open and four appends, at least */
	for (i = 0; i < 100; i++)
		ck_assert_int_eq(ice_seq_info(c, seq, &si), 0);
	ck_assert_uint_eq(ops_sent(c), sent);
	ck_assert_uint_eq(si.tokens, 110);
	ck_assert_int_eq(ice_seq_close(c, seq), 0);
	ck_assert_int_eq(ice_seq_info(c, seq, &si), -ENOENT);
	ice_close(c);
}
END_TEST

/* A dense layer whose table outgrows the context's arena: -E2BIG (no cap would do), not an
 * -ENOSPC that a caller growing its buffer would retry for ever. The queries of 240 heads take
 * most of a 64 KiB arena, leaving room for 170 refs; 15 KV heads of 256 tokens need more. */
START_TEST(table_beyond_the_arena_is_e2big)
{
	struct ice_model_shape sh = { 1, 240, 15, 64, ICE_DTYPE_F32 };
	struct ice_budget b = { 0, 16, 16, 1 };
	const size_t room = (65536 - 240 * 64 * sizeof(float)) / sizeof(struct ice_page_ref);
	static float kv[15 * 256 * 64], q[240 * 64];
	static struct ice_page_ref r[1024];
	struct ice_ctx *c;
	size_t need = 77;
	uint32_t seq;
	int i, cap;

	for (i = 0; i < 15 * 256 * 64; i++)
		kv[i] = (float)((i * 7) % 19) - 9.0f;
	ck_assert_int_eq(ice_open_embedded("arena_bytes = 65536\ndram_bytes = 67108864", &c), 0);
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), 0);
	ck_assert_int_eq(ice_append(c, seq, 0, 256, kv, kv), 0);
	cap = ice_select_cap(c, seq, 0);
	ck_assert_int_gt(cap, (int)room);
	ck_assert_int_le(cap, 1024);
	ck_assert_int_eq(ice_select(c, seq, 0, q, r, 1024, &need), -E2BIG);
	ck_assert_int_eq(ice_select(c, seq, 0, q, r, 1, &need), -E2BIG);
	ck_assert_uint_eq(need, 77);
	ice_close(c);
}
END_TEST

/* A DRAM cap that fills up: -ENOSPC, and the sequence keeps working with what it has. */
START_TEST(full_dram_tier_is_an_error_not_a_crash)
{
	struct ice_model_shape sh = { 1, 2, 2, 64, ICE_DTYPE_F32 };
	struct ice_budget b = { 16, 16, 32, 0 };
	static float kv[2 * 64 * 64];
	struct ice_page_ref r[64];
	float q[2 * 64] = { 1 };
	char stats[8192];
	struct ice_ctx *c;
	uint32_t seq;
	uint64_t used, cap;
	int err = 0, i, n1, n2;

	ck_assert_int_eq(ice_open_embedded("dram_bytes = 2097152\nslot_bytes = 8192", &c), 0);
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), 0);
	for (i = 0; i < (int)(sizeof(kv) / sizeof(kv[0])); i++)
		kv[i] = (float)((i * 7) % 19) - 9.0f;
	for (i = 0; i < 1000 && !err; i++)
		err = ice_append(c, seq, 0, 64, kv, kv);
	ck_assert_int_gt(i, 2);
	ck_assert_int_eq(err, -ENOSPC);
	n1 = ice_select(c, seq, 0, q, r, 64, NULL);
	ck_assert_int_gt(n1, 0);
	ck_assert_int_eq(ice_append(c, seq, 0, 64, kv, kv), -ENOSPC);
	n2 = ice_select(c, seq, 0, q, r, 64, NULL);
	ck_assert_int_eq(n1, n2);
	ck_assert_int_gt(ice_stats(c, stats, sizeof(stats)), 0);
	ck_assert_int_eq(stats_find_u64(stats, "tier.dram.used_bytes", &used), 0);
	ck_assert_int_eq(stats_find_u64(stats, "tier.dram.capacity_bytes", &cap), 0);
	ck_assert_uint_le(used, cap);
	ck_assert_int_eq(ice_seq_close(c, seq), 0);
	ck_assert_int_gt(ice_stats(c, stats, sizeof(stats)), 0);
	ck_assert_int_eq(stats_find_u64(stats, "tier.dram.used_bytes", &used), 0);
	ck_assert_uint_eq(used, 0);
	ck_assert_int_eq(stats_find_u64(stats, "engine.host_used_bytes", &used), 0);
	ck_assert_uint_eq(used, 0);
	ice_close(c);
}
END_TEST

/* Pages the policy demoted to the NVMe tier say so in their refs (the engine asks each tier its
 * kind), and still fetch; sink and window pages live in the engine's host memory (DRAM). */
START_TEST(refs_name_the_tier_that_holds_the_page)
{
	struct ice_model_shape sh = { 1, 1, 1, 64, ICE_DTYPE_F32 };
	struct ice_budget b = { 16, 16, 16, 1 }; /* dense: select returns every page */
	static float kv[4096 * 64];
	static struct ice_page_ref r[512];
	char cfg[256], nvme[64] = "/tmp/icert-kind-XXXXXX";
	float q[64] = { 1 }, page[2 * 16 * 64];
	uint32_t seq, ndram = 0, nnvme = 0;
	uint64_t in_dram, pages;
	char stats[1 << 16];
	struct ice_ctx *c;
	int fd, n, i;

	fd = mkstemp(nvme);
	ck_assert_int_ge(fd, 0);
	close(fd);
	/* 128 DRAM slots of 8 KiB for ~280 pages: the policy demotes the rest to NVMe. */
	snprintf(cfg, sizeof(cfg), "dram_bytes = 1048576\nnvme_path = %s\nnvme_bytes = 67108864\n",
		 nvme);
	ck_assert_int_eq(ice_open_embedded(cfg, &c), 0);
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), 0);
	for (i = 0; i < 4096 * 64; i++)
		kv[i] = (float)((i * 7) % 19) - 9.0f;
	ck_assert_int_eq(ice_append(c, seq, 0, 4096, kv, kv), 0);
	n = ice_select(c, seq, 0, q, r, 512, NULL);
	ck_assert_int_gt(n, 0);
	/* Before any fetch (a fetch from NVMe may promote the page). */
	ck_assert_int_gt(ice_stats(c, stats, sizeof(stats)), 0);
	ck_assert_int_eq(stats_find_u64(stats, "tier.dram.pages", &in_dram), 0);
	ck_assert_int_eq(stats_find_u64(stats, "store.pages", &pages), 0);
	for (i = 0; i < n; i++) {
		ck_assert(r[i].tier == ICE_TIER_DRAM || r[i].tier == ICE_TIER_NVME);
		if (r[i].kind != ICE_PAGE_RETRIEVED) {
			ck_assert_uint_eq(r[i].tier, ICE_TIER_DRAM);
			continue;
		}
		ndram += r[i].tier == ICE_TIER_DRAM;
		nnvme += r[i].tier == ICE_TIER_NVME;
	}
	/* Every stored page is in the table once: those with a DRAM copy say DRAM. */
	ck_assert_uint_eq(ndram + nnvme, pages);
	ck_assert_uint_eq(ndram, in_dram);
	ck_assert_uint_gt(nnvme, 0);
	for (i = 0; i < n; i++)
		if (r[i].tier == ICE_TIER_NVME)
			ck_assert_int_eq(ice_fetch(c, seq, 0, &r[i], 1, page, sizeof(page)), 0);
	ice_close(c);
	unlink(nvme);
}
END_TEST

/* The same table in-process: random entries never crash and never succeed when malformed. */
START_TEST(embedded_random_entries_get_errors)
{
	struct ice_model_shape sh = { 2, 4, 2, 16, ICE_DTYPE_F32 };
	struct ice_budget b = { 16, 16, 32, 0 };
	struct ice_ctx *c;
	struct ring_sqe s;
	struct ring_cqe q;
	uint64_t rng = 99, arena, ok = 0, i;
	uint32_t seq;

	ck_assert_int_eq(ice_open_embedded("arena_bytes = 65536\ndram_bytes = 67108864", &c), 0);
	ck_assert_ptr_nonnull(shim_arena(c, &arena));
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), 0);
	for (i = 0; i < 100000; i++) {
		uint64_t r = rt_rand(&rng);

		memset(&s, 0, sizeof(s));
		s.opcode = (uint8_t)(r % 16 < 12 ? r % OP__COUNT : r >> 8);
		if (r & (1ull << 20))
			s.flags = (uint8_t)(r >> 24);
		s.layer = (uint16_t)(r >> 32) % 4;
		s.seq = (r & (1ull << 21)) ? seq : (uint32_t)rt_rand(&rng);
		if (r & (1ull << 22))
			s.arg[0] = rt_rand(&rng) % 200;
		if (r & (1ull << 23)) {
			s.in_off = rt_rand(&rng) % (arena + 16);
			s.in_len = rt_rand(&rng) % (arena + 16);
		}
		if (r & (1ull << 25)) {
			s.out_off = rt_rand(&rng) % (arena + 16);
			s.out_len = rt_rand(&rng) % (arena + 16);
		}
		ck_assert_int_eq(shim_raw(c, &s, &q), 0);
		ck_assert_uint_eq(q.tag, i + 2);
		if (q.res >= 0)
			ok++;
	}
	/* The context still works afterwards. */
	ck_assert_int_eq(ice_noop(c), 0);
	ck_assert_uint_lt(ok, 100000);
	ice_close(c);
}
END_TEST

/* libicecache.so exports the public API, exactly: every function icecache.h declares (read
 * from the header, so a new one cannot be left out of libicecache.map), at the API version's
 * node, and nothing else. */
START_TEST(library_exports_exactly_the_public_api)
{
	const char *root = getenv("ICE_BUILD_ROOT"), *src = getenv("ICE_SOURCE_ROOT");
	char cmd[1024], line[512], node[32], api[64][64];
	unsigned char seen[64] = { 0 };
	size_t i, napi = 0;
	FILE *f;

	snprintf(cmd, sizeof(cmd),
		 "grep -oE '^[a-z][a-z_0-9 ]*[ *](ice_[a-z_]+)\\(' %s/include/icecache/icecache.h "
		 "| grep -oE 'ice_[a-z_]+'",
		 src ? src : ".");
	f = popen(cmd, "r");
	ck_assert_ptr_nonnull(f);
	while (napi < 64 && fgets(api[napi], sizeof(api[napi]), f)) {
		api[napi][strcspn(api[napi], "\n")] = '\0';
		napi += api[napi][0] != '\0';
	}
	pclose(f);
	ck_assert_msg(napi >= 15, "found %zu functions in icecache.h", napi);
	snprintf(node, sizeof(node), "ICECACHE_%d", ICE_API_VERSION);
	snprintf(cmd, sizeof(cmd),
		 "nm -D --defined-only %s/runtime/libicecache.so 2>/dev/null | awk '{print $3}'",
		 root ? root : "build");
	f = popen(cmd, "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f)) {
		char *at = strstr(line, "@@");

		line[strcspn(line, "\n")] = '\0';
		if (!line[0] || !strcmp(line, node))
			continue;
		ck_assert_msg(at && !strcmp(at + 2, node), "exported outside %s: %s", node, line);
		*at = '\0';
		for (i = 0; i < napi && strcmp(line, api[i]); i++)
			;
		ck_assert_msg(i < napi, "exported: %s", line);
		seen[i] = 1;
	}
	pclose(f);
	for (i = 0; i < napi; i++)
		ck_assert_msg(seen[i], "not exported: %s", api[i]);
}
END_TEST

static Suite *rt_suite(void)
{
	Suite *s = suite_create("runtime-unit");
	TCase *t = tcase_create("ring");

	tcase_set_timeout(t, 120);
	tcase_add_test(t, ring_layout_is_what_the_doc_says);
	tcase_add_test(t, ring_fills_drains_and_wraps_in_order);
	tcase_add_test(t, ring_refuses_impossible_indexes);
	tcase_add_test(t, ring_two_threads_keep_order_through_sleeps);
	suite_add_tcase(s, t);
	t = tcase_create("control");
	tcase_add_test(t, config_round_trips_and_rejects_bad_values);
	tcase_add_test(t, opcode_table_is_complete);
	tcase_add_test(t, library_exports_exactly_the_public_api);
	suite_add_tcase(s, t);
	t = tcase_create("engine");
	tcase_set_timeout(t, 120);
	tcase_add_loop_test(t, embedded_matches_reference, 0, 5);
	tcase_add_loop_test(t, half_precision_is_stored_exactly_and_ranked_in_f32, 0, 2);
	tcase_add_test(t, dci_search_agrees_with_exact_search);
	tcase_add_loop_test(t, group_gives_its_page_to_the_query_that_gains_most, 0, 3);
	tcase_add_test(t, bad_arguments_get_errors);
	tcase_add_test(t, seq_info_is_answered_without_a_round_trip);
	tcase_add_test(t, table_beyond_the_arena_is_e2big);
	tcase_add_test(t, full_dram_tier_is_an_error_not_a_crash);
	tcase_add_test(t, refs_name_the_tier_that_holds_the_page);
	tcase_add_test(t, embedded_random_entries_get_errors);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	Suite *const suites[] = { rt_suite(), NULL };

	return check_run_suites(suites);
}
