/*
 * GPU tests for kernels/ (suite gpu): each CUDA kernel against its CPU reference on fresh
 * random inputs at several sizes, and CUDA IPC export read from a second process. Exits 77
 * when no device is usable. The tests run unforked: CUDA must not be used in a forked child (the
 * IPC test starts its second process with posix_spawn, i.e. a fresh exec).
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
#include "kern.h"

extern char **environ;

static uint64_t fresh_seed(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid();
}

/* ICE_GPU_QUICK=1 (under the slower sanitizer tools) keeps to the small shapes. */
static int quick(void)
{
	const char *q = getenv("ICE_GPU_QUICK");

	return q && *q == '1';
}

/* Pages from mapped pinned host memory and from device memory, in one launch, land byte for
 * byte where kern_ref_gather puts them; untouched destination bytes stay untouched. */
struct gather_shape {
	uint32_t n;
	size_t bytes;
};

static const struct gather_shape gather_shapes[] = {
	{ 1, 16 }, { 7, 8192 },    { 128, 8192 }, { 1000, 32768 },
	{ 3, 48 }, { 4096, 8192 }, { 240, 4096 },
};

START_TEST(gather_matches_ref)
{
	const struct gather_shape *sh = &gather_shapes[_i];
	uint32_t nsrc = sh->n * 2 + 3, ndst = sh->n + 5, i;
	size_t sb = (size_t)nsrc * sh->bytes, db = (size_t)ndst * sh->bytes;
	unsigned char *hsrc, *dsrc, *ddst, *mirror, *back, *mirror_dsrc;
	struct kern_copy *cp, *ref;
	uint64_t hsrc_dev, cp_dev, s = fresh_seed();
	uint32_t *perm;

	if (quick() && sh->n > 128)
		return;
	ck_assert_int_eq(kern_host_alloc(sb, (void **)&hsrc, &hsrc_dev), 0);
	ck_assert_int_eq(kern_host_alloc((size_t)sh->n * sizeof(*cp), (void **)&cp, &cp_dev), 0);
	ck_assert_int_eq(kern_dev_alloc(sb, (void **)&dsrc), 0);
	ck_assert_int_eq(kern_dev_alloc(db, (void **)&ddst), 0);
	mirror = malloc(db);
	back = malloc(db);
	mirror_dsrc = malloc(sb);
	ref = calloc(sh->n, sizeof(*ref));
	perm = calloc(ndst, sizeof(*perm));
	ck_assert(mirror && back && mirror_dsrc && ref && perm);
	for (i = 0; i < sb; i++) {
		hsrc[i] = (unsigned char)case_rand(&s);
		mirror_dsrc[i] = (unsigned char)case_rand(&s);
	}
	ck_assert_int_eq(kern_memcpy(dsrc, mirror_dsrc, sb), 0);
	ck_assert_int_eq(kern_memset(ddst, 0x5a, db), 0);
	memset(mirror, 0x5a, db);
	for (i = 0; i < ndst; i++)
		perm[i] = i;
	for (i = ndst; i > 1; i--) {
		uint32_t j = (uint32_t)(case_rand(&s) % i), t = perm[i - 1];

		perm[i - 1] = perm[j];
		perm[j] = t;
	}
	for (i = 0; i < sh->n; i++) {
		uint32_t si = (uint32_t)(case_rand(&s) % nsrc);
		size_t so = (size_t)si * sh->bytes, dof = (size_t)perm[i] * sh->bytes;
		int from_dev = (int)(case_rand(&s) % 4 == 0);

		cp[i].src = from_dev ? (uint64_t)(uintptr_t)(dsrc + so) : hsrc_dev + so;
		cp[i].dst = (uint64_t)(uintptr_t)(ddst + dof);
		ref[i].src = (uint64_t)(uintptr_t)((from_dev ? mirror_dsrc : hsrc) + so);
		ref[i].dst = (uint64_t)(uintptr_t)(mirror + dof);
	}
	ck_assert_int_eq(kern_gather((const struct kern_copy *)(uintptr_t)cp_dev, sh->n, sh->bytes,
				     NULL),
			 0);
	ck_assert_int_eq(kern_gpu_check(), 0);
	ck_assert_int_eq(kern_ref_gather(ref, sh->n, sh->bytes), 0);
	ck_assert_int_eq(kern_memcpy(back, ddst, db), 0);
	ck_assert_int_eq(memcmp(back, mirror, db), 0);

	ck_assert_int_eq(kern_gather((const struct kern_copy *)(uintptr_t)cp_dev, sh->n, 40, NULL),
			 -EINVAL);

	/* The inline variant (list in the launch) moves the same bytes. */
	if (sh->n <= KERN_GATHER_INLINE_MAX) {
		ck_assert_int_eq(kern_memset(ddst, 0x77, db), 0);
		ck_assert_int_eq(kern_gather_inline(cp, sh->n, sh->bytes, NULL), 0);
		ck_assert_int_eq(kern_gpu_check(), 0);
		ck_assert_int_eq(kern_memcpy(back, ddst, db), 0);
		for (i = 0; i < ndst; i++) {
			const unsigned char *b = back + (size_t)i * sh->bytes;
			const unsigned char *w = mirror + (size_t)i * sh->bytes;
			int written = 0;

			for (uint32_t k = 0; k < sh->n; k++)
				written |= perm[k] == i;
			if (written)
				ck_assert_int_eq(memcmp(b, w, sh->bytes), 0);
			else
				ck_assert(b[0] == 0x77 && b[sh->bytes - 1] == 0x77);
		}
	} else {
		ck_assert_int_eq(kern_gather_inline(cp, sh->n, sh->bytes, NULL), -EINVAL);
	}
	free(perm);
	free(ref);
	free(mirror_dsrc);
	free(back);
	free(mirror);
	kern_dev_free(ddst);
	kern_dev_free(dsrc);
	kern_host_free(cp);
	kern_host_free(hsrc);
}
END_TEST

struct attn_shape {
	enum ice_dtype dt;
	uint32_t hq, hkv, d, P, max_pages;
};

/* Budget-sized tables (one block per head or a few), and long ones that take the split +
 * combine path; every dtype, d 64 and 128, GQA groups 1 to 8, odd groups (3) and P != 16. */
static const struct attn_shape attn_shapes[] = {
	{ ICE_DTYPE_BF16, 32, 8, 128, 16, 16 }, { ICE_DTYPE_BF16, 32, 8, 128, 16, 2048 },
	{ ICE_DTYPE_F16, 9, 3, 64, 16, 12 },    { ICE_DTYPE_F32, 32, 8, 128, 16, 16 },
	{ ICE_DTYPE_F32, 4, 4, 64, 16, 300 },   { ICE_DTYPE_BF16, 16, 2, 64, 16, 40 },
	{ ICE_DTYPE_F32, 8, 1, 128, 16, 1000 }, { ICE_DTYPE_F16, 32, 8, 128, 16, 257 },
	{ ICE_DTYPE_BF16, 6, 2, 128, 8, 3 },    { ICE_DTYPE_F32, 24, 8, 64, 32, 70 },
};

static double attn_tol(enum ice_dtype dt)
{
	return dt == ICE_DTYPE_F32 ? 1e-5 : 1e-2;
}

START_TEST(attn_matches_ref)
{
	const struct attn_shape *sh = &attn_shapes[_i];
	size_t es = dtype_size(sh->dt), qb = (size_t)sh->hq * sh->d * es, pb, ws_bytes;
	struct attn_case c;
	struct kern_attn_args a;
	void *dpool, *dq, *dout, *dpages, *doff, *ws = NULL, *drest = NULL;
	double *want;
	void *got;
	double err;
	int rep;

	if (quick() && sh->max_pages > 64)
		return;
	for (rep = 0; rep < 2; rep++) {
		uint64_t seed = fresh_seed() + (uint64_t)rep;

		ck_assert_int_eq(attn_case_init(&c, sh->dt, sh->hq, sh->hkv, sh->d, sh->P,
						sh->max_pages, rep ? sh->hkv - 1 : 99, 11, 3.0f,
						seed),
				 0);
		if (rep) /* the second case also joins rest terms (ice_select_rest) */
			ck_assert_int_eq(attn_case_add_rest(&c, seed ^ 0x77), 0);
		pb = (size_t)c.a.nslots * c.a.slot_bytes;
		ck_assert_int_eq(kern_dev_alloc(pb, &dpool), 0);
		ck_assert_int_eq(kern_dev_alloc(qb, &dq), 0);
		ck_assert_int_eq(kern_dev_alloc(qb, &dout), 0);
		ck_assert_int_eq(kern_dev_alloc((c.npages + 1) * sizeof(struct kern_page), &dpages),
				 0);
		ck_assert_int_eq(kern_dev_alloc((sh->hkv + 1) * sizeof(uint32_t), &doff), 0);
		ck_assert_int_eq(kern_memcpy(dpool, c.pool, pb), 0);
		ck_assert_int_eq(kern_memcpy(dq, c.q, qb), 0);
		ck_assert_int_eq(
			kern_memcpy(dpages, c.pages, (c.npages + 1) * sizeof(struct kern_page)), 0);
		ck_assert_int_eq(kern_memcpy(doff, c.head_off, (sh->hkv + 1) * sizeof(uint32_t)),
				 0);
		ck_assert_int_eq(kern_memset(dout, 0xff, qb), 0); /* NaN in every dtype */
		a = c.a;
		a.q = dq;
		a.out = dout;
		a.pool = dpool;
		a.pages = dpages;
		a.head_off = doff;
		if (c.rest) {
			size_t rb = (size_t)sh->hq * (sh->d + 1) * sizeof(float);

			ck_assert_int_eq(kern_dev_alloc(rb, &drest), 0);
			ck_assert_int_eq(kern_memcpy(drest, c.rest, rb), 0);
			a.rest = drest;
		}
		ws_bytes = kern_attn_ws_size(&a);
		if (ws_bytes)
			ck_assert_int_eq(kern_dev_alloc(ws_bytes, &ws), 0);
		if (ws_bytes)
			ck_assert_int_eq(kern_memset(ws, 0, ws_bytes), 0);
		/* Twice on one workspace: the split's arrival counters must be left at zero. */
		ck_assert_int_eq(kern_attn(&a, ws, NULL), 0);
		ck_assert_int_eq(kern_memset(dout, 0xff, qb), 0);
		ck_assert_int_eq(kern_attn(&a, ws, NULL), 0);
		ck_assert_int_eq(kern_gpu_check(), 0);
		got = malloc(qb);
		want = calloc((size_t)sh->hq * sh->d, sizeof(double));
		ck_assert(got && want);
		ck_assert_int_eq(kern_memcpy(got, dout, qb), 0);
		ck_assert_int_eq(kern_ref_attn(&c.a), 0);
		for (size_t i = 0; i < (size_t)sh->hq * sh->d; i++)
			want[i] = dtype_load_f32(c.out, sh->dt, i);
		err = rel_err_dt(got, sh->dt, want, (size_t)sh->hq * sh->d);
		ck_assert_msg(err <= attn_tol(sh->dt), "%s hq %u hkv %u d %u pages %u: rel err %g",
			      dtype_name(sh->dt), sh->hq, sh->hkv, sh->d, sh->max_pages, err);
		printf("attn %s hq %u hkv %u d %u P %u pages %u split-ws %zu: rel err %.3g\n",
		       dtype_name(sh->dt), sh->hq, sh->hkv, sh->d, sh->P, sh->max_pages, ws_bytes,
		       err);
		free(want);
		free(got);
		kern_dev_free(ws);
		ws = NULL;
		kern_dev_free(drest);
		drest = NULL;
		kern_dev_free(doff);
		kern_dev_free(dpages);
		kern_dev_free(dout);
		kern_dev_free(dq);
		kern_dev_free(dpool);
		attn_case_free(&c);
	}
}
END_TEST

/*
 * gather -> attend -> gather over the same slots -> attend, enqueued back to back on one
 * stream with no host sync: the kernels overlap through programmatic dependent launch, so this
 * checks that each still waits for the one before it (the second gather must not overwrite
 * slots the first attention is reading, nor the attention read slots before they are filled).
 */
START_TEST(gather_attend_chain_keeps_order)
{
	struct attn_case c;
	struct kern_attn_args a;
	struct kern_copy cp[2][240];
	unsigned char *h1, *h2;
	uint64_t h1_dev, h2_dev;
	size_t pb, qb, n = 0, i;
	void *dpool, *dq, *dout[2], *dtab, *ws = NULL, *got;
	double *want[2], err;
	int rep, k;

	for (rep = 0; rep < 3; rep++) {
		ck_assert_int_eq(attn_case_init(&c, ICE_DTYPE_BF16, 32, 8, 128, 16, 16, 99, 3, 3.0f,
						fresh_seed() + (uint64_t)rep),
				 0);
		pb = (size_t)c.a.nslots * c.a.slot_bytes;
		qb = (size_t)c.a.hq * c.a.d * 2;
		ck_assert_uint_le(c.npages, 240);
		ck_assert_int_eq(kern_host_alloc(pb, (void **)&h1, &h1_dev), 0);
		ck_assert_int_eq(kern_host_alloc(pb, (void **)&h2, &h2_dev), 0);
		for (k = 0; k < 2; k++) {
			want[k] = calloc((size_t)c.a.hq * c.a.d, sizeof(double));
			ck_assert_ptr_nonnull(want[k]);
			ck_assert_int_eq(kern_ref_attn(&c.a), 0);
			for (i = 0; i < (size_t)c.a.hq * c.a.d; i++)
				want[k][i] = dtype_load_f32(c.out, ICE_DTYPE_BF16, i);
			memcpy(k ? h2 : h1, c.pool, pb);
			attn_case_refill(&c, fresh_seed() ^ 0x5555);
		}
		ck_assert_int_eq(kern_dev_alloc(pb, &dpool), 0);
		ck_assert_int_eq(kern_memset(dpool, 0xff, pb), 0);
		ck_assert_int_eq(kern_dev_alloc(qb, &dq), 0);
		ck_assert_int_eq(kern_dev_alloc(qb, &dout[0]), 0);
		ck_assert_int_eq(kern_dev_alloc(qb, &dout[1]), 0);
		ck_assert_int_eq(kern_dev_alloc(c.npages * sizeof(struct kern_page) + 9 * 4, &dtab),
				 0);
		ck_assert_int_eq(kern_memcpy(dq, c.q, qb), 0);
		ck_assert_int_eq(kern_memcpy(dtab, c.pages, c.npages * sizeof(struct kern_page)),
				 0);
		ck_assert_int_eq(
			kern_memcpy((struct kern_page *)dtab + c.npages, c.head_off, 9 * 4), 0);
		n = c.npages;
		for (i = 0; i < n; i++) {
			uint64_t off = (uint64_t)c.pages[i].slot * c.a.slot_bytes;

			cp[0][i].src = h1_dev + off;
			cp[1][i].src = h2_dev + off;
			cp[0][i].dst = cp[1][i].dst = (uint64_t)(uintptr_t)dpool + off;
		}
		a = c.a;
		a.q = dq;
		a.pool = dpool;
		a.pages = dtab;
		a.head_off = (const uint32_t *)((struct kern_page *)dtab + c.npages);
		if (kern_attn_ws_size(&a)) {
			ck_assert_int_eq(kern_dev_alloc(kern_attn_ws_size(&a), &ws), 0);
			ck_assert_int_eq(kern_memset(ws, 0, kern_attn_ws_size(&a)), 0);
		}
		for (k = 0; k < 2; k++) {
			ck_assert_int_eq(
				kern_gather_inline(cp[k], (uint32_t)n, c.a.slot_bytes, NULL), 0);
			a.out = dout[k];
			ck_assert_int_eq(kern_attn(&a, ws, NULL), 0);
		}
		ck_assert_int_eq(kern_gpu_check(), 0);
		got = malloc(qb);
		ck_assert_ptr_nonnull(got);
		for (k = 0; k < 2; k++) {
			ck_assert_int_eq(kern_memcpy(got, dout[k], qb), 0);
			err = rel_err_dt(got, ICE_DTYPE_BF16, want[k], (size_t)c.a.hq * c.a.d);
			ck_assert_msg(err <= 1e-2, "step %d rel err %g", k, err);
			free(want[k]);
		}
		free(got);
		kern_dev_free(ws);
		ws = NULL;
		kern_dev_free(dtab);
		kern_dev_free(dout[1]);
		kern_dev_free(dout[0]);
		kern_dev_free(dq);
		kern_dev_free(dpool);
		kern_host_free(h2);
		kern_host_free(h1);
		attn_case_free(&c);
	}
}
END_TEST

START_TEST(attn_rejects_unsupported_shapes)
{
	struct attn_case c;
	struct kern_attn_args a;

	ck_assert_int_eq(attn_case_init(&c, ICE_DTYPE_BF16, 32, 2, 32, 16, 2, 99, 0, 1.0f, 3), 0);
	a = c.a; /* host pointers, but each call fails its checks before touching them */
	ck_assert_int_eq(kern_attn(&a, NULL, NULL), -EINVAL); /* d 32 */
	a.d = 128;
	a.slot_bytes = 2 * 16 * 128 * 2;
	ck_assert_int_eq(kern_attn(&a, NULL, NULL), -EINVAL); /* group 16 */
	a.hq = 8;
	a.max_pages = 100000;
	ck_assert_int_eq(kern_attn(&a, NULL, NULL), -EINVAL); /* split needs a workspace */
	attn_case_free(&c);
}
END_TEST

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	while (n--) {
		h ^= *p++;
		h *= 0x100000001b3ull;
	}
	return h;
}

static const unsigned char ipc_marker[16] = "written by child";

/* Second process: opens the handle, hashes what it sees, writes a marker at the start. */
static int ipc_child(const char *hex, const char *len_s)
{
	struct kern_ipc_handle h;
	size_t len = strtoull(len_s, NULL, 10), i;
	unsigned char *buf;
	void *p;
	int r;

	if (strlen(hex) != 2 * KERN_IPC_HANDLE_BYTES)
		return 2;
	for (i = 0; i < KERN_IPC_HANDLE_BYTES; i++) {
		unsigned v;

		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			return 2;
		h.bytes[i] = (unsigned char)v;
	}
	buf = malloc(len);
	if (!buf)
		return 3;
	r = kern_ipc_open(&h, &p);
	if (r) {
		fprintf(stderr, "ipc child: open: %s\n", strerror(-r));
		return 4;
	}
	if (kern_memcpy(buf, p, len) || kern_memcpy(p, ipc_marker, sizeof(ipc_marker)))
		return 5;
	printf("%016llx\n", (unsigned long long)fnv1a(buf, len));
	fflush(stdout);
	kern_ipc_close(p);
	free(buf);
	return 0;
}

/* A device buffer exported with CUDA IPC is read and written in place by another process. */
START_TEST(ipc_export_read_by_second_process)
{
	enum { LEN = 1 << 20 };
	unsigned char *host = malloc(LEN), back[16];
	struct kern_ipc_handle h;
	char hex[2 * KERN_IPC_HANDLE_BYTES + 1], lens[32], line[64] = { 0 };
	char *argv[5];
	uint64_t s = fresh_seed();
	posix_spawn_file_actions_t fa;
	int pfd[2], status = -1;
	pid_t pid;
	void *dev;
	FILE *f;
	size_t i;

	ck_assert_ptr_nonnull(host);
	for (i = 0; i < LEN; i++)
		host[i] = (unsigned char)case_rand(&s);
	ck_assert_int_eq(kern_dev_alloc(LEN, &dev), 0);
	ck_assert_int_eq(kern_memcpy(dev, host, LEN), 0);
	ck_assert_int_eq(kern_ipc_export(dev, &h), 0);
	for (i = 0; i < KERN_IPC_HANDLE_BYTES; i++)
		sprintf(hex + 2 * i, "%02x", h.bytes[i]);
	snprintf(lens, sizeof(lens), "%d", LEN);
	argv[0] = (char *)"test_kern_gpu";
	argv[1] = (char *)"--ipc-child";
	argv[2] = hex;
	argv[3] = lens;
	argv[4] = NULL;
	ck_assert_int_eq(pipe(pfd), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
	posix_spawn_file_actions_addclose(&fa, pfd[0]);
	ck_assert_int_eq(posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(pfd[1]);
	f = fdopen(pfd[0], "r");
	ck_assert_ptr_nonnull(f);
	if (!fgets(line, sizeof(line), f))
		line[0] = '\0';
	fclose(f);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
	ck_assert_uint_eq(strtoull(line, NULL, 16), fnv1a(host, LEN));
	ck_assert_int_eq(kern_memcpy(back, dev, sizeof(back)), 0);
	ck_assert_int_eq(memcmp(back, ipc_marker, sizeof(back)), 0);
	kern_dev_free(dev);
	free(host);
}
END_TEST

static Suite *gpu_suite(void)
{
	Suite *s = suite_create("kern_gpu");
	TCase *tc = tcase_create("gpu");

	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, gather_matches_ref, 0,
			    (int)(sizeof(gather_shapes) / sizeof(gather_shapes[0])));
	tcase_add_loop_test(tc, attn_matches_ref, 0,
			    (int)(sizeof(attn_shapes) / sizeof(attn_shapes[0])));
	tcase_add_test(tc, attn_rejects_unsupported_shapes);
	tcase_add_test(tc, gather_attend_chain_keeps_order);
	suite_add_tcase(s, tc);
	/* Own case, so initcheck can leave it out (ICE_GPU_SKIP=ipc): the sanitizer cannot see
	 * that the other process initialised the memory it reads. */
	if (!check_case_skipped("ipc")) {
		tc = tcase_create("ipc");
		tcase_set_timeout(tc, 60);
		tcase_add_test(tc, ipc_export_read_by_second_process);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(int argc, char **argv)
{
	Suite *suites[2];

	if (argc == 4 && !strcmp(argv[1], "--ipc-child"))
		return ipc_child(argv[2], argv[3]);
	if (kern_gpu_count() < 0)
		check_skip("no CUDA device (or built without CUDA)");
	suites[0] = gpu_suite();
	suites[1] = NULL;
	return check_run_suites_fork(suites, CK_NOFORK); /* CUDA does not survive a fork */
}
