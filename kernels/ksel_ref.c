/* CPU references of ksel (kernels/ksel.h): the page summaries and the fused select, written to
 * follow the GPU kernels' arithmetic where it decides a ranking (the bound is summed in the
 * same order, so candidate sets agree bit for bit but for exact ties). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ksel.h"

static int keys_check(const struct kern_sel_keys *k)
{
	if (!k || !k->pool || !k->d || k->d % 16 || k->d > 512 || !k->page_cap ||
	    k->page_cap > KERN_SKIP_ROWS || !k->pstride)
		return -EINVAL;
	if (k->dtype != ICE_DTYPE_F32 && k->dtype != ICE_DTYPE_F16 && k->dtype != ICE_DTYPE_BF16)
		return -EINVAL;
	if (k->slot_bytes < (size_t)k->page_cap * k->d * dtype_size(k->dtype))
		return -EINVAL;
	return 0;
}

static const void *page_keys(const struct kern_sel_keys *k, uint32_t h, uint32_t p)
{
	size_t i = (size_t)h * k->pstride + p;
	size_t slot = k->slot_of ? k->slot_of[i] : i;

	return (const unsigned char *)k->pool + slot * k->slot_bytes;
}

int kern_ref_sel_sum(const struct kern_sel_keys *keys, const struct kern_sel_upd *upd, uint32_t n,
		     void *sums)
{
	size_t rb;
	uint32_t i, c, t;

	if (keys_check(keys) || (n && (!upd || !sums)))
		return -EINVAL;
	rb = kern_sel_rec_bytes(keys->d);
	for (i = 0; i < n; i++)
		if (upd[i].page >= keys->pstride || upd[i].fill > keys->page_cap)
			return -EINVAL;
	for (i = 0; i < n; i++) {
		const void *kp = page_keys(keys, upd[i].head, upd[i].page);
		unsigned char *rec = (unsigned char *)sums +
				     ((size_t)upd[i].head * keys->pstride + upd[i].page) * rb;
		struct kern_sel_hdr hdr = { 1.0f, upd[i].fill, { 0, 0 } };
		signed char *lo = (signed char *)rec + KERN_SEL_HDR, *hi = lo + keys->d;
		float amax = 0.0f;

		for (t = 0; t < upd[i].fill; t++)
			for (c = 0; c < keys->d; c++)
				amax = fmaxf(amax, fabsf(dtype_load_f32(kp, keys->dtype,
									(size_t)t * keys->d + c)));
		if (amax > 0.0f)
			hdr.scale = amax / 127.0f;
		for (c = 0; c < keys->d; c++) {
			float mn = INFINITY, mx = -INFINITY, a, b;

			for (t = 0; t < upd[i].fill; t++) {
				float v = dtype_load_f32(kp, keys->dtype, (size_t)t * keys->d + c);

				mn = fminf(mn, v);
				mx = fmaxf(mx, v);
			}
			if (!upd[i].fill)
				mn = mx = 0.0f;
			a = fminf(fmaxf(floorf(mn / hdr.scale), -128.0f), 127.0f);
			b = fminf(fmaxf(ceilf(mx / hdr.scale), -128.0f), 127.0f);
			lo[c] = (signed char)a;
			hi[c] = (signed char)b;
		}
		memcpy(rec, &hdr, sizeof(hdr));
	}
	return 0;
}

int kern_sel_check(const struct kern_sel_args *a)
{
	uint32_t g;

	if (!a || keys_check(&a->keys) || !a->hq || !a->hkv || a->hq % a->hkv || !a->q ||
	    !a->sums || !a->ids || !a->masks || a->npages > a->keys.pstride || !a->cand ||
	    a->cand > KERN_SEL_MAX_CAND || !a->keep || a->keep > a->cand ||
	    a->keep > KERN_SEL_MAX_KEEP || a->rows > a->cand * a->keys.page_cap ||
	    !(a->attn_scale > 0.0f))
		return -EINVAL;
	g = a->hq / a->hkv;
	if (g != 1 && g != 2 && g != 4 && g != 8)
		return -EINVAL;
	if (a->table && a->toff + a->keep > a->tstride)
		return -EINVAL;
	return 0;
}

/* The group's query j quantised as the GPU does: int8 codes (scale *ret_scale). */
static void quant_q(const float *q, uint32_t d, int *codes, float *ret_scale)
{
	float m = 0.0f, s;
	uint32_t c;

	for (c = 0; c < d; c++)
		m = fmaxf(m, fabsf(q[c]));
	s = m > 0.0f ? m / 127.0f : 1.0f;
	for (c = 0; c < d; c++) {
		float v = rintf(q[c] / s);

		codes[c] = v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v;
	}
	*ret_scale = s;
}

/* The bound of a page for int8 query codes (exact integer sum, as dp4a gives it). */
static int page_bound(const unsigned char *rec, const int *codes, uint32_t d)
{
	const signed char *lo = (const signed char *)rec + KERN_SEL_HDR, *hi = lo + d;
	uint32_t c;
	int acc = 0;

	for (c = 0; c < d; c++)
		acc += codes[c] > 0 ? codes[c] * hi[c] : codes[c] * lo[c];
	return acc;
}

struct scored {
	float s;
	uint32_t p; /* ranks ties (lower first) */
	uint32_t i; /* candidate index */
};

static int by_score(const void *x, const void *y)
{
	const struct scored *a = x, *b = y;

	if (a->s != b->s)
		return a->s > b->s ? -1 : 1;
	return a->p < b->p ? -1 : a->p > b->p;
}

int kern_ref_sel(const struct kern_sel_args *a, uint32_t *ret_cand)
{
	const struct kern_sel_keys *k = &a->keys;
	uint32_t g, h, i, j, t, p, nc;
	struct scored *sc;
	size_t rb;
	double mass[KERN_SEL_MAX_CAND][8], m[8], z[8];
	float w[KERN_SEL_MAX_CAND * 16][8], tu[KERN_SEL_MAX_CAND * 16];
	struct scored tok[KERN_SEL_MAX_CAND * 16];
	uint32_t rmask[KERN_SEL_MAX_CAND];
	int codes[8 * 512];

	if (kern_sel_check(a))
		return -EINVAL;
	g = a->hq / a->hkv;
	rb = kern_sel_rec_bytes(k->d);
	sc = malloc(((size_t)a->npages + 1) * sizeof(*sc));
	if (!sc)
		return -ENOMEM;
	for (h = 0; h < a->hkv; h++) {
		const float *q = a->q + (size_t)h * g * k->d;
		struct scored cs[KERN_SEL_MAX_CAND];
		uint32_t fill[KERN_SEL_MAX_CAND];
		float qsc[8];

		for (j = 0; j < g; j++)
			quant_q(q + (size_t)j * k->d, k->d, codes + (size_t)j * k->d, &qsc[j]);

		for (p = 0; p < a->npages; p++) {
			const unsigned char *rec =
				(const unsigned char *)a->sums + ((size_t)h * k->pstride + p) * rb;
			struct kern_sel_hdr hdr;
			float best = -INFINITY;

			memcpy(&hdr, rec, sizeof(hdr));
			for (j = 0; hdr.fill && j < g; j++)
				best = fmaxf(best, (float)page_bound(rec, codes + (size_t)j * k->d,
								     k->d) *
							   qsc[j]);
			sc[p] = (struct scored){ hdr.fill ? best * hdr.scale : -INFINITY, p, p };
		}
		qsort(sc, a->npages, sizeof(*sc), by_score);
		nc = a->npages < a->cand ? a->npages : a->cand;
		for (j = 0; j < g; j++) {
			m[j] = -INFINITY;
			z[j] = 0.0;
		}
		for (i = 0; i < nc; i++) {
			const unsigned char *rec = (const unsigned char *)a->sums +
						   ((size_t)h * k->pstride + sc[i].p) * rb;
			const void *kp = page_keys(k, h, sc[i].p);
			struct kern_sel_hdr hdr;

			memcpy(&hdr, rec, sizeof(hdr));
			fill[i] = hdr.fill;
			if (ret_cand)
				ret_cand[(size_t)h * a->cand + i] = sc[i].p;
			for (t = 0; t < hdr.fill; t++)
				for (j = 0; j < g; j++) {
					double dot = 0.0;
					uint32_t c;

					for (c = 0; c < k->d; c++)
						dot += (double)q[(size_t)j * k->d + c] *
						       dtype_load_f32(kp, k->dtype,
								      (size_t)t * k->d + c);
					w[i * 16 + t][j] = (float)(dot * a->attn_scale);
					if (w[i * 16 + t][j] > m[j])
						m[j] = w[i * 16 + t][j];
				}
		}
		if (!a->rows) {
			for (i = 0; i < nc; i++)
				for (j = 0; j < g; j++) {
					mass[i][j] = 0.0;
					for (t = 0; t < fill[i]; t++)
						mass[i][j] += exp((double)w[i * 16 + t][j] - m[j]);
					z[j] += mass[i][j];
				}
			for (i = 0; i < nc; i++) {
				double best = -1.0;

				for (j = 0; fill[i] && j < g; j++)
					if (z[j] > 0.0 && mass[i][j] / z[j] > best)
						best = mass[i][j] / z[j];
				cs[i] = (struct scored){ (float)best, sc[i].p, i };
				rmask[i] = (1u << fill[i]) - 1;
			}
		} else {
			uint32_t ntok = 0, R;

			for (i = 0; i < nc; i++) {
				rmask[i] = 0;
				for (t = 0; t < fill[i]; t++) {
					float u = -INFINITY;

					for (j = 0; j < g; j++)
						u = fmaxf(u, w[i * 16 + t][j] - (float)m[j]);
					tu[i * 16 + t] = u;
					tok[ntok++] =
						(struct scored){ u, sc[i].p * 16 + t, i * 16 + t };
				}
			}
			qsort(tok, ntok, sizeof(*tok), by_score);
			R = a->rows < ntok ? a->rows : ntok;
			for (i = 0; i < R; i++)
				rmask[tok[i].i / 16] |= 1u << (tok[i].i % 16);
			for (i = 0; i < nc; i++) {
				double sum = 0.0;

				for (t = 0; t < 16; t++)
					if (rmask[i] >> t & 1)
						sum += exp((double)tu[i * 16 + t]);
				cs[i] = (struct scored){ rmask[i] ? (float)sum : -1.0f, sc[i].p,
							 i };
			}
		}
		qsort(cs, nc, sizeof(*cs), by_score);
		for (i = 0; i < a->keep; i++) {
			size_t o = (size_t)h * a->keep + i;
			int ok = i < nc && cs[i].s >= 0.0f;
			uint32_t f = ok ? fill[cs[i].i] : 0;

			a->ids[o] = ok ? cs[i].p : UINT32_MAX;
			a->masks[o] = ok ? (uint16_t)rmask[cs[i].i] : 0;
			if (a->table) {
				size_t e = (size_t)h * a->tstride + a->toff + i;

				a->table[e] = (struct kern_page){ a->tslot + (uint32_t)e,
								  (uint16_t)f,
								  (uint16_t)~a->masks[o] };
			}
			if (a->copies) {
				p = ok ? cs[i].p : 0;
				a->copies[o].src =
					a->src_base + ((uint64_t)h * k->pstride + p) * a->src_bytes;
				a->copies[o].dst =
					a->dst_base +
					((uint64_t)h * a->tstride + a->toff + i) * a->dst_bytes;
			}
		}
	}
	free(sc);
	return 0;
}
