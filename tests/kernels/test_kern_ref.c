/* Unit tests for the CPU side of kernels/: the references that define what the CUDA kernels
 * compute (checked against independent, plainer computations). The dtype conversions they use
 * are tested with runtime/common (tests/common). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn_case.h"
#include "check_main.h"
#include "kern.h"
#include "ksel.h"

/* Gather moves exactly the listed pages, byte for byte, and nothing else. */
START_TEST(gather_ref_moves_listed_pages)
{
	enum { NSRC = 64, NDST = 40, N = 25, BYTES = 4096 };
	unsigned char *src = aligned_alloc(64, (size_t)NSRC * BYTES);
	unsigned char *dst = aligned_alloc(64, (size_t)NDST * BYTES);
	unsigned char *want = malloc((size_t)NDST * BYTES);
	struct kern_copy cp[N];
	uint64_t s = 99 + (uint64_t)_i;
	uint32_t i, used[NDST] = { 0 };

	ck_assert(src && dst && want);
	for (i = 0; i < (size_t)NSRC * BYTES; i++)
		src[i] = (unsigned char)case_rand(&s);
	memset(dst, 0xa5, (size_t)NDST * BYTES);
	memset(want, 0xa5, (size_t)NDST * BYTES);
	for (i = 0; i < N; i++) {
		uint32_t si = (uint32_t)(case_rand(&s) % NSRC), di;

		do
			di = (uint32_t)(case_rand(&s) % NDST);
		while (used[di]);
		used[di] = 1;
		cp[i].src = (uint64_t)(uintptr_t)(src + (size_t)si * BYTES);
		cp[i].dst = (uint64_t)(uintptr_t)(dst + (size_t)di * BYTES);
		memcpy(want + (size_t)di * BYTES, src + (size_t)si * BYTES, BYTES);
	}
	ck_assert_int_eq(kern_ref_gather(cp, N, BYTES), 0);
	ck_assert_int_eq(memcmp(dst, want, (size_t)NDST * BYTES), 0);

	ck_assert_int_eq(kern_ref_gather(cp, N, 100), -EINVAL);
	ck_assert_int_eq(kern_ref_gather(NULL, 3, BYTES), -EINVAL);
	cp[3].src += 8;
	ck_assert_int_eq(kern_ref_gather(cp, N, BYTES), -EINVAL);
	cp[3].src = 0;
	ck_assert_int_eq(kern_ref_gather(cp, N, BYTES), -EINVAL);
	ck_assert_int_eq(kern_ref_gather(cp, 0, BYTES), 0);
	free(src);
	free(dst);
	free(want);
}
END_TEST

struct shape {
	enum ice_dtype dt;
	uint32_t hq, hkv, d, P, max_pages;
	double tol;
};

/*
 * The paged reference equals plain dense softmax attention over the same tokens, for every
 * dtype, GQA group size, page fill pattern and empty head; run twice per shape, the second
 * time with rest terms, which join as one more token of their log weight and value (and
 * change the answer: without them the output differs). The empty head's queries get zeros,
 * or with a rest term its value.
 */
static const struct shape ref_shapes[] = {
	{ ICE_DTYPE_F32, 32, 8, 128, 16, 16, 1e-6 }, { ICE_DTYPE_BF16, 32, 8, 128, 16, 16, 1e-2 },
	{ ICE_DTYPE_F16, 9, 3, 64, 16, 12, 1e-3 },   { ICE_DTYPE_F32, 4, 4, 64, 8, 30, 1e-6 },
	{ ICE_DTYPE_BF16, 16, 2, 64, 16, 40, 1e-2 }, { ICE_DTYPE_F32, 6, 1, 32, 4, 5, 1e-6 },
};
#define NSHAPES ((int)(sizeof(ref_shapes) / sizeof(ref_shapes[0])))

START_TEST(attn_ref_matches_dense_softmax)
{
	const struct shape *sh = &ref_shapes[_i % NSHAPES];
	int rest = _i >= NSHAPES;
	struct attn_case c;
	double *want;
	double err;

	ck_assert_int_eq(attn_case_init(&c, sh->dt, sh->hq, sh->hkv, sh->d, sh->P, sh->max_pages,
					sh->hkv > 1 ? 1 : 99, 7, 3.0f, 1000 + (uint64_t)_i),
			 0);
	if (rest)
		ck_assert_int_eq(attn_case_add_rest(&c, 77 + (uint64_t)_i), 0);
	want = calloc((size_t)sh->hq * sh->d, sizeof(double));
	ck_assert_ptr_nonnull(want);
	memset(c.out, 0xff, (size_t)sh->hq * sh->d * dtype_size(sh->dt));
	ck_assert_int_eq(kern_ref_attn(&c.a), 0);
	attn_case_naive(&c, want);
	err = rel_err_dt(c.out, sh->dt, want, (size_t)sh->hq * sh->d);
	ck_assert_msg(err <= sh->tol, "%s rel err %g > %g", dtype_name(sh->dt), err, sh->tol);
	if (!rest && sh->hkv > 1) {
		/* The empty head's queries get zeros (written, not left poisoned). */
		uint32_t g = sh->hq / sh->hkv, i;

		for (i = 0; i < g * sh->d; i++)
			ck_assert_float_eq(dtype_load_f32(c.out, sh->dt, (size_t)g * sh->d + i),
					   0.0f);
	}
	if (rest) {
		c.a.rest = NULL;
		ck_assert_int_eq(kern_ref_attn(&c.a), 0);
		ck_assert(rel_err_dt(c.out, sh->dt, want, (size_t)sh->hq * sh->d) > 10 * sh->tol);
	}
	free(want);
	attn_case_free(&c);
}
END_TEST

START_TEST(attn_ref_rejects_bad_tables)
{
	struct attn_case c;
	struct kern_attn_args a;

	ck_assert_int_eq(attn_case_init(&c, ICE_DTYPE_BF16, 8, 2, 64, 16, 4, 99, 0, 1.0f, 5), 0);
	a = c.a;
	ck_assert_int_eq(kern_attn_check(&a), 0);
	c.pages[0].fill = 17;
	ck_assert_int_eq(kern_ref_attn(&a), -EINVAL);
	c.pages[0].fill = 16;
	c.pages[1].slot = a.nslots;
	ck_assert_int_eq(kern_ref_attn(&a), -EINVAL);
	c.pages[1].slot = 0;
	a.hq = 7;
	ck_assert_int_eq(kern_ref_attn(&a), -EINVAL);
	a = c.a;
	a.slot_bytes = 100;
	ck_assert_int_eq(kern_ref_attn(&a), -EINVAL);
	a = c.a;
	a.d = 60;
	ck_assert_int_eq(kern_ref_attn(&a), -EINVAL);
	a = c.a;
	a.pool = NULL;
	ck_assert_int_eq(kern_ref_attn(&a), -EINVAL);
	a = c.a;
	a.dtype = (enum ice_dtype)7;
	ck_assert_int_eq(kern_ref_attn(&a), -EINVAL);
	ck_assert_int_eq(kern_ref_attn(NULL), -EINVAL);
	a = c.a;
	c.head_off[1] = c.head_off[2] + 1;
	ck_assert_int_eq(kern_ref_attn(&a), -EINVAL);
	attn_case_free(&c);
}
END_TEST

/* Without a GPU build or device, the GPU entry points say so instead of crashing. */
/* The select reference: summaries bound their page's keys (lo * scale <= k <= hi * scale), and
 * a page holding a key aligned with the query is kept first, whole. */
START_TEST(sel_ref_finds_planted_page)
{
	enum { D = 64, NP = 200, HQ = 4 };
	uint32_t slot_of[NP], ids[4], i, c, t;
	uint16_t masks[4], *pool = calloc((size_t)NP * 16 * D, 2);
	unsigned char *sums = calloc(NP, kern_sel_rec_bytes(D));
	struct kern_sel_upd upd[NP];
	struct kern_sel_keys k = { ICE_DTYPE_BF16, D, 16, pool, 16 * D * 2, slot_of, NP };
	struct kern_sel_args a = { 0 };
	float q[HQ * D];
	uint64_t s = 7;

	ck_assert(pool && sums);
	for (i = 0; i < NP; i++) {
		slot_of[i] = NP - 1 - i;
		upd[i] = (struct kern_sel_upd){ 0, i, i % 7 ? 16 : 9, 0 };
	}
	for (i = 0; i < HQ * D; i++)
		q[i] = (float)(case_rand(&s) % 2001) / 1000.0f - 1.0f;
	for (i = 0; i < (uint32_t)NP * 16 * D; i++)
		pool[i] = dtype_f32_to_bf16((float)(case_rand(&s) % 2001) / 1000.0f - 1.0f);
	/* page 77 (slot NP - 78), row 3: 4 x query 2 */
	for (c = 0; c < D; c++)
		pool[((size_t)(NP - 78) * 16 + 3) * D + c] = dtype_f32_to_bf16(4.0f * q[2 * D + c]);
	ck_assert_int_eq(kern_ref_sel_sum(&k, upd, NP, sums), 0);
	for (i = 0; i < NP; i++) {
		const struct kern_sel_hdr *h =
			(const void *)(sums + (size_t)i * kern_sel_rec_bytes(D));
		const signed char *lo = (const signed char *)h + KERN_SEL_HDR, *hi = lo + D;

		ck_assert_uint_eq(h->fill, upd[i].fill);
		for (t = 0; t < h->fill; t++)
			for (c = 0; c < D; c++) {
				float v = dtype_bf16_to_f32(
					pool[((size_t)slot_of[i] * 16 + t) * D + c]);

				ck_assert(v >= lo[c] * h->scale * 1.0001f - 1e-6f);
				ck_assert(v <= hi[c] * h->scale * 1.0001f + 1e-6f);
			}
	}
	a.keys = k;
	a.hq = HQ;
	a.hkv = 1;
	a.attn_scale = 0.125f;
	a.q = q;
	a.sums = sums;
	a.npages = NP;
	a.cand = 16;
	a.keep = 2;
	a.ids = ids;
	a.masks = masks;
	ck_assert_int_eq(kern_ref_sel(&a, NULL), 0);
	ck_assert_uint_eq(ids[0], 77);
	ck_assert_uint_eq(masks[0], 0x1ff); /* page 77 holds 9 rows */
	a.rows = 8;                         /* token pick: row 3 of page 77 is the best token */
	a.keep = 4;
	ck_assert_int_eq(kern_ref_sel(&a, NULL), 0);
	ck_assert_uint_eq(ids[0] == 77 || ids[1] == 77, 1);
	a.keep = 17;
	ck_assert_int_eq(kern_ref_sel(&a, NULL), -EINVAL);
	free(sums);
	free(pool);
}
END_TEST

START_TEST(gpu_calls_fail_cleanly_without_device)
{
	static unsigned char a[64] __attribute__((aligned(16))), b[64] __attribute__((aligned(16)));
	struct kern_copy cp = { (uint64_t)(uintptr_t)a, (uint64_t)(uintptr_t)b };
	struct kern_ipc_handle h = { { 0 } };
	void *p = NULL;

	if (kern_gpu_count() > 0)
		return; /* a GPU is here: the gpu suite covers these */
	ck_assert_int_eq(kern_dev_alloc(4096, &p), -ENODEV);
	ck_assert_ptr_null(p);
	ck_assert_int_eq(kern_gather(&cp, 1, 64, NULL), -ENODEV);
	ck_assert_int_eq(kern_stream_sync(NULL), -ENODEV);
	ck_assert_int_eq(kern_ipc_open(&h, &p), -ENODEV);
	ck_assert_ptr_null(p);
}
END_TEST

/* The split workspace is only needed, and sized, when a head's pages span several blocks. */
START_TEST(attn_ws_size_follows_split)
{
	struct attn_case c;

	ck_assert_int_eq(attn_case_init(&c, ICE_DTYPE_BF16, 32, 8, 128, 16, 2, 99, 0, 1.0f, 5), 0);
	ck_assert_uint_eq(kern_attn_ws_size(&c.a), 0);
	c.a.max_pages = 16384;
	ck_assert_uint_gt(kern_attn_ws_size(&c.a), 0);
	ck_assert_uint_eq((kern_attn_ws_size(&c.a) - 8 * 4) % (8 * 4 * (128 + 2) * 4), 0);
	c.a.hq = 3;
	ck_assert_uint_eq(kern_attn_ws_size(&c.a), 0);
	attn_case_free(&c);
}
END_TEST

static Suite *kern_suite(void)
{
	Suite *s = suite_create("kern_ref");
	TCase *tc = tcase_create("ref");

	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, gather_ref_moves_listed_pages, 0, 3);
	tcase_add_loop_test(tc, attn_ref_matches_dense_softmax, 0, 2 * NSHAPES);
	tcase_add_test(tc, attn_ref_rejects_bad_tables);
	tcase_add_test(tc, gpu_calls_fail_cleanly_without_device);
	tcase_add_test(tc, attn_ws_size_follows_split);
	tcase_add_test(tc, sel_ref_finds_planted_page);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	Suite *suites[] = { kern_suite(), NULL };

	return check_run_suites(suites);
}
