/*
 * GPU tests for the HBM page cache (suite gpu): working sets loaded from pinned DRAM land byte
 * for byte, reselected unchanged pages are not moved, the attention kernel reading the loaded
 * working set matches the CPU reference, single slots round-trip, the pool exported over CUDA
 * IPC reads the same in a second process, and a GPU fault marks the cache failed. Exits 77 without a device; the tests
 * run unforked (CUDA does not survive a fork; second processes are spawned with a fresh exec).
 */
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "attn_case.h"
#include "check_main.h"
#include "hbm.h"
#include "kern.h"

extern char **environ;

static uint64_t fresh_seed(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid();
}

/* Spawns this program with args, returns its exit status; its first stdout line in line. */
static int spawn_self(char *const argv[], char *line, size_t cap)
{
	posix_spawn_file_actions_t fa;
	int pfd[2], status = -1;
	pid_t pid;
	FILE *f;

	line[0] = '\0';
	if (pipe(pfd))
		return -1;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
	posix_spawn_file_actions_addclose(&fa, pfd[0]);
	if (posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, environ)) {
		posix_spawn_file_actions_destroy(&fa);
		close(pfd[0]);
		close(pfd[1]);
		return -1;
	}
	posix_spawn_file_actions_destroy(&fa);
	close(pfd[1]);
	f = fdopen(pfd[0], "r");
	if (f) {
		if (!fgets(line, (int)cap, f))
			line[0] = '\0';
		fclose(f);
	}
	if (waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	while (n--) {
		h ^= *p++;
		h *= 0x100000001b3ull;
	}
	return h;
}

enum { SLOT = 8192, DRAM_PAGES = 512, NSLOTS = 64 };

struct rig {
	struct hbm *h;
	unsigned char *dram;
	uint64_t dram_dev;
	uint64_t version[DRAM_PAGES];
	void *stream;
};

static void rig_open(struct rig *g, uint64_t seed)
{
	struct hbm_config cfg = { 0, NSLOTS, SLOT, 128 };
	size_t i;

	memset(g, 0, sizeof(*g));
	ck_assert_int_eq(hbm_open(&cfg, &g->h), 0);
	ck_assert_int_eq(
		kern_host_alloc((size_t)DRAM_PAGES * SLOT, (void **)&g->dram, &g->dram_dev), 0);
	ck_assert_int_eq(kern_stream_new(&g->stream), 0);
	for (i = 0; i < (size_t)DRAM_PAGES * SLOT; i++)
		g->dram[i] = (unsigned char)case_rand(&seed);
	for (i = 0; i < DRAM_PAGES; i++)
		g->version[i] = 1;
}

static void rig_close(struct rig *g)
{
	kern_stream_free(g->stream);
	kern_host_free(g->dram);
	hbm_close(g->h);
}

/* Loads DRAM pages ids[0..n) as (seq 1, layer 0, head 0, page id), checks every slot against
 * DRAM, releases, returns how many were moved. */
static int load_check(struct rig *g, const uint32_t *ids, uint32_t n)
{
	struct hbm_req req[128];
	struct kern_page pages[128];
	static unsigned char buf[SLOT];
	uint32_t i;
	int moved;

	for (i = 0; i < n; i++) {
		req[i].key.seq = 1;
		req[i].key.layer = 0;
		req[i].key.head = 0;
		req[i].key.page = ids[i];
		req[i].version = g->version[ids[i]];
		req[i].src = g->dram_dev + (uint64_t)ids[i] * SLOT;
		req[i].fill = 16;
		req[i].len = SLOT;
	}
	moved = hbm_load(g->h, req, n, pages, g->stream);
	ck_assert_int_ge(moved, 0);
	ck_assert_int_eq(hbm_sync(g->h, g->stream), 0);
	for (i = 0; i < n; i++) {
		ck_assert_uint_lt(pages[i].slot, NSLOTS);
		ck_assert_int_eq(hbm_read_slot(g->h, pages[i].slot, buf, SLOT), 0);
		ck_assert_int_eq(memcmp(buf, g->dram + (size_t)ids[i] * SLOT, SLOT), 0);
	}
	hbm_release(g->h, pages, n);
	return moved;
}

START_TEST(hbm_load_moves_only_what_changed)
{
	struct rig g;
	uint32_t ids[48], i;
	uint64_t s = fresh_seed();
	char text[2048];
	struct stats_buf sb;
	uint64_t v;

	rig_open(&g, s);
	for (i = 0; i < 40; i++)
		ids[i] = (uint32_t)(i * 11 % DRAM_PAGES);
	ck_assert_int_eq(load_check(&g, ids, 40), 40);
	ck_assert_int_eq(load_check(&g, ids, 40), 0);
	/* Three pages change in DRAM (new version): exactly those move again. */
	for (i = 0; i < 3; i++) {
		uint32_t id = ids[i * 7];

		memset(g.dram + (size_t)id * SLOT, (int)(0x40 + i), SLOT);
		g.version[id]++;
	}
	ck_assert_int_eq(load_check(&g, ids, 40), 3);
	/* 48 new pages: 24 free slots, then 24 of the released ones are evicted. */
	for (i = 0; i < 48; i++)
		ids[i] = 460 + i; /* none of the 40 above (multiples of 11 up to 429) */
	ck_assert_int_eq(load_check(&g, ids, 48), 48);
	stats_buf_init(&sb, text, sizeof(text));
	hbm_stats(g.h, &sb, "hbm");
	ck_assert_int_eq(stats_find_u64(text, "hbm.evictions", &v), 0);
	ck_assert_uint_eq(v, 24);
	ck_assert_int_eq(stats_find_u64(text, "hbm.moved_pages", &v), 0);
	ck_assert_uint_eq(v, 91);
	ck_assert_int_eq(stats_find_u64(text, "hbm.failed", &v), 0);
	ck_assert_uint_eq(v, 0);
	ck_assert_int_eq(hbm_load(g.h, NULL, 3, NULL, g.stream), -EINVAL);
	rig_close(&g);
}
END_TEST

/* The attention kernel over a working set hbm_load put together equals the CPU reference over
 * the same pages in DRAM. */
START_TEST(hbm_working_set_feeds_attention)
{
	struct attn_case c;
	struct hbm *h;
	struct hbm_config cfg = { 0, 256, 0, 256 };
	struct hbm_req req[256];
	struct kern_page pages[256];
	struct kern_attn_args a;
	unsigned char *dram;
	uint64_t dram_dev;
	void *dq, *dout, *dtab, *ws = NULL, *got;
	double *want, err;
	size_t qb, i;
	int moved;

	ck_assert_int_eq(attn_case_init(&c, ICE_DTYPE_BF16, 32, 8, 128, 16, 16, 99, 40, 3.0f,
					fresh_seed()),
			 0);
	cfg.slot_bytes = c.a.slot_bytes;
	ck_assert_int_eq(hbm_open(&cfg, &h), 0);
	ck_assert_int_eq(
		kern_host_alloc((size_t)c.a.nslots * c.a.slot_bytes, (void **)&dram, &dram_dev), 0);
	memcpy(dram, c.pool, (size_t)c.a.nslots * c.a.slot_bytes);
	for (i = 0; i < c.npages; i++) {
		req[i].key.seq = 9;
		req[i].key.layer = 0;
		req[i].key.head = 0;
		req[i].key.page = (uint32_t)i;
		req[i].version = 1;
		req[i].src = dram_dev + (uint64_t)c.pages[i].slot * c.a.slot_bytes;
		req[i].fill = c.pages[i].fill;
		req[i].len = (uint32_t)c.a.slot_bytes;
	}
	moved = hbm_load(h, req, c.npages, pages, NULL);
	ck_assert_int_eq(moved, (int)c.npages);
	for (i = 0; i < c.npages; i++) {
		ck_assert_uint_eq(pages[i].skip, 0);
		pages[i].skip =
			c.pages[i].skip; /* the rows the case leaves out (NaN in the slot) */
	}
	qb = (size_t)c.a.hq * c.a.d * 2;
	ck_assert_int_eq(kern_dev_alloc(qb, &dq), 0);
	ck_assert_int_eq(kern_dev_alloc(qb, &dout), 0);
	ck_assert_int_eq(kern_dev_alloc(c.npages * sizeof(*pages) + (c.a.hkv + 1) * 4, &dtab), 0);
	ck_assert_int_eq(kern_memcpy(dq, c.q, qb), 0);
	ck_assert_int_eq(kern_memcpy(dtab, pages, c.npages * sizeof(*pages)), 0);
	ck_assert_int_eq(
		kern_memcpy((struct kern_page *)dtab + c.npages, c.head_off, (c.a.hkv + 1) * 4), 0);
	ck_assert_int_eq(kern_memset(dout, 0xff, qb), 0);
	a = c.a;
	a.q = dq;
	a.out = dout;
	a.pool = hbm_pool(h);
	a.nslots = hbm_nslots(h);
	a.pages = dtab;
	a.head_off = (const uint32_t *)((struct kern_page *)dtab + c.npages);
	if (kern_attn_ws_size(&a))
		ck_assert_int_eq(kern_dev_alloc(kern_attn_ws_size(&a), &ws), 0);
	if (ws)
		ck_assert_int_eq(kern_memset(ws, 0, kern_attn_ws_size(&a)), 0);
	ck_assert_int_eq(kern_attn(&a, ws, NULL), 0);
	ck_assert_int_eq(hbm_sync(h, NULL), 0);
	hbm_release(h, pages, c.npages);
	got = malloc(qb);
	want = calloc((size_t)c.a.hq * c.a.d, sizeof(double));
	ck_assert(got && want);
	ck_assert_int_eq(kern_memcpy(got, dout, qb), 0);
	ck_assert_int_eq(kern_ref_attn(&c.a), 0);
	for (i = 0; i < (size_t)c.a.hq * c.a.d; i++)
		want[i] = dtype_load_f32(c.out, ICE_DTYPE_BF16, i);
	err = rel_err_dt(got, ICE_DTYPE_BF16, want, (size_t)c.a.hq * c.a.d);
	ck_assert_msg(err <= 1e-2, "rel err %g", err);
	free(want);
	free(got);
	kern_dev_free(ws);
	kern_dev_free(dtab);
	kern_dev_free(dout);
	kern_dev_free(dq);
	kern_host_free(dram);
	hbm_close(h);
	attn_case_free(&c);
}
END_TEST

/* Second process: opens the exported pool and prints the hash of slot `slot`. */
static int export_child(const char *hex, const char *slot_s)
{
	struct kern_ipc_handle hd;
	static unsigned char buf[SLOT];
	unsigned long slot = strtoul(slot_s, NULL, 10);
	void *p;
	size_t i;

	if (strlen(hex) != 2 * KERN_IPC_HANDLE_BYTES)
		return 2;
	for (i = 0; i < KERN_IPC_HANDLE_BYTES; i++) {
		unsigned v;

		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			return 2;
		hd.bytes[i] = (unsigned char)v;
	}
	if (kern_ipc_open(&hd, &p))
		return 3;
	if (kern_memcpy(buf, (char *)p + slot * SLOT, SLOT))
		return 4;
	printf("%016llx\n", (unsigned long long)fnv1a(buf, SLOT));
	fflush(stdout);
	kern_ipc_close(p);
	return 0;
}

START_TEST(hbm_export_reads_in_place_elsewhere)
{
	struct rig g;
	struct hbm_req req;
	struct kern_page page;
	struct kern_ipc_handle hd;
	char hex[2 * KERN_IPC_HANDLE_BYTES + 1], slots[16], line[64];
	char *argv[5];
	size_t i;

	rig_open(&g, fresh_seed());
	memset(&req, 0, sizeof(req));
	req.key.seq = 3;
	req.key.page = 77;
	req.version = 1;
	req.src = g.dram_dev + 77ull * SLOT;
	req.fill = 16;
	req.len = SLOT;
	ck_assert_int_eq(hbm_load(g.h, &req, 1, &page, g.stream), 1);
	ck_assert_int_eq(hbm_sync(g.h, g.stream), 0);
	ck_assert_int_eq(hbm_export(g.h, &hd), 0);
	for (i = 0; i < KERN_IPC_HANDLE_BYTES; i++)
		sprintf(hex + 2 * i, "%02x", hd.bytes[i]);
	snprintf(slots, sizeof(slots), "%u", page.slot);
	argv[0] = (char *)"test_hbm_gpu";
	argv[1] = (char *)"--export-child";
	argv[2] = hex;
	argv[3] = slots;
	argv[4] = NULL;
	ck_assert_int_eq(spawn_self(argv, line, sizeof(line)), 0);
	ck_assert_uint_eq(strtoull(line, NULL, 16), fnv1a(g.dram + 77 * SLOT, SLOT));
	hbm_release(g.h, &page, 1);
	rig_close(&g);
}
END_TEST

/* Second process: a gather from an address nothing maps faults the GPU; the cache must say so
 * and refuse further work without touching the device. Prints "failed <rc...>". */
static int fault_child(void)
{
	struct hbm_config cfg = { 0, NSLOTS, SLOT, 128 };
	struct hbm_req req;
	struct kern_page page;
	static unsigned char buf[SLOT];
	struct hbm *h;
	void *stream;
	int r, r1, r2, r3, r4;

	r = hbm_open(&cfg, &h);
	if (r) {
		printf("setup hbm_open %d\n", r);
		return 0;
	}
	r = kern_stream_new(&stream);
	if (r) {
		printf("setup stream %d\n", r);
		return 0;
	}
	memset(&req, 0, sizeof(req));
	req.version = 1;
	req.src = 0x10000; /* never mapped on the device */
	req.fill = 16;
	req.len = SLOT;
	r1 = hbm_load(h, &req, 1, &page, stream);
	r2 = hbm_sync(h, stream);
	req.key.page = 1;
	req.src = 0x20000;
	r3 = hbm_load(h, &req, 1, &page, stream);
	r4 = hbm_read_slot(h, 0, buf, SLOT);
	printf("failed %d %d %d %d %d\n", hbm_failed(h), r1 >= 0 ? 0 : r1, r2, r3, r4);
	fflush(stdout);
	/* No cleanup: the context is lost, and process exit releases it. */
	return 0;
}

START_TEST(hbm_gpu_fault_marks_cache_failed)
{
	char *argv[] = { (char *)"test_hbm_gpu", (char *)"--fault-child", NULL };
	char line[128];
	int failed = -1, r1 = 1, r2 = 1, r3 = 1, r4 = 1;

	ck_assert_int_eq(spawn_self(argv, line, sizeof(line)), 0);
	ck_assert_msg(sscanf(line, "failed %d %d %d %d %d", &failed, &r1, &r2, &r3, &r4) == 5,
		      "child said: %s", line);
	ck_assert_int_eq(failed, 1);
	ck_assert(r1 == 0 || r1 == -EIO); /* the fault may surface at launch or at the sync */
	ck_assert_int_eq(r1 == 0 ? r2 : -EIO, -EIO);
	ck_assert_int_eq(r3, -EIO);
	ck_assert_int_eq(r4, -EIO);
}
END_TEST

/* ICE_GPU_SKIP="ipc fault": leave cases out (the sanitizer runs; see kernels/gpu-run.sh). */
/* Single slots (hbm_write_slot / hbm_read_slot, for checks and tools) round-trip byte for byte;
 * a slot out of range is -EINVAL; a fresh pool is not failed. */
START_TEST(hbm_slots_round_trip)
{
	struct hbm_config cfg = { .nslots = 32, .slot_bytes = SLOT };
	static unsigned char a[3][SLOT], b[3][SLOT];
	struct hbm *h;
	char text[4096];
	struct stats_buf sb;
	uint64_t v, s = fresh_seed();
	int i;

	ck_assert_int_eq(hbm_open(&cfg, &h), 0);
	ck_assert_uint_eq(hbm_nslots(h), 32);
	for (i = 0; i < 3; i++) {
		for (size_t k = 0; k < SLOT; k++)
			a[i][k] = (unsigned char)case_rand(&s);
		ck_assert_int_eq(hbm_write_slot(h, (uint32_t)(i * 13), a[i], SLOT), 0);
	}
	for (i = 0; i < 3; i++)
		ck_assert_int_eq(hbm_read_slot(h, (uint32_t)(i * 13), b[i], SLOT), 0);
	ck_assert_int_eq(memcmp(a, b, sizeof(a)), 0);
	ck_assert_int_eq(hbm_read_slot(h, 32, b[0], SLOT), -EINVAL);
	stats_buf_init(&sb, text, sizeof(text));
	hbm_stats(h, &sb, "hbm");
	ck_assert_int_eq(stats_find_u64(text, "hbm.failed", &v), 0);
	ck_assert_uint_eq(v, 0);
	hbm_close(h);
}
END_TEST

static Suite *hbm_suite(void)
{
	Suite *s = suite_create("hbm_gpu");
	TCase *tc = tcase_create("hbm");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, hbm_load_moves_only_what_changed);
	tcase_add_test(tc, hbm_working_set_feeds_attention);
	tcase_add_test(tc, hbm_slots_round_trip);
	suite_add_tcase(s, tc);
	if (!check_case_skipped("ipc")) { /* initcheck cannot see the other process's writes */
		tc = tcase_create("ipc");
		tcase_set_timeout(tc, 60);
		tcase_add_test(tc, hbm_export_reads_in_place_elsewhere);
		suite_add_tcase(s, tc);
	}
	if (!check_case_skipped(
		    "fault")) { /* a deliberate illegal access: left out under memcheck */
		tc = tcase_create("fault");
		tcase_set_timeout(tc, 60);
		tcase_add_test(tc, hbm_gpu_fault_marks_cache_failed);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(int argc, char **argv)
{
	Suite *suites[2];

	if (argc == 4 && !strcmp(argv[1], "--export-child"))
		return export_child(argv[2], argv[3]);
	if (argc == 2 && !strcmp(argv[1], "--fault-child"))
		return fault_child();
	if (kern_gpu_count() < 0)
		check_skip("no CUDA device (or built without CUDA)");
	suites[0] = hbm_suite();
	suites[1] = NULL;
	return check_run_suites_fork(suites, CK_NOFORK); /* CUDA does not survive a fork */
}
