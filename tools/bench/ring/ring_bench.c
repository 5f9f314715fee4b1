/*
 * icebench ring: round trip of a no-op and of a select on a small sequence through icecached's
 * shared-memory ring, for 1..N clients at once, next to a unix-socket round trip (64-byte
 * request, 32-byte answer, one server thread per client: the same shape as the daemon) measured
 * in the same run. Starts its own private daemon (a forked process) unless --socket is given.
 *   icebench ring [--clients N] [--iters N] [--socket PATH] [--json]
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "clock.h"
#include "config.h"
#include "hist.h"
#include "icecache/icecache.h"
#include "server.h"

enum mode { M_RING_NOOP, M_RING_SELECT, M_UNIX, M_EMBEDDED_NOOP, M__COUNT };

static const char *const mode_name[] = { "ring-noop", "ring-select", "unix-socket",
					 "embedded-noop" };

struct worker {
	enum mode mode;
	const char *sock;
	int fd; /* unix baseline */
	long iters;
	struct hist h;
	int err;
	double secs;
	pthread_barrier_t *bar;
};

static const struct ice_model_shape shape = { 1, 4, 2, 64, ICE_DTYPE_F32 };
static const struct ice_budget budget = { 16, 16, 64, 0 };
#define SEL_TOKENS 1024

static int prepare_select(struct ice_ctx *c, uint32_t *ret_seq)
{
	size_t n = (size_t)shape.kv_heads * SEL_TOKENS * shape.head_dim;
	float *k = malloc(n * sizeof(float)), *v = malloc(n * sizeof(float));
	uint32_t seq;
	size_t i;
	int err;

	if (!k || !v) {
		free(k);
		free(v);
		return -ENOMEM;
	}
	srand(7);
	for (i = 0; i < n; i++) {
		k[i] = (float)rand() / RAND_MAX - 0.5f;
		v[i] = (float)rand() / RAND_MAX - 0.5f;
	}
	err = ice_seq_open(c, &shape, &budget, &seq);
	if (!err)
		err = ice_append(c, seq, 0, SEL_TOKENS, k, v);
	free(k);
	free(v);
	if (!err)
		*ret_seq = seq;
	return err;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct ice_ctx *c = NULL;
	struct ice_page_ref refs[64];
	float q[4 * 64];
	char req[64] = { 1 }, ans[32];
	uint32_t seq = 0;
	uint64_t t0, start;
	long i, warm = w->iters / 10 + 10;
	int err = 0;

	for (i = 0; i < 4 * 64; i++)
		q[i] = (float)((i * 37) % 17) / 17.0f - 0.5f;
	hist_init(&w->h);
	if (w->mode == M_RING_NOOP || w->mode == M_RING_SELECT)
		err = ice_connect(w->sock, &c);
	else if (w->mode == M_EMBEDDED_NOOP)
		err = ice_open_embedded(NULL, &c);
	if (!err && w->mode == M_RING_SELECT)
		err = prepare_select(c, &seq);
	pthread_barrier_wait(w->bar);
	start = clock_now_ns();
	for (i = -warm; !err && i < w->iters; i++) {
		if (i == 0)
			start = clock_now_ns();
		t0 = clock_now_ns();
		switch (w->mode) {
		case M_RING_NOOP:
		case M_EMBEDDED_NOOP:
			err = ice_noop(c);
			break;
		case M_RING_SELECT:
			err = ice_select(c, seq, 0, q, refs, 64, NULL);
			err = err < 0 ? err : 0;
			break;
		default:
			if (write(w->fd, req, sizeof(req)) != sizeof(req) ||
			    read(w->fd, ans, sizeof(ans)) != sizeof(ans))
				err = -EIO;
			break;
		}
		if (i >= 0)
			hist_add(&w->h, clock_now_ns() - t0);
	}
	w->secs = (double)(clock_now_ns() - start) / 1e9;
	w->err = err;
	ice_close(c);
	return NULL;
}

static void *echo_main(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char req[64], ans[32] = { 2 };

	while (read(fd, req, sizeof(req)) == sizeof(req))
		if (write(fd, ans, sizeof(ans)) != sizeof(ans))
			break;
	return NULL;
}

/* The unix-socket baseline's server: a process with one echo thread per client. */
static pid_t start_echo(int nclients, int *client_fds)
{
	int sv[64][2], i;
	pid_t pid;

	for (i = 0; i < nclients; i++)
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv[i]) < 0)
			return -1;
	pid = fork();
	if (pid == 0) {
		pthread_t t[64];

		for (i = 0; i < nclients; i++) {
			close(sv[i][0]);
			pthread_create(&t[i], NULL, echo_main, (void *)(intptr_t)sv[i][1]);
		}
		for (i = 0; i < nclients; i++)
			pthread_join(t[i], NULL);
		_exit(0);
	}
	for (i = 0; i < nclients; i++) {
		close(sv[i][1]);
		client_fds[i] = sv[i][0];
	}
	return pid;
}

static pid_t start_daemon(const char *path)
{
	struct rt_config cfg;
	pid_t pid;

	config_defaults(&cfg);
	snprintf(cfg.socket_path, sizeof(cfg.socket_path), "%s", path);
	cfg.arena_bytes = 4u << 20;
	if (getenv("ICECACHE_SPIN_NS"))
		cfg.spin_ns = strtoull(getenv("ICECACHE_SPIN_NS"), NULL, 10);
	pid = server_fork(&cfg);
	return pid < 0 ? -1 : pid;
}

struct result {
	enum mode mode;
	int clients;
	uint64_t p50, p99, mean;
	double rps;
};

static int run_one(enum mode m, int nclients, long iters, const char *sock, struct result *r)
{
	pthread_barrier_t bar;
	struct worker w[64];
	pthread_t t[64];
	int fds[64], i, err = 0;
	pid_t echo = 0;
	struct hist all;
	double secs = 0, total = 0;

	if (m == M_UNIX) {
		echo = start_echo(nclients, fds);
		if (echo < 0)
			return -errno;
	}
	pthread_barrier_init(&bar, NULL, (unsigned)nclients);
	for (i = 0; i < nclients; i++) {
		w[i] = (struct worker){ .mode = m,
					.sock = sock,
					.fd = m == M_UNIX ? fds[i] : -1,
					.iters = iters,
					.bar = &bar };
		pthread_create(&t[i], NULL, worker_main, &w[i]);
	}
	hist_init(&all);
	for (i = 0; i < nclients; i++) {
		pthread_join(t[i], NULL);
		if (w[i].err)
			err = w[i].err;
		hist_merge(&all, &w[i].h);
		if (w[i].secs > secs)
			secs = w[i].secs;
		total += (double)w[i].h.count;
		if (m == M_UNIX)
			close(fds[i]);
	}
	pthread_barrier_destroy(&bar);
	if (echo > 0)
		waitpid(echo, NULL, 0);
	r->mode = m;
	r->clients = nclients;
	r->p50 = hist_quantile(&all, 0.5);
	r->p99 = hist_quantile(&all, 0.99);
	r->mean = all.count ? all.sum / all.count : 0;
	r->rps = secs > 0 ? total / secs : 0;
	return err;
}

static int ring_main(int argc, char **argv)
{
	const char *sock = NULL;
	char path[108], dir[64] = "/tmp/icebench-ring-XXXXXX";
	int maxc = 4, json = 0, i, c, nres = 0, err = 0;
	long iters = 20000;
	struct result res[4 * 64];
	pid_t daemon = 0;
	enum mode m;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = 1;
		else if (!strcmp(argv[i], "--clients") && i + 1 < argc)
			maxc = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--iters") && i + 1 < argc)
			iters = atol(argv[++i]);
		else if (!strcmp(argv[i], "--socket") && i + 1 < argc)
			sock = argv[++i];
		else {
			fprintf(stderr, "usage: icebench ring [--clients N] [--iters N] "
					"[--socket PATH] [--json]\n");
			return 2;
		}
	}
	if (maxc < 1 || maxc > 64 || iters < 1)
		return 2;
	if (!sock) {
		if (!mkdtemp(dir))
			return 1;
		snprintf(path, sizeof(path), "%s/icecached.sock", dir);
		daemon = start_daemon(path);
		for (i = 0; i < 200; i++) {
			struct ice_ctx *c0;

			if (!ice_connect(path, &c0)) {
				ice_close(c0);
				break;
			}
			usleep(10000);
		}
		sock = path;
	}
	for (c = 1; c <= maxc && !err; c++)
		for (m = 0; m < M__COUNT && !err; m++) {
			err = run_one(m, c, iters, sock, &res[nres]);
			nres++;
		}
	if (daemon > 0) {
		kill(daemon, SIGTERM);
		waitpid(daemon, NULL, 0);
		rmdir(dir);
	}
	if (err) {
		fprintf(stderr, "icebench ring: %s\n", strerror(-err));
		return 1;
	}
	if (json) {
		bench_json_begin(stdout, "ring");
		printf(",\"iters\":%ld,\"results\":[", iters);
		for (i = 0; i < nres; i++)
			printf("%s{\"mode\":\"%s\",\"clients\":%d,\"p50_ns\":%llu,\"p99_ns\":%llu,"
			       "\"mean_ns\":%llu,\"req_per_s\":%.0f}",
			       i ? "," : "", mode_name[res[i].mode], res[i].clients,
			       (unsigned long long)res[i].p50, (unsigned long long)res[i].p99,
			       (unsigned long long)res[i].mean, res[i].rps);
		printf("]}\n");
		return 0;
	}
	printf("%-14s %7s %10s %10s %10s %12s\n", "MODE", "CLIENTS", "P50_US", "P99_US", "MEAN_US",
	       "REQ/S");
	for (i = 0; i < nres; i++)
		printf("%-14s %7d %10.2f %10.2f %10.2f %12.0f\n", mode_name[res[i].mode],
		       res[i].clients, (double)res[i].p50 / 1e3, (double)res[i].p99 / 1e3,
		       (double)res[i].mean / 1e3, res[i].rps);
	printf("(hist quantiles are bucket upper edges, within 12.5%%; %ld requests per client)\n",
	       iters);
	return 0;
}

BENCH_COMMAND(ring_cmd, "ring",
	      "shared-memory ring round trip (noop, select) vs unix socket, 1..N clients",
	      ring_main)
