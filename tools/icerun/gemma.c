/* Gemma 3 forward: chunked prefill and single-token decode share one path, as in model.c. */
#include "gemma.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kquant.h"

#define CHUNK 128
#define ARCH "gemma3"
/* What Gemma 3 fixes and its GGUF files do not always say (read from the file when present). */
#define DEFAULT_SWA_PERIOD 6     /* every 6th layer global */
#define DEFAULT_ROPE_LOCAL 10000 /* rope base of the sliding-window layers */

struct gemma_layer {
	const float *attn_norm, *q_norm, *k_norm, *post_attn_norm, *ffn_norm, *post_ffn_norm;
	struct qmat wq, wk, wv, wo, gate, up, down;
	bool global;
};

struct gemma {
	int window; /* tokens a local layer attends to, the current one included */
	int n_q;    /* n_head × head_dim */
	float rope_local, rope_global, pos_scale_global;
	float embd_scale, qscale, softcap; /* softcap 0: no final logit soft-capping */
	struct gemma_layer *layers;
};

bool gemma_is(const struct gguf *g)
{
	const struct gguf_kv *kv = gguf_find(g, "general.architecture");
	uint64_t len;

	if (!kv || kv->type != GGUF_STR)
		return false;
	memcpy(&len, kv->val, 8);
	return len == strlen(ARCH) && !memcmp(kv->val + 8, ARCH, len);
}

static int get_u32(const struct gguf *g, const char *key, uint32_t *ret)
{
	char k[96];

	snprintf(k, sizeof(k), ARCH ".%s", key);
	return gguf_get_u32(g, k, ret);
}

static int get_f32(const struct gguf *g, const char *key, float *ret)
{
	char k[96];

	snprintf(k, sizeof(k), ARCH ".%s", key);
	return gguf_get_f32(g, k, ret);
}

/*
 * Which layers slide: attention.sliding_window_pattern as a period (layer l global when
 * (l + 1) % period == 0) or as one bool per layer (true: sliding); Gemma 3's period when absent.
 */
static int read_pattern(const struct gguf *g, struct gemma *gm, int n_layer)
{
	const struct gguf_kv *kv = gguf_find(g, ARCH ".attention.sliding_window_pattern");
	uint32_t period = DEFAULT_SWA_PERIOD;
	int l;

	if (kv && kv->type == GGUF_ARR) {
		if (kv->arr_type != GGUF_BOOL || kv->arr_len != (uint64_t)n_layer)
			return -EINVAL;
		for (l = 0; l < n_layer; l++)
			gm->layers[l].global = !kv->val[l];
		return 0;
	}
	if (kv && (get_u32(g, "attention.sliding_window_pattern", &period) || period == 0))
		return -EINVAL;
	for (l = 0; l < n_layer; l++)
		gm->layers[l].global = (l + 1) % period == 0;
	return 0;
}

/* Reads the hyper-parameters; everything the file states comes from the file. */
static int read_cfg(const struct gguf *g, struct model_cfg *c, struct gemma *gm)
{
	uint32_t u[9];
	float f;
	int err = 0;

	err |= get_u32(g, "block_count", &u[0]);
	err |= get_u32(g, "embedding_length", &u[1]);
	err |= get_u32(g, "attention.head_count", &u[2]);
	err |= get_u32(g, "attention.head_count_kv", &u[3]);
	err |= get_u32(g, "feed_forward_length", &u[4]);
	err |= get_u32(g, "context_length", &u[5]);
	err |= get_u32(g, "attention.key_length", &u[6]);
	err |= get_u32(g, "attention.value_length", &u[7]);
	err |= get_u32(g, "attention.sliding_window", &u[8]);
	err |= get_f32(g, "rope.freq_base", &c->rope_base);
	err |= get_f32(g, "attention.layer_norm_rms_epsilon", &c->eps);
	if (err)
		return -EINVAL;
	c->n_layer = (int)u[0];
	c->n_embd = (int)u[1];
	c->n_head = (int)u[2];
	c->n_kv = (int)u[3];
	c->n_ff = (int)u[4];
	c->n_ctx = (int)u[5];
	c->head_dim = (int)u[6];
	if (c->n_layer < 1 || c->n_layer > 256 || c->n_head < 1 || c->n_kv < 1 ||
	    c->n_head % c->n_kv || c->n_embd < 16 || c->n_embd > 65536 || c->n_ff < 1 ||
	    c->n_ff > 1 << 20 || u[6] < 16 || u[6] > 1024 || u[8] < 1 || c->n_ctx < 1)
		return -EINVAL;
	/* the kernels work on 16-float vectors; K and V of one width */
	if (c->head_dim % 16 || u[7] != u[6])
		return -EOPNOTSUPP;
	gm->window = (int)u[8];
	gm->n_q = c->n_head * c->head_dim;
	gm->rope_global = c->rope_base;
	gm->rope_local = DEFAULT_ROPE_LOCAL;
	if (!get_f32(g, "rope.freq_base_swa", &f))
		gm->rope_local = f;
	/* linear RoPE scaling (the larger Gemma 3 models) stretches the global layers' positions */
	gm->pos_scale_global = 1;
	if (!get_f32(g, "rope.scaling.factor", &f) && f > 0)
		gm->pos_scale_global = 1 / f;
	gm->softcap = 0;
	if (!get_f32(g, "final_logit_softcapping", &f) && f > 0)
		gm->softcap = f;
	/* attention logit soft-capping was Gemma 2's; refuse rather than ignore it */
	if (!get_f32(g, "attn_logit_softcapping", &f) && f > 0)
		return -EOPNOTSUPP;
	gm->embd_scale = sqrtf((float)c->n_embd);
	gm->qscale = 1.0f / sqrtf((float)c->head_dim);
	return 0;
}

static int load_layer(const struct gguf *g, const struct model_cfg *c, int l, struct gemma_layer *w)
{
	int D = c->n_embd, hd = c->head_dim, NQ = c->n_head * hd, KVD = c->n_kv * hd, err = 0;
	char name[96];

#define MAT(field, nm, r, cols)                                           \
	do {                                                              \
		snprintf(name, sizeof(name), "blk.%d." nm ".weight", l);  \
		if (!err)                                                 \
			err = model_get_mat(g, name, r, cols, &w->field); \
	} while (0)
#define VEC(field, nm, n)                                                \
	do {                                                             \
		snprintf(name, sizeof(name), "blk.%d." nm ".weight", l); \
		if (!err)                                                \
			err = model_get_vec(g, name, n, &w->field);      \
	} while (0)
	MAT(wq, "attn_q", NQ, D);
	MAT(wk, "attn_k", KVD, D);
	MAT(wv, "attn_v", KVD, D);
	MAT(wo, "attn_output", D, NQ);
	MAT(gate, "ffn_gate", c->n_ff, D);
	MAT(up, "ffn_up", c->n_ff, D);
	MAT(down, "ffn_down", D, c->n_ff);
	VEC(attn_norm, "attn_norm", D);
	VEC(q_norm, "attn_q_norm", hd);
	VEC(k_norm, "attn_k_norm", hd);
	VEC(post_attn_norm, "post_attention_norm", D);
	VEC(ffn_norm, "ffn_norm", D);
	VEC(post_ffn_norm, "post_ffw_norm", D);
#undef MAT
#undef VEC
	return err == -ENOENT ? -EINVAL : err;
}

int gemma_open(struct model *m)
{
	const struct gguf_tensor *te;
	struct gemma *gm;
	int err, l;

	gm = calloc(1, sizeof(*gm));
	if (!gm)
		return -ENOMEM;
	err = read_cfg(m->g, &m->cfg, gm);
	if (err)
		goto out_free;
	gm->layers = calloc((size_t)m->cfg.n_layer, sizeof(*gm->layers));
	if (!gm->layers) {
		err = -ENOMEM;
		goto out_free;
	}
	err = read_pattern(m->g, gm, m->cfg.n_layer);
	if (err)
		goto out_free;
	te = gguf_tensor(m->g, "token_embd.weight");
	if (!te || te->ne[1] < 1 || te->ne[1] > (1u << 24)) {
		err = -EINVAL;
		goto out_free;
	}
	m->cfg.n_vocab = (int)te->ne[1];
	err = model_get_mat(m->g, "token_embd.weight", m->cfg.n_vocab, m->cfg.n_embd, &m->tok_embd);
	if (err)
		goto out_free;
	err = model_get_mat(m->g, "output.weight", m->cfg.n_vocab, m->cfg.n_embd, &m->output);
	if (err == -ENOENT) {
		m->output = m->tok_embd;
		err = 0;
	}
	if (!err)
		err = model_get_vec(m->g, "output_norm.weight", m->cfg.n_embd, &m->output_norm);
	for (l = 0; l < m->cfg.n_layer && !err; l++)
		err = load_layer(m->g, &m->cfg, l, &gm->layers[l]);
	if (err)
		goto out_free;
	m->gemma = gm;
	return 0;
out_free:
	gemma_free(gm);
	return err;
}

void gemma_free(struct gemma *gm)
{
	if (!gm)
		return;
	free(gm->layers);
	free(gm);
}

bool gemma_layer_global(const struct model *m, int l)
{
	return m->gemma && l >= 0 && l < m->cfg.n_layer && m->gemma->layers[l].global;
}

int gemma_window(const struct model *m)
{
	return m->gemma ? m->gemma->window : 0;
}

/* ---- the pieces ---- */

static void rmsnorm(const float *x, const float *w, int n, float eps, float *y)
{
	double ss = 0;
	float sc;
	int i;

	for (i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	sc = (float)(1.0 / sqrt(ss / n + eps));
	for (i = 0; i < n; i++)
		y[i] = x[i] * sc * w[i];
}

/* GGUF NEOX mode: x[i] pairs with x[i + d/2], rotated by cs/sn of frequency i. */
static void rope(float *x, int nh, int d, const float *cs, const float *sn)
{
	int h, i, half = d / 2;

	for (h = 0; h < nh; h++) {
		float *p = x + (size_t)h * d;

		for (i = 0; i < half; i++) {
			float a = p[i], b = p[i + half];

			p[i] = a * cs[i] - b * sn[i];
			p[i + half] = a * sn[i] + b * cs[i];
		}
	}
}

static void rope_table(double pos, float base, int d, float *cs, float *sn)
{
	int i;

	for (i = 0; i < d / 2; i++) {
		double th = pos * pow(base, -2.0 * i / d);

		cs[i] = (float)cos(th);
		sn[i] = (float)sin(th);
	}
}

static float gelu_tanh(float x)
{
	return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

struct attn_job {
	const struct model *m;
	const struct kv *kv;
	int layer, pos0;
	bool global;
	const float *q; /* [n][n_q], pre-scaled */
	float *out;     /* [n][n_q] */
	float *scratch; /* per thread g × cap */
};

/* One (token, KV head): its group's g query heads over the layer's visible keys. */
static void attn_task(void *arg, int task, int thread)
{
	struct attn_job *j = arg;
	const struct model_cfg *c = &j->m->cfg;
	const struct gemma *gm = j->m->gemma;
	int g = c->n_head / c->n_kv, d = c->head_dim, cap = j->kv->cap;
	int kvh = task % c->n_kv, t = task / c->n_kv, pos = j->pos0 + t;
	int lo = j->global || pos < gm->window ? 0 : pos - gm->window + 1;
	int p0 = lo / MODEL_PAGE, off = lo - p0 * MODEL_PAGE, nk = pos + 1 - lo, h, i;
	float *s = j->scratch + (size_t)thread * g * cap;
	const float *q = j->q + (size_t)t * gm->n_q + (size_t)kvh * g * d;
	float *o = j->out + (size_t)t * gm->n_q + (size_t)kvh * g * d;

	/* scores from the window's first page on; the tokens before lo in that page are dropped */
	model_group_scores(kv_kpage(j->kv, j->layer, kvh, p0), d, q, g, off + nk, s, cap);
	for (h = 0; h < g; h++) {
		float *r = s + (size_t)h * cap + off, mx = -INFINITY, inv, *oh = o + (size_t)h * d;

		for (i = 0; i < nk; i++)
			mx = r[i] > mx ? r[i] : mx;
		inv = 1.0f / mm_softmax_exp(r, nk, mx);
		memset(oh, 0, (size_t)d * sizeof(float));
		for (i = 0; i < nk; i++)
			mm_axpy(oh, r[i] * inv, kv_vrow(j->kv, j->layer, kvh, lo + i), d);
	}
}

static void store_kv(struct kv *kv, int layer, int h, int pos, const float *k, const float *v)
{
	float *p = (float *)kv_kpage(kv, layer, h, pos / MODEL_PAGE);
	int i, s = pos % MODEL_PAGE;

	for (i = 0; i < kv->d; i++)
		p[i * MODEL_PAGE + s] = k[i];
	memcpy((float *)kv_vrow(kv, layer, h, pos), v, (size_t)kv->d * sizeof(float));
}

static int logits_of(struct model *m, const float *x, float *row, float *out)
{
	const struct gemma *gm = m->gemma;
	int i, err;

	rmsnorm(x, m->output_norm, m->cfg.n_embd, m->cfg.eps, row);
	err = mm_matmul(&m->output, row, 1, out, m->cfg.n_vocab, m->pool);
	if (!err && gm->softcap > 0)
		for (i = 0; i < m->cfg.n_vocab; i++)
			out[i] = gm->softcap * tanhf(out[i] / gm->softcap);
	return err;
}

int gemma_forward(struct model *m, struct kv *kv, const int32_t *toks, int n, float *logits,
		  float *all_logits, const struct attn_hook *hook)
{
	const struct model_cfg *c = &m->cfg;
	const struct gemma *gm = m->gemma;
	int D = c->n_embd, hd = c->head_dim, NQ = gm->n_q, KVD = c->n_kv * hd, F = c->n_ff;
	int g = c->n_head / c->n_kv, half = hd / 2, done = 0, cn, t, l, i, err = 0;
	float *x, *xn, *q, *k, *v, *att, *gt, *up, *scratch, *row, *rl, *rg;

	if (n < 1)
		return -EINVAL;
	if (kv->n + n > kv->cap || kv->n + n > c->n_ctx)
		return -ENOSPC;
	for (t = 0; t < n; t++)
		if (toks[t] < 0 || toks[t] >= c->n_vocab)
			return -EINVAL;
	x = malloc((size_t)CHUNK * D * 4);
	xn = malloc((size_t)CHUNK * D * 4);
	q = malloc((size_t)CHUNK * NQ * 4);
	k = malloc((size_t)CHUNK * KVD * 4);
	v = malloc((size_t)CHUNK * KVD * 4);
	att = malloc((size_t)CHUNK * NQ * 4);
	gt = malloc((size_t)CHUNK * F * 4);
	up = malloc((size_t)CHUNK * F * 4);
	scratch = aligned_alloc(64, (size_t)pool_threads(m->pool) * g * kv->cap * 4);
	row = malloc((size_t)D * 4);
	/* cos, sin per token of the chunk, for the local and the global base */
	rl = malloc((size_t)CHUNK * 2 * half * 4);
	rg = malloc((size_t)CHUNK * 2 * half * 4);
	if (!x || !xn || !q || !k || !v || !att || !gt || !up || !scratch || !row || !rl || !rg) {
		err = -ENOMEM;
		goto out;
	}
	while (done < n && !err) {
		int pos0 = kv->n;

		cn = n - done < CHUNK ? n - done : CHUNK;
		for (t = 0; t < cn; t++) {
			float *xt = x + (size_t)t * D;

			mm_dequant_row(&m->tok_embd, toks[done + t], xt);
			for (i = 0; i < D; i++)
				xt[i] *= gm->embd_scale;
			rope_table(pos0 + t, gm->rope_local, hd, rl + (size_t)t * hd,
				   rl + (size_t)t * hd + half);
			rope_table((pos0 + t) * (double)gm->pos_scale_global, gm->rope_global, hd,
				   rg + (size_t)t * hd, rg + (size_t)t * hd + half);
		}
		for (l = 0; l < c->n_layer && !err; l++) {
			const struct gemma_layer *w = &gm->layers[l];
			const float *rt = w->global ? rg : rl;

			for (t = 0; t < cn; t++)
				rmsnorm(x + (size_t)t * D, w->attn_norm, D, c->eps,
					xn + (size_t)t * D);
			if ((err = mm_matmul(&w->wq, xn, cn, q, NQ, m->pool)) ||
			    (err = mm_matmul(&w->wk, xn, cn, k, KVD, m->pool)) ||
			    (err = mm_matmul(&w->wv, xn, cn, v, KVD, m->pool)))
				break;
			for (t = 0; t < cn; t++) {
				float *qt = q + (size_t)t * NQ, *kt = k + (size_t)t * KVD;
				const float *cs = rt + (size_t)t * hd, *sn = cs + half;

				for (i = 0; i < c->n_head; i++)
					rmsnorm(qt + (size_t)i * hd, w->q_norm, hd, c->eps,
						qt + (size_t)i * hd);
				for (i = 0; i < c->n_kv; i++)
					rmsnorm(kt + (size_t)i * hd, w->k_norm, hd, c->eps,
						kt + (size_t)i * hd);
				rope(qt, c->n_head, hd, cs, sn);
				rope(kt, c->n_kv, hd, cs, sn);
				for (i = 0; i < NQ; i++)
					qt[i] *= gm->qscale;
				for (i = 0; i < c->n_kv; i++)
					store_kv(kv, l, i, pos0 + t, kt + (size_t)i * hd,
						 v + (size_t)t * KVD + (size_t)i * hd);
			}
			if (hook && hook->attend && n == 1 && w->global && l >= hook->dense) {
				err = hook->attend(hook->ctx, m, kv, l, pos0, q, att);
				if (err)
					break;
			} else {
				struct attn_job aj = { m, kv, l, pos0, w->global, q, att, scratch };

				pool_run(m->pool, attn_task, &aj, cn * c->n_kv);
			}
			if ((err = mm_matmul(&w->wo, att, cn, xn, D, m->pool)))
				break;
			for (t = 0; t < cn; t++) {
				float *o = xn + (size_t)t * D;

				rmsnorm(o, w->post_attn_norm, D, c->eps, o);
				for (i = 0; i < D; i++)
					x[(size_t)t * D + i] += o[i];
				rmsnorm(x + (size_t)t * D, w->ffn_norm, D, c->eps, o);
			}
			if ((err = mm_matmul(&w->gate, xn, cn, gt, F, m->pool)) ||
			    (err = mm_matmul(&w->up, xn, cn, up, F, m->pool)))
				break;
			for (i = 0; i < cn * F; i++)
				gt[i] = gelu_tanh(gt[i]) * up[i];
			if ((err = mm_matmul(&w->down, gt, cn, xn, D, m->pool)))
				break;
			for (t = 0; t < cn; t++) {
				float *o = xn + (size_t)t * D;

				rmsnorm(o, w->post_ffn_norm, D, c->eps, o);
				for (i = 0; i < D; i++)
					x[(size_t)t * D + i] += o[i];
			}
		}
		if (err)
			break;
		kv->n += cn;
		for (t = 0; all_logits && t < cn && !err; t++)
			err = logits_of(m, x + (size_t)t * D, row,
					all_logits + (size_t)(done + t) * c->n_vocab);
		done += cn;
		if (!err && done == n && logits)
			err = logits_of(m, x + (size_t)(cn - 1) * D, row, logits);
	}
out:
	free(x);
	free(xn);
	free(q);
	free(k);
	free(v);
	free(att);
	free(gt);
	free(up);
	free(scratch);
	free(row);
	free(rl);
	free(rg);
	return err;
}
