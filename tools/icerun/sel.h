/*
 * Attention modes for decode steps (the hook model_forward calls for layers >= dense):
 *   full     every cached token (the reference)
 *   stream   StreamingLLM: the first 16 tokens (sink) + the most recent budget-16
 *   quest    positional 16-token pages ranked by the Quest upper bound
 *            sum_j max(q_j·min_j, q_j·max_j) per page, GQA rankings merged round-robin
 *            (index/posidx); attends sink (16) + last 16 tokens (window) + (budget-32)/16 pages
 *   oracle   the same page shape, pages ranked by their true attention mass (an upper bound
 *            for any positional page selector; needs the full softmax, so it is not a method)
 *   dci      IceCache's selection in-process: one DCI-tree (index/) per layer and KV head over
 *            the tokens that left the window, searched by the engine's select_head
 *            (index/select.h) with its defaults; sink 16 + window 16 + budget-32 retrieved
 *            tokens (K/V read from the runner's own cache)
 *   icecache layers go through libicecache (ice_append / ice_select / ice_fetch): sink 16 +
 *            window 16 + budget-32 retrieved tokens per KV head, attention over the fetched
 *            pages by the kernels' CPU reference (kern_ref_attn)
 * Every sparse mode also measures attention-mass recall: with p = softmax(q·K/√d) over all
 * cached keys, the mass of the attended tokens, against the best token set of the same size.
 */
#ifndef ICERUN_SEL_H
#define ICERUN_SEL_H

#include <stdbool.h>

#include "model.h"

enum sel_kind { SEL_FULL, SEL_STREAM, SEL_QUEST, SEL_ORACLE, SEL_DCI, SEL_ICECACHE, SEL_NKINDS };

struct sel_cfg {
	int kind, budget, dense, cap;
	const char *socket;        /* icecache: daemon socket, NULL = embedded engine */
	const char *engine_config; /* icecache, embedded: extra "key = value" lines, ',' apart */
	bool rest;                 /* icecache: merge the engine's rest term (ice_select_rest) */
	const int *lengths;        /* mass statistics are kept per nominal length */
	int nlengths;
};

struct sel_mass {
	double mass, oracle; /* means per (query head, step, sparse layer) */
	long count;
	int nlayers;
	const double *layer_mass; /* per layer sums (0 for dense layers); merge by adding */
	const double *layer_oracle;
	const long *layer_count;
};

struct sel;

bool sel_have_icecache(void);
int sel_kind_parse(const char *name); /* -EINVAL if unknown or not built */
const char *sel_kind_name(int kind);

int sel_new(const struct model *m, const struct sel_cfg *cfg, struct sel **ret);
void sel_free(struct sel *s);
int sel_kind(const struct sel *s);
int sel_budget(const struct sel *s);

/* Starts a case: the cache holds n0 exact prefix tokens; length is the nominal case length. */
int sel_begin_len(struct sel *s, const struct kv *kv, int n0, int length);
static inline int sel_begin(struct sel *s, const struct kv *kv, int n0)
{
	return sel_begin_len(s, kv, n0, 0);
}
void sel_end(struct sel *s);

/* The attn_hook callback (ctx is a struct sel). */
int sel_attend(void *ctx, const struct model *m, const struct kv *kv, int layer, int pos,
	       const float *q, float *out);

/* Mean tokens attended per (sparse layer, KV head, step) since sel_begin. */
double sel_attended(const struct sel *s);
/* Mean retrieved pages per (sparse layer, KV head, step) (dci, icecache). */
double sel_pages(const struct sel *s);
/* icecache: a few engine stats (tier occupancy, select latency) taken before the sequence of
 * the last case closed; "" otherwise. */
const char *sel_stats_text(const struct sel *s);

/* Mass statistics for one nominal length; -ENOENT when none were recorded. */
int sel_mass(const struct sel *s, int length, struct sel_mass *ret);

#endif
