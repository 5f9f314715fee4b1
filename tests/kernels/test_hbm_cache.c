/* Unit tests for the HBM page cache's slot bookkeeping (tiers/hbm/hbm_cache.c), checked
 * against a plain model: a page selected again unchanged is a hit, pinned slots are never
 * evicted, the least recently released slot goes first, stale versions are replaced. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "hbm.h"
#include "hbm_cache.h"
#include "kern.h"

struct model_slot {
	int valid;
	struct hbm_key key;
	uint64_t version;
	uint32_t pins;
	uint64_t stamp; /* when its pins last dropped to zero */
};

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static int same_key(const struct hbm_key *a, const struct hbm_key *b)
{
	return a->seq == b->seq && a->layer == b->layer && a->head == b->head && a->page == b->page;
}

START_TEST(cache_matches_model)
{
	enum { NS = 24, OPS = 100000 };
	struct model_slot m[NS];
	struct hbm_cache *c;
	struct hbm_cache_stats st;
	uint64_t s = 1 + (uint64_t)_i, now = 0, hits = 0, misses = 0, evictions = 0;
	uint32_t pinned_list[4 * NS], npinned = 0;
	int op;

	memset(m, 0, sizeof(m));
	ck_assert_int_eq(hbm_cache_new(NS, &c), 0);
	for (op = 0; op < OPS; op++) {
		uint32_t what = (uint32_t)(rnd(&s) % 100), i;

		now++;
		if (what < 60 && npinned < 4 * NS) {
			struct hbm_key k = { rnd(&s) % 3, (uint32_t)(rnd(&s) % 2), 0,
					     (uint32_t)(rnd(&s) % 20) };
			uint64_t v = rnd(&s) % 8 == 0 ? 1 + rnd(&s) % 2 : 1;
			int found = -1, expect_slot = -1, r;
			uint32_t slot = NS + 1;

			for (i = 0; i < NS; i++)
				if (m[i].valid && same_key(&m[i].key, &k))
					found = (int)i;
			r = hbm_cache_get(c, &k, v, &slot);
			if (found >= 0 && m[found].version == v) {
				ck_assert_int_eq(r, 1);
				ck_assert_uint_eq(slot, (uint32_t)found);
				m[found].pins++;
				hits++;
			} else {
				int any_free = 0;
				uint64_t best = UINT64_MAX;

				if (found >= 0) {
					m[found].valid = 0;
					if (!m[found].pins)
						expect_slot = found;
				}
				for (i = 0; i < NS && expect_slot < 0; i++)
					if (!m[i].valid && !m[i].pins)
						any_free = 1;
				if (expect_slot < 0 && !any_free)
					for (i = 0; i < NS; i++)
						if (m[i].valid && !m[i].pins && m[i].stamp < best) {
							best = m[i].stamp;
							expect_slot = (int)i;
						}
				if (expect_slot < 0 && !any_free) {
					ck_assert_int_eq(r, -ENOSPC);
					continue;
				}
				ck_assert_int_eq(r, 0);
				ck_assert_uint_lt(slot, NS);
				if (expect_slot >= 0)
					ck_assert_uint_eq(slot, (uint32_t)expect_slot);
				else
					ck_assert(!m[slot].valid && !m[slot].pins);
				if (m[slot].valid)
					evictions++;
				m[slot].valid = 1;
				m[slot].key = k;
				m[slot].version = v;
				m[slot].pins = 1;
				misses++;
			}
			pinned_list[npinned++] = slot;
		} else if (what < 95 && npinned) {
			uint32_t j = (uint32_t)(rnd(&s) % npinned), slot = pinned_list[j];

			pinned_list[j] = pinned_list[--npinned];
			hbm_cache_unpin(c, slot);
			if (--m[slot].pins == 0)
				m[slot].stamp = now;
		} else if (what < 97) {
			uint64_t seq = rnd(&s) % 3;
			uint32_t n = 0;

			for (i = 0; i < NS; i++)
				if (m[i].valid && m[i].key.seq == seq) {
					m[i].valid = 0;
					n++;
				}
			ck_assert_uint_eq(hbm_cache_drop_seq(c, seq), n);
		} else {
			uint32_t slot = (uint32_t)(rnd(&s) % NS);

			hbm_cache_invalidate(c, slot);
			m[slot].valid = 0;
		}
	}
	hbm_cache_get_stats(c, &st);
	ck_assert_uint_eq(st.hits, hits);
	ck_assert_uint_eq(st.misses, misses);
	ck_assert_uint_eq(st.evictions, evictions);
	hbm_cache_free(c);
}
END_TEST

/* A decode step's pattern: the same selection again costs nothing; a grown window page (new
 * version) is the only move; a new selection evicts the oldest released pages. */
START_TEST(cache_decode_steps)
{
	enum { NS = 40 };
	struct hbm_cache *c;
	struct hbm_cache_stats st;
	uint32_t slots[20], slot, i;
	struct hbm_key k = { 7, 3, 1, 0 };

	ck_assert_int_eq(hbm_cache_new(NS, &c), 0);
	for (i = 0; i < 20; i++) {
		k.page = i;
		ck_assert_int_eq(hbm_cache_get(c, &k, 1, &slots[i]), 0);
	}
	for (i = 0; i < 20; i++)
		hbm_cache_unpin(c, slots[i]);
	for (i = 0; i < 20; i++) {
		k.page = i;
		ck_assert_int_eq(hbm_cache_get(c, &k, i == 19 ? 2 : 1, &slot), i == 19 ? 0 : 1);
		ck_assert_uint_eq(slot, slots[i]); /* the stale window page keeps its slot */
	}
	for (i = 0; i < 20; i++)
		hbm_cache_unpin(c, slots[i]);
	hbm_cache_get_stats(c, &st);
	ck_assert_uint_eq(st.hits, 19);
	ck_assert_uint_eq(st.misses, 21);
	ck_assert_uint_eq(st.stale, 1);
	ck_assert_uint_eq(st.cached, 20);
	ck_assert_uint_eq(st.pinned, 0);
	/* 30 new pages: 20 free slots, then the 10 least recently released are evicted. */
	for (i = 0; i < 30; i++) {
		k.page = 100 + i;
		ck_assert_int_eq(hbm_cache_get(c, &k, 1, &slot), 0);
	}
	hbm_cache_get_stats(c, &st);
	ck_assert_uint_eq(st.evictions, 10);
	ck_assert_uint_eq(st.pinned, 30);
	/* 10 more fit (the cached ones), the 11th finds every slot pinned. */
	for (i = 0; i < 10; i++) {
		k.page = 200 + i;
		ck_assert_int_eq(hbm_cache_get(c, &k, 1, &slot), 0);
	}
	k.page = 300;
	ck_assert_int_eq(hbm_cache_get(c, &k, 1, &slot), -ENOSPC);
	ck_assert_int_eq(hbm_cache_get(NULL, &k, 1, &slot), -EINVAL);
	ck_assert_int_eq(hbm_cache_new(0, &c), -EINVAL);
	hbm_cache_free(c);
}
END_TEST

START_TEST(cache_reset_keeps_pins)
{
	struct hbm_cache *c;
	struct hbm_cache_stats st;
	struct hbm_key k = { 1, 0, 0, 0 };
	uint32_t a, b, slot;

	ck_assert_int_eq(hbm_cache_new(2, &c), 0);
	ck_assert_int_eq(hbm_cache_get(c, &k, 1, &a), 0);
	k.page = 1;
	ck_assert_int_eq(hbm_cache_get(c, &k, 1, &b), 0);
	hbm_cache_unpin(c, b);
	hbm_cache_reset(c);
	/* Nothing is a hit after a reset; the pinned slot stays out of reach until released. */
	ck_assert_int_eq(hbm_cache_get(c, &k, 1, &slot), 0);
	ck_assert_uint_eq(slot, b);
	k.page = 2;
	ck_assert_int_eq(hbm_cache_get(c, &k, 1, &slot), -ENOSPC);
	hbm_cache_unpin(c, a);
	hbm_cache_unpin(c, a); /* extra unpin ignored */
	ck_assert_int_eq(hbm_cache_get(c, &k, 1, &slot), 0);
	ck_assert_uint_eq(slot, a);
	hbm_cache_get_stats(c, &st);
	ck_assert_uint_eq(st.pinned, 2);
	hbm_cache_free(c);
}
END_TEST

/* Without a GPU the page cache does not open (its callers then stay on host memory). */
START_TEST(hbm_needs_a_gpu)
{
	struct hbm_config cfg = { .nslots = 64, .slot_bytes = 8192 };
	struct hbm *h = NULL;

	if (kern_gpu_count() > 0)
		return; /* the gpu suite opens it for real */
	ck_assert_int_eq(hbm_open(&cfg, &h), -ENODEV);
	ck_assert_ptr_null(h);
	ck_assert_int_eq(hbm_failed(NULL), 1);
}
END_TEST

static Suite *hbm_cache_suite(void)
{
	Suite *s = suite_create("hbm_cache");
	TCase *tc = tcase_create("cache");

	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, cache_matches_model, 0, 3);
	tcase_add_test(tc, cache_decode_steps);
	tcase_add_test(tc, cache_reset_keeps_pins);
	tcase_add_test(tc, hbm_needs_a_gpu);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	Suite *suites[] = { hbm_cache_suite(), NULL };

	return check_run_suites(suites);
}
