/*
 * icebench stress: the engine path end to end, as one command. Starts a private icecached (a
 * forked process, configured with the same key=value settings as `icecached --set`) unless
 * --socket names a running one; C clients (one thread and one context each) append S sequences
 * of N tokens, every layer of each chunk, from a deterministic generator; then each sequence
 * selects one query per layer and fetches the selected pages, and every fetched row is checked
 * byte for byte against the generator. docs/STRESS.md describes the options and the JSON.
 *
 * Refs carry no token positions, so each row carries its own: channels 0..5 hold the position
 * as six nibbles (n / 8, exact in f16 and bf16), and the rest of the row is a hash of (seed,
 * seq, layer, head, position, channel). A row is good when its decoded position is in range,
 * appears once in its page, follows the row before it in a sink or window page (an index page
 * holds a cluster of keys, not a run of positions), and the whole K and V rows equal the
 * generator's for that position; rows past a page's fill must be zero.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "buf.h"
#include "clock.h"
#include "config.h"
#include "dtype.h"
#include "icecache/icecache.h"
#include "server.h"

#define POS_NIBBLES 6 /* positions below 2^24 */
#define MAX_CLIENTS 64
#define PROGRESS_NS 2000000000ull

struct opts {
	struct ice_model_shape shape;
	const char *shape_name;
	int clients, seqs, json, prefix;
	uint32_t tokens, chunk;
	uint64_t dram_mib, nvme_gib, host_mib, remote_gib;
	const char *nvme, *sock, *remote;
};

static const struct ice_budget budget = { 64, 256, 2048, 0 };
static const uint64_t seed = 0x1ceca5e5eedull;

struct worker {
	const struct opts *o;
	const char *sock;
	int id;
	uint64_t *tokens_done; /* shared, atomic */
	uint64_t verified, bad, pages;
	uint64_t append_end_ns;    /* when its last append returned */
	uint64_t save_ns, open_ns; /* --prefix: saving and reopening its sequences */
	int err, finished;         /* finished: atomic, set as the thread ends */
	char what[160];
};

static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* One row of K (which 0), V (1) or a query (2) as float: every value exact in f16 and bf16. */
static void gen_row(float *out, uint32_t d, uint32_t seq, uint32_t layer, uint32_t head,
		    uint64_t pos, int which)
{
	uint64_t base = mix64(seed ^ ((uint64_t)seq << 40) ^ ((uint64_t)layer << 28) ^
			      ((uint64_t)head << 20) ^ ((uint64_t)which << 18)) ^
			mix64(pos + 0x9e3779b97f4a7c15ull);
	uint32_t c = 0, b;

	/* the header (K and V rows): the position, a nibble per channel */
	for (; which < 2 && c < POS_NIBBLES && c < d; c++)
		out[c] = (float)((pos >> (4 * c)) & 15u) / 8.0f;
	/* then 8 values per hash, c/8 aligned after the header */
	while (c < d) {
		uint64_t h = mix64(base + c);

		for (b = c % 8; b < 8 && c < d; b++, c++)
			out[c] = (float)((int)((h >> (8 * b)) & 63u) - 32) / 32.0f;
	}
}

static void gen_row_dt(void *dst, const struct ice_model_shape *s, uint32_t seq, uint32_t layer,
		       uint32_t head, uint64_t pos, int which, float *tmp)
{
	uint16_t *h = dst;
	uint32_t c, d = s->head_dim;

	gen_row(tmp, d, seq, layer, head, pos, which);
	switch ((enum ice_dtype)s->dtype) { /* one switch a row: this feeds 2 GB/s of KV */
	case ICE_DTYPE_BF16:
		for (c = 0; c < d; c++)
			h[c] = dtype_f32_to_bf16(tmp[c]);
		break;
	case ICE_DTYPE_F16:
		for (c = 0; c < d; c++)
			h[c] = dtype_f32_to_f16(tmp[c]);
		break;
	default:
		for (c = 0; c < d; c++)
			dtype_store_f32(dst, (enum ice_dtype)s->dtype, c, tmp[c]);
	}
}

/* The position a K row says it holds; -1 when its header is not one the generator writes. */
static int64_t decode_pos(const void *row, enum ice_dtype dt)
{
	int64_t pos = 0;
	int c;

	for (c = 0; c < POS_NIBBLES; c++) {
		float v = dtype_load_f32(row, dt, (size_t)c) * 8.0f;
		int n = (int)v;

		if (v != (float)n || n < 0 || n > 15)
			return -1;
		pos |= (int64_t)n << (4 * c);
	}
	return pos;
}

__attribute__((format(printf, 3, 4))) static void fail(struct worker *w, int err, const char *fmt,
						       ...)
{
	char what[128];
	va_list ap;

	if (w->err)
		return;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	snprintf(w->what, sizeof(w->what), "client %d: %s: %s", w->id, what, strerror(-err));
	w->err = err;
}

/* Checks one fetched page of (seq, layer); counts its rows as verified or bad. */
static void check_page(struct worker *w, const unsigned char *page, const struct ice_page_ref *r,
		       uint32_t seq, uint32_t layer, unsigned char *want, float *tmp)
{
	const struct ice_model_shape *s = &w->o->shape;
	size_t es = dtype_size((enum ice_dtype)s->dtype), row = s->head_dim * es;
	const unsigned char *kp = page, *vp = page + ICE_PAGE_TOKENS * row;
	int64_t first = -1, seen[ICE_PAGE_TOKENS];
	uint32_t t, u;

	for (t = 0; t < ICE_PAGE_TOKENS; t++) {
		const unsigned char *k = kp + t * row, *v = vp + t * row;
		int64_t pos;
		int ok;

		if (t >= r->fill) {
			size_t i;

			for (i = 0, ok = 1; i < row; i++)
				ok &= !k[i] && !v[i];
			w->bad += !ok; /* rows past the fill must be zero */
			continue;
		}
		pos = decode_pos(k, (enum ice_dtype)s->dtype);
		if (t == 0)
			first = pos;
		ok = pos >= 0 && (uint64_t)pos < w->o->tokens && first >= 0;
		if (ok && r->kind != ICE_PAGE_RETRIEVED)
			ok = pos == first + t;
		for (u = 0; ok && u < t; u++)
			ok = seen[u] != pos;
		seen[t] = pos;
		if (ok) {
			gen_row_dt(want, s, seq, layer, r->kv_head, (uint64_t)pos, 0, tmp);
			ok = !memcmp(want, k, row);
		}
		if (ok) {
			gen_row_dt(want, s, seq, layer, r->kv_head, (uint64_t)pos, 1, tmp);
			ok = !memcmp(want, v, row);
		}
		if (ok)
			w->verified++;
		else {
			w->bad++;
		}
	}
}

static int verify_seq(struct worker *w, struct ice_ctx *c, uint32_t handle, uint32_t seq,
		      struct ice_page_ref **refs, size_t *cap, unsigned char **buf, size_t *buf_cap,
		      float *q, unsigned char *want, float *tmp)
{
	const struct ice_model_shape *s = &w->o->shape;
	size_t pb = ice_page_bytes(s), need = 0, i;
	uint32_t layer, h;
	int n;

	for (layer = 0; layer < s->layers; layer++) {
		for (h = 0; h < s->q_heads; h++)
			gen_row(q + (size_t)h * s->head_dim, s->head_dim, seq, layer, h,
				w->o->tokens, 2);
		while ((n = ice_select(c, handle, layer, q, *refs, *cap, &need)) == -ENOSPC)
			if (buf_grow(refs, cap, need, sizeof(**refs)))
				return -ENOMEM;
		if (n < 0) {
			fail(w, n, "select seq %u layer %u (%u tokens)", seq, layer, w->o->tokens);
			return n;
		}
		if (buf_grow(buf, buf_cap, (size_t)n * pb, 1))
			return -ENOMEM;
		if (n) {
			int err = ice_fetch(c, handle, layer, *refs, (size_t)n, *buf, *buf_cap);

			if (err) {
				fail(w, err, "fetch seq %u layer %u (%d refs)", seq, layer, n);
				return err;
			}
		}
		for (i = 0; i < (size_t)n; i++)
			check_page(w, *buf + i * pb, &(*refs)[i], seq, layer, want, tmp);
		w->pages += (uint64_t)n;
	}
	return 0;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	const struct opts *o = w->o;
	const struct ice_model_shape *s = &o->shape;
	size_t es = dtype_size((enum ice_dtype)s->dtype), row = s->head_dim * es;
	size_t layer_bytes = (size_t)s->kv_heads * o->chunk * row;
	unsigned char *k = malloc(layer_bytes), *v = malloc(layer_bytes), *want = malloc(row);
	unsigned char *buf = NULL;
	float *tmp = malloc(s->head_dim * sizeof(float));
	float *q = malloc((size_t)s->q_heads * s->head_dim * sizeof(float));
	uint32_t *handles = calloc((size_t)o->seqs, sizeof(uint32_t));
	size_t cap = 256, buf_cap = 0; /* select says when it needs more */
	struct ice_page_ref *refs = malloc(cap * sizeof(*refs));
	struct ice_ctx *c = NULL;
	uint32_t pos, layer, h, t, n;
	int i, err;

	if (!k || !v || !want || !tmp || !q || !handles || !refs) {
		fail(w, -ENOMEM, "buffers");
		goto out_free;
	}
	err = ice_connect(w->sock, &c);
	if (err) {
		fail(w, err, "connect");
		goto out_free;
	}
	for (i = 0; i < o->seqs; i++) {
		err = ice_seq_open(c, s, &budget, &handles[i]);
		if (err) {
			fail(w, err, "open seq %d", i);
			goto out_close;
		}
	}
	for (pos = 0; pos < o->tokens; pos += n) {
		n = o->tokens - pos < o->chunk ? o->tokens - pos : o->chunk;
		for (i = 0; i < o->seqs; i++) {
			uint32_t seq = (uint32_t)(w->id * o->seqs + i);

			for (layer = 0; layer < s->layers; layer++) {
				for (h = 0; h < s->kv_heads; h++)
					for (t = 0; t < n; t++) {
						size_t off = ((size_t)h * n + t) * row;

						gen_row_dt(k + off, s, seq, layer, h, pos + t, 0,
							   tmp);
						gen_row_dt(v + off, s, seq, layer, h, pos + t, 1,
							   tmp);
					}
				err = ice_append(c, handles[i], layer, n, k, v);
				if (err) {
					fail(w, err, "append seq %u layer %u at token %u", seq,
					     layer, pos);
					goto out_close;
				}
			}
			__atomic_add_fetch(w->tokens_done, n, __ATOMIC_RELAXED);
		}
	}
	w->append_end_ns = clock_now_ns();
	/* --prefix: each sequence saved, closed and opened again from the save; what is verified
	 * below is then the reopened one. */
	for (i = 0; o->prefix && i < o->seqs; i++) {
		char name[32];
		uint32_t h1, h2;
		uint64_t t0 = clock_now_ns();

		snprintf(name, sizeof(name), "stress-%d-%d-%d", (int)getpid(), w->id, i);
		err = ice_prefix_save(c, handles[i], name, &h1);
		w->save_ns += clock_now_ns() - t0;
		if (!err)
			err = ice_seq_close(c, handles[i]);
		t0 = clock_now_ns();
		if (!err)
			err = ice_prefix_open(c, name, s, &budget, &handles[i], &h2);
		w->open_ns += clock_now_ns() - t0;
		if (!err && h1 != h2)
			err = -EBADMSG;
		ice_prefix_drop(c, name);
		if (err) {
			fail(w, err, "prefix save/open seq %d", i);
			goto out_close;
		}
	}
	for (i = 0; i < o->seqs; i++)
		if (verify_seq(w, c, handles[i], (uint32_t)(w->id * o->seqs + i), &refs, &cap, &buf,
			       &buf_cap, q, want, tmp))
			break;
out_close:
	if (!w->append_end_ns)
		w->append_end_ns = clock_now_ns(); /* tokens/s of what went in before a failure */
	/* The sequences stay open until the process exits so that main reads the engine's host
	 * and tier figures with them still held; ice_close happens in finish_worker. */
out_free: /* c is NULL when the connect was not reached or failed */
	free(refs);
	free(buf);
	free(handles);
	free(q);
	free(tmp);
	free(want);
	free(v);
	free(k);
	__atomic_store_n(&w->finished, 1, __ATOMIC_RELEASE);
	return c;
}

static pid_t start_daemon(const char *path, char sets[][4200], int nsets)
{
	struct rt_config cfg;
	pid_t pid;
	int i;

	config_defaults(&cfg);
	snprintf(cfg.socket_path, sizeof(cfg.socket_path), "%s", path);
	for (i = 0; i < nsets; i++) {
		int err = config_set(&cfg, sets[i]);

		if (err) {
			fprintf(stderr, "icebench stress: --set %s: %s\n", sets[i], strerror(-err));
			return -1;
		}
	}
	pid = server_fork(&cfg);
	return pid < 0 ? -1 : pid;
}

/* A field of /proc/<pid>/status in bytes ("VmRSS", "VmHWM"); -1 when there is none. */
static int64_t proc_kib(pid_t pid, const char *field)
{
	char path[64], line[256];
	size_t len = strlen(field);
	int64_t v = -1;
	FILE *f;

	if (pid <= 0)
		return -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, len) && line[len] == ':') {
			v = strtoll(line + len + 1, NULL, 10) * 1024;
			break;
		}
	fclose(f);
	return v;
}

/* A counter of ice_stats ("tier.dram.used_bytes"); -1 when the daemon does not print it. */
static int64_t stat_of(const char *text, const char *name)
{
	size_t len = strlen(name);
	const char *p = text;

	while (p && *p) {
		if (!strncmp(p, name, len) && p[len] == ' ')
			return strtoll(p + len + 1, NULL, 10);
		p = strchr(p, '\n');
		p = p ? p + 1 : NULL;
	}
	return -1;
}

struct sample {
	int64_t dram, nvme, host, rss, remote;
};

static void take_sample(struct ice_ctx *c, pid_t daemon, char *buf, size_t cap, struct sample *s)
{
	s->dram = s->nvme = s->host = s->remote = -1;
	if (ice_stats(c, buf, cap) >= 0) {
		s->dram = stat_of(buf, "tier.dram.used_bytes");
		s->nvme = stat_of(buf, "tier.nvme.used_bytes");
		s->remote = stat_of(buf, "tier.redis.used_bytes");
		s->host = stat_of(buf, "engine.host_used_bytes");
	}
	s->rss = proc_kib(daemon, "VmRSS");
}

static int parse_shape(const char *a, struct opts *o)
{
	unsigned l, hkv, hq, d;

	o->shape_name = a;
	if (!strcmp(a, "llama3-8b"))
		o->shape = (struct ice_model_shape){ 32, 32, 8, 128, ICE_DTYPE_BF16 };
	else if (!strcmp(a, "smollm2"))
		o->shape = (struct ice_model_shape){ 30, 9, 3, 64, ICE_DTYPE_F16 };
	else if (sscanf(a, "%u,%u,%u,%u", &l, &hkv, &hq, &d) == 4)
		o->shape = (struct ice_model_shape){ l, hq, hkv, d, ICE_DTYPE_BF16 };
	else
		return -EINVAL;
	return o->shape.head_dim >= 16 ? 0 : -EINVAL;
}

static int usage(void)
{
	fprintf(stderr,
		"usage: icebench stress [--clients C] [--seqs S] [--shape llama3-8b|smollm2|L,Hkv,Hq,d]\n"
		"                       [--tokens N] [--chunk T] [--dram-mib M] [--nvme PATH]\n"
		"                       [--nvme-gib G] [--remote URL] [--remote-gib G] [--host-mib M]\n"
		"                       [--prefix] [--socket PATH] [--json]\n"
		"  --prefix: after appending, save each sequence as a prefix (needs --remote),\n"
		"            close it, open it again from the save and verify that one\n");
	return 2;
}

static double mib(int64_t b)
{
	return b < 0 ? -1.0 : (double)b / (1 << 20);
}

static int stress_main(int argc, char **argv)
{
	struct opts o = { .clients = 1, .seqs = 1, .tokens = 4096, .chunk = 256 };
	char path[108], dir[64] = "/tmp/icebench-stress-XXXXXX", sets[12][4200], *stats;
	struct worker w[MAX_CLIENTS];
	struct ice_ctx *ctxs[MAX_CLIENTS] = { 0 }, *mon = NULL;
	pthread_t th[MAX_CLIENTS];
	struct sample last, fin;
	uint64_t save_ns = 0, open_ns = 0;
	uint64_t done = 0, t0, t_start, t_append = 0, t_last, prev_done = 0, verified = 0, bad = 0,
		 pages = 0;
	uint64_t total, kv_per_token;
	size_t stats_cap = 1 << 20;
	int64_t rss_base, rss_peak = -1;
	int i, nsets = 0, err = 0, alive;
	pid_t daemon = 0;
	void *ret;

	parse_shape("smollm2", &o);
	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--json")) {
			o.json = 1;
			continue;
		}
		if (!strcmp(a, "--prefix")) {
			o.prefix = 1;
			/* a long prefix takes the daemon seconds to save or open, past the library's
			 * default 5 s wait (a caller's own $ICECACHE_TIMEOUT_MS wins) */
			setenv("ICECACHE_TIMEOUT_MS", "600000", 0);
			continue;
		}
		if (!v)
			return usage();
		i++;
		if (!strcmp(a, "--clients"))
			o.clients = atoi(v);
		else if (!strcmp(a, "--seqs"))
			o.seqs = atoi(v);
		else if (!strcmp(a, "--tokens"))
			o.tokens = (uint32_t)strtoul(v, NULL, 10);
		else if (!strcmp(a, "--chunk"))
			o.chunk = (uint32_t)strtoul(v, NULL, 10);
		else if (!strcmp(a, "--shape")) {
			if (parse_shape(v, &o))
				return usage();
		} else if (!strcmp(a, "--dram-mib"))
			o.dram_mib = strtoull(v, NULL, 10);
		else if (!strcmp(a, "--nvme-gib"))
			o.nvme_gib = strtoull(v, NULL, 10);
		else if (!strcmp(a, "--host-mib"))
			o.host_mib = strtoull(v, NULL, 10);
		else if (!strcmp(a, "--nvme"))
			o.nvme = v;
		else if (!strcmp(a, "--remote"))
			o.remote = v;
		else if (!strcmp(a, "--remote-gib"))
			o.remote_gib = strtoull(v, NULL, 10);
		else if (!strcmp(a, "--socket"))
			o.sock = v;
		else
			return usage();
	}
	if (o.clients < 1 || o.clients > MAX_CLIENTS || o.seqs < 1 || o.tokens < 1 ||
	    o.tokens >= 1u << (4 * POS_NIBBLES) || o.chunk < 1)
		return usage();
	if (o.dram_mib)
		snprintf(sets[nsets++], sizeof(sets[0]), "dram_bytes=%" PRIu64, o.dram_mib << 20);
	if (o.host_mib)
		snprintf(sets[nsets++], sizeof(sets[0]), "host_bytes=%" PRIu64, o.host_mib << 20);
	if (o.nvme)
		snprintf(sets[nsets++], sizeof(sets[0]), "nvme_path=%s", o.nvme);
	if (o.nvme_gib)
		snprintf(sets[nsets++], sizeof(sets[0]), "nvme_bytes=%" PRIu64, o.nvme_gib << 30);
	if (o.remote)
		snprintf(sets[nsets++], sizeof(sets[0]), "remote_url=%s", o.remote);
	if (o.remote_gib)
		snprintf(sets[nsets++], sizeof(sets[0]), "remote_bytes=%" PRIu64,
			 o.remote_gib << 30);
	/* The run's clients are one workload, not tenants to shield from each other: its private
	 * daemon lifts the per-client quotas, so a lone client may fill what the run was given. */
	snprintf(sets[nsets++], sizeof(sets[0]), "client_host_bytes=%" PRIu64,
		 o.host_mib ? o.host_mib << 20 : (uint64_t)1 << 30);
	snprintf(sets[nsets++], sizeof(sets[0]), "client_dram_pages=%" PRIu64, (uint64_t)1 << 32);
	snprintf(sets[nsets++], sizeof(sets[0]), "client_nvme_pages=%" PRIu64, (uint64_t)1 << 32);
	snprintf(sets[nsets++], sizeof(sets[0]), "client_remote_pages=%" PRIu64, (uint64_t)1 << 32);
	if (o.sock && nsets > 4)
		fprintf(stderr, "icebench stress: --socket given: the tier options are the "
				"running daemon's, not these\n");
	stats = malloc(stats_cap);
	if (!stats)
		return 1;
	t0 = clock_now_ns();
	if (!o.sock) {
		if (!mkdtemp(dir))
			return 1;
		snprintf(path, sizeof(path), "%s/icecached.sock", dir);
		daemon = start_daemon(path, sets, nsets);
		if (daemon < 0) {
			rmdir(dir);
			return 1;
		}
		for (i = 0; i < 500 && ice_connect(path, &mon); i++)
			usleep(10000);
		o.sock = path;
	} else {
		err = ice_connect(o.sock, &mon);
	}
	if (!mon) {
		fprintf(stderr, "icebench stress: cannot connect to %s\n", o.sock);
		err = -ECONNREFUSED;
		goto out_daemon;
	}
	rss_base = proc_kib(daemon, "VmRSS");
	t_start = clock_now_ns();
	for (i = 0; i < o.clients; i++) {
		w[i] = (struct worker){ .o = &o, .sock = o.sock, .id = i, .tokens_done = &done };
		pthread_create(&th[i], NULL, worker_main, &w[i]);
	}
	total = (uint64_t)o.clients * (uint64_t)o.seqs * o.tokens;
	t_last = clock_now_ns();
	for (alive = 1; alive;) {
		uint64_t now, d;

		usleep(50000);
		now = clock_now_ns();
		d = __atomic_load_n(&done, __ATOMIC_RELAXED);
		for (i = 0, alive = 0; i < o.clients; i++)
			alive |= !__atomic_load_n(&w[i].finished, __ATOMIC_ACQUIRE);
		if (now - t_last < PROGRESS_NS)
			continue;
		take_sample(mon, daemon, stats, stats_cap, &last);
		if (last.rss > rss_peak)
			rss_peak = last.rss;
		fprintf(stderr,
			"stress: %" PRIu64 "/%" PRIu64 " tokens  %.0f tokens/s  dram %.1f MiB  "
			"nvme %.1f MiB  host %.1f MiB  rss %.1f MiB%s\n",
			d, total, (double)(d - prev_done) * 1e9 / (double)(now - t_last),
			mib(last.dram), mib(last.nvme), mib(last.host), mib(last.rss),
			d >= total ? "  (verifying)" : "");
		prev_done = d;
		t_last = now;
	}
	for (i = 0; i < o.clients; i++) {
		pthread_join(th[i], &ret);
		ctxs[i] = ret;
		if (w[i].append_end_ns > t_append)
			t_append = w[i].append_end_ns;
		if (w[i].err) {
			fprintf(stderr, "icebench stress: %s\n", w[i].what);
			err = w[i].err;
		}
		verified += w[i].verified;
		bad += w[i].bad;
		pages += w[i].pages;
		save_ns += w[i].save_ns;
		open_ns += w[i].open_ns;
	}
	done = __atomic_load_n(&done, __ATOMIC_RELAXED);
	take_sample(mon, daemon, stats, stats_cap, &fin);
	if (proc_kib(daemon, "VmHWM") > rss_peak)
		rss_peak = proc_kib(daemon, "VmHWM");
	for (i = 0; i < o.clients; i++)
		ice_close(ctxs[i]);
	ice_close(mon);
	{
		double wall = (double)(clock_now_ns() - t0) / 1e9;
		double app = t_append > t_start ? (double)(t_append - t_start) / 1e9 : 0;
		double tps = app > 0 ? (double)done / app : 0;
		double hpt = done && fin.host >= 0 ? (double)fin.host / (double)done : -1;
		double rpt = done && rss_peak >= 0 && rss_base >= 0 ?
				     (double)(rss_peak - rss_base) / (double)done :
				     -1;
		/* host_bytes as the daemon accounts it, over its RSS growth (which also holds
		 * each client's arena as it is touched and the tiers' slots pinned at start) */
		double acc = rpt > 0 && fin.host >= 0 ?
				     (double)fin.host / (double)(rss_peak - rss_base) :
				     -1;

		kv_per_token = 2ull * o.shape.layers * o.shape.kv_heads * o.shape.head_dim *
			       dtype_size((enum ice_dtype)o.shape.dtype);
		if (o.json) {
			bench_json_begin(stdout, "stress");
			printf(",\"shape\":{\"name\":");
			bench_json_str(stdout, o.shape_name);
			printf(",\"layers\":%u,\"kv_heads\":%u,\"q_heads\":%u,\"head_dim\":%u,"
			       "\"dtype\":\"%s\"}",
			       o.shape.layers, o.shape.kv_heads, o.shape.q_heads, o.shape.head_dim,
			       dtype_name((enum ice_dtype)o.shape.dtype));
			printf(",\"clients\":%d,\"seqs\":%d,\"tokens_per_seq\":%u,\"chunk\":%u,"
			       "\"private_daemon\":%s",
			       o.clients, o.seqs, o.tokens, o.chunk, daemon > 0 ? "true" : "false");
			printf(",\"tokens\":%" PRIu64 ",\"append_s\":%.3f,\"tokens_per_s\":%.1f,"
			       "\"kv_bytes_per_token\":%" PRIu64 ",\"host_used_bytes\":%" PRId64
			       ",\"host_bytes_per_token\":%.1f",
			       done, app, tps, kv_per_token, fin.host, hpt);
			printf(",\"rss_base_bytes\":%" PRId64 ",\"rss_peak_bytes\":%" PRId64
			       ",\"rss_per_token\":%.1f,\"host_over_rss_growth\":%.3f",
			       rss_base, rss_peak, rpt, acc);
			printf(",\"pages_fetched\":%" PRIu64 ",\"verified_rows\":%" PRIu64
			       ",\"bad_rows\":%" PRIu64 ",\"wall_s\":%.3f",
			       pages, verified, bad, wall);
			printf(",\"tiers\":{\"dram\":{\"used_bytes\":%" PRId64
			       "},\"nvme\":{\"used_bytes\":%" PRId64
			       "},\"redis\":{\"used_bytes\":%" PRId64 "}}",
			       fin.dram, fin.nvme, fin.remote);
			if (o.prefix)
				printf(",\"prefix\":{\"save_s\":%.3f,\"open_s\":%.3f}",
				       save_ns / 1e9, open_ns / 1e9);
			printf(",\"error\":");
			bench_json_str(stdout, err ? strerror(-err) : "");
			printf("}\n");
		} else {
			printf("%-22s %s (%u layers, %u/%u heads, d %u, %s)\n", "shape",
			       o.shape_name, o.shape.layers, o.shape.kv_heads, o.shape.q_heads,
			       o.shape.head_dim, dtype_name((enum ice_dtype)o.shape.dtype));
			printf("%-22s %" PRIu64 " (%d clients x %d seqs)\n", "tokens", done,
			       o.clients, o.seqs);
			printf("%-22s %.0f (%.2f GB/s of KV)\n", "tokens/s", tps,
			       tps * (double)kv_per_token / 1e9);
			printf("%-22s %.0f (KV %" PRIu64 ")\n", "host bytes/token", hpt,
			       kv_per_token);
			printf("%-22s %.1f MiB (%.0f bytes/token over start; host_bytes is %.2f of "
			       "that growth)\n",
			       "daemon rss peak", mib(rss_peak), rpt, acc);
			printf("%-22s dram %.1f MiB, nvme %.1f MiB, redis %.1f MiB\n",
			       "tiers used at end", mib(fin.dram), mib(fin.nvme), mib(fin.remote));
			printf("%-22s %" PRIu64 " pages: %" PRIu64 " rows verified, %" PRIu64
			       " bad\n",
			       "fetched", pages, verified, bad);
			if (o.prefix)
				printf("%-22s save %.2f s, open %.2f s (appending took %.2f s)\n",
				       "prefix", save_ns / 1e9, open_ns / 1e9, app);
			printf("%-22s %.2f s\n", "wall", wall);
		}
	}
out_daemon:
	if (daemon > 0) {
		kill(daemon, SIGTERM);
		waitpid(daemon, NULL, 0);
		rmdir(dir);
	}
	free(stats);
	if (bad)
		fprintf(stderr, "icebench stress: %" PRIu64 " bad rows\n", bad);
	return err || bad ? 1 : 0;
}

BENCH_COMMAND(stress_cmd, "stress",
	      "appends, selects and fetches through icecached, every fetched row checked",
	      stress_main)
