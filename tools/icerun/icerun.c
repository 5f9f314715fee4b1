/*
 * icerun: runs SmolLM2-class Llama GGUF models and Gemma 3 (gemma.c) on the CPU and evaluates
 * long-context retrieval under sparse attention modes.
 *
 *   icerun info      -m MODEL                    model shape, tensor types
 *   icerun tokenize  -m MODEL [--special] TEXT   token ids, one per line
 *   icerun generate  -m MODEL [-n N] [--chat] PROMPT
 *   icerun logits    -m MODEL --tokens a,b,c [-o FILE]   logits of every position
 *   icerun greedy    -m MODEL --tokens a,b,c [-n N]      greedy continuation ids
 *   icerun eval      -m MODEL [options]          passkey / needle / attention-mass evaluation
 *   icerun dump      -m MODEL --out DIR [options]   real keys and queries as .kvd files
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "dump.h"
#include "eval.h"
#include "gemma.h"
#include "gguf.h"
#include "model.h"
#include "tok.h"

static const char *default_model(void)
{
	const char *m = getenv("ICE_MODEL");

	return m ? m : "build/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: icerun <command> [options]\n"
		"  info      -m MODEL                      model shape and tensor types\n"
		"  tokenize  -m MODEL [--special] TEXT     token ids, one per line\n"
		"  generate  -m MODEL [-n N] [--chat] [-t THREADS] PROMPT\n"
		"                                          greedy continuation (--chat: instruct template)\n"
		"  logits    -m MODEL --tokens IDS [-o FILE] [-t THREADS] [--last N]\n"
		"                                          logits of every position (or the last N),\n"
		"                                          float32 [n][vocab]\n"
		"  greedy    -m MODEL --tokens IDS [-n N]  greedy continuation ids, one per line\n"
		"  eval      -m MODEL [see icerun eval --help]\n"
		"  dump      -m MODEL --out DIR [see icerun dump --help]\n"
		"                                          post-RoPE keys and decode queries as .kvd\n"
		"MODEL defaults to $ICE_MODEL or build/models/SmolLM2-135M-Instruct.Q4_1.gguf\n"
		"(Gemma 3: build/models/gemma-3-270m-q4_k_m.gguf)\n");
}

static int cmd_info(const char *path)
{
	struct gguf *g;
	uint64_t i;
	int err, counts[16] = { 0 };
	struct model *m;

	err = gguf_open(path, &g);
	if (err) {
		fprintf(stderr, "icerun: %s: %s\n", path, strerror(-err));
		return 1;
	}
	printf("gguf version %u, %llu tensors, %llu metadata keys\n", g->version,
	       (unsigned long long)g->ntensors, (unsigned long long)g->nkv);
	for (i = 0; i < g->ntensors; i++)
		if (g->tensors[i].type < 16)
			counts[g->tensors[i].type]++;
	for (i = 0; i < 16; i++)
		if (counts[i])
			printf("  %-6s %d tensors\n", gguf_type_name((uint32_t)i), counts[i]);
	gguf_close(g);
	err = model_open(path, 1, &m);
	if (err) {
		fprintf(stderr, "icerun: model: %s\n", strerror(-err));
		return 1;
	}
	printf("layers %d, embd %d, heads %d, kv heads %d, head dim %d, ffn %d, vocab %d, ctx %d, "
	       "rope base %g, eps %g, output %s\n",
	       m->cfg.n_layer, m->cfg.n_embd, m->cfg.n_head, m->cfg.n_kv, m->cfg.head_dim,
	       m->cfg.n_ff, m->cfg.n_vocab, m->cfg.n_ctx, m->cfg.rope_base, m->cfg.eps,
	       m->output.data == m->tok_embd.data ? "tied to token_embd" : "output.weight");
	if (m->gemma) {
		printf("gemma3: sliding window %d tokens, global layers", gemma_window(m));
		for (int l = 0; l < m->cfg.n_layer; l++)
			if (gemma_layer_global(m, l))
				printf(" %d", l);
		printf("\n");
	}
	model_free(m);
	return 0;
}

static int cmd_tokenize(const char *path, const char *text, bool special)
{
	struct gguf *g;
	struct tok *t;
	int32_t *ids;
	int n, i, err;
	char buf[256];

	err = gguf_open(path, &g);
	if (err)
		goto fail;
	err = tok_new(g, &t);
	if (err) {
		gguf_close(g);
		goto fail;
	}
	ids = malloc((strlen(text) + 1) * sizeof(*ids));
	n = ids ? tok_encode(t, text, strlen(text), special, ids, strlen(text) + 1) : -ENOMEM;
	for (i = 0; i < n; i++) {
		int l = tok_decode(t, ids[i], buf, sizeof(buf));

		/* one token per line: escape the bytes that would break the line format */
		printf("%d\t", ids[i]);
		for (int b = 0; b < l; b++) {
			unsigned char ch = (unsigned char)buf[b];

			if (ch == '\n')
				fputs("\\n", stdout);
			else if (ch == '\t')
				fputs("\\t", stdout);
			else if (ch == '\\')
				fputs("\\\\", stdout);
			else if (ch == '\r')
				fputs("\\r", stdout);
			else
				putchar(ch);
		}
		putchar('\n');
	}
	free(ids);
	tok_free(t);
	gguf_close(g);
	if (n < 0) {
		err = n;
		goto fail;
	}
	return 0;
fail:
	fprintf(stderr, "icerun: tokenize: %s\n", strerror(-err));
	return 1;
}

static int cmd_generate(const char *path, const char *prompt, int ntok, bool chat, int threads)
{
	struct model *m = NULL;
	struct tok *t = NULL;
	struct kv *kv = NULL;
	int32_t *ids = NULL, next;
	float *logits = NULL;
	int n, i, err, eos, imend;
	uint64_t t0, t1, t2;
	char buf[256];
	char *text = NULL;

	err = model_open(path, threads, &m);
	if (err)
		goto out;
	err = tok_new(m->g, &t);
	if (err)
		goto out;
	if (chat && tok_find(t, "<start_of_turn>") >= 0) {
		/* Gemma's turn template (the instruction-tuned models'; the 270M file is a base model) */
		size_t len = strlen(prompt) + 64;

		text = malloc(len);
		if (!text) {
			err = -ENOMEM;
			goto out;
		}
		snprintf(text, len, "<start_of_turn>user\n%s<end_of_turn>\n<start_of_turn>model\n",
			 prompt);
	} else {
		err = eval_chat_prompt(prompt, chat, &text);
		if (err)
			goto out;
	}
	ids = malloc((strlen(text) + 2) * sizeof(*ids));
	logits = malloc((size_t)m->cfg.n_vocab * sizeof(float));
	if (!ids || !logits) {
		err = -ENOMEM;
		goto out;
	}
	/* Gemma's SentencePiece vocabulary asks for BOS first (SmolLM2's chat template does not) */
	n = tok_add_bos(t) ? 1 : 0;
	if (n)
		ids[0] = tok_bos(t);
	i = tok_encode(t, text, strlen(text), chat, ids + n, strlen(text) + 1);
	if (i < 0 || i + n == 0) {
		err = i < 0 ? i : -EINVAL;
		goto out;
	}
	n += i;
	err = kv_new(m, n + ntok + 1, &kv);
	if (err)
		goto out;
	eos = tok_eos(t);
	imend = tok_find(t, "<|im_end|>");
	if (imend < 0)
		imend = tok_find(t, "<end_of_turn>");
	t0 = clock_now_ns();
	err = model_forward(m, kv, ids, n, logits, NULL, NULL);
	t1 = clock_now_ns();
	fputs(text, stdout);
	for (i = 0; i < ntok && !err; i++) {
		next = eval_argmax(logits, m->cfg.n_vocab);
		if (next == eos || next == imend)
			break;
		int l = tok_decode(t, next, buf, sizeof(buf));

		fwrite(buf, 1, l > 0 ? (size_t)l : 0, stdout);
		fflush(stdout);
		err = model_forward(m, kv, &next, 1, logits, NULL, NULL);
	}
	t2 = clock_now_ns();
	printf("\n");
	fprintf(stderr, "prefill %d tokens %.1f tok/s, decode %d tokens %.1f tok/s (%d threads)\n",
		n, n / ((t1 - t0) / 1e9), i, i ? i / ((t2 - t1) / 1e9) : 0.0, threads);
out:
	if (err)
		fprintf(stderr, "icerun: generate: %s\n", strerror(-err));
	free(text);
	free(ids);
	free(logits);
	kv_free(kv);
	tok_free(t);
	model_free(m);
	return err ? 1 : 0;
}

static int parse_ids(const char *s, int32_t **ret, int *ret_n)
{
	size_t cap = 16;
	int n = 0;
	int32_t *ids = malloc(cap * sizeof(*ids));
	char *end;
	long v;

	if (!ids)
		return -ENOMEM;
	while (*s) {
		v = strtol(s, &end, 10);
		if (end == s || v < 0 || v > 1 << 24) {
			free(ids);
			return -EINVAL;
		}
		if (buf_grow(&ids, &cap, (size_t)n + 1, sizeof(*ids))) {
			free(ids);
			return -ENOMEM;
		}
		ids[n++] = (int32_t)v;
		s = *end == ',' ? end + 1 : end;
		if (*end && *end != ',') {
			free(ids);
			return -EINVAL;
		}
	}
	*ret = ids;
	*ret_n = n;
	return 0;
}

/* last > 0: only the logits of the last `last` positions (long prompts: [n][vocab] is large) */
static int cmd_logits(const char *path, const char *tokens, const char *outp, int threads, int last)
{
	struct model *m = NULL;
	struct kv *kv = NULL;
	int32_t *ids = NULL;
	float *lg = NULL;
	FILE *f = NULL;
	int n = 0, err;

	err = parse_ids(tokens, &ids, &n);
	if (err || n == 0) {
		err = err ? err : -EINVAL;
		goto out;
	}
	if (last > 0 && last < n) {
		err = model_open(path, threads, &m);
		if (!err)
			err = kv_new(m, n, &kv);
		if (!err)
			err = model_forward(m, kv, ids, n - last, NULL, NULL, NULL);
		if (err)
			goto out;
		memmove(ids, ids + n - last, (size_t)last * sizeof(*ids));
		n = last;
	}
	if (!m) {
		err = model_open(path, threads, &m);
		if (!err)
			err = kv_new(m, n, &kv);
		if (err)
			goto out;
	}
	lg = malloc((size_t)n * m->cfg.n_vocab * sizeof(float));
	if (!lg) {
		err = -ENOMEM;
		goto out;
	}
	err = model_forward(m, kv, ids, n, NULL, lg, NULL);
	if (err)
		goto out;
	f = outp ? fopen(outp, "wb") : stdout;
	if (!f) {
		err = -errno;
		goto out;
	}
	if (fwrite(lg, sizeof(float), (size_t)n * m->cfg.n_vocab, f) != (size_t)n * m->cfg.n_vocab)
		err = -EIO;
	if (outp && fclose(f))
		err = -errno;
out:
	if (err)
		fprintf(stderr, "icerun: logits: %s\n", strerror(-err));
	free(ids);
	free(lg);
	kv_free(kv);
	model_free(m);
	return err ? 1 : 0;
}

static int cmd_greedy(const char *path, const char *tokens, int ntok, int threads)
{
	struct model *m = NULL;
	struct kv *kv = NULL;
	int32_t *ids = NULL, next;
	float *lg = NULL;
	int n = 0, i, err;

	err = parse_ids(tokens, &ids, &n);
	if (err || n == 0) {
		err = err ? err : -EINVAL;
		goto out;
	}
	err = model_open(path, threads, &m);
	if (!err)
		err = kv_new(m, n + ntok, &kv);
	if (err)
		goto out;
	lg = malloc((size_t)m->cfg.n_vocab * sizeof(float));
	if (!lg) {
		err = -ENOMEM;
		goto out;
	}
	err = model_forward(m, kv, ids, n, lg, NULL, NULL);
	/* decode one token at a time, so this also checks the single-token path against prefill */
	for (i = 0; i < ntok && !err; i++) {
		next = eval_argmax(lg, m->cfg.n_vocab);
		printf("%d\n", next);
		if (i + 1 < ntok)
			err = model_forward(m, kv, &next, 1, lg, NULL, NULL);
	}
out:
	if (err)
		fprintf(stderr, "icerun: greedy: %s\n", strerror(-err));
	free(ids);
	free(lg);
	kv_free(kv);
	model_free(m);
	return err ? 1 : 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "threads", required_argument, NULL, 't' },
		{ "tokens", required_argument, NULL, 'k' },
		{ "output", required_argument, NULL, 'o' },
		{ "last", required_argument, NULL, 'L' },
		{ "special", no_argument, NULL, 's' },
		{ "chat", no_argument, NULL, 'c' },
		{ "scalar", no_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *cmd, *model = default_model(), *tokens = NULL, *outp = NULL;
	bool special = false, chat = false;
	int c, ntok = 32, threads = 2, last = 0;

	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	cmd = argv[1];
	if (!strcmp(cmd, "eval"))
		return eval_main(argc - 1, argv + 1);
	if (!strcmp(cmd, "dump"))
		return dump_main(argc - 1, argv + 1);
	optind = 2;
	while ((c = getopt_long(argc, argv, "m:t:n:o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			model = optarg;
			break;
		case 't':
			threads = atoi(optarg);
			break;
		case 'n':
			ntok = atoi(optarg);
			break;
		case 'k':
			tokens = optarg;
			break;
		case 'o':
			outp = optarg;
			break;
		case 'L':
			last = atoi(optarg);
			break;
		case 's':
			special = true;
			break;
		case 'c':
			chat = true;
			break;
		case 'S':
			mm_force_scalar(1);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (threads < 1 || threads > 256 || ntok < 0) {
		fprintf(stderr, "icerun: bad -t or -n\n");
		return 2;
	}
	if (!strcmp(cmd, "info"))
		return cmd_info(model);
	if (!strcmp(cmd, "logits")) {
		if (!tokens) {
			fprintf(stderr, "icerun logits: --tokens is required\n");
			return 2;
		}
		return cmd_logits(model, tokens, outp, threads, last);
	}
	if (!strcmp(cmd, "greedy")) {
		if (!tokens) {
			fprintf(stderr, "icerun greedy: --tokens is required\n");
			return 2;
		}
		return cmd_greedy(model, tokens, ntok, threads);
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(cmd, "tokenize"))
		return cmd_tokenize(model, argv[optind], special);
	if (!strcmp(cmd, "generate"))
		return cmd_generate(model, argv[optind], ntok, chat, threads);
	usage(stderr);
	return 2;
}
