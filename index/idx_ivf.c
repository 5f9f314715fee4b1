/*
 * Seed lists for the level-0 parent search (struct idx_ivf in idx_impl.h). The exact pass
 * scores every key against every seed: N * r1 * N pairs, ~3,500 seeds per key at N = 262144,
 * growing as N^2. The lists cut that to the centres (about sqrt(probes * seeds)) plus the lists
 * of the `probes` best centres, all scored exactly in fp32 with the page kernel, so a key
 * misses its exact nearest seed only when that seed is filed under a centre it ranks below
 * the probes; the seed it takes instead is the best of several hundred near ones.
 *
 * Lists are a function of the first `nseeds` seeds alone (centres at fixed strides, Euclidean
 * filing): rebuilt at fixed seed counts, they come out the same whatever the index went
 * through, so an insert after a rollback places keys exactly as if the undone inserts had
 * never run.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "idx_impl.h"
#include "idx_simd_dot.h"

#define MAX_PROBES IDX_LANES
#define FILE_TRY 8u
/* centres at most (a key's scores against them sit on the stack) */
#define IDX_IVF_MAX_CENT 512u

static float lift_h(float m, float n2)
{
	return sqrtf(m > n2 ? m - n2 : 0.0f);
}

void idx_ivf_free(struct idx_ivf *v)
{
	free(v->cblk);
	free(v->cn2);
	free(v->ch);
	free(v->boff);
	free(v->blanes);
	free(v->lblk);
	free(v->ln2);
	free(v->lh);
	free(v->lnode);
	memset(v, 0, sizeof(*v));
}

void idx_ivf_drop(struct idx *ix)
{
	ix->ivf.nseeds = 0; /* the arrays are rewritten by the next build of the lists */
	ix->ivf.next = 0;
}

static uint32_t probes(const struct idx *ix)
{
	uint32_t p = ix->p.parent_probes;

	return p < 1 ? 1 : p > MAX_PROBES ? MAX_PROBES : p;
}

/* Seed count the lists are built for when lvl[1] holds n: the largest of base, then steps of
 * base/32 (at least 16) that is <= n. */
static size_t checkpoint(const struct idx *ix, size_t n, size_t *ret_next)
{
	size_t s = ix->ivf.base ? ix->ivf.base : (size_t)ix->p.exact_parent_max + 1, step;

	for (;;) {
		step = s / 32 > 16 ? s / 32 : 16;
		if (s + step > n)
			break;
		s += step;
	}
	*ret_next = s + step;
	return s;
}

static void *zalloc64(size_t bytes)
{
	void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);

	if (p)
		memset(p, 0, bytes);
	return p;
}

static int rebuild(struct idx *ix, size_t s)
{
	struct idx_ivf v = { 0 };
	uint32_t c, j, dim = ix->dim, *home = NULL, *cnt = NULL, *fill = NULL;
	size_t i, nb = 0, cb;
	float xs[IDX_LANES * IDX_MAX_DIM], hs[IDX_LANES], top[IDX_LANES * FILE_TRY], m2 = 0;
	uint32_t targ[IDX_LANES * FILE_TRY], cap;
	int rc = -ENOMEM;

	v.base = ix->ivf.base;
	v.nseeds = s;
	v.ncent = (uint32_t)ceil(sqrt((double)probes(ix) * (double)s));
	if (v.ncent > IDX_IVF_MAX_CENT)
		v.ncent = IDX_IVF_MAX_CENT;
	if (v.ncent > s)
		v.ncent = (uint32_t)s;
	cb = (v.ncent + IDX_LANES - 1) / IDX_LANES;
	v.cblk = zalloc64(cb * ix->blk * sizeof(float));
	v.cn2 = calloc(cb * IDX_LANES, sizeof(float));
	v.ch = calloc(cb * IDX_LANES, sizeof(float));
	home = malloc(s * sizeof(uint32_t));
	cnt = calloc(v.ncent + 1, sizeof(uint32_t));
	fill = calloc(v.ncent, sizeof(uint32_t));
	if (!v.cblk || !v.cn2 || !v.ch || !home || !cnt || !fill)
		goto out;
	/* centres at fixed strides; seeds filed in the lifted space of the largest seed norm m2
	 * (a function of the seeds alone, unlike M), where every seed has the same norm: plain
	 * Euclidean filing lets a few small-norm centres take most of the seeds */
	for (i = 0; i < s; i++) {
		float n2 = ix->nodes[ix->lvl[1].v[i]].n2;

		m2 = n2 > m2 ? n2 : m2;
	}
	for (c = 0; c < v.ncent; c++) {
		uint32_t node = ix->lvl[1].v[(size_t)c * s / v.ncent];
		const float *k = ix->nkey + (size_t)node * dim;
		float *b = v.cblk + (c / IDX_LANES) * ix->blk + c % IDX_LANES;

		for (j = 0; j < dim; j++)
			b[(size_t)j * IDX_LANES] = k[j];
		v.cn2[c] = ix->nodes[node].n2;
		v.ch[c] = lift_h(m2, v.cn2[c]);
	}
	/* each seed takes the nearest of its FILE_TRY best centres whose list has room: popular
	 * topics hold many near-identical seeds, and uncapped a few lists took hundreds (every
	 * key of the topic then scanned them all) */
	cap = (uint32_t)((4 * s / v.ncent + IDX_LANES) / IDX_LANES * IDX_LANES);
	for (i = 0; i < s; i += IDX_LANES) {
		uint32_t g = s - i < IDX_LANES ? (uint32_t)(s - i) : IDX_LANES,
			 tn[IDX_LANES] = { 0 };
		size_t b;

		for (j = 0; j < g; j++) {
			memcpy(xs + (size_t)j * dim, ix->nkey + (size_t)ix->lvl[1].v[i + j] * dim,
			       dim * sizeof(float));
			hs[j] = lift_h(m2, ix->nodes[ix->lvl[1].v[i + j]].n2);
		}
		for (b = 0; b < cb; b++) {
			uint32_t lanes = v.ncent - b * IDX_LANES < IDX_LANES ?
						 (uint32_t)(v.ncent - b * IDX_LANES) :
						 IDX_LANES;

			idx_lift_top(v.cblk + b * ix->blk, v.ch + b * IDX_LANES, xs, hs, g, dim,
				     lanes, (uint32_t)(b * IDX_LANES), FILE_TRY, top, targ, tn);
		}
		for (j = 0; j < g; j++) {
			uint32_t r, h = targ[j * FILE_TRY];

			for (r = 0; r < tn[j]; r++)
				if (cnt[targ[j * FILE_TRY + r]] < cap) {
					h = targ[j * FILE_TRY + r];
					break;
				}
			home[i + j] = h;
			cnt[h]++;
		}
	}
	v.boff = malloc((v.ncent + 1) * sizeof(uint32_t));
	if (!v.boff)
		goto out;
	for (c = 0; c < v.ncent; c++) {
		v.boff[c] = (uint32_t)nb;
		nb += (cnt[c] + IDX_LANES - 1) / IDX_LANES;
	}
	v.boff[v.ncent] = (uint32_t)nb;
	v.blanes = calloc(nb ? nb : 1, 1);
	v.lblk = zalloc64((nb ? nb : 1) * ix->blk * sizeof(float));
	v.ln2 = calloc((nb ? nb : 1) * IDX_LANES, sizeof(float));
	v.lh = calloc((nb ? nb : 1) * IDX_LANES, sizeof(float));
	v.lnode = malloc((nb ? nb : 1) * IDX_LANES * sizeof(uint32_t));
	if (!v.blanes || !v.lblk || !v.ln2 || !v.lh || !v.lnode)
		goto out;
	for (i = 0; i < s; i++) {
		uint32_t node = ix->lvl[1].v[i], hc = home[i];
		size_t lane = (size_t)v.boff[hc] * IDX_LANES + fill[hc]++;
		const float *k = ix->nkey + (size_t)node * dim;
		float *b = v.lblk + (lane / IDX_LANES) * ix->blk + lane % IDX_LANES;

		for (j = 0; j < dim; j++)
			b[(size_t)j * IDX_LANES] = k[j];
		v.ln2[lane] = ix->nodes[node].n2;
		v.lnode[lane] = node;
		v.blanes[lane / IDX_LANES]++;
	}
	v.hm = -1.0f;
	checkpoint(ix, s, &v.next);
	idx_ivf_free(&ix->ivf);
	ix->ivf = v;
	rc = 0;
out:
	if (rc < 0)
		idx_ivf_free(&v);
	free(home);
	free(cnt);
	free(fill);
	return rc;
}

int idx_ivf_sync(struct idx *ix)
{
	struct idx_ivf *v = &ix->ivf;
	size_t n = ix->lvl[1].n, i;

	if (n <= ix->p.exact_parent_max)
		return 0;
	if (!v->nseeds || v->nseeds > n || n >= v->next) {
		size_t next, s = checkpoint(ix, n, &next);
		int rc;

		if (s > n) /* below the first checkpoint (a rollback): start from n */
			v->base = s = n;
		rc = rebuild(ix, s);
		if (rc < 0)
			return rc;
	}
	if (v->hm != ix->m) {
		for (i = 0; i < v->ncent; i++)
			v->ch[i] = lift_h(ix->m, v->cn2[i]);
		for (i = 0; i < (size_t)v->boff[v->ncent] * IDX_LANES; i++)
			v->lh[i] = lift_h(ix->m, v->ln2[i]);
		v->hm = ix->m;
	}
	return 1;
}

/* Scans the lists of the (list << 4 | key) pairs[0..np) for those keys: keys sharing a list
 * share its block loads. best/lane: per key, lane = list lane of the best (UINT32_MAX: none). */
static void scan_lists(const struct idx *ix, uint32_t *pairs, uint32_t np, const float *xs,
		       const float *hx, float *best, uint32_t *lane)
{
	const struct idx_ivf *v = &ix->ivf;
	float sub[IDX_LANES * IDX_MAX_DIM], sub_best[IDX_LANES], sub_hx[IDX_LANES];
	uint32_t sub_arg[IDX_LANES], sub_key[IDX_LANES], a, b, i, dim = ix->dim;
	size_t k;

	for (a = 1; a < np; a++) { /* insertion sort: at most 16 keys x a few lists */
		uint32_t e = pairs[a], q = a;

		while (q > 0 && pairs[q - 1] > e) {
			pairs[q] = pairs[q - 1];
			q--;
		}
		pairs[q] = e;
	}
	for (a = 0; a < np; a = b) {
		uint32_t c = pairs[a] >> 4, gs = 0;

		for (b = a; b < np && pairs[b] >> 4 == c; b++) {
			uint32_t key = pairs[b] & 15;

			sub_key[gs] = key;
			sub_hx[gs] = hx[key];
			sub_best[gs] = best[key];
			sub_arg[gs] = lane[key];
			memcpy(sub + (size_t)gs * dim, xs + (size_t)key * dim, dim * sizeof(float));
			gs++;
		}
		for (k = v->boff[c]; k < v->boff[c + 1]; k++)
			idx_lift_best(v->lblk + k * ix->blk, v->lh + k * IDX_LANES, sub, sub_hx, gs,
				      dim, v->blanes[k], (uint32_t)(k * IDX_LANES), sub_best,
				      sub_arg);
		for (i = 0; i < gs; i++) {
			best[sub_key[i]] = sub_best[i];
			lane[sub_key[i]] = sub_arg[i];
		}
	}
}

void idx_ivf_best(const struct idx *ix, const float *xs, const float *hx, uint32_t g,
		  uint32_t *ret_node, float *ret_score)
{
	const struct idx_ivf *v = &ix->ivf;
	uint32_t p = probes(ix), dim = ix->dim, i, r, c, cnt[IDX_LANES] = { 0 }, np = 0;
	uint32_t arg[IDX_LANES * MAX_PROBES], lane[IDX_LANES];
	float top[IDX_LANES * MAX_PROBES], best[IDX_LANES], h[IDX_LANES];
	float cs[IDX_LANES * IDX_IVF_MAX_CENT], out[IDX_LANES * IDX_LANES];
	uint32_t pbuf[IDX_LANES * MAX_PROBES];
	size_t cb = (v->ncent + IDX_LANES - 1) / IDX_LANES, k, s, nseeds = ix->lvl[1].n;

	/* every centre's lifted score per key, and each key's p best */
	for (k = 0; k < cb; k++) {
		uint32_t lanes = v->ncent - k * IDX_LANES < IDX_LANES ?
					 (uint32_t)(v->ncent - k * IDX_LANES) :
					 IDX_LANES,
			 l;

		idx_simd()->score_block(v->cblk + k * ix->blk, xs, g, dim, out);
		for (i = 0; i < g; i++)
			for (l = 0; l < lanes; l++)
				cs[(size_t)i * v->ncent + k * IDX_LANES + l] =
					out[i * IDX_LANES + l] + hx[i] * v->ch[k * IDX_LANES + l];
	}
	for (i = 0; i < g; i++) {
		const float *ci = cs + (size_t)i * v->ncent;

		for (c = 0; c < v->ncent; c++) {
			float x = ci[c];
			uint32_t q;

			if (cnt[i] == p && x <= top[i * p + p - 1])
				continue;
			q = cnt[i] < p ? cnt[i]++ : p - 1;
			while (q > 0 && top[i * p + q - 1] < x) {
				top[i * p + q] = top[i * p + q - 1];
				arg[i * p + q] = arg[i * p + q - 1];
				q--;
			}
			top[i * p + q] = x;
			arg[i * p + q] = c;
		}
		best[i] = -INFINITY;
		lane[i] = UINT32_MAX;
		for (r = 0; r < cnt[i]; r++)
			pbuf[np++] = arg[i * p + r] << 4 | i;
	}
	scan_lists(ix, pbuf, np, xs, hx, best, lane);
	for (i = 0; i < g; i++)
		ret_node[i] = lane[i] == UINT32_MAX ? ix->lvl[1].v[0] : v->lnode[lane[i]];
	/* seeds made since the lists were built: all of them */
	for (s = v->nseeds / IDX_LANES * IDX_LANES; v->nseeds < nseeds && s < nseeds;
	     s += IDX_LANES) {
		uint32_t lanes = nseeds - s < IDX_LANES ? (uint32_t)(nseeds - s) : IDX_LANES, l;

		for (l = 0; l < IDX_LANES; l++)
			h[l] = l < lanes ? lift_h(ix->m, ix->nodes[ix->lvl[1].v[s + l]].n2) : 0.0f;
		for (i = 0; i < g; i++)
			lane[i] = UINT32_MAX;
		idx_lift_best(ix->seedk + (s / IDX_LANES) * ix->blk, h, xs, hx, g, dim, lanes,
			      (uint32_t)s, best, lane);
		for (i = 0; i < g; i++)
			if (lane[i] != UINT32_MAX)
				ret_node[i] = ix->lvl[1].v[lane[i]];
	}
	if (ret_score)
		memcpy(ret_score, best, g * sizeof(float));
}

size_t idx_ivf_bytes(const struct idx *ix)
{
	const struct idx_ivf *v = &ix->ivf;
	size_t cb = (v->ncent + IDX_LANES - 1) / IDX_LANES, nb;

	if (!v->nseeds)
		return 0;
	nb = v->boff[v->ncent];
	return cb * (ix->blk + 2 * IDX_LANES) * sizeof(float) + (v->ncent + 1) * sizeof(uint32_t) +
	       nb * (1 + (ix->blk + 2 * IDX_LANES) * sizeof(float) + IDX_LANES * sizeof(uint32_t));
}
