/*
 * icerun dump: real keys and queries for the index benchmark. The keys are read out of the KV
 * cache after prefill (where attention reads them: post-RoPE); the queries are taken by the
 * forward pass's capture hook at each decode step, as attention receives them, and stored
 * without the 1/sqrt(d) scale the runner folds into q (the benchmark applies it itself).
 */
#include "dump.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "clock.h"
#include "eval.h"
#include "kvdump.h"
#include "model.h"
#include "tok.h"

#define PREFILL_STEP 1024 /* tokens per model_forward call: one progress line each */

struct capture {
	int n0, nq;      /* prompt length, decode steps */
	int g, d;        /* query heads per KV head, head dim */
	const int *lidx; /* model layer -> its index among the dumped layers, or -1 */
	const int *heads;
	int nheads;
	float unscale; /* sqrt(d): undoes the runner's pre-scaled q */
	float *q;      /* [dumped layer][dumped head][step][g][d] */
};

static int capture_q(void *ctx, int layer, int pos, const float *q)
{
	struct capture *c = ctx;
	int li = c->lidx[layer], s = pos - c->n0, hi, i, gd = c->g * c->d;

	if (li < 0)
		return 0;
	if (s < 0 || s >= c->nq)
		return -ERANGE;
	for (hi = 0; hi < c->nheads; hi++) {
		const float *src = q + (size_t)c->heads[hi] * gd;
		float *dst = c->q + (((size_t)li * c->nheads + hi) * c->nq + s) * gd;

		for (i = 0; i < gd; i++)
			dst[i] = src[i] * c->unscale;
	}
	return 0;
}

/* Fills an empty list with 0..n-1; checks every entry is in range and none repeats. */
static int check_list(const char *what, int *v, int *nv, int n)
{
	int i, j;

	if (!*nv) {
		for (i = 0; i < n; i++)
			v[i] = i;
		*nv = n;
		return 0;
	}
	for (i = 0; i < *nv; i++) {
		if (v[i] < 0 || v[i] >= n) {
			fprintf(stderr,
				"icerun dump: %s %d out of range: the model has %d %ss (0..%d)\n",
				what, v[i], n, what, n - 1);
			return -EINVAL;
		}
		for (j = 0; j < i; j++)
			if (v[j] == v[i]) {
				fprintf(stderr, "icerun dump: %s %d given twice\n", what, v[i]);
				return -EINVAL;
			}
	}
	return 0;
}

/* mkdir -p, then checks the directory can take files */
static int open_out(const char *dir)
{
	char p[4096];
	struct stat st;
	size_t i, n = strlen(dir);

	if (n == 0 || n >= sizeof(p))
		return -ENAMETOOLONG;
	memcpy(p, dir, n + 1);
	for (i = 1; i <= n; i++) {
		if (p[i] != '/' && p[i] != 0)
			continue;
		p[i] = 0;
		if (mkdir(p, 0777) && errno != EEXIST)
			return -errno;
		p[i] = i < n ? '/' : 0;
	}
	if (stat(dir, &st))
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	if (access(dir, W_OK | X_OK))
		return -errno;
	return 0;
}

static int write_tokens(const char *dir, const int32_t *ids, int n0, int n)
{
	char path[4096];
	FILE *f;
	int i, err = 0;

	snprintf(path, sizeof(path), "%s/tokens.txt", dir);
	f = fopen(path, "w");
	if (!f)
		return -errno;
	fprintf(f, "# icerun dump: %d prompt token ids, then %d decoded, one a line\n", n0, n - n0);
	for (i = 0; i < n; i++)
		fprintf(f, "%d\n", ids[i]);
	if (ferror(f))
		err = -EIO;
	if (fclose(f) && !err)
		err = -errno;
	return err;
}

int dump_run(const struct dump_cfg *cfg)
{
	struct dump_cfg c = *cfg;
	struct model *m = NULL;
	struct tok *t = NULL;
	struct kv *kv = NULL;
	struct capture cap = { 0 };
	int32_t *ids = NULL;
	float *logits = NULL, *keys = NULL;
	int lidx[DUMP_MAX_LAYERS], n = 0, done, s, li, hi, err;
	uint64_t t0 = clock_now_ns(), t1;
	char path[4096];

	if (c.tokens < 64 || c.tokens > 1 << 20 || c.queries < 0 || c.queries > 1 << 16) {
		fprintf(stderr, "icerun dump: --tokens 64..%d and --queries 0..%d\n", 1 << 20,
			1 << 16);
		return -EINVAL;
	}
	if (strcmp(c.filler, "austen") && strcmp(c.filler, "repeat")) {
		fprintf(stderr, "icerun dump: --filler austen or repeat, not '%s'\n", c.filler);
		return -EINVAL;
	}
	if (strlen(c.out) > sizeof(path) - 32) {
		fprintf(stderr, "icerun dump: --out: path too long\n");
		return -ENAMETOOLONG;
	}
	/* before the model and the prefill: a bad directory should not cost minutes */
	err = open_out(c.out);
	if (err) {
		fprintf(stderr, "icerun dump: --out %s: %s\n", c.out, strerror(-err));
		return err;
	}
	err = model_open(c.model, c.threads, &m);
	if (err) {
		fprintf(stderr, "icerun dump: %s: %s\n", c.model, strerror(-err));
		return err;
	}
	if (m->cfg.n_layer > DUMP_MAX_LAYERS || m->cfg.n_kv > DUMP_MAX_HEADS) {
		err = -EOPNOTSUPP;
		goto out;
	}
	if (c.tokens + c.queries > 4 * m->cfg.n_ctx) {
		fprintf(stderr,
			"icerun dump: --tokens + --queries past the runner's limit, 4x the model's "
			"context (%d)\n",
			4 * m->cfg.n_ctx);
		err = -EINVAL;
		goto out;
	}
	if ((err = check_list("layer", c.layers, &c.nlayers, m->cfg.n_layer)) ||
	    (err = check_list("KV head", c.heads, &c.nheads, m->cfg.n_kv)))
		goto out;
	err = tok_new(m->g, &t);
	if (err)
		goto out;
	err = eval_passkey_prompt(t, c.filler, c.austen, c.tokens, c.seed, &ids, &n);
	if (err) {
		if (err == -EINVAL)
			fprintf(stderr,
				"icerun dump: no %d-token prompt with filler '%s' (austen or "
				"repeat; longer than the filler text?)\n",
				c.tokens, c.filler);
		else if (err == -ENOENT)
			fprintf(stderr, "icerun dump: no Austen text at %s (--austen PATH)\n",
				c.austen);
		goto out_quiet;
	}
	/* room for the decoded ids after the prompt */
	{
		size_t cap_ids = (size_t)n;

		err = buf_grow(&ids, &cap_ids, (size_t)n + c.queries + 1, sizeof(*ids));
		if (err)
			goto out;
	}
	cap.n0 = n;
	cap.nq = c.queries;
	cap.d = m->cfg.head_dim;
	cap.g = m->cfg.n_head / m->cfg.n_kv;
	cap.unscale = sqrtf((float)cap.d);
	for (li = 0; li < m->cfg.n_layer; li++)
		lidx[li] = -1;
	for (li = 0; li < c.nlayers; li++)
		lidx[c.layers[li]] = li;
	cap.lidx = lidx;
	cap.heads = c.heads;
	cap.nheads = c.nheads;
	cap.q = malloc(((size_t)c.nlayers * c.nheads * c.queries * cap.g * cap.d + 1) *
		       sizeof(float));
	keys = malloc((size_t)n * cap.d * sizeof(float));
	logits = malloc((size_t)m->cfg.n_vocab * sizeof(float));
	if (!cap.q || !keys || !logits) {
		err = -ENOMEM;
		goto out;
	}
	err = kv_new(m, n + c.queries + 1, &kv);
	if (err)
		goto out;
	for (done = 0; done < n && !err; done += s) {
		s = n - done < PREFILL_STEP ? n - done : PREFILL_STEP;
		err = model_forward(m, kv, ids + done, s, done + s == n ? logits : NULL, NULL,
				    NULL);
		if (!c.quiet && !err)
			fprintf(stderr, "icerun dump: prefill %d/%d tokens (%.1f tok/s)\n",
				done + s, n, (done + s) / ((clock_now_ns() - t0) / 1e9));
	}
	t1 = clock_now_ns();
	{
		struct attn_hook hook = { .dense = 0, .ctx = &cap, .capture = capture_q };

		for (s = 0; s < c.queries && !err; s++) {
			ids[n + s] = eval_argmax(logits, m->cfg.n_vocab);
			err = model_forward(m, kv, &ids[n + s], 1, logits, NULL, &hook);
		}
	}
	if (err)
		goto out;
	if (!c.quiet)
		fprintf(stderr, "icerun dump: decoded %d tokens (%.1f tok/s)\n", c.queries,
			c.queries / ((clock_now_ns() - t1) / 1e9 + 1e-9));
	for (li = 0; li < c.nlayers && !err; li++) {
		for (hi = 0; hi < c.nheads && !err; hi++) {
			struct kvdump d = {
				.dim = (uint32_t)cap.d,
				.group = (uint32_t)cap.g,
				.nkeys = (uint64_t)n,
				.ngroups = (uint64_t)c.queries,
				.layer = (uint32_t)c.layers[li],
				.head = (uint32_t)c.heads[hi],
				.keys = keys,
				.queries = cap.q +
					   ((size_t)li * c.nheads + hi) * c.queries * cap.g * cap.d,
			};

			for (s = 0; s < n; s++)
				kv_key(kv, c.layers[li], c.heads[hi], s, keys + (size_t)s * cap.d);
			snprintf(path, sizeof(path), "%s/L%02dH%d.kvd", c.out, c.layers[li],
				 c.heads[hi]);
			err = kvdump_write(path, &d, ICE_DTYPE_F32);
			if (err)
				fprintf(stderr, "icerun dump: %s: %s\n", path, strerror(-err));
		}
	}
	if (!err) {
		err = write_tokens(c.out, ids, n, n + c.queries);
		if (err)
			fprintf(stderr, "icerun dump: %s/tokens.txt: %s\n", c.out, strerror(-err));
	}
	if (!err && !c.quiet)
		fprintf(stderr,
			"icerun dump: %d files (%d layers x %d KV heads; %d keys, %d query groups of "
			"%d, d %d, fp32) in %s, %.1f s\n",
			c.nlayers * c.nheads, c.nlayers, c.nheads, n, c.queries, cap.g, cap.d,
			c.out, (clock_now_ns() - t0) / 1e9);
	/* errors already named their file above */
	if (err)
		goto out_quiet;
out:
	if (err && err != -EINVAL) /* check_list named the bad entry */
		fprintf(stderr, "icerun dump: %s\n", strerror(-err));
out_quiet:
	free(cap.q);
	free(keys);
	free(logits);
	free(ids);
	kv_free(kv);
	tok_free(t);
	model_free(m);
	return err;
}

/* "all", or ids and ranges: "3", "0,5,7", "0-29" */
static int parse_sel(const char *s, int *v, int max)
{
	int n = 0;
	char *end;
	long a, b;

	if (!strcmp(s, "all"))
		return 0;
	while (*s) {
		a = strtol(s, &end, 10);
		if (end == s || a < 0 || a > 1 << 16)
			return -EINVAL;
		b = a;
		if (*end == '-') {
			s = end + 1;
			b = strtol(s, &end, 10);
			if (end == s || b < a || b > 1 << 16)
				return -EINVAL;
		}
		for (; a <= b; a++) {
			if (n == max)
				return -E2BIG;
			v[n++] = (int)a;
		}
		if (*end && *end != ',')
			return -EINVAL;
		s = *end ? end + 1 : end;
	}
	return n ? n : -EINVAL;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: icerun dump --out DIR [options]\n"
		"  writes DIR/LllHh.kvd (docs/KVDUMP.md) for each layer and KV head: the N post-RoPE\n"
		"  keys of a passkey prompt and the queries of Q greedy decode steps after it\n"
		"  -m, --model PATH      GGUF model (default $ICE_MODEL or build/models/...)\n"
		"  -t, --threads N       worker threads (default 2)\n"
		"  --tokens N            prompt length, every key dumped (default 8192)\n"
		"  --queries Q           decode steps, one query group each (default 64)\n"
		"  --filler austen|repeat  the haystack (default austen)\n"
		"  --layers all|L,L-L..  layers to dump (default all)\n"
		"  --heads all|H,H..     KV heads to dump (default all)\n"
		"  --austen PATH         Austen text (default build/models/austen.txt)\n"
		"  --seed N              passkey seed, as icerun eval's (default 1)\n"
		"  -o, --out DIR         created when missing; files in it are overwritten\n"
		"  -q, --quiet           no progress on stderr\n");
}

int dump_main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "threads", required_argument, NULL, 't' },
		{ "tokens", required_argument, NULL, 'n' },
		{ "queries", required_argument, NULL, 'Q' },
		{ "filler", required_argument, NULL, 'F' },
		{ "layers", required_argument, NULL, 'L' },
		{ "heads", required_argument, NULL, 'H' },
		{ "austen", required_argument, NULL, 'a' },
		{ "seed", required_argument, NULL, 'S' },
		{ "out", required_argument, NULL, 'o' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static struct dump_cfg c;
	int o, r;

	memset(&c, 0, sizeof(c));
	c.model = getenv("ICE_MODEL") ? getenv("ICE_MODEL") :
					"build/models/SmolLM2-135M-Instruct.Q4_1.gguf";
	c.austen = getenv("ICE_AUSTEN") ? getenv("ICE_AUSTEN") : "build/models/austen.txt";
	c.filler = "austen";
	c.tokens = 8192;
	c.queries = 64;
	c.threads = 2;
	c.seed = 1;
	optind = 1;
	while ((o = getopt_long(argc, argv, "m:t:o:qh", lo, NULL)) != -1) {
		switch (o) {
		case 'm':
			c.model = optarg;
			break;
		case 't':
			c.threads = atoi(optarg);
			break;
		case 'n':
			c.tokens = atoi(optarg);
			break;
		case 'Q':
			c.queries = atoi(optarg);
			break;
		case 'F':
			c.filler = optarg;
			break;
		case 'L':
			r = parse_sel(optarg, c.layers, DUMP_MAX_LAYERS);
			if (r < 0) {
				fprintf(stderr, "icerun dump: --layers all or L,L-L,...: '%s'\n",
					optarg);
				return 2;
			}
			c.nlayers = r;
			break;
		case 'H':
			r = parse_sel(optarg, c.heads, DUMP_MAX_HEADS);
			if (r < 0) {
				fprintf(stderr, "icerun dump: --heads all or H,H-H,...: '%s'\n",
					optarg);
				return 2;
			}
			c.nheads = r;
			break;
		case 'a':
			c.austen = optarg;
			break;
		case 'S':
			c.seed = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'o':
			c.out = optarg;
			break;
		case 'q':
			c.quiet = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!c.out || optind != argc || c.threads < 1 || c.threads > 256 ||
	    (strcmp(c.filler, "austen") && strcmp(c.filler, "repeat"))) {
		if (!c.out)
			fprintf(stderr, "icerun dump: --out DIR is required\n");
		else if (strcmp(c.filler, "austen") && strcmp(c.filler, "repeat"))
			fprintf(stderr, "icerun dump: --filler austen or repeat, not '%s'\n",
				c.filler);
		usage(stderr);
		return 2;
	}
	return dump_run(&c) ? 1 : 0;
}
