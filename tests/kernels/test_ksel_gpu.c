/*
 * GPU tests for the select kernels (kernels/ksel.h, suite gpu): page summaries byte for byte
 * against kern_ref_sel_sum (whole and incremental), and the fused select's page ids, masks,
 * page table and copy list against kern_ref_sel, over shapes with partial, empty and
 * remapped pages. Exits 77 when no device is usable; runs unforked (CUDA and fork).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "attn_case.h"
#include "check_main.h"
#include "kern.h"
#include "ksel.h"

struct sel_shape {
	uint32_t hkv, g, d, npages, pstride, cand, keep;
	enum ice_dtype dt;
	uint32_t rows; /* 0: whole pages */
};

static const struct sel_shape shapes[] = {
	{ 8, 4, 128, 2048, 2048, 32, 14, ICE_DTYPE_BF16 },
	{ 2, 4, 128, 5000, 5003, 64, 32, ICE_DTYPE_BF16 },
	{ 3, 8, 64, 700, 800, 48, 16, ICE_DTYPE_F16 },
	{ 1, 1, 128, 300, 300, 16, 4, ICE_DTYPE_F32 },
	{ 4, 2, 64, 20, 32, 64, 8, ICE_DTYPE_BF16 }, /* fewer pages than candidates */
	{ 2, 4, 128, 0, 16, 8, 4, ICE_DTYPE_BF16 },  /* no pages */
	{ 8, 4, 128, 16384, 16384, 32, 14, ICE_DTYPE_BF16 },
	{ 8, 4, 128, 4096, 4096, 64, 28, ICE_DTYPE_BF16, 224 },
	{ 3, 8, 64, 900, 900, 48, 8, ICE_DTYPE_F16, 40 },
	{ 2, 2, 128, 40, 40, 64, 32, ICE_DTYPE_F32, 1000 }, /* more rows than tokens */
	{ 8, 4, 128, 16384, 16384, 64, 28, ICE_DTYPE_BF16, 224 },
};

static int quick(void)
{
	const char *q = getenv("ICE_GPU_QUICK");

	return q && *q == '1';
}

static float urand(uint64_t *s)
{
	return (float)((case_rand(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

START_TEST(sel_matches_ref)
{
	const struct sel_shape *sh = &shapes[_i];
	uint32_t P = 16, hq = sh->hkv * sh->g, nrec = sh->hkv * sh->pstride, i, c, t, it;
	size_t es = dtype_size(sh->dt), slot_bytes = (size_t)P * sh->d * es * 2;
	size_t rb = kern_sel_rec_bytes(sh->d), nslots = (size_t)nrec + 7;
	uint64_t s = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16) ^ _i;
	unsigned char *pool, *sums, *gsums;
	uint32_t *slot_of, *ids, *gids, *cand;
	uint16_t *masks, *gmasks;
	struct kern_page *tab, *gtab;
	struct kern_copy *cp, *gcp;
	struct kern_sel_upd *upd;
	float *q;
	void *dpool, *dslot, *dsums, *dupd, *dq, *dids, *dmasks, *dtab, *dcp, *dws;
	struct kern_sel_args a, ga;
	size_t ws;

	if (quick() && sh->npages > 4096)
		return;
	pool = calloc(nslots, slot_bytes);
	sums = calloc(nrec, rb);
	gsums = calloc(nrec, rb);
	slot_of = calloc(nrec, sizeof(*slot_of));
	upd = calloc(nrec + 1, sizeof(*upd));
	q = calloc((size_t)hq * sh->d, sizeof(*q));
	ids = calloc(sh->hkv * sh->keep, sizeof(*ids));
	gids = calloc(sh->hkv * sh->keep, sizeof(*gids));
	masks = calloc(sh->hkv * sh->keep, sizeof(*masks));
	gmasks = calloc(sh->hkv * sh->keep, sizeof(*gmasks));
	tab = calloc(sh->hkv * (sh->keep + 2), sizeof(*tab));
	gtab = calloc(sh->hkv * (sh->keep + 2), sizeof(*gtab));
	cp = calloc(sh->hkv * sh->keep, sizeof(*cp));
	gcp = calloc(sh->hkv * sh->keep, sizeof(*gcp));
	cand = calloc(sh->hkv * sh->cand, sizeof(*cand));
	ck_assert(pool && sums && gsums && slot_of && upd && q && ids && gids && masks && gmasks &&
		  tab && gtab && cp && gcp && cand);
	/* Pages in a scrambled slot order; keys around a per-page offset, so that pages differ
	 * as semantic pages do; fills from 0 to P. */
	for (i = 0; i < nrec; i++)
		slot_of[i] = (uint32_t)(((uint64_t)i * 2654435761u + 3) % nslots);
	for (i = 0; i < nrec; i++) {
		uint32_t h = i / sh->pstride, p = i % sh->pstride, fill = 16;
		unsigned char *kp = pool + (size_t)slot_of[i] * slot_bytes;
		float off[512];

		if (case_rand(&s) % 5 == 0)
			fill = (uint32_t)(case_rand(&s) % 17);
		for (c = 0; c < sh->d; c++)
			off[c] = 2.0f * urand(&s);
		for (t = 0; t < fill; t++)
			for (c = 0; c < sh->d; c++)
				dtype_store_f32(kp, sh->dt, (size_t)t * sh->d + c,
						off[c] + 0.5f * urand(&s));
		upd[i] = (struct kern_sel_upd){ h, p, fill, 0 };
	}
	for (i = 0; i < hq * sh->d; i++)
		q[i] = urand(&s);
	ck_assert_int_eq(kern_ref_sel_sum(&(struct kern_sel_keys){ sh->dt, sh->d, P, pool,
								   slot_bytes, slot_of,
								   sh->pstride },
					  upd, nrec, sums),
			 0);

	ck_assert_int_eq(kern_dev_alloc(nslots * slot_bytes, &dpool), 0);
	ck_assert_int_eq(kern_dev_alloc((size_t)nrec * sizeof(*slot_of), &dslot), 0);
	ck_assert_int_eq(kern_dev_alloc((size_t)nrec * rb, &dsums), 0);
	ck_assert_int_eq(kern_dev_alloc((size_t)(nrec + 1) * sizeof(*upd), &dupd), 0);
	ck_assert_int_eq(kern_dev_alloc((size_t)hq * sh->d * sizeof(*q), &dq), 0);
	ck_assert_int_eq(kern_dev_alloc(sh->hkv * sh->keep * sizeof(*ids), &dids), 0);
	ck_assert_int_eq(kern_dev_alloc(sh->hkv * sh->keep * sizeof(*masks), &dmasks), 0);
	ck_assert_int_eq(kern_dev_alloc(sh->hkv * (sh->keep + 2) * sizeof(*tab), &dtab), 0);
	ck_assert_int_eq(kern_dev_alloc(sh->hkv * sh->keep * sizeof(*cp), &dcp), 0);
	ck_assert_int_eq(kern_memcpy(dpool, pool, nslots * slot_bytes), 0);
	ck_assert_int_eq(kern_memcpy(dslot, slot_of, (size_t)nrec * sizeof(*slot_of)), 0);
	ck_assert_int_eq(kern_memcpy(dupd, upd, (size_t)nrec * sizeof(*upd)), 0);
	ck_assert_int_eq(kern_memcpy(dq, q, (size_t)hq * sh->d * sizeof(*q)), 0);
	ck_assert_int_eq(kern_memset(dsums, 0x77, (size_t)nrec * rb), 0);
	ck_assert_int_eq(kern_memset(dtab, 0, sh->hkv * (sh->keep + 2) * sizeof(*tab)), 0);
	memset(tab, 0, sh->hkv * (sh->keep + 2) * sizeof(*tab));

	struct kern_sel_keys gk = { sh->dt, sh->d, P, dpool, slot_bytes, dslot, sh->pstride };

	ck_assert_int_eq(kern_sel_sum(&gk, dupd, nrec, dsums, NULL), 0);
	ck_assert_int_eq(kern_stream_sync(NULL), 0);
	ck_assert_int_eq(kern_memcpy(gsums, dsums, (size_t)nrec * rb), 0);
	ck_assert_msg(!memcmp(gsums, sums, (size_t)nrec * rb), "summaries differ");

	a = (struct kern_sel_args){ 0 };
	a.keys = (struct kern_sel_keys){ sh->dt, sh->d, P, pool, slot_bytes, slot_of, sh->pstride };
	a.hq = hq;
	a.hkv = sh->hkv;
	a.attn_scale = 1.0f / sqrtf((float)sh->d);
	a.q = q;
	a.sums = sums;
	a.npages = sh->npages;
	a.cand = sh->cand;
	a.keep = sh->keep;
	a.rows = sh->rows;
	a.ids = ids;
	a.masks = masks;
	a.table = tab;
	a.tstride = sh->keep + 2;
	a.toff = 1;
	a.tslot = 100;
	a.copies = cp;
	a.src_base = 1u << 20;
	a.dst_base = 1u << 30;
	a.src_bytes = slot_bytes;
	a.dst_bytes = 8192;
	ga = a;
	ga.keys = gk;
	ga.q = dq;
	ga.sums = dsums;
	ga.ids = dids;
	ga.masks = dmasks;
	ga.table = dtab;
	ga.copies = dcp;
	ws = kern_sel_ws_size(&ga);
	ck_assert(ws > 0);
	ck_assert_int_eq(kern_dev_alloc(ws, &dws), 0);
	ck_assert_int_eq(kern_memset(dws, 0, ws), 0);

	/* Twice, with an incremental summary update in between: the workspace stays ready and
	 * the summaries follow the keys. */
	for (it = 0; it < 2; it++) {
		uint32_t bad = 0;

		if (it == 1 && nrec) {
			uint32_t nu = nrec < 9 ? nrec : 9, r0 = (uint32_t)(case_rand(&s) % nrec);

			/* distinct pages: a page is updated at most once per call */
			for (i = 0; i < nu; i++) {
				uint32_t r = (r0 + i * (nrec / nu)) % nrec;
				unsigned char *kp = pool + (size_t)slot_of[r] * slot_bytes;
				uint32_t fill = 1 + (uint32_t)(case_rand(&s) % 16);

				for (t = 0; t < fill; t++)
					for (c = 0; c < sh->d; c++)
						dtype_store_f32(kp, sh->dt, (size_t)t * sh->d + c,
								3.0f * urand(&s));
				ck_assert_int_eq(
					kern_memcpy((unsigned char *)dpool +
							    (size_t)slot_of[r] * slot_bytes,
						    kp, slot_bytes),
					0);
				upd[i] = (struct kern_sel_upd){ r / sh->pstride, r % sh->pstride,
								fill, 0 };
			}
			ck_assert_int_eq(kern_ref_sel_sum(&a.keys, upd, nu, sums), 0);
			ck_assert_int_eq(kern_memcpy(dupd, upd, nu * sizeof(*upd)), 0);
			ck_assert_int_eq(kern_sel_sum(&gk, dupd, nu, dsums, NULL), 0);
			ck_assert_int_eq(kern_stream_sync(NULL), 0);
			ck_assert_int_eq(kern_memcpy(gsums, dsums, (size_t)nrec * rb), 0);
			ck_assert_msg(!memcmp(gsums, sums, (size_t)nrec * rb),
				      "updated summaries differ");
		}
		ck_assert_int_eq(kern_ref_sel(&a, cand), 0);
		ck_assert_int_eq(kern_sel(&ga, dws, NULL), 0);
		ck_assert_int_eq(kern_stream_sync(NULL), 0);
		ck_assert_int_eq(kern_gpu_check(), 0);
		ck_assert_int_eq(kern_memcpy(gids, dids, sh->hkv * sh->keep * sizeof(*ids)), 0);
		ck_assert_int_eq(kern_memcpy(gmasks, dmasks, sh->hkv * sh->keep * sizeof(*masks)),
				 0);
		ck_assert_int_eq(kern_memcpy(gtab, dtab, sh->hkv * (sh->keep + 2) * sizeof(*tab)),
				 0);
		ck_assert_int_eq(kern_memcpy(gcp, dcp, sh->hkv * sh->keep * sizeof(*cp)), 0);
		for (i = 0; i < sh->hkv * sh->keep; i++)
			if (gids[i] != ids[i] || gmasks[i] != masks[i] || gcp[i].src != cp[i].src ||
			    gcp[i].dst != cp[i].dst) {
				if (bad++ < 4)
					fprintf(stderr, "entry %u: gpu %u/%04x ref %u/%04x\n", i,
						gids[i], gmasks[i], ids[i], masks[i]);
			}
		for (i = 0; i < sh->hkv * (sh->keep + 2); i++)
			if (memcmp(&gtab[i], &tab[i], sizeof(*tab)))
				bad++;
		/* Whole pages agree exactly; a token pick may differ where two weights are within
		 * the fp32-vs-fp64 rounding of the exact scores (at most a swap per head). */
		ck_assert_msg(bad <= (sh->rows ? 2 * sh->hkv : 0),
			      "shape %d pass %u: %u entries differ", _i, it, bad);
	}

	kern_dev_free(dws);
	kern_dev_free(dcp);
	kern_dev_free(dtab);
	kern_dev_free(dmasks);
	kern_dev_free(dids);
	kern_dev_free(dq);
	kern_dev_free(dupd);
	kern_dev_free(dsums);
	kern_dev_free(dslot);
	kern_dev_free(dpool);
	free(cand);
	free(gcp);
	free(cp);
	free(gtab);
	free(tab);
	free(gmasks);
	free(masks);
	free(gids);
	free(ids);
	free(q);
	free(upd);
	free(slot_of);
	free(gsums);
	free(sums);
	free(pool);
}
END_TEST

/* The bound bounds: every token's q.k is at most its page's bound, up to the query's int8
 * rounding (checked on the CPU reference, which the GPU matches bit for bit above). */
START_TEST(sel_ref_rejects_bad_args)
{
	struct kern_sel_args a = { 0 };

	ck_assert_int_eq(kern_sel_check(&a), -EINVAL);
	ck_assert_int_eq(kern_sel(&a, NULL, NULL), -EINVAL);
	ck_assert_int_eq(kern_sel_ws_size(&a), 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("ksel_gpu");
	TCase *tc = tcase_create("gpu");
	Suite *suites[2] = { s, NULL };

	if (kern_gpu_count() < 0)
		check_skip("no CUDA device (or built without CUDA)");
	tcase_set_timeout(tc, 240);
	tcase_add_loop_test(tc, sel_matches_ref, 0, (int)(sizeof(shapes) / sizeof(shapes[0])));
	tcase_add_test(tc, sel_ref_rejects_bad_args);
	suite_add_tcase(s, tc);
	return check_run_suites_fork(suites, CK_NOFORK);
}
