/*
 * The Redis tier against real redis-server processes on loopback: byte-exact round trips
 * (standalone and a 3-node cluster, through the tier and through the store), pipelining,
 * MOVED and ASK redirections, checksums on every read, the faults (server gone, stopped, full,
 * restarted) and the engine path (a sequence larger than DRAM whose pages come back from Redis).
 * Skips (77) only when redis-server is not installed.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "clock.h"
#include "crc32c.h"
#include "dram.h"
#include "engine.h"
#include "icecache/icecache.h"
#include "nvme.h"
#include "policy.h"
#include "redis.h"
#include "redis_srv.h"
#include "rt_scenario.h"
#include "stats.h"
#include "store.h"
#include "tier.h"
#include "tiers_test.h"

#define SLOT 8192u

static char basedir[200], tmpdir[256];

static void setup_base(void)
{
	tt_mkdtemp(basedir, sizeof(basedir));
}

static void teardown_base(void)
{
	tt_rmtree(basedir);
}

static void setup_tmp(void)
{
	if (snprintf(tmpdir, sizeof(tmpdir), "%s/t-XXXXXX", basedir) >= (int)sizeof(tmpdir) ||
	    !mkdtemp(tmpdir))
		abort();
}

static void teardown_tmp(void)
{
	tt_rmtree(tmpdir);
}

static struct tier *open_redis(const char *url, uint64_t slots, unsigned timeout_ms,
			       unsigned retry_ms, const char *prefix)
{
	struct tier_config c = { .capacity_bytes = slots * SLOT,
				 .slot_size = SLOT,
				 .path = url,
				 .timeout_ms = timeout_ms,
				 .retry_ms = retry_ms,
				 .key_prefix = prefix };
	struct tier *t = NULL;

	ck_assert_int_eq(tier_open(&redis_tier_ops, &c, &t), 0);
	return t;
}

static struct tier *open_dram(uint64_t slots)
{
	struct tier_config c = { .capacity_bytes = slots * SLOT,
				 .slot_size = SLOT,
				 .numa_node = -1,
				 .flags = TIER_F_NO_HUGEPAGES | TIER_F_NO_MLOCK };
	struct tier *t = NULL;

	ck_assert_int_eq(tier_open(&dram_tier_ops, &c, &t), 0);
	return t;
}

static void fill(uint8_t *b, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
	size_t i;

	for (i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		b[i] = (uint8_t)x;
	}
}

static void url_of(char *buf, size_t cap, const struct rsrv *s, unsigned n)
{
	size_t len = (size_t)snprintf(buf, cap, "redis://");
	unsigned i;

	for (i = 0; i < n; i++)
		len += (size_t)snprintf(buf + len, cap - len, "%s127.0.0.1:%d", i ? "," : "",
					s[i].port);
}

static long long dbsize(int port)
{
	return rs_int(port, "DBSIZE");
}

/* Writes n slots of varied lengths through the tier, reads them back, compares. */
static void tier_round_trip(struct tier *t, unsigned n, uint64_t seed)
{
	uint8_t *src = malloc((size_t)n * SLOT), *dst = malloc((size_t)n * SLOT);
	struct tier_io *io = calloc(n, sizeof(*io));
	unsigned i;

	ck_assert_ptr_nonnull(src);
	ck_assert_ptr_nonnull(dst);
	fill(src, (size_t)n * SLOT, seed);
	memset(dst, 0xee, (size_t)n * SLOT);
	for (i = 0; i < n; i++) {
		uint32_t len = i % 5 == 0 ? SLOT : 1 + (uint32_t)((i * 977u) % SLOT);

		io[i] = (struct tier_io){
			.slot = i, .buf = src + (size_t)i * SLOT, .len = len, .cap = len
		};
	}
	ck_assert_int_eq(tier_write(t, io, n), 0);
	for (i = 0; i < n; i++) {
		io[i].buf = dst + (size_t)i * SLOT;
		io[i].cap = SLOT;
	}
	ck_assert_int_eq(tier_read(t, io, n), 0);
	for (i = 0; i < n; i++) {
		ck_assert_int_eq(io[i].res, 0);
		ck_assert_msg(!memcmp(src + (size_t)i * SLOT, dst + (size_t)i * SLOT, io[i].len),
			      "slot %u differs", i);
	}
	free(io);
	free(src);
	free(dst);
}

START_TEST(standalone_round_trip_is_byte_exact_and_pipelined)
{
	struct redis_info in;
	struct rsrv s = { 0 };
	struct tier *t;
	char url[64];

	ck_assert_int_eq(rs_start_any(&s, tmpdir, NULL), 0);
	url_of(url, sizeof(url), &s, 1);
	t = open_redis(url, 1024, 0, 0, "rt:");
	tier_round_trip(t, 600, 1);
	redis_get_info(t, &in);
	ck_assert_int_eq(in.cluster, 0);
	ck_assert_uint_eq(in.nodes, 1);
	/* 600 writes + 600 reads in batches of 256: 3 round trips each, not one per page. */
	ck_assert_uint_eq(in.batches, 6);
	ck_assert_int_eq(dbsize(s.port), 600);
	tier_close(t);
	/* close deletes what the tier wrote */
	ck_assert_int_eq(dbsize(s.port), 0);
	rs_stop(&s);
}
END_TEST

struct thr_arg {
	struct tier *t;
	unsigned id;
	int bad;
};

/* One thread's slots [id*200, id*200+200): written, read back, compared, 10 times over. */
static void *thr_main(void *p)
{
	struct thr_arg *a = p;
	uint8_t *src = malloc(64 * SLOT), *dst = malloc(64 * SLOT);
	struct tier_io io[64];
	unsigned rep, i, k;

	if (!src || !dst) {
		a->bad++;
		free(src);
		free(dst);
		return NULL;
	}

	for (rep = 0; rep < 10; rep++) {
		for (k = 0; k < 200; k += 64) {
			unsigned n = 200 - k < 64 ? 200 - k : 64;

			fill(src, 64 * SLOT, a->id * 1000 + rep * 10 + k);
			for (i = 0; i < n; i++)
				io[i] = (struct tier_io){ .slot = a->id * 200 + k + i,
							  .buf = src + (size_t)i * SLOT,
							  .len = SLOT,
							  .cap = SLOT };
			if (tier_write(a->t, io, n) < 0)
				a->bad++;
			for (i = 0; i < n; i++)
				io[i].buf = dst + (size_t)i * SLOT;
			if (tier_read(a->t, io, n) < 0 || memcmp(src, dst, (size_t)n * SLOT))
				a->bad++;
		}
	}
	free(src);
	free(dst);
	return NULL;
}

/* Batches from several threads at once (more threads than connections): each gets its own
 * replies, byte for byte. */
START_TEST(concurrent_batches_from_threads)
{
	struct rsrv s = { 0 };
	struct thr_arg a[4];
	pthread_t th[4];
	struct tier *t;
	char url[64];
	unsigned i;

	ck_assert_int_eq(rs_start_any(&s, tmpdir, NULL), 0);
	url_of(url, sizeof(url), &s, 1);
	t = open_redis(url, 1024, 0, 0, "th:");
	for (i = 0; i < 4; i++) {
		a[i] = (struct thr_arg){ .t = t, .id = i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, thr_main, &a[i]), 0);
	}
	for (i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(a[i].bad, 0);
	}
	tier_close(t);
	rs_stop(&s);
}
END_TEST

/* Corrupt, truncated and missing keys on the server: the store's get is an error with a zeroed
 * buffer, never the bytes. */
START_TEST(store_path_verifies_every_page_from_redis)
{
	struct rsrv s = { 0 };
	struct tier *tiers[2];
	struct store_config sc = { .slot_size = SLOT };
	struct store_page pg[64];
	struct store_page_info info;
	struct store *st;
	static uint8_t src[64][SLOT], dst[64][SLOT];
	struct store_key keys[64];
	redisContext *c;
	redisReply *r;
	char url[64];
	unsigned i;
	int res[64];

	ck_assert_int_eq(rs_start_any(&s, tmpdir, NULL), 0);
	url_of(url, sizeof(url), &s, 1);
	tiers[0] = open_dram(128);
	tiers[1] = open_redis(url, 1024, 0, 0, "sp:");
	ck_assert_int_eq(store_open(&sc, tiers, 2, &st), 0);
	for (i = 0; i < 64; i++) {
		fill(src[i], SLOT, 100 + i);
		keys[i] = (struct store_key){ 7, 1, 2, i };
		pg[i] = (struct store_page){ .key = keys[i],
					     .buf = src[i],
					     .len = 4096 + i * 64,
					     .fill = 16,
					     .version = 3 };
	}
	ck_assert_int_eq(store_put(st, pg, 64, 0), 0);
	ck_assert_int_eq(store_migrate(st, keys, 64, 1, 0, res), 0);
	for (i = 0; i < 64; i++) {
		ck_assert_int_eq(store_lookup(st, &keys[i], &info), 0);
		ck_assert_uint_eq(info.resident, 2u); /* only in Redis */
		pg[i] = (struct store_page){ .key = keys[i], .buf = dst[i], .len = SLOT };
	}
	memset(dst, 0xee, sizeof(dst));
	ck_assert_int_eq(store_get(st, pg, 64), 0);
	for (i = 0; i < 64; i++) {
		ck_assert_int_eq(pg[i].tier, 1);
		ck_assert_uint_eq(pg[i].len, 4096 + i * 64);
		ck_assert(!memcmp(src[i], dst[i], pg[i].len));
	}
	/* Page 0 rewritten on the server (one byte), page 1 truncated, page 2 deleted. */
	c = rs_connect(s.port);
	ck_assert_ptr_nonnull(c);
	ck_assert_int_eq(store_lookup(st, &keys[0], &info), 0);
	src[0][100] ^= 1;
	r = redisCommand(c, "SET sp:%llu %b", (unsigned long long)info.slot[1], src[0],
			 (size_t)4096);
	freeReplyObject(r);
	ck_assert_int_eq(store_lookup(st, &keys[1], &info), 0);
	r = redisCommand(c, "SET sp:%llu %b", (unsigned long long)info.slot[1], src[1],
			 (size_t)100);
	freeReplyObject(r);
	ck_assert_int_eq(store_lookup(st, &keys[2], &info), 0);
	r = redisCommand(c, "DEL sp:%llu", (unsigned long long)info.slot[1]);
	freeReplyObject(r);
	redisFree(c);
	memset(dst, 0xee, sizeof(dst));
	for (i = 0; i < 64; i++)
		pg[i] = (struct store_page){ .key = keys[i], .buf = dst[i], .len = SLOT };
	ck_assert_int_eq(store_get(st, pg, 64), -EBADMSG);
	ck_assert_int_eq(pg[0].res, -EBADMSG);
	ck_assert_int_eq(pg[1].res, -EBADMSG);
	ck_assert_int_eq(pg[2].res, -ENODATA);
	for (i = 0; i < 2; i++) {
		unsigned j;

		for (j = 0; j < tier_round_up(4096 + i * 64); j++)
			ck_assert_msg(dst[i][j] == 0, "page %u byte %u not scrubbed", i, j);
	}
	for (i = 3; i < 64; i++) {
		ck_assert_int_eq(pg[i].res, 0);
		ck_assert(!memcmp(src[i], dst[i], pg[i].len));
	}
	store_close(st);
	tier_close(tiers[1]);
	tier_close(tiers[0]);
	rs_stop(&s);
}
END_TEST

/* Full (maxmemory, noeviction), gone, stopped, restarted: the request that needs Redis gets
 * -errno, the pages in DRAM keep being served, and the tier comes back after a restart. */
START_TEST(faults_are_errors_and_local_pages_keep_serving)
{
	const char *const small[] = { "--maxmemory", "3mb", "--maxmemory-policy", "noeviction",
				      NULL };
	const char *const lru[] = { "--maxmemory", "1mb", "--maxmemory-policy", "allkeys-lru",
				    NULL };
	struct rsrv s = { 0 }, bad = { 0 };
	struct tier_config tc = { .capacity_bytes = 64 * SLOT, .slot_size = SLOT };
	struct tier *tiers[2], *t;
	struct store_config sc = { .slot_size = SLOT };
	static uint8_t src[512][SLOT], dst[SLOT];
	static struct store_page pg[512];
	static struct store_key keys[512];
	static int res[512];
	struct redis_info in;
	struct store *st;
	unsigned i, in_redis = 0, in_dram = 0;
	uint64_t t0, ms;
	char url[64];
	int port;

	/* Nothing listening, and a server that would evict pages: open refuses both. */
	port = rs_pick_port();
	snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
	tc.path = url;
	ck_assert_int_eq(tier_open(&redis_tier_ops, &tc, &t), -ECONNREFUSED);
	ck_assert_int_eq(rs_start_any(&bad, tmpdir, lru), 0);
	url_of(url, sizeof(url), &bad, 1);
	ck_assert_int_eq(tier_open(&redis_tier_ops, &tc, &t), -EINVAL);
	rs_stop(&bad);
	tc.path = "redis://127.0.0.1";
	ck_assert_int_eq(tier_open(&redis_tier_ops, &tc, &t), -EINVAL);

	/* Full: 512 pages of 8 KiB do not fit in 1 MiB. */
	ck_assert_int_eq(rs_start_any(&s, tmpdir, small), 0);
	url_of(url, sizeof(url), &s, 1);
	tiers[0] = open_dram(512);
	tiers[1] = open_redis(url, 1024, 300, 50, "ft:");
	ck_assert_int_eq(store_open(&sc, tiers, 2, &st), 0);
	for (i = 0; i < 512; i++) {
		fill(src[i], SLOT, 1000 + i);
		keys[i] = (struct store_key){ 1, 0, 0, i };
		pg[i] = (struct store_page){
			.key = keys[i], .buf = src[i], .len = SLOT, .fill = 16, .version = 1
		};
	}
	ck_assert_int_eq(store_put(st, pg, 512, 0), 0);
	ck_assert_int_eq(store_migrate(st, keys, 512, 1, 0, res), -ENOSPC);
	for (i = 0; i < 512; i++) {
		struct store_page_info info;

		ck_assert(res[i] == 0 || res[i] == -ENOSPC);
		ck_assert_int_eq(store_lookup(st, &keys[i], &info), 0);
		in_redis += info.resident == 2u;
		in_dram += info.resident == 1u;
		ck_assert(res[i] == 0 ? info.resident == 2u : info.resident == 1u);
	}
	ck_assert_uint_gt(in_redis, 0);
	ck_assert_uint_gt(in_dram, 0);
	redis_get_info(tiers[1], &in);
	ck_assert_uint_gt(in.oom, 0);
	/* every page still reads back, from where it is */
	for (i = 0; i < 512; i++) {
		struct store_page p = { .key = keys[i], .buf = dst, .len = SLOT };

		ck_assert_int_eq(store_get(st, &p, 1), 0);
		ck_assert(!memcmp(dst, src[i], SLOT));
	}

	/* Stopped (SIGSTOP): a read of a Redis page times out, DRAM pages are still served. */
	kill(s.pid, SIGSTOP);
	t0 = clock_now_ns();
	for (i = 0; i < 512 && res[i] != 0; i++)
		;
	{
		struct store_page p = { .key = keys[i], .buf = dst, .len = SLOT };

		ck_assert_int_eq(store_get(st, &p, 1), -ETIMEDOUT);
	}
	ms = (clock_now_ns() - t0) / 1000000;
	ck_assert_uint_ge(ms, 250);
	ck_assert_uint_lt(ms, 3000);
	for (i = 0; i < 512; i++) {
		struct store_page p = { .key = keys[i], .buf = dst, .len = SLOT };

		if (res[i] == 0)
			continue;
		ck_assert_int_eq(store_get(st, &p, 1), 0);
	}
	kill(s.pid, SIGCONT);

	/* Gone: -ECONNREFUSED (at once, within retry_ms of the last failure), DRAM still served. */
	rs_stop(&s);
	usleep(60000);
	for (i = 0; i < 512 && res[i] != 0; i++)
		;
	{
		struct store_page p = { .key = keys[i], .buf = dst, .len = SLOT };
		int r = store_get(st, &p, 1);

		ck_assert_msg(r == -ECONNREFUSED || r == -ECONNRESET, "got %d", r);
		ck_assert_int_lt(tier_probe(tiers[1]), 0);
	}
	for (i = 0; i < 512; i++) {
		struct store_page p = { .key = keys[i], .buf = dst, .len = SLOT };

		if (res[i] == 0)
			continue;
		ck_assert_int_eq(store_get(st, &p, 1), 0);
		ck_assert(!memcmp(dst, src[i], SLOT));
	}

	/* Restarted on the same port, empty: the tier reconnects; the pages it held are gone
	 * (-ENODATA, never other bytes), new pages go and come back. */
	ck_assert_int_eq(rs_start(&s, tmpdir, NULL), 0);
	usleep(60000);
	ck_assert_int_eq(tier_probe(tiers[1]), 0);
	for (i = 0; i < 512 && res[i] != 0; i++)
		;
	{
		struct store_page p = { .key = keys[i], .buf = dst, .len = SLOT };

		ck_assert_int_eq(store_get(st, &p, 1), -ENODATA);
	}
	for (i = 0; i < 512; i++)
		if (res[i] != 0)
			break;
	ck_assert_int_eq(store_migrate(st, &keys[i], 1, 1, 0, NULL), 0);
	{
		struct store_page p = { .key = keys[i], .buf = dst, .len = SLOT };

		ck_assert_int_eq(store_get(st, &p, 1), 0);
		ck_assert_int_eq(p.tier, 1);
		ck_assert(!memcmp(dst, src[i], SLOT));
	}
	redis_get_info(tiers[1], &in);
	ck_assert_uint_gt(in.reconnects, 0);
	ck_assert_uint_gt(in.timeouts, 0);
	ck_assert_uint_gt(in.missing, 0);
	store_close(st);
	tier_close(tiers[1]);
	tier_close(tiers[0]);
	rs_stop(&s);
}
END_TEST

static const char *node_id(int port, char *buf, size_t cap)
{
	redisContext *c = rs_connect(port);
	redisReply *r = c ? redisCommand(c, "CLUSTER MYID") : NULL;

	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(r->type, REDIS_REPLY_STRING);
	snprintf(buf, cap, "%s", r->str);
	freeReplyObject(r);
	redisFree(c);
	return buf;
}

static void cmd_ok(int port, const char *fmt, const char *a, const char *b)
{
	redisContext *c = rs_connect(port);
	redisReply *r = c ? redisCommand(c, fmt, a, b) : NULL;

	ck_assert_ptr_nonnull(r);
	ck_assert_msg(r->type != REDIS_REPLY_ERROR, "%s: %s", fmt, r->str);
	freeReplyObject(r);
	redisFree(c);
}

/* Which of the three owns a hash slot (the ranges rs_cluster_start assigns). */
static int owner_of(unsigned slot)
{
	return slot <= 5460 ? 0 : slot <= 10922 ? 1 : 2;
}

START_TEST(cluster_round_trip_spreads_keys_and_follows_ask_and_moved)
{
	struct rsrv s[3] = { { 0 } };
	struct redis_info in;
	struct tier *t;
	struct tier_io io;
	static uint8_t src[SLOT], dst[SLOT];
	char url[128], key[32], ida[64], idb[64], slotstr[16], portstr[16];
	unsigned i, hs;
	int a, b;

	ck_assert_int_eq(rs_cluster_start(s, tmpdir), 0);
	/* The slot function is the cluster's. */
	for (i = 0; i < 50; i++) {
		char cmd[64];

		snprintf(key, sizeof(key), i % 7 ? "ice:x:%u" : "a{tag%u}b", i);
		snprintf(cmd, sizeof(cmd), "CLUSTER KEYSLOT %s", key);
		ck_assert_int_eq(rs_int(s[0].port, cmd), redis_key_slot(key, strlen(key)));
	}
	url_of(url, sizeof(url), s, 1); /* one seed: the rest comes from CLUSTER SLOTS */
	t = open_redis(url, 1024, 0, 0, "cl:");
	redis_get_info(t, &in);
	ck_assert_int_eq(in.cluster, 1);
	ck_assert_uint_eq(in.nodes, 3);
	tier_round_trip(t, 600, 2);
	for (i = 0; i < 3; i++)
		ck_assert_int_gt(dbsize(s[i].port), 100);
	ck_assert_int_eq(dbsize(s[0].port) + dbsize(s[1].port) + dbsize(s[2].port), 600);
	redis_get_info(t, &in);
	ck_assert_uint_eq(in.moved, 0);
	ck_assert_uint_le(in.batches, 2 * 3 * 3); /* per batch of 256, one round trip per node */

	/* Slot 7's key moves from its node a to b: first half-way (ASK), then for good (MOVED). */
	hs = redis_key_slot("cl:7", 4);
	a = owner_of(hs);
	b = (a + 1) % 3;
	node_id(s[a].port, ida, sizeof(ida));
	node_id(s[b].port, idb, sizeof(idb));
	snprintf(slotstr, sizeof(slotstr), "%u", hs);
	snprintf(portstr, sizeof(portstr), "%d", s[b].port);
	cmd_ok(s[b].port, "CLUSTER SETSLOT %s IMPORTING %s", slotstr, ida);
	cmd_ok(s[a].port, "CLUSTER SETSLOT %s MIGRATING %s", slotstr, idb);
	cmd_ok(s[a].port, "MIGRATE 127.0.0.1 %s cl:7 0 5000", portstr, "");
	/* what the server holds for slot 7, read around the tier */
	{
		redisContext *c = rs_connect(s[b].port);
		redisReply *r;

		r = redisCommand(c, "ASKING");
		freeReplyObject(r);
		r = redisCommand(c, "GET cl:7");
		ck_assert_int_eq(r->type, REDIS_REPLY_STRING);
		memcpy(src, r->str, r->len);
		io = (struct tier_io){ .slot = 7, .buf = dst, .len = (uint32_t)r->len, .cap = SLOT };
		freeReplyObject(r);
		redisFree(c);
	}
	memset(dst, 0, sizeof(dst));
	ck_assert_int_eq(tier_read(t, &io, 1), 0);
	ck_assert(!memcmp(src, dst, io.len));
	redis_get_info(t, &in);
	ck_assert_uint_eq(in.ask, 1);
	for (i = 0; i < 3; i++)
		cmd_ok(s[i].port, "CLUSTER SETSLOT %s NODE %s", slotstr, idb);
	memset(dst, 0, sizeof(dst));
	ck_assert_int_eq(tier_read(t, &io, 1), 0);
	ck_assert(!memcmp(src, dst, io.len));
	redis_get_info(t, &in);
	ck_assert_uint_eq(in.moved, 1);
	/* the map learnt it: no second redirection */
	ck_assert_int_eq(tier_read(t, &io, 1), 0);
	redis_get_info(t, &in);
	ck_assert_uint_eq(in.moved, 1);
	tier_close(t);
	ck_assert_int_eq(dbsize(s[0].port) + dbsize(s[1].port) + dbsize(s[2].port), 0);

	/* A node dies and one of its hash slots is given to b (what a failover does): the map is
	 * read again from the nodes that answer, so that slot works again, without a MOVED. */
	t = open_redis(url, 1024, 300, 50, "fo:");
	tier_round_trip(t, 300, 3);
	{
		int c = (a + 2) % 3, e;
		unsigned moved_slot;

		for (i = 0; i < 300; i++) {
			snprintf(key, sizeof(key), "fo:%u", i);
			if (owner_of(redis_key_slot(key, strlen(key))) == c)
				break;
		}
		ck_assert_uint_lt(i, 300);
		moved_slot = redis_key_slot(key, strlen(key));
		rs_stop(&s[c]);
		io = (struct tier_io){ .slot = i, .buf = dst, .len = 16, .cap = SLOT };
		e = tier_read(t, &io, 1);
		ck_assert_msg(e == -ECONNREFUSED || e == -ECONNRESET, "got %d", e);
		snprintf(slotstr, sizeof(slotstr), "%u", moved_slot);
		cmd_ok(s[b].port, "CLUSTER SETSLOT %s NODE %s", slotstr, idb);
		cmd_ok(s[a].port, "CLUSTER SETSLOT %s NODE %s", slotstr, idb);
		usleep(100000);
		/* the page was on the dead node: gone, and said so */
		ck_assert_int_eq(tier_read(t, &io, 1), -ENODATA);
		redis_get_info(t, &in);
		ck_assert_uint_ge(in.map_refreshes, 1);
		fill(src, SLOT, 5);
		io = (struct tier_io){ .slot = i, .buf = src, .len = SLOT, .cap = SLOT };
		ck_assert_int_eq(tier_write(t, &io, 1), 0);
		io.buf = dst;
		memset(dst, 0, sizeof(dst));
		ck_assert_int_eq(tier_read(t, &io, 1), 0);
		ck_assert(!memcmp(src, dst, SLOT));
	}
	tier_close(t);
	for (i = 0; i < 3; i++)
		rs_stop(&s[i]);
}
END_TEST

/* The engine: a sequence larger than DRAM (and than DRAM + NVMe) answers select and fetch
 * exactly as with everything in DRAM, every row checked against what was appended, with its
 * pages coming back from Redis (standalone, then the cluster). */
START_TEST(engine_sequence_larger_than_dram_comes_back_from_redis)
{
	struct rsrv s[3] = { { 0 } };
	char cfg[1024], url[128], nvme[300], stats[1 << 16];
	struct ice_ctx *c;
	struct rt_scn sc;
	uint64_t want, got, reads = 0, writes = 0, v;
	int cluster = _i == 2;

	if (cluster)
		ck_assert_int_eq(rs_cluster_start(s, tmpdir), 0);
	else
		ck_assert_int_eq(rs_start_any(&s[0], tmpdir, NULL), 0);
	url_of(url, sizeof(url), s, cluster ? 3 : 1);
	rt_scn_default(&sc, 41, 2000);
	ck_assert_int_eq(ice_open_embedded("exact_search = 1\ndram_bytes = 67108864\n", &c), 0);
	want = rt_scenario(c, &sc);
	ice_close(c);
	snprintf(nvme, sizeof(nvme), "%s/nvme", tmpdir);
	if (_i == 1) /* dram -> nvme -> redis */
		snprintf(cfg, sizeof(cfg),
			 "exact_search = 1\ndram_bytes = 1048576\nnvme_path = %s\n"
			 "nvme_bytes = 1048576\nremote_url = %s\nremote_bytes = 67108864\n",
			 nvme, url);
	else /* dram -> redis */
		snprintf(cfg, sizeof(cfg),
			 "exact_search = 1\ndram_bytes = 1048576\nremote_url = %s\n"
			 "remote_bytes = 67108864\n",
			 url);
	ck_assert_int_eq(ice_open_embedded(cfg, &c), 0);
	got = rt_scenario(c, &sc);
	/* The digest covers the refs' tier field: pages on NVMe say so, so only the runs without
	 * NVMe can equal the DRAM-only one (every row is checked in both). */
	if (_i != 1)
		ck_assert_uint_eq(got, want);
	ck_assert_int_gt(ice_stats(c, stats, sizeof(stats)), 0);
	ck_assert_int_eq(stats_find_u64(stats, "tier.redis.writes", &writes), 0);
	ck_assert_int_eq(stats_find_u64(stats, "tier.redis.reads", &reads), 0);
	ck_assert_uint_gt(writes, 0);
	ck_assert_uint_gt(reads, 0);
	ck_assert_int_eq(stats_find_u64(stats, "store.csum_failures", &v), 0);
	ck_assert_uint_eq(v, 0);
	if (_i == 1) {
		ck_assert_int_eq(stats_find_u64(stats, "policy.cascaded", &v), 0);
		ck_assert_uint_gt(v, 0);
	}
	ice_close(c);
	rs_stop(&s[0]);
	if (cluster) {
		rs_stop(&s[1]);
		rs_stop(&s[2]);
	}
}
END_TEST

/* An append that needs Redis while it is down is refused before anything is written: the
 * sequence stays as it was and takes appends again once Redis is back. */
START_TEST(engine_append_needing_redis_down_is_refused_whole)
{
	struct ice_model_shape sh = { 1, 1, 1, 64, ICE_DTYPE_F32 };
	struct ice_budget b = { 16, 16, 16, 1 };
	static float kv[1024 * 64];
	static struct ice_page_ref r[1024];
	float q[64] = { 1 }, page[2 * 16 * 64];
	struct rsrv s = { 0 };
	char cfg[256], url[64];
	struct ice_ctx *c;
	uint32_t seq;
	int i, n, err = 0, local = 0;

	ck_assert_int_eq(rs_start_any(&s, tmpdir, NULL), 0);
	url_of(url, sizeof(url), &s, 1);
	snprintf(cfg, sizeof(cfg),
		 "dram_bytes = 1048576\nremote_url = %s\nremote_bytes = 67108864\n"
		 "remote_timeout_ms = 300\nremote_retry_ms = 50\n",
		 url);
	ck_assert_int_eq(ice_open_embedded(cfg, &c), 0);
	ck_assert_int_eq(ice_seq_open(c, &sh, &b, &seq), 0);
	for (i = 0; i < 1024 * 64; i++)
		kv[i] = (float)((i * 7) % 19) - 9.0f;
	/* 64 DRAM-slot's worth, well under the 128 slots: stays local */
	ck_assert_int_eq(ice_append(c, seq, 0, 1024, kv, kv), 0);
	rs_stop(&s);
	for (i = 0; i < 8 && !err; i++)
		err = ice_append(c, seq, 0, 1024, kv, kv);
	ck_assert_msg(err == -ECONNREFUSED || err == -ECONNRESET, "append got %d", err);
	/* refused whole: the sequence is not broken, what is local is served */
	n = ice_select(c, seq, 0, q, r, 1024, NULL);
	ck_assert_int_gt(n, 0);
	for (i = 0; i < n; i++) {
		int e = ice_fetch(c, seq, 0, &r[i], 1, page, sizeof(page));

		ck_assert(e == 0 || e == -ECONNREFUSED || e == -ECONNRESET);
		local += e == 0;
	}
	ck_assert_int_gt(local, 0);
	ck_assert_int_eq(rs_start(&s, tmpdir, NULL), 0);
	usleep(60000);
	ck_assert_int_eq(ice_append(c, seq, 0, 1024, kv, kv), 0);
	ice_close(c);
	rs_stop(&s);
}
END_TEST

/* Layer l's rows as the test appends them (K [kv][n][d] then V), f16 bit patterns that are
 * finite and differ per (layer, head, position, dim). */
static void prefix_rows(uint16_t *kv, uint32_t layer, uint32_t hk, uint32_t n, uint32_t d)
{
	size_t half = (size_t)hk * n * d, i;

	for (i = 0; i < 2 * half; i++) {
		uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)layer << 40);

		x ^= x >> 29;
		/* sign, exponent 1..29 (never 31: inf/NaN), mantissa */
		kv[i] = (uint16_t)((x & 0x83ffu) | ((1 + (x >> 16) % 29) << 10));
	}
}

static uint64_t engine_u64(struct engine *e, const char *name)
{
	static char text[1 << 16];
	struct stats_buf sb;
	uint64_t v = 0;

	stats_buf_init(&sb, text, sizeof(text));
	engine_stats(e, &sb);
	ck_assert_int_eq(stats_find_u64(text, name, &v), 0);
	return v;
}

/*
 * Issue 16, point 2 at the engine: a sequence saved under a name by one engine (one daemon) is
 * opened by another on the same Redis without running the model, holding exactly the tokens
 * appended (the content hash the test computes from its own rows); the shape is checked; a
 * save without its manifest, with a corrupt or a truncated chunk, is never opened and leaves no
 * sequence behind.
 */
START_TEST(saved_prefix_opens_in_another_engine_byte_exact)
{
	const struct engine_params par = { .shape = { 4, 6, 2, 64, ICE_DTYPE_F16 },
					   .budget = { 16, 32, 64, 0 } };
	struct engine_params bad = par;
	const uint32_t n = 3000, chunk = 250, hk = 2, d = 64;
	struct rsrv s = { 0 };
	struct engine *a, *b;
	struct engine_opts o = { .dram_bytes = 1 << 20,
				 .slot_bytes = 8192,
				 .host_bytes = 1ull << 30,
				 .max_seqs = 16,
				 .remote_bytes = 256ull << 20,
				 .overfetch = 1 };
	size_t half = (size_t)hk * n * d;
	uint16_t *kv = malloc(2 * half * sizeof(uint16_t)),
		 *ck = malloc(2 * (size_t)hk * chunk * d * 2);
	uint32_t lcrc[4], want, got, got2, ida, idb, idc, l, h, c;
	uint64_t t0, t_append, t_save, t_open;
	char url[64];
	redisContext *rc;
	redisReply *rep;

	ck_assert_ptr_nonnull(kv);
	ck_assert_int_eq(rs_start_any(&s, tmpdir, NULL), 0);
	url_of(url, sizeof(url), &s, 1);
	o.remote_url = url;
	ck_assert_int_eq(engine_new(&o, &a), 0);
	ck_assert_int_eq(engine_new(&o, &b), 0);
	ck_assert_int_eq(engine_seq_open(a, 1, &par, &ida), 0);
	/* the "prefill": every layer appended in chunks, as a model would */
	t0 = clock_now_ns();
	for (l = 0; l < 4; l++) {
		prefix_rows(kv, l, hk, n, d);
		lcrc[l] = crc32c(0, kv, 2 * half * sizeof(uint16_t));
		for (c = 0; c < n; c += chunk) {
			for (h = 0; h < hk; h++) {
				memcpy(ck + (size_t)h * chunk * d,
				       kv + (size_t)h * n * d + (size_t)c * d,
				       (size_t)chunk * d * 2);
				memcpy(ck + (size_t)(hk + h) * chunk * d,
				       kv + half + (size_t)h * n * d + (size_t)c * d,
				       (size_t)chunk * d * 2);
			}
			ck_assert_int_eq(engine_append(a, 1, ida, l, chunk, ck,
						       ck + (size_t)hk * chunk * d),
					 0);
		}
	}
	t_append = clock_now_ns() - t0;
	want = crc32c(0, lcrc, sizeof(lcrc));
	/* 1 MiB of DRAM for 1.5 MiB of pages: some of what is saved comes back from Redis */
	ck_assert_uint_gt(engine_u64(a, "tier.redis.writes"), 0);

	ck_assert_int_eq(engine_prefix_save(a, 1, ida, "bad name", NULL), -EINVAL);
	t0 = clock_now_ns();
	ck_assert_int_eq(engine_prefix_save(a, 1, ida, "pfx-1", &got), 0);
	t_save = clock_now_ns() - t0;
	ck_assert_uint_eq(got, want);
	/* another engine (another daemon): the same tokens, byte for byte */
	t0 = clock_now_ns();
	ck_assert_int_eq(engine_prefix_open(b, 7, "pfx-1", &par, &idb, &got, NULL), 0);
	t_open = clock_now_ns() - t0;
	ck_assert_uint_eq(got, want);
	ck_assert_int_eq(engine_prefix_save(b, 7, idb, "pfx-2", &got2), 0);
	ck_assert_uint_eq(got2, want);
	printf("prefix of %u tokens x %u layers: append %.1f ms, save %.1f ms, open %.1f ms\n", n,
	       4, t_append / 1e6, t_save / 1e6, t_open / 1e6);
	/* the model must be the saved one */
	bad.shape.head_dim = 128;
	ck_assert_int_eq(engine_prefix_open(b, 7, "pfx-1", &bad, &idc, NULL, NULL), -EINVAL);
	ck_assert_int_eq(engine_prefix_open(b, 7, "nothing", &par, &idc, NULL, NULL), -ENOENT);
	ck_assert_uint_eq(engine_u64(b, "engine.seqs"), 1);

	/* a corrupt chunk, then a truncated one: never opened, nothing left open */
	rc = rs_connect(s.port);
	ck_assert_ptr_nonnull(rc);
	rep = redisCommand(rc, "KEYS icecache:prefix:pfx-2:*:2:0");
	ck_assert_int_eq(rep->type, REDIS_REPLY_ARRAY);
	ck_assert_uint_eq(rep->elements, 1);
	{
		char key[128];
		redisReply *g;

		snprintf(key, sizeof(key), "%s", rep->element[0]->str);
		g = redisCommand(rc, "GET %s", key);
		ck_assert_int_eq(g->type, REDIS_REPLY_STRING);
		g->str[1000] ^= 0x10;
		freeReplyObject(redisCommand(rc, "SET %s %b", key, g->str, (size_t)g->len));
		ck_assert_int_eq(engine_prefix_open(b, 7, "pfx-2", &par, &idc, NULL, NULL),
				 -EBADMSG);
		ck_assert_uint_eq(engine_u64(b, "engine.seqs"), 1);
		freeReplyObject(redisCommand(rc, "SET %s %b", key, g->str, (size_t)100));
		ck_assert_int_eq(engine_prefix_open(b, 7, "pfx-2", &par, &idc, NULL, NULL),
				 -EBADMSG);
		ck_assert_uint_eq(engine_u64(b, "engine.seqs"), 1);
		freeReplyObject(g);
	}
	freeReplyObject(rep);
	/* a save without its manifest (what a save that died before its last write leaves) */
	freeReplyObject(redisCommand(rc, "DEL icecache:prefix:pfx-1"));
	ck_assert_int_eq(engine_prefix_open(b, 7, "pfx-1", &par, &idc, NULL, NULL), -ENOENT);
	redisFree(rc);
	ck_assert_int_eq(engine_prefix_drop(b, "pfx-2"), 0);
	ck_assert_int_eq(engine_prefix_drop(b, "pfx-2"), -ENOENT);
	engine_free(b);
	engine_free(a);
	free(kv);
	free(ck);
	rs_stop(&s);
}
END_TEST

/* The same through the public API and the opcode table (embedded contexts: two engines, as
 * two daemons would be): save, open elsewhere, use, drop; a half-way step is -EBUSY; without a
 * Redis tier -EOPNOTSUPP. */
START_TEST(saved_prefix_through_the_api)
{
	const struct ice_model_shape sh = { 2, 4, 2, 64, ICE_DTYPE_F32 };
	const struct ice_budget bu = { 16, 16, 32, 0 };
	static float kv[2 * 2 * 600 * 64];
	static struct ice_page_ref r[512];
	float q[4 * 64], page[2 * 16 * 64];
	struct ice_seq_info info;
	struct rsrv s = { 0 };
	struct ice_ctx *a, *b, *plain;
	char cfg[256], url[64];
	uint32_t sa, sb, ha, hb, l;
	int i, n;

	ck_assert_int_eq(rs_start_any(&s, tmpdir, NULL), 0);
	url_of(url, sizeof(url), &s, 1);
	snprintf(cfg, sizeof(cfg), "dram_bytes = 1048576\nremote_url = %s\n", url);
	ck_assert_int_eq(ice_open_embedded(cfg, &a), 0);
	ck_assert_int_eq(ice_open_embedded(cfg, &b), 0);
	for (i = 0; i < (int)(sizeof(kv) / sizeof(kv[0])); i++)
		kv[i] = (float)((i * 7) % 23) - 11.0f + (float)i / 1e5f;
	for (i = 0; i < 4 * 64; i++)
		q[i] = (float)(i % 5) - 2.0f;
	ck_assert_int_eq(ice_seq_open(a, &sh, &bu, &sa), 0);
	for (l = 0; l < 2; l++)
		ck_assert_int_eq(ice_append(a, sa, l, 600, kv, kv + 2 * 600 * 64), 0);
	ck_assert_int_eq(ice_prefix_save(a, sa, "api-1", &ha), 0);
	ck_assert_int_eq(ice_prefix_open(b, "api-1", &sh, &bu, &sb, &hb), 0);
	ck_assert_uint_eq(ha, hb);
	ck_assert_int_eq(ice_seq_info(b, sb, &info), 0);
	ck_assert_uint_eq(info.tokens, 600);
	/* b serves it: select, and fetch every page */
	for (l = 0; l < 2; l++) {
		n = ice_select(b, sb, l, q, r, 512, NULL);
		ck_assert_int_gt(n, 0);
		for (i = 0; i < n; i++)
			ck_assert_int_eq(ice_fetch(b, sb, l, &r[i], 1, page, sizeof(page)), 0);
	}
	/* a step half-way through the layers is not a prefix */
	ck_assert_int_eq(ice_append(a, sa, 0, 16, kv, kv), 0);
	ck_assert_int_eq(ice_prefix_save(a, sa, "api-2", NULL), -EBUSY);
	ck_assert_int_eq(ice_prefix_save(a, sa, "", NULL), -EINVAL);
	ck_assert_int_eq(ice_prefix_drop(b, "api-1"), 0);
	ck_assert_int_eq(ice_prefix_open(b, "api-1", &sh, &bu, &sb, NULL), -ENOENT);
	ck_assert_int_eq(ice_prefix_drop(b, "api-1"), -ENOENT);
	ice_close(b);
	ice_close(a);
	ck_assert_int_eq(ice_open_embedded("dram_bytes = 1048576", &plain), 0);
	ck_assert_int_eq(ice_seq_open(plain, &sh, &bu, &sa), 0);
	ck_assert_int_eq(ice_append(plain, sa, 0, 100, kv, kv), 0);
	ck_assert_int_eq(ice_prefix_save(plain, sa, "x", NULL), -EOPNOTSUPP);
	ice_close(plain);
	rs_stop(&s);
}
END_TEST

static Suite *redis_suite(void)
{
	Suite *s = suite_create("redis");
	TCase *tc = tcase_create("redis");

	tcase_add_unchecked_fixture(tc, setup_base, teardown_base);
	tcase_add_checked_fixture(tc, setup_tmp, teardown_tmp);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, standalone_round_trip_is_byte_exact_and_pipelined);
	tcase_add_test(tc, store_path_verifies_every_page_from_redis);
	tcase_add_test(tc, concurrent_batches_from_threads);
	tcase_add_test(tc, faults_are_errors_and_local_pages_keep_serving);
	tcase_add_test(tc, cluster_round_trip_spreads_keys_and_follows_ask_and_moved);
	tcase_add_loop_test(tc, engine_sequence_larger_than_dram_comes_back_from_redis, 0, 3);
	tcase_add_test(tc, engine_append_needing_redis_down_is_refused_whole);
	tcase_add_test(tc, saved_prefix_opens_in_another_engine_byte_exact);
	tcase_add_test(tc, saved_prefix_through_the_api);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	Suite *suites[] = { redis_suite(), NULL };

	if (!rs_installed())
		check_skip("redis-server is not installed (apt-get install redis-server)");
	return check_run_suites(suites);
}
