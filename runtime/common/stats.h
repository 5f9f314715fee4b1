/*
 * Stats as a flat list of dotted names ("tier.dram.used_bytes 1048576"), one per line, written
 * into a caller buffer. Every module reports through this; icectl turns the lines into a table
 * or JSON. Writers never fail mid-line: on overflow the buffer keeps whole lines and `err` is set
 * to -ENOSPC.
 */
#ifndef ICE_COMMON_STATS_H
#define ICE_COMMON_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "hist.h"

struct stats_buf {
	char *buf;
	size_t cap;
	size_t len;
	int err;
	/* When set (after stats_buf_init), only lines it returns nonzero for are written; it sees
	 * each line NUL-terminated, without its newline (at most 511 bytes). */
	int (*keep)(void *arg, const char *line, size_t len);
	void *keep_arg;
};

void stats_buf_init(struct stats_buf *sb, char *buf, size_t cap);
/* name is "<prefix>.<key>"; prefix may be NULL or "". */
void stats_put_u64(struct stats_buf *sb, const char *prefix, const char *key, uint64_t v);
void stats_put_f64(struct stats_buf *sb, const char *prefix, const char *key, double v);
void stats_put_str(struct stats_buf *sb, const char *prefix, const char *key, const char *v);
/* Emits <key>.count, <key>.p50_ns, <key>.p99_ns, <key>.max_ns (and mean_ns). */
void stats_put_hist(struct stats_buf *sb, const char *prefix, const char *key,
		    const struct hist *h);

/* Looks a name up in stats text; 0 and *ret_v on success, -ENOENT if absent. */
int stats_find_u64(const char *text, const char *name, uint64_t *ret_v);

#endif
