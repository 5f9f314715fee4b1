/*
 * DCI-tree build and insert. See idx.h for the contract and docs/INDEX.md for the algorithm.
 *
 * Build goes top-down, one level at a time: the parents of level-L tokens are found among the
 * level-(L+1) nodes (whose own cells, and so pages, already exist, which is what the descent
 * walks), then the level-L tokens are grouped by parent, sorted along the projection and cut
 * into pages. Page ids therefore come out root first, then upper cells, then the level-1 cells,
 * each cell's pages consecutive, so the keys a search scans are mostly one straight run.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "idx_impl.h"
#include "idx_simd_dot.h"

/* ---- small helpers ----------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static double hash01(uint64_t seed, uint64_t a, uint64_t b)
{
	return (double)(mix64(seed ^ mix64(a * 0x100000001b3ull + b)) >> 11) * 0x1.0p-53;
}

/* Level by independent promotions: level >= 1 with r1, each further level with r2. Hashing the
 * position makes levels deterministic and the same for build and insert. */
static uint32_t promo_level(const struct idx *ix, uint32_t pos)
{
	uint32_t l = 0;

	while (l < IDX_MAX_LEVELS - 2 && hash01(ix->p.seed, pos, l) < (l ? ix->p.r2 : ix->p.r1))
		l++;
	return l;
}

static int vec_push(struct idx_vec *v, uint32_t x)
{
	if (buf_grow(&v->v, &v->cap, v->n + 1, sizeof(*v->v)))
		return -ENOMEM;
	v->v[v->n++] = x;
	return 0;
}

/* A bigger 64-byte aligned copy; the new tail is zeroed only when asked (what each use writes
 * before reading is left untouched, so capacity not yet used is not resident). */
static void *aligned_grow(void *old, size_t old_bytes, size_t new_bytes, int zero)
{
	void *p = aligned_alloc(64, (new_bytes + 63) & ~(size_t)63);

	if (!p)
		return NULL;
	if (old_bytes)
		memcpy(p, old, old_bytes);
	if (zero)
		memset((char *)p + old_bytes, 0, new_bytes - old_bytes);
	free(old);
	return p;
}

/* Grows by half: the arrays are most of the index's memory, and doubling leaves up to half of
 * one unused. */
static size_t grow_cap(size_t cap, size_t need, size_t min)
{
	if (cap < min)
		cap = min;
	while (cap < need)
		cap += cap / 2;
	return cap;
}

static int reserve_tokens(struct idx *ix, size_t need)
{
	size_t cap;
	uint32_t *a, *b;

	if (need <= ix->cap_tok)
		return 0;
	cap = grow_cap(ix->cap_tok, need, 1024);
	a = realloc(ix->tok_page, cap * sizeof(*a));
	if (!a)
		return -ENOMEM;
	ix->tok_page = a;
	b = realloc(ix->tok_node, cap * sizeof(*b));
	if (!b)
		return -ENOMEM;
	ix->tok_node = b;
	ix->cap_tok = cap;
	return 0;
}

static int reserve_pages(struct idx *ix, size_t need)
{
	size_t cap;
	struct idx_page *pg;
	float *al;
	uint8_t *sk;

	if (need <= ix->cap_pages)
		return 0;
	cap = grow_cap(ix->cap_pages, need, 64);
	pg = realloc(ix->pages, cap * sizeof(*pg));
	if (!pg)
		return -ENOMEM;
	ix->pages = pg;
	sk = aligned_grow(ix->sk, ix->cap_pages * IDX_SK_BYTES(ix->dim),
			  cap * IDX_SK_BYTES(ix->dim), 0);
	if (!sk)
		return -ENOMEM;
	ix->sk = sk;
	al = aligned_grow(ix->sk_alpha, ix->cap_pages * IDX_LANES * sizeof(float),
			  cap * IDX_LANES * sizeof(float), 0);
	if (!al)
		return -ENOMEM;
	ix->sk_alpha = al;
	ix->cap_pages = cap;
	return 0;
}

/* Room in pend for keys of positions [0, need). */
static int reserve_pend(struct idx *ix, size_t need)
{
	size_t cap;
	float *k;

	if (need <= ix->cap_pend)
		return 0;
	cap = grow_cap(ix->cap_pend, need, 256);
	k = realloc(ix->pend, cap * ix->dim * sizeof(float));
	if (!k)
		return -ENOMEM;
	ix->pend = k;
	ix->cap_pend = cap;
	return 0;
}

static int reserve_nodes(struct idx *ix, size_t need)
{
	size_t cap;
	struct idx_node *nd;
	float *nk;

	if (need <= ix->cap_nodes)
		return 0;
	cap = grow_cap(ix->cap_nodes, need, 64);
	nd = realloc(ix->nodes, cap * sizeof(*nd));
	if (!nd)
		return -ENOMEM;
	ix->nodes = nd;
	nk = aligned_grow(ix->nkey, ix->cap_nodes * ix->dim * sizeof(float),
			  cap * ix->dim * sizeof(float), 0);
	if (!nk)
		return -ENOMEM;
	ix->nkey = nk;
	ix->cap_nodes = cap;
	return 0;
}

static int reserve_seeds(struct idx *ix, size_t nseeds)
{
	size_t blocks = (nseeds + IDX_LANES - 1) / IDX_LANES, cap;
	float *sk;

	if (blocks <= ix->cap_seed_blocks)
		return 0;
	cap = grow_cap(ix->cap_seed_blocks, blocks, 4);
	sk = aligned_grow(ix->seedk, ix->cap_seed_blocks * ix->blk * sizeof(float),
			  cap * ix->blk * sizeof(float), 1);
	if (!sk)
		return -ENOMEM;
	ix->seedk = sk;
	ix->cap_seed_blocks = cap;
	return 0;
}

static int scratch_reserve(struct idx_scratch *sc, size_t need)
{
	size_t cap;
	uint32_t *c;
	float *s;

	if (need <= sc->cap)
		return 0;
	cap = grow_cap(sc->cap, need, 256);
	c = realloc(sc->cand, cap * sizeof(*c));
	if (!c)
		return -ENOMEM;
	sc->cand = c;
	s = realloc(sc->cs, cap * sizeof(*s));
	if (!s)
		return -ENOMEM;
	sc->cs = s;
	sc->cap = cap;
	return 0;
}

static void scratch_done(struct idx_scratch *sc)
{
	free(sc->cand);
	free(sc->cs);
	memset(sc, 0, sizeof(*sc));
}

/* ---- parameters and lifecycle ------------------------------------------------------------ */

void idx_params_default(struct idx_params *p, uint32_t dim)
{
	memset(p, 0, sizeof(*p));
	p->dim = dim;
	p->r1 = 0.01f;
	p->r2 = 0.2f;
	p->beam = 0;
	p->beam_mult = 1.0f;
	p->beam_add = 16;
	p->beam_pages = 1024;
	p->cells = 0;
	p->gqa_widen = 0.25f;
	p->exact_parent_max = 4096;
	p->descent_beam = 8;
	p->parent_probes = 8;
	p->cell_cap = 0;
	p->threads = 1;
	p->seed = 0x1ce1cac4e5eedull;
}

int idx_new(const struct idx_params *p, struct idx **ret)
{
	struct idx *ix;
	uint64_t s;
	double norm = 0;
	uint32_t j;

	if (!p || !ret || p->dim < 16 || p->dim > IDX_MAX_DIM || p->dim % 16)
		return -EINVAL;
	if (!(p->r1 > 0 && p->r1 < 1) || !(p->r2 > 0 && p->r2 < 1))
		return -EINVAL;
	if (!(p->beam_mult >= 0 && p->beam_mult <= 64) || !(p->gqa_widen >= 0) ||
	    p->descent_beam == 0)
		return -EINVAL;
	ix = calloc(1, sizeof(*ix));
	if (!ix)
		return -ENOMEM;
	ix->p = *p;
	if (!ix->p.cell_cap)
		ix->p.cell_cap = (uint32_t)(4.0f / p->r1);
	if (ix->p.cell_cap < IDX_PAGE_CAP)
		ix->p.cell_cap = IDX_PAGE_CAP;
	if (!ix->p.threads) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		ix->p.threads = n > 0 ? (uint32_t)n : 1;
	}
	ix->dim = p->dim;
	ix->blk = (size_t)p->dim * IDX_LANES;
	ix->proj = malloc(p->dim * sizeof(float));
	ix->sk_mu = calloc(p->dim, sizeof(float));
	ix->sk_step = calloc(p->dim, sizeof(float));
	if (!ix->proj || !ix->sk_mu || !ix->sk_step || reserve_nodes(ix, 64) < 0) {
		idx_free(ix);
		return -ENOMEM;
	}
	/* A fixed random direction (Box-Muller from the seed) orders each cell's tokens. */
	s = p->seed ^ 0x5eedf00dull;
	for (j = 0; j < p->dim; j++) {
		double u1 = hash01(s, j, 1) + 1e-12, u2 = hash01(s, j, 2);

		ix->proj[j] = (float)(sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
		norm += (double)ix->proj[j] * ix->proj[j];
	}
	for (j = 0; j < p->dim; j++)
		ix->proj[j] = (float)(ix->proj[j] / sqrt(norm));
	ix->nodes[0] = (struct idx_node){ .pos = IDX_NONE,
					  .level = IDX_MAX_LEVELS,
					  .parent = IDX_NONE,
					  .head = IDX_NONE,
					  .tail = IDX_NONE };
	ix->nnodes = 1;
	*ret = ix;
	return 0;
}

void idx_free(struct idx *ix)
{
	uint32_t l;

	if (!ix)
		return;
	free(ix->tok_page);
	free(ix->tok_node);
	free(ix->pages);
	free(ix->pend);
	free(ix->sk);
	free(ix->sk_alpha);
	free(ix->sk_mu);
	free(ix->sk_step);
	free(ix->nodes);
	free(ix->nkey);
	for (l = 0; l < IDX_MAX_LEVELS; l++)
		free(ix->lvl[l].v);
	free(ix->seedk);
	free(ix->upages.v);
	free(ix->dirty.v);
	free(ix->proj);
	scratch_done(&ix->sc);
	idx_ivf_free(&ix->ivf);
	free(ix->sh);
	free(ix);
}

/* ---- parent search ----------------------------------------------------------------------- */

static float lift_h(float m, float n2)
{
	return sqrtf(m > n2 ? m - n2 : 0.0f);
}

/* Inner product of lifted vectors: the larger, the nearer (all lifted keys share one norm). */
static float lifted(const struct idx *ix, const float *x, float hx, uint32_t node)
{
	const struct idx_node *nd = &ix->nodes[node];

	return idx_simd()->dot(x, ix->nkey + (size_t)node * ix->dim, ix->dim) +
	       hx * lift_h(ix->m, nd->n2);
}

/* Keeps the best `b` (node, score) pairs in best-first order in keep[]/ks[]. */
static void keep_best(uint32_t *keep, float *ks, uint32_t *nkeep, uint32_t b, uint32_t node,
		      float s)
{
	uint32_t i = *nkeep;

	if (i == b) {
		if (s <= ks[b - 1])
			return;
		i--;
	} else {
		(*nkeep)++;
	}
	while (i > 0 && ks[i - 1] < s) {
		keep[i] = keep[i - 1];
		ks[i] = ks[i - 1];
		i--;
	}
	keep[i] = node;
	ks[i] = s;
}

/*
 * Candidate parents laid out like pages (16-lane blocks) so the exact nearest search is the
 * page-scoring kernel: 16 keys x up to 16 candidates per call, no horizontal sums.
 */
struct cand_blocks {
	const float *blk;     /* nb blocks of dim x 16 */
	const float *h;       /* lifted height per candidate (0 in padding lanes) */
	const uint32_t *node; /* node id per candidate */
	size_t n, nb;
	/* build only, where the CPU has AVX-512 BF16: the blocks in bf16 (dim/2 x 16 uint32
	 * each) and each candidate's norm, for a bounded first pass (bf16_best) */
	uint32_t *bblk;
	float *ca, *cb; /* per lane: |rs| + IDX_BF16_ACC |bs|, |bs| + |rs| (idx_simd_dot.h) */
};

/* For keys xs[g][dim] (g <= 16) with heights hx[g], the best candidate of each. */
static void blocked_best(const struct idx *ix, const struct cand_blocks *cb, const float *xs,
			 const float *hx, uint32_t g, uint32_t *ret_node, float *ret_score)
{
	float best[IDX_LANES];
	uint32_t arg[IDX_LANES], i;
	size_t b;

	for (i = 0; i < g; i++) {
		best[i] = -INFINITY;
		arg[i] = 0;
	}
	for (b = 0; b < cb->nb; b++) {
		uint32_t lanes = cb->n - b * IDX_LANES < IDX_LANES ?
					 (uint32_t)(cb->n - b * IDX_LANES) :
					 IDX_LANES;

		idx_lift_best(cb->blk + b * ix->blk, cb->h + b * IDX_LANES, xs, hx, g, ix->dim,
			      lanes, (uint32_t)(b * IDX_LANES), best, arg);
	}
	for (i = 0; i < g; i++)
		ret_node[i] = cb->node[arg[i]];
	if (ret_score)
		memcpy(ret_score, best, g * sizeof(float));
}

/*
 * blocked_best's answer, bit for bit, at about half its cost: a bf16 pass scores every
 * candidate to within IDX_BF16_ERR * |x| * |s| (plus rounding slack), and the exact pass runs
 * only on the blocks whose upper bound reaches some candidate's lower bound, for the same
 * groups of keys the exact pass would score together (so the same kernel and rounding). A
 * block left out holds no lane that could tie or beat the best, so the first best is the
 * same one. xb: the keys packed by idx_bf16_pack, xbn/xrn its norms.
 */
#define BF16_MAX_BLOCKS 512u
static void bf16_best(const struct idx *ix, const struct cand_blocks *cb, const float *xs,
		      const float *hx, const uint32_t *xb, const float *xbn, const float *xrn,
		      uint32_t g, uint32_t *ret_node)
{
	float out[IDX_LANES * IDX_LANES], ub[IDX_LANES * BF16_MAX_BLOCKS], maxlb[IDX_LANES];
	float best[IDX_LANES], slack = 1e-5f * ix->m;
	uint32_t arg[IDX_LANES], i, q;
	size_t b;

	for (i = 0; i < g; i++) {
		maxlb[i] = -INFINITY;
		best[i] = -INFINITY;
		arg[i] = 0;
	}
	for (b = 0; b < cb->nb; b++) {
		uint32_t lanes = cb->n - b * IDX_LANES < IDX_LANES ?
					 (uint32_t)(cb->n - b * IDX_LANES) :
					 IDX_LANES;

		idx_bf16_score(cb->bblk + b * (ix->blk / 2), xb, g, ix->dim, out);
		idx_bf16_bounds(out, cb->h + b * IDX_LANES, cb->ca + b * IDX_LANES,
				cb->cb + b * IDX_LANES, hx, xbn, xrn, slack, g, lanes,
				ub + b * IDX_LANES, maxlb);
	}
	/* ub[b * 16 + i]: key i's best upper bound in block b */
	for (q = 0; q < g; q = q + (q + 4 <= g ? 4 : 1)) {
		uint32_t gs = q + 4 <= g ? 4 : 1, k;

		for (b = 0; b < cb->nb; b++) {
			uint32_t lanes = cb->n - b * IDX_LANES < IDX_LANES ?
						 (uint32_t)(cb->n - b * IDX_LANES) :
						 IDX_LANES;
			int need = 0;

			for (k = q; k < q + gs; k++)
				need |= ub[b * IDX_LANES + k] >= maxlb[k];
			if (need)
				idx_lift_best(cb->blk + b * ix->blk, cb->h + b * IDX_LANES,
					      xs + (size_t)q * ix->dim, hx + q, gs, ix->dim, lanes,
					      (uint32_t)(b * IDX_LANES), best + q, arg + q);
		}
	}
	for (i = 0; i < g; i++)
		ret_node[i] = cb->node[arg[i]];
}

static void cand_done(struct cand_blocks *cb)
{
	free((void *)cb->blk);
	free((void *)cb->h);
	free((void *)cb->node);
	free(cb->bblk);
	free(cb->ca);
	free(cb->cb);
	memset(cb, 0, sizeof(*cb));
}

/* Blocks of the level-`up` nodes' keys and heights under the current M. */
static int cand_init(const struct idx *ix, uint32_t up, struct cand_blocks *ret)
{
	const struct idx_vec *lv = &ix->lvl[up];
	struct cand_blocks cb = { 0 };
	float *blk, *h;
	uint32_t *node;
	size_t i, j;

	cb.n = lv->n;
	cb.nb = (lv->n + IDX_LANES - 1) / IDX_LANES;
	blk = aligned_alloc(64, cb.nb * ix->blk * sizeof(float) + 64);
	h = calloc(cb.nb * IDX_LANES, sizeof(float));
	node = malloc(cb.nb * IDX_LANES * sizeof(uint32_t));
	if (!blk || !h || !node) {
		free(blk);
		free(h);
		free(node);
		return -ENOMEM;
	}
	memset(blk, 0, cb.nb * ix->blk * sizeof(float));
	for (i = 0; i < lv->n; i++) {
		const float *k = ix->nkey + (size_t)lv->v[i] * ix->dim;
		float *b = blk + (i / IDX_LANES) * ix->blk + i % IDX_LANES;

		for (j = 0; j < ix->dim; j++)
			b[j * IDX_LANES] = k[j];
		h[i] = lift_h(ix->m, ix->nodes[lv->v[i]].n2);
		node[i] = lv->v[i];
	}
	cb.blk = blk;
	cb.h = h;
	cb.node = node;
	if (idx_bf16_ok() && cb.nb <= BF16_MAX_BLOCKS && ix->dim % 2 == 0) {
		uint32_t tmp[IDX_MAX_DIM / 2];

		cb.bblk = malloc(cb.nb * (ix->blk / 2) * sizeof(uint32_t));
		cb.ca = calloc(cb.nb * IDX_LANES, sizeof(float));
		cb.cb = calloc(cb.nb * IDX_LANES, sizeof(float));
		if (cb.bblk && cb.ca && cb.cb) {
			for (i = 0; i < cb.nb; i++)
				idx_bf16_pack_block(blk + i * ix->blk, ix->dim,
						    cb.bblk + i * (ix->blk / 2));
			for (i = 0; i < lv->n; i++) {
				float bn, rn;

				idx_bf16_pack(ix->nkey + (size_t)lv->v[i] * ix->dim, ix->dim, tmp,
					      &bn, &rn);
				cb.ca[i] = rn + IDX_BF16_ACC * bn;
				cb.cb[i] = bn + rn;
			}
		} else { /* the exact pass alone */
			free(cb.bblk);
			free(cb.ca);
			free(cb.cb);
			cb.bblk = NULL;
			cb.ca = cb.cb = NULL;
		}
	}
	*ret = cb;
	return 0;
}

/*
 * Nearest node on level L+1 for a key x (lifted distance). Exact while that level is small,
 * else a beam descent from the top level through the cells (children of the kept nodes).
 * The root when level L+1 is empty.
 */
static int find_parent(const struct idx *ix, struct idx_scratch *sc, const float *x, float n2x,
		       uint32_t L, uint32_t *ret)
{
	uint32_t up = L + 1, top, lev, i, nk, nc, b = ix->p.descent_beam;
	float hx = lift_h(ix->m, n2x), best = -INFINITY;
	uint32_t bestn = IDX_ROOT;
	uint32_t keep[64];
	float ks[64];

	if (b > 64)
		b = 64;
	if (up >= IDX_MAX_LEVELS || ix->lvl[up].n == 0) {
		*ret = IDX_ROOT;
		return 0;
	}
	top = up;
	while (top + 1 < IDX_MAX_LEVELS && ix->lvl[top + 1].n)
		top++;
	if (up == 1 && ix->lvl[1].n <= ix->p.exact_parent_max) {
		/* seeds are kept in blocks already: one kernel pass over them */
		struct cand_blocks cb = { ix->seedk, NULL, ix->lvl[1].v, ix->lvl[1].n, 0 };
		size_t i2;

		cb.nb = (cb.n + IDX_LANES - 1) / IDX_LANES;
		if (scratch_reserve(sc, cb.nb * IDX_LANES) < 0)
			return -ENOMEM;
		for (i2 = 0; i2 < cb.nb * IDX_LANES; i2++)
			sc->cs[i2] = i2 < cb.n ? lift_h(ix->m, ix->nodes[cb.node[i2]].n2) : 0.0f;
		cb.h = sc->cs;
		blocked_best(ix, &cb, x, &hx, 1, ret, NULL);
		return 0;
	}
	if (ix->lvl[up].n <= ix->p.exact_parent_max || top == up)
		goto exact;
	nk = 0;
	for (i = 0; i < ix->lvl[top].n; i++) {
		uint32_t nd = ix->lvl[top].v[i];

		keep_best(keep, ks, &nk, b, nd, lifted(ix, x, hx, nd));
	}
	for (lev = top; lev > up; lev--) {
		/* children of the kept nodes are level lev-1 nodes */
		nc = 0;
		for (i = 0; i < nk; i++) {
			uint32_t pg;

			for (pg = ix->nodes[keep[i]].head; pg != IDX_NONE;
			     pg = ix->pages[pg].next) {
				const struct idx_page *p = &ix->pages[pg];
				uint32_t s;

				if (scratch_reserve(sc, nc + IDX_PAGE_CAP) < 0)
					return -ENOMEM;
				for (s = 0; s < p->fill; s++) {
					uint32_t cn = ix->tok_node[p->pos[s]];

					if (cn != IDX_NONE && ix->nodes[cn].level == lev - 1)
						sc->cand[nc++] = cn;
				}
			}
		}
		if (nc == 0)
			goto exact; /* orphaned branch: fall back to the exact scan */
		nk = 0;
		for (i = 0; i < nc; i++)
			keep_best(keep, ks, &nk, lev - 1 == up ? 1 : b, sc->cand[i],
				  lifted(ix, x, hx, sc->cand[i]));
	}
	*ret = keep[0];
	return 0;
exact:
	for (i = 0; i < ix->lvl[up].n; i++) {
		uint32_t nd = ix->lvl[up].v[i];
		float s = lifted(ix, x, hx, nd);

		if (s > best) {
			best = s;
			bestn = nd;
		}
	}
	*ret = bestn;
	return 0;
}

/* ---- pages ------------------------------------------------------------------------------- */

static int mark_dirty(struct idx *ix, uint32_t page)
{
	if (ix->pages[page].dirty)
		return 0;
	if (vec_push(&ix->dirty, page) < 0)
		return -ENOMEM;
	ix->pages[page].dirty = 1;
	return 0;
}

static int cell_is_upper(const struct idx *ix, uint32_t cell)
{
	return cell == IDX_ROOT || ix->nodes[cell].level >= 2;
}

/* Takes the newest page out (empty by now): it is its cell's tail, pages being opened at the
 * tail in id order. */
static void pop_page(struct idx *ix)
{
	uint32_t page = (uint32_t)--ix->npages;
	struct idx_node *nd = &ix->nodes[ix->pages[page].cell];

	if (nd->head == page) {
		nd->head = nd->tail = IDX_NONE;
	} else {
		uint32_t prev = nd->head;

		while (ix->pages[prev].next != page)
			prev = ix->pages[prev].next;
		ix->pages[prev].next = IDX_NONE;
		nd->tail = prev;
	}
	if (ix->pages[page].upper)
		ix->upages.n--;
}

/* Opens an empty page at the end of a cell (capacity already reserved). */
static uint32_t page_open(struct idx *ix, uint32_t cell)
{
	uint32_t id = (uint32_t)ix->npages++;
	struct idx_page *p = &ix->pages[id];
	struct idx_node *nd = &ix->nodes[cell];

	memset(p, 0, sizeof(*p));
	p->cell = cell;
	p->next = IDX_NONE;
	p->upper = (uint8_t)cell_is_upper(ix, cell);
	idx_sk_clear(ix, id);
	if (nd->tail == IDX_NONE)
		nd->head = id;
	else
		ix->pages[nd->tail].next = id;
	nd->tail = id;
	return id;
}

/* Appends token pos to the last page of a cell, opening a page when it is full. */
static int cell_append(struct idx *ix, uint32_t cell, uint32_t pos, const float *x)
{
	struct idx_node *nd = &ix->nodes[cell];
	uint32_t page = nd->tail;
	struct idx_page *p;

	if (page == IDX_NONE || ix->pages[page].fill == IDX_PAGE_CAP) {
		if (reserve_pages(ix, ix->npages + 1) < 0)
			return -ENOMEM;
		page = page_open(ix, cell);
		nd = &ix->nodes[cell];
		if (ix->pages[page].upper && vec_push(&ix->upages, page) < 0) {
			/* roll the empty page back so the index stays consistent */
			ix->pages[page].upper = 0;
			pop_page(ix);
			return -ENOMEM;
		}
	}
	if (mark_dirty(ix, page) < 0)
		return -ENOMEM;
	p = &ix->pages[page];
	if (ix->sk_ready)
		idx_sk_put(ix, page, p->fill, x);
	if (ix->pend) /* kept until the sketch is calibrated for good (room reserved) */
		memcpy(ix->pend + (size_t)pos * ix->dim, x, ix->dim * sizeof(float));
	p->pos[p->fill++] = pos;
	p->version++;
	nd->ntok++;
	ix->tok_page[pos] = page;
	return 0;
}

/* ---- node creation ----------------------------------------------------------------------- */

static int node_add(struct idx *ix, uint32_t pos, uint32_t level, const float *x, float n2,
		    uint32_t *ret)
{
	uint32_t id = (uint32_t)ix->nnodes;
	struct idx_node *nd;

	if (reserve_nodes(ix, ix->nnodes + 1) < 0)
		return -ENOMEM;
	if (level == 1 && reserve_seeds(ix, ix->lvl[1].n + 1) < 0)
		return -ENOMEM;
	if (vec_push(&ix->lvl[level], id) < 0)
		return -ENOMEM;
	nd = &ix->nodes[id];
	*nd = (struct idx_node){ .pos = pos,
				 .level = level,
				 .parent = IDX_NONE,
				 .head = IDX_NONE,
				 .tail = IDX_NONE,
				 .n2 = n2 };
	memcpy(ix->nkey + (size_t)id * ix->dim, x, ix->dim * sizeof(float));
	if (level == 1) {
		size_t si = ix->lvl[1].n - 1;
		float *blk = ix->seedk + (si / IDX_LANES) * ix->blk;
		uint32_t j;

		for (j = 0; j < ix->dim; j++)
			blk[(size_t)j * IDX_LANES + si % IDX_LANES] = x[j];
	}
	ix->nnodes++;
	ix->tok_node[pos] = id;
	*ret = id;
	return 0;
}

/* ---- input checks ------------------------------------------------------------------------ */

/* Nonzero if some value of x[0..n) is NaN or infinite (all exponent bits set). Branch-free so
 * it vectorises: the check reads every key once, as the copy it replaces did. */
static int any_nonfinite(const float *x, size_t n)
{
	uint32_t bad = 0, u;
	size_t i;

	for (i = 0; i < n; i++) {
		memcpy(&u, x + i, sizeof(u));
		bad |= (u & 0x7f800000u) == 0x7f800000u;
	}
	return bad != 0;
}

/* The keys as fp32: fp32 input is used where it is (checked, not copied: at N = 262144,
 * d = 128 the copy and its page faults were ~0.2 us per key of the build), other types are
 * converted into a buffer. *ret_own: whether *ret is that buffer (free it). */
static int load_keys(const struct idx *ix, const void *keys, size_t n, enum ice_dtype dt,
		     const float **ret, int *ret_own)
{
	size_t cnt;
	float *k;
	int rc;

	if (!keys || n == 0 || !dtype_size(dt))
		return -EINVAL;
	if (n > (size_t)UINT32_MAX - 1 - ix->ntok)
		return -EINVAL;
	cnt = n * ix->dim;
	if (dt == ICE_DTYPE_F32) {
		if (any_nonfinite(keys, cnt))
			return -EINVAL;
		*ret = keys;
		*ret_own = 0;
		return 0;
	}
	k = aligned_alloc(64, (cnt * sizeof(float) + 63) & ~(size_t)63);
	if (!k)
		return -ENOMEM;
	rc = dtype_to_f32_finite(keys, dt, cnt, k);
	if (rc < 0) {
		free(k);
		return rc;
	}
	*ret = k;
	*ret_own = 1;
	return 0;
}

static float sq_norm(const float *x, uint32_t dim)
{
	return idx_simd()->dot(x, x, dim);
}

/* ---- insert ------------------------------------------------------------------------------ */

/* A level-0 parent found for a whole insert batch against the seeds it started with. */
struct pre_parent {
	uint32_t node;
	float score;
	size_t nseeds; /* seeds searched (those at batch start); 0 = none */
};

static int insert_one(struct idx *ix, const float *x, float n2, uint32_t pos,
		      const struct pre_parent *pre)
{
	uint32_t level = promo_level(ix, pos), par = IDX_ROOT, node;
	int rc;

	ix->tok_node[pos] = IDX_NONE;
	if (level == 0) {
		if (pre && pre->nseeds) {
			/* the batch's blocked pass, plus the seeds made since in this batch */
			float hx = lift_h(ix->m, n2), best = pre->score;
			size_t si;

			par = pre->node;
			for (si = pre->nseeds; si < ix->lvl[1].n; si++) {
				float v = lifted(ix, x, hx, ix->lvl[1].v[si]);

				if (v > best) {
					best = v;
					par = ix->lvl[1].v[si];
				}
			}
		} else {
			rc = find_parent(ix, &ix->sc, x, n2, 0, &par);
			if (rc < 0)
				return rc;
		}
		/* A full cell takes no more tokens: the newcomer seeds a cell of its own. */
		if (par != IDX_ROOT && ix->nodes[par].ntok >= ix->p.cell_cap)
			level = 1;
	}
	if (level >= 1) {
		rc = find_parent(ix, &ix->sc, x, n2, level, &par);
		if (rc < 0)
			return rc;
		rc = node_add(ix, pos, level, x, n2, &node);
		if (rc < 0)
			return rc;
		ix->nodes[node].parent = par;
	}
	rc = cell_append(ix, par, pos, x);
	if (rc < 0) {
		if (level >= 1) { /* undo the node so the token is simply not inserted */
			ix->nnodes--;
			ix->lvl[level].n--;
			ix->tok_node[pos] = IDX_NONE;
		}
		return rc;
	}
	return 0;
}

/*
 * Level-0 parents of a batch in one blocked pass over the seed blocks (16 keys per load of a
 * block): one read of the seeds per batch instead of per key, which is what a decode insert
 * of a window's worth of tokens costs.
 */
static int batch_parents(struct idx *ix, const float *k, const float *n2, size_t n,
			 struct pre_parent *pre)
{
	struct cand_blocks cb = { ix->seedk, NULL, ix->lvl[1].v, ix->lvl[1].n, 0 };
	float xs[IDX_LANES * IDX_MAX_DIM], hx[IDX_LANES], sc[IDX_LANES];
	uint32_t idx16[IDX_LANES], nd[IDX_LANES], g = 0, j;
	size_t i, si;

	int lists;

	memset(pre, 0, n * sizeof(*pre));
	if (cb.n == 0)
		return 0;
	lists = idx_ivf_sync(ix);
	if (lists < 0)
		return lists;
	if (lists)
		goto pass;
	cb.nb = (cb.n + IDX_LANES - 1) / IDX_LANES;
	if (scratch_reserve(&ix->sc, cb.nb * IDX_LANES) < 0)
		return -ENOMEM;
	/* seed heights kept from batch to batch while M stands: recomputing all of them was
	 * ~0.5 us per key of a 16-key batch at 3,500 seeds */
	if (buf_grow(&ix->sh, &ix->sh_cap, cb.nb * IDX_LANES, sizeof(float)))
		return -ENOMEM;
	if (ix->sh_m != ix->m)
		ix->sh_n = 0;
	for (si = ix->sh_n; si < cb.nb * IDX_LANES; si++)
		ix->sh[si] = si < cb.n ? lift_h(ix->m, ix->nodes[cb.node[si]].n2) : 0.0f;
	ix->sh_n = cb.n; /* the padding lanes after it are rewritten when seeds arrive */
	ix->sh_m = ix->m;
	cb.h = ix->sh;
pass:
	for (i = 0; i <= n; i++) {
		if (i < n && promo_level(ix, (uint32_t)(ix->ntok + i)) == 0) {
			memcpy(xs + (size_t)g * ix->dim, k + i * ix->dim, ix->dim * sizeof(float));
			hx[g] = lift_h(ix->m, n2[i]);
			idx16[g++] = (uint32_t)i;
		}
		if (g == IDX_LANES || (i == n && g)) {
			if (lists)
				idx_ivf_best(ix, xs, hx, g, nd, sc);
			else
				blocked_best(ix, &cb, xs, hx, g, nd, sc);
			for (j = 0; j < g; j++)
				pre[idx16[j]] = (struct pre_parent){ nd[j], sc[j], cb.n };
			g = 0;
		}
	}
	return 0;
}

/* ---- undo -------------------------------------------------------------------------------- */

void idx_mark(const struct idx *ix, struct idx_mark *ret)
{
	*ret = (struct idx_mark){ ix->ntok,    ix->npages, ix->nnodes,  ix->upages.n,
				  ix->dirty.n, ix->m,      ix->sk_ready };
}

/* Back to no tokens: what a fresh index holds (page and node memory is rewritten on reuse). */
static void reset_empty(struct idx *ix)
{
	uint32_t l;

	for (l = 0; l < IDX_MAX_LEVELS; l++)
		ix->lvl[l].n = 0;
	ix->nnodes = 1;
	ix->nodes[0].head = ix->nodes[0].tail = IDX_NONE;
	ix->nodes[0].ntok = 0;
	ix->npages = 0;
	ix->upages.n = 0;
	ix->dirty.n = 0;
	ix->ntok = 0;
	ix->m = 0;
	ix->sk_ready = 0;
	if (ix->seedk)
		memset(ix->seedk, 0, ix->cap_seed_blocks * ix->blk * sizeof(float));
	idx_ivf_drop(ix);
	ix->ivf.base = 0;
	ix->sh_n = 0;
}

/* Takes the newest token out: off its page (the last slot: a page's tokens are appended), its
 * cell's count and, when it was a node, the node table (nodes are made in token order). */
static void pop_token(struct idx *ix)
{
	uint32_t pos = (uint32_t)--ix->ntok, page = ix->tok_page[pos], node = ix->tok_node[pos], j;
	struct idx_page *p = &ix->pages[page];
	uint32_t slot = --p->fill;

	p->version--;
	idx_sk_clear_slot(ix, page, slot);
	ix->nodes[p->cell].ntok--;
	if (node != IDX_NONE) {
		uint32_t level = ix->nodes[node].level;

		ix->nnodes--;
		ix->lvl[level].n--;
		if (level == 1) {
			size_t si = ix->lvl[1].n;
			float *sb = ix->seedk + (si / IDX_LANES) * ix->blk;

			for (j = 0; j < ix->dim; j++)
				sb[(size_t)j * IDX_LANES + si % IDX_LANES] = 0.0f;
		}
		ix->tok_node[pos] = IDX_NONE;
	}
}

void idx_rollback(struct idx *ix, const struct idx_mark *mark)
{
	size_t i;

	if (!ix || !mark || mark->ntok > ix->ntok)
		return;
	if (!mark->ntok) {
		/* An idx_build lays pages out by cell, not by arrival: start again from empty. */
		reset_empty(ix);
		return;
	}
	while (ix->ntok > mark->ntok)
		pop_token(ix);
	while (ix->npages > mark->npages)
		pop_page(ix);
	if (ix->ivf.nseeds > ix->lvl[1].n)
		idx_ivf_drop(ix);
	if (ix->sh_n > ix->lvl[1].n) /* seed indexes past it may be reused by other seeds */
		ix->sh_n = ix->lvl[1].n;
	for (i = mark->dirty; i < ix->dirty.n; i++)
		if (ix->dirty.v[i] < ix->npages)
			ix->pages[ix->dirty.v[i]].dirty = 0;
	if (ix->dirty.n > mark->dirty)
		ix->dirty.n = mark->dirty;
	ix->m = mark->m;
	/* Sketch codes made by a calibration since are unused until the next one rewrites all. */
	ix->sk_ready = mark->sk_ready;
}

#define INSERT_STACK 64u

int idx_insert(struct idx *ix, const void *keys, size_t n, enum ice_dtype dt)
{
	struct idx_mark mark;
	/* a decode window fits on the stack: no allocation per batch */
	struct pre_parent pre_s[INSERT_STACK], *pre = pre_s;
	float n2_s[INSERT_STACK], *n2 = n2_s;
	const float *k;
	size_t i;
	int rc, own;

	if (!ix)
		return -EINVAL;
	rc = load_keys(ix, keys, n, dt, &k, &own);
	if (rc < 0)
		return rc;
	rc = -ENOMEM;
	if (n > INSERT_STACK) {
		n2 = malloc(n * sizeof(float));
		pre = malloc(n * sizeof(*pre));
		if (!n2 || !pre)
			goto out;
	}
	idx_mark(ix, &mark);
	/* M covers the whole batch before any of it is placed */
	for (i = 0; i < n; i++) {
		n2[i] = sq_norm(k + i * ix->dim, ix->dim);
		if (n2[i] > ix->m)
			ix->m = n2[i];
	}
	rc = reserve_tokens(ix, ix->ntok + n);
	if (rc == 0 && (!ix->sk_ready || ix->pend))
		rc = reserve_pend(ix, ix->ntok + n);
	if (rc == 0)
		rc = batch_parents(ix, k, n2, n, pre);
	for (i = 0; rc == 0 && i < n; i++) {
		rc = insert_one(ix, k + i * ix->dim, n2[i], (uint32_t)ix->ntok, &pre[i]);
		if (rc == 0)
			ix->ntok++;
	}
	/* an index grown by inserts alone gets its sketch once it is worth having */
	if (rc == 0 && !ix->sk_ready && ix->ntok >= IDX_SK_CALIB)
		rc = idx_sk_rebuild(ix);
	if (rc < 0)
		idx_rollback(ix, &mark);
out:
	if (own)
		free((void *)k);
	if (n2 != n2_s)
		free(n2);
	if (pre != pre_s)
		free(pre);
	return rc;
}

/* ---- bulk build -------------------------------------------------------------------------- */

struct par_job {
	void (*fn)(void *arg, size_t lo, size_t hi);
	void *arg;
	size_t n, chunk;
	_Atomic size_t next;
};

static void *par_worker(void *a)
{
	struct par_job *j = a;

	for (;;) {
		size_t lo = atomic_fetch_add(&j->next, j->chunk);

		if (lo >= j->n)
			break;
		j->fn(j->arg, lo, lo + j->chunk < j->n ? lo + j->chunk : j->n);
	}
	return NULL;
}

/* Runs fn over [0, n) in chunks on up to `threads` threads (the caller is one of them). */
static void par_run(uint32_t threads, void (*fn)(void *, size_t, size_t), void *arg, size_t n,
		    size_t chunk)
{
	struct par_job job = { .fn = fn, .arg = arg, .n = n, .chunk = chunk ? chunk : 1 };
	pthread_t tid[64];
	uint32_t started = 0, i;

	atomic_init(&job.next, 0);
	if (threads > 64)
		threads = 64;
	for (i = 1; i < threads && (size_t)i * job.chunk < n; i++)
		if (pthread_create(&tid[started], NULL, par_worker, &job) == 0)
			started++;
	par_worker(&job);
	for (i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
}

struct build_ctx {
	struct idx *ix;
	const float *k; /* n x dim, positions base + i */
	const float *n2;
	uint32_t base;
	const uint32_t *toks; /* token indexes (into k) at the level being placed */
	uint32_t level;
	uint32_t *par; /* parent node per entry of toks */
	float *proj;   /* projection per entry of toks */
	/* cell formation */
	const uint32_t *cells; /* parent node ids with children, in page order */
	const uint32_t *coff;  /* children of cells[c]: order[coff[c] .. coff[c+1]) */
	const uint32_t *pbase; /* first page id of cells[c] */
	uint32_t *order;       /* entry indexes into toks, grouped by cell */
	struct cand_blocks cb; /* exact parents: the level above in blocks (n = 0: descent) */
	int lists;             /* level-0 parents through the seed lists (idx_ivf.c) */
	_Atomic int err;
};

static void build_parents(void *arg, size_t lo, size_t hi)
{
	struct build_ctx *c = arg;
	struct idx_scratch sc = { 0 };
	size_t i;

	if (c->cb.n || c->lists) {
		/* exact: 16 keys at a time against every candidate block (or the lists) */
		float xs[IDX_LANES * IDX_MAX_DIM], hx[IDX_LANES];
		uint32_t g, j;

		for (i = lo; i < hi; i += g) {
			g = hi - i < IDX_LANES ? (uint32_t)(hi - i) : IDX_LANES;
			for (j = 0; j < g; j++) {
				uint32_t t = c->toks[i + j];
				const float *x = c->k + (size_t)t * c->ix->dim;

				memcpy(xs + (size_t)j * c->ix->dim, x, c->ix->dim * sizeof(float));
				hx[j] = lift_h(c->ix->m, c->n2[t]);
				c->proj[i + j] = idx_simd()->dot(x, c->ix->proj, c->ix->dim);
			}
			if (c->lists) {
				idx_ivf_best(c->ix, xs, hx, g, c->par + i, NULL);
			} else if (c->cb.bblk) {
				uint32_t xb[IDX_LANES * IDX_MAX_DIM / 2];
				float xbn[IDX_LANES], xrn[IDX_LANES];

				for (j = 0; j < g; j++)
					idx_bf16_pack(xs + (size_t)j * c->ix->dim, c->ix->dim,
						      xb + (size_t)j * (c->ix->dim / 2), &xbn[j],
						      &xrn[j]);
				bf16_best(c->ix, &c->cb, xs, hx, xb, xbn, xrn, g, c->par + i);
			} else {
				blocked_best(c->ix, &c->cb, xs, hx, g, c->par + i, NULL);
			}
		}
		return;
	}
	for (i = lo; i < hi; i++) {
		const float *x = c->k + (size_t)c->toks[i] * c->ix->dim;

		if (find_parent(c->ix, &sc, x, c->n2[c->toks[i]], c->level, &c->par[i]) < 0) {
			atomic_store(&c->err, -ENOMEM);
			c->par[i] = IDX_ROOT;
		}
		c->proj[i] = idx_simd()->dot(x, c->ix->proj, c->ix->dim);
	}
	scratch_done(&sc);
}

static _Thread_local const float *sort_proj;

static int cmp_proj(const void *a, const void *b)
{
	float x = sort_proj[*(const uint32_t *)a], y = sort_proj[*(const uint32_t *)b];

	if (x != y)
		return x < y ? -1 : 1;
	return (*(const uint32_t *)a > *(const uint32_t *)b) -
	       (*(const uint32_t *)a < *(const uint32_t *)b);
}

/* Sorts each cell's children along the projection and writes them into its pages. */
static void build_cells(void *arg, size_t lo, size_t hi)
{
	struct build_ctx *c = arg;
	struct idx *ix = c->ix;
	size_t ci;

	sort_proj = c->proj;
	for (ci = lo; ci < hi; ci++) {
		uint32_t cell = c->cells[ci], cnt = c->coff[ci + 1] - c->coff[ci], i;
		uint32_t *ord = c->order + c->coff[ci], page = c->pbase[ci];
		struct idx_node *nd = &ix->nodes[cell];

		qsort(ord, cnt, sizeof(*ord), cmp_proj);
		nd->head = page;
		for (i = 0; i < cnt; i += IDX_PAGE_CAP, page++) {
			uint32_t fill = cnt - i < IDX_PAGE_CAP ? cnt - i : IDX_PAGE_CAP, s;
			struct idx_page *p = &ix->pages[page];

			memset(p, 0, sizeof(*p));
			idx_sk_clear(ix, page);
			p->cell = cell;
			p->next = i + IDX_PAGE_CAP < cnt ? page + 1 : IDX_NONE;
			p->fill = (uint16_t)fill;
			p->version = fill;
			p->dirty = 1;
			p->upper = (uint8_t)cell_is_upper(ix, cell);
			for (s = 0; s < fill; s++) {
				uint32_t t = c->toks[ord[i + s]];
				const float *x = c->k + (size_t)t * ix->dim;

				p->pos[s] = c->base + t;
				ix->tok_page[c->base + t] = page;
				idx_sk_put(ix, page, s, x);
			}
		}
		nd->tail = page - 1;
		nd->ntok = cnt;
	}
}

static _Thread_local const float *sort_proj;

/*
 * Bounds level-1 cells at build: a seed with more than cell_cap children keeps the first slab
 * of them along the projection; each further slab of about 1/r1 tokens gets a new seed, the
 * slab token nearest the slab's mean, promoted to level 1 (and appended to its level-2
 * parent's cell). Promoted entries get par = IDX_NONE.
 */
static int split_cells(struct idx *ix, struct build_ctx *c, const uint32_t *toks, size_t nt)
{
	uint32_t cap = ix->p.cell_cap, target = (uint32_t)(1.0f / ix->p.r1);
	size_t nn = ix->nnodes, i, v, big = 0;
	uint32_t *cnt = NULL, *off = NULL, *ent = NULL;
	float *mean = NULL;
	int rc = -ENOMEM;

	if (target < IDX_PAGE_CAP)
		target = IDX_PAGE_CAP;
	if (target > cap)
		target = cap;
	cnt = calloc(nn + 1, sizeof(uint32_t));
	off = calloc(nn + 1, sizeof(uint32_t));
	ent = malloc(nt * sizeof(uint32_t));
	mean = malloc(ix->dim * sizeof(float));
	if (!cnt || !off || !ent || !mean)
		goto out;
	for (i = 0; i < nt; i++)
		cnt[c->par[i]]++;
	for (v = 0; v < nn; v++) {
		off[v + 1] = off[v] + cnt[v];
		big += v != IDX_ROOT && cnt[v] > cap;
	}
	rc = 0;
	if (!big)
		goto out;
	memset(cnt, 0, (nn + 1) * sizeof(uint32_t));
	for (i = 0; i < nt; i++)
		ent[off[c->par[i]] + cnt[c->par[i]]++] = (uint32_t)i;
	sort_proj = c->proj;
	for (v = 1; v < nn; v++) {
		uint32_t m = cnt[v], slabs, sl, *e = ent + off[v];

		if (m <= cap)
			continue;
		qsort(e, m, sizeof(uint32_t), cmp_proj);
		slabs = (m + target - 1) / target;
		for (sl = 1; sl < slabs; sl++) {
			size_t a = (size_t)m * sl / slabs, b = (size_t)m * (sl + 1) / slabs, j,
			       best = a;
			float bs = -INFINITY;
			uint32_t t, id, par;
			const float *x;

			memset(mean, 0, ix->dim * sizeof(float));
			for (j = a; j < b; j++)
				for (i = 0; i < ix->dim; i++)
					mean[i] += c->k[(size_t)toks[e[j]] * ix->dim + i];
			for (j = a; j < b; j++) {
				float d = idx_simd()->dot(mean, c->k + (size_t)toks[e[j]] * ix->dim,
							  ix->dim);

				if (d > bs) {
					bs = d;
					best = j;
				}
			}
			t = toks[e[best]];
			x = c->k + (size_t)t * ix->dim;
			rc = find_parent(ix, &ix->sc, x, c->n2[t], 1, &par);
			if (rc == 0)
				rc = node_add(ix, c->base + t, 1, x, c->n2[t], &id);
			if (rc < 0)
				goto out;
			ix->nodes[id].parent = par;
			rc = cell_append(ix, par, c->base + t, x);
			if (rc < 0)
				goto out;
			for (j = a; j < b; j++)
				c->par[e[j]] = j == best ? IDX_NONE : id;
		}
	}
	rc = 0;
out:
	free(cnt);
	free(off);
	free(ent);
	free(mean);
	return rc;
}

/* Places the tokens toks[0..nt) of one level: parents, then their cells' pages. */
static int build_level(struct idx *ix, struct build_ctx *c, const uint32_t *toks, size_t nt,
		       uint32_t level)
{
	uint32_t *cnt = NULL, *cells = NULL, *coff = NULL, *pbase = NULL, *order = NULL;
	size_t i, ncells = 0, npg = 0, first;
	int rc = -ENOMEM;

	c->toks = toks;
	c->level = level;
	c->par = malloc(nt * sizeof(uint32_t));
	c->proj = malloc(nt * sizeof(float));
	order = malloc(nt * sizeof(uint32_t));
	if (!c->par || !c->proj || !order)
		goto out;
	atomic_store(&c->err, 0);
	memset(&c->cb, 0, sizeof(c->cb));
	c->lists = 0;
	if (level == 0 && ix->lvl[1].n > ix->p.exact_parent_max) {
		ix->ivf.base = ix->lvl[1].n; /* the build's seeds are the first lists */
		rc = idx_ivf_sync(ix);
		if (rc < 0)
			goto out;
		c->lists = rc;
		rc = -ENOMEM;
	}
	if (!c->lists && level + 1 < IDX_MAX_LEVELS && ix->lvl[level + 1].n &&
	    ix->lvl[level + 1].n <= ix->p.exact_parent_max && cand_init(ix, level + 1, &c->cb) < 0)
		goto out;
	par_run(nt >= 4096 ? ix->p.threads : 1, build_parents, c, nt, 512);
	cand_done(&c->cb);
	rc = atomic_load(&c->err);
	if (rc == 0 && level == 0 && ix->lvl[1].n)
		rc = split_cells(ix, c, toks, nt);
	if (rc < 0)
		goto out;
	rc = -ENOMEM;
	cnt = calloc(ix->nnodes, sizeof(uint32_t));
	if (!cnt)
		goto out;
	for (i = 0; i < nt; i++) {
		if (c->par[i] == IDX_NONE)
			continue;
		cnt[c->par[i]]++;
		if (level >= 1)
			ix->nodes[ix->tok_node[c->base + toks[i]]].parent = c->par[i];
	}
	rc = -ENOMEM;
	/* cells in page order: root first, then node id order (upper levels were created first) */
	for (i = 0; i < ix->nnodes; i++)
		if (cnt[i])
			ncells++;
	cells = malloc(ncells * sizeof(uint32_t));
	coff = malloc((ncells + 1) * sizeof(uint32_t));
	pbase = malloc(ncells * sizeof(uint32_t));
	if (!cells || !coff || !pbase)
		goto out;
	ncells = 0;
	coff[0] = 0;
	for (i = 0; i < ix->nnodes; i++) {
		if (!cnt[i])
			continue;
		cells[ncells] = (uint32_t)i;
		pbase[ncells] = (uint32_t)(ix->npages + npg);
		npg += (cnt[i] + IDX_PAGE_CAP - 1) / IDX_PAGE_CAP;
		coff[ncells + 1] = coff[ncells] + cnt[i];
		cnt[i] = coff[ncells]; /* becomes the fill cursor */
		ncells++;
	}
	for (i = 0; i < nt; i++)
		if (c->par[i] != IDX_NONE)
			order[cnt[c->par[i]]++] = (uint32_t)i;
	if (reserve_pages(ix, ix->npages + npg) < 0)
		goto out;
	if (buf_grow(&ix->dirty.v, &ix->dirty.cap, ix->dirty.n + npg, sizeof(*ix->dirty.v)))
		goto out;
	c->cells = cells;
	c->coff = coff;
	c->pbase = pbase;
	c->order = order;
	first = ix->npages;
	par_run(nt >= 4096 ? ix->p.threads : 1, build_cells, c, ncells, 16);
	ix->npages += npg;
	for (i = first; i < ix->npages; i++) {
		ix->dirty.v[ix->dirty.n++] = (uint32_t)i;
		if (ix->pages[i].upper && vec_push(&ix->upages, (uint32_t)i) < 0)
			goto out;
	}
	rc = 0;
out:
	free(c->par);
	free(c->proj);
	c->par = NULL;
	c->proj = NULL;
	free(cnt);
	free(cells);
	free(coff);
	free(pbase);
	free(order);
	return rc;
}

struct norm_ctx {
	const float *k;
	float *n2;
	uint32_t dim;
};

static void build_norms(void *arg, size_t lo, size_t hi)
{
	struct norm_ctx *c = arg;
	size_t i;

	for (i = lo; i < hi; i++)
		c->n2[i] = sq_norm(c->k + i * c->dim, c->dim);
}

static int build_segment(struct idx *ix, const void *keys, size_t n, enum ice_dtype dt);

int idx_build(struct idx *ix, const void *keys, size_t n, enum ice_dtype dt)
{
	struct build_ctx c = { 0 };
	struct norm_ctx nc;
	uint32_t *lev = NULL, *toks = NULL, l, top = 0;
	size_t i, cnt[IDX_MAX_LEVELS] = { 0 };
	const float *k = NULL;
	float *n2 = NULL;
	int rc, own = 0;

	if (!ix)
		return -EINVAL;
	if (ix->ntok) /* a segment of its own once there is a calibration to sketch it with */
		return ix->sk_ready ? build_segment(ix, keys, n, dt) : idx_insert(ix, keys, n, dt);
	rc = load_keys(ix, keys, n, dt, &k, &own);
	if (rc < 0)
		return rc;
	rc = -ENOMEM;
	n2 = malloc(n * sizeof(float));
	lev = malloc(n * sizeof(uint32_t));
	toks = malloc(n * sizeof(uint32_t));
	if (!n2 || !lev || !toks || reserve_tokens(ix, n) < 0)
		goto out;
	nc = (struct norm_ctx){ k, n2, ix->dim };
	par_run(n >= 8192 ? ix->p.threads : 1, build_norms, &nc, n, 4096);
	for (i = 0; i < n; i++) {
		if (n2[i] > ix->m)
			ix->m = n2[i];
		lev[i] = promo_level(ix, (uint32_t)i);
		cnt[lev[i]]++;
		if (lev[i] > top)
			top = lev[i];
		ix->tok_node[i] = IDX_NONE;
	}
	if (reserve_nodes(ix, ix->nnodes + n - cnt[0]) < 0 || reserve_seeds(ix, cnt[1]) < 0)
		goto out;
	/* nodes: higher levels first, so node-id order is page order for the upper cells */
	for (l = top; l >= 1; l--)
		for (i = 0; i < n; i++)
			if (lev[i] == l) {
				uint32_t id;

				if (node_add(ix, (uint32_t)i, l, k + i * ix->dim, n2[i], &id) < 0)
					goto out;
			}
	if (!ix->sk_ready) /* a segment's scratch index comes calibrated (build_segment) */
		idx_sk_calibrate(ix, k, n);
	c.ix = ix;
	c.k = k;
	c.n2 = n2;
	c.base = 0;
	for (l = top + 1; l-- > 0;) {
		size_t nt = 0;

		for (i = 0; i < n; i++)
			if (lev[i] == l)
				toks[nt++] = (uint32_t)i;
		rc = build_level(ix, &c, toks, nt, l);
		if (rc < 0)
			goto out;
	}
	ix->ntok = n;
	/* lists over the seeds the cells were split into, so inserts start without a rebuild */
	if (ix->lvl[1].n > ix->p.exact_parent_max) {
		ix->ivf.base = ix->lvl[1].n;
		idx_ivf_drop(ix);
		if (idx_ivf_sync(ix) < 0)
			idx_ivf_drop(ix); /* the next insert tries again */
	}
	rc = 0;
out:
	if (rc < 0 && !ix->ntok)
		reset_empty(ix); /* leave an empty, usable index behind */
	if (own)
		free((void *)k);
	free(n2);
	free(lev);
	free(toks);
	return rc;
}

/* ---- segment builds -------------------------------------------------------------------- */

/*
 * idx_build on an index that has tokens: the new keys are built as a tree of their own (the
 * bulk build's parents, cells and pages, in a scratch index) and spliced in. Their nodes and
 * pages are appended with their ids moved up, their top level joins the root's cell, and their
 * pages are sketched with this index's calibration. No page that exists is appended to, so a
 * bulk append rewrites nothing in the owner's page store (an insert appends to a cell's last
 * page: one store rewrite per token of a prompt). Tokens share pages with tokens of their own
 * segment only, the price of writing every page once; decode inserts (idx_insert) join the
 * nearest cell of any segment.
 */
static int build_segment(struct idx *ix, const void *keys, size_t n, enum ice_dtype dt)
{
	struct idx *t = NULL;
	uint32_t base = (uint32_t)ix->ntok, n0 = (uint32_t)ix->nnodes - 1,
		 p0 = (uint32_t)ix->npages, l, i, s;
	size_t seeds0 = ix->lvl[1].n;
	const float *k = NULL;
	int rc, own = 0;

#define NODE(x) ((x) == IDX_ROOT ? IDX_ROOT : (x) + n0)
#define PAGE(x) ((x) == IDX_NONE ? IDX_NONE : (x) + p0)
	rc = load_keys(ix, keys, n, dt, &k, &own);
	if (rc == 0)
		rc = idx_new(&ix->p, &t);
	if (rc == 0) {
		/* sketched with this index's calibration, so its pages' codes move over as they are */
		memcpy(t->sk_mu, ix->sk_mu, ix->dim * sizeof(float));
		memcpy(t->sk_step, ix->sk_step, ix->dim * sizeof(float));
		t->sk_ready = 1;
		rc = idx_build(t, k, n, ICE_DTYPE_F32);
	}
	/* room for everything first: past this point nothing fails */
	if (rc == 0)
		rc = reserve_tokens(ix, ix->ntok + n);
	if (rc == 0 && ix->pend)
		rc = reserve_pend(ix, ix->ntok + n);
	if (rc == 0)
		rc = reserve_pages(ix, ix->npages + t->npages);
	if (rc == 0)
		rc = reserve_nodes(ix, ix->nnodes + t->nnodes - 1);
	if (rc == 0)
		rc = reserve_seeds(ix, ix->lvl[1].n + t->lvl[1].n);
	for (l = 1; rc == 0 && l < IDX_MAX_LEVELS; l++)
		if (buf_grow(&ix->lvl[l].v, &ix->lvl[l].cap, ix->lvl[l].n + t->lvl[l].n,
			     sizeof(uint32_t)))
			rc = -ENOMEM;
	if (rc == 0 &&
	    (buf_grow(&ix->upages.v, &ix->upages.cap, ix->upages.n + t->upages.n,
		      sizeof(uint32_t)) ||
	     buf_grow(&ix->dirty.v, &ix->dirty.cap, ix->dirty.n + t->npages, sizeof(uint32_t))))
		rc = -ENOMEM;
	if (rc < 0)
		goto out;

	for (i = 1; i < t->nnodes; i++) {
		struct idx_node nd = t->nodes[i];

		nd.pos += base;
		nd.parent = NODE(nd.parent);
		nd.head = PAGE(nd.head);
		nd.tail = PAGE(nd.tail);
		ix->nodes[NODE(i)] = nd;
		memcpy(ix->nkey + (size_t)NODE(i) * ix->dim, t->nkey + (size_t)i * ix->dim,
		       ix->dim * sizeof(float));
	}
	for (l = 1; l < IDX_MAX_LEVELS; l++)
		for (i = 0; i < t->lvl[l].n; i++)
			ix->lvl[l].v[ix->lvl[l].n++] = NODE(t->lvl[l].v[i]);
	for (i = (uint32_t)seeds0; i < ix->lvl[1].n; i++) {
		const float *x = ix->nkey + (size_t)ix->lvl[1].v[i] * ix->dim;
		float *blk = ix->seedk + (i / IDX_LANES) * ix->blk;
		uint32_t j;

		for (j = 0; j < ix->dim; j++)
			blk[(size_t)j * IDX_LANES + i % IDX_LANES] = x[j];
	}
	for (i = 0; i < t->npages; i++) {
		struct idx_page pg = t->pages[i];
		uint32_t id = PAGE(i);

		pg.cell = NODE(pg.cell);
		pg.next = PAGE(pg.next);
		pg.dirty = 1;
		memcpy(ix->sk + (size_t)id * IDX_SK_BYTES(ix->dim),
		       t->sk + (size_t)i * IDX_SK_BYTES(ix->dim), IDX_SK_BYTES(ix->dim));
		memcpy(ix->sk_alpha + (size_t)id * IDX_LANES, t->sk_alpha + (size_t)i * IDX_LANES,
		       IDX_LANES * sizeof(float));
		for (s = 0; s < pg.fill; s++) {
			const float *x = k + (size_t)pg.pos[s] * ix->dim;
			uint32_t tn = t->tok_node[pg.pos[s]];

			pg.pos[s] += base;
			ix->tok_page[pg.pos[s]] = id;
			ix->tok_node[pg.pos[s]] = tn == IDX_NONE ? IDX_NONE : NODE(tn);
			if (ix->pend)
				memcpy(ix->pend + (size_t)pg.pos[s] * ix->dim, x,
				       ix->dim * sizeof(float));
		}
		ix->pages[id] = pg;
		ix->dirty.v[ix->dirty.n++] = id;
	}
	for (i = 0; i < t->upages.n; i++)
		ix->upages.v[ix->upages.n++] = PAGE(t->upages.v[i]);
	/* the segment's top level joins the root's cell, after the pages it had */
	if (t->nodes[IDX_ROOT].head != IDX_NONE) {
		struct idx_node *root = &ix->nodes[IDX_ROOT];

		if (root->tail == IDX_NONE)
			root->head = PAGE(t->nodes[IDX_ROOT].head);
		else
			ix->pages[root->tail].next = PAGE(t->nodes[IDX_ROOT].head);
		root->tail = PAGE(t->nodes[IDX_ROOT].tail);
		root->ntok += t->nodes[IDX_ROOT].ntok;
	}
	if (t->m > ix->m)
		ix->m = t->m;
	ix->nnodes += t->nnodes - 1;
	ix->npages += t->npages;
	ix->ntok += n;
#undef NODE
#undef PAGE
out:
	idx_free(t);
	if (own)
		free((void *)k);
	return rc;
}

/* ---- accessors --------------------------------------------------------------------------- */

size_t idx_ntokens(const struct idx *ix)
{
	return ix ? ix->ntok : 0;
}

size_t idx_npages(const struct idx *ix)
{
	return ix ? ix->npages : 0;
}

uint32_t idx_dim(const struct idx *ix)
{
	return ix ? ix->dim : 0;
}

int idx_page_tokens(const struct idx *ix, uint32_t page, uint32_t *ret_pos, uint32_t *ret_fill,
		    uint32_t *ret_version)
{
	const struct idx_page *p;

	if (!ix || page >= ix->npages)
		return -EINVAL;
	p = &ix->pages[page];
	if (ret_pos)
		memcpy(ret_pos, p->pos, p->fill * sizeof(uint32_t));
	if (ret_fill)
		*ret_fill = p->fill;
	if (ret_version)
		*ret_version = p->version;
	return 0;
}

int idx_token_page(const struct idx *ix, uint32_t pos, uint32_t *ret_page)
{
	if (!ix || !ret_page || pos >= ix->ntok)
		return -EINVAL;
	*ret_page = ix->tok_page[pos];
	return 0;
}

size_t idx_take_dirty(struct idx *ix, uint32_t *ids, size_t max)
{
	size_t n, i;

	if (!ix || !ids)
		return 0;
	if (ix->sk_ready && ix->pend) {
		/* no mark reaches back past the calibration any more: the sketch has the keys */
		free(ix->pend);
		ix->pend = NULL;
		ix->cap_pend = 0;
	}
	n = ix->dirty.n < max ? ix->dirty.n : max;
	for (i = 0; i < n; i++) {
		ids[i] = ix->dirty.v[i];
		ix->pages[ids[i]].dirty = 0;
	}
	memmove(ix->dirty.v, ix->dirty.v + n, (ix->dirty.n - n) * sizeof(uint32_t));
	ix->dirty.n -= n;
	return n;
}

size_t idx_ndirty(const struct idx *ix)
{
	return ix ? ix->dirty.n : 0;
}

uint32_t idx_default_beam(const struct idx *ix, uint32_t k)
{
	uint64_t b = ix->p.beam;

	if (!b) /* larger indexes crowd more near-ties into the sketch ranking: widen with size */
		b = (uint64_t)ceilf(ix->p.beam_mult * (float)k) + ix->p.beam_add +
		    (ix->p.beam_pages ? ix->npages / ix->p.beam_pages : 0);

	return b > IDX_MAX_BEAM ? IDX_MAX_BEAM : (uint32_t)b;
}

void idx_get_info(const struct idx *ix, struct idx_info *ret)
{
	size_t i;
	uint32_t l;

	memset(ret, 0, sizeof(*ret));
	if (!ix)
		return;
	ret->ntokens = ix->ntok;
	ret->npages = ix->npages;
	ret->nseeds = ix->lvl[1].n;
	ret->nnodes = ix->nnodes - 1;
	for (l = 0; l < IDX_MAX_LEVELS; l++)
		if (ix->lvl[l].n)
			ret->nlevels = l + 1;
	if (!ret->nlevels && ix->ntok)
		ret->nlevels = 1;
	for (i = 0; i < ix->lvl[1].n; i++) {
		uint32_t t = ix->nodes[ix->lvl[1].v[i]].ntok;

		if (t > ret->max_cell)
			ret->max_cell = t;
	}
	ret->mean_fill = ix->npages ? (double)ix->ntok / (double)ix->npages : 0;
	ret->lift_m = ix->m;
	ret->default_beam = idx_default_beam(ix, 16);
}

int idx_token_parent(const struct idx *ix, uint32_t pos, uint32_t *ret_level, uint32_t *ret_parent)
{
	uint32_t cell, node;

	if (!ix || pos >= ix->ntok)
		return -EINVAL;
	node = ix->tok_node[pos];
	cell = ix->pages[ix->tok_page[pos]].cell;
	if (ret_level)
		*ret_level = node == IDX_NONE ? 0 : ix->nodes[node].level;
	if (ret_parent)
		*ret_parent = ix->nodes[cell].pos;
	return 0;
}

int idx_token_key(const struct idx *ix, uint32_t pos, float *ret_key)
{
	uint32_t node;

	if (!ix || !ret_key || pos >= ix->ntok)
		return -EINVAL;
	node = ix->tok_node[pos];
	if (ix->pend)
		memcpy(ret_key, ix->pend + (size_t)pos * ix->dim, ix->dim * sizeof(float));
	else if (node != IDX_NONE)
		memcpy(ret_key, ix->nkey + (size_t)node * ix->dim, ix->dim * sizeof(float));
	else
		return -ENOENT;
	return 0;
}

void idx_set_keys(struct idx *ix, const struct idx_keys *src)
{
	if (ix)
		ix->keys = src ? *src : (struct idx_keys){ 0 };
}

/* pos[0..fill) of a page from row-major fp32 keys by position into a channel-major block */
static void rows_to_block(const float *rows, uint32_t dim, const uint32_t *pos, uint32_t fill,
			  float *blk)
{
	uint32_t t;

	for (t = 0; t < fill; t++)
		idx_block_put(blk, dim, t, rows + (size_t)pos[t] * dim);
}

int idx_read_blocks(const struct idx *ix, const uint32_t *pages, uint32_t n, float *blocks,
		    void *scratch)
{
	uint32_t i;

	if (!ix->pend)
		return ix->keys.read ? ix->keys.read(ix->keys.ctx, ix, pages, n, blocks, scratch) :
				       -ENOKEY;
	for (i = 0; i < n; i++) {
		const struct idx_page *p = &ix->pages[pages[i]];

		rows_to_block(ix->pend, ix->dim, p->pos, p->fill, blocks + (size_t)i * ix->blk);
	}
	return 0;
}

int idx_rows_read(void *ctx, const struct idx *ix, const uint32_t *pages, uint32_t n, float *blocks,
		  void *scratch)
{
	const struct idx_rows *r = ctx;
	size_t es = dtype_size(r->dt), row = (size_t)ix->dim * es;
	float x[IDX_MAX_DIM];
	uint32_t i, t;

	(void)scratch;
	for (i = 0; i < n; i++) {
		const struct idx_page *p = &ix->pages[pages[i]];
		float *blk = blocks + (size_t)i * ix->blk;

		for (t = 0; t < p->fill; t++) {
			if (p->pos[t] >= r->n)
				return -EIO;
			dtype_to_f32((const char *)r->rows + (size_t)p->pos[t] * row, r->dt,
				     ix->dim, x);
			idx_block_put(blk, ix->dim, t, x);
		}
	}
	return 0;
}

size_t idx_host_bytes(const struct idx *ix)
{
	size_t b, l, seed_blocks;

	if (!ix)
		return 0;
	/* what is in use: the arrays' spare capacity is never written, so never resident */
	seed_blocks = (ix->lvl[1].n + IDX_LANES - 1) / IDX_LANES;
	b = sizeof(*ix) + 3 * ix->dim * sizeof(float); /* proj, sk_mu, sk_step */
	b += ix->ntok * 2 * sizeof(uint32_t);
	b += ix->npages *
	     (sizeof(struct idx_page) + IDX_SK_BYTES(ix->dim) + IDX_LANES * sizeof(float));
	b += ix->pend ? ix->ntok * ix->dim * sizeof(float) : 0;
	b += ix->nnodes * (sizeof(struct idx_node) + ix->dim * sizeof(float));
	b += seed_blocks * ix->blk * sizeof(float);
	for (l = 0; l < IDX_MAX_LEVELS; l++)
		b += ix->lvl[l].n * sizeof(uint32_t);
	b += (ix->upages.n + ix->dirty.n) * sizeof(uint32_t);
	b += idx_ivf_bytes(ix);
	b += ix->sh ? seed_blocks * IDX_LANES * sizeof(float) : 0; /* the insert's seed heights */
	return b;
}
