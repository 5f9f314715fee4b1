/*
 * icerun dump against the model itself (skips without the model and the Austen text): a
 * 256-token prompt and 4 decode steps dumped for layers 0 and 3, read back with kvdump_read,
 * then checked
 *  - against the runner's KV cache: every key row is the cached row of that layer, head and
 *    position (a wrong head, layer, order or pre-RoPE keys fail);
 *  - against RoPE itself: layer 0's keys before RoPE depend on the token alone, so two positions
 *    of one token must differ by exactly the rotation of their distance (pre-RoPE keys, or the
 *    wrong pair layout, fail);
 *  - against the queries attention receives, taken through the attention override (not the
 *    capture hook the dump uses), for the right heads of the group and without the 1/sqrt(d);
 *  - against greedy decoding: the decoded ids in tokens.txt are the model's own argmax.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check_main.h"
#include "dump.h"
#include "eval.h"
#include "kvdump.h"
#include "model.h"
#include "tok.h"

#define N 256
#define Q 4
#define QLAYER 3 /* the layer whose queries are checked */

static char model_path[4096], austen_path[4096];

static int find_model(void)
{
	const char *env = getenv("ICE_MODEL"), *roots[2] = { getenv("ICE_BUILD_ROOT"), NULL };
	const char *sr = getenv("ICE_SOURCE_ROOT");
	char src[2048];
	int i;

	if (env && !access(env, R_OK)) {
		snprintf(model_path, sizeof(model_path), "%s", env);
	} else {
		snprintf(src, sizeof(src), "%s/build", sr ? sr : ".");
		roots[1] = src;
		for (i = 0; i < 2; i++) {
			if (!roots[i])
				continue;
			snprintf(model_path, sizeof(model_path),
				 "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", roots[i]);
			if (!access(model_path, R_OK))
				break;
		}
		if (i == 2)
			return -ENOENT;
	}
	snprintf(austen_path, sizeof(austen_path), "%s", model_path);
	*strrchr(austen_path, '/') = 0;
	strcat(austen_path, "/austen.txt");
	return access(austen_path, R_OK) ? -ENOENT : 0;
}

static void dump_cfg_init(struct dump_cfg *c, const char *out)
{
	memset(c, 0, sizeof(*c));
	c->model = model_path;
	c->austen = austen_path;
	c->out = out;
	c->filler = "austen";
	c->tokens = N;
	c->queries = Q;
	c->threads = 2;
	c->seed = 1;
	c->quiet = true;
}

/* the attention override: records layer QLAYER's q, attends every token like full attention */
struct qrec {
	float q[Q][16 * 64]; /* [step][n_head * d], pre-scaled as attention gets it */
	float *scratch;
};

static int rec_attend(void *ctx, const struct model *m, const struct kv *kv, int layer, int pos,
		      const float *q, float *out)
{
	struct qrec *r = ctx;
	int g = m->cfg.n_head / m->cfg.n_kv, d = m->cfg.head_dim, h, j;
	int32_t idx[N + Q];

	if (layer == QLAYER)
		memcpy(r->q[pos - N], q, (size_t)m->cfg.n_head * d * sizeof(float));
	for (j = 0; j <= pos; j++)
		idx[j] = j;
	for (h = 0; h < m->cfg.n_kv; h++)
		model_attend_set(m, kv, layer, h, idx, pos + 1, q + (size_t)h * g * d,
				 out + (size_t)h * g * d, r->scratch);
	return 0;
}

static int read_tokens(const char *dir, int32_t *ids, int cap)
{
	char path[4200], line[256];
	FILE *f;
	int n = 0;

	snprintf(path, sizeof(path), "%s/tokens.txt", dir);
	f = fopen(path, "r");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f))
		if (line[0] != '#' && n < cap)
			ids[n++] = atoi(line);
	fclose(f);
	return n;
}

START_TEST(test_dump_matches_model)
{
	char dir[] = "/tmp/ice-dump-XXXXXX", path[4200];
	struct dump_cfg c;
	struct kvdump kd[2][3];
	struct model *m;
	struct tok *t;
	struct kv *kv;
	struct qrec *rec = calloc(1, sizeof(*rec));
	int32_t ids[N + Q + 8], *prompt, next;
	float *logits, key[64];
	int layers[2] = { 0, QLAYER }, li, h, s, i, n, np, t1, t2, g, d;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	dump_cfg_init(&c, dir);
	c.layers[0] = 0;
	c.layers[1] = QLAYER;
	c.nlayers = 2;
	ck_assert_int_eq(dump_run(&c), 0);

	ck_assert_int_eq(model_open(model_path, 2, &m), 0);
	g = m->cfg.n_head / m->cfg.n_kv;
	d = m->cfg.head_dim;
	ck_assert_int_eq(d, 64);
	ck_assert_int_le(m->cfg.n_head, 16);
	for (li = 0; li < 2; li++)
		for (h = 0; h < m->cfg.n_kv; h++) {
			snprintf(path, sizeof(path), "%s/L%02dH%d.kvd", dir, layers[li], h);
			ck_assert_int_eq(kvdump_read(path, &kd[li][h]), 0);
			ck_assert_uint_eq(kd[li][h].dim, (uint32_t)d);
			ck_assert_uint_eq(kd[li][h].group, (uint32_t)g);
			ck_assert_uint_eq(kd[li][h].nkeys, N);
			ck_assert_uint_eq(kd[li][h].ngroups, Q);
			ck_assert_uint_eq(kd[li][h].layer, (uint32_t)layers[li]);
			ck_assert_uint_eq(kd[li][h].head, (uint32_t)h);
		}
	/* only the asked-for layers were written */
	snprintf(path, sizeof(path), "%s/L01H0.kvd", dir);
	ck_assert_int_ne(access(path, F_OK), 0);

	/* the prompt is eval's passkey case; the decoded ids are the greedy continuation */
	n = read_tokens(dir, ids, N + Q + 8);
	ck_assert_int_eq(n, N + Q);
	ck_assert_int_eq(tok_new(m->g, &t), 0);
	ck_assert_int_eq(eval_passkey_prompt(t, "austen", austen_path, N, 1, &prompt, &np), 0);
	ck_assert_int_eq(np, N);
	ck_assert_mem_eq(prompt, ids, N * sizeof(*ids));
	ck_assert_int_eq(kv_new(m, N + Q + 1, &kv), 0);
	logits = malloc((size_t)m->cfg.n_vocab * sizeof(float));
	rec->scratch = malloc((size_t)g * (N + Q) * sizeof(float));
	ck_assert_ptr_nonnull(logits);
	ck_assert_ptr_nonnull(rec->scratch);
	ck_assert_int_eq(model_forward(m, kv, ids, N, logits, NULL, NULL), 0);
	{
		/* layers before QLAYER run untouched, so QLAYER's q is bit for bit the model's */
		struct attn_hook hook = { .dense = QLAYER, .ctx = rec, .attend = rec_attend };

		for (s = 0; s < Q; s++) {
			next = eval_argmax(logits, m->cfg.n_vocab);
			ck_assert_int_eq(next, ids[N + s]);
			ck_assert_int_eq(model_forward(m, kv, &next, 1, logits, NULL, &hook), 0);
		}
	}

	/* keys: the cache's rows, post-RoPE, of the right layer and head; not all alike */
	for (li = 0; li < 2; li++)
		for (h = 0; h < m->cfg.n_kv; h++)
			for (i = 0; i < N; i++) {
				kv_key(kv, layers[li], h, i, key);
				ck_assert_mem_eq(kd[li][h].keys + (size_t)i * d, key,
						 d * sizeof(float));
			}
	ck_assert_mem_ne(kd[1][0].keys, kd[1][1].keys, d * sizeof(float));
	ck_assert_mem_ne(kd[1][0].keys + 100 * d, kd[1][0].keys + 101 * d, d * sizeof(float));

	/* RoPE: the first token that repeats in the prompt, at t1 < t2 */
	for (t1 = 0, t2 = -1; t1 < N && t2 < 0; t1++)
		for (i = t1 + 16; i < N && t2 < 0; i++)
			if (ids[i] == ids[t1])
				t2 = i;
	t1--;
	ck_assert_int_ge(t2, 0);
	for (h = 0; h < m->cfg.n_kv; h++) {
		const float *a = kd[0][h].keys + (size_t)t1 * d,
			    *b = kd[0][h].keys + (size_t)t2 * d;
		double err = 0, scale = 0, moved = 0;

		for (i = 0; i < d / 2; i++) {
			double th = (t2 - t1) * pow(m->cfg.rope_base, -2.0 * i / d);
			double x = a[2 * i] * cos(th) - a[2 * i + 1] * sin(th);
			double y = a[2 * i] * sin(th) + a[2 * i + 1] * cos(th);

			err = fmax(err, fmax(fabs(x - b[2 * i]), fabs(y - b[2 * i + 1])));
			scale = fmax(scale, fmax(fabs(b[2 * i]), fabs(b[2 * i + 1])));
			moved = fmax(moved, fmax(fabs(a[2 * i] - b[2 * i]),
						 fabs(a[2 * i + 1] - b[2 * i + 1])));
		}
		ck_assert_msg(err <= 1e-4 * scale,
			      "layer 0 head %d: tokens %d and %d (id %d) are "
			      "not one key rotated: max err %g of %g",
			      h, t1, t2, ids[t1], err, scale);
		/* and the rotation is not a no-op: unrotated keys would pass the line above only
		 * if they moved */
		ck_assert_msg(moved > 0.1 * scale, "layer 0 head %d: keys %d and %d barely differ",
			      h, t1, t2);
	}

	/* queries: step s, head i of KV head h's group = query head h*g+i, times sqrt(d) */
	for (h = 0; h < m->cfg.n_kv; h++)
		for (s = 0; s < Q; s++)
			for (i = 0; i < g; i++) {
				const float *dq = kd[1][h].queries + ((size_t)s * g + i) * d;
				const float *mq = rec->q[s] + ((size_t)h * g + i) * d;

				for (int j = 0; j < d; j++)
					ck_assert_float_eq(dq[j], mq[j] * sqrtf((float)d));
			}
	ck_assert_mem_ne(kd[1][0].queries, kd[1][0].queries + (size_t)g * d, d * sizeof(float));

	for (li = 0; li < 2; li++)
		for (h = 0; h < m->cfg.n_kv; h++)
			kvdump_done(&kd[li][h]);
	for (li = 0; li < 2; li++)
		for (h = 0; h < m->cfg.n_kv; h++) {
			snprintf(path, sizeof(path), "%s/L%02dH%d.kvd", dir, layers[li], h);
			unlink(path);
		}
	snprintf(path, sizeof(path), "%s/tokens.txt", dir);
	unlink(path);
	rmdir(dir);
	free(prompt);
	free(logits);
	free(rec->scratch);
	free(rec);
	kv_free(kv);
	tok_free(t);
	model_free(m);
}
END_TEST

START_TEST(test_dump_errors)
{
	char dir[] = "/tmp/ice-dump-XXXXXX", path[4200];
	struct dump_cfg c;
	FILE *f;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	dump_cfg_init(&c, dir);
	c.layers[0] = 30; /* SmolLM2 has 0..29 */
	c.nlayers = 1;
	ck_assert_int_eq(dump_run(&c), -EINVAL);
	dump_cfg_init(&c, dir);
	c.heads[0] = 3; /* 0..2 */
	c.nheads = 1;
	ck_assert_int_eq(dump_run(&c), -EINVAL);
	dump_cfg_init(&c, dir);
	c.layers[0] = c.layers[1] = 2;
	c.nlayers = 2;
	ck_assert_int_eq(dump_run(&c), -EINVAL);
	dump_cfg_init(&c, dir);
	c.filler = "dickens";
	ck_assert_int_eq(dump_run(&c), -EINVAL);
	/* a directory that cannot be made: under a regular file */
	snprintf(path, sizeof(path), "%s/file", dir);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fclose(f);
	snprintf(path, sizeof(path), "%s/file/sub", dir);
	dump_cfg_init(&c, path);
	ck_assert_int_eq(dump_run(&c), -ENOTDIR);
	/* nothing was written by any of them */
	snprintf(path, sizeof(path), "%s/tokens.txt", dir);
	ck_assert_int_ne(access(path, F_OK), 0);
	snprintf(path, sizeof(path), "%s/file", dir);
	unlink(path);
	ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

static Suite *dump_suite(void)
{
	Suite *s = suite_create("icerun-dump");
	TCase *tc = tcase_create("model");

	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, test_dump_matches_model);
	tcase_add_test(tc, test_dump_errors);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	Suite *suites[] = { dump_suite(), NULL };

	if (find_model())
		check_skip("model or Austen text missing (run tools/setup.sh)");
	return check_run_suites(suites);
}
