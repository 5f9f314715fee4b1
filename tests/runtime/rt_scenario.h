/*
 * One workload, run the same way in embedded mode (unit) and against a daemon (integration):
 * open a sequence, append in random chunk sizes, select every layer and check the page table
 * against the brute-force reference, fetch and check every row against the data appended.
 * Returns a digest of everything select and fetch returned, so two runs can be compared.
 */
#ifndef ICE_TEST_RT_SCENARIO_H
#define ICE_TEST_RT_SCENARIO_H

#include "rt_util.h"

struct rt_scn {
	struct ice_model_shape shape;
	struct ice_budget budget;
	uint32_t ntok;
	uint64_t seed;
	int group_merge;    /* the engine's group_merge (default 1) */
	int page_mass;      /* the engine's page_mass (default 1) */
	uint32_t overfetch; /* the engine's overfetch (default 2) */
};

static inline void rt_scn_default(struct rt_scn *s, uint64_t seed, uint32_t ntok)
{
	s->shape = (struct ice_model_shape){ 3, 8, 2, 32, ICE_DTYPE_F32 };
	s->budget = (struct ice_budget){ 16, 32, 64, 1 };
	s->ntok = ntok;
	s->seed = seed;
	s->group_merge = 1;
	s->page_mass = 1;
	s->overfetch = 2;
}

static inline uint32_t rt_popcount(uint32_t x)
{
	uint32_t n = 0;

	for (; x; x &= x - 1)
		n++;
	return n;
}

static inline uint64_t rt_fnv(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;

	while (n--)
		h = (h ^ *b++) * 1099511628211ull;
	return h;
}

/* Checks a fetched page's rows against the generator; marks positions in seen. */
static inline void rt_check_rows(const struct rt_scn *s, uint64_t lseed, uint32_t head,
				 const float *pg, uint32_t fill, unsigned char *seen)
{
	uint32_t d = s->shape.head_dim, hkv = s->shape.kv_heads, t, i;
	float *k1 = malloc((size_t)hkv * d * 4), *v1 = malloc((size_t)hkv * d * 4);

	for (t = 0; t < fill; t++) {
		const float *kr = pg + (size_t)t * d, *vr = pg + (size_t)(PT + t) * d;
		uint32_t pos = (uint32_t)vr[0];

		ck_assert_uint_lt(pos, s->ntok);
		ck_assert_uint_eq((uint32_t)vr[1], head);
		rt_make_kv(lseed, hkv, d, pos, 1, k1, v1);
		for (i = 0; i < d; i++) {
			ck_assert(kr[i] == k1[(size_t)head * d + i]);
			ck_assert(vr[i] == v1[(size_t)head * d + i]);
		}
		if (seen) {
			ck_assert_msg(!seen[pos], "position %u twice", pos);
			seen[pos] = 1;
		}
	}
	for (t = fill; t < PT; t++)
		for (i = 0; i < d; i++)
			ck_assert(pg[(size_t)t * d + i] == 0 && pg[(size_t)(PT + t) * d + i] == 0);
	free(k1);
	free(v1);
}

static inline uint64_t rt_scenario(struct ice_ctx *c, const struct rt_scn *s)
{
	const struct ice_model_shape *sh = &s->shape;
	uint32_t d = sh->head_dim, hkv = sh->kv_heads, g = sh->q_heads / hkv;
	size_t pb = ice_page_bytes(sh);
	uint64_t rng = s->seed, digest = 1469598103934665603ull;
	float *k = malloc((size_t)hkv * s->ntok * d * 4),
	      *v = malloc((size_t)hkv * s->ntok * d * 4);
	float *q = malloc((size_t)sh->q_heads * d * 4), *buf = malloc(pb * 512);
	struct ice_page_ref *refs = malloc(4096 * sizeof(*refs));
	struct ice_page_ref *refs2 = malloc(4096 * sizeof(*refs));
	size_t rest_len = (size_t)sh->q_heads * (d + 1) * sizeof(float);
	float *rest = malloc(rest_len);
	unsigned char *seen = malloc(s->ntok);
	uint32_t seq, layer, pos, h, i, n;
	size_t need;
	int got, cap;

	ck_assert_int_eq(ice_seq_open(c, sh, &s->budget, &seq), 0);
	for (layer = 0; layer < sh->layers; layer++) {
		uint64_t lseed = s->seed * 7 + layer;

		for (pos = 0; pos < s->ntok; pos += n) {
			n = (uint32_t)(rt_rand(&rng) % 97) + 1;
			if (n > s->ntok - pos)
				n = s->ntok - pos;
			rt_make_kv(lseed, hkv, d, pos, n, k, v);
			ck_assert_int_eq(ice_append(c, seq, layer, n, k, v), 0);
		}
	}
	for (layer = 0; layer < sh->layers; layer++) {
		uint64_t lseed = s->seed * 7 + layer;
		int dense = layer < s->budget.dense_layers;

		for (i = 0; i < sh->q_heads * d; i++)
			q[i] = rt_frand(&rng);
		cap = ice_select_cap(c, seq, layer);
		ck_assert_int_gt(cap, 0);
		ck_assert_int_le(cap, 4096);
		/* One buffer, grown when told: a cap too small is -ENOSPC, out untouched, with the
		 * cap that suffices (select_cap's) in need; the retry with it is the last one. */
		memset(refs, 0xa5, sizeof(*refs));
		need = 0;
		got = ice_select(c, seq, layer, q, refs, 1, &need);
		if (cap > 1) {
			ck_assert_int_eq(got, -ENOSPC);
			ck_assert_uint_eq(need, (size_t)cap);
			ck_assert_uint_eq(refs[0].page, 0xa5a5a5a5u);
			need = 0;
			ck_assert_int_eq(ice_select_rest(c, seq, layer, q, refs2, (size_t)cap - 1,
							 rest, rest_len, &need),
					 -ENOSPC);
			ck_assert_uint_eq(need, (size_t)cap);
			got = ice_select(c, seq, layer, q, refs, need, &need);
		}
		ck_assert_int_eq(got, cap);
		ck_assert_uint_eq(need, (size_t)got);
		/* select_rest: the same table, and the rest term checked per head below. */
		ck_assert_int_eq(ice_select_rest(c, seq, layer, q, refs2, 4096, rest, rest_len - 4,
						 NULL),
				 -EINVAL);
		ck_assert_int_eq(
			ice_select_rest(c, seq, layer, q, refs2, 4096, rest, rest_len, NULL), got);
		for (i = 0; i < (uint32_t)got; i++) {
			ck_assert_uint_eq(refs2[i].page, refs[i].page);
			ck_assert_uint_eq(refs2[i].kv_head, refs[i].kv_head);
			ck_assert_uint_eq(refs2[i].kind, refs[i].kind);
			ck_assert_uint_eq(refs2[i].mask, refs[i].mask);
		}
		/* location is where the page sits in its tier: informational, differs by host. */
		for (i = 0; i < (uint32_t)got; i++) {
			struct ice_page_ref r = refs[i];

			r.location = 0;
			digest = rt_fnv(digest, &r, sizeof(r));
		}
		for (h = 0; h < hkv; h++) {
			struct rt_page all[1024];
			uint32_t np = 0, want[1024], nwant, nret = 0, j, kind = 0, nsw, wi = 0;
			uint32_t budget = s->budget.retrieved_tokens / PT * PT, avail = 0,
				 taken = 0;
			float *allbuf = malloc(pb * 1024), *swk = malloc(pb * 512);
			double bias[16], w[PT], in_min = 1e300, out_max = -1e300;
			uint16_t wmask[1024] = { 0 };
			int biased;

			/* Every indexed page of this head, by probing ids until one is refused. */
			memset(seen, 0, s->ntok);
			for (;;) {
				struct ice_page_ref r = { .page = np,
							  .kv_head = (uint16_t)h,
							  .kind = ICE_PAGE_RETRIEVED };
				int e = ice_fetch(c, seq, layer, &r, 1,
						  (char *)allbuf + (size_t)np * pb, pb);

				if (e == -EINVAL)
					break;
				ck_assert_int_eq(e, 0);
				all[np].id = np;
				all[np].k = (float *)((char *)allbuf + (size_t)np * pb);
				for (all[np].fill = 0; all[np].fill < PT; all[np].fill++)
					if (all[np].k[(size_t)(PT + all[np].fill) * d] == 0 &&
					    all[np].k[(size_t)(PT + all[np].fill) * d + 1] == 0 &&
					    all[np].k[(size_t)all[np].fill * d] == 0)
						break;
				rt_check_rows(s, lseed, h, all[np].k, all[np].fill, seen);
				np++;
				ck_assert_uint_lt(np, 1024);
			}
			/* The keys this head attends anyway (sink, window) calibrate the group. */
			nsw = 0;
			for (j = 0; j < (uint32_t)got; j++) {
				if (refs[j].kv_head != h || refs[j].kind == ICE_PAGE_RETRIEVED)
					continue;
				ck_assert_int_eq(ice_fetch(c, seq, layer, &refs[j], 1, buf, pb), 0);
				rt_check_rows(s, lseed, h, buf, refs[j].fill, NULL);
				memcpy(swk + (size_t)nsw * d, buf, (size_t)refs[j].fill * d * 4);
				nsw += refs[j].fill;
			}
			biased = g > 1 && nsw && s->group_merge;
			if (biased)
				rt_ref_bias(swk, nsw, q + (size_t)h * g * d, g, d, bias);
			/* The pages searched: the budget's pages times overfetch, best first. */
			nwant = dense ? np :
					rt_ref_select(all, np, q + (size_t)h * g * d, g, d,
						      s->budget.retrieved_tokens / PT *
							      (s->overfetch ? s->overfetch : 1),
						      biased ? bias : NULL,
						      s->page_mass ? 1.0 / sqrt((double)d) : 0,
						      want);
			for (j = 0; !dense && j < nwant; j++)
				avail += all[want[j]].fill;
			/* This head's part of the table: sink, retrieved, window, in that order. */
			for (j = 0; j < (uint32_t)got; j++) {
				if (refs[j].kv_head != h)
					continue;
				ck_assert_uint_ge(refs[j].kind, kind);
				kind = refs[j].kind;
				ck_assert_int_eq(ice_fetch(c, seq, layer, &refs[j], 1, buf, pb), 0);
				digest = rt_fnv(digest, buf, pb);
				ck_assert_uint_ge(refs[j].fill, 1);
				ck_assert_uint_le(refs[j].fill, PT);
				ck_assert_uint_eq(refs[j].mask & ~((1u << refs[j].fill) - 1), 0);
				if (refs[j].kind == ICE_PAGE_RETRIEVED && !dense) {
					/* A page of the searched list, in its order (pages left out
					 * had no token chosen), with the tokens it contributes. */
					while (wi < nwant && want[wi] != refs[j].page)
						wi++;
					ck_assert_msg(wi < nwant, "page %u not among the searched",
						      refs[j].page);
					ck_assert_uint_ne(refs[j].mask, 0);
					wmask[wi++] = refs[j].mask;
					taken += rt_popcount(refs[j].mask);
					nret++;
					rt_check_rows(s, lseed, h, buf, refs[j].fill, NULL);
				} else if (refs[j].kind == ICE_PAGE_RETRIEVED) {
					ck_assert_uint_eq(refs[j].page, nret);
					ck_assert_uint_eq(refs[j].mask, (1u << refs[j].fill) - 1);
					nret++;
					rt_check_rows(s, lseed, h, buf, refs[j].fill, NULL);
				} else {
					ck_assert_uint_eq(refs[j].mask, (1u << refs[j].fill) - 1);
					rt_check_rows(s, lseed, h, buf, refs[j].fill, seen);
				}
			}
			if (dense) {
				ck_assert_uint_eq(nret, nwant);
			} else {
				/* The budget's worth of tokens (or every one the searched pages
				 * hold), and none left out weighs more than one taken (up to
				 * float rounding: the engine weighs in float, this in double). */
				ck_assert_uint_eq(taken, avail < budget ? avail : budget);
				for (j = 0; j < nwant; j++) {
					uint32_t t;

					rt_ref_token_weights(&all[want[j]], q + (size_t)h * g * d,
							     g, d, biased ? bias : NULL, w);
					for (t = 0; t < all[want[j]].fill; t++) {
						if (wmask[j] >> t & 1)
							in_min = w[t] < in_min ? w[t] : in_min;
						else
							out_max = w[t] > out_max ? w[t] : out_max;
					}
				}
				ck_assert_msg(out_max <= in_min + 1e-3 * (1 + fabs(in_min)),
					      "token left out weighs %g, one taken %g", out_max,
					      in_min);
			}
			rt_check_rest(all, np, dense ? NULL : wmask, want, nwant,
				      q + (size_t)h * g * d, g, d, rest + (size_t)h * g * (d + 1));
			/* Sink + every indexed page + window = every token exactly once. */
			for (pos = 0; pos < s->ntok; pos++)
				ck_assert_msg(seen[pos], "layer %u head %u: position %u missing",
					      layer, h, pos);
			free(allbuf);
			free(swk);
		}
		/* A multi-page fetch returns the same bytes as the single ones. */
		ck_assert_int_eq(ice_fetch(c, seq, layer, refs,
					   (size_t)got < 512 ? (size_t)got : 512, buf, pb * 512),
				 0);
	}
	ck_assert_int_eq(ice_seq_close(c, seq), 0);
	ck_assert_int_eq(ice_seq_close(c, seq), -ENOENT);
	free(k);
	free(v);
	free(q);
	free(buf);
	free(refs);
	free(refs2);
	free(rest);
	free(seen);
	return digest;
}

#endif
