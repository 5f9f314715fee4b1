/*
 * Helpers for the runtime tests: deterministic K/V with each token's position written into its
 * V row (so fetched pages say which tokens they hold), a brute-force reference for select, and
 * a private icecached on a temporary socket.
 */
#ifndef ICE_TEST_RT_UTIL_H
#define ICE_TEST_RT_UTIL_H

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "icecache/icecache.h"
#include "ref_rest.h"

#define PT ICE_PAGE_TOKENS

static inline uint64_t rt_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static inline float rt_frand(uint64_t *s)
{
	return (float)(rt_rand(s) % 20001) / 10000.0f - 1.0f;
}

/* K and V for `n` tokens starting at position `pos0`, layout [kv_heads][n][d] float32. V's first
 * element is the position, its second the head, so a fetched row names its token. */
static inline void rt_make_kv(uint64_t seed, uint32_t hkv, uint32_t d, uint32_t pos0, uint32_t n,
			      float *k, float *v)
{
	uint32_t h, t, i;

	for (h = 0; h < hkv; h++)
		for (t = 0; t < n; t++) {
			uint64_t s = seed * 1000003ull + (uint64_t)(pos0 + t) * 131 + h + 1;
			float *kr = k + ((size_t)h * n + t) * d, *vr = v + ((size_t)h * n + t) * d;

			for (i = 0; i < d; i++) {
				kr[i] = rt_frand(&s);
				vr[i] = rt_frand(&s);
			}
			vr[0] = (float)(pos0 + t);
			vr[1] = (float)h;
		}
}

/* One page's rows as fetched: K[PT][d] then V[PT][d] float32. */
struct rt_page {
	uint32_t id, fill;
	float *k; /* points into a fetch buffer */
};

/*
 * Reference selection for one KV head over `np` pages: each of the g query heads ranks the
 * pages by their best token's q.k, or with mass_scale > 0 by their soft maximum
 * log(sum exp(mass_scale * q.k)) / mass_scale (ties: lower id first). With bias NULL the rankings merge
 * round-robin into k distinct pages; else every page scores max_j(best q_j.k - bias[j]) and the
 * k best are taken (ties: lower id first). Writes page ids into out; returns the count.
 */
static inline uint32_t rt_ref_select(const struct rt_page *pg, uint32_t np, const float *q,
				     uint32_t g, uint32_t d, uint32_t k, const double *bias,
				     double mass_scale, uint32_t *out)
{
	double *sc = calloc((size_t)g * np, sizeof(double));
	uint32_t *rank = calloc((size_t)g * np, sizeof(uint32_t));
	unsigned char *seen = calloc(np ? np : 1, 1);
	uint32_t j, p, t, i, r, n = 0;

	for (j = 0; j < g; j++) {
		for (p = 0; p < np; p++) {
			double best = -1e300;

			double sum = 0;

			for (t = 0; t < pg[p].fill; t++) {
				double s = 0;

				for (i = 0; i < d; i++)
					s += (double)q[j * d + i] * pg[p].k[t * d + i];
				if (s > best)
					best = s;
			}
			if (mass_scale > 0) {
				for (t = 0; t < pg[p].fill; t++) {
					double s = 0;

					for (i = 0; i < d; i++)
						s += (double)q[j * d + i] * pg[p].k[t * d + i];
					sum += exp((s - best) * mass_scale);
				}
				best += log(sum) / mass_scale;
			}
			sc[j * np + p] = best;
			rank[j * np + p] = p;
		}
		/* selection sort, fine at test sizes */
		for (p = 0; p < np; p++)
			for (t = p + 1; t < np; t++) {
				uint32_t a = rank[j * np + p], b = rank[j * np + t];

				if (sc[j * np + b] > sc[j * np + a] ||
				    (sc[j * np + b] == sc[j * np + a] && pg[b].id < pg[a].id)) {
					rank[j * np + p] = b;
					rank[j * np + t] = a;
				}
			}
	}
	if (k > np)
		k = np;
	if (bias) {
		for (; n < k; n++) {
			double best = -1e300;
			uint32_t bp = 0;

			for (p = 0; p < np; p++) {
				double a = -1e300;

				if (seen[p])
					continue;
				for (j = 0; j < g; j++)
					if (sc[j * np + p] - bias[j] > a)
						a = sc[j * np + p] - bias[j];
				if (a > best || (a == best && pg[p].id < pg[bp].id)) {
					best = a;
					bp = p;
				}
			}
			seen[bp] = 1;
			out[n] = pg[bp].id;
		}
	}
	for (r = 0; r < np && n < k; r++)
		for (j = 0; j < g && n < k; j++) {
			p = rank[j * np + r];
			if (!seen[p]) {
				seen[p] = 1;
				out[n++] = pg[p].id;
			}
		}
	free(sc);
	free(rank);
	free(seen);
	return n;
}

/*
 * A token's weight for the engine's token choice: max_j (q_j.k - bias[j]) (bias NULL: 0), for
 * the fill rows of one page.
 */
static inline void rt_ref_token_weights(const struct rt_page *pg, const float *q, uint32_t g,
					uint32_t d, const double *bias, double *w)
{
	uint32_t t, j, i;

	for (t = 0; t < pg->fill; t++) {
		w[t] = -1e300;
		for (j = 0; j < g; j++) {
			double x = 0;

			for (i = 0; i < d; i++)
				x += (double)q[j * d + i] * pg->k[t * d + i];
			x -= bias ? bias[j] : 0;
			w[t] = x > w[t] ? x : w[t];
		}
	}
}

/*
 * Checks one KV head's rest term (ice_select_rest) against double precision: every page of
 * pg[0..np) that is not in the table (want[j] with wmask[j] != 0 is; wmask NULL: every page
 * is, a dense layer) counts fill * exp(q . mean key / sqrt(d)) with its mean V.
 */
struct rt_pages {
	const struct rt_page *pg;
	uint32_t d;
};

static inline const float *rt_page_row(const void *ctx, uint32_t p, uint32_t t, int v)
{
	const struct rt_pages *r = ctx;

	return r->pg[p].k + (size_t)((v ? PT : 0) + t) * r->d;
}

static inline void rt_check_rest(const struct rt_page *pg, uint32_t np, const uint16_t *wmask,
				 const uint32_t *want, uint32_t nwant, const float *q, uint32_t g,
				 uint32_t d, const float *rest)
{
	unsigned char *in = calloc(np ? np : 1, 1);
	uint32_t *fill = calloc(np ? np : 1, sizeof(*fill));
	struct rt_pages rows = { pg, d };
	uint32_t j, p;

	ck_assert(in && fill);
	for (j = 0; wmask && j < nwant; j++)
		in[want[j]] = wmask[j] != 0;
	for (p = 0; p < np; p++) {
		in[p] |= !wmask;
		fill[p] = pg[p].fill;
	}
	for (j = 0; j < g; j++)
		ref_rest_check(np, in, fill, rt_page_row, &rows, q + (size_t)j * d, d,
			       1 / sqrt((double)d), 1e-3, rest + (size_t)j * (d + 1));
	free(fill);
	free(in);
}

/*
 * The offsets the engine merges a group by (group_merge = 1): bias[j] = sqrt(d) *
 * logsumexp(q_j.k / sqrt(d)) over the n key rows kr[n][d] the head attends anyway.
 */
static inline void rt_ref_bias(const float *kr, uint32_t n, const float *q, uint32_t g, uint32_t d,
			       double *bias)
{
	double sc = 1.0 / sqrt((double)d);
	uint32_t j, t, i;

	for (j = 0; j < g; j++) {
		double m = -1e300, sum = 0;

		for (t = 0; t < n; t++) {
			double x = 0;

			for (i = 0; i < d; i++)
				x += (double)q[j * d + i] * kr[(size_t)t * d + i];
			x *= sc;
			m = x > m ? x : m;
		}
		for (t = 0; t < n; t++) {
			double x = 0;

			for (i = 0; i < d; i++)
				x += (double)q[j * d + i] * kr[(size_t)t * d + i];
			sum += exp(x * sc - m);
		}
		bias[j] = (m + log(sum)) / sc;
	}
}

/* Starts $ICE_BUILD_ROOT/runtime/icecached on dir/icecached.sock; waits (up to 30 s) until it
 * answers. extra: NULL or "key=value" settings separated by spaces (at most 8). */
static inline pid_t rt_daemon_start(const char *dir, char *sock, size_t cap, const char *extra)
{
	const char *root = getenv("ICE_BUILD_ROOT");
	char bin[512];
	pid_t pid;
	int i;

	snprintf(bin, sizeof(bin), "%s/runtime/icecached", root ? root : "build");
	snprintf(sock, cap, "%s/icecached.sock", dir);
	pid = fork();
	if (pid == 0) {
		char *argv[24], *sets = extra ? strdup(extra) : NULL, *save = NULL, *kv;
		int a = 0;

		argv[a++] = bin;
		argv[a++] = (char *)"--socket";
		argv[a++] = sock;
		/* Test data is small: a small DRAM tier starts fast on a loaded machine. */
		argv[a++] = (char *)"--set";
		argv[a++] = (char *)"dram_bytes=67108864";
		for (kv = sets ? strtok_r(sets, " ", &save) : NULL; kv && a < 21;
		     kv = strtok_r(NULL, " ", &save)) {
			argv[a++] = (char *)"--set";
			argv[a++] = kv;
		}
		argv[a] = NULL;
		execv(bin, argv);
		_exit(127);
	}
	for (i = 0; i < 3000; i++) {
		struct ice_ctx *c;
		int st;

		if (ice_connect(sock, &c) == 0) {
			ice_close(c);
			return pid;
		}
		if (waitpid(pid, &st, WNOHANG) == pid)
			return -1;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

/* SIGTERM and wait; returns the exit status (or -1 when it had to be killed). */
static inline int rt_daemon_stop(pid_t pid)
{
	int st, i;

	kill(pid, SIGTERM);
	for (i = 0; i < 1000; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

static inline char *rt_tmpdir(void)
{
	static char d[64];

	snprintf(d, sizeof(d), "/tmp/icert-XXXXXX");
	return mkdtemp(d);
}

/* path of a built program: $ICE_BUILD_ROOT/<rel> */
static inline void rt_bin(const char *rel, char *buf, size_t cap)
{
	const char *root = getenv("ICE_BUILD_ROOT");

	snprintf(buf, cap, "%s/%s", root ? root : "build", rel);
}

/*
 * Runs argv[0] with stdout and stderr into outpath, waits up to ms. Returns its exit status
 * (128 + signal when killed by one), or -1 when it was still running at the deadline (it is
 * then SIGKILLed and reaped). *ret_ms, when not NULL, gets how long it ran.
 */
static inline int rt_run(char *const argv[], const char *outpath, int ms, long *ret_ms)
{
	struct timespec t0, t1;
	pid_t pid;
	int st, i;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	pid = fork();
	if (pid == 0) {
		int fd = open(outpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

		if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(126);
		execv(argv[0], argv);
		_exit(127);
	}
	for (i = 0; i < ms; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid) {
			clock_gettime(CLOCK_MONOTONIC, &t1);
			if (ret_ms)
				*ret_ms = (t1.tv_sec - t0.tv_sec) * 1000 +
					  (t1.tv_nsec - t0.tv_nsec) / 1000000;
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		}
		usleep(1000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	if (ret_ms)
		*ret_ms = ms;
	return -1;
}

/* The whole of a small file, NUL-terminated, in a static buffer ("" when unreadable). */
static inline const char *rt_slurp(const char *path)
{
	static char buf[16384];
	ssize_t n = -1;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd >= 0) {
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
	}
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

/* A bare unix-socket connection to path (no hello): the fd, or -errno. */
static inline int rt_raw_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		close(fd);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

#endif
