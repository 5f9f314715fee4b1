/* Unit tests for runtime/common: the latency histogram and the stats lines. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "hist.h"
#include "stats.h"

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Quantiles land within one bucket (12.5%) above the exact order statistic. */
START_TEST(hist_quantiles_match_sorted_reference)
{
	enum { N = 20000 };
	static uint64_t v[N];
	static struct hist h;
	const double qs[] = { 0.0, 0.1, 0.5, 0.9, 0.99, 0.999 };
	unsigned i;

	srand(1234 + (unsigned)_i);
	hist_init(&h);
	for (i = 0; i < N; i++) {
		v[i] = (uint64_t)rand() % 5000000u + (i % 7 == 0 ? 100000000u : 0);
		hist_add(&h, v[i]);
	}
	qsort(v, N, sizeof(v[0]), cmp_u64);
	ck_assert_uint_eq(h.count, N);
	ck_assert_uint_eq(h.max, v[N - 1]);
	for (i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
		uint64_t exact = v[(size_t)(qs[i] * N)], got = hist_quantile(&h, qs[i]);

		ck_assert_uint_ge(got, exact);
		ck_assert_uint_le(got, exact + exact / 8 + 1);
	}
	ck_assert_uint_eq(hist_quantile(&h, 1.0), v[N - 1]);
}
END_TEST

START_TEST(hist_small_values_are_exact)
{
	struct hist h;
	uint64_t i;

	hist_init(&h);
	ck_assert_uint_eq(hist_quantile(&h, 0.5), 0);
	for (i = 0; i < 8; i++)
		hist_add(&h, i);
	ck_assert_uint_eq(hist_quantile(&h, 0.5), 4);
	ck_assert_uint_eq(hist_quantile(&h, 0.0), 0);
}
END_TEST

START_TEST(stats_lines_round_trip_and_overflow)
{
	char buf[256], tiny[40];
	struct stats_buf sb;
	struct hist h;
	uint64_t v;

	stats_buf_init(&sb, buf, sizeof(buf));
	stats_put_u64(&sb, "tier.dram", "used_bytes", 1048576);
	stats_put_u64(&sb, NULL, "clients", 2);
	hist_init(&h);
	hist_add(&h, 1000);
	stats_put_hist(&sb, "ring", "rtt", &h);
	ck_assert_int_eq(sb.err, 0);
	ck_assert_int_eq(stats_find_u64(buf, "tier.dram.used_bytes", &v), 0);
	ck_assert_uint_eq(v, 1048576);
	ck_assert_int_eq(stats_find_u64(buf, "clients", &v), 0);
	ck_assert_uint_eq(v, 2);
	ck_assert_int_eq(stats_find_u64(buf, "ring.rtt.count", &v), 0);
	ck_assert_uint_eq(v, 1);
	ck_assert_int_eq(stats_find_u64(buf, "tier.dram.used", &v), -ENOENT);

	/* Overflow keeps only whole lines and reports -ENOSPC. */
	stats_buf_init(&sb, tiny, sizeof(tiny));
	stats_put_u64(&sb, "a", "b", 1);
	stats_put_u64(&sb, "tier.dram", "capacity_bytes", 123456789);
	ck_assert_int_eq(sb.err, -ENOSPC);
	ck_assert_str_eq(tiny, "a.b 1\n");
}
END_TEST

static Suite *common_suite(void)
{
	Suite *s = suite_create("common");
	TCase *tc = tcase_create("unit");

	tcase_add_loop_test(tc, hist_quantiles_match_sorted_reference, 0, 3);
	tcase_add_test(tc, hist_small_values_are_exact);
	tcase_add_test(tc, stats_lines_round_trip_and_overflow);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	Suite *suites[] = { common_suite(), NULL };

	return check_run_suites(suites);
}
