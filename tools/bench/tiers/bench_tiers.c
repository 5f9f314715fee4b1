/*
 * icebench tiers: what the page store and its tiers move, each against a baseline measured in
 * the same run: CRC-32C (hardware vs table), DRAM store put/get (vs plain memcpy), NVMe random
 * page reads at 4/8/16 KiB × batch 1/16/64/256 (vs fio randread on the same file, block size
 * and queue depth), checksummed store gets from NVMe, demotion/promotion throughput, the Redis
 * tier (vs redis-benchmark on the same server: bench_remote.c), and with --stress the 2 × DRAM
 * cap run with its RSS bound.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "bench_remote.h"
#include "buf.h"
#include "clock.h"
#include "crc32c.h"
#include "dram.h"
#include "nvme.h"
#include "policy.h"
#include "store.h"
#include "stress.h"

struct opts {
	int json;
	const char *dir;
	uint64_t file_mib;
	uint64_t dram_mib;
	double seconds;
	unsigned reps;
	int no_fio;
	int stress;
	uint64_t stress_cap_mib;
	const char *remote_url;
	int no_remote;
	int remote_only;
};

#define MAX_REPS 20

struct nvme_row {
	unsigned bs, batch, reps, nfio;
	double iops, gbps, p50_us, p99_us;
	double fio_iops, ratio;
	double ours[MAX_REPS], fio[MAX_REPS];
};

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Median of n values (n >= 1); sorts a copy. */
static double median(const double *v, unsigned n)
{
	double t[MAX_REPS];

	memcpy(t, v, n * sizeof(*v));
	qsort(t, n, sizeof(*t), cmp_dbl);
	return n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

#define NSIZES 3
#define NBATCH 4
static const unsigned sizes[NSIZES] = { 4096, 8192, 16384 };
static const unsigned batches[NBATCH] = { 1, 16, 64, 256 };

static uint64_t rng_next(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static void *alloc_aligned(size_t len)
{
	void *p = NULL;

	if (posix_memalign(&p, 4096, len))
		return NULL;
	memset(p, 0x5a, len);
	return p;
}

/* ---- crc ---- */

static void bench_crc(double *hw_gbps, double *sw_gbps)
{
	enum { LEN = 8192, N = 20000 };
	uint8_t *b = alloc_aligned(LEN);
	uint32_t acc = 0;
	uint64_t t0;
	int i;

	t0 = clock_now_ns();
	for (i = 0; i < N; i++)
		acc += crc32c(acc, b, LEN);
	*hw_gbps = (double)LEN * N / (double)(clock_now_ns() - t0);
	t0 = clock_now_ns();
	for (i = 0; i < N / 4; i++)
		acc += crc32c_sw(acc, b, LEN);
	*sw_gbps = (double)LEN * (N / 4) / (double)(clock_now_ns() - t0);
	if (acc == 0x12345678)
		fprintf(stderr, "\n"); /* keeps the loops from being optimised out */
	free(b);
}

/* ---- dram ---- */

struct dram_res {
	double put_gbps, get_gbps, memcpy_gbps;
};

static int bench_dram(const struct opts *o, struct dram_res *res)
{
	const size_t ss = 8192;
	const unsigned B = 256;
	struct tier_config c = { .capacity_bytes = o->dram_mib << 20,
				 .slot_size = ss,
				 .numa_node = -1 };
	struct store_config sc = { .slot_size = ss };
	struct tier *t = NULL;
	struct store *s = NULL;
	struct store_page *pg = calloc(B, sizeof(*pg));
	uint8_t *src = alloc_aligned(B * ss), *dst = alloc_aligned(B * ss);
	uint64_t npages, done, t0, tput = 0, tget = 0, tcpy = 0, bytes = 0;
	unsigned i;
	int r = -ENOMEM, pass;

	if (!pg || !src || !dst)
		goto out;
	r = tier_open(&dram_tier_ops, &c, &t);
	if (r < 0)
		goto out;
	r = store_open(&sc, &t, 1, &s);
	if (r < 0)
		goto out;
	npages = t->nslots;
	for (pass = 0; pass < 3; pass++) {
		for (done = 0; done + B <= npages; done += B) {
			for (i = 0; i < B; i++)
				pg[i] = (struct store_page){ .key = { 1, 0, 0,
								      (uint32_t)(done + i) },
							     .buf = src + i * ss,
							     .len = ss,
							     .fill = 16,
							     .version = (uint64_t)pass };
			t0 = clock_now_ns();
			r = store_put(s, pg, B, 0);
			tput += clock_now_ns() - t0;
			if (r < 0)
				goto out;
			for (i = 0; i < B; i++) {
				pg[i].buf = dst + i * ss;
				pg[i].len = ss;
			}
			t0 = clock_now_ns();
			r = store_get(s, pg, B);
			tget += clock_now_ns() - t0;
			if (r < 0)
				goto out;
			/* baseline: the same bytes copied by plain memcpy (no lookup, no checksum) */
			t0 = clock_now_ns();
			for (i = 0; i < B; i++)
				memcpy(tier_slot_addr(t, i + done), src + i * ss, ss);
			for (i = 0; i < B; i++)
				memcpy(dst + i * ss, tier_slot_addr(t, i + done), ss);
			tcpy += clock_now_ns() - t0;
			bytes += (uint64_t)B * ss;
		}
	}
	res->put_gbps = (double)bytes / (double)tput;
	res->get_gbps = (double)bytes / (double)tget;
	res->memcpy_gbps = 2.0 * (double)bytes / (double)tcpy;
	r = 0;
out:
	store_close(s);
	tier_close(t);
	free(pg);
	free(src);
	free(dst);
	return r;
}

/* ---- nvme ---- */

static int fill_file(struct tier *t, uint8_t *buf, unsigned depth)
{
	struct tier_io io[256];
	uint64_t s = 0;
	unsigned i;
	int r;

	/* Every slot written: reads of never-written (unwritten-extent) blocks would not touch
	 * the disk and flatter both us and fio. */
	while (s < t->nslots) {
		unsigned k = t->nslots - s < depth ? (unsigned)(t->nslots - s) : depth;

		for (i = 0; i < k; i++)
			io[i] = (struct tier_io){ .slot = s + i,
						  .buf = buf + (size_t)i * t->slot_size,
						  .len = (uint32_t)t->slot_size,
						  .cap = (uint32_t)t->slot_size };
		r = tier_write(t, io, k);
		if (r < 0)
			return r;
		s += k;
	}
	return 0;
}

/* Runs a fio command line (JSON output) and returns what it printed; NULL on failure. */
static char *fio_output(const char *cmd)
{
	char *out = NULL;
	size_t cap = 0, len = 0;
	FILE *f = popen(cmd, "r");

	if (!f)
		return NULL;
	for (;;) {
		size_t n;

		if (buf_grow(&out, &cap, len + 4096, 1))
			break;
		n = fread(out + len, 1, cap - len - 1, f);
		if (n == 0)
			break;
		len += n;
	}
	pclose(f);
	if (out)
		out[len] = '\0';
	return out;
}

/* The number after `field` in fio's JSON `section` ("read" or "write"), or -1. */
static double fio_field(const char *out, const char *section, const char *field)
{
	char sec[32], fl[32];
	const char *p;

	snprintf(sec, sizeof(sec), "\"%s\" : {", section); /* not the job option "rw" */
	snprintf(fl, sizeof(fl), "\"%s\"", field);
	p = out ? strstr(out, sec) : NULL;
	if (p)
		p = strstr(p, fl);
	if (p && (p = strchr(p, ':')))
		return strtod(p + 1, NULL);
	return -1;
}

static double fio_randread(const char *path, uint64_t size, unsigned bs, unsigned qd,
			   double seconds)
{
	char cmd[PATH_MAX + 1024], *out;
	double iops;

	if (snprintf(cmd, sizeof(cmd),
		     "fio --name=ice --filename='%s' --rw=randread --bs=%u --iodepth=%u "
		     "--ioengine=io_uring --direct=1 --fixedbufs --registerfiles --size=%" PRIu64
		     " --time_based --runtime=%ums --norandommap --randrepeat=0 --invalidate=0 "
		     "--output-format=json 2>/dev/null",
		     path, bs, qd, size, (unsigned)(seconds * 1000)) >= (int)sizeof(cmd))
		return -1;
	out = fio_output(cmd);
	iops = fio_field(out, "read", "iops");
	free(out);
	return iops;
}

/* fio's sequential write on path (O_DIRECT, io_uring): GB/s, or -1. The demotion figure's
 * yardstick: what the disk and file take when written straight through. */
static double fio_seqwrite(const char *path, uint64_t size, unsigned bs, unsigned qd)
{
	char cmd[PATH_MAX + 1024], *out;
	double bw;

	if (snprintf(cmd, sizeof(cmd),
		     "fio --name=ice --filename='%s' --rw=write --bs=%u --iodepth=%u "
		     "--ioengine=io_uring --direct=1 --size=%" PRIu64 " --end_fsync=1 "
		     "--output-format=json 2>/dev/null",
		     path, bs, qd, size) >= (int)sizeof(cmd))
		return -1;
	out = fio_output(cmd);
	bw = fio_field(out, "write", "bw_bytes");
	free(out);
	return bw > 0 ? bw / 1e9 : -1;
}

static int bench_nvme(const struct opts *o, const char *path, struct nvme_row *rows,
		      unsigned *ret_n, double *store_get_iops, double *store_get_raw_iops)
{
	uint64_t file = o->file_mib << 20;
	unsigned si, bi, n = 0;
	int r = 0;

	for (si = 0; si < NSIZES; si++) {
		unsigned bs = sizes[si];
		struct tier_config c = { .capacity_bytes = file,
					 .slot_size = bs,
					 .path = path,
					 .queue_depth = 256,
					 .nrings = 1,
					 .flags = TIER_F_REQUIRE_DIRECT };
		struct tier_io io[256];
		uint8_t *buf = alloc_aligned(256 * (size_t)bs);
		struct tier *t = NULL;

		if (!buf)
			return -ENOMEM;
		r = tier_open(&nvme_tier_ops, &c, &t);
		if (r < 0) {
			free(buf);
			return r;
		}
		t->ops->register_mem(t, buf, 256 * (size_t)bs);
		if (si == 0 && (r = fill_file(t, buf, 256)) < 0)
			goto out_close;
		for (bi = 0; bi < NBATCH; bi++) {
			unsigned B = batches[bi], i, rep;
			uint64_t x = 0x9E3779B97F4A7C15ull ^ (bs * 131 + B), ios, t0, end;
			double ours[MAX_REPS], fio[MAX_REPS], ratio[MAX_REPS];
			unsigned nf = 0;
			struct hist h;
			struct nvme_row *row = &rows[n++];

			hist_init(&h);
			/* Ours and fio's alternate, reps times each, and the figure is the median
			 * of the per-pair ratios: load from other processes on this shared machine
			 * comes in bursts, and a burst then spoils one pair, not the result. */
			for (rep = 0; rep < o->reps; rep++) {
				ios = 0;
				t0 = clock_now_ns();
				end = t0 + (uint64_t)(o->seconds * 1e9);
				while (clock_now_ns() < end) {
					uint64_t b0 = clock_now_ns();

					for (i = 0; i < B; i++)
						io[i] = (struct tier_io){
							.slot = rng_next(&x) % t->nslots,
							.buf = buf + (size_t)i * bs,
							.len = bs,
							.cap = bs
						};
					r = tier_read(t, io, B);
					if (r < 0)
						goto out_close;
					hist_add(&h, clock_now_ns() - b0);
					ios += B;
				}
				ours[rep] = (double)ios / ((double)(clock_now_ns() - t0) / 1e9);
				if (!o->no_fio) {
					double f = fio_randread(path, t->nslots * bs, bs, B,
								o->seconds);

					if (f > 0) {
						fio[nf] = f;
						ratio[nf++] = ours[rep] / f;
					}
				}
			}
			row->bs = bs;
			row->batch = B;
			row->reps = o->reps;
			memcpy(row->ours, ours, sizeof(ours));
			memcpy(row->fio, fio, sizeof(fio));
			row->nfio = nf;
			row->iops = median(ours, o->reps);
			row->gbps = row->iops * bs / 1e9;
			row->p50_us = (double)hist_quantile(&h, 0.5) / 1e3;
			row->p99_us = (double)hist_quantile(&h, 0.99) / 1e3;
			row->fio_iops = nf ? median(fio, nf) : -1;
			row->ratio = nf ? median(ratio, nf) : 0;
			if (!o->json)
				fprintf(stderr,
					"  nvme %2u KiB batch %3u: %9.0f IOPS, fio %9.0f, "
					"ratio %.2f\n",
					bs >> 10, B, row->iops, row->fio_iops, row->ratio);
		}
		/* 8 KiB, batch 64 through the store: lookup + checksum on top of the reads */
		if (bs == 8192) {
			struct store_config sc = { .slot_size = bs };
			struct store *s = NULL;
			struct store_page pg[64];
			uint64_t pages = t->nslots / 2, k, x = 77, got = 0, t0, end;
			unsigned i;

			r = store_open(&sc, &t, 1, &s);
			if (r < 0)
				goto out_close;
			for (k = 0; k < pages && r == 0; k += 64) {
				for (i = 0; i < 64; i++)
					pg[i] = (struct store_page){ .key = { 9, 0, 0,
									      (uint32_t)(k + i) },
								     .buf = buf + (size_t)i * bs,
								     .len = bs,
								     .fill = 16,
								     .version = 1 };
				r = store_put(s, pg, 64, 0);
			}
			t0 = clock_now_ns();
			end = t0 + (uint64_t)(o->seconds * 1e9);
			while (r == 0 && clock_now_ns() < end) {
				for (i = 0; i < 64; i++)
					pg[i] = (struct store_page){
						.key = { 9, 0, 0,
							 (uint32_t)(rng_next(&x) % pages) },
						.buf = buf + (size_t)i * bs,
						.len = bs
					};
				r = store_get(s, pg, 64);
				got += 64;
			}
			*store_get_iops = (double)got / ((double)(clock_now_ns() - t0) / 1e9);
			for (i = 0; i < n; i++)
				if (rows[i].bs == 8192 && rows[i].batch == 64)
					*store_get_raw_iops = rows[i].iops;
			store_close(s);
			if (r < 0)
				goto out_close;
		}
out_close:
		tier_close(t);
		free(buf);
		if (r < 0)
			return r;
	}
	*ret_n = n;
	return 0;
}

/* ---- demotion / promotion ---- */

struct mig_res {
	double demote_gbps, promote_gbps, demote_clean_gbps;
	double fio_write_gbps; /* fio's sequential write of the same bytes to the same file */
	uint64_t bytes;
};

static int bench_migrate(const struct opts *o, const char *path, struct mig_res *res)
{
	const size_t ss = 8192;
	struct tier_config dc = { .capacity_bytes = o->dram_mib << 20,
				  .slot_size = ss,
				  .numa_node = -1 };
	struct tier_config nc = { .capacity_bytes = (o->dram_mib << 20) + (1 << 20),
				  .slot_size = ss,
				  .path = path,
				  .queue_depth = 256,
				  .nrings = 1 };
	struct policy_config pc = { .fast = 0, .slow = 1 };
	struct store_config sc = { .slot_size = ss };
	struct tier *d = NULL, *v = NULL, *tiers[2];
	struct store *s = NULL;
	struct policy *p = NULL;
	struct store_key *keys = NULL;
	struct store_page pg[256];
	uint8_t *buf = alloc_aligned(256 * ss);
	uint64_t n, k, t0;
	unsigned i;
	int r;

	r = buf ? tier_open(&dram_tier_ops, &dc, &d) : -ENOMEM;
	if (r < 0)
		goto out;
	r = tier_open(&nvme_tier_ops, &nc, &v);
	if (r < 0)
		goto out;
	tiers[0] = d;
	tiers[1] = v;
	if ((r = store_open(&sc, tiers, 2, &s)) < 0 || (r = policy_new(s, &pc, &p)) < 0)
		goto out;
	n = d->nslots;
	keys = calloc(n, sizeof(*keys));
	if (!keys) {
		r = -ENOMEM;
		goto out;
	}
	for (k = 0; k < n; k += 256) {
		unsigned b = n - k < 256 ? (unsigned)(n - k) : 256;

		for (i = 0; i < b; i++) {
			keys[k + i] = (struct store_key){ 5, 0, 0, (uint32_t)(k + i) };
			pg[i] = (struct store_page){ .key = keys[k + i],
						     .buf = buf + i * ss,
						     .len = ss,
						     .fill = 16,
						     .version = 1 };
		}
		if ((r = store_put(s, pg, b, 0)) < 0)
			goto out;
	}
	t0 = clock_now_ns();
	r = policy_demote_to(p, 0);
	if (r < 0)
		goto out;
	res->demote_gbps = (double)(n * ss) / (double)(clock_now_ns() - t0);
	t0 = clock_now_ns();
	r = store_migrate(s, keys, (unsigned)n, 0, STORE_MIGRATE_COPY, NULL);
	if (r < 0)
		goto out;
	res->promote_gbps = (double)(n * ss) / (double)(clock_now_ns() - t0);
	t0 = clock_now_ns();
	r = policy_demote_to(p, 0);
	if (r < 0)
		goto out;
	res->demote_clean_gbps = (double)(n * ss) / (double)(clock_now_ns() - t0);
	res->bytes = n * ss;
	r = 0;
out:
	free(keys);
	policy_free(p);
	store_close(s);
	tier_close(v);
	tier_close(d);
	free(buf);
	return r;
}

/* ---- main ---- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: icebench tiers [--json] [--dir DIR] [--file-mib N] [--dram-mib N]\n"
		"                      [--seconds S] [--reps N] [--no-fio]\n"
		"                      [--remote-url URL | --no-remote | --remote-only]\n"
		"                      [--stress [--stress-cap-mib N]]\n"
		"  --dir DIR         where the NVMe files go (default $TMPDIR or /var/tmp; a real\n"
		"                    filesystem: O_DIRECT)\n"
		"  --file-mib N      NVMe file for the random reads (default 1024)\n"
		"  --dram-mib N      DRAM pool for put/get and demote/promote (default 256)\n"
		"  --seconds S       per NVMe run, ours and fio's each (default 0.5)\n"
		"  --reps N          NVMe runs per point, ours and fio alternating; the figures are\n"
		"                    medians, the ratio the median of per-pair ratios (default 5)\n"
		"  --no-fio          skip the fio baseline\n"
		"  --remote-url URL  Redis tier on this server (redis://host:port; default: a private\n"
		"                    redis-server on loopback for the run, when installed)\n"
		"  --no-remote       skip the Redis tier and redis-benchmark\n"
		"  --remote-only     only the Redis tier and redis-benchmark\n"
		"  --stress          only the stress run: 2 x DRAM cap through the store, RSS bound\n"
		"  --stress-cap-mib  DRAM cap for --stress (default 256)\n");
}

static int parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "dir", required_argument, NULL, 'd' },
		{ "file-mib", required_argument, NULL, 'f' },
		{ "dram-mib", required_argument, NULL, 'm' },
		{ "seconds", required_argument, NULL, 's' },
		{ "reps", required_argument, NULL, 'r' },
		{ "no-fio", no_argument, NULL, 'n' },
		{ "stress", no_argument, NULL, 'S' },
		{ "stress-cap-mib", required_argument, NULL, 'c' },
		{ "remote-url", required_argument, NULL, 'u' },
		{ "no-remote", no_argument, NULL, 'R' },
		{ "remote-only", no_argument, NULL, 'O' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case 'j':
			o->json = 1;
			break;
		case 'd':
			o->dir = optarg;
			break;
		case 'f':
			o->file_mib = strtoull(optarg, NULL, 10);
			break;
		case 'm':
			o->dram_mib = strtoull(optarg, NULL, 10);
			break;
		case 's':
			o->seconds = strtod(optarg, NULL);
			break;
		case 'r':
			o->reps = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'n':
			o->no_fio = 1;
			break;
		case 'S':
			o->stress = 1;
			break;
		case 'c':
			o->stress_cap_mib = strtoull(optarg, NULL, 10);
			break;
		case 'u':
			o->remote_url = optarg;
			break;
		case 'R':
			o->no_remote = 1;
			break;
		case 'O':
			o->remote_only = 1;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			return -EINVAL;
		}
	}
	if (optind != argc || o->file_mib < 64 || o->dram_mib < 16 || o->seconds <= 0 ||
	    o->seconds > 60 || o->reps < 1 || o->reps > MAX_REPS || o->stress_cap_mib < 16 ||
	    o->stress_cap_mib > 8192 || (o->no_remote && o->remote_only))
		return -EINVAL;
	return 0;
}

static int run_stress(const struct opts *o, const char *dir)
{
	struct stress_cfg cfg = { .dir = dir,
				  .dram_cap = o->stress_cap_mib << 20,
				  .factor = 2,
				  .slot_size = 8192,
				  .batch = 256 };
	struct stress_result r;
	int rc = stress_run(&cfg, &r), ok;

	if (rc < 0) {
		fprintf(stderr, "icebench tiers: stress setup failed: %s\n", strerror(-rc));
		return 1;
	}
	ok = r.bad == 0 && r.verified == r.pages && r.vmhwm <= r.rss_bound &&
	     r.dram_peak_used_slots <= r.dram_high_slots;
	if (o->json) {
		bench_json_begin(stdout, "tiers");
		printf(",\"stress\":{\"dram_cap_bytes\":%" PRIu64 ",\"pages\":%" PRIu64
		       ",\"bytes\":%" PRIu64 ",\"verified\":%" PRIu64 ",\"bad\":%" PRIu64
		       ",\"put_gbps\":%.3f,\"get_gbps\":%.3f,\"demoted\":%" PRIu64
		       ",\"dram_peak_used_slots\":%" PRIu64 ",\"dram_high_slots\":%" PRIu64
		       ",\"vmhwm_bytes\":%" PRIu64 ",\"rss_bound_bytes\":%" PRIu64
		       ",\"pool_bytes\":%" PRIu64 ",\"metadata_bytes\":%" PRIu64
		       ",\"staging_bytes\":%" PRIu64 ",\"rss_start_bytes\":%" PRIu64
		       ",\"slack_bytes\":%llu,\"pass\":%s}}\n",
		       cfg.dram_cap, r.pages, r.bytes, r.verified, r.bad, r.bytes / r.put_s / 1e9,
		       r.bytes / r.get_s / 1e9, r.demoted, r.dram_peak_used_slots,
		       r.dram_high_slots, r.vmhwm, r.rss_bound, r.pool_bytes, r.metadata_bytes,
		       r.staging_bytes, r.rss_start, STRESS_SLACK_BYTES, ok ? "true" : "false");
	} else {
		printf("stress: %" PRIu64 " MiB of 8 KiB pages through a %" PRIu64
		       " MiB DRAM cap\n",
		       r.bytes >> 20, cfg.dram_cap >> 20);
		printf("  put %.2f GB/s (with demotion of %" PRIu64 " pages), get %.2f GB/s\n",
		       r.bytes / r.put_s / 1e9, r.demoted, r.bytes / r.get_s / 1e9);
		printf("  verified %" PRIu64 "/%" PRIu64 " pages, bad %" PRIu64
		       ", dram peak %" PRIu64 " slots (high watermark %" PRIu64 ")\n",
		       r.verified, r.pages, r.bad, r.dram_peak_used_slots, r.dram_high_slots);
		printf("  peak RSS (VmHWM) %.1f MiB <= bound %.1f MiB = pool %.1f + metadata %.1f + "
		       "staging %.1f + start %.1f + slack %.1f: %s\n",
		       r.vmhwm / 1048576.0, r.rss_bound / 1048576.0, r.pool_bytes / 1048576.0,
		       r.metadata_bytes / 1048576.0, r.staging_bytes / 1048576.0,
		       r.rss_start / 1048576.0, STRESS_SLACK_BYTES / 1048576.0,
		       ok ? "PASS" : "FAIL");
	}
	return ok ? 0 : 1;
}

/* The Redis rows: as a JSON member (json) or a table. */
static void print_remote(const struct remote_res *rr, int json)
{
	unsigned i;

	if (json) {
		printf(",\"redis\":{\"url\":");
		bench_json_str(stdout, rr->url);
		printf(",\"private_server\":%s,\"page_bytes\":%u,\"pages\":%u,"
		       "\"baseline\":\"redis-benchmark -t set,get -d %u -P <batch> -c 1\","
		       "\"rows\":[",
		       rr->private_server ? "true" : "false", rr->page_bytes, rr->pages,
		       rr->page_bytes);
		for (i = 0; i < rr->nrows; i++) {
			const struct remote_row *w = &rr->rows[i];

			printf("%s{\"batch\":%u,\"write_pages_per_s\":%.0f,"
			       "\"write_gbps\":%.3f,\"read_pages_per_s\":%.0f,"
			       "\"read_gbps\":%.3f,\"rb_set_rps\":%.0f,\"rb_get_rps\":%.0f,"
			       "\"write_ratio\":%.3f,\"read_ratio\":%.3f}",
			       i ? "," : "", w->batch, w->write_pps,
			       w->write_pps * rr->page_bytes / 1e9, w->read_pps,
			       w->read_pps * rr->page_bytes / 1e9, w->rb_set_rps, w->rb_get_rps,
			       w->write_ratio, w->read_ratio);
		}
		printf("],\"store_get_batch256_pages_per_s\":%.0f}", rr->store_get_pps);
		return;
	}
	printf("redis tier (%s%s), %u KiB pages, pipelined batches vs redis-benchmark\n"
	       "  (-t set,get -d %u -P batch -c 1, same server; medians of %u "
	       "alternating runs, ratio = median of per-run ratios)\n",
	       rr->url, rr->private_server ? ", private server" : "", rr->page_bytes >> 10,
	       rr->page_bytes, rr->reps);
	printf("  %5s %10s %7s %10s %6s %10s %7s %10s %6s\n", "batch", "write p/s", "GB/s",
	       "rb SET/s", "ratio", "read p/s", "GB/s", "rb GET/s", "ratio");
	for (i = 0; i < rr->nrows; i++) {
		const struct remote_row *w = &rr->rows[i];

		printf("  %5u %10.0f %7.3f %10.0f %6.2f %10.0f %7.3f %10.0f %6.2f\n", w->batch,
		       w->write_pps, w->write_pps * rr->page_bytes / 1e9, w->rb_set_rps,
		       w->write_ratio, w->read_pps, w->read_pps * rr->page_bytes / 1e9,
		       w->rb_get_rps, w->read_ratio);
	}
	printf("  store_get from redis, batch 256 (lookup + CRC check): %.0f pages/s "
	       "(%.3f GB/s)\n",
	       rr->store_get_pps, rr->store_get_pps * rr->page_bytes / 1e9);
}

/* --remote-only: the Redis tier and its baseline, nothing else. */
static int run_remote_only(const struct opts *o, const char *dir)
{
	static struct remote_res rr;
	int r = bench_remote(o->remote_url, dir, o->seconds, o->reps, &rr);

	rmdir(dir);
	if (r < 0) {
		fprintf(stderr, "icebench tiers: redis %s: %s\n", r == -ENOENT ? "" : rr.url,
			r == -ENOENT ? "redis-server is not installed" : strerror(-r));
		return 1;
	}
	if (o->json) {
		bench_json_begin(stdout, "tiers");
		print_remote(&rr, 1);
		printf("}\n");
	} else {
		print_remote(&rr, 0);
	}
	return 0;
}

static int tiers_main(int argc, char **argv)
{
	struct opts o = {
		.file_mib = 1024, .dram_mib = 256, .seconds = 0.5, .reps = 5, .stress_cap_mib = 256
	};
	struct nvme_row rows[NSIZES * NBATCH];
	struct dram_res dr = { 0 };
	struct mig_res mr = { 0 };
	static struct remote_res rr;
	int have_remote = 0;
	char dir[PATH_MAX], path[PATH_MAX + 32];
	double crc_hw, crc_sw, sg_iops = 0, sg_raw = 0;
	unsigned nrows = 0, i;
	const char *base;
	int r;

	if (parse(argc, argv, &o) < 0) {
		usage(stderr);
		return 2;
	}
	base = o.dir ? o.dir : getenv("TMPDIR");
	if (!base || !*base)
		base = "/var/tmp";
	snprintf(dir, sizeof(dir), "%s/icebench-tiers-XXXXXX", base);
	if (!mkdtemp(dir)) {
		fprintf(stderr, "icebench tiers: cannot create a directory under %s: %s\n", base,
			strerror(errno));
		return 1;
	}
	if (o.stress) {
		r = run_stress(&o, dir);
		rmdir(dir);
		return r;
	}
	if (o.remote_only)
		return run_remote_only(&o, dir);
	bench_crc(&crc_hw, &crc_sw);
	r = bench_dram(&o, &dr);
	if (r < 0) {
		fprintf(stderr, "icebench tiers: dram: %s\n", strerror(-r));
		goto out;
	}
	snprintf(path, sizeof(path), "%s/nvme.dat", dir);
	r = bench_nvme(&o, path, rows, &nrows, &sg_iops, &sg_raw);
	unlink(path);
	if (r < 0) {
		fprintf(stderr, "icebench tiers: nvme: %s%s\n", strerror(-r),
			r == -EINVAL ? " (does this filesystem support O_DIRECT? try --dir)" : "");
		goto out;
	}
	snprintf(path, sizeof(path), "%s/migrate.dat", dir);
	r = bench_migrate(&o, path, &mr);
	/* after the tiers closed (fio overwrites the pages), 128 KiB writes 32 deep */
	mr.fio_write_gbps = r == 0 && !o.no_fio ? fio_seqwrite(path, mr.bytes, 128 << 10, 32) : -1;
	unlink(path);
	if (r < 0) {
		fprintf(stderr, "icebench tiers: migrate: %s\n", strerror(-r));
		goto out;
	}
	if (!o.no_remote) {
		r = bench_remote(o.remote_url, dir, o.seconds, o.reps, &rr);
		if (r == -ENOENT && !o.remote_url)
			fprintf(stderr,
				"icebench tiers: redis: skipped (redis-server not installed)\n");
		else if (r < 0)
			fprintf(stderr, "icebench tiers: redis %s: %s\n", rr.url, strerror(-r));
		have_remote = r == 0;
	}
	if (o.json) {
		bench_json_begin(stdout, "tiers");
		printf(",\"crc32c\":{\"hw_gbps\":%.3f,\"sw_gbps\":%.3f}", crc_hw, crc_sw);
		printf(",\"dram\":{\"page_bytes\":8192,\"batch\":256,\"put_gbps\":%.3f,"
		       "\"get_gbps\":%.3f,\"memcpy_gbps\":%.3f}",
		       dr.put_gbps, dr.get_gbps, dr.memcpy_gbps);
		printf(",\"nvme_randread\":[");
		for (i = 0; i < nrows; i++) {
			unsigned k;

			printf("%s{\"block_bytes\":%u,\"batch\":%u,\"iops\":%.0f,\"gbps\":%.3f,"
			       "\"batch_p50_us\":%.1f,\"batch_p99_us\":%.1f,\"fio_iops\":%.0f,"
			       "\"ratio\":%.3f,\"runs_iops\":[",
			       i ? "," : "", rows[i].bs, rows[i].batch, rows[i].iops, rows[i].gbps,
			       rows[i].p50_us, rows[i].p99_us, rows[i].fio_iops, rows[i].ratio);
			for (k = 0; k < rows[i].reps; k++)
				printf("%s%.0f", k ? "," : "", rows[i].ours[k]);
			printf("],\"runs_fio_iops\":[");
			for (k = 0; k < rows[i].nfio; k++)
				printf("%s%.0f", k ? "," : "", rows[i].fio[k]);
			printf("]}");
		}
		printf("],\"store_get_nvme\":{\"page_bytes\":8192,\"batch\":64,\"iops\":%.0f,"
		       "\"raw_tier_iops\":%.0f}",
		       sg_iops, sg_raw);
		printf(",\"migrate\":{\"bytes\":%" PRIu64
		       ",\"demote_gbps\":%.3f,\"promote_gbps\":%.3f,"
		       "\"demote_clean_gbps\":%.3f,\"fio_seqwrite_gbps\":%.3f,"
		       "\"demote_over_fio\":%.3f}",
		       mr.bytes, mr.demote_gbps, mr.promote_gbps, mr.demote_clean_gbps,
		       mr.fio_write_gbps,
		       mr.fio_write_gbps > 0 ? mr.demote_gbps / mr.fio_write_gbps : -1.0);
		if (have_remote)
			print_remote(&rr, 1);
		printf("}\n");
	} else {
		printf("crc32c: %.2f GB/s (SSE4.2) vs %.2f GB/s table-driven\n", crc_hw, crc_sw);
		printf("dram store, 8 KiB pages, batch 256: put %.2f GB/s, get %.2f GB/s "
		       "(checksummed) vs memcpy %.2f GB/s\n",
		       dr.put_gbps, dr.get_gbps, dr.memcpy_gbps);
		printf("nvme random reads (io_uring, O_DIRECT, %" PRIu64
		       " MiB file) vs fio randread "
		       "(same file, bs, iodepth;\n  medians of %u alternating runs of %.1f s, ratio = median of per-run ratios)\n",
		       o.file_mib, o.reps, o.seconds);
		printf("  %6s %5s %10s %7s %9s %9s %10s %6s\n", "block", "batch", "IOPS", "GB/s",
		       "p50 us", "p99 us", "fio IOPS", "ratio");
		for (i = 0; i < nrows; i++)
			printf("  %4u K %5u %10.0f %7.3f %9.1f %9.1f %10.0f %6.2f\n",
			       rows[i].bs >> 10, rows[i].batch, rows[i].iops, rows[i].gbps,
			       rows[i].p50_us, rows[i].p99_us, rows[i].fio_iops, rows[i].ratio);
		printf("store_get from nvme, 8 KiB, batch 64 (lookup + CRC check): %.0f IOPS "
		       "(%.2f of the raw tier)\n",
		       sg_iops, sg_raw > 0 ? sg_iops / sg_raw : 0);
		printf("migrate %" PRIu64 " MiB: demote %.2f GB/s, promote %.2f GB/s, "
		       "demote of clean pages %.2f GB/s\n",
		       mr.bytes >> 20, mr.demote_gbps, mr.promote_gbps, mr.demote_clean_gbps);
		if (mr.fio_write_gbps > 0)
			printf("  fio sequential write of the same bytes to the same file (128 KiB, "
			       "iodepth 32): %.2f GB/s; demote is %.2f of it\n",
			       mr.fio_write_gbps, mr.demote_gbps / mr.fio_write_gbps);
		if (have_remote)
			print_remote(&rr, 0);
	}
	r = 0;
out:
	rmdir(dir);
	return r < 0 ? 1 : 0;
}

BENCH_COMMAND(tiers_cmd, "tiers",
	      "page store: dram put/get, nvme reads vs fio, migration, --stress", tiers_main)
