/*
 * The page store of the index tests: idx_build and idx_insert wrapped so that every index
 * keeps its keys by position beside it (converted to fp32), as the engine keeps them in its
 * pages, and reads them through an idx_rows source. Include after idx.h; the wrappers replace
 * idx_build, idx_insert and idx_free in the including file ((idx_build)(...) calls the real
 * one).
 */
#ifndef ICE_TESTS_INDEX_TEST_KEYS_H
#define ICE_TESTS_INDEX_TEST_KEYS_H

#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "idx.h"

struct tk_entry {
	const struct idx *ix;
	float *rows;
	size_t cap;
	struct idx_rows r;
};

static struct tk_entry tk_pool[64];

static inline struct tk_entry *tk_of(const struct idx *ix)
{
	size_t i, free_at = sizeof(tk_pool) / sizeof(tk_pool[0]);

	for (i = 0; i < sizeof(tk_pool) / sizeof(tk_pool[0]); i++) {
		if (tk_pool[i].ix == ix)
			return &tk_pool[i];
		if (!tk_pool[i].ix && free_at == sizeof(tk_pool) / sizeof(tk_pool[0]))
			free_at = i;
	}
	if (free_at == sizeof(tk_pool) / sizeof(tk_pool[0]))
		abort(); /* more live indexes than a test needs */
	tk_pool[free_at] = (struct tk_entry){ .ix = ix };
	return &tk_pool[free_at];
}

/* Keeps keys[0..n) as positions first.. of ix (dropping rows a rollback took back). */
static inline void tk_keep(struct idx *ix, size_t first, const void *keys, size_t n,
			   enum ice_dtype dt)
{
	struct tk_entry *e = tk_of(ix);
	size_t d = idx_dim(ix);

	if ((first + n) > e->cap) {
		e->cap = (first + n) * 2;
		e->rows = realloc(e->rows, e->cap * d * sizeof(float));
		if (!e->rows)
			abort();
	}
	if (dtype_to_f32(keys, dt, n * d, e->rows + first * d) < 0)
		abort();
	e->r = (struct idx_rows){ e->rows, ICE_DTYPE_F32, first + n };
	idx_set_keys(ix, &(struct idx_keys){ idx_rows_read, &e->r, 0 });
}

static inline int tk_build(struct idx *ix, const void *keys, size_t n, enum ice_dtype dt)
{
	size_t first = idx_ntokens(ix);
	int rc = (idx_build)(ix, keys, n, dt);

	if (rc == 0)
		tk_keep(ix, first, keys, n, dt);
	return rc;
}

static inline int tk_insert(struct idx *ix, const void *keys, size_t n, enum ice_dtype dt)
{
	size_t first = idx_ntokens(ix);
	int rc = (idx_insert)(ix, keys, n, dt);

	if (rc == 0)
		tk_keep(ix, first, keys, n, dt);
	return rc;
}

static inline void tk_free(struct idx *ix)
{
	size_t i;

	for (i = 0; ix && i < sizeof(tk_pool) / sizeof(tk_pool[0]); i++)
		if (tk_pool[i].ix == ix) {
			free(tk_pool[i].rows);
			tk_pool[i] = (struct tk_entry){ 0 };
		}
	(idx_free)(ix);
}

#define idx_build(...) tk_build(__VA_ARGS__)
#define idx_insert(...) tk_insert(__VA_ARGS__)
#define idx_free(...) tk_free(__VA_ARGS__)

#endif
