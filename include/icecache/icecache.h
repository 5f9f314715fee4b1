/*
 * libicecache: the client API of IceCache, a KV-cache runtime for long-context LLM inference.
 *
 * A context talks either to a running daemon (`icecached`, ice_connect) over a shared-memory
 * ring, or to an engine inside this process (ice_open_embedded). Every other call is the same in
 * both modes and gives the same results.
 *
 * Conventions
 * - Every function that can fail returns 0 (or a count) on success and a negative errno value on
 *   failure; out-parameters (ret_*) are written only on success, except ret_need of ice_select
 *   and ice_select_rest, which -ENOSPC writes too (that is its purpose). Nothing here aborts
 *   or exits.
 * - Thread safety: one context may be shared by threads; its calls are serialized by a lock
 *   inside the context. For parallel requests, open one context per thread.
 * - Ownership: the library keeps no pointer the caller passes once a call returns.
 * - Sequences belong to the context that opened them; another context (another process) sees
 *   them as nonexistent (-ENOENT). Closing a context, or the death of its process, frees them.
 * - No call waits for a daemon for ever: ice_connect and every request of a daemon context give
 *   up after $ICECACHE_TIMEOUT_MS milliseconds (default 5000; 0 waits for ever) of no answer
 *   with -ETIMEDOUT. A request that timed out leaves its context failed (-EPIPE from then on):
 *   its answer may still come, and must not be taken for the next one's.
 *
 * Data layout
 * - K and V for ice_append are [kv_heads][n][head_dim] in the sequence's storage dtype
 *   (keys after RoPE, exactly what attention reads).
 * - Queries for ice_select are [q_heads][head_dim] float32; query head h belongs to KV head
 *   h / (q_heads / kv_heads) (GQA).
 * - A page holds up to ICE_PAGE_TOKENS tokens of one (sequence, layer, KV head).
 */
#ifndef ICECACHE_ICECACHE_H
#define ICECACHE_ICECACHE_H

#include <stddef.h>
#include <stdint.h>

#include <icecache/dtype.h> /* enum ice_dtype */

#ifdef __cplusplus
extern "C" {
#endif

/* 3: ice_select and ice_select_rest take ret_need; ice_seq_info; ice_prefix_save, ice_prefix_open
 * and ice_prefix_drop (added: nothing that was there changed). */
#define ICE_API_VERSION 3
#define ICE_PAGE_TOKENS 16

struct ice_model_shape {
	uint32_t layers;   /* 1..1024 */
	uint32_t q_heads;  /* multiple of kv_heads, <= 256, at most 16 per KV head */
	uint32_t kv_heads; /* 1..64 */
	uint32_t head_dim; /* multiple of 16, 16..512; a page (2 * 16 * head_dim * element
			    * size bytes) must fit the runtime's slot_bytes (default 8 KiB) */
	uint32_t dtype;    /* enum ice_dtype */
};

/*
 * Tokens attended per layer and KV head. sink_tokens and window_tokens are rounded up to whole
 * pages; retrieved_tokens / ICE_PAGE_TOKENS pages are retrieved by the index. Layers below
 * dense_layers are never sparsified: select returns every page of them.
 */
struct ice_budget {
	uint32_t sink_tokens;
	uint32_t window_tokens;
	uint32_t retrieved_tokens;
	uint32_t dense_layers;
};

enum ice_page_kind {
	ICE_PAGE_SINK = 0,      /* the first tokens of the sequence, always attended */
	ICE_PAGE_RETRIEVED = 1, /* chosen by the index for this query */
	ICE_PAGE_WINDOW = 2,    /* the most recent tokens, not indexed yet */
};

/* Where a page can be read now. The engine opens DRAM and NVMe tiers only: ICE_TIER_HBM is
 * reserved for a GPU tier and no select returns it yet. */
enum ice_tier {
	ICE_TIER_HBM = 0,
	ICE_TIER_DRAM = 1,
	ICE_TIER_NVME = 2,
};

/* One entry of a page table (ice_select's output, ice_fetch's input). */
struct ice_page_ref {
	uint32_t page; /* id within (sequence, layer, kv_head, kind) */
	uint16_t kv_head;
	uint8_t kind;      /* enum ice_page_kind */
	uint8_t tier;      /* enum ice_tier: where the page can be read now */
	uint16_t fill;     /* tokens in the page, 1..ICE_PAGE_TOKENS */
	uint16_t mask;     /* the rows to attend: bit t for row t, only rows below fill. Every
			    * row for sink, window and dense-layer pages; for retrieved pages the
			    * tokens ice_select chose (see there) */
	float score;       /* retrieved pages: the page's score for the query that took it, in
			    * q.k units: its log-sum-exp over its tokens at scale 1/sqrt(head_dim)
			    * (config page_mass = 1, the default) or its best q.k; else 0 */
	uint64_t location; /* byte offset of the page in its tier (informational) */
};

struct ice_ctx;

/*
 * Connects to a daemon. socket_path NULL means $ICECACHE_SOCKET if set, else the default
 * (see ice_default_socket). -ENOENT/-ECONNREFUSED when no daemon listens, -EPERM when the
 * daemon refuses this user or this side refuses the daemon, -EPROTO on a handshake it cannot
 * understand, -ETIMEDOUT when it does not answer in time (see above). The daemon must run as
 * this user, as root, or as the uid $ICECACHE_DAEMON_UID names (its peer credentials are
 * checked before anything is sent); on the default path (not one the caller or
 * $ICECACHE_SOCKET names) its directory must also be such a user's, with no group or other
 * access, and not a symbolic link. A refused daemon is reported on stderr too. ice_last_error
 * says why a connect failed.
 */
int ice_connect(const char *socket_path, struct ice_ctx **ret_ctx);

/*
 * Writes (NUL-terminated) why this thread's last ice_connect failed, naming the path and what
 * was wrong: "" after one that succeeded. Returns the length; -ENOSPC when cap is too small
 * (the text is cut), -EINVAL without a buffer.
 */
int ice_last_error(char *buf, size_t cap);

/*
 * Opens an engine inside this process. config is NULL (defaults) or text in the daemon's config
 * format ("key = value" lines, see `icectl config`); -EINVAL names no key, the caller can check
 * the same text with `icecached --check-config`.
 */
int ice_open_embedded(const char *config, struct ice_ctx **ret_ctx);

/* Frees everything the context owns (its sequences included). NULL is accepted. */
void ice_close(struct ice_ctx *ctx);

/* Writes the default daemon socket path (NUL-terminated) into buf; -ENAMETOOLONG if small. */
int ice_default_socket(char *buf, size_t cap);

/* 1 when the context is embedded, 0 when it talks to a daemon. */
int ice_is_embedded(const struct ice_ctx *ctx);

/* A request that does nothing: measures the round trip. */
int ice_noop(struct ice_ctx *ctx);

/*
 * Opens a sequence. -EINVAL when the shape or budget is out of range (budget: sink and window
 * <= 4096 tokens, retrieved <= 16384, dense_layers <= layers), -EMFILE when the engine's
 * sequence table is full, -EDQUOT when this context holds client_max_seqs already or its
 * tables would take it past client_host_bytes, -ENOSPC past the engine's host_bytes.
 * *ret_seq is the handle for the calls below. Memory for a layer is taken (and counted) with
 * its first append; an empty sequence costs its tables only.
 */
int ice_seq_open(struct ice_ctx *ctx, const struct ice_model_shape *shape,
		 const struct ice_budget *budget, uint32_t *ret_seq);

/* Drops a sequence and frees everything it holds in every tier. -ENOENT if not ours. */
int ice_seq_close(struct ice_ctx *ctx, uint32_t seq);

/*
 * Saved prefixes (needs the daemon's Redis tier, remote_url: -EOPNOTSUPP otherwise). A name is
 * 1-32 of [A-Za-z0-9._-] (-EINVAL otherwise); prefixes live on the Redis servers, so every
 * daemon reaching them (another host's) sees the same names. Any client of the daemon's own
 * user (or root) may replace or drop one; a client of another user (allow_uid) may only open
 * them (-EPERM).
 * ice_prefix_save: every token of seq (every layer must hold the same count: -EBUSY when a
 *   step is half-way through the layers; -ENODATA when empty) saved under name, replacing a
 *   previous save only once the new one is whole. *ret_hash (may be NULL): the content hash
 *   (CRC-32C over each layer's CRC-32C of its K/V rows in position order).
 * ice_prefix_open: a new sequence of this context with the saved tokens in every layer (the
 *   index is rebuilt from them: no model run), budget as given. The shape must be the saved
 *   one (-EINVAL); -ENOENT when there is no whole save of that name (one that died half-way is
 *   never opened); -EBADMSG when what is read fails the save's checksums, -ESTALE when it was
 *   replaced while being read; no sequence is left open then. *ret_hash as above.
 * ice_prefix_drop: deletes the save; -ENOENT when there is none.
 * A long prefix takes the daemon seconds to save or open (all its K/V rows move, and open
 * rebuilds the index): raise $ICECACHE_TIMEOUT_MS above the default 5 s for those.
 */
int ice_prefix_save(struct ice_ctx *ctx, uint32_t seq, const char *name, uint32_t *ret_hash);
int ice_prefix_open(struct ice_ctx *ctx, const char *name, const struct ice_model_shape *shape,
		    const struct ice_budget *budget, uint32_t *ret_seq, uint32_t *ret_hash);
int ice_prefix_drop(struct ice_ctx *ctx, const char *name);

/* What a sequence is, as ice_seq_open took it, and how long it is. */
struct ice_seq_info {
	struct ice_model_shape shape;
	struct ice_budget budget;
	uint64_t tokens;   /* the most tokens ice_append has added to any one layer: the length
			    * once every layer has had its step's tokens */
	size_t page_bytes; /* ice_page_bytes(&shape): what ice_fetch writes per ref */
};

/*
 * Writes what this context knows of seq into *ret. Answered from the context's own records:
 * no round trip to the daemon, so a binding may call it before every request to size its
 * buffers instead of keeping copies. -ENOENT if the sequence is not this context's, -EINVAL
 * when ctx or ret is NULL.
 */
int ice_seq_info(struct ice_ctx *ctx, uint32_t seq, struct ice_seq_info *ret);

/*
 * Appends n tokens (n >= 1) of K and V for one layer, all KV heads (layout above). Tokens fill
 * the window first; full pages leave the window for the index and the page store. Large
 * appends are split into several requests transparently (a failure part-way leaves the
 * earlier parts appended). A request that fails with -ENOSPC (the tiers are full: DRAM, and
 * NVMe when there is one; or the engine's host memory cap), -EDQUOT (this context's quota:
 * client_host_bytes, client_dram_pages, client_nvme_pages) or -EINVAL (a key that is not
 * finite) appended nothing: the sequence is exactly as it was, select and fetch answer as
 * before, and a later append that fits works. Another client filling a tier cannot break this
 * context's sequences. -EIO if a tier failed mid-write or a stored page was corrupt: the index
 * and the store no longer agree, the sequence is unusable from then on (every call on it
 * returns -EIO) and should be closed.
 */
int ice_append(struct ice_ctx *ctx, uint32_t seq, uint32_t layer, uint32_t n, const void *k,
	       const void *v);

/*
 * Selects the pages one decoding step attends for one layer: q is [q_heads][head_dim] float32,
 * the queries as the model computes them (after RoPE, before the 1/sqrt(head_dim) softmax
 * scale, which the engine applies itself). A page ranks by the softmax weight of all its
 * tokens (config page_mass = 1, the default; 0 ranks by its best token). The query heads of a
 * KV head share its retrieved pages: by default (config group_merge = 1) a page goes to the query it would add the most
 * softmax weight to beside that query's sink and window tokens, so heads that look far back
 * get the pages that heads attending locally do not need; group_merge = 0 shares them
 * round-robin. The budget is counted in tokens attended: with config overfetch = f (default 2)
 * the engine retrieves up to f times the budget's pages and marks in each ref's mask the
 * tokens to attend, the retrieved budget's worth in all, best softmax weight first (for the
 * query of the group that gains most from each token), so a page that holds two relevant
 * tokens costs two tokens, not sixteen. Pages none of whose tokens are chosen are left out;
 * overfetch = 1 attends whole pages. Writes at most cap refs into out, grouped by KV head in
 * ascending order; within a head: sink pages, then retrieved pages best first, then window
 * pages (oldest first).
 *
 * out holds cap >= 1 refs. Returns the number written, and writes it to *ret_need too.
 * -ENOSPC when cap is below what this select may return (a dense layer's table grows with the
 * sequence): out is left alone and *ret_need is the cap that suffices now, so a caller keeps
 * one buffer, grows it when told and retries, and a select costs one round trip otherwise.
 * ret_need may be NULL. -E2BIG when the table would not fit the context's arena (config
 * arena_bytes): no cap helps. -EINVAL on a bad argument or layer, -ENOENT when seq is not
 * this context's.
 */
int ice_select(struct ice_ctx *ctx, uint32_t seq, uint32_t layer, const float *q,
	       struct ice_page_ref *out, size_t cap, size_t *ret_need);

/*
 * ice_select, plus what the query heads would attend beyond the table, estimated: every index
 * page with no row in the table stands in for its tokens as that many copies of their mean key
 * and mean value (the engine keeps per-page sums). For query head i, rest[i * (head_dim + 1)]
 * is the log of that part's softmax weight at scale 1/sqrt(head_dim) (log of the sum over
 * those pages of count * exp(q . mean key / sqrt(head_dim))), and the head_dim floats after it
 * its weighted mean value; -INFINITY and zeros when nothing is left out (dense layers, short
 * contexts). With s_t = q . k_t / sqrt(head_dim) over the attended rows, the estimate of full
 * attention is (sum_t e^{s_t} v_t + e^{rest} v_rest) / (sum_t e^{s_t} + e^{rest}): it puts
 * back the diffuse background that attending only the budget drops. Costs one dot product and
 * one axpy per page and query head in the engine. rest_len: q_heads * (head_dim + 1) *
 * sizeof(float), else -EINVAL; otherwise as ice_select (ret_need included; rest is written
 * only on success).
 */
int ice_select_rest(struct ice_ctx *ctx, uint32_t seq, uint32_t layer, const float *q,
		    struct ice_page_ref *out, size_t cap, float *rest, size_t rest_len,
		    size_t *ret_need);

/*
 * Refs ice_select can return at most for this sequence and layer at its current length, without
 * selecting: one round trip. Optional: ice_select's ret_need gives the same size when it is
 * needed, so a select loop does not have to ask first.
 */
int ice_select_cap(struct ice_ctx *ctx, uint32_t seq, uint32_t layer);

/*
 * Copies pages into buf: page i occupies ice_page_bytes(shape) bytes at offset
 * i * ice_page_bytes(shape), K rows [ICE_PAGE_TOKENS][head_dim] then V rows, in the storage
 * dtype; rows at and past the page's fill are zero. Returns 0; -EINVAL on a ref that names no
 * page of (seq, layer), -ENOSPC when buf is too small. Requests are split to fit the arena and
 * the daemon's fetch_max_refs (a request with more refs is refused with -E2BIG before they are
 * read; the library then sends fewer at a time). The daemon's private copy of the refs counts
 * against host memory while it runs: -ENOSPC/-EDQUOT as for ice_append when that is full.
 */
int ice_fetch(struct ice_ctx *ctx, uint32_t seq, uint32_t layer, const struct ice_page_ref *refs,
	      size_t n, void *buf, size_t cap);

/* Bytes one fetched page takes: 2 * ICE_PAGE_TOKENS * head_dim * element size. */
size_t ice_page_bytes(const struct ice_model_shape *shape);

/*
 * Text queries, each written NUL-terminated into buf as "name value" lines with dotted names:
 * ice_stats (every counter: tiers, engine, daemon, clients), ice_seqs (one group of lines per
 * sequence), ice_config (the running config, in the form ice_open_embedded and icecached take).
 * Return the length written; -ENOSPC when buf is too small.
 */
int ice_stats(struct ice_ctx *ctx, char *buf, size_t cap);
int ice_seqs(struct ice_ctx *ctx, char *buf, size_t cap);
int ice_config(struct ice_ctx *ctx, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif

#endif
