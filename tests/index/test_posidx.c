/* Positional baseline and dump-file tests: Quest bounds really bound, exact scan matches a
 * plain reference, appends in odd batch sizes, bad arguments; kvdump round trip, rejects and
 * the file's own dtype codes. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "kvdump.h"
#include "posidx.h"
#include "synth.h"

static float *gen(uint32_t dim, size_t n, uint64_t seed, float **ret_q, size_t nq, uint32_t g)
{
	struct synth_params sp;
	float *k = malloc(n * dim * sizeof(float));

	synth_params_default(&sp, dim);
	sp.seed = seed;
	ck_assert_int_eq(synth_keys(&sp, n, k), 0);
	if (ret_q) {
		*ret_q = malloc(nq * g * dim * sizeof(float));
		ck_assert_int_eq(synth_queries(&sp, k, n, nq, g, *ret_q, NULL), 0);
	}
	return k;
}

START_TEST(bounds_bound_and_exact_matches_reference)
{
	const uint32_t dim = 64, k = 8;
	const size_t n = 1000; /* 62.5 pages: the last one partial */
	float *q, *keys = gen(dim, n, 3, &q, 4, 1);
	struct posidx *px = NULL;
	struct idx_hit bnd[63], ex[8];
	size_t at = 0, ws_size, p, t;
	void *ws;
	uint32_t qi, i;

	ck_assert_int_eq(posidx_new(dim, &px), 0);
	srand(3);
	while (at < n) {
		size_t b = 1 + (size_t)rand() % 40;

		b = b > n - at ? n - at : b;
		ck_assert_int_eq(posidx_append(px, keys + at * dim, b, ICE_DTYPE_F32), 0);
		at += b;
	}
	ck_assert_uint_eq(posidx_npages(px), 63);
	ws_size = posidx_ws_size(px, 1, 63);
	ws = malloc(ws_size);
	for (qi = 0; qi < 4; qi++) {
		const float *qq = q + (size_t)qi * dim;
		float best[63];

		for (p = 0; p < 63; p++) {
			best[p] = -INFINITY;
			for (t = p * 16; t < n && t < p * 16 + 16; t++) {
				float s = 0;
				uint32_t j;

				for (j = 0; j < dim; j++)
					s += qq[j] * keys[t * dim + j];
				best[p] = s > best[p] ? s : best[p];
			}
		}
		/* every page's bound is at least its best true score */
		ck_assert_int_eq(posidx_search(px, qq, 1, 63, ws, ws_size, bnd), 63);
		for (i = 0; i < 63; i++) {
			ck_assert(bnd[i].score >=
				  best[bnd[i].page] - 1e-3f * (fabsf(best[bnd[i].page]) + 1));
			ck_assert_uint_eq(bnd[i].fill, bnd[i].page == 62 ? 8 : 16);
			if (i)
				ck_assert(bnd[i].score <= bnd[i - 1].score);
		}
		ck_assert_int_eq(posidx_exact_search(px, qq, 1, k, ws, ws_size, ex), (int)k);
		for (i = 0; i < k; i++) {
			float m = -INFINITY;

			for (p = 0; p < 63; p++)
				m = best[p] > m ? best[p] : m;
			ck_assert(fabsf(ex[i].score - m) <= 1e-3f * (fabsf(m) + 1));
			for (p = 0; p < 63; p++)
				if (best[p] == m) {
					best[p] = -INFINITY;
					break;
				}
		}
	}
	free(ws);
	posidx_free(px);
	free(keys);
	free(q);
}
END_TEST

START_TEST(group_search_and_bad_arguments)
{
	const uint32_t dim = 32;
	float *q, *keys = gen(dim, 500, 4, &q, 1, 4), nanq[32] = { 0 };
	struct posidx *px = NULL;
	struct idx_hit hits[8];
	char ws[8192];
	uint32_t i, j;

	ck_assert_int_eq(posidx_new(30, &px), -EINVAL);
	ck_assert_int_eq(posidx_new(dim, NULL), -EINVAL);
	ck_assert_int_eq(posidx_new(dim, &px), 0);
	ck_assert_int_eq(posidx_search(px, q, 1, 8, ws, sizeof(ws), hits), 0);
	ck_assert_int_eq(posidx_append(px, NULL, 1, ICE_DTYPE_F32), -EINVAL);
	ck_assert_int_eq(posidx_append(px, keys, 0, ICE_DTYPE_F32), -EINVAL);
	keys[7] = NAN;
	ck_assert_int_eq(posidx_append(px, keys, 2, ICE_DTYPE_F32), -EINVAL);
	ck_assert_uint_eq(posidx_ntokens(px), 0);
	keys[7] = 0;
	ck_assert_int_eq(posidx_append(px, keys, 500, ICE_DTYPE_F32), 0);
	ck_assert_int_eq(posidx_search(px, q, 4, 8, ws, sizeof(ws), hits), 8);
	for (i = 0; i < 8; i++)
		for (j = 0; j < i; j++)
			ck_assert_uint_ne(hits[i].page, hits[j].page);
	ck_assert_int_eq(posidx_search(px, q, 4, 8, ws, 16, hits), -ENOSPC);
	ck_assert_int_eq(posidx_search(px, q, 0, 8, ws, sizeof(ws), hits), -EINVAL);
	ck_assert_int_eq(posidx_search(px, q, 1, 0, ws, sizeof(ws), hits), -EINVAL);
	nanq[0] = NAN;
	ck_assert_int_eq(posidx_exact_search(px, nanq, 1, 8, ws, sizeof(ws), hits), -EINVAL);
	posidx_free(px);
	posidx_free(NULL);
	free(keys);
	free(q);
}
END_TEST

START_TEST(kvdump_round_trip_and_rejects)
{
	char path[] = "/tmp/ice_kvdump_XXXXXX";
	const uint32_t dim = 16;
	float keys[40 * 16], qs[3 * 2 * 16];
	struct kvdump d = { .dim = dim,
			    .group = 2,
			    .nkeys = 40,
			    .ngroups = 3,
			    .layer = 5,
			    .head = 1,
			    .keys = keys,
			    .queries = qs },
		      r;
	enum ice_dtype dt = (enum ice_dtype)_i;
	FILE *f;
	int fd = mkstemp(path);
	size_t i;

	ck_assert_int_ge(fd, 0);
	close(fd);
	for (i = 0; i < 40 * 16; i++)
		keys[i] = (float)((int)(i % 64) - 32) * 0.5f;
	for (i = 0; i < 96; i++)
		qs[i] = (float)((int)i - 48) * -0.25f;
	ck_assert_int_eq(kvdump_write(path, &d, dt), 0);
	ck_assert_int_eq(kvdump_read(path, &r), 0);
	ck_assert_uint_eq(r.dim, dim);
	ck_assert_uint_eq(r.group, 2);
	ck_assert_uint_eq(r.nkeys, 40);
	ck_assert_uint_eq(r.ngroups, 3);
	ck_assert_uint_eq(r.layer, 5);
	for (i = 0; i < 40 * 16; i++) /* these values are exact in all three types */
		ck_assert_float_eq(r.keys[i], keys[i]);
	for (i = 0; i < 96; i++)
		ck_assert_float_eq(r.queries[i], qs[i]);
	kvdump_done(&r);
	/* truncated file */
	ck_assert_int_eq(truncate(path, 100), 0);
	ck_assert_int_eq(kvdump_read(path, &r), -EINVAL);
	/* wrong magic */
	f = fopen(path, "wb");
	ck_assert_ptr_nonnull(f);
	fwrite("NOTADUMPxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 1, 70, f);
	fclose(f);
	ck_assert_int_eq(kvdump_read(path, &r), -EINVAL);
	unlink(path);
	ck_assert_int_eq(kvdump_read(path, &r), -ENOENT);
	ck_assert_int_eq(kvdump_write(path, NULL, ICE_DTYPE_F32), -EINVAL);
}
END_TEST

/* The header's dtype codes are the file format's (0 fp32, 1 bf16, 2 fp16, docs/KVDUMP.md), not
 * enum ice_dtype's order: a dump written by hand with them reads as the right type, and the
 * writer puts them in the header. */
START_TEST(kvdump_dtype_codes_are_the_files)
{
	/* 1.5 and -2.25 as bf16 (0x3fc0, 0xc010) and as fp16 (0x3e00, 0xc080) */
	static const struct {
		uint32_t code;
		uint16_t v[2];
		enum ice_dtype dt;
	} cases[] = {
		{ 1, { 0x3fc0, 0xc010 }, ICE_DTYPE_BF16 },
		{ 2, { 0x3e00, 0xc080 }, ICE_DTYPE_F16 },
	};
	char path[] = "/tmp/ice_kvdump_XXXXXX";
	unsigned char hdr[64];
	uint32_t code, i, dim = 1, group = 1;
	uint64_t nkeys = 2, ngroups = 0;
	float keys[2] = { 1.5f, -2.25f };
	struct kvdump d = { .dim = 1, .group = 1, .nkeys = 2, .keys = keys }, r;
	int fd = mkstemp(path);
	FILE *f;

	ck_assert_int_ge(fd, 0);
	close(fd);
	for (i = 0; i < 2; i++) {
		memset(hdr, 0, sizeof(hdr));
		memcpy(hdr, KVDUMP_MAGIC, 8);
		memcpy(hdr + 8, &(uint32_t){ 1 }, 4);
		memcpy(hdr + 12, &cases[i].code, 4);
		memcpy(hdr + 16, &dim, 4);
		memcpy(hdr + 20, &group, 4);
		memcpy(hdr + 24, &nkeys, 8);
		memcpy(hdr + 32, &ngroups, 8);
		f = fopen(path, "wb");
		ck_assert_ptr_nonnull(f);
		ck_assert_uint_eq(fwrite(hdr, 1, 64, f), 64);
		ck_assert_uint_eq(fwrite(cases[i].v, 2, 2, f), 2);
		fclose(f);
		ck_assert_int_eq(kvdump_read(path, &r), 0);
		ck_assert_float_eq(r.keys[0], 1.5f);
		ck_assert_float_eq(r.keys[1], -2.25f);
		kvdump_done(&r);

		ck_assert_int_eq(kvdump_write(path, &d, cases[i].dt), 0);
		f = fopen(path, "rb");
		ck_assert_ptr_nonnull(f);
		ck_assert_uint_eq(fread(hdr, 1, 64, f), 64);
		fclose(f);
		memcpy(&code, hdr + 12, 4);
		ck_assert_uint_eq(code, cases[i].code);
	}
	/* a code past the format's is refused */
	memcpy(hdr + 12, &(uint32_t){ 3 }, 4);
	f = fopen(path, "r+b");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(hdr, 1, 64, f), 64);
	fclose(f);
	ck_assert_int_eq(kvdump_read(path, &r), -EINVAL);
	ck_assert_int_eq(kvdump_write(path, &d, (enum ice_dtype)3), -EINVAL);
	unlink(path);
}
END_TEST

static Suite *posidx_suite(void)
{
	Suite *s = suite_create("posidx");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, bounds_bound_and_exact_matches_reference);
	tcase_add_test(tc, group_search_and_bad_arguments);
	tcase_add_loop_test(tc, kvdump_round_trip_and_rejects, 0, 3);
	tcase_add_test(tc, kvdump_dtype_codes_are_the_files);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	Suite *suites[] = { posidx_suite(), NULL };

	return check_run_suites(suites);
}
