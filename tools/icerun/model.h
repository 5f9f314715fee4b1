/*
 * Llama forward pass on the CPU for GGUF models (SmolLM2 is the target): token embedding,
 * RMSNorm, RoPE (GGUF "normal" mode: adjacent pairs, since the converter permuted Q/K rows),
 * grouped-query attention, SwiGLU MLP, tied or separate output matrix.
 *
 * The KV cache keeps keys page-blocked (16 tokens × head_dim, dimension-major inside a page, so
 * one page's 16 scores are 64 FMAs without horizontal sums) and values token-major.
 */
#ifndef ICERUN_MODEL_H
#define ICERUN_MODEL_H

#include <stdint.h>

#include "gguf.h"
#include "mm.h"
#include "pool.h"

#define MODEL_PAGE 16

struct model_cfg {
	int n_layer, n_embd, n_head, n_kv, head_dim, n_ff, n_vocab, n_ctx;
	float rope_base, eps;
};

struct layer_w {
	const float *attn_norm, *ffn_norm;
	struct qmat wq, wk, wv, wo, gate, up, down;
};

struct gemma; /* gemma.h: Gemma 3's own weights and hyper-parameters */

struct model {
	struct model_cfg cfg;
	struct gguf *g;
	struct pool *pool;
	struct qmat tok_embd, output;
	const float *output_norm;
	struct layer_w *layers;
	struct gemma *gemma; /* non-NULL for a Gemma 3 file: gemma.c runs its forward pass */
};

struct kv {
	int cap, n; /* capacity and filled tokens (positions 0..n-1) */
	int n_layer, n_kv, d;
	float *k; /* [layer][kv head][cap/16][d][16] */
	float *v; /* [layer][kv head][cap][d] */
};

/*
 * Decode-time attention override: for layers >= dense, attend() replaces full attention for the
 * single token at pos (its K/V are already in the cache). q is [n_head][head_dim], already scaled
 * by 1/sqrt(head_dim); out is [n_head][head_dim].
 */
struct attn_hook {
	int dense;
	void *ctx;
	int (*attend)(void *ctx, const struct model *m, const struct kv *kv, int layer, int pos,
		      const float *q, float *out);
	/* Optional (NULL: none), for every layer of a single-token step, before attention: sees
	 * q as attend() would (post-RoPE, pre-scaled); `icerun dump` records it. An error stops the
	 * pass. attend may be NULL when only capture is wanted (full attention then). */
	int (*capture)(void *ctx, int layer, int pos, const float *q);
};

int model_open(const char *path, int nthreads, struct model **ret);
void model_free(struct model *m);

int kv_new(const struct model *m, int cap, struct kv **ret);
void kv_free(struct kv *kv);

static inline const float *kv_kpage(const struct kv *kv, int layer, int h, int page)
{
	return kv->k + (((size_t)layer * kv->n_kv + h) * (kv->cap / MODEL_PAGE) + page) *
			       MODEL_PAGE * kv->d;
}

static inline const float *kv_vrow(const struct kv *kv, int layer, int h, int pos)
{
	return kv->v + (((size_t)layer * kv->n_kv + h) * kv->cap + pos) * kv->d;
}

/* Copies token pos's key (token-major) out of its page. */
void kv_key(const struct kv *kv, int layer, int h, int pos, float *out);

/*
 * Runs n tokens at positions kv->n .. kv->n+n-1, appending their K/V. logits (n_vocab floats)
 * receives the last token's logits when not NULL; all_logits ([n][n_vocab]) every token's.
 * hook (may be NULL) applies only when n == 1. Returns 0, -ENOSPC when the cache is full,
 * -ENOMEM, or the hook's error.
 */
int model_forward(struct model *m, struct kv *kv, const int32_t *toks, int n, float *logits,
		  float *all_logits, const struct attn_hook *hook);

/*
 * Attention of one GQA group (q: g × d, pre-scaled) over an explicit token set idx[0..nidx) of
 * KV head h; out: g × d. scratch holds g × nidx floats. Used by the sparse modes.
 */
void model_attend_set(const struct model *m, const struct kv *kv, int layer, int h,
		      const int32_t *idx, int nidx, const float *q, float *out, float *scratch);

/*
 * Scores of g query heads (q: g × d, pre-scaled) against n page-blocked keys starting at kbase,
 * the start of a page (kv_kpage): out[h * ldo + j] = q_h · k_j.
 */
/* A weight matrix [rows][cols] (any type the matmul takes) or an F32 vector [n] of the GGUF,
 * checked: -ENOENT when absent, -EINVAL for a wrong shape, -EOPNOTSUPP for its type. For the
 * model files (model.c, gemma.c). */
int model_get_mat(const struct gguf *g, const char *name, int rows, int cols, struct qmat *ret);
int model_get_vec(const struct gguf *g, const char *name, int n, const float **ret);

void model_group_scores(const float *kbase, int d, const float *q, int g, int n, float *out,
			int ldo);

/* Scores q·k (q pre-scaled) of one query head against keys 0..n-1 of KV head h. */
void model_scores(const struct kv *kv, int layer, int h, const float *q, int n, float *out);

#endif
