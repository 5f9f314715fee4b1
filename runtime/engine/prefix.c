/*
 * Saved prefixes (issue 16, point 2): a sequence's tokens saved under a name in the Redis tier's
 * servers, and opened again by any engine that reaches them (another process, another host's
 * daemon) without running the model: the K/V rows come back and are appended, so the index is
 * rebuilt from the keys (no prefill). See engine.h for the calls.
 *
 * Layout, under ICE_PREFIX_NS ("icecache:prefix:"):
 *   <name>                      the manifest: model shape, tokens, chunking, generation, a
 *                               CRC-32C per layer of its bytes (and one over those: the
 *                               prefix's content hash), and its own CRC-32C;
 *   <name>:<gen>:<layer>:<i>    the layer's rows in chunks of PFX_CHUNK bytes: K then V, per
 *                               KV head, positions in order (what engine_append takes).
 * The manifest is written last and names the generation of its chunks (a new one per save), so
 * an open sees a whole save or none: a save that died half-way left chunks but no manifest (or
 * the previous manifest, whose chunks are still there), and each layer read is checked against
 * the manifest's CRC before it is appended; a failure drops the sequence.
 */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "crc32c.h"
#include "engine.h"
#include "engine_impl.h"
#include "redis.h"

#define PFX_NS "icecache:prefix:"
#define PFX_CHUNK (1u << 20)
#define PFX_MAGIC "ICEPFX1"
#define PFX_NAME_MAX 32u
/* Chunks per pipelined call. */
#define PFX_BATCH 16u
/* The API's bound on layers (icecache.h). */
#define PFX_MAX_LAYERS 1024u

struct pfx_manifest {
	char magic[8];
	uint32_t version;
	uint32_t layers, q_heads, kv_heads, head_dim, dtype;
	uint32_t tokens;
	uint32_t chunk_bytes;
	uint64_t gen;
	uint64_t layer_bytes;
	uint32_t content_crc;               /* CRC-32C of layer_crc[0..layers) */
	uint32_t layer_crc[PFX_MAX_LAYERS]; /* CRC-32C of each layer's bytes */
	uint32_t hdr_crc;                   /* over everything above */
};

static struct tier *remote_tier(struct engine *e)
{
	unsigned i;

	for (i = 0; i < e->ntiers; i++)
		if (e->tiers[i]->ops->kind == TIER_REMOTE)
			return e->tiers[i];
	return NULL;
}

static int name_ok(const char *name)
{
	size_t i, n = name ? strlen(name) : 0;

	if (!n || n > PFX_NAME_MAX)
		return 0;
	for (i = 0; i < n; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.'))
			return 0;
	}
	return 1;
}

static uint32_t hdr_crc(const struct pfx_manifest *m)
{
	return crc32c(0, m, offsetof(struct pfx_manifest, hdr_crc));
}

/* A layer's rows, positions in order, into out: K [kv_heads][n][row] then V the same. */
static int gather_layer(struct engine *e, struct seq *s, uint32_t layer, unsigned char *out)
{
	uint32_t hk = s->p.shape.kv_heads, n = s->ntok[layer], h, sn = s->sink_n[layer];
	size_t row = s->row, half = (size_t)hk * n * row;
	unsigned char *page = NULL;
	size_t pcap = 0;
	int err = 0;

	if (buf_grow(&page, &pcap, (size_t)BATCH * e->o.slot_bytes, 1))
		return -ENOMEM;
	for (h = 0; h < hk && !err; h++) {
		const struct head_state *st = &s->hs[(size_t)layer * hk + h];
		unsigned char *k = out + (size_t)h * n * row, *v = out + half + (size_t)h * n * row;
		uint32_t np = head_pages(st), nix = st->ix ? (uint32_t)idx_ntokens(st->ix) : 0;
		uint32_t id, j, got = 0;

		if (sn + nix + st->win_n != n) {
			err = -EIO;
			break;
		}
		if (sn) { /* a budget without a sink has no sink rows */
			memcpy(k, st->sink_k, (size_t)sn * row);
			memcpy(v, st->sink_v, (size_t)sn * row);
		}
		for (id = 0; id < np && !err; id += BATCH) {
			struct store_page pg[BATCH];
			uint32_t nb = np - id < BATCH ? np - id : BATCH, b;

			for (b = 0; b < nb; b++)
				pg[b] = (struct store_page){ .key = { s->id, layer, h, id + b },
							     .buf = page +
								    (size_t)b * e->o.slot_bytes,
							     .len = (uint32_t)e->o.slot_bytes };
			/* straight from the store: a page read for a save is not hot, and promoting
			 * it would push a page that is out of DRAM */
			err = store_get(e->store, pg, nb);
			for (b = 0; b < nb && !err; b++) {
				uint32_t pos[P], fill, ver, t;
				const unsigned char *pb = pg[b].buf;

				err = idx_page_tokens(st->ix, id + b, pos, &fill, &ver);
				if (!err && (fill != pg[b].fill || ver != pg[b].version))
					err = -EIO;
				for (t = 0; t < fill && !err; t++) {
					size_t at = (size_t)(sn + pos[t]);

					if (pos[t] >= nix) {
						err = -EIO;
						break;
					}
					memcpy(k + at * row, pb + (size_t)t * row, row);
					memcpy(v + at * row, pb + (size_t)(fill + t) * row, row);
				}
				got += fill;
			}
		}
		if (!err && got != nix)
			err = -EIO;
		for (j = 0; j < st->win_n && !err; j++) {
			uint32_t r = (st->win_start + j) % s->Wcap;
			size_t at = (size_t)sn + nix + j;

			memcpy(k + at * row, st->win_k + (size_t)r * row, row);
			memcpy(v + at * row, st->win_v + (size_t)r * row, row);
		}
	}
	free(page);
	return err;
}

static void chunk_name(char *buf, size_t cap, const char *name, uint64_t gen, uint32_t layer,
		       uint32_t i)
{
	snprintf(buf, cap, PFX_NS "%s:%016" PRIx64 ":%u:%u", name, gen, layer, i);
}

/* The layer's chunks to or from buf (put: 1, get: 0), PFX_BATCH at a time, pipelined. */
static int move_layer(struct tier *t, const char *name, uint64_t gen, uint32_t layer,
		      unsigned char *buf, uint64_t bytes, int put)
{
	char names[PFX_BATCH][80];
	const char *np[PFX_BATCH];
	struct tier_io io[PFX_BATCH];
	uint64_t nchunks = (bytes + PFX_CHUNK - 1) / PFX_CHUNK, c;
	unsigned i, k;
	int err = 0;

	for (c = 0; c < nchunks && !err; c += k) {
		k = nchunks - c < PFX_BATCH ? (unsigned)(nchunks - c) : PFX_BATCH;
		for (i = 0; i < k; i++) {
			uint64_t off = (c + i) * PFX_CHUNK;
			uint32_t len = bytes - off < PFX_CHUNK ? (uint32_t)(bytes - off) :
								 PFX_CHUNK;

			chunk_name(names[i], sizeof(names[i]), name, gen, layer, (uint32_t)(c + i));
			np[i] = names[i];
			io[i] = (struct tier_io){ .buf = buf + off, .len = len, .cap = len };
		}
		err = put ? redis_obj_put(t, np, io, k) : redis_obj_get(t, np, io, k);
		for (i = 0; !err && !put && i < k; i++) {
			uint64_t off = (c + i) * PFX_CHUNK;

			/* a chunk of another length is not this save's */
			if (io[i].len != (bytes - off < PFX_CHUNK ? bytes - off : PFX_CHUNK))
				err = -EBADMSG;
		}
	}
	return err;
}

static void drop_chunks(struct tier *t, const char *name, uint64_t gen, uint32_t layers,
			uint64_t bytes)
{
	uint64_t nchunks = (bytes + PFX_CHUNK - 1) / PFX_CHUNK, c;
	char names[PFX_BATCH][80];
	const char *np[PFX_BATCH];
	uint32_t l;
	unsigned k = 0;

	for (l = 0; l < layers; l++) {
		for (c = 0; c < nchunks; c++) {
			chunk_name(names[k], sizeof(names[k]), name, gen, l, (uint32_t)c);
			np[k] = names[k];
			if (++k == PFX_BATCH) {
				redis_obj_del(t, np, k);
				k = 0;
			}
		}
	}
	if (k)
		redis_obj_del(t, np, k);
}

static int read_manifest(struct tier *t, const char *name, struct pfx_manifest *m)
{
	char key[80];
	const char *np[1] = { key };
	struct tier_io io = { .buf = m, .cap = sizeof(*m) };
	int err;

	snprintf(key, sizeof(key), PFX_NS "%s", name);
	err = redis_obj_get(t, np, &io, 1);
	if (err == -ENODATA)
		return -ENOENT;
	if (err == -EMSGSIZE)
		return -EBADMSG;
	if (err)
		return err;
	if (io.len != sizeof(*m) || memcmp(m->magic, PFX_MAGIC, sizeof(m->magic)) ||
	    m->version != 1 || m->hdr_crc != hdr_crc(m) || m->chunk_bytes != PFX_CHUNK ||
	    !m->layers || m->layers > PFX_MAX_LAYERS ||
	    m->content_crc != crc32c(0, m->layer_crc, (size_t)m->layers * sizeof(uint32_t)))
		return -EBADMSG;
	return 0;
}

int engine_prefix_save(struct engine *e, uint32_t owner, uint32_t id, const char *name,
		       uint32_t *ret_crc)
{
	struct seq *s = engine_seq_get(e, owner, id);
	struct tier *t = remote_tier(e);
	struct pfx_manifest m, old;
	unsigned char *buf = NULL;
	uint64_t bytes;
	struct timespec ts;
	uint32_t l, crc = 0;
	char key[80];
	const char *np[1] = { key };
	struct tier_io io;
	int err, had_old;

	if (!s)
		return -ENOENT;
	if (!name_ok(name))
		return -EINVAL;
	if (!t)
		return -EOPNOTSUPP;
	if (s->broken)
		return -EIO;
	for (l = 1; l < s->p.shape.layers; l++)
		if (s->ntok[l] != s->ntok[0])
			return -EBUSY; /* a prefill half-way through the layers */
	if (!s->ntok[0])
		return -ENODATA;
	bytes = 2ull * s->p.shape.kv_heads * s->ntok[0] * s->row;
	err = engine_charge(e, s, bytes);
	if (err)
		return err;
	buf = malloc(bytes);
	if (!buf) {
		err = -ENOMEM;
		goto out_uncharge;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	memset(&m, 0, sizeof(m));
	memcpy(m.magic, PFX_MAGIC, sizeof(m.magic));
	m.version = 1;
	m.layers = s->p.shape.layers;
	m.q_heads = s->p.shape.q_heads;
	m.kv_heads = s->p.shape.kv_heads;
	m.head_dim = s->p.shape.head_dim;
	m.dtype = s->p.shape.dtype;
	m.tokens = s->ntok[0];
	m.chunk_bytes = PFX_CHUNK;
	m.layer_bytes = bytes;
	/* a generation no other save of this name used: the manifest points at whole saves */
	m.gen = ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)s->id << 48) ^
		clock_now_ns();
	for (l = 0; l < m.layers && !err; l++) {
		err = gather_layer(e, s, l, buf);
		if (!err)
			err = move_layer(t, name, m.gen, l, buf, bytes, 1);
		m.layer_crc[l] = crc32c(0, buf, bytes);
	}
	crc = crc32c(0, m.layer_crc, (size_t)m.layers * sizeof(uint32_t));
	if (err) {
		drop_chunks(t, name, m.gen, m.layers, bytes);
		goto out_free;
	}
	m.content_crc = crc;
	m.hdr_crc = hdr_crc(&m);
	had_old = read_manifest(t, name, &old) == 0;
	snprintf(key, sizeof(key), PFX_NS "%s", name);
	io = (struct tier_io){ .buf = &m, .len = sizeof(m), .cap = sizeof(m) };
	err = redis_obj_put(t, np, &io, 1);
	if (err) {
		drop_chunks(t, name, m.gen, m.layers, bytes);
		goto out_free;
	}
	if (had_old && old.gen != m.gen)
		drop_chunks(t, name, old.gen, old.layers, old.layer_bytes);
	if (ret_crc)
		*ret_crc = crc;
out_free:
	free(buf);
out_uncharge:
	engine_uncharge(e, s, bytes);
	return err;
}

int engine_prefix_open(struct engine *e, uint32_t owner, const char *name,
		       const struct engine_params *p, uint32_t *ret_id, uint32_t *ret_crc,
		       uint32_t *ret_tokens)
{
	struct tier *t = remote_tier(e);
	struct pfx_manifest m;
	unsigned char *buf = NULL;
	uint32_t l, id, crc = 0;
	struct seq *s;
	int err;

	if (!name_ok(name) || !p || !ret_id)
		return -EINVAL;
	if (!t)
		return -EOPNOTSUPP;
	err = read_manifest(t, name, &m);
	if (err)
		return err;
	/* the model it was saved from, exactly */
	if (m.layers != p->shape.layers || m.q_heads != p->shape.q_heads ||
	    m.kv_heads != p->shape.kv_heads || m.head_dim != p->shape.head_dim ||
	    m.dtype != p->shape.dtype)
		return -EINVAL;
	err = engine_seq_open(e, owner, p, &id);
	if (err)
		return err;
	s = engine_seq_get(e, owner, id);
	if (!s || m.layer_bytes != 2ull * m.kv_heads * m.tokens * s->row) {
		err = s ? -EBADMSG : -ENOENT;
		goto out_drop;
	}
	err = engine_charge(e, s, m.layer_bytes);
	if (err)
		goto out_drop;
	buf = malloc(m.layer_bytes);
	if (!buf)
		err = -ENOMEM;
	/* Each layer is checked before it is appended; a failure drops what was appended, so the
	 * sequence is handed out whole or not at all. */
	for (l = 0; l < m.layers && !err; l++) {
		err = move_layer(t, name, m.gen, l, buf, m.layer_bytes, 0);
		if (err == -ENODATA)
			err = -ESTALE; /* the save this manifest names is gone (replaced meanwhile) */
		if (!err && crc32c(0, buf, m.layer_bytes) != m.layer_crc[l])
			err = -EBADMSG;
		if (!err)
			err = engine_append(e, owner, id, l, m.tokens, buf,
					    buf + m.layer_bytes / 2);
	}
	crc = m.content_crc;
	free(buf);
	engine_uncharge(e, s, m.layer_bytes);
	if (err)
		goto out_drop;
	*ret_id = id;
	if (ret_crc)
		*ret_crc = crc;
	if (ret_tokens)
		*ret_tokens = m.tokens;
	return 0;
out_drop:
	engine_seq_drop(e, owner, id);
	return err;
}

int engine_prefix_drop(struct engine *e, const char *name)
{
	struct tier *t = remote_tier(e);
	struct pfx_manifest m;
	char key[80];
	const char *np[1] = { key };
	int err;

	if (!name_ok(name))
		return -EINVAL;
	if (!t)
		return -EOPNOTSUPP;
	err = read_manifest(t, name, &m);
	if (err)
		return err;
	snprintf(key, sizeof(key), PFX_NS "%s", name);
	err = redis_obj_del(t, np, 1);
	if (!err)
		drop_chunks(t, name, m.gen, m.layers, m.layer_bytes);
	return err;
}
