/*
 * GPU suite: with a GPU, the DRAM pool is registered with CUDA (mapped), placed on the GPU's
 * NUMA node, and a page put through the store reads back byte for byte through the device's
 * view of the pool. Skips (77) without a GPU. The tests run unforked (CUDA must not be used in
 * a forked child).
 */
#include <cuda_runtime_api.h>
#include <string.h>

#include "check_main.h"
#include "dram.h"
#include "store.h"
#include "tiers_test.h"

START_TEST(dram_pool_is_registered_and_mapped)
{
	struct tier_config c = { .capacity_bytes = 64u << 20, .slot_size = 8192, .numa_node = -1 };
	struct store_config sc = { .slot_size = 8192 };
	struct store_page_info info;
	struct dram_info di;
	struct store_page pg;
	struct store_key k = { 1, 2, 3, 4 };
	struct tier *t;
	struct store *s;
	static uint8_t src[8192], back[8192];
	char sbuf[4096];
	struct stats_buf sb;
	void *dev = NULL;

	ck_assert_int_eq(tier_open(&dram_tier_ops, &c, &t), 0);
	dram_get_info(t, &di);
	ck_assert_int_eq(di.cuda_registered, 1);
	stats_buf_init(&sb, sbuf, sizeof(sbuf));
	tier_stats(t, &sb);
	ck_assert_ptr_nonnull(strstr(sbuf, "tier.dram.numa_reason gpu"));
	ck_assert_int_eq(store_open(&sc, &t, 1, &s), 0);
	tt_pattern(src, sizeof(src), &k, 7);
	pg = (struct store_page){ .key = k, .buf = src, .len = 8192, .fill = 16, .version = 7 };
	ck_assert_int_eq(store_put(s, &pg, 1, 0), 0);
	ck_assert_int_eq(store_lookup(s, &k, &info), 0);
	ck_assert_int_eq(cudaHostGetDevicePointer(&dev, tier_slot_addr(t, 0), 0), cudaSuccess);
	ck_assert_int_eq(cudaMemcpy(back, (uint8_t *)dev + info.slot[0] * 8192, 8192,
				    cudaMemcpyDeviceToHost),
			 cudaSuccess);
	ck_assert_int_eq(memcmp(back, src, 8192), 0);
	store_close(s);
	tier_close(t);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("tiers-gpu");
	TCase *tc = tcase_create("gpu");
	Suite *suites[] = { s, NULL };
	int n = 0;

	if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0)
		check_skip("no CUDA device");
	tcase_add_test(tc, dram_pool_is_registered_and_mapped);
	suite_add_tcase(s, tc);
	return check_run_suites_fork(suites, CK_NOFORK); /* CUDA does not survive a fork */
}
