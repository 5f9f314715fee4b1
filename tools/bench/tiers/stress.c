#include "stress.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "dram.h"
#include "nvme.h"
#include "policy.h"
#include "store.h"

static uint64_t status_kb(const char *field)
{
	char line[256];
	uint64_t kb = 0;
	size_t fl = strlen(field);
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, fl) && sscanf(line + fl, ": %" SCNu64, &kb) == 1)
			break;
	fclose(f);
	return kb * 1024;
}

static void fill(uint8_t *p, size_t len, uint64_t id, uint64_t version)
{
	uint64_t x = id * 0x9E3779B97F4A7C15ull ^ (version << 32) ^ 0x2545F4914F6CDD1Dull;
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, 8);
	}
}

static struct store_key skey(uint64_t i)
{
	/* spread pages over sequences, layers and heads like an engine would */
	return (struct store_key){ .seq = i % 3,
				   .layer = (uint32_t)(i / 3 % 32),
				   .head = (uint32_t)(i / 96 % 8),
				   .page = (uint32_t)(i / 768) };
}

int stress_run(const struct stress_cfg *cfg, struct stress_result *ret)
{
	struct tier_config dc = { .capacity_bytes = cfg->dram_cap,
				  .slot_size = cfg->slot_size,
				  .numa_node = -1 };
	struct tier_config nc = { .slot_size = cfg->slot_size, .queue_depth = 256, .nrings = 2 };
	struct policy_config pc = { .fast = 0, .slow = 1, .high = 0.90, .low = 0.75 };
	struct stress_result r;
	struct tier *dram = NULL, *nvme = NULL, *tiers[2];
	struct store *s = NULL;
	struct policy *p = NULL;
	struct store_page *pg = NULL;
	uint8_t *buf = NULL, *ref = NULL;
	char path[PATH_MAX], sbuf[8192];
	struct stats_buf sb;
	struct store_config sc = { .slot_size = cfg->slot_size };
	unsigned batch = cfg->batch ? cfg->batch : 256, i;
	uint64_t npages, done, t0, v;
	int rc;

	memset(&r, 0, sizeof(r));
	r.rss_start = status_kb("VmRSS");
	npages = cfg->factor * (cfg->dram_cap / cfg->slot_size);
	if (snprintf(path, sizeof(path), "%s/stress.dat", cfg->dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	/* nvme holds everything, with room to spare */
	nc.capacity_bytes = (npages + npages / 8 + 64) * cfg->slot_size;
	nc.path = path;
	rc = tier_open(&dram_tier_ops, &dc, &dram);
	if (rc < 0)
		goto out;
	rc = tier_open(&nvme_tier_ops, &nc, &nvme);
	if (rc < 0)
		goto out;
	tiers[0] = dram;
	tiers[1] = nvme;
	rc = store_open(&sc, tiers, 2, &s);
	if (rc < 0)
		goto out;
	rc = policy_new(s, &pc, &p);
	if (rc < 0)
		goto out;
	pg = calloc(batch, sizeof(*pg));
	if (posix_memalign((void **)&buf, 4096, (size_t)batch * cfg->slot_size) ||
	    posix_memalign((void **)&ref, 4096, cfg->slot_size) || !pg) {
		rc = -ENOMEM;
		goto out;
	}
	r.dram_slots = dram->nslots;
	t0 = clock_now_ns();
	for (done = 0; done < npages; done += batch) {
		unsigned k = npages - done < batch ? (unsigned)(npages - done) : batch;
		struct store_key hot[8];

		for (i = 0; i < k; i++) {
			uint8_t *b = buf + (size_t)i * cfg->slot_size;

			fill(b, cfg->slot_size, done + i, 1);
			pg[i] = (struct store_page){ .key = skey(done + i),
						     .buf = b,
						     .len = (uint32_t)cfg->slot_size,
						     .fill = 16,
						     .version = 1 };
		}
		rc = policy_put(p, pg, k);
		if (rc < 0)
			goto out;
		/* the first pages stay hot: touched like an index would select them */
		for (i = 0; i < 8; i++)
			hot[i] = skey(i);
		store_touch(s, hot, 8);
		v = tier_used_slots(dram);
		if (v > r.dram_peak_used_slots)
			r.dram_peak_used_slots = v;
	}
	r.put_s = (double)(clock_now_ns() - t0) / 1e9;
	t0 = clock_now_ns();
	for (done = 0; done < npages; done += batch) {
		unsigned k = npages - done < batch ? (unsigned)(npages - done) : batch;

		for (i = 0; i < k; i++)
			pg[i] = (struct store_page){ .key = skey(done + i),
						     .buf = buf + (size_t)i * cfg->slot_size,
						     .len = (uint32_t)cfg->slot_size };
		/* no promotion here: a full read-back would only churn dram */
		store_get(s, pg, k);
		for (i = 0; i < k; i++) {
			fill(ref, cfg->slot_size, done + i, 1);
			if (pg[i].res == 0 && pg[i].len == cfg->slot_size &&
			    !memcmp(pg[i].buf, ref, cfg->slot_size))
				r.verified++;
			else
				r.bad++;
		}
	}
	r.get_s = (double)(clock_now_ns() - t0) / 1e9;
	r.pages = npages;
	r.bytes = npages * cfg->slot_size;
	r.dram_high_slots = (uint64_t)(pc.high * (double)dram->nslots);
	stats_buf_init(&sb, sbuf, sizeof(sbuf));
	store_stats(s, &sb);
	policy_stats(p, &sb);
	stats_find_u64(sbuf, "store.metadata_bytes", &r.metadata_bytes);
	stats_find_u64(sbuf, "tier.dram.pool_bytes", &r.pool_bytes);
	stats_find_u64(sbuf, "policy.demoted", &r.demoted);
	stats_find_u64(sbuf, "policy.promoted", &r.promoted);
	if (stats_find_u64(sbuf, "policy.workspace_bytes", &v) == 0)
		r.metadata_bytes += v;
	/* per ring: queue_depth staging slots; plus the store's own staging and our buffers */
	r.staging_bytes = 2ull * 256 * cfg->slot_size + 256ull * cfg->slot_size +
			  (uint64_t)(batch + 1) * cfg->slot_size;
	r.vmhwm = status_kb("VmHWM");
	r.rss_bound = r.pool_bytes + r.metadata_bytes + r.staging_bytes + r.rss_start +
		      STRESS_SLACK_BYTES;
	rc = 0;
out:
	free(pg);
	free(buf);
	free(ref);
	policy_free(p);
	store_close(s);
	tier_close(nvme);
	tier_close(dram);
	unlink(path);
	if (rc == 0)
		*ret = r;
	return rc;
}
