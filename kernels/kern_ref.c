/*
 * CPU side of kern: the references the CUDA kernels are checked against.
 * The references favour being obviously right over being fast (double accumulation, one query
 * head at a time), since CI trusts them as the definition of each kernel.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "kern.h"
#include "kern_split.h"

/* Largest head dim the reference takes (its accumulator lives on the stack). */
#define KERN_REF_MAX_D 512

int kern_ref_gather(const struct kern_copy *copies, uint32_t n, size_t bytes)
{
	uint32_t i;

	if (bytes % 16 || (n && !copies))
		return -EINVAL;
	for (i = 0; i < n; i++)
		if (!copies[i].src || !copies[i].dst || (copies[i].src | copies[i].dst) % 16)
			return -EINVAL;
	for (i = 0; i < n; i++)
		memcpy((void *)(uintptr_t)copies[i].dst, (const void *)(uintptr_t)copies[i].src,
		       bytes);
	return 0;
}

int kern_attn_check(const struct kern_attn_args *a)
{
	size_t es;

	if (!a)
		return -EINVAL;
	es = dtype_size(a->dtype);
	if (!es || !a->hq || !a->hkv || a->hq % a->hkv || !a->d || a->d % 8 || !a->page_cap)
		return -EINVAL;
	if (!a->q || !a->out || !a->pool || !a->pages || !a->head_off)
		return -EINVAL;
	if (a->slot_bytes % 16 || a->slot_bytes < 2 * (size_t)a->page_cap * a->d * es)
		return -EINVAL;
	if ((uintptr_t)a->pool % 16 || !(a->scale == a->scale))
		return -EINVAL;
	return 0;
}

static int row_skipped(const struct kern_page *pg, uint32_t t)
{
	return t < KERN_SKIP_ROWS && (pg->skip >> t & 1);
}

int kern_ref_attn(const struct kern_attn_args *a)
{
	const unsigned char *pool;
	uint32_t g, h, j, p, t, c;
	size_t es;
	int r = kern_attn_check(a);

	if (r)
		return r;
	if (a->d > KERN_REF_MAX_D)
		return -EINVAL;
	es = dtype_size(a->dtype);
	g = a->hq / a->hkv;
	pool = a->pool;
	if (a->head_off[0] != 0)
		return -EINVAL;
	for (h = 0; h < a->hkv; h++) {
		if (a->head_off[h + 1] < a->head_off[h])
			return -EINVAL;
		for (p = a->head_off[h]; p < a->head_off[h + 1]; p++)
			if (a->pages[p].slot >= a->nslots || a->pages[p].fill > a->page_cap)
				return -EINVAL;
	}

	for (h = 0; h < a->hkv; h++) {
		for (j = 0; j < g; j++) {
			uint32_t qi = h * g + j;
			double m = -INFINITY, l = 0.0;
			double accp[KERN_REF_MAX_D];
			const float *rv = a->rest ? a->rest + (size_t)qi * (a->d + 1) + 1 : NULL;
			double rl = a->rest ? (double)a->rest[(size_t)qi * (a->d + 1)] : -INFINITY;

			for (c = 0; c < a->d; c++)
				accp[c] = 0.0;
			/* Two passes keep the reference plain: max first, then the weighted sum. */
			for (p = a->head_off[h]; p < a->head_off[h + 1]; p++) {
				const void *k = pool + (size_t)a->pages[p].slot * a->slot_bytes;

				for (t = 0; t < a->pages[p].fill; t++) {
					double s = 0.0;

					if (row_skipped(&a->pages[p], t))
						continue;
					for (c = 0; c < a->d; c++)
						s += (double)dtype_load_f32(a->q, a->dtype,
									    (size_t)qi * a->d + c) *
						     dtype_load_f32(k, a->dtype,
								    (size_t)t * a->d + c);
					s *= a->scale;
					if (s > m)
						m = s;
				}
			}
			if (rl > m)
				m = rl; /* the rest term is one more token of log weight rl */
			if (rl > -INFINITY) {
				l += exp(rl - m);
				for (c = 0; c < a->d; c++)
					accp[c] += exp(rl - m) * rv[c];
			}
			for (p = a->head_off[h]; p < a->head_off[h + 1]; p++) {
				const void *k = pool + (size_t)a->pages[p].slot * a->slot_bytes;
				const void *v = (const unsigned char *)k +
						(size_t)a->pages[p].fill * a->d * es;

				for (t = 0; t < a->pages[p].fill; t++) {
					double s = 0.0, w;

					if (row_skipped(&a->pages[p], t))
						continue;
					for (c = 0; c < a->d; c++)
						s += (double)dtype_load_f32(a->q, a->dtype,
									    (size_t)qi * a->d + c) *
						     dtype_load_f32(k, a->dtype,
								    (size_t)t * a->d + c);
					w = exp(s * a->scale - m);
					l += w;
					for (c = 0; c < a->d; c++)
						accp[c] += w * dtype_load_f32(v, a->dtype,
									      (size_t)t * a->d + c);
				}
			}
			for (c = 0; c < a->d; c++)
				dtype_store_f32(a->out, a->dtype, (size_t)qi * a->d + c,
						l > 0.0 ? (float)(accp[c] / l) : 0.0f);
		}
	}
	return 0;
}

size_t kern_attn_ws_size(const struct kern_attn_args *a)
{
	struct kern_split sp;

	if (kern_attn_check(a))
		return 0;
	sp = kern_attn_split(a->hkv, a->max_pages);
	if (sp.nsplit <= 1)
		return 0;
	return (size_t)a->hkv * sp.nsplit * (a->hq / a->hkv) * (a->d + 2) * sizeof(float) +
	       (size_t)a->hkv * sizeof(uint32_t);
}
