/*
 * icerun eval: long-context retrieval with a real model under sparse decode attention.
 *
 * Each case (task, filler, length, depth) is prefilled once with exact attention; then every
 * attention mode replays the same question tail token by token in decode mode (so the question
 * itself is read through the sparse attention, not just the answer) and answers greedily. The
 * prefix KV is shared: after each mode the cache is cut back to the prefix length.
 */
#include "eval.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "clock.h"
#include "model.h"
#include "sel.h"
#include "tok.h"

#define CHAT_SYSTEM                                                         \
	"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, " \
	"trained by Hugging Face<|im_end|>\n"
#define MAX_LIST 16
#define MAX_GEN 8
#define NKEYS 4 /* most multikey needles (--mk-keys) */

int eval_chat_prompt(const char *user, bool chat, char **ret)
{
	size_t n = strlen(user) + 256;
	char *s = malloc(n);

	if (!s)
		return -ENOMEM;
	if (chat)
		snprintf(s, n,
			 CHAT_SYSTEM "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n",
			 user);
	else
		snprintf(s, n, "%s", user);
	*ret = s;
	return 0;
}

int eval_argmax(const float *x, int n)
{
	int i, b = 0;

	for (i = 1; i < n; i++)
		if (x[i] > x[b])
			b = i;
	return b;
}

/* ---- token buffers ---- */

struct ids {
	int32_t *v;
	int n;
	size_t cap;
};

static int ids_push_text(const struct tok *t, struct ids *b, const char *s, bool special)
{
	size_t len = strlen(s);
	int n;

	if (buf_grow(&b->v, &b->cap, (size_t)b->n + len + 1, sizeof(*b->v)))
		return -ENOMEM;
	n = tok_encode(t, s, len, special, b->v + b->n, b->cap - (size_t)b->n);
	if (n < 0)
		return n;
	b->n += n;
	return 0;
}

static int ids_push(struct ids *b, const int32_t *v, int n)
{
	if (buf_grow(&b->v, &b->cap, (size_t)(b->n + n), sizeof(*b->v)))
		return -ENOMEM;
	memcpy(b->v + b->n, v, (size_t)n * sizeof(*v));
	b->n += n;
	return 0;
}

/* ---- configuration ---- */

enum task { TASK_PASSKEY, TASK_MULTIKEY };
enum filler { FILL_AUSTEN, FILL_REPEAT };

static const char *const task_names[] = { "passkey", "multikey" };
static const char *const filler_names[] = { "austen", "repeat" };
static const char *const key_names[NKEYS] = { "falcon", "orchid", "granite", "harbor" };

/*
 * The prompts' frame: SmolLM2's chat template (when the vocabulary has <|im_start|>), or plain
 * text for a base model such as Gemma 3 270M, the question then the answer's start.
 */
struct frame {
	const char *pk_head, *pk_tail, *mk_head; /* multikey's tail: MK_TAIL_CHAT or _PLAIN */
};

#define PK_INTRO                                                                          \
	"There is an important pass key hidden inside a lot of irrelevant text. Find it " \
	"and memorize it. I will quiz you about the pass key.\n\n"
#define MK_INTRO                                                                           \
	"There are important pass keys hidden inside a lot of irrelevant text, each with " \
	"a name. Find them and memorize them. I will quiz you about one of them.\n\n"

static const struct frame chat_frame = {
	CHAT_SYSTEM "<|im_start|>user\n" PK_INTRO,
	"\n\nWhat is the pass key?<|im_end|>\n<|im_start|>assistant\nThe pass key is",
	CHAT_SYSTEM "<|im_start|>user\n" MK_INTRO,
};
#define MK_TAIL_CHAT \
	"\n\nWhat is the pass key for %s?<|im_end|>\n<|im_start|>assistant\nThe pass key for %s is"

static const struct frame plain_frame = {
	PK_INTRO,
	"\n\nWhat is the pass key? The pass key is",
	MK_INTRO,
};
#define MK_TAIL_PLAIN "\n\nWhat is the pass key for %s? The pass key for %s is"

struct opts {
	int lengths[MAX_LIST], nlengths;
	int budgets[MAX_LIST], nbudgets;
	int methods[MAX_LIST], nmethods; /* enum sel_kind, full first */
	int depths, mk_depths, mk_keys, dense, threads;
	bool tasks[2], fillers[2];
	bool json, verbose;
	int shard, nshards, rest;
	const char *model, *austen, *socket, *engine;
	unsigned seed;
};

static int parse_list(const char *s, int *out, int max)
{
	int n = 0;
	char *end;
	long v;

	while (*s) {
		v = strtol(s, &end, 10);
		if (end == s || v <= 0 || v > 1 << 20 || n == max)
			return -EINVAL;
		out[n++] = (int)v;
		s = *end == ',' ? end + 1 : end;
		if (*end && *end != ',')
			return -EINVAL;
	}
	return n ? n : -EINVAL;
}

/* ---- results ---- */

struct row {
	int task, filler, length, depth_i, method, budget;
	int correct, tokens;
	double attended, tok_s, pages;
	char key[8], answer[64];
};

struct agg {
	/* per (task, filler, length, method, budget): correct / total */
	int correct, total;
};

struct run {
	struct opts o;
	struct model *m;
	struct tok *t;
	struct kv *kv;
	float *logits;
	struct sel *sels[MAX_LIST * MAX_LIST];
	int nsels;
	struct row *rows;
	int nrows;
	size_t caprows;
	struct ids austen, repeat;
	double prefill_tok, prefill_s, decode_tok[MAX_LIST * MAX_LIST],
		decode_s[MAX_LIST * MAX_LIST];
	uint64_t rng;
	int imend, nl;
};

static uint32_t rnd(struct run *r)
{
	r->rng ^= r->rng << 13;
	r->rng ^= r->rng >> 7;
	r->rng ^= r->rng << 17;
	return (uint32_t)(r->rng >> 11);
}

static int load_fillers(struct run *r)
{
	static const char rep[] = "The grass is green. The sky is blue. The sun is yellow. "
				  "Here we go. There and back again. ";
	int need = 0, i, err;
	char *buf = NULL;
	FILE *f;

	for (i = 0; i < r->o.nlengths; i++)
		need = r->o.lengths[i] > need ? r->o.lengths[i] : need;
	if (r->o.fillers[FILL_REPEAT]) {
		/* each repetition is 24 tokens; build once, slice per case */
		while (r->repeat.n < need)
			if ((err = ids_push_text(r->t, &r->repeat, rep, false)))
				return err;
	}
	if (r->o.fillers[FILL_AUSTEN]) {
		size_t want = (size_t)need * 6 + 4096, got;

		f = fopen(r->o.austen, "rb");
		if (!f) {
			fprintf(stderr,
				"icerun eval: %s: %s (tools/setup.sh exports it from "
				"r-cran-janeaustenr); Austen filler skipped\n",
				r->o.austen, strerror(errno));
			r->o.fillers[FILL_AUSTEN] = false;
			return 0;
		}
		buf = malloc(want + 1);
		if (!buf) {
			fclose(f);
			return -ENOMEM;
		}
		got = fread(buf, 1, want, f);
		fclose(f);
		buf[got] = 0;
		err = ids_push_text(r->t, &r->austen, buf, false);
		free(buf);
		if (err)
			return err;
		if (r->austen.n < need) {
			fprintf(stderr, "icerun eval: %s too short; Austen filler skipped\n",
				r->o.austen);
			r->o.fillers[FILL_AUSTEN] = false;
		}
	}
	return 0;
}

/* Moves a filler insertion point forward to just after a sentence end (at most 48 tokens). */
static int snap(const struct run *r, const int32_t *fill, int n, int at)
{
	char buf[64];
	int i, l;

	for (i = at; i < n && i < at + 48; i++) {
		if (i == 0)
			return 0;
		l = tok_decode(r->t, fill[i - 1], buf, sizeof(buf));
		if (l > 0 && (buf[l - 1] == '.' || buf[l - 1] == '\n'))
			return i;
	}
	return at;
}

/*
 * Builds one case: prefix (prefilled exactly) and tail (replayed per mode). The total is
 * `length` tokens. Needles sit at depth fractions; for multikey the asked key rotates.
 */
static int build_case(struct run *r, int task, int filler, int length, int depth_i, int ndepth,
		      struct ids *pre, struct ids *tail, char *key)
{
	const struct ids *src = filler == FILL_AUSTEN ? &r->austen : &r->repeat;
	struct ids head = { 0 }, ndl[NKEYS] = { { 0 } };
	char keys[NKEYS][8], text[256];
	int nneedle = task == TASK_MULTIKEY ? r->o.mk_keys : 1, ask = 0, nf, i, at[NKEYS], pos, err;
	double depth = ndepth > 1 ? (double)depth_i / (ndepth - 1) : 0.5;
	const struct frame *fr = tok_find(r->t, "<|im_start|>") >= 0 ? &chat_frame : &plain_frame;
	int32_t bos = tok_bos(r->t);

	/* BOS first where the vocabulary asks for it (Gemma) */
	err = tok_add_bos(r->t) ? ids_push(&head, &bos, 1) : 0;
	if (err)
		goto out;
	for (i = 0; i < nneedle; i++)
		snprintf(keys[i], sizeof(keys[i]), "%05u", 10000 + rnd(r) % 90000);
	if (task == TASK_PASSKEY) {
		err = ids_push_text(r->t, &head, fr->pk_head, true);
		snprintf(text, sizeof(text),
			 "\nThe pass key is %s. Remember it. %s is the pass key.\n", keys[0],
			 keys[0]);
		err = err ? err : ids_push_text(r->t, &ndl[0], text, false);
		err = err ? err : ids_push_text(r->t, tail, fr->pk_tail, true);
	} else {
		ask = depth_i % nneedle;
		/* RULER's multi-key needle (several keys, one asked for), in the passkey task's
		 * wording: RULER's "special magic number for <name>" phrasing was beyond this 135M
		 * model even with full attention (0-75%, docs/BENCHMARKS.md run A) */
		err = ids_push_text(r->t, &head, fr->mk_head, true);
		for (i = 0; i < nneedle && !err; i++) {
			snprintf(text, sizeof(text),
				 "\nThe pass key for %s is %s. Remember it. %s is "
				 "the pass key for %s.\n",
				 key_names[i], keys[i], keys[i], key_names[i]);
			err = ids_push_text(r->t, &ndl[i], text, false);
		}
		snprintf(text, sizeof(text), fr == &chat_frame ? MK_TAIL_CHAT : MK_TAIL_PLAIN,
			 key_names[ask], key_names[ask]);
		err = err ? err : ids_push_text(r->t, tail, text, true);
	}
	if (err)
		goto out;
	nf = length - head.n - tail->n;
	for (i = 0; i < nneedle; i++)
		nf -= ndl[i].n;
	if (nf < 16 || nf > src->n) {
		err = -EINVAL;
		goto out;
	}
	/* multikey: the needles spread over the haystack, shifted by the depth */
	for (i = 0; i < nneedle; i++) {
		double d = task == TASK_PASSKEY ? depth :
						  fmod(depth / nneedle + (double)i / nneedle, 1.0);

		at[i] = snap(r, src->v, nf, (int)(d * nf));
	}
	err = ids_push(pre, head.v, head.n);
	pos = 0;
	/* needles in filler order (multikey positions may be out of order) */
	for (;;) {
		int next = -1;

		for (i = 0; i < nneedle; i++)
			if (at[i] >= pos && (next < 0 || at[i] < at[next]))
				next = i;
		if (next < 0 || err)
			break;
		err = ids_push(pre, src->v + pos, at[next] - pos);
		err = err ? err : ids_push(pre, ndl[next].v, ndl[next].n);
		pos = at[next];
		at[next] = -1;
	}
	err = err ? err : ids_push(pre, src->v + pos, nf - pos);
	strcpy(key, keys[ask]);
out:
	free(head.v);
	for (i = 0; i < NKEYS; i++)
		free(ndl[i].v);
	return err;
}

int eval_passkey_prompt(const struct tok *t, const char *filler, const char *austen, int length,
			unsigned seed, int32_t **ret, int *ret_n)
{
	struct ids pre = { 0 }, tail = { 0 };
	struct run *r;
	char key[8];
	int fl, err;

	if (!strcmp(filler, "austen"))
		fl = FILL_AUSTEN;
	else if (!strcmp(filler, "repeat"))
		fl = FILL_REPEAT;
	else
		return -EINVAL;
	r = calloc(1, sizeof(*r)); /* a run of one case: what load_fillers and build_case read */
	if (!r)
		return -ENOMEM;
	r->t = (struct tok *)t; /* only encoded and decoded with */
	r->o.austen = austen;
	r->o.fillers[fl] = true;
	r->o.lengths[0] = length;
	r->o.nlengths = 1;
	r->o.mk_keys = NKEYS;
	r->rng = 0x9E3779B97F4A7C15ull ^ seed;
	err = load_fillers(r);
	if (!err && !r->o.fillers[fl])
		err = -ENOENT;
	err = err ? err : build_case(r, TASK_PASSKEY, fl, length, 0, 1, &pre, &tail, key);
	err = err ? err : ids_push(&pre, tail.v, tail.n);
	if (!err) {
		*ret = pre.v;
		*ret_n = pre.n;
		pre.v = NULL;
	}
	free(pre.v);
	free(tail.v);
	free(r->austen.v);
	free(r->repeat.v);
	free(r);
	return err;
}

static int add_row(struct run *r, const struct row *w)
{
	if (buf_grow(&r->rows, &r->caprows, (size_t)r->nrows + 1, sizeof(*r->rows)))
		return -ENOMEM;
	r->rows[r->nrows++] = *w;
	return 0;
}

/* Replays the tail under one mode, answers greedily, scores. */
static int run_mode(struct run *r, int si, int n0, const struct ids *tail, struct row *w)
{
	struct sel *s = r->sels[si];
	struct attn_hook hook = { r->o.dense, s, sel_attend };
	const struct attn_hook *hp = sel_kind(s) == SEL_FULL ? NULL : &hook;
	int i, err, next, len = 0, l, steps = 0;
	uint64_t t0;
	char buf[64];

	r->kv->n = n0;
	err = sel_begin_len(s, r->kv, n0, w->length);
	if (err)
		return err;
	t0 = clock_now_ns();
	for (i = 0; i < tail->n && !err; i++, steps++)
		err = model_forward(r->m, r->kv, &tail->v[i], 1, r->logits, NULL, hp);
	for (i = 0; i < MAX_GEN && !err; i++) {
		next = eval_argmax(r->logits, r->m->cfg.n_vocab);
		if (next == r->imend || next == tok_eos(r->t))
			break;
		l = tok_decode(r->t, next, buf, sizeof(buf));
		if (l > 0 && memchr(buf, '\n', (size_t)l) && len)
			break;
		if (l > 0 && len + l < (int)sizeof(w->answer)) {
			memcpy(w->answer + len, buf, (size_t)l);
			len += l;
		}
		if (i + 1 < MAX_GEN) {
			err = model_forward(r->m, r->kv, &next, 1, r->logits, NULL, hp);
			steps++;
		}
	}
	r->decode_tok[si] += steps;
	r->decode_s[si] += (clock_now_ns() - t0) / 1e9;
	w->attended = sel_attended(s);
	w->pages = sel_pages(s);
	w->tok_s = steps / ((clock_now_ns() - t0) / 1e9);
	sel_end(s);
	w->answer[len] = 0;
	for (i = 0; i < len; i++)
		if (w->answer[i] == '\n' || w->answer[i] == '"')
			w->answer[i] = ' ';
	w->correct = strstr(w->answer, w->key) != NULL;
	return err;
}

static int run_case(struct run *r, int task, int filler, int length, int di, int nd, int skip)
{
	struct ids pre = { 0 }, tail = { 0 };
	struct row w = { 0 };
	uint64_t t0;
	int err, si;
	char key[8], where[32];

	err = build_case(r, task, filler, length, di, nd, &pre, &tail, key);
	if (err || skip)
		goto out;
	r->kv->n = 0;
	t0 = clock_now_ns();
	err = model_forward(r->m, r->kv, pre.v, pre.n, NULL, NULL, NULL);
	if (err)
		goto out;
	r->prefill_tok += pre.n;
	r->prefill_s += (clock_now_ns() - t0) / 1e9;
	/* the depth index, and for passkey where the needle sits (the fraction build_case uses) */
	if (task == TASK_PASSKEY)
		snprintf(where, sizeof(where), "depth %d (%.0f%%)", di,
			 nd > 1 ? 100.0 * di / (nd - 1) : 50.0);
	else
		snprintf(where, sizeof(where), "depth %d", di);
	if (r->o.verbose)
		fprintf(stderr, "%s/%s %d %s: prefill %d tokens %.1f tok/s\n", task_names[task],
			filler_names[filler], pre.n + tail.n, where, pre.n,
			pre.n / ((clock_now_ns() - t0) / 1e9));
	for (si = 0; si < r->nsels && !err; si++) {
		memset(&w, 0, sizeof(w));
		w.task = task;
		w.filler = filler;
		w.length = length;
		w.depth_i = di;
		w.method = sel_kind(r->sels[si]);
		w.budget = sel_budget(r->sels[si]);
		w.tokens = pre.n + tail.n;
		strcpy(w.key, key);
		err = run_mode(r, si, pre.n, &tail, &w);
		if (!err)
			err = add_row(r, &w);
		if (r->o.verbose)
			fprintf(stderr,
				"%s/%s %d %s %-9s budget %3d: answer \"%s\" expected %s "
				"%s (attended %.0f tokens/head, decode %.1f tok/s)\n",
				task_names[task], filler_names[filler], pre.n + tail.n, where,
				sel_kind_name(w.method), w.budget, w.answer, key,
				w.correct ? "ok" : "MISS",
				w.method == SEL_FULL ? pre.n + tail.n : w.attended, w.tok_s);
		if (r->o.verbose && (w.method == SEL_DCI || w.method == SEL_ICECACHE))
			fprintf(stderr,
				"    %.1f pages fetched per layer and KV head per step (the "
				"budget's best tokens among them attended)%s%s\n",
				w.pages, *sel_stats_text(r->sels[si]) ? "; " : "",
				sel_stats_text(r->sels[si]));
	}
out:
	free(pre.v);
	free(tail.v);
	return err;
}

/* ---- reporting ---- */

static void acc_of(const struct run *r, int task, int filler, int length, int method, int budget,
		   int *ret_c, int *ret_n)
{
	int i, c = 0, n = 0;

	for (i = 0; i < r->nrows; i++) {
		const struct row *w = &r->rows[i];

		if (w->task == task && w->filler == filler && w->length == length &&
		    w->method == method && (method == SEL_FULL || w->budget == budget)) {
			c += w->correct;
			n++;
		}
	}
	*ret_c = c;
	*ret_n = n;
}

static void print_tables(const struct run *r, FILE *f)
{
	int task, fl, li, si, c, n;

	for (task = 0; task < 2; task++) {
		for (fl = 0; fl < 2; fl++) {
			int any = 0;

			for (li = 0; li < r->o.nlengths; li++) {
				acc_of(r, task, fl, r->o.lengths[li], SEL_FULL, 0, &c, &n);
				any |= n;
			}
			if (!any)
				continue;
			fprintf(f,
				"\n%s accuracy, %s filler (exact match of the key; %% of cases)\n",
				task_names[task], filler_names[fl]);
			fprintf(f, "%7s", "tokens");
			for (si = 0; si < r->nsels; si++) {
				char h[32];

				if (sel_kind(r->sels[si]) == SEL_FULL)
					snprintf(h, sizeof(h), "full");
				else
					snprintf(h, sizeof(h), "%s@%d",
						 sel_kind_name(sel_kind(r->sels[si])),
						 sel_budget(r->sels[si]));
				fprintf(f, " %12s", h);
			}
			fprintf(f, "\n");
			for (li = 0; li < r->o.nlengths; li++) {
				fprintf(f, "%7d", r->o.lengths[li]);
				for (si = 0; si < r->nsels; si++) {
					acc_of(r, task, fl, r->o.lengths[li], sel_kind(r->sels[si]),
					       sel_budget(r->sels[si]), &c, &n);
					if (n)
						fprintf(f, " %8.0f%% %2d", 100.0 * c / n, n);
					else
						fprintf(f, " %12s", "-");
				}
				fprintf(f, "\n");
			}
		}
	}
	fprintf(f,
		"\nattention-mass recall over the sparse layers (mass of the attended tokens under "
		"the full softmax; ratio = that / mass of the best same-size token set)\n");
	fprintf(f, "%7s %-16s %8s %8s %8s\n", "tokens", "mode", "mass", "oracle", "ratio");
	for (li = 0; li < r->o.nlengths; li++) {
		for (si = 0; si < r->nsels; si++) {
			struct sel_mass ms;
			char h[32];

			if (sel_kind(r->sels[si]) == SEL_FULL ||
			    sel_mass(r->sels[si], r->o.lengths[li], &ms))
				continue;
			snprintf(h, sizeof(h), "%s@%d", sel_kind_name(sel_kind(r->sels[si])),
				 sel_budget(r->sels[si]));
			fprintf(f, "%7d %-16s %8.3f %8.3f %8.3f\n", r->o.lengths[li], h, ms.mass,
				ms.oracle, ms.oracle > 0 ? ms.mass / ms.oracle : 0);
		}
	}
	fprintf(f, "\nspeed: prefill %.0f tokens in %.1f s = %.1f tok/s; decode tok/s:",
		r->prefill_tok, r->prefill_s, r->prefill_s > 0 ? r->prefill_tok / r->prefill_s : 0);
	for (si = 0; si < r->nsels; si++)
		fprintf(f, " %s@%d %.1f", sel_kind_name(sel_kind(r->sels[si])),
			sel_budget(r->sels[si]),
			r->decode_s[si] > 0 ? r->decode_tok[si] / r->decode_s[si] : 0);
	fprintf(f, " (%d threads)\n", r->o.threads);
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

static void print_json(const struct run *r, FILE *f, int argc, char **argv)
{
	int i, li, si, task, fl, n, l;
	char host[128] = "", when[64];
	time_t now = time(NULL);

	gethostname(host, sizeof(host) - 1);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
	fprintf(f, "{\"bench\":\"icerun-eval\",\"command\":\"icerun");
	for (i = 0; i < argc; i++) {
		fputc(' ', f);
		for (const char *p = argv[i]; *p; p++)
			fprintf(f, *p == '"' || *p == '\\' ? "\\%c" : "%c", *p);
	}
	fprintf(f, "\",\"machine\":{\"host\":");
	json_str(f, host);
	fprintf(f, ",\"cpus\":%ld,\"threads\":%d},\"time\":\"%s\",\"model\":",
		sysconf(_SC_NPROCESSORS_ONLN), r->o.threads, when);
	json_str(f, r->o.model);
	fprintf(f, ",\"dense_layers\":%d,\"depths\":%d,\"mk_keys\":%d,\"seed\":%u", r->o.dense,
		r->o.depths, r->o.mk_keys, r->o.seed);
	fprintf(f,
		",\"speed\":{\"prefill_tokens\":%.0f,\"prefill_s\":%.3f,\"prefill_tok_s\":%.2f,"
		"\"decode_tok_s\":{",
		r->prefill_tok, r->prefill_s, r->prefill_s > 0 ? r->prefill_tok / r->prefill_s : 0);
	for (si = 0; si < r->nsels; si++)
		fprintf(f, "%s\"%s@%d\":%.2f", si ? "," : "", sel_kind_name(sel_kind(r->sels[si])),
			sel_budget(r->sels[si]),
			r->decode_s[si] > 0 ? r->decode_tok[si] / r->decode_s[si] : 0);
	fprintf(f, "}},\"accuracy\":[");
	n = 0;
	for (task = 0; task < 2; task++)
		for (fl = 0; fl < 2; fl++)
			for (li = 0; li < r->o.nlengths; li++)
				for (si = 0; si < r->nsels; si++) {
					int cc, nn;

					acc_of(r, task, fl, r->o.lengths[li], sel_kind(r->sels[si]),
					       sel_budget(r->sels[si]), &cc, &nn);
					if (!nn)
						continue;
					fprintf(f,
						"%s{\"task\":\"%s\",\"filler\":\"%s\",\"length\":%d,"
						"\"method\":\"%s\",\"budget\":%d,\"correct\":%d,\"cases\":%d,"
						"\"accuracy\":%.4f}",
						n++ ? "," : "", task_names[task], filler_names[fl],
						r->o.lengths[li],
						sel_kind_name(sel_kind(r->sels[si])),
						sel_budget(r->sels[si]), cc, nn, (double)cc / nn);
				}
	fprintf(f, "],\"mass_recall\":[");
	n = 0;
	for (li = 0; li < r->o.nlengths; li++)
		for (si = 0; si < r->nsels; si++) {
			struct sel_mass ms;

			if (sel_kind(r->sels[si]) == SEL_FULL ||
			    sel_mass(r->sels[si], r->o.lengths[li], &ms))
				continue;
			fprintf(f,
				"%s{\"length\":%d,\"method\":\"%s\",\"budget\":%d,\"mass\":%.4f,"
				"\"oracle\":%.4f,\"ratio\":%.4f,\"count\":%ld,\"layer_mass_sum\":[",
				n++ ? "," : "", r->o.lengths[li],
				sel_kind_name(sel_kind(r->sels[si])), sel_budget(r->sels[si]),
				ms.mass, ms.oracle, ms.oracle > 0 ? ms.mass / ms.oracle : 0,
				ms.count);
			for (l = 0; l < ms.nlayers; l++)
				fprintf(f, "%s%.3f", l ? "," : "", ms.layer_mass[l]);
			fprintf(f, "],\"layer_oracle_sum\":[");
			for (l = 0; l < ms.nlayers; l++)
				fprintf(f, "%s%.3f", l ? "," : "", ms.layer_oracle[l]);
			fprintf(f, "],\"layer_count\":[");
			for (l = 0; l < ms.nlayers; l++)
				fprintf(f, "%s%ld", l ? "," : "", ms.layer_count[l]);
			fprintf(f, "]}");
		}
	fprintf(f, "],\"cases\":[");
	for (i = 0; i < r->nrows; i++) {
		const struct row *w = &r->rows[i];

		fprintf(f,
			"%s{\"task\":\"%s\",\"filler\":\"%s\",\"length\":%d,\"tokens\":%d,"
			"\"depth\":%d,\"method\":\"%s\",\"budget\":%d,\"key\":\"%s\",\"answer\":",
			i ? "," : "", task_names[w->task], filler_names[w->filler], w->length,
			w->tokens, w->depth_i, sel_kind_name(w->method), w->budget, w->key);
		json_str(f, w->answer);
		fprintf(f, ",\"correct\":%s,\"attended\":%.1f,\"pages\":%.2f}",
			w->correct ? "true" : "false",
			w->method == SEL_FULL ? (double)w->tokens : w->attended, w->pages);
	}
	fprintf(f, "]}\n");
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: icerun eval [options]\n"
		"  -m, --model PATH      GGUF model (default $ICE_MODEL or build/models/...)\n"
		"  -t, --threads N       worker threads (default 2)\n"
		"  --lengths L,L,..      prompt lengths in tokens (default 1024,2048,4096,8192)\n"
		"  --budgets B,B,..      tokens attended per layer and KV head (default 64,128,256)\n"
		"  --methods M,M,..      full,stream,quest,dci,oracle,icecache (default full,dci,quest,stream"
		"%s)\n"
		"  --depths N            passkey depths 0%%..100%% (default 10)\n"
		"  --mk-depths N         multikey cases per length (default 4)\n"
		"  --mk-keys N           multikey needles per case, 2..4 (default 4), one asked for\n"
		"  --tasks passkey,multikey   --fillers austen,repeat\n"
		"  --dense N             leading layers kept dense in every sparse mode (default 2)\n"
		"  --austen PATH         Austen text (default build/models/austen.txt)\n"
		"  --socket PATH         icecache mode through this daemon (default: embedded engine)\n"
		"  --engine K=V,K=V      icecache, embedded: engine settings (see icectl config), e.g.\n"
		"                        group_merge=0 or exact_search=1\n"
		"  --rest 0|1            icecache: add the engine's estimate of the unattended pages\n"
		"                        (ice_select_rest) to each head's softmax (default 1)\n"
		"  --quick               lengths 1024,2048, 4 depths, 2 multikey cases\n"
		"  --shard K/N           run only cases with index %% N == K (merge with eval_report.py)\n"
		"  --seed N  --json  -v (one line per case on stderr)\n",
		sel_have_icecache() ? ",icecache" : "");
}

int eval_main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "threads", required_argument, NULL, 't' },
		{ "lengths", required_argument, NULL, 'L' },
		{ "budgets", required_argument, NULL, 'B' },
		{ "methods", required_argument, NULL, 'M' },
		{ "depths", required_argument, NULL, 'D' },
		{ "mk-depths", required_argument, NULL, 'K' },
		{ "mk-keys", required_argument, NULL, 'k' },
		{ "tasks", required_argument, NULL, 'T' },
		{ "fillers", required_argument, NULL, 'F' },
		{ "dense", required_argument, NULL, 'd' },
		{ "austen", required_argument, NULL, 'a' },
		{ "socket", required_argument, NULL, 's' },
		{ "engine", required_argument, NULL, 'E' },
		{ "rest", required_argument, NULL, 'R' },
		{ "quick", no_argument, NULL, 'q' },
		{ "seed", required_argument, NULL, 'S' },
		{ "json", no_argument, NULL, 'j' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "shard", required_argument, NULL, 'H' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static struct run rr;
	struct run *r = &rr;
	const char *methods = NULL;
	int c, i, j, err = 0, task, fl, li, di, maxlen = 0, ncase = 0;

	memset(r, 0, sizeof(*r));
	r->o.model = getenv("ICE_MODEL") ? getenv("ICE_MODEL") :
					   "build/models/SmolLM2-135M-Instruct.Q4_1.gguf";
	r->o.austen = getenv("ICE_AUSTEN") ? getenv("ICE_AUSTEN") : "build/models/austen.txt";
	r->o.nlengths = parse_list("1024,2048,4096,8192", r->o.lengths, MAX_LIST);
	r->o.nbudgets = parse_list("64,128,256", r->o.budgets, MAX_LIST);
	r->o.depths = 10;
	r->o.mk_depths = 4;
	r->o.mk_keys = 4;
	r->o.dense = 2;
	r->o.threads = 2;
	r->o.seed = 1;
	r->o.rest = 1;
	r->o.nshards = 1;
	r->o.tasks[0] = r->o.tasks[1] = true;
	r->o.fillers[0] = r->o.fillers[1] = true;
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:t:vh", lo, NULL)) != -1) {
		switch (c) {
		case 'm':
			r->o.model = optarg;
			break;
		case 't':
			r->o.threads = atoi(optarg);
			break;
		case 'L':
			r->o.nlengths = parse_list(optarg, r->o.lengths, MAX_LIST);
			break;
		case 'B':
			r->o.nbudgets = parse_list(optarg, r->o.budgets, MAX_LIST);
			break;
		case 'M':
			methods = optarg;
			break;
		case 'D':
			r->o.depths = atoi(optarg);
			break;
		case 'K':
			r->o.mk_depths = atoi(optarg);
			break;
		case 'k':
			r->o.mk_keys = atoi(optarg);
			break;
		case 'T':
			r->o.tasks[0] = strstr(optarg, "passkey") != NULL;
			r->o.tasks[1] = strstr(optarg, "multikey") != NULL;
			break;
		case 'F':
			r->o.fillers[0] = strstr(optarg, "austen") != NULL;
			r->o.fillers[1] = strstr(optarg, "repeat") != NULL;
			break;
		case 'd':
			r->o.dense = atoi(optarg);
			break;
		case 'a':
			r->o.austen = optarg;
			break;
		case 's':
			r->o.socket = optarg;
			break;
		case 'E':
			r->o.engine = optarg;
			break;
		case 'R':
			if (strcmp(optarg, "0") && strcmp(optarg, "1")) {
				fprintf(stderr, "icerun eval: --rest 0 or 1\n");
				return 2;
			}
			r->o.rest = optarg[0] == '1';
			break;
		case 'q':
			r->o.nlengths = parse_list("1024,2048", r->o.lengths, MAX_LIST);
			r->o.depths = 4;
			r->o.mk_depths = 2;
			break;
		case 'S':
			r->o.seed = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'j':
			r->o.json = true;
			break;
		case 'v':
			r->o.verbose = true;
			break;
		case 'H':
			if (sscanf(optarg, "%d/%d", &r->o.shard, &r->o.nshards) != 2 ||
			    r->o.nshards < 1 || r->o.shard < 0 || r->o.shard >= r->o.nshards) {
				fprintf(stderr, "icerun eval: --shard K/N with 0 <= K < N\n");
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (r->o.engine && r->o.socket) {
		fprintf(stderr,
			"icerun eval: --engine sets the embedded engine; a daemon takes its "
			"settings from its own config\n");
		return 2;
	}
	if (r->o.nlengths < 0 || r->o.nbudgets < 0 || r->o.depths < 1 || r->o.depths > 100 ||
	    r->o.mk_depths < 0 || r->o.mk_depths > 100 || r->o.mk_keys < 2 ||
	    r->o.mk_keys > NKEYS || r->o.dense < 0 || r->o.threads < 1 || r->o.threads > 256 ||
	    optind != argc) {
		usage(stderr);
		return 2;
	}
	/* methods: full first (it is the reference), then each sparse kind × budget */
	{
		char buf[256], *tok, *save = NULL;

		snprintf(buf, sizeof(buf), "%s",
			 methods ? methods :
				   (sel_have_icecache() ? "full,icecache,dci,quest,stream" :
							  "full,dci,quest,stream"));
		r->o.nmethods = 0;
		for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
			int k = sel_kind_parse(tok);

			if (k < 0 || r->o.nmethods == MAX_LIST) {
				fprintf(stderr, "icerun eval: unknown or unavailable method '%s'\n",
					tok);
				return 2;
			}
			r->o.methods[r->o.nmethods++] = k;
		}
	}
	for (i = 0; i < r->o.nlengths; i++)
		maxlen = r->o.lengths[i] > maxlen ? r->o.lengths[i] : maxlen;
	r->rng = 0x9E3779B97F4A7C15ull ^ r->o.seed;
	err = model_open(r->o.model, r->o.threads, &r->m);
	if (err) {
		fprintf(stderr, "icerun eval: %s: %s\n", r->o.model, strerror(-err));
		return 1;
	}
	err = tok_new(r->m->g, &r->t);
	err = err ? err : kv_new(r->m, maxlen + 64, &r->kv);
	r->logits = malloc((size_t)r->m->cfg.n_vocab * sizeof(float));
	if (!err && !r->logits)
		err = -ENOMEM;
	if (err)
		goto out;
	r->imend = tok_find(r->t, "<|im_end|>");
	for (i = 0; i < r->o.nmethods && !err; i++) {
		int k = r->o.methods[i];

		for (j = 0; j < (k == SEL_FULL ? 1 : r->o.nbudgets) && !err; j++) {
			struct sel_cfg sc = {
				.kind = k,
				.budget = k == SEL_FULL ? 0 : r->o.budgets[j],
				.dense = r->o.dense,
				.cap = r->kv->cap,
				.socket = r->o.socket,
				.engine_config = r->o.engine,
				.rest = r->o.rest,
				.lengths = r->o.lengths,
				.nlengths = r->o.nlengths,
			};

			err = sel_new(r->m, &sc, &r->sels[r->nsels]);
			if (!err)
				r->nsels++;
		}
	}
	if (err) {
		if (r->o.engine && (err == -EINVAL || err == -E2BIG))
			fprintf(stderr,
				"icerun eval: --engine %s: not valid engine settings "
				"(`icectl config` lists them)\n",
				r->o.engine);
		else
			fprintf(stderr, "icerun eval: attention mode: %s\n", strerror(-err));
		goto out;
	}
	err = load_fillers(r);
	if (err)
		goto out;
	for (task = 0; task < 2 && !err; task++) {
		int nd = task == TASK_PASSKEY ? r->o.depths : r->o.mk_depths;

		if (!r->o.tasks[task])
			continue;
		for (fl = 0; fl < 2 && !err; fl++) {
			if (!r->o.fillers[fl] || (task == TASK_MULTIKEY && fl == FILL_REPEAT &&
						  r->o.fillers[FILL_AUSTEN]))
				continue;
			for (li = 0; li < r->o.nlengths && !err; li++)
				for (di = 0; di < nd && !err; di++) {
					/* keys come from one stream, so a shard draws them all */
					int skip = ncase++ % r->o.nshards != r->o.shard;

					err = run_case(r, task, fl, r->o.lengths[li], di, nd, skip);
				}
		}
	}
	if (err) {
		fprintf(stderr, "icerun eval: %s\n", strerror(-err));
		goto out;
	}
	print_tables(r, r->o.json ? stderr : stdout);
	if (r->o.json)
		print_json(r, stdout, argc, argv);
out:
	for (i = 0; i < r->nsels; i++)
		sel_free(r->sels[i]);
	free(r->rows);
	free(r->austen.v);
	free(r->repeat.v);
	free(r->logits);
	kv_free(r->kv);
	tok_free(r->t);
	model_free(r->m);
	return err ? 1 : 0;
}
