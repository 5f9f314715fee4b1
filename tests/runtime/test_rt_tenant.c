/*
 * Fault tests for tenants of one daemon (issue 12, points 3-5): a client that takes all it can
 * must not starve another (quotas, memory charged when it is allocated), a client that fills a
 * tier must not destroy another's sequence (an append that cannot be stored changes nothing),
 * and requests must not grow the daemon by memory nobody counts (fetch staging bounded).
 */
#include <pthread.h>

#include "check_main.h"
#include "rt_util.h"
#include "shim.h"
#include "stats.h"

#define STATS_CAP (1u << 20)

static char sock[256];

/* Forked test processes exit without flushing stdio. */
#define say(...) (printf(__VA_ARGS__), fflush(stdout))

static const struct ice_model_shape big = { 1024, 256, 64, 128, ICE_DTYPE_BF16 };
static const struct ice_budget big_b = { 4096, 4096, 16384, 0 };
static const struct ice_model_shape vsh = { 1, 4, 2, 64, ICE_DTYPE_F32 };
static const struct ice_budget vb = { 16, 32, 64, 0 };

static uint64_t stat_u64(struct ice_ctx *c, const char *name)
{
	static char buf[STATS_CAP];
	uint64_t v = UINT64_MAX;

	ck_assert_int_gt(ice_stats(c, buf, sizeof(buf)), 0);
	ck_assert_msg(stats_find_u64(buf, name, &v) == 0, "no stat %s", name);
	return v;
}

static uint64_t client_stat(struct ice_ctx *c, const char *field)
{
	char name[96];

	snprintf(name, sizeof(name), "client.%u.%s", shim_client_id(c), field);
	return stat_u64(c, name);
}

/* `icectl [--json] status` against the test's daemon, echoed; 1 when it contains needle. */
static int icectl_has(const char *args, const char *needle)
{
	const char *root = getenv("ICE_BUILD_ROOT");
	char cl[1024], line[1024];
	int found = 0;
	FILE *f;

	snprintf(cl, sizeof(cl), "%s/tools/icectl/icectl --socket %s %s", root ? root : "build",
		 sock, args);
	f = popen(cl, "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f)) {
		say("  | %s", line);
		found |= strstr(line, needle) != NULL;
	}
	ck_assert_int_eq(pclose(f), 0);
	return found;
}

/* Appends ntok tokens of the victim shape from position pos0, in requests of up to 300. */
static int append_v(struct ice_ctx *c, uint32_t seq, uint64_t seed, uint32_t pos0, uint32_t ntok)
{
	static float k[2 * 300 * 64], v[2 * 300 * 64];
	uint32_t t, m;
	int err = 0;

	for (t = 0; t < ntok && !err; t += m) {
		m = ntok - t < 300 ? ntok - t : 300;
		rt_make_kv(seed, 2, 64, pos0 + t, m, k, v);
		err = ice_append(c, seq, 0, m, k, v);
	}
	return err;
}

/* ---- point 3: starvation ---- */

/*
 * Client A opens empty sequences of the largest shape until refused, then smaller ones, to take
 * all the host memory opening can. Client B must still open a sequence and append 2,000 tokens,
 * and A's use must stay within its quota, shown per client in stats and icectl. Then client C
 * appends until refused: by its DRAM page quota (-EDQUOT), and B still appends.
 */
START_TEST(one_client_cannot_starve_another)
{
	static const struct ice_model_shape csh = { 1, 8, 8, 64, ICE_DTYPE_F32 };
	static float ck[8 * 64 * 64], cv[8 * 64 * 64];
	struct ice_ctx *a, *b, *c;
	struct ice_model_shape sh = big;
	uint32_t seq, n = 0, bseq, cseq, t;
	uint64_t used, quota;
	char *dir = rt_tmpdir(), want[128];
	int err = 0, first_err = 0;
	pid_t d;

	d = rt_daemon_start(dir, sock, sizeof(sock), NULL);
	ck_assert_int_gt(d, 0);
	ck_assert_int_eq(ice_connect(sock, &a), 0);
	ck_assert_int_eq(ice_connect(sock, &b), 0);
	/* largest first, then halving the layers, then the KV heads: fill whatever is left */
	while (sh.layers >= 1 && n < 1000) {
		err = ice_seq_open(a, &sh, &big_b, &seq);
		if (!err) {
			n++;
			continue;
		}
		if (!first_err)
			first_err = err;
		if (sh.layers > 1) {
			sh.layers /= 2;
		} else if (sh.kv_heads > 1) {
			sh.kv_heads /= 2;
			sh.q_heads = sh.kv_heads;
		} else {
			break;
		}
	}
	say("starvation: A opened %u sequences, first refusal %d (%s)\n", n, first_err,
	    strerror(-first_err));
	err = ice_seq_open(b, &vsh, &vb, &bseq);
	say("starvation: B's open: %d (%s)\n", err, strerror(-err));
	ck_assert_int_eq(err, 0);
	err = append_v(b, bseq, 1, 0, 2000);
	say("starvation: B's append of 2000 tokens: %d (%s)\n", err, strerror(-err));
	ck_assert_int_eq(err, 0);
	ck_assert_int_eq(first_err, -EDQUOT);
	used = client_stat(a, "host_bytes");
	quota = stat_u64(a, "engine.client_host_bytes");
	say("starvation: A holds %llu of its %llu host bytes; B %llu\n", (unsigned long long)used,
	    (unsigned long long)quota, (unsigned long long)client_stat(b, "host_bytes"));
	ck_assert_uint_le(used, quota);
	ck_assert_uint_eq(client_stat(a, "seqs"), n);
	ck_assert_uint_gt(client_stat(b, "dram_pages"), 0);
	ck_assert_uint_le(quota, stat_u64(a, "engine.host_capacity_bytes") /
					 2); /* the default share: half */
	/* icectl shows each client's use and the quotas */
	ck_assert_int_eq(icectl_has("status", "quota "), 1);
	snprintf(want, sizeof(want), "\"client_quotas\":{\"host_bytes\":%llu,",
		 (unsigned long long)quota);
	ck_assert_int_eq(icectl_has("--json status", want), 1);
	/* A third client appends all it can: its DRAM page quota stops it, not the full tier. */
	ck_assert_int_eq(ice_connect(sock, &c), 0);
	ck_assert_int_eq(ice_seq_open(c, &csh, &vb, &cseq), 0);
	for (t = 0, err = 0; !err && t < 100000; t += 64) {
		rt_make_kv(5, 8, 64, t, 64, ck, cv);
		err = ice_append(c, cseq, 0, 64, ck, cv);
	}
	say("starvation: C's appends stop at %u tokens: %d (%s), holding %llu of %llu DRAM pages\n",
	    t, err, strerror(-err), (unsigned long long)client_stat(c, "dram_pages"),
	    (unsigned long long)stat_u64(c, "engine.client_dram_pages"));
	ck_assert_int_eq(err, -EDQUOT);
	ck_assert_uint_le(client_stat(c, "dram_pages"), stat_u64(c, "engine.client_dram_pages"));
	ck_assert_int_ge(ice_select_cap(c, cseq, 0), 0);
	ck_assert_int_eq(append_v(b, bseq, 1, 2000, 300), 0);
	ice_close(c);
	ice_close(a);
	ice_close(b);
	ck_assert_int_eq(rt_daemon_stop(d), 0);
}
END_TEST

/* ---- point 4: a full tier ---- */

struct view {
	int n;
	struct ice_page_ref r[64];
	float pages[64 * 2 * 16 * 64];
};

static void look(struct ice_ctx *c, uint32_t seq, struct view *w)
{
	float q[4 * 64];
	int i;

	for (i = 0; i < 4 * 64; i++)
		q[i] = (float)((i * 7) % 13) - 6.0f;
	w->n = ice_select(c, seq, 0, q, w->r, 64, NULL);
	ck_assert_int_gt(w->n, 0);
	ck_assert_int_eq(ice_fetch(c, seq, 0, w->r, (size_t)w->n, w->pages, sizeof(w->pages)), 0);
}

/*
 * A victim sequence of 2,000 tokens; a hog (another client, or another sequence in embedded
 * mode) appends until the tiers are full. The victim's next append must be -ENOSPC and leave
 * it exactly as it was (select and fetch give the same refs and bytes), and once the hog is
 * gone the victim appends again. _i: 0 daemon with an NVMe tier, 1 embedded with one, 2
 * embedded without.
 */
START_TEST(full_tier_leaves_other_sequences_intact)
{
	static const struct ice_model_shape hsh = { 2, 8, 8, 64, ICE_DTYPE_F32 };
	static float hk[8 * 64 * 64], hv[8 * 64 * 64];
	static struct view before, after;
	struct ice_ctx *vc, *hc;
	uint32_t vseq, hseq, l, t = 0, n;
	char *dir = rt_tmpdir(), cfg[512];
	int err = 0, verr, hcap, vcap;
	pid_t d = -1;

	snprintf(cfg, sizeof(cfg),
		 "dram_bytes=4194304 %s%s%s client_dram_pages=100000 "
		 "client_nvme_pages=100000",
		 _i < 2 ? "nvme_bytes=8388608 nvme_path=" : "", _i < 2 ? dir : "",
		 _i < 2 ? "/nvme.dat" : "");
	if (_i == 0) {
		d = rt_daemon_start(dir, sock, sizeof(sock), cfg);
		ck_assert_int_gt(d, 0);
		ck_assert_int_eq(ice_connect(sock, &vc), 0);
		ck_assert_int_eq(ice_connect(sock, &hc), 0);
	} else {
		char *p;

		for (p = cfg; *p; p++)
			*p = *p == ' ' ? '\n' : *p;
		ck_assert_int_eq(ice_open_embedded(cfg, &vc), 0);
		hc = vc;
	}
	ck_assert_int_eq(ice_seq_open(vc, &vsh, &vb, &vseq), 0);
	ck_assert_int_eq(append_v(vc, vseq, 7, 0, 2000), 0);
	look(vc, vseq, &before);
	ck_assert_int_eq(ice_seq_open(hc, &hsh, &vb, &hseq), 0);
	/* big appends until refused, then one page's worth at a time: the tiers are full */
	for (n = 64; n >= 16; n /= 4) {
		for (err = 0; !err && t < 200000; t += n)
			for (l = 0; l < 2 && !err; l++) {
				rt_make_kv(100 + l, 8, 64, t, n, hk, hv);
				err = ice_append(hc, hseq, l, n, hk, hv);
			}
	}
	hcap = ice_select_cap(hc, hseq, 0);
	verr = append_v(vc, vseq, 7, 2000, 300); /* one request */
	vcap = ice_select_cap(vc, vseq, 0);
	say("full tier (%d): the hog's last append at %u tokens: %d (%s), then its select_cap %d; "
	    "the victim's append: %d (%s), then its select_cap %d\n",
	    _i, t, err, strerror(-err), hcap, verr, strerror(-verr), vcap);
	ck_assert_int_eq(err, -ENOSPC);
	ck_assert_int_ge(hcap, 0); /* the hog's own sequence survives its refusal too */
	ck_assert_int_eq(verr, -ENOSPC);
	ck_assert_int_ge(vcap, 0);
	look(vc, vseq, &after);
	ck_assert_int_eq(after.n, before.n);
	ck_assert_mem_eq(after.r, before.r, (size_t)before.n * sizeof(before.r[0]));
	ck_assert_mem_eq(after.pages, before.pages, (size_t)before.n * ice_page_bytes(&vsh));
	ck_assert_int_eq(ice_seq_close(hc, hseq), 0);
	ck_assert_int_eq(append_v(vc, vseq, 7, 2000, 300), 0);
	look(vc, vseq, &after);
	ck_assert_int_gt(after.n, 0);
	if (hc != vc)
		ice_close(hc);
	ice_close(vc);
	if (d > 0)
		ck_assert_int_eq(rt_daemon_stop(d), 0);
}
END_TEST

/* A key the index would refuse (not finite) in the second KV head, among tokens that leave the
 * window now: the append is -EINVAL and changes nothing (it broke the sequence: the first
 * head's index had taken its tokens), and later appends work. */
START_TEST(a_refused_append_changes_nothing)
{
	static float k[2 * 64 * 64], v[2 * 64 * 64];
	static struct view before, after;
	struct ice_ctx *c;
	uint32_t seq;

	ck_assert_int_eq(ice_open_embedded(NULL, &c), 0);
	ck_assert_int_eq(ice_seq_open(c, &vsh, &vb, &seq), 0);
	ck_assert_int_eq(append_v(c, seq, 3, 0, 300), 0);
	look(c, seq, &before);
	rt_make_kv(3, 2, 64, 300, 64, k, v);
	k[(size_t)64 * 64 + 5] = NAN; /* head 1, the first new token: it leaves the window now */
	ck_assert_int_eq(ice_append(c, seq, 0, 64, k, v), -EINVAL);
	look(c, seq, &after);
	ck_assert_int_eq(after.n, before.n);
	ck_assert_mem_eq(after.r, before.r, (size_t)before.n * sizeof(before.r[0]));
	ck_assert_mem_eq(after.pages, before.pages, (size_t)before.n * ice_page_bytes(&vsh));
	ck_assert_int_eq(append_v(c, seq, 3, 300, 64), 0);
	/* one that would only enter the window is refused too: it would refuse the append that
	 * later moves it to the index, and every one after */
	rt_make_kv(3, 2, 64, 364, 1, k, v);
	k[64 + 7] = INFINITY;
	ck_assert_int_eq(ice_append(c, seq, 0, 1, k, v), -EINVAL);
	ck_assert_int_eq(append_v(c, seq, 3, 364, 100), 0);
	look(c, seq, &after);
	ice_close(c);
}
END_TEST

/* ---- point 5: fetch staging ---- */

static uint64_t rss_kib(pid_t pid)
{
	char path[64], line[256];
	unsigned long long v = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %llu kB", &v) == 1)
			break;
	fclose(f);
	return v;
}

#define NCONN 16
#define RSS_BOUND_KIB (64u << 10)

/*
 * 16 connections each send a fetch of 60 MiB of garbage refs: each must get -E2BIG (more refs
 * than fetch_max_refs) without the daemon growing, and a fetch of garbage refs just within the
 * bound gets -EINVAL with its staging counted and given back. The daemon's RSS must grow by
 * less than RSS_BOUND_KIB in all (it grew by ~120 MiB per connection when staging was
 * unbounded).
 */
START_TEST(huge_bogus_fetches_are_bounded)
{
	static const struct ice_model_shape fsh = { 1, 1, 1, 16, ICE_DTYPE_BF16 };
	struct ice_ctx *c[NCONN];
	uint64_t rss0, rss1, host0, host1, arena, maxrefs;
	char *dir = rt_tmpdir();
	uint32_t seq[NCONN];
	int i, huge[NCONN], within[NCONN];
	pid_t d;

	d = rt_daemon_start(dir, sock, sizeof(sock), NULL);
	ck_assert_int_gt(d, 0);
	for (i = 0; i < NCONN; i++) {
		ck_assert_int_eq(ice_connect(sock, &c[i]), 0);
		ck_assert_int_eq(ice_seq_open(c[i], &fsh, &vb, &seq[i]), 0);
	}
	maxrefs = 65536;
	{
		static char buf[STATS_CAP];

		ck_assert_int_gt(ice_stats(c[0], buf, sizeof(buf)), 0);
		stats_find_u64(buf, "engine.fetch_max_refs", &maxrefs);
	}
	host0 = stat_u64(c[0], "engine.host_used_bytes");
	rss0 = rss_kib(d);
	for (i = 0; i < NCONN; i++) {
		unsigned char *ar = shim_arena(c[i], &arena);
		struct ring_sqe s = { .opcode = OP_FETCH, .seq = seq[i] };
		struct ring_cqe q;

		memset(ar, 0xA5, 60u << 20);
		s.in_len = 60u << 20;
		s.out_off = 60u << 20;
		s.out_len = arena - s.out_off;
		ck_assert_int_eq(shim_raw(c[i], &s, &q), 0);
		huge[i] = q.res;
		/* within the bound: checked, refused, nothing kept */
		s.in_len = maxrefs / 2 * sizeof(struct ice_page_ref);
		s.out_off = s.in_len;
		s.out_len = maxrefs / 2 * ice_page_bytes(&fsh);
		ck_assert_int_eq(shim_raw(c[i], &s, &q), 0);
		within[i] = q.res;
	}
	rss1 = rss_kib(d);
	host1 = stat_u64(c[0], "engine.host_used_bytes");
	say("bogus fetch: %d connections, daemon RSS %llu -> %llu KiB (+%lld KiB, bound %u), "
	    "host_used_bytes %llu -> %llu\n",
	    NCONN, (unsigned long long)rss0, (unsigned long long)rss1, (long long)(rss1 - rss0),
	    RSS_BOUND_KIB, (unsigned long long)host0, (unsigned long long)host1);
	say("bogus fetch: 60 MiB of refs: %d (%s); %llu refs: %d (%s)\n", huge[0],
	    strerror(-huge[0]), (unsigned long long)maxrefs / 2, within[0], strerror(-within[0]));
	for (i = 0; i < NCONN; i++) {
		ck_assert_int_eq(huge[i], -E2BIG);
		ck_assert_int_eq(within[i], -EINVAL);
	}
	ck_assert_uint_lt(rss1 - rss0, RSS_BOUND_KIB);
	ck_assert_uint_eq(host1, host0);
	for (i = 0; i < NCONN; i++)
		ice_close(c[i]);
	ck_assert_int_eq(rt_daemon_stop(d), 0);
}
END_TEST

static Suite *tenant_suite(void)
{
	Suite *s = suite_create("runtime-tenants");
	TCase *t = tcase_create("tenants");

	tcase_set_timeout(t, 120);
	tcase_add_test(t, one_client_cannot_starve_another);
	tcase_add_loop_test(t, full_tier_leaves_other_sequences_intact, 0, 3);
	tcase_add_test(t, a_refused_append_changes_nothing);
	tcase_add_test(t, huge_bogus_fetches_are_bounded);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	Suite *const suites[] = { tenant_suite(), NULL };

	return check_run_suites(suites);
}
