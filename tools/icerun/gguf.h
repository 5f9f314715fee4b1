/*
 * GGUF reader (version 2 and 3): maps the file read-only, parses the header, the key/value
 * metadata and the tensor table, and checks every offset and size against the file length so a
 * truncated or corrupt file gives -EINVAL / -EBADMSG instead of a crash.
 */
#ifndef ICERUN_GGUF_H
#define ICERUN_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum gguf_vtype {
	GGUF_U8 = 0,
	GGUF_I8,
	GGUF_U16,
	GGUF_I16,
	GGUF_U32,
	GGUF_I32,
	GGUF_F32,
	GGUF_BOOL,
	GGUF_STR,
	GGUF_ARR,
	GGUF_U64,
	GGUF_I64,
	GGUF_F64,
};

/* ggml tensor types this runner understands (numbering is ggml's). */
enum gguf_ttype {
	GGUF_T_F32 = 0,
	GGUF_T_F16 = 1,
	GGUF_T_Q4_0 = 2,
	GGUF_T_Q4_1 = 3,
	GGUF_T_Q5_0 = 6,
	GGUF_T_Q5_1 = 7,
	GGUF_T_Q8_0 = 8,
	GGUF_T_Q4_K = 12,
	GGUF_T_Q5_K = 13,
	GGUF_T_Q6_K = 14,
};

struct gguf_str {
	const char *s; /* not NUL-terminated: points into the mapping */
	size_t len;
};

struct gguf_kv {
	struct gguf_str key;
	uint32_t type;     /* enum gguf_vtype */
	uint32_t arr_type; /* element type when type == GGUF_ARR */
	uint64_t arr_len;
	const uint8_t *val; /* raw value (array: first element) */
};

struct gguf_tensor {
	struct gguf_str name;
	uint32_t ndim;
	uint64_t ne[4]; /* ne[0] is the contiguous (row) dimension */
	uint32_t type;  /* enum gguf_ttype */
	uint64_t nbytes;
	const void *data;
};

struct gguf {
	int fd;
	const uint8_t *map;
	size_t size;
	uint32_t version;
	uint64_t nkv, ntensors;
	struct gguf_kv *kv;
	struct gguf_tensor *tensors;
};

int gguf_open(const char *path, struct gguf **ret);
void gguf_close(struct gguf *g);

const struct gguf_kv *gguf_find(const struct gguf *g, const char *key);
/* Scalar getters: -ENOENT if absent, -EINVAL if the type does not fit. */
int gguf_get_u32(const struct gguf *g, const char *key, uint32_t *ret);
int gguf_get_f32(const struct gguf *g, const char *key, float *ret);
/* String array walk: for element i of an array of strings. Returns -EINVAL when out of range. */
int gguf_arr_str(const struct gguf_kv *kv, uint64_t i, struct gguf_str *ret);
const struct gguf_tensor *gguf_tensor(const struct gguf *g, const char *name);
/* Bytes per row of ne0 elements for a tensor type; 0 for unknown types or a bad ne0. */
size_t gguf_row_bytes(uint32_t type, uint64_t ne0);
const char *gguf_type_name(uint32_t type);

#endif
