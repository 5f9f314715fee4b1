/* icebench tiers: the Redis tier against redis-benchmark on the same server (bench_remote.h). */
#include "bench_remote.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "redis.h"
#include "redis_srv.h"
#include "store.h"
#include "tier.h"

#define PAGE 8192u
#define NPAGES 4096u

static const unsigned rbatches[REMOTE_NBATCH] = { 1, 16, 64, 256 };

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double med(const double *v, unsigned n)
{
	double t[REMOTE_MAX_REPS];

	if (!n)
		return 0;
	memcpy(t, v, n * sizeof(*v));
	qsort(t, n, sizeof(*t), cmp_dbl);
	return n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

static uint64_t rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* redis-benchmark's requests/s for one test (SET or GET) of PAGE-byte values, -P pipeline,
 * one connection; -1 when it is not there or says nothing we can read. */
static double rb_run(const char *host, int port, const char *test, unsigned pipeline, unsigned n)
{
	char cmd[512], want[16], *out = NULL, *p;
	size_t cap = 0, len = 0;
	double rps = -1;
	FILE *f;

	snprintf(cmd, sizeof(cmd),
		 "redis-benchmark -h %s -p %d -t %s -d %u -P %u -c 1 -n %u --csv 2>/dev/null", host,
		 port, test, PAGE, pipeline, n);
	f = popen(cmd, "r");
	if (!f)
		return -1;
	for (;;) {
		size_t k;

		if (buf_grow(&out, &cap, len + 4096, 1))
			break;
		k = fread(out + len, 1, cap - len - 1, f);
		if (!k)
			break;
		len += k;
	}
	pclose(f);
	if (!out)
		return -1;
	out[len] = '\0';
	snprintf(want, sizeof(want), "\"%s\",\"", test[0] == 's' ? "SET" : "GET");
	p = strstr(out, want);
	if (p)
		rps = strtod(p + strlen(want), NULL);
	free(out);
	return rps > 0 ? rps : -1;
}

static int first_host_port(const char *url, char *host, size_t cap, int *port)
{
	const char *p = !strncmp(url, "redis://", 8) ? url + 8 : url, *c = strchr(p, ':');

	if (!c || (size_t)(c - p) >= cap)
		return -EINVAL;
	memcpy(host, p, (size_t)(c - p));
	host[c - p] = '\0';
	*port = atoi(c + 1);
	return *port > 0 ? 0 : -EINVAL;
}

/* Pages/s of `seconds` of batches of B through the tier: writes over consecutive slots, or
 * reads of random written ones. */
static double tier_rate(struct tier *t, uint8_t *buf, unsigned B, int write, double seconds,
			uint64_t *x, int *ret_err)
{
	struct tier_io io[256];
	uint64_t t0 = clock_now_ns(), end = t0 + (uint64_t)(seconds * 1e9), n = 0, next = 0;
	unsigned i;

	while (clock_now_ns() < end) {
		for (i = 0; i < B; i++) {
			uint64_t s = write ? next++ % NPAGES : rnd(x) % NPAGES;

			io[i] = (struct tier_io){
				.slot = s, .buf = buf + (size_t)i * PAGE, .len = PAGE, .cap = PAGE
			};
		}
		*ret_err = write ? tier_write(t, io, B) : tier_read(t, io, B);
		if (*ret_err < 0)
			return 0;
		n += B;
	}
	return (double)n / ((double)(clock_now_ns() - t0) / 1e9);
}

static int store_gets(struct tier *t, uint8_t *buf, double seconds, double *ret_pps)
{
	struct store_config sc = { .slot_size = PAGE };
	struct store_page pg[256];
	struct store *s = NULL;
	uint64_t k, x = 99, got = 0, t0, end;
	unsigned i;
	int r;

	r = store_open(&sc, &t, 1, &s);
	for (k = 0; r == 0 && k < NPAGES / 2; k += 256) {
		for (i = 0; i < 256; i++)
			pg[i] = (struct store_page){ .key = { 3, 0, 0, (uint32_t)(k + i) },
						     .buf = buf + (size_t)i * PAGE,
						     .len = PAGE,
						     .fill = 16,
						     .version = 1 };
		r = store_put(s, pg, 256, 0);
	}
	t0 = clock_now_ns();
	end = t0 + (uint64_t)(seconds * 1e9);
	while (r == 0 && clock_now_ns() < end) {
		for (i = 0; i < 256; i++)
			pg[i] = (struct store_page){ .key = { 3, 0, 0,
							      (uint32_t)(rnd(&x) % (NPAGES / 2)) },
						     .buf = buf + (size_t)i * PAGE,
						     .len = PAGE };
		r = store_get(s, pg, 256);
		got += 256;
	}
	*ret_pps = (double)got / ((double)(clock_now_ns() - t0) / 1e9);
	store_close(s);
	return r;
}

int bench_remote(const char *url, const char *dir, double seconds, unsigned reps,
		 struct remote_res *res)
{
	struct tier_config tc = { .capacity_bytes = (uint64_t)NPAGES * PAGE, .slot_size = PAGE };
	struct rsrv srv = { 0 };
	struct tier *t = NULL;
	uint8_t *buf = NULL;
	char host[64];
	unsigned bi, rep;
	uint64_t x = 0x9E3779B97F4A7C15ull;
	int port, r;

	memset(res, 0, sizeof(*res));
	if (reps > REMOTE_MAX_REPS)
		reps = REMOTE_MAX_REPS;
	if (!url) {
		if (!rs_installed())
			return -ENOENT;
		if (rs_start_any(&srv, dir, NULL) < 0)
			return -EIO;
		snprintf(res->url, sizeof(res->url), "redis://127.0.0.1:%d", srv.port);
		res->private_server = 1;
	} else {
		snprintf(res->url, sizeof(res->url), "%s", url);
	}
	r = first_host_port(res->url, host, sizeof(host), &port);
	if (r < 0)
		goto out;
	tc.path = res->url;
	r = tier_open(&redis_tier_ops, &tc, &t);
	if (r < 0)
		goto out;
	if (posix_memalign((void **)&buf, 4096, 256 * (size_t)PAGE)) {
		r = -ENOMEM;
		goto out;
	}
	memset(buf, 0x5a, 256 * (size_t)PAGE);
	res->page_bytes = PAGE;
	res->pages = NPAGES;
	res->reps = reps;
	res->seconds = seconds;
	res->have_rb = 1;
	/* every slot written once, so reads find data */
	for (rep = 0; r == 0 && rep < NPAGES / 256; rep++) {
		struct tier_io io[256];

		for (bi = 0; bi < 256; bi++)
			io[bi] = (struct tier_io){ .slot = rep * 256 + bi,
						   .buf = buf + (size_t)bi * PAGE,
						   .len = PAGE,
						   .cap = PAGE };
		r = tier_write(t, io, 256);
	}
	for (bi = 0; r == 0 && bi < REMOTE_NBATCH; bi++) {
		struct remote_row *row = &res->rows[res->nrows++];
		double w[REMOTE_MAX_REPS], rd[REMOTE_MAX_REPS], s[REMOTE_MAX_REPS],
			g[REMOTE_MAX_REPS], rw[REMOTE_MAX_REPS], rr[REMOTE_MAX_REPS];
		unsigned B = rbatches[bi], nrb = 0;

		row->batch = B;
		/* Ours and redis-benchmark's alternate; each pair's ratio, then the median. */
		for (rep = 0; rep < reps && r == 0; rep++) {
			w[rep] = tier_rate(t, buf, B, 1, seconds, &x, &r);
			rd[rep] = r == 0 ? tier_rate(t, buf, B, 0, seconds, &x, &r) : 0;
			if (r < 0)
				break;
			/* about as many requests as ours did in the same time */
			s[nrb] = rb_run(host, port, "set", B, (unsigned)(w[rep] * seconds) + 100);
			g[nrb] = rb_run(host, port, "get", B, (unsigned)(rd[rep] * seconds) + 100);
			if (s[nrb] > 0 && g[nrb] > 0) {
				rw[nrb] = w[rep] / s[nrb];
				rr[nrb] = rd[rep] / g[nrb];
				nrb++;
			} else {
				res->have_rb = 0;
			}
		}
		if (r < 0)
			break;
		row->write_pps = med(w, reps);
		row->read_pps = med(rd, reps);
		row->rb_set_rps = nrb ? med(s, nrb) : -1;
		row->rb_get_rps = nrb ? med(g, nrb) : -1;
		row->write_ratio = nrb ? med(rw, nrb) : 0;
		row->read_ratio = nrb ? med(rr, nrb) : 0;
	}
	if (r == 0)
		r = store_gets(t, buf, seconds, &res->store_get_pps);
out:
	free(buf);
	tier_close(t);
	rs_stop(&srv);
	return r;
}
