/*
 * Gemma 3 forward pass (architecture "gemma3" in GGUF), selected by model_open from the file's
 * general.architecture. What differs from the Llama path in model.c:
 *   - the embedding is scaled by sqrt(n_embd); the output matrix is the embedding (tied);
 *   - every RMSNorm weight is used as stored (the converter folded Gemma's 1 + w into it), and
 *     there are four per layer: before and after attention, before and after the MLP;
 *   - QK-norm: q and k are RMS-normalised per head (their own weights) before RoPE;
 *   - RoPE in GGUF's NEOX mode (x[i] with x[i + d/2]), base rope.freq_base on the global layers
 *     and the local base on the sliding-window ones;
 *   - local layers attend to the last attention.sliding_window tokens (the current one
 *     included), global layers to everything; by default one layer in six is global (layers
 *     5, 11, 17 of 18), as Gemma 3 fixes it;
 *   - head dim attention.key_length (256), not n_embd / n_head; query scale 1/sqrt(head dim);
 *   - MLP: GeGLU, gelu (tanh approximation) of the gate times up.
 * The KV cache is struct kv, as for Llama (all layers full length; local layers read only their
 * window of it).
 */
#ifndef ICERUN_GEMMA_H
#define ICERUN_GEMMA_H

#include <stdbool.h>

#include "gguf.h"
#include "model.h"

/* Whether the file's general.architecture is gemma3. */
bool gemma_is(const struct gguf *g);

/*
 * Fills m->cfg, m->tok_embd, m->output, m->output_norm and m->gemma from m->g (already open).
 * Returns 0, -EINVAL (missing or inconsistent metadata or tensor shapes), -EOPNOTSUPP (a tensor
 * type icerun cannot dequantise, or a feature this runner lacks), -ENOMEM.
 */
int gemma_open(struct model *m);
void gemma_free(struct gemma *gm);

/* Whether layer l attends to the whole context (false: the sliding window). */
bool gemma_layer_global(const struct model *m, int l);
/* Tokens a local layer attends to. */
int gemma_window(const struct model *m);

/* model_forward for Gemma 3; the hook (n == 1) replaces attention on global layers >= dense. */
int gemma_forward(struct model *m, struct kv *kv, const int32_t *toks, int n, float *logits,
		  float *all_logits, const struct attn_hook *hook);

#endif
