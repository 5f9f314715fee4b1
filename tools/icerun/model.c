/* Llama forward: chunked prefill (matrix-matrix) and single-token decode share one path. */
#include "model.h"

#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemma.h"
#include "kquant.h"

#define CHUNK 128
#define AVX512 __attribute__((target("avx512f,fma")))

int model_get_mat(const struct gguf *g, const char *name, int rows, int cols, struct qmat *ret)
{
	const struct gguf_tensor *t = gguf_tensor(g, name);

	if (!t)
		return -ENOENT;
	if (!t->data || t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows || t->ne[2] != 1 ||
	    t->ne[3] != 1)
		return -EINVAL;
	if (t->type != GGUF_T_F32 && t->type != GGUF_T_F16 && t->type != GGUF_T_Q4_0 &&
	    t->type != GGUF_T_Q4_1 && t->type != GGUF_T_Q8_0 && !kq_supported(t->type))
		return -EOPNOTSUPP;
	ret->type = t->type;
	ret->rows = rows;
	ret->cols = cols;
	ret->row_bytes = gguf_row_bytes(t->type, (uint64_t)cols);
	ret->data = t->data;
	return 0;
}

int model_get_vec(const struct gguf *g, const char *name, int n, const float **ret)
{
	const struct gguf_tensor *t = gguf_tensor(g, name);

	if (!t)
		return -ENOENT;
	if (t->type != GGUF_T_F32 || t->ne[0] != (uint64_t)n || t->ne[1] != 1 ||
	    ((uintptr_t)t->data & 3))
		return -EINVAL;
	*ret = t->data;
	return 0;
}

static int read_cfg(const struct gguf *g, struct model_cfg *c)
{
	const struct gguf_kv *kv = gguf_find(g, "general.architecture");
	uint32_t u[8];
	int err = 0;

	if (!kv || kv->type != GGUF_STR)
		return -EINVAL;
	{
		uint64_t len;

		memcpy(&len, kv->val, 8);
		if (len != 5 || memcmp(kv->val + 8, "llama", 5))
			return -EOPNOTSUPP;
	}
	err |= gguf_get_u32(g, "llama.block_count", &u[0]);
	err |= gguf_get_u32(g, "llama.embedding_length", &u[1]);
	err |= gguf_get_u32(g, "llama.attention.head_count", &u[2]);
	err |= gguf_get_u32(g, "llama.attention.head_count_kv", &u[3]);
	err |= gguf_get_u32(g, "llama.feed_forward_length", &u[4]);
	err |= gguf_get_u32(g, "llama.context_length", &u[5]);
	err |= gguf_get_f32(g, "llama.rope.freq_base", &c->rope_base);
	err |= gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &c->eps);
	if (err)
		return -EINVAL;
	c->n_layer = (int)u[0];
	c->n_embd = (int)u[1];
	c->n_head = (int)u[2];
	c->n_kv = (int)u[3];
	c->n_ff = (int)u[4];
	c->n_ctx = (int)u[5];
	if (c->n_layer < 1 || c->n_layer > 256 || c->n_head < 1 || c->n_kv < 1 ||
	    c->n_head % c->n_kv || c->n_embd % c->n_head || c->n_embd > 65536 || c->n_ff < 1 ||
	    c->n_ff > 1 << 20)
		return -EINVAL;
	c->head_dim = c->n_embd / c->n_head;
	/* the attention kernels work on 16-float vectors and RoPE on pairs */
	if (c->head_dim % 16)
		return -EOPNOTSUPP;
	return 0;
}

int model_open(const char *path, int nthreads, struct model **ret)
{
	const struct gguf_tensor *te;
	struct model *m;
	char name[96];
	int err, l, d, kvd;

	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	err = gguf_open(path, &m->g);
	if (err)
		goto out_free;
	if (gemma_is(m->g)) {
		err = gemma_open(m);
		if (!err)
			err = pool_new(nthreads, &m->pool);
		if (err)
			goto out_free;
		*ret = m;
		return 0;
	}
	err = read_cfg(m->g, &m->cfg);
	if (err)
		goto out_free;
	te = gguf_tensor(m->g, "token_embd.weight");
	if (!te) {
		err = -ENOENT;
		goto out_free;
	}
	m->cfg.n_vocab = (int)te->ne[1];
	d = m->cfg.n_embd;
	kvd = m->cfg.n_kv * m->cfg.head_dim;
	err = model_get_mat(m->g, "token_embd.weight", m->cfg.n_vocab, d, &m->tok_embd);
	if (err)
		goto out_free;
	err = model_get_mat(m->g, "output.weight", m->cfg.n_vocab, d, &m->output);
	if (err == -ENOENT) {
		m->output = m->tok_embd; /* tied embeddings */
		err = 0;
	}
	if (!err)
		err = model_get_vec(m->g, "output_norm.weight", d, &m->output_norm);
	if (err)
		goto out_free;
	m->layers = calloc((size_t)m->cfg.n_layer, sizeof(*m->layers));
	if (!m->layers) {
		err = -ENOMEM;
		goto out_free;
	}
	for (l = 0; l < m->cfg.n_layer && !err; l++) {
		struct layer_w *w = &m->layers[l];

#define MAT(field, nm, r, c)                                              \
	do {                                                              \
		snprintf(name, sizeof(name), "blk.%d." nm ".weight", l);  \
		if (!err)                                                 \
			err = model_get_mat(m->g, name, r, c, &w->field); \
	} while (0)
		MAT(wq, "attn_q", d, d);
		MAT(wk, "attn_k", kvd, d);
		MAT(wv, "attn_v", kvd, d);
		MAT(wo, "attn_output", d, d);
		MAT(gate, "ffn_gate", m->cfg.n_ff, d);
		MAT(up, "ffn_up", m->cfg.n_ff, d);
		MAT(down, "ffn_down", d, m->cfg.n_ff);
#undef MAT
		snprintf(name, sizeof(name), "blk.%d.attn_norm.weight", l);
		if (!err)
			err = model_get_vec(m->g, name, d, &w->attn_norm);
		snprintf(name, sizeof(name), "blk.%d.ffn_norm.weight", l);
		if (!err)
			err = model_get_vec(m->g, name, d, &w->ffn_norm);
	}
	if (err)
		goto out_free;
	err = pool_new(nthreads, &m->pool);
	if (err)
		goto out_free;
	*ret = m;
	return 0;
out_free:
	model_free(m);
	return err;
}

void model_free(struct model *m)
{
	if (!m)
		return;
	pool_free(m->pool);
	gemma_free(m->gemma);
	free(m->layers);
	gguf_close(m->g);
	free(m);
}

int kv_new(const struct model *m, int cap, struct kv **ret)
{
	struct kv *kv;
	size_t n;

	if (cap < 1 || cap > (1 << 22))
		return -EINVAL;
	kv = calloc(1, sizeof(*kv));
	if (!kv)
		return -ENOMEM;
	kv->cap = (cap + MODEL_PAGE - 1) / MODEL_PAGE * MODEL_PAGE;
	kv->n_layer = m->cfg.n_layer;
	kv->n_kv = m->cfg.n_kv;
	kv->d = m->cfg.head_dim;
	n = (size_t)kv->n_layer * kv->n_kv * kv->cap * kv->d * sizeof(float);
	kv->k = aligned_alloc(64, n);
	kv->v = aligned_alloc(64, n);
	if (!kv->k || !kv->v) {
		kv_free(kv);
		return -ENOMEM;
	}
	memset(kv->k, 0, n); /* pages are read whole: unused slots must be finite */
	*ret = kv;
	return 0;
}

void kv_free(struct kv *kv)
{
	if (!kv)
		return;
	free(kv->k);
	free(kv->v);
	free(kv);
}

void kv_key(const struct kv *kv, int layer, int h, int pos, float *out)
{
	const float *p = kv_kpage(kv, layer, h, pos / MODEL_PAGE);
	int i, s = pos % MODEL_PAGE;

	for (i = 0; i < kv->d; i++)
		out[i] = p[i * MODEL_PAGE + s];
}

static void kv_store(struct kv *kv, int layer, int h, int pos, const float *k, const float *v)
{
	float *p = (float *)kv_kpage(kv, layer, h, pos / MODEL_PAGE);
	int i, s = pos % MODEL_PAGE;

	for (i = 0; i < kv->d; i++)
		p[i * MODEL_PAGE + s] = k[i];
	memcpy((float *)kv_vrow(kv, layer, h, pos), v, (size_t)kv->d * sizeof(float));
}

/* ---- attention ---- */

/* scores for keys 0..n-1 of one page-blocked head: out[j] = q·k_j */
static void scores_c(const float *kbase, int d, const float *q, int n, float *out)
{
	int b, i, s, nb = (n + MODEL_PAGE - 1) / MODEL_PAGE;

	for (b = 0; b < nb; b++) {
		const float *p = kbase + (size_t)b * MODEL_PAGE * d;
		float acc[MODEL_PAGE] = { 0 };

		for (i = 0; i < d; i++)
			for (s = 0; s < MODEL_PAGE; s++)
				acc[s] += q[i] * p[i * MODEL_PAGE + s];
		for (s = 0; s < MODEL_PAGE && b * MODEL_PAGE + s < n; s++)
			out[b * MODEL_PAGE + s] = acc[s];
	}
}

AVX512 static void scores3_avx(const float *kbase, int d, const float *q, int g, int n, float *out,
			       int ldo)
{
	int b, i, nb = (n + MODEL_PAGE - 1) / MODEL_PAGE;

	/* the group's query heads share each key load (g <= 4 here; larger groups loop) */
	for (int h0 = 0; h0 < g; h0 += 4) {
		int gg = g - h0 < 4 ? g - h0 : 4;

		for (b = 0; b < nb; b++) {
			const float *p = kbase + (size_t)b * MODEL_PAGE * d;
			__m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
			int rem = n - b * MODEL_PAGE;
			__mmask16 k = rem >= 16 ? 0xFFFF : (__mmask16)((1u << rem) - 1);

			for (i = 0; i < d; i++) {
				__m512 kv = _mm512_load_ps(p + i * MODEL_PAGE);

				a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[(h0)*d + i]), kv, a0);
				if (gg > 1)
					a1 = _mm512_fmadd_ps(_mm512_set1_ps(q[(h0 + 1) * d + i]),
							     kv, a1);
				if (gg > 2)
					a2 = _mm512_fmadd_ps(_mm512_set1_ps(q[(h0 + 2) * d + i]),
							     kv, a2);
				if (gg > 3)
					a3 = _mm512_fmadd_ps(_mm512_set1_ps(q[(h0 + 3) * d + i]),
							     kv, a3);
			}
			_mm512_mask_storeu_ps(out + (size_t)h0 * ldo + b * MODEL_PAGE, k, a0);
			if (gg > 1)
				_mm512_mask_storeu_ps(out + (size_t)(h0 + 1) * ldo + b * MODEL_PAGE,
						      k, a1);
			if (gg > 2)
				_mm512_mask_storeu_ps(out + (size_t)(h0 + 2) * ldo + b * MODEL_PAGE,
						      k, a2);
			if (gg > 3)
				_mm512_mask_storeu_ps(out + (size_t)(h0 + 3) * ldo + b * MODEL_PAGE,
						      k, a3);
		}
	}
}

void model_group_scores(const float *kbase, int d, const float *q, int g, int n, float *out,
			int ldo)
{
	if (mm_simd()) {
		scores3_avx(kbase, d, q, g, n, out, ldo);
		return;
	}
	for (int h = 0; h < g; h++)
		scores_c(kbase, d, q + (size_t)h * d, n, out + (size_t)h * ldo);
}

void model_scores(const struct kv *kv, int layer, int h, const float *q, int n, float *out)
{
	const float *kb = kv_kpage(kv, layer, h, 0);

	if (mm_simd())
		scores3_avx(kb, kv->d, q, 1, n, out, n);
	else
		scores_c(kb, kv->d, q, n, out);
}

/* softmax in place over g rows of n scores, then out[h] = Σ p_j V[j] for rows j of vbase */
static void softmax_rows(float *s, int g, int n, int lds)
{
	int h, j;

	for (h = 0; h < g; h++) {
		float *r = s + (size_t)h * lds, mx = -INFINITY, sum, inv;

		for (j = 0; j < n; j++)
			mx = r[j] > mx ? r[j] : mx;
		sum = mm_softmax_exp(r, n, mx);
		inv = 1.0f / sum;
		for (j = 0; j < n; j++)
			r[j] *= inv;
	}
}

/* out[h][:] = Σ_j p[h][j] · V(idx ? idx[j] : j) */
static void pv_c(const struct kv *kv, int layer, int kvh, const float *p, int lds, int g, int n,
		 const int32_t *idx, float *out)
{
	int d = kv->d, h, j, i;

	for (h = 0; h < g; h++) {
		float *o = out + (size_t)h * d;

		memset(o, 0, (size_t)d * sizeof(float));
		for (j = 0; j < n; j++) {
			const float *vr = kv_vrow(kv, layer, kvh, idx ? idx[j] : j);
			float pj = p[(size_t)h * lds + j];

			for (i = 0; i < d; i++)
				o[i] += pj * vr[i];
		}
	}
}

/* d == 64, up to 4 heads per pass: 16 accumulators stay in registers, V rows load once */
AVX512 static void pv64_avx(const struct kv *kv, int layer, int kvh, const float *p, int lds, int g,
			    int n, const int32_t *idx, float *out)
{
	int h0, j;

	for (h0 = 0; h0 < g; h0 += 4) {
		int gg = g - h0 < 4 ? g - h0 : 4;
		const float *p0 = p + (size_t)h0 * lds, *p1 = gg > 1 ? p0 + lds : p0;
		const float *p2 = gg > 2 ? p0 + 2 * (size_t)lds : p0;
		const float *p3 = gg > 3 ? p0 + 3 * (size_t)lds : p0;
		__m512 o00 = _mm512_setzero_ps(), o01 = o00, o02 = o00, o03 = o00;
		__m512 o10 = o00, o11 = o00, o12 = o00, o13 = o00;
		__m512 o20 = o00, o21 = o00, o22 = o00, o23 = o00;
		__m512 o30 = o00, o31 = o00, o32 = o00, o33 = o00;
		float *o = out + (size_t)h0 * 64;

		for (j = 0; j < n; j++) {
			const float *vr = kv_vrow(kv, layer, kvh, idx ? idx[j] : j);
			__m512 v0 = _mm512_loadu_ps(vr), v1 = _mm512_loadu_ps(vr + 16);
			__m512 v2 = _mm512_loadu_ps(vr + 32), v3 = _mm512_loadu_ps(vr + 48), b;

			b = _mm512_set1_ps(p0[j]);
			o00 = _mm512_fmadd_ps(b, v0, o00);
			o01 = _mm512_fmadd_ps(b, v1, o01);
			o02 = _mm512_fmadd_ps(b, v2, o02);
			o03 = _mm512_fmadd_ps(b, v3, o03);
			b = _mm512_set1_ps(p1[j]);
			o10 = _mm512_fmadd_ps(b, v0, o10);
			o11 = _mm512_fmadd_ps(b, v1, o11);
			o12 = _mm512_fmadd_ps(b, v2, o12);
			o13 = _mm512_fmadd_ps(b, v3, o13);
			b = _mm512_set1_ps(p2[j]);
			o20 = _mm512_fmadd_ps(b, v0, o20);
			o21 = _mm512_fmadd_ps(b, v1, o21);
			o22 = _mm512_fmadd_ps(b, v2, o22);
			o23 = _mm512_fmadd_ps(b, v3, o23);
			b = _mm512_set1_ps(p3[j]);
			o30 = _mm512_fmadd_ps(b, v0, o30);
			o31 = _mm512_fmadd_ps(b, v1, o31);
			o32 = _mm512_fmadd_ps(b, v2, o32);
			o33 = _mm512_fmadd_ps(b, v3, o33);
		}
		_mm512_storeu_ps(o, o00);
		_mm512_storeu_ps(o + 16, o01);
		_mm512_storeu_ps(o + 32, o02);
		_mm512_storeu_ps(o + 48, o03);
		if (gg > 1) {
			_mm512_storeu_ps(o + 64, o10);
			_mm512_storeu_ps(o + 80, o11);
			_mm512_storeu_ps(o + 96, o12);
			_mm512_storeu_ps(o + 112, o13);
		}
		if (gg > 2) {
			_mm512_storeu_ps(o + 128, o20);
			_mm512_storeu_ps(o + 144, o21);
			_mm512_storeu_ps(o + 160, o22);
			_mm512_storeu_ps(o + 176, o23);
		}
		if (gg > 3) {
			_mm512_storeu_ps(o + 192, o30);
			_mm512_storeu_ps(o + 208, o31);
			_mm512_storeu_ps(o + 224, o32);
			_mm512_storeu_ps(o + 240, o33);
		}
	}
}

static void pv(const struct kv *kv, int layer, int kvh, const float *p, int lds, int g, int n,
	       const int32_t *idx, float *out)
{
	if (mm_simd() && kv->d == 64)
		pv64_avx(kv, layer, kvh, p, lds, g, n, idx, out);
	else
		pv_c(kv, layer, kvh, p, lds, g, n, idx, out);
}

void model_attend_set(const struct model *m, const struct kv *kv, int layer, int h,
		      const int32_t *idx, int nidx, const float *q, float *out, float *scratch)
{
	int g = m->cfg.n_head / m->cfg.n_kv, d = kv->d, i, j;
	float key[256];

	for (j = 0; j < nidx; j++) {
		kv_key(kv, layer, h, idx[j], key);
		for (i = 0; i < g; i++)
			scratch[(size_t)i * nidx + j] = mm_dot(q + (size_t)i * d, key, d);
	}
	softmax_rows(scratch, g, nidx, nidx);
	pv(kv, layer, h, scratch, nidx, g, nidx, idx, out);
}

struct attn_job {
	const struct model *m;
	const struct kv *kv;
	int layer, pos0, n;
	const float *q; /* [n][n_embd], pre-scaled */
	float *out;     /* [n][n_embd] */
	float *scratch; /* per thread g × cap */
};

static void attn_task(void *arg, int task, int thread)
{
	struct attn_job *j = arg;
	const struct model_cfg *c = &j->m->cfg;
	int g = c->n_head / c->n_kv, d = c->head_dim;
	int kvh = task % c->n_kv, t = task / c->n_kv, pos = j->pos0 + t, nk = pos + 1;
	float *s = j->scratch + (size_t)thread * g * j->kv->cap;
	const float *q = j->q + (size_t)t * c->n_embd + (size_t)kvh * g * d;
	float *o = j->out + (size_t)t * c->n_embd + (size_t)kvh * g * d;

	if (mm_simd()) {
		scores3_avx(kv_kpage(j->kv, j->layer, kvh, 0), d, q, g, nk, s, j->kv->cap);
	} else {
		for (int h = 0; h < g; h++)
			scores_c(kv_kpage(j->kv, j->layer, kvh, 0), d, q + (size_t)h * d, nk,
				 s + (size_t)h * j->kv->cap);
	}
	softmax_rows(s, g, nk, j->kv->cap);
	pv(j->kv, j->layer, kvh, s, j->kv->cap, g, nk, NULL, o);
}

/* ---- the forward pass ---- */

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

/* GGUF llama: rotate adjacent pairs (x[2i], x[2i+1]) by pos · base^(-2i/d). */
static void rope(float *x, int nh, int d, int pos, float base)
{
	int h, i;

	for (i = 0; i < d / 2; i++) {
		double th = pos * pow(base, -2.0 * i / d);
		float cs = (float)cos(th), sn = (float)sin(th);

		for (h = 0; h < nh; h++) {
			float *p = x + (size_t)h * d + 2 * i, a = p[0], b = p[1];

			p[0] = a * cs - b * sn;
			p[1] = a * sn + b * cs;
		}
	}
}

int model_forward(struct model *m, struct kv *kv, const int32_t *toks, int n, float *logits,
		  float *all_logits, const struct attn_hook *hook)
{
	const struct model_cfg *c = &m->cfg;
	int D = c->n_embd, KVD = c->n_kv * c->head_dim, F = c->n_ff, hd = c->head_dim;
	int g = c->n_head / c->n_kv, done = 0, cn, t, l, i, err = 0;
	float *x, *xn, *q, *k, *v, *att, *gt, *up, *scratch, *row;
	float qscale = 1.0f / sqrtf((float)hd);

	if (m->gemma)
		return gemma_forward(m, kv, toks, n, logits, all_logits, hook);
	if (n < 1)
		return -EINVAL;
	if (kv->n + n > kv->cap || kv->n + n > c->n_ctx * 4)
		return -ENOSPC;
	for (t = 0; t < n; t++)
		if (toks[t] < 0 || toks[t] >= c->n_vocab)
			return -EINVAL;
	x = malloc((size_t)CHUNK * D * 4);
	xn = malloc((size_t)CHUNK * D * 4);
	q = malloc((size_t)CHUNK * D * 4);
	k = malloc((size_t)CHUNK * KVD * 4);
	v = malloc((size_t)CHUNK * KVD * 4);
	att = malloc((size_t)CHUNK * D * 4);
	gt = malloc((size_t)CHUNK * F * 4);
	up = malloc((size_t)CHUNK * F * 4);
	scratch = aligned_alloc(64, (size_t)pool_threads(m->pool) * g * kv->cap * 4);
	row = malloc((size_t)D * 4);
	if (!x || !xn || !q || !k || !v || !att || !gt || !up || !scratch || !row) {
		err = -ENOMEM;
		goto out;
	}
	while (done < n && !err) {
		int pos0 = kv->n;

		cn = n - done < CHUNK ? n - done : CHUNK;
		for (t = 0; t < cn; t++)
			mm_dequant_row(&m->tok_embd, toks[done + t], x + (size_t)t * D);
		for (l = 0; l < c->n_layer && !err; l++) {
			const struct layer_w *w = &m->layers[l];

			for (t = 0; t < cn; t++)
				rmsnorm(x + (size_t)t * D, w->attn_norm, D, c->eps,
					xn + (size_t)t * D);
			if ((err = mm_matmul(&w->wq, xn, cn, q, D, m->pool)) ||
			    (err = mm_matmul(&w->wk, xn, cn, k, KVD, m->pool)) ||
			    (err = mm_matmul(&w->wv, xn, cn, v, KVD, m->pool)))
				break;
			for (t = 0; t < cn; t++) {
				rope(q + (size_t)t * D, c->n_head, hd, pos0 + t, c->rope_base);
				rope(k + (size_t)t * KVD, c->n_kv, hd, pos0 + t, c->rope_base);
				for (i = 0; i < D; i++)
					q[(size_t)t * D + i] *= qscale;
				for (i = 0; i < c->n_kv; i++)
					kv_store(kv, l, i, pos0 + t, k + (size_t)t * KVD + i * hd,
						 v + (size_t)t * KVD + i * hd);
			}
			if (hook && hook->capture && n == 1 &&
			    (err = hook->capture(hook->ctx, l, pos0, q)))
				break;
			if (hook && hook->attend && n == 1 && l >= hook->dense) {
				err = hook->attend(hook->ctx, m, kv, l, pos0, q, att);
				if (err)
					break;
			} else {
				struct attn_job aj = { m, kv, l, pos0, cn, q, att, scratch };

				pool_run(m->pool, attn_task, &aj, cn * c->n_kv);
			}
			if ((err = mm_matmul(&w->wo, att, cn, xn, D, m->pool)))
				break;
			for (i = 0; i < cn * D; i++)
				x[i] += xn[i];
			for (t = 0; t < cn; t++)
				rmsnorm(x + (size_t)t * D, w->ffn_norm, D, c->eps,
					xn + (size_t)t * D);
			if ((err = mm_matmul(&w->gate, xn, cn, gt, F, m->pool)) ||
			    (err = mm_matmul(&w->up, xn, cn, up, F, m->pool)))
				break;
			for (i = 0; i < cn * F; i++)
				gt[i] = gt[i] / (1.0f + expf(-gt[i])) * up[i];
			if ((err = mm_matmul(&w->down, gt, cn, xn, D, m->pool)))
				break;
			for (i = 0; i < cn * D; i++)
				x[i] += xn[i];
		}
		if (err)
			break;
		kv->n += cn;
		if (all_logits) {
			for (t = 0; t < cn; t++) {
				rmsnorm(x + (size_t)t * D, m->output_norm, D, c->eps, row);
				err = mm_matmul(&m->output, row, 1,
						all_logits + (size_t)(done + t) * c->n_vocab,
						c->n_vocab, m->pool);
				if (err)
					break;
			}
		}
		done += cn;
		if (done == n && logits) {
			rmsnorm(x + (size_t)(cn - 1) * D, m->output_norm, D, c->eps, row);
			err = mm_matmul(&m->output, row, 1, logits, c->n_vocab, m->pool);
		}
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
	return err;
}
