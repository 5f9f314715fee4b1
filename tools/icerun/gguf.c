/* GGUF parsing: every read goes through a bounds-checked cursor. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" little endian */
#define GGUF_MAX_ITEMS (1u << 24)

struct cur {
	const uint8_t *p, *end;
	int err;
};

static const void *take(struct cur *c, size_t n)
{
	const uint8_t *p = c->p;

	if (c->err || (size_t)(c->end - c->p) < n) {
		c->err = -EBADMSG;
		return NULL;
	}
	c->p += n;
	return p;
}

static uint64_t rd_u(struct cur *c, size_t n)
{
	const uint8_t *p = take(c, n);
	uint64_t v = 0;

	if (!p)
		return 0;
	memcpy(&v, p, n); /* little-endian host assumed (x86-64) */
	return v;
}

static void rd_str(struct cur *c, struct gguf_str *s)
{
	uint64_t len = rd_u(c, 8);

	s->len = 0;
	s->s = take(c, len);
	if (s->s)
		s->len = len;
}

static size_t scalar_size(uint32_t t)
{
	switch (t) {
	case GGUF_U8:
	case GGUF_I8:
	case GGUF_BOOL:
		return 1;
	case GGUF_U16:
	case GGUF_I16:
		return 2;
	case GGUF_U32:
	case GGUF_I32:
	case GGUF_F32:
		return 4;
	case GGUF_U64:
	case GGUF_I64:
	case GGUF_F64:
		return 8;
	default:
		return 0;
	}
}

/* Skips one value of type t (strings and nested arrays included). */
static void skip_val(struct cur *c, uint32_t t, int depth)
{
	struct gguf_str s;
	uint64_t n, i;
	uint32_t at;

	if (t == GGUF_STR) {
		rd_str(c, &s);
	} else if (t == GGUF_ARR) {
		at = (uint32_t)rd_u(c, 4);
		n = rd_u(c, 8);
		if (depth > 2 || n > (uint64_t)(c->end - c->p)) {
			c->err = -EBADMSG;
			return;
		}
		if (scalar_size(at)) {
			take(c, n * scalar_size(at));
			return;
		}
		for (i = 0; i < n && !c->err; i++)
			skip_val(c, at, depth + 1);
	} else if (scalar_size(t)) {
		take(c, scalar_size(t));
	} else {
		c->err = -EBADMSG;
	}
}

size_t gguf_row_bytes(uint32_t type, uint64_t ne0)
{
	switch (type) {
	case GGUF_T_F32:
		return ne0 * 4;
	case GGUF_T_F16:
		return ne0 * 2;
	case GGUF_T_Q4_0:
		return ne0 % 32 ? 0 : ne0 / 32 * 18;
	case GGUF_T_Q4_1:
		return ne0 % 32 ? 0 : ne0 / 32 * 20;
	case GGUF_T_Q5_0:
		return ne0 % 32 ? 0 : ne0 / 32 * 22;
	case GGUF_T_Q5_1:
		return ne0 % 32 ? 0 : ne0 / 32 * 24;
	case GGUF_T_Q8_0:
		return ne0 % 32 ? 0 : ne0 / 32 * 34;
	/* K-quants: super-blocks of 256 */
	case GGUF_T_Q4_K:
		return ne0 % 256 ? 0 : ne0 / 256 * 144;
	case GGUF_T_Q5_K:
		return ne0 % 256 ? 0 : ne0 / 256 * 176;
	case GGUF_T_Q6_K:
		return ne0 % 256 ? 0 : ne0 / 256 * 210;
	default:
		return 0;
	}
}

const char *gguf_type_name(uint32_t type)
{
	switch (type) {
	case GGUF_T_F32:
		return "F32";
	case GGUF_T_F16:
		return "F16";
	case GGUF_T_Q4_0:
		return "Q4_0";
	case GGUF_T_Q4_1:
		return "Q4_1";
	case GGUF_T_Q5_0:
		return "Q5_0";
	case GGUF_T_Q5_1:
		return "Q5_1";
	case GGUF_T_Q8_0:
		return "Q8_0";
	case GGUF_T_Q4_K:
		return "Q4_K";
	case GGUF_T_Q5_K:
		return "Q5_K";
	case GGUF_T_Q6_K:
		return "Q6_K";
	default:
		return "unsupported";
	}
}

static int parse(struct gguf *g)
{
	struct cur c = { g->map, g->map + g->size, 0 };
	uint64_t i, j, align = 32, data_off, rowb, nrows;
	const struct gguf_kv *akv;
	struct gguf_tensor *t;
	uint64_t *offs;
	int err;

	if (rd_u(&c, 4) != GGUF_MAGIC)
		return -EINVAL;
	g->version = (uint32_t)rd_u(&c, 4);
	if (g->version < 2 || g->version > 3)
		return -EPROTONOSUPPORT;
	g->ntensors = rd_u(&c, 8);
	g->nkv = rd_u(&c, 8);
	if (c.err || g->ntensors > GGUF_MAX_ITEMS || g->nkv > GGUF_MAX_ITEMS)
		return -EBADMSG;
	g->kv = calloc(g->nkv ? g->nkv : 1, sizeof(*g->kv));
	g->tensors = calloc(g->ntensors ? g->ntensors : 1, sizeof(*g->tensors));
	offs = calloc(g->ntensors ? g->ntensors : 1, sizeof(*offs));
	if (!g->kv || !g->tensors || !offs) {
		free(offs);
		return -ENOMEM;
	}
	for (i = 0; i < g->nkv && !c.err; i++) {
		struct gguf_kv *kv = &g->kv[i];

		rd_str(&c, &kv->key);
		kv->type = (uint32_t)rd_u(&c, 4);
		if (kv->type == GGUF_ARR) {
			const uint8_t *save = c.p;

			kv->arr_type = (uint32_t)rd_u(&c, 4);
			kv->arr_len = rd_u(&c, 8);
			kv->val = c.p;
			c.p = save;
		} else {
			kv->val = c.p;
		}
		skip_val(&c, kv->type, 0);
	}
	for (i = 0; i < g->ntensors && !c.err; i++) {
		t = &g->tensors[i];
		rd_str(&c, &t->name);
		t->ndim = (uint32_t)rd_u(&c, 4);
		if (t->ndim < 1 || t->ndim > 4) {
			c.err = -EBADMSG;
			break;
		}
		for (j = 0; j < 4; j++)
			t->ne[j] = 1;
		for (j = 0; j < t->ndim; j++)
			t->ne[j] = rd_u(&c, 8);
		t->type = (uint32_t)rd_u(&c, 4);
		offs[i] = rd_u(&c, 8);
	}
	err = c.err;
	if (err)
		goto out;
	akv = gguf_find(g, "general.alignment");
	if (akv && akv->type == GGUF_U32) {
		uint32_t a;

		memcpy(&a, akv->val, 4);
		if (a == 0 || (a & (a - 1))) {
			err = -EBADMSG;
			goto out;
		}
		align = a;
	}
	data_off = ((uint64_t)(c.p - g->map) + align - 1) / align * align;
	for (i = 0; i < g->ntensors; i++) {
		t = &g->tensors[i];
		rowb = gguf_row_bytes(t->type, t->ne[0]);
		nrows = t->ne[1] * t->ne[2] * t->ne[3];
		/* Unsupported types are kept (size unknown) and refused when someone asks for them. */
		if (!rowb) {
			t->nbytes = 0;
			t->data = NULL;
			continue;
		}
		if (t->ne[1] > GGUF_MAX_ITEMS * 16ull || nrows > (g->size / rowb) + 1) {
			err = -EBADMSG;
			goto out;
		}
		t->nbytes = rowb * nrows;
		if (data_off + offs[i] < data_off || data_off + offs[i] > g->size ||
		    t->nbytes > g->size - (data_off + offs[i])) {
			err = -EBADMSG;
			goto out;
		}
		t->data = g->map + data_off + offs[i];
	}
out:
	free(offs);
	return err;
}

int gguf_open(const char *path, struct gguf **ret)
{
	struct gguf *g;
	struct stat st;
	int err;

	g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (g->fd < 0) {
		err = -errno;
		goto out_free;
	}
	if (fstat(g->fd, &st) < 0) {
		err = -errno;
		goto out_close;
	}
	if (st.st_size < 24) {
		err = -EINVAL;
		goto out_close;
	}
	g->size = (size_t)st.st_size;
	g->map = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, g->fd, 0);
	if (g->map == MAP_FAILED) {
		err = -errno;
		g->map = NULL;
		goto out_close;
	}
	err = parse(g);
	if (err)
		goto out_unmap;
	*ret = g;
	return 0;
out_unmap:
	munmap((void *)g->map, g->size);
out_close:
	close(g->fd);
out_free:
	free(g->kv);
	free(g->tensors);
	free(g);
	return err;
}

void gguf_close(struct gguf *g)
{
	if (!g)
		return;
	munmap((void *)g->map, g->size);
	close(g->fd);
	free(g->kv);
	free(g->tensors);
	free(g);
}

static int str_eq(const struct gguf_str *s, const char *z)
{
	size_t n = strlen(z);

	return s->len == n && memcmp(s->s, z, n) == 0;
}

const struct gguf_kv *gguf_find(const struct gguf *g, const char *key)
{
	uint64_t i;

	for (i = 0; i < g->nkv; i++)
		if (str_eq(&g->kv[i].key, key))
			return &g->kv[i];
	return NULL;
}

int gguf_get_u32(const struct gguf *g, const char *key, uint32_t *ret)
{
	const struct gguf_kv *kv = gguf_find(g, key);
	uint32_t v;

	if (!kv)
		return -ENOENT;
	if (kv->type != GGUF_U32 && kv->type != GGUF_I32)
		return -EINVAL;
	memcpy(&v, kv->val, 4);
	*ret = v;
	return 0;
}

int gguf_get_f32(const struct gguf *g, const char *key, float *ret)
{
	const struct gguf_kv *kv = gguf_find(g, key);
	float v;

	if (!kv)
		return -ENOENT;
	if (kv->type != GGUF_F32)
		return -EINVAL;
	memcpy(&v, kv->val, 4);
	*ret = v;
	return 0;
}

/*
 * Walks to element i. Linear in i, so callers that read a whole vocabulary iterate with their
 * own cursor (see tok.c); this is for spot lookups and tests.
 */
int gguf_arr_str(const struct gguf_kv *kv, uint64_t i, struct gguf_str *ret)
{
	const uint8_t *p = kv->val;
	uint64_t k, len;

	if (kv->type != GGUF_ARR || kv->arr_type != GGUF_STR || i >= kv->arr_len)
		return -EINVAL;
	/* Bounds were checked by the parser's skip over the whole array. */
	for (k = 0; k < i; k++) {
		memcpy(&len, p, 8);
		p += 8 + len;
	}
	memcpy(&len, p, 8);
	ret->s = (const char *)p + 8;
	ret->len = len;
	return 0;
}

const struct gguf_tensor *gguf_tensor(const struct gguf *g, const char *name)
{
	uint64_t i;

	for (i = 0; i < g->ntensors; i++)
		if (str_eq(&g->tensors[i].name, name))
			return &g->tensors[i];
	return NULL;
}
