/*
 * Raw key/query dumps (docs/KVDUMP.md): one (layer, KV head) worth of keys in position order and
 * the queries to search them with, so `icebench index --dump FILE` runs on real KV.
 * Little-endian; a 64-byte header, then keys (nkeys x dim) and queries (nqueries x group x dim)
 * in the header's dtype.
 */
#ifndef ICE_INDEX_KVDUMP_H
#define ICE_INDEX_KVDUMP_H

#include <stddef.h>
#include <stdint.h>

#include "idx.h"

#define KVDUMP_MAGIC "ICEKVD01"

struct kvdump {
	uint32_t dim;
	uint32_t group; /* queries per GQA group (1 if unknown) */
	uint64_t nkeys;
	uint64_t ngroups;     /* query groups; the query block holds ngroups * group vectors */
	uint32_t layer, head; /* informational */
	float *keys;          /* nkeys x dim, fp32 (converted on load) */
	float *queries;       /* ngroups x group x dim, fp32 */
};

/* Writes a dump (data given as fp32, stored as dt). -EINVAL, -errno from I/O. */
int kvdump_write(const char *path, const struct kvdump *d, enum ice_dtype dt);
/* Reads a dump, checking magic, sizes against the file length and finiteness. -EINVAL for a
 * malformed file, -errno from I/O, -ENOMEM. On success the caller frees with kvdump_done. */
int kvdump_read(const char *path, struct kvdump *ret);
void kvdump_done(struct kvdump *d);

#endif
