/* Unit tests for tiers/: checksums, slot maps, the dram and nvme tiers, the store, the policy. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check_main.h"
#include "crc32c.h"
#include "dram.h"
#include "nvme.h"
#include "policy.h"
#include "store.h"
#include "tier.h"
#include "tiers_test.h"

#define SLOT 8192u

static char tmpdir[256];
/* Loop tests run their store cases twice: nvme through io_uring, then without it. */
static unsigned fx_nvme_flags;

/* One base directory per run (made and removed in the parent, so a failing test, whose forked
 * child never reaches its teardown, still leaves nothing behind) and one below it per test. */
static char basedir[200];

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
	fx_nvme_flags = 0;
}

static void teardown_tmp(void)
{
	tt_rmdir(tmpdir);
}

static void nvme_path(char *buf, size_t cap, const char *name)
{
	if (snprintf(buf, cap, "%s/%s", tmpdir, name) >= (int)cap)
		abort();
}

static struct tier *open_dram(uint64_t slots)
{
	struct tier_config c = { .capacity_bytes = slots * SLOT,
				 .slot_size = SLOT,
				 .numa_node = -1 };
	struct tier *t = NULL;

	ck_assert_int_eq(tier_open(&dram_tier_ops, &c, &t), 0);
	return t;
}

static struct tier *open_nvme(const char *name, uint64_t slots, unsigned depth, unsigned flags)
{
	char path[PATH_MAX];
	struct tier_config c = { .capacity_bytes = slots * SLOT,
				 .slot_size = SLOT,
				 .queue_depth = depth,
				 .nrings = 2,
				 .flags = flags };
	struct tier *t = NULL;

	nvme_path(path, sizeof(path), name);
	c.path = path;
	ck_assert_int_eq(tier_open(&nvme_tier_ops, &c, &t), 0);
	return t;
}

static struct store_key key(uint64_t seq, uint32_t page)
{
	return (struct store_key){
		.seq = seq, .layer = (uint32_t)(seq % 3), .head = 1, .page = page
	};
}

/* ---- checksums ---- */

START_TEST(crc32c_known_value_and_hw_equals_sw)
{
	static uint8_t buf[20000 + 8];
	size_t len, off, i;

	ck_assert_uint_eq(crc32c_sw(0, "123456789", 9), 0xE3069283u);
	ck_assert_uint_eq(crc32c(0, "123456789", 9), 0xE3069283u);
	ck_assert_uint_eq(crc32c(0, "", 0), 0);
	srand(7);
	for (i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)rand();
	/* every path of the hardware code: byte head, 3 x 2048 and 3 x 256 interleaved blocks,
	 * 8-byte and byte tails */
	for (len = 0; len < 20000; len += 1 + len / 5) {
		for (off = 0; off < 8; off++) {
			uint32_t sw = crc32c_sw(0, buf + off, len);

			if (crc32c_have_hw())
				ck_assert_uint_eq(crc32c_hw(0, buf + off, len), sw);
			ck_assert_uint_eq(crc32c(0, buf + off, len), sw);
			/* chaining */
			ck_assert_uint_eq(crc32c(crc32c(0, buf + off, len / 2), buf + off + len / 2,
						 len - len / 2),
					  sw);
		}
	}
}
END_TEST

/* ---- slots ---- */

START_TEST(slot_alloc_is_all_or_nothing_and_bounded)
{
	struct tier_config c = { .capacity_bytes = 100 * SLOT + SLOT / 2,
				 .slot_size = SLOT,
				 .numa_node = -1 };
	static uint64_t slots[128];
	struct tier *t;
	uint8_t seen[100] = { 0 };
	unsigned i;

	ck_assert_int_eq(tier_open(&dram_tier_ops, &c, &t), 0);
	ck_assert_uint_eq(t->nslots, 100); /* rounded down to whole slots */
	ck_assert_int_eq(tier_alloc(t, 101, slots), -ENOSPC);
	ck_assert_uint_eq(tier_used_slots(t), 0);
	ck_assert_int_eq(tier_alloc(t, 60, slots), 0);
	ck_assert_int_eq(tier_alloc(t, 40, slots + 60), 0);
	for (i = 0; i < 100; i++) {
		ck_assert_uint_lt(slots[i], 100);
		ck_assert_int_eq(seen[slots[i]], 0);
		seen[slots[i]] = 1;
	}
	ck_assert_int_eq(tier_alloc(t, 1, slots + 100), -ENOSPC);
	tier_free(t, slots + 10, 5);
	ck_assert_uint_eq(tier_free_slots(t), 5);
	tier_free(t, slots + 10, 1); /* double free: ignored, counted */
	ck_assert_uint_eq(t->ctr.errors, 1);
	ck_assert_int_eq(tier_alloc(t, 5, slots + 100), 0);
	ck_assert_uint_eq(tier_free_slots(t), 0);
	tier_free(t, slots, 100);
	/* reserved slots are not free for anyone else, and come back freed into the reservation */
	ck_assert_int_eq(tier_reserve(t, 101), -ENOSPC);
	ck_assert_int_eq(tier_reserve(t, 90), 0);
	ck_assert_uint_eq(tier_free_slots(t), 10);
	ck_assert_uint_eq(tier_used_slots(t), 90);
	ck_assert_int_eq(tier_alloc(t, 11, slots), -ENOSPC);
	ck_assert_int_eq(tier_alloc(t, 10, slots), 0);
	ck_assert_int_eq(tier_alloc(t, 1, slots + 10), -ENOSPC);
	ck_assert_int_eq(tier_alloc_reserved(t, 91, slots + 10), -ENOSPC);
	ck_assert_int_eq(tier_alloc_reserved(t, 90, slots + 10), 0);
	ck_assert_uint_eq(tier_reserved_slots(t), 0);
	tier_free_reserved(t, slots + 10, 30);
	ck_assert_uint_eq(tier_reserved_slots(t), 30);
	ck_assert_uint_eq(tier_free_slots(t), 0);
	tier_unreserve(t, 30);
	ck_assert_uint_eq(tier_free_slots(t), 30);
	tier_close(t);
	/* bad configs */
	c.slot_size = 1000;
	ck_assert_int_eq(tier_open(&dram_tier_ops, &c, &t), -EINVAL);
	c.slot_size = SLOT;
	c.capacity_bytes = SLOT - 1;
	ck_assert_int_eq(tier_open(&dram_tier_ops, &c, &t), -EINVAL);
}
END_TEST

/* ---- tiers byte for byte ---- */

static void tier_round_trip(struct tier *t, int misalign)
{
	enum { N = 70 };
	static uint8_t src[N][SLOT + 64] __attribute__((aligned(4096)));
	static uint8_t dst[N][SLOT + 64] __attribute__((aligned(4096)));
	struct tier_io io[N];
	uint64_t slots[N];
	unsigned i;

	ck_assert_int_eq(tier_alloc(t, N, slots), 0);
	for (i = 0; i < N; i++) {
		struct store_key k = key(9, i);
		uint32_t len = i % 3 == 0 ? SLOT : (uint32_t)(1 + (i * 997) % SLOT);

		tt_pattern(src[i] + misalign, len, &k, 1);
		io[i] = (struct tier_io){
			.slot = slots[i], .buf = src[i] + misalign, .len = len, .cap = len
		};
	}
	ck_assert_int_eq(tier_write(t, io, N), 0);
	for (i = 0; i < N; i++) {
		ck_assert_int_eq(io[i].res, 0);
		memset(dst[i], 0xEE, sizeof(dst[i]));
		io[i].buf = dst[i] + misalign;
		io[i].cap = misalign ? io[i].len : SLOT;
	}
	ck_assert_int_eq(tier_read(t, io, N), 0);
	for (i = 0; i < N; i++) {
		ck_assert_int_eq(io[i].res, 0);
		ck_assert_int_eq(memcmp(dst[i] + misalign, src[i] + misalign, io[i].len), 0);
		if (misalign) /* nothing written past the buffer's capacity */
			ck_assert_uint_eq(dst[i][misalign + io[i].len], 0xEE);
	}
	tier_free(t, slots, N);
	ck_assert_uint_eq(tier_used_slots(t), 0);
}

START_TEST(dram_round_trip_and_info)
{
	struct tier *t = open_dram(128);
	struct dram_info info;
	char buf[4096];
	struct stats_buf sb;
	uint64_t v;

	tier_round_trip(t, 0);
	tier_round_trip(t, 3);
	dram_get_info(t, &info);
	ck_assert_uint_ge(info.map_len, 128 * SLOT);
	ck_assert_ptr_nonnull(tier_slot_addr(t, 0));
	ck_assert_ptr_null(tier_slot_addr(t, 128));
	stats_buf_init(&sb, buf, sizeof(buf));
	tier_stats(t, &sb);
	ck_assert_int_eq(sb.err, 0);
	ck_assert_int_eq(stats_find_u64(buf, "tier.dram.capacity_bytes", &v), 0);
	ck_assert_uint_eq(v, 128 * SLOT);
	ck_assert_int_eq(stats_find_u64(buf, "tier.dram.writes", &v), 0);
	ck_assert_uint_eq(v, 140);
	ck_assert_int_eq(stats_find_u64(buf, "tier.dram.read_bytes", &v), 0);
	ck_assert_uint_gt(v, 0);
	tier_close(t);
}
END_TEST

/* One NUMA node and no GPU (CI): the pool lands on the local node, i.e. node 0. */
START_TEST(dram_numa_placement_without_gpu)
{
	struct tier *t = open_dram(16);
	struct dram_info info;
	char buf[4096], *p;
	struct stats_buf sb;
	uint64_t nodes;

	dram_get_info(t, &info);
	stats_buf_init(&sb, buf, sizeof(buf));
	tier_stats(t, &sb);
	ck_assert_int_eq(stats_find_u64(buf, "tier.dram.numa_nodes", &nodes), 0);
	p = strstr(buf, "tier.dram.numa_reason ");
	ck_assert_ptr_nonnull(p);
	if (nodes == 1) {
		ck_assert_int_eq(info.node, 0);
		ck_assert(!strncmp(p + 22, "local", 5) || !strncmp(p + 22, "gpu", 3));
	} else if (nodes == 0) {
		ck_assert_int_eq(info.node, -1);
	} else {
		ck_assert_int_ge(info.node, 0);
	}
	tier_close(t);
	/* An explicit node that does not exist is refused, not ignored. */
	if (nodes >= 1) {
		struct tier_config c = { .capacity_bytes = 16 * SLOT,
					 .slot_size = SLOT,
					 .numa_node = 60 };

		ck_assert_int_eq(tier_open(&dram_tier_ops, &c, &t), -EINVAL);
	}
}
END_TEST

START_TEST(nvme_round_trip_aligned_staged_and_windowed)
{
	/* depth 8 < batch 70: the sliding window refills the queue. */
	struct tier *t = open_nvme("rt.dat", 256, 8, 0);
	struct nvme_info info;

	tier_round_trip(t, 0);
	tier_round_trip(t, 3);
	nvme_get_info(t, &info);
	ck_assert_uint_gt(info.io_staged, 0);
	ck_assert_uint_gt(info.io_plain, 0);
	/* the tier used O_DIRECT exactly when this filesystem takes it */
	ck_assert_int_eq(info.direct, tt_direct_ok(tmpdir));
	ck_assert_int_eq(info.fallocated, 1);
	tier_close(t);
}
END_TEST

/* Consecutive slots written from aligned buffers go out as merged WRITEVs; runs break at a
 * gap, at a short page (which may end a run) and at NVME_VEC_MAX; every byte still lands. */
START_TEST(nvme_merged_writes_land_byte_for_byte)
{
	enum { N = 150 };
	static uint8_t src[N][SLOT] __attribute__((aligned(4096)));
	static uint8_t dst[N][SLOT] __attribute__((aligned(4096)));
	struct tier *t = open_nvme("merge.dat", 512, 64, 0);
	struct tier_io io[N];
	struct nvme_info info;
	unsigned i;

	for (i = 0; i < N; i++) {
		struct store_key k = key(11, i);
		/* slots 0..69, then a gap, then 80..159; page 30 is short (ends a run) */
		uint64_t slot = i < 70 ? i : i + 10;
		uint32_t len = i == 30 ? 3000 : SLOT;

		tt_pattern(src[i], len, &k, 4);
		io[i] = (struct tier_io){ .slot = slot, .buf = src[i], .len = len, .cap = SLOT };
	}
	ck_assert_int_eq(tier_write(t, io, N), 0);
	nvme_get_info(t, &info);
	if (info.uring)
		ck_assert_uint_eq(info.io_merged, N);
	for (i = 0; i < N; i++) {
		ck_assert_int_eq(io[i].res, 0);
		io[i].buf = dst[i];
	}
	ck_assert_int_eq(tier_read(t, io, N), 0);
	for (i = 0; i < N; i++)
		ck_assert_int_eq(memcmp(dst[i], src[i], io[i].len), 0);
	tier_close(t);
}
END_TEST

/* Without io_uring (seccomp, old kernels): synchronous transfers, same bytes, same checks. */
START_TEST(nvme_without_io_uring)
{
	struct tier *t = open_nvme("sync.dat", 256, 8, TIER_F_NO_URING);
	struct nvme_info info;
	char buf[2048];
	struct stats_buf sb;
	uint64_t v;

	tier_round_trip(t, 0);
	tier_round_trip(t, 3);
	nvme_get_info(t, &info);
	ck_assert_int_eq(info.uring, 0);
	ck_assert_uint_gt(info.io_staged, 0);
	ck_assert_uint_gt(info.io_plain, 0);
	ck_assert_uint_eq(info.io_fixed, 0);
	ck_assert_int_eq(t->ops->register_mem(t, buf, sizeof(buf)), -ENOTSUP);
	stats_buf_init(&sb, buf, sizeof(buf));
	tier_stats(t, &sb);
	ck_assert_int_eq(stats_find_u64(buf, "tier.nvme.io_uring", &v), 0);
	ck_assert_uint_eq(v, 0);
	tier_close(t);
}
END_TEST

START_TEST(nvme_registered_memory_moves_in_place)
{
	struct tier *d = open_dram(64), *t = open_nvme("reg.dat", 64, 16, 0);
	struct tier_io io[32];
	struct nvme_info info;
	uint64_t ds[32], ns[32];
	static uint8_t ref[SLOT];
	unsigned i;

	ck_assert_int_eq(t->ops->register_mem(t, tier_slot_addr(d, 0), 64 * SLOT), 0);
	ck_assert_int_eq(tier_alloc(d, 32, ds), 0);
	ck_assert_int_eq(tier_alloc(t, 32, ns), 0);
	for (i = 0; i < 32; i++) {
		struct store_key k = key(3, i);

		tt_pattern(tier_slot_addr(d, ds[i]), SLOT, &k, 2);
		io[i] = (struct tier_io){
			.slot = ns[i], .buf = tier_slot_addr(d, ds[i]), .len = SLOT, .cap = SLOT
		};
	}
	ck_assert_int_eq(tier_write(t, io, 32), 0);
	for (i = 0; i < 32; i++)
		memset(tier_slot_addr(d, ds[i]), 0, SLOT);
	ck_assert_int_eq(tier_read(t, io, 32), 0);
	for (i = 0; i < 32; i++) {
		struct store_key k = key(3, i);

		ck_assert(tt_check_pattern(tier_slot_addr(d, ds[i]), SLOT, &k, 2, ref));
	}
	nvme_get_info(t, &info);
	if (info.uring) { /* registration is what makes these moves copy-free */
		ck_assert_uint_eq(info.io_fixed, 32);  /* the reads */
		ck_assert_uint_eq(info.io_merged, 32); /* 32 consecutive slots: one WRITEV */
		ck_assert_uint_eq(info.registered_regions, 1);
	}
	tier_close(t);
	tier_close(d);
}
END_TEST

/* tmpfs: either O_DIRECT works there (newer kernels) or the tier falls back / refuses. */
START_TEST(nvme_tmpfs_direct_fallback)
{
	char dir[] = "/dev/shm/icetiers-XXXXXX", path[PATH_MAX];
	struct tier_config c = { .capacity_bytes = 128 * SLOT, .slot_size = SLOT };
	struct nvme_info info;
	struct tier *t;
	int r;

	if (!mkdtemp(dir))
		return; /* no /dev/shm here: nothing to check */
	snprintf(path, sizeof(path), "%s/f", dir);
	c.path = path;
	c.flags = TIER_F_REQUIRE_DIRECT;
	r = tier_open(&nvme_tier_ops, &c, &t);
	ck_assert(r == 0 || r == -EINVAL);
	if (r == 0) {
		nvme_get_info(t, &info);
		ck_assert_int_eq(info.direct, 1);
		tier_close(t);
	}
	c.flags = 0;
	ck_assert_int_eq(tier_open(&nvme_tier_ops, &c, &t), 0);
	nvme_get_info(t, &info);
	ck_assert_int_eq(info.direct, r == 0); /* fell back exactly when O_DIRECT was refused */
	tier_round_trip(t, 5);
	tier_close(t);
	c.flags = TIER_F_NO_DIRECT;
	ck_assert_int_eq(tier_open(&nvme_tier_ops, &c, &t), 0);
	nvme_get_info(t, &info);
	ck_assert_int_eq(info.direct, 0);
	tier_round_trip(t, 0);
	tier_close(t);
	unlink(path);
	rmdir(dir);
}
END_TEST

START_TEST(nvme_bad_paths_fail_cleanly)
{
	struct tier_config c = { .capacity_bytes = 16 * SLOT,
				 .slot_size = SLOT,
				 .path = "/nonexistent-dir/x" };
	struct tier *t;

	ck_assert_int_eq(tier_open(&nvme_tier_ops, &c, &t), -ENOENT);
	c.path = NULL;
	ck_assert_int_eq(tier_open(&nvme_tier_ops, &c, &t), -EINVAL);
	c.path = tmpdir; /* a directory */
	ck_assert_int_lt(tier_open(&nvme_tier_ops, &c, &t), 0);
}
END_TEST

/* ---- the store ---- */

struct fixture {
	struct tier *dram, *nvme;
	struct store *s;
};

static void fx_open(struct fixture *fx, uint64_t dram_slots, uint64_t nvme_slots,
		    uint64_t max_pages)
{
	struct store_config sc = { .slot_size = SLOT, .max_pages = max_pages };
	struct tier *tiers[2];

	fx->dram = open_dram(dram_slots);
	fx->nvme = open_nvme("store.dat", nvme_slots, 32, fx_nvme_flags);
	tiers[0] = fx->dram;
	tiers[1] = fx->nvme;
	ck_assert_int_eq(store_open(&sc, tiers, 2, &fx->s), 0);
}

static void fx_close(struct fixture *fx)
{
	store_close(fx->s);
	tier_close(fx->nvme);
	tier_close(fx->dram);
}

static void put_pages(struct store *s, uint64_t seq, unsigned first, unsigned n, uint64_t version,
		      unsigned tier, int expect)
{
	struct store_page pg[64];
	static uint8_t buf[64][SLOT];
	unsigned i;

	ck_assert_uint_le(n, 64);
	for (i = 0; i < n; i++) {
		struct store_key k = key(seq, first + i);
		uint32_t fill = 1 + (first + i) % 16, len = fill * (SLOT / 16);

		tt_pattern(buf[i], len, &k, version);
		pg[i] = (struct store_page){
			.key = k, .buf = buf[i], .len = len, .fill = fill, .version = version
		};
	}
	ck_assert_int_eq(store_put(s, pg, n, tier), expect);
	if (expect == 0)
		for (i = 0; i < n; i++)
			ck_assert_int_eq(pg[i].tier, (int)tier);
}

/* Gets pages and checks every byte; returns how many came from each tier in *from. */
static void get_check(struct store *s, uint64_t seq, unsigned first, unsigned n, uint64_t version,
		      unsigned from[2])
{
	struct store_page pg[64];
	static uint8_t buf[64][SLOT], ref[SLOT];
	unsigned i;

	ck_assert_uint_le(n, 64);
	for (i = 0; i < n; i++)
		pg[i] = (struct store_page){ .key = key(seq, first + i),
					     .buf = buf[i],
					     .len = SLOT };
	ck_assert_int_eq(store_get(s, pg, n), 0);
	for (i = 0; i < n; i++) {
		uint32_t fill = 1 + (first + i) % 16;

		ck_assert_int_eq(pg[i].res, 0);
		ck_assert_uint_eq(pg[i].fill, fill);
		ck_assert_uint_eq(pg[i].len, fill * (SLOT / 16));
		ck_assert_uint_eq(pg[i].version, version);
		ck_assert(tt_check_pattern(buf[i], pg[i].len, &pg[i].key, version, ref));
		if (from)
			from[pg[i].tier]++;
	}
}

START_TEST(store_round_trips_through_tiers_and_migrations)
{
	struct fixture fx;
	struct store_key keys[40];
	struct store_page_info info;
	unsigned from[2] = { 0, 0 }, i;
	int res[40];

	fx_nvme_flags = _i ? TIER_F_NO_URING : 0;
	fx_open(&fx, 64, 128, 0);
	put_pages(fx.s, 1, 0, 40, 1, 0, 0);
	get_check(fx.s, 1, 0, 40, 1, from);
	ck_assert_uint_eq(from[0], 40);
	for (i = 0; i < 40; i++)
		keys[i] = key(1, i);
	/* move to nvme */
	ck_assert_int_eq(store_migrate(fx.s, keys, 40, 1, 0, res), 0);
	ck_assert_uint_eq(tier_used_slots(fx.dram), 0);
	ck_assert_uint_eq(tier_used_slots(fx.nvme), 40);
	ck_assert_int_eq(store_lookup(fx.s, &keys[5], &info), 0);
	ck_assert_uint_eq(info.resident, 2);
	from[0] = from[1] = 0;
	get_check(fx.s, 1, 0, 40, 1, from);
	ck_assert_uint_eq(from[1], 40);
	/* copy back: both tiers, reads served by dram */
	ck_assert_int_eq(store_migrate(fx.s, keys, 20, 0, STORE_MIGRATE_COPY, res), 0);
	ck_assert_int_eq(store_lookup(fx.s, &keys[5], &info), 0);
	ck_assert_uint_eq(info.resident, 3);
	from[0] = from[1] = 0;
	get_check(fx.s, 1, 0, 40, 1, from);
	ck_assert_uint_eq(from[0], 20);
	ck_assert_uint_eq(from[1], 20);
	/* evict the clean dram copy: no I/O, nvme copy stays */
	ck_assert_int_eq(store_evict_copy(fx.s, keys, 20, 0, res), 0);
	ck_assert_int_eq(store_evict_copy(fx.s, keys + 20, 1, 1, res), -EBUSY); /* only copy */
	ck_assert_uint_eq(tier_used_slots(fx.dram), 0);
	get_check(fx.s, 1, 0, 40, 1, NULL);
	/* new version replaces every copy */
	ck_assert_int_eq(store_migrate(fx.s, keys, 10, 0, STORE_MIGRATE_COPY, res), 0);
	put_pages(fx.s, 1, 0, 10, 2, 1, 0);
	ck_assert_int_eq(store_lookup(fx.s, &keys[3], &info), 0);
	ck_assert_uint_eq(info.resident, 2);
	ck_assert_uint_eq(info.version, 2);
	ck_assert_uint_eq(tier_used_slots(fx.dram), 0);
	ck_assert_uint_eq(tier_used_slots(fx.nvme), 40);
	get_check(fx.s, 1, 0, 10, 2, NULL);
	get_check(fx.s, 1, 10, 30, 1, NULL);
	/* migrate a page already in place, and a missing page */
	keys[0] = key(1, 15);
	keys[1] = key(99, 0);
	ck_assert_int_eq(store_migrate(fx.s, keys, 2, 1, 0, res), -ENOENT);
	ck_assert_int_eq(res[0], 0);
	ck_assert_int_eq(res[1], -ENOENT);
	ck_assert_uint_eq(store_npages(fx.s), 40);
	/* drop */
	put_pages(fx.s, 2, 0, 5, 1, 0, 0);
	ck_assert_int_eq(store_drop_seq(fx.s, 1), 40);
	ck_assert_uint_eq(tier_used_slots(fx.nvme), 0);
	ck_assert_uint_eq(store_npages(fx.s), 5);
	ck_assert_int_eq(store_lookup(fx.s, &keys[0], &info), -ENOENT);
	get_check(fx.s, 2, 0, 5, 1, NULL);
	fx_close(&fx);
}
END_TEST

START_TEST(store_rejects_bad_input)
{
	struct fixture fx;
	struct store_page pg;
	static uint8_t buf[SLOT * 2];
	struct store_key k = key(1, 0);
	struct store_config sc = { .slot_size = 4096 };
	struct store *s;

	fx_open(&fx, 8, 8, 0);
	/* slot size mismatch, too many tiers, bad tier index */
	ck_assert_int_eq(store_open(&sc, &fx.dram, 1, &s), -EINVAL);
	ck_assert_int_eq(store_put(fx.s, &pg, 1, 2), -EINVAL);
	pg = (struct store_page){ .key = k, .buf = buf, .len = SLOT + 1, .fill = 1, .version = 1 };
	ck_assert_int_eq(store_put(fx.s, &pg, 1, 0), -EINVAL);
	pg.len = 0;
	ck_assert_int_eq(store_put(fx.s, &pg, 1, 0), -EINVAL);
	pg.buf = NULL;
	pg.len = 100;
	ck_assert_int_eq(store_put(fx.s, &pg, 1, 0), -EINVAL);
	/* get: unknown key, too small a buffer */
	pg = (struct store_page){ .key = k, .buf = buf, .len = SLOT };
	ck_assert_int_eq(store_get(fx.s, &pg, 1), -ENOENT);
	put_pages(fx.s, 1, 0, 1, 1, 0, 0); /* len = 1 × 512 */
	pg.len = 100;
	ck_assert_int_eq(store_get(fx.s, &pg, 1), -EMSGSIZE);
	pg.len = 512;
	ck_assert_int_eq(store_get(fx.s, &pg, 1), 0);
	ck_assert_int_eq(store_migrate(fx.s, &k, 1, 0, 0x80, NULL), -EINVAL);
	fx_close(&fx);
}
END_TEST

static void flip_byte_in_file(const char *path, uint64_t off)
{
	/* O_DIRECT so the tier's own O_DIRECT reads see it; buffered where the fs refuses */
	int fd = tt_direct_ok(tmpdir) ? open(path, O_RDWR | O_DIRECT) : open(path, O_RDWR);
	void *b;
	uint64_t blk = off & ~(uint64_t)4095;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(posix_memalign(&b, 4096, 4096), 0);
	ck_assert_int_eq(pread(fd, b, 4096, (off_t)blk), 4096);
	((uint8_t *)b)[off - blk] ^= 0x40;
	ck_assert_int_eq(pwrite(fd, b, 4096, (off_t)blk), 4096);
	free(b);
	close(fd);
}

START_TEST(corruption_is_detected_never_returned)
{
	struct fixture fx;
	struct store_page_info info;
	struct store_page pg[3];
	static uint8_t buf[3][SLOT];
	char path[PATH_MAX], sbuf[8192];
	struct stats_buf sb;
	uint64_t v;
	unsigned i;

	fx_nvme_flags = _i ? TIER_F_NO_URING : 0;
	fx_open(&fx, 16, 16, 0);
	put_pages(fx.s, 4, 0, 3, 1, 1, 0);
	ck_assert_int_eq(store_lookup(fx.s, &(struct store_key){ 4, 1, 1, 1 }, &info), 0);
	nvme_path(path, sizeof(path), "store.dat");
	flip_byte_in_file(path, info.slot[1] * SLOT + 100);
	for (i = 0; i < 3; i++) {
		pg[i] = (struct store_page){ .key = key(4, i), .buf = buf[i], .len = SLOT };
		memset(buf[i], 0x77, SLOT);
	}
	ck_assert_int_eq(store_get(fx.s, pg, 3), -EBADMSG);
	ck_assert_int_eq(pg[0].res, 0);
	ck_assert_int_eq(pg[1].res, -EBADMSG);
	ck_assert_int_eq(pg[2].res, 0);
	for (i = 0; i < 4096; i++) /* scrubbed: no corrupt data reaches the caller */
		ck_assert_uint_eq(buf[1][i], 0);
	/* a migration refuses to copy it, too */
	ck_assert_int_eq(store_migrate(fx.s, &pg[1].key, 1, 0, 0, NULL), -EBADMSG);
	ck_assert_uint_eq(tier_used_slots(fx.dram), 0);
	/* dram corruption is caught the same way */
	put_pages(fx.s, 5, 0, 2, 1, 0, 0);
	ck_assert_int_eq(store_lookup(fx.s, &(struct store_key){ 5, 2, 1, 0 }, &info), 0);
	((uint8_t *)tier_slot_addr(fx.dram, info.slot[0]))[0] ^= 1;
	pg[0] = (struct store_page){ .key = key(5, 0), .buf = buf[0], .len = SLOT };
	ck_assert_int_eq(store_get(fx.s, pg, 1), -EBADMSG);
	stats_buf_init(&sb, sbuf, sizeof(sbuf));
	store_stats(fx.s, &sb);
	ck_assert_int_eq(sb.err, 0);
	ck_assert_int_eq(stats_find_u64(sbuf, "store.csum_failures", &v), 0);
	ck_assert_uint_eq(v, 3);
	ck_assert_int_eq(stats_find_u64(sbuf, "tier.nvme.csum_failures", &v), 0);
	ck_assert_uint_eq(v, 2);
	ck_assert_int_eq(stats_find_u64(sbuf, "tier.dram.csum_failures", &v), 0);
	ck_assert_uint_eq(v, 1);
	ck_assert_int_eq(stats_find_u64(sbuf, "tier.nvme.pages", &v), 0);
	ck_assert_uint_eq(v, 3);
	ck_assert_int_eq(stats_find_u64(sbuf, "tier.dram.pages", &v), 0);
	ck_assert_uint_eq(v, 2);
	ck_assert_int_eq(stats_find_u64(sbuf, "store.pages", &v), 0);
	ck_assert_uint_eq(v, 5);
	fx_close(&fx);
}
END_TEST

START_TEST(full_nvme_returns_enospc_and_keeps_serving)
{
	struct fixture fx;
	struct store_page pg;
	static uint8_t buf[SLOT];
	struct store_key k = key(6, 4);
	struct store_key ks[2] = { key(7, 0), key(7, 1) };
	int res[2];

	fx_nvme_flags = _i ? TIER_F_NO_URING : 0;
	fx_open(&fx, 4, 4, 0); /* a 32 KiB file */
	put_pages(fx.s, 6, 0, 4, 1, 1, 0);
	put_pages(fx.s, 6, 4, 1, 1, 1, -ENOSPC);
	ck_assert_uint_eq(store_npages(fx.s), 4);
	get_check(fx.s, 6, 0, 4, 1, NULL);
	pg = (struct store_page){ .key = k, .buf = buf, .len = SLOT };
	ck_assert_int_eq(store_get(fx.s, &pg, 1), -ENOENT);
	/* a new version of a page in a full nvme tier fails, the old one stays */
	put_pages(fx.s, 6, 0, 1, 2, 1, -ENOSPC);
	get_check(fx.s, 6, 0, 4, 1, NULL);
	/* dram still takes pages; migration into full nvme fails per page */
	put_pages(fx.s, 7, 0, 2, 1, 0, 0);
	ck_assert_int_eq(store_migrate(fx.s, ks, 2, 1, 0, res), -ENOSPC);
	ck_assert_int_eq(res[0], -ENOSPC);
	get_check(fx.s, 7, 0, 2, 1, NULL);
	/* dram full too: a replacement in place still works there */
	put_pages(fx.s, 7, 2, 2, 1, 0, 0);
	put_pages(fx.s, 7, 4, 1, 1, 0, -ENOSPC);
	put_pages(fx.s, 7, 0, 4, 3, 0, 0);
	get_check(fx.s, 7, 0, 4, 3, NULL);
	/* freeing space makes it usable again */
	ck_assert_int_eq(store_drop_seq(fx.s, 6), 4);
	put_pages(fx.s, 6, 4, 1, 1, 1, 0);
	get_check(fx.s, 6, 4, 1, 1, NULL);
	fx_close(&fx);
}
END_TEST

static void put_acct(struct store *s, uint64_t seq, unsigned first, unsigned n, uint64_t version,
		     unsigned tier, uint32_t acct, struct store_resv *resv, const int *expect)
{
	struct store_page pg[16];
	static uint8_t buf[16][SLOT];
	unsigned i;

	for (i = 0; i < n; i++) {
		struct store_key k = key(seq, first + i);
		uint32_t fill = 1 + (first + i) % 16, len = fill * (SLOT / 16);

		tt_pattern(buf[i], len, &k, version);
		pg[i] = (struct store_page){ .key = k,
					     .buf = buf[i],
					     .len = len,
					     .fill = fill,
					     .version = version,
					     .acct = acct };
	}
	if (resv)
		store_put_resv(s, pg, n, tier, resv);
	else
		store_put(s, pg, n, tier);
	for (i = 0; i < n; i++)
		ck_assert_msg(pg[i].res == expect[i], "page %u: %d, expected %d", i, pg[i].res,
			      expect[i]);
}

static void acct_is(struct store *s, uint32_t acct, uint64_t dram, uint64_t nvme)
{
	uint64_t n[TIER_MAX];

	ck_assert_int_eq(store_acct_slots(s, acct, n), 0);
	ck_assert_msg(n[0] == dram && n[1] == nvme,
		      "account %u holds %llu+%llu, expected %llu+%llu", acct,
		      (unsigned long long)n[0], (unsigned long long)n[1], (unsigned long long)dram,
		      (unsigned long long)nvme);
}

/* Per-account slot counts follow every residency change; quotas refuse with -EDQUOT; a
 * reservation keeps its slots from everyone else and its rewrites give theirs back to it. */
START_TEST(accounts_quotas_and_reservations)
{
	struct store_config sc = { .slot_size = SLOT, .naccts = 4 };
	static const int ok[16], ok_dq[2] = { 0, -EDQUOT }, ok3_sp[4] = { 0, 0, 0, -ENOSPC };
	static const int sp[1] = { -ENOSPC }, inval[1] = { -EINVAL };
	const unsigned both[2] = { 0, 1 };
	struct store_resv r = { .acct = 3 };
	struct store_key ks[2];
	struct tier *tiers[2];
	struct fixture fx;
	int res[2];

	fx_nvme_flags = _i ? TIER_F_NO_URING : 0;
	fx.dram = open_dram(8);
	fx.nvme = open_nvme("acct.dat", 8, 32, fx_nvme_flags);
	tiers[0] = fx.dram;
	tiers[1] = fx.nvme;
	ck_assert_int_eq(store_open(&sc, tiers, 2, &fx.s), 0);
	put_acct(fx.s, 1, 0, 3, 1, 0, 1, NULL, ok);
	put_acct(fx.s, 2, 0, 2, 1, 1, 2, NULL, ok);
	acct_is(fx.s, 1, 3, 0);
	acct_is(fx.s, 2, 0, 2);
	put_acct(fx.s, 9, 0, 1, 1, 0, 4, NULL, inval); /* no such account */
	/* a quota counts the pages of one batch against each other; a new version is no new page */
	ck_assert_int_eq(store_set_quota(fx.s, 0, 4), 0);
	put_acct(fx.s, 1, 3, 2, 1, 0, 1, NULL, ok_dq);
	acct_is(fx.s, 1, 4, 0);
	put_acct(fx.s, 1, 0, 4, 2, 0, 1, NULL, ok);
	get_check(fx.s, 1, 0, 4, 2, NULL);
	/* migrations and installs are counted and held to the quota too */
	ks[0] = key(2, 0);
	ks[1] = key(2, 1);
	ck_assert_int_eq(store_migrate(fx.s, ks, 2, 0, 0, res), 0);
	acct_is(fx.s, 2, 2, 0);
	ck_assert_int_eq(store_set_quota(fx.s, 1, 1), 0);
	ks[0] = key(1, 0);
	ks[1] = key(1, 1);
	ck_assert_int_eq(store_migrate(fx.s, ks, 2, 1, 0, res), -EDQUOT);
	ck_assert_int_eq(res[0], 0);
	ck_assert_int_eq(res[1], -EDQUOT);
	acct_is(fx.s, 1, 3, 1);
	{
		struct store_page pg = { .key = key(1, 0), .buf = NULL, .len = SLOT };
		static uint8_t b[SLOT];

		pg.buf = b;
		ck_assert_int_eq(store_get(fx.s, &pg, 1), 0);
		ck_assert_int_eq(pg.tier, 1);
		ck_assert_int_eq(store_set_quota(fx.s, 0, 3), 0);
		ck_assert_int_eq(store_install(fx.s, &pg, 1, 0), -EDQUOT);
		ck_assert_int_eq(store_set_quota(fx.s, 0, 4), 0);
		ck_assert_int_eq(store_install(fx.s, &pg, 1, 0), 0);
		acct_is(fx.s, 1, 4, 1);
		ck_assert_int_eq(store_evict_copy(fx.s, &pg.key, 1, 0, NULL), 0);
		acct_is(fx.s, 1, 3, 1);
	}
	/* dram: 5 of 8 used, nvme 1 of 8. A reservation of 5 takes dram's 3 and 2 of nvme's. */
	ck_assert_int_eq(store_set_quota(fx.s, 0, 0), 0);
	ck_assert_int_eq(store_set_quota(fx.s, 1, 0), 0);
	ck_assert_int_eq(store_reserve(fx.s, &r, both, 2, 15), -ENOSPC);
	ck_assert_int_eq(store_set_quota(fx.s, 1, 4), 0);
	ck_assert_int_eq(store_reserve(fx.s, &r, both, 2, 8), -EDQUOT);
	ck_assert_int_eq(store_set_quota(fx.s, 1, 0), 0);
	ck_assert_uint_eq(r.n[0] + r.n[1], 0);
	ck_assert_int_eq(store_reserve(fx.s, &r, both, 2, 5), 0);
	ck_assert_uint_eq(r.n[0], 3);
	ck_assert_uint_eq(r.n[1], 2);
	put_acct(fx.s, 1, 4, 1, 1, 0, 1, NULL, sp); /* dram is all taken or reserved */
	put_acct(fx.s, 3, 0, 4, 1, 0, 3, &r, ok3_sp);
	put_acct(fx.s, 3, 3, 1, 1, 1, 3, &r, ok);
	ck_assert_uint_eq(r.n[0], 0);
	ck_assert_uint_eq(r.n[1], 1);
	acct_is(fx.s, 3, 3, 1);
	/* a rewrite in a full dram goes in place; one from nvme to nvme keeps the slot count */
	put_acct(fx.s, 3, 0, 1, 2, 0, 3, &r, ok);
	put_acct(fx.s, 3, 3, 1, 2, 0, 3, &r, sp);
	put_acct(fx.s, 3, 3, 1, 2, 1, 3, &r, ok);
	ck_assert_uint_eq(r.n[1], 1);
	acct_is(fx.s, 3, 3, 1);
	put_acct(fx.s, 1, 0, 1, 3, 1, 1, &r, inval); /* not the reservation's account */
	get_check(fx.s, 3, 0, 1, 2, NULL);
	get_check(fx.s, 3, 1, 2, 1, NULL);
	get_check(fx.s, 3, 3, 1, 2, NULL);
	store_unreserve(fx.s, &r);
	ck_assert_uint_eq(r.n[1], 0);
	ck_assert_uint_eq(tier_reserved_slots(fx.nvme), 0);
	ck_assert_uint_eq(tier_used_slots(fx.nvme), 2);
	ck_assert_int_eq(store_drop_seq(fx.s, 3), 4);
	acct_is(fx.s, 3, 0, 0);
	acct_is(fx.s, 1, 3, 1);
	acct_is(fx.s, 2, 2, 0);
	ck_assert_uint_eq(tier_used_slots(fx.dram), 5);
	fx_close(&fx);
}
END_TEST

static void policy_put_acct(struct policy *p, uint64_t seq, unsigned first, unsigned n,
			    uint32_t acct, struct store_resv *resv, int expect)
{
	struct store_page pg[16];
	static uint8_t buf[16][SLOT];
	unsigned i;

	for (i = 0; i < n; i++) {
		struct store_key k = key(seq, first + i);

		tt_pattern(buf[i], SLOT, &k, 1);
		pg[i] = (struct store_page){
			.key = k, .buf = buf[i], .len = SLOT, .fill = 16, .version = 1, .acct = acct
		};
	}
	ck_assert_int_eq(resv ? policy_put_resv(p, pg, n, resv) : policy_put(p, pg, n), expect);
}

/* Demotion leaves the pages of an account at its slow-tier quota where they are and takes the
 * next coldest; a policy reservation makes room first and is held to the quotas. */
START_TEST(policy_respects_quotas_and_reservations)
{
	struct store_config sc = { .slot_size = SLOT, .naccts = 3 };
	struct policy_config pc = { .fast = 0, .slow = 1, .high = 0.75, .low = 0.5 };
	struct store_resv r = { .acct = 2 };
	struct tier *tiers[2];
	struct fixture fx;
	struct policy *p;

	fx.dram = open_dram(8);
	fx.nvme = open_nvme("pol.dat", 8, 32, 0);
	tiers[0] = fx.dram;
	tiers[1] = fx.nvme;
	ck_assert_int_eq(store_open(&sc, tiers, 2, &fx.s), 0);
	ck_assert_int_eq(policy_new(fx.s, &pc, &p), 0);
	ck_assert_int_eq(store_set_quota(fx.s, 1, 2), 0);
	policy_put_acct(p, 1, 0, 6, 1, NULL, 0);
	acct_is(fx.s, 1, 6, 0);
	policy_put_acct(p, 2, 0, 4, 2, NULL, 0);
	acct_is(fx.s, 1, 4, 2);
	acct_is(fx.s, 2, 4, 0);
	/* room for 6: account 1 cannot go down any more, account 2 only 2 pages */
	ck_assert_int_eq(policy_reserve(p, &r, 6), -EDQUOT);
	acct_is(fx.s, 2, 2, 2);
	ck_assert_uint_eq(r.n[0] + r.n[1], 0);
	ck_assert_int_eq(policy_reserve(p, &r, 2), 0);
	ck_assert_uint_eq(r.n[0], 2);
	policy_put_acct(p, 2, 4, 3, 2, &r, -ENOSPC);
	acct_is(fx.s, 2, 4, 2);
	store_unreserve(fx.s, &r);
	policy_free(p);
	fx_close(&fx);
}
END_TEST

/* The file shrinks under the store (another process, a bad admin): reads past its end are
 * short, reported as -EIO per page, never data, and DRAM pages keep being served. */
START_TEST(io_errors_are_reported_per_page)
{
	struct fixture fx;
	struct store_page pg[2];
	static uint8_t buf[2][SLOT];
	char path[PATH_MAX];

	fx_nvme_flags = _i ? TIER_F_NO_URING : 0;
	fx_open(&fx, 16, 16, 0);
	put_pages(fx.s, 1, 0, 4, 1, 1, 0);
	put_pages(fx.s, 2, 0, 4, 1, 0, 0);
	nvme_path(path, sizeof(path), "store.dat");
	ck_assert_int_eq(truncate(path, 0), 0);
	pg[0] = (struct store_page){ .key = key(1, 2), .buf = buf[0], .len = SLOT };
	pg[1] = (struct store_page){ .key = key(2, 2), .buf = buf[1], .len = SLOT };
	ck_assert_int_eq(store_get(fx.s, pg, 2), -EIO);
	ck_assert_int_eq(pg[0].res, -EIO);
	ck_assert_int_eq(pg[1].res, 0);
	get_check(fx.s, 2, 0, 4, 1, NULL);
	/* a migration out of the broken tier fails cleanly and leaks no dram slot */
	ck_assert_int_lt(store_migrate(fx.s, &pg[0].key, 1, 0, 0, NULL), 0);
	ck_assert_uint_eq(tier_used_slots(fx.dram), 4);
	fx_close(&fx);
}
END_TEST

START_TEST(metadata_capacity_is_a_hard_limit)
{
	struct fixture fx;

	fx_open(&fx, 16, 16, 10);
	put_pages(fx.s, 1, 0, 10, 1, 0, 0);
	put_pages(fx.s, 1, 10, 1, 1, 0, -ENOSPC);
	ck_assert_uint_eq(tier_used_slots(fx.dram), 10); /* the refused page's slot was returned */
	put_pages(fx.s, 1, 0, 10, 2, 1, 0);              /* replacing existing pages is fine */
	get_check(fx.s, 1, 0, 10, 2, NULL);
	ck_assert_uint_eq(tier_used_slots(fx.dram), 0);
	fx_close(&fx);
}
END_TEST

/* ---- heat and policy ---- */

START_TEST(touch_decays_and_coldest_orders)
{
	struct fixture fx;
	struct store_key keys[8], out[8];
	struct store_page_info a, b;
	int n;

	fx_open(&fx, 16, 16, 0);
	put_pages(fx.s, 1, 0, 8, 1, 0, 0);
	keys[0] = key(1, 3);
	keys[1] = key(1, 5);
	ck_assert_int_eq(store_touch(fx.s, keys, 2), 2);
	ck_assert_int_eq(store_touch(fx.s, keys, 1), 1);
	ck_assert_int_eq(store_lookup(fx.s, &keys[0], &a), 0);
	ck_assert_int_eq(store_lookup(fx.s, &keys[1], &b), 0);
	ck_assert_double_gt(a.heat, b.heat);
	ck_assert_double_gt(b.heat, 1.0);
	n = store_coldest(fx.s, 0, 0, out, 8);
	ck_assert_int_eq(n, 8);
	ck_assert_uint_eq(out[7].page, 3);
	ck_assert_uint_eq(out[6].page, 5);
	/* many steps later everything has decayed toward zero */
	for (n = 0; n < 200; n++)
		store_touch(fx.s, NULL, 0);
	ck_assert_int_eq(store_lookup(fx.s, &keys[0], &a), 0);
	ck_assert_double_lt(a.heat, 1e-6);
	fx_close(&fx);
}
END_TEST

START_TEST(watermarks_keep_dram_under_limit_and_every_page_readable)
{
	struct policy_config pc = { .fast = 0, .slow = 1, .high = 0.75, .low = 0.5 };
	struct store_key hot[4];
	struct store_page_info info;
	struct policy *p;
	struct fixture fx;
	char sbuf[8192];
	struct stats_buf sb;
	uint64_t v;
	unsigned i, b;

	fx_open(&fx, 64, 1024, 0);
	ck_assert_int_eq(policy_new(fx.s, &pc, &p), 0);
	for (i = 0; i < 4; i++)
		hot[i] = key(1, i);
	for (b = 0; b < 50; b++) {
		struct store_page pg[10];
		static uint8_t buf[10][SLOT];

		for (i = 0; i < 10; i++) {
			struct store_key k = key(1, b * 10 + i);
			uint32_t fill = 1 + (b * 10 + i) % 16;

			tt_pattern(buf[i], fill * (SLOT / 16), &k, 1);
			pg[i] = (struct store_page){ .key = k,
						     .buf = buf[i],
						     .len = fill * (SLOT / 16),
						     .fill = fill,
						     .version = 1 };
		}
		ck_assert_int_eq(policy_put(p, pg, 10), 0);
		store_touch(fx.s, hot, 4);
		ck_assert_uint_le(tier_used_slots(fx.dram), 48); /* high watermark */
	}
	ck_assert_uint_eq(store_npages(fx.s), 500);
	for (b = 0; b < 500; b += 50)
		get_check(fx.s, 1, b, 50, 1, NULL);
	/* the pages touched every step never left dram */
	for (i = 0; i < 4; i++) {
		ck_assert_int_eq(store_lookup(fx.s, &hot[i], &info), 0);
		ck_assert(info.resident & 1);
	}
	/* promotion: a cold page read through the policy comes back to dram, clean copy kept */
	{
		struct store_page pg = { .key = key(1, 100), .len = SLOT };
		static uint8_t buf[SLOT];

		pg.buf = buf;
		ck_assert_int_eq(store_lookup(fx.s, &pg.key, &info), 0);
		ck_assert_uint_eq(info.resident, 2);
		ck_assert_int_eq(policy_get(p, &pg, 1), 0);
		ck_assert_int_eq(pg.tier, 1);
		ck_assert_int_eq(store_lookup(fx.s, &pg.key, &info), 0);
		ck_assert_uint_eq(info.resident, 3);
		ck_assert_int_eq(policy_get(p, &pg, 1), 0);
		ck_assert_int_eq(pg.tier, 0);
	}
	ck_assert_int_ge(policy_demote_to(p, 0), 0);
	ck_assert_uint_eq(tier_used_slots(fx.dram), 0);
	get_check(fx.s, 1, 0, 50, 1, NULL);
	stats_buf_init(&sb, sbuf, sizeof(sbuf));
	policy_stats(p, &sb);
	ck_assert_int_eq(stats_find_u64(sbuf, "policy.promoted", &v), 0);
	ck_assert_uint_eq(v, 1);
	ck_assert_int_eq(stats_find_u64(sbuf, "policy.demoted_clean", &v), 0);
	ck_assert_uint_ge(v, 1);
	policy_free(p);
	fx_close(&fx);
}
END_TEST

/* ---- threads ---- */

struct worker {
	struct store *s;
	uint64_t seq;
	int failures;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint8_t(*buf)[SLOT] = malloc(17 * SLOT), *ref;
	struct store_page pg[16];
	struct store_key keys[16];
	unsigned round, i;

	if (!buf) {
		w->failures++;
		return NULL;
	}
	ref = buf[16];
	for (round = 0; round < 30; round++) {
		uint64_t version = round + 1;

		for (i = 0; i < 16; i++) {
			struct store_key k = { w->seq, 0, 0, i };

			tt_pattern(buf[i], SLOT, &k, version);
			pg[i] = (struct store_page){
				.key = k, .buf = buf[i], .len = SLOT, .fill = 16, .version = version
			};
			keys[i] = k;
		}
		if (store_put(w->s, pg, 16, round % 2) != 0)
			w->failures++;
		if (store_migrate(w->s, keys, 8, (round + 1) % 2,
				  round % 3 ? STORE_MIGRATE_COPY : 0, NULL) != 0)
			w->failures++;
		for (i = 0; i < 16; i++) {
			memset(buf[i], 0, SLOT);
			pg[i].len = SLOT;
		}
		if (store_get(w->s, pg, 16) != 0)
			w->failures++;
		for (i = 0; i < 16; i++)
			if (pg[i].version != version ||
			    !tt_check_pattern(buf[i], SLOT, &keys[i], version, ref))
				w->failures++;
		store_touch(w->s, keys, 4);
	}
	free(buf);
	return NULL;
}

START_TEST(concurrent_batches_from_threads)
{
	enum { T = 6 };
	struct fixture fx;
	struct worker w[T];
	pthread_t th[T];
	unsigned i;

	fx_open(&fx, T * 32, T * 32, 0);
	for (i = 0; i < T; i++) {
		w[i] = (struct worker){ .s = fx.s, .seq = 100 + i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
	}
	for (i = 0; i < T; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(w[i].failures, 0);
	}
	ck_assert_uint_eq(store_npages(fx.s), T * 16);
	/* every slot is accounted for: nothing leaked by concurrent replaces and moves */
	ck_assert_uint_le(tier_used_slots(fx.dram) + tier_used_slots(fx.nvme), T * 32);
	for (i = 0; i < T; i++)
		ck_assert_int_eq(store_drop_seq(fx.s, 100 + i), 16);
	ck_assert_uint_eq(tier_used_slots(fx.dram) + tier_used_slots(fx.nvme), 0);
	fx_close(&fx);
}
END_TEST

static Suite *tiers_suite(void)
{
	Suite *s = suite_create("tiers");
	TCase *tc = tcase_create("unit");

	tcase_add_unchecked_fixture(tc, setup_base, teardown_base);
	tcase_add_checked_fixture(tc, setup_tmp, teardown_tmp);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, crc32c_known_value_and_hw_equals_sw);
	tcase_add_test(tc, slot_alloc_is_all_or_nothing_and_bounded);
	tcase_add_test(tc, dram_round_trip_and_info);
	tcase_add_test(tc, dram_numa_placement_without_gpu);
	tcase_add_test(tc, nvme_round_trip_aligned_staged_and_windowed);
	tcase_add_test(tc, nvme_merged_writes_land_byte_for_byte);
	tcase_add_test(tc, nvme_without_io_uring);
	tcase_add_test(tc, nvme_registered_memory_moves_in_place);
	tcase_add_test(tc, nvme_tmpfs_direct_fallback);
	tcase_add_test(tc, nvme_bad_paths_fail_cleanly);
	tcase_add_loop_test(tc, store_round_trips_through_tiers_and_migrations, 0, 2);
	tcase_add_test(tc, store_rejects_bad_input);
	tcase_add_loop_test(tc, corruption_is_detected_never_returned, 0, 2);
	tcase_add_loop_test(tc, full_nvme_returns_enospc_and_keeps_serving, 0, 2);
	tcase_add_loop_test(tc, accounts_quotas_and_reservations, 0, 2);
	tcase_add_test(tc, policy_respects_quotas_and_reservations);
	tcase_add_test(tc, metadata_capacity_is_a_hard_limit);
	tcase_add_loop_test(tc, io_errors_are_reported_per_page, 0, 2);
	tcase_add_test(tc, touch_decays_and_coldest_orders);
	tcase_add_test(tc, watermarks_keep_dram_under_limit_and_every_page_readable);
	tcase_add_test(tc, concurrent_batches_from_threads);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	Suite *suites[] = { tiers_suite(), NULL };

	return check_run_suites(suites);
}
