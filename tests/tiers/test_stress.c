/*
 * Stress (suite 'stress'): 2 × a 256 MiB DRAM cap of pages through the store, every page read
 * back byte for byte, DRAM never past its high watermark, peak RSS within the documented bound.
 * ICE_STRESS_CAP_MIB overrides the cap.
 */
#include <stdlib.h>

#include "check_main.h"
#include "stress.h"
#include "tiers_test.h"

START_TEST(two_caps_through_the_store_with_bounded_rss)
{
	char dir[256];
	struct stress_cfg cfg = {
		.dram_cap = 256ull << 20, .factor = 2, .slot_size = 8192, .batch = 256
	};
	struct stress_result r;
	const char *env = getenv("ICE_STRESS_CAP_MIB");

	if (env && atoi(env) > 0)
		cfg.dram_cap = (uint64_t)atoi(env) << 20;
	tt_mkdtemp(dir, sizeof(dir));
	cfg.dir = dir;
	ck_assert_int_eq(stress_run(&cfg, &r), 0);
	tt_rmdir(dir);
	printf("pages %llu verified %llu bad %llu vmhwm %llu MiB bound %llu MiB (pool %llu, "
	       "metadata %llu, staging %llu, start %llu KiB) put %.2fs get %.2fs demoted %llu\n",
	       (unsigned long long)r.pages, (unsigned long long)r.verified,
	       (unsigned long long)r.bad, (unsigned long long)(r.vmhwm >> 20),
	       (unsigned long long)(r.rss_bound >> 20), (unsigned long long)(r.pool_bytes >> 20),
	       (unsigned long long)(r.metadata_bytes >> 20),
	       (unsigned long long)(r.staging_bytes >> 20), (unsigned long long)(r.rss_start >> 10),
	       r.put_s, r.get_s, (unsigned long long)r.demoted);
	ck_assert_uint_eq(r.pages, 2 * (cfg.dram_cap / 8192));
	ck_assert_uint_eq(r.verified, r.pages);
	ck_assert_uint_eq(r.bad, 0);
	ck_assert_uint_le(r.dram_peak_used_slots, r.dram_high_slots);
	ck_assert_uint_ge(r.demoted, r.pages - r.dram_slots);
	ck_assert_uint_gt(r.vmhwm, 0);
	ck_assert_uint_le(r.vmhwm, r.rss_bound);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("tiers-stress");
	TCase *tc = tcase_create("stress");
	Suite *suites[] = { s, NULL };

	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, two_caps_through_the_store_with_bounded_rss);
	suite_add_tcase(s, tc);
	return check_run_suites(suites);
}
