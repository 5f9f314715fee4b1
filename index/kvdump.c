/* Raw key/query dump files; format in docs/KVDUMP.md. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kvdump.h"

/* header, 64 bytes, little-endian */
struct kvdump_hdr {
	char magic[8];
	uint32_t version; /* 1 */
	uint32_t dtype;   /* KVD_* below, not enum ice_dtype */
	uint32_t dim;
	uint32_t group;
	uint64_t nkeys;
	uint64_t ngroups;
	uint32_t layer, head;
	uint8_t reserved[16];
};
_Static_assert(sizeof(struct kvdump_hdr) == 64, "kvdump header is 64 bytes");

/* The header's dtype codes: those of the index's former dtype enum, whose order (bf16 before
 * fp16) differs from enum ice_dtype's. Files already written keep them, so they are mapped
 * here, at the file boundary, and never change. */
static const enum ice_dtype kvd_dtype[] = { ICE_DTYPE_F32, ICE_DTYPE_BF16, ICE_DTYPE_F16 };
#define KVD_NDTYPES (sizeof(kvd_dtype) / sizeof(kvd_dtype[0]))

static int kvd_code(enum ice_dtype dt, uint32_t *ret_code)
{
	uint32_t c;

	for (c = 0; c < KVD_NDTYPES; c++)
		if (kvd_dtype[c] == dt) {
			*ret_code = c;
			return 0;
		}
	return -EINVAL;
}

static int write_block(FILE *f, const float *v, size_t cnt, enum ice_dtype dt)
{
	uint16_t buf[1024];
	size_t i, j;

	if (dt == ICE_DTYPE_F32)
		return fwrite(v, sizeof(float), cnt, f) == cnt ? 0 : -EIO;
	for (i = 0; i < cnt; i += j) {
		for (j = 0; j < 1024 && i + j < cnt; j++)
			dtype_store_f32(buf, dt, j, v[i + j]);
		if (fwrite(buf, 2, j, f) != j)
			return -EIO;
	}
	return 0;
}

int kvdump_write(const char *path, const struct kvdump *d, enum ice_dtype dt)
{
	struct kvdump_hdr h;
	uint32_t code;
	FILE *f;
	int rc;

	if (!path || !d || !d->keys || d->dim == 0 || d->nkeys == 0 || d->group == 0 ||
	    (d->ngroups && !d->queries) || kvd_code(dt, &code))
		return -EINVAL;
	memset(&h, 0, sizeof(h));
	memcpy(h.magic, KVDUMP_MAGIC, 8);
	h.version = 1;
	h.dtype = code;
	h.dim = d->dim;
	h.group = d->group;
	h.nkeys = d->nkeys;
	h.ngroups = d->ngroups;
	h.layer = d->layer;
	h.head = d->head;
	f = fopen(path, "wb");
	if (!f)
		return -errno;
	rc = fwrite(&h, sizeof(h), 1, f) == 1 ? 0 : -EIO;
	if (rc == 0)
		rc = write_block(f, d->keys, d->nkeys * d->dim, dt);
	if (rc == 0 && d->ngroups)
		rc = write_block(f, d->queries, d->ngroups * d->group * d->dim, dt);
	if (fclose(f) != 0 && rc == 0)
		rc = -EIO;
	return rc;
}

static int read_block(FILE *f, float *v, size_t cnt, enum ice_dtype dt)
{
	size_t sz = dtype_size(dt), i;
	void *raw;
	int rc;

	if (dt == ICE_DTYPE_F32)
		rc = fread(v, 4, cnt, f) == cnt ? 0 : -EIO;
	else {
		raw = malloc(cnt * sz);
		if (!raw)
			return -ENOMEM;
		rc = fread(raw, sz, cnt, f) == cnt ? 0 : -EIO;
		if (rc == 0)
			rc = dtype_to_f32(raw, dt, cnt, v);
		free(raw);
	}
	for (i = 0; rc == 0 && i < cnt; i++)
		if (!isfinite(v[i]))
			rc = -EINVAL;
	return rc;
}

int kvdump_read(const char *path, struct kvdump *ret)
{
	struct kvdump_hdr h;
	struct kvdump d;
	struct stat st;
	enum ice_dtype dt;
	size_t nk, nq;
	FILE *f;
	int rc = -EINVAL;

	if (!path || !ret)
		return -EINVAL;
	memset(&d, 0, sizeof(d));
	f = fopen(path, "rb");
	if (!f)
		return -errno;
	if (fstat(fileno(f), &st) != 0) {
		rc = -errno;
		goto out;
	}
	if (fread(&h, sizeof(h), 1, f) != 1 || memcmp(h.magic, KVDUMP_MAGIC, 8) || h.version != 1)
		goto out;
	if (h.dtype >= KVD_NDTYPES || h.dim == 0 || h.dim > 4096 || h.group == 0 ||
	    h.group > 1024 || h.nkeys == 0 || h.nkeys > (1ull << 32) || h.ngroups > (1ull << 32))
		goto out;
	dt = kvd_dtype[h.dtype];
	nk = (size_t)h.nkeys * h.dim;
	nq = (size_t)h.ngroups * h.group * h.dim;
	if ((uint64_t)st.st_size != sizeof(h) + (nk + nq) * dtype_size(dt))
		goto out;
	rc = -ENOMEM;
	d.keys = malloc(nk * sizeof(float));
	d.queries = malloc((nq ? nq : 1) * sizeof(float));
	if (!d.keys || !d.queries)
		goto out;
	rc = read_block(f, d.keys, nk, dt);
	if (rc == 0 && nq)
		rc = read_block(f, d.queries, nq, dt);
	if (rc < 0)
		goto out;
	d.dim = h.dim;
	d.group = h.group;
	d.nkeys = h.nkeys;
	d.ngroups = h.ngroups;
	d.layer = h.layer;
	d.head = h.head;
	*ret = d;
	fclose(f);
	return 0;
out:
	free(d.keys);
	free(d.queries);
	fclose(f);
	return rc;
}

void kvdump_done(struct kvdump *d)
{
	if (!d)
		return;
	free(d->keys);
	free(d->queries);
	d->keys = d->queries = NULL;
}
