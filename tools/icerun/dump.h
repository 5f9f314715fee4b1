/*
 * icerun dump: the real model's post-RoPE keys and decode queries of chosen (layer, KV head)
 * pairs, one .kvd file each (docs/KVDUMP.md), for `icebench index --dump`.
 */
#ifndef ICERUN_DUMP_H
#define ICERUN_DUMP_H

#include <stdbool.h>

#define DUMP_MAX_LAYERS 256
#define DUMP_MAX_HEADS 64

struct dump_cfg {
	const char *model, *austen, *out;
	const char *filler; /* "austen" or "repeat" */
	int tokens;         /* prompt length N: all N keys are dumped */
	int queries;        /* greedy decode steps Q after the prompt: one query group each */
	int threads;
	unsigned seed; /* the passkey, as icerun eval's --seed */
	/* which layers and KV heads; an empty list (n == 0) means all of them */
	int layers[DUMP_MAX_LAYERS], nlayers;
	int heads[DUMP_MAX_HEADS], nheads;
	bool quiet; /* no progress lines on stderr */
};

/*
 * Prefills the passkey prompt of c->tokens tokens, decodes c->queries tokens greedily, and
 * writes OUT/LllHh.kvd for every chosen layer and KV head (fp32; keys 0..N-1, then per step the
 * group's query heads, without the 1/sqrt(d) attention scale) and OUT/tokens.txt (the ids:
 * prompt, then decoded). Creates OUT when missing. Errors are printed on stderr; returns 0,
 * -EINVAL (a layer or head the model lacks, bad sizes), -errno from the model or the files.
 */
int dump_run(const struct dump_cfg *c);
int dump_main(int argc, char **argv);

#endif
