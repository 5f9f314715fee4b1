#include "stats.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void stats_buf_init(struct stats_buf *sb, char *buf, size_t cap)
{
	sb->buf = buf;
	sb->cap = cap;
	sb->len = 0;
	sb->err = 0;
	sb->keep = NULL;
	sb->keep_arg = NULL;
	if (cap)
		buf[0] = '\0';
}

/* A filtered buffer: the line is made aside, asked about, then copied. */
static void stats_line_keep(struct stats_buf *sb, const char *prefix, const char *key,
			    const char *fmt, va_list ap)
{
	size_t room = sb->cap - sb->len;
	char line[512];
	int n, m;

	if (prefix && *prefix)
		n = snprintf(line, sizeof(line), "%s.%s ", prefix, key);
	else
		n = snprintf(line, sizeof(line), "%s ", key);
	if (n < 0 || (size_t)n >= sizeof(line))
		goto out_full;
	m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	if (m < 0 || (size_t)(n + m) >= sizeof(line))
		goto out_full;
	if (!sb->keep(sb->keep_arg, line, (size_t)(n + m)))
		return;
	if ((size_t)(n + m) + 1 >= room)
		goto out_full;
	memcpy(sb->buf + sb->len, line, (size_t)(n + m));
	sb->buf[sb->len + (size_t)(n + m)] = '\n';
	sb->len += (size_t)(n + m) + 1;
	sb->buf[sb->len] = '\0';
	return;
out_full:
	sb->buf[sb->len] = '\0';
	sb->err = -ENOSPC;
}

__attribute__((format(printf, 4, 5))) static void
stats_line(struct stats_buf *sb, const char *prefix, const char *key, const char *fmt, ...)
{
	size_t room = sb->cap - sb->len;
	va_list ap;
	int n, m;

	if (sb->err || sb->cap == 0)
		goto out_full;
	if (sb->keep) {
		va_start(ap, fmt);
		stats_line_keep(sb, prefix, key, fmt, ap);
		va_end(ap);
		return;
	}
	if (prefix && *prefix)
		n = snprintf(sb->buf + sb->len, room, "%s.%s ", prefix, key);
	else
		n = snprintf(sb->buf + sb->len, room, "%s ", key);
	if (n < 0 || (size_t)n >= room)
		goto out_full;
	va_start(ap, fmt);
	m = vsnprintf(sb->buf + sb->len + n, room - (size_t)n, fmt, ap);
	va_end(ap);
	if (m < 0 || (size_t)(n + m) + 1 >= room)
		goto out_full;
	sb->buf[sb->len + (size_t)(n + m)] = '\n';
	sb->len += (size_t)(n + m) + 1;
	sb->buf[sb->len] = '\0';
	return;
out_full:
	if (sb->cap)
		sb->buf[sb->len] = '\0';
	sb->err = -ENOSPC;
}

void stats_put_u64(struct stats_buf *sb, const char *prefix, const char *key, uint64_t v)
{
	stats_line(sb, prefix, key, "%" PRIu64, v);
}

void stats_put_f64(struct stats_buf *sb, const char *prefix, const char *key, double v)
{
	stats_line(sb, prefix, key, "%.6g", v);
}

void stats_put_str(struct stats_buf *sb, const char *prefix, const char *key, const char *v)
{
	stats_line(sb, prefix, key, "%s", v);
}

void stats_put_hist(struct stats_buf *sb, const char *prefix, const char *key, const struct hist *h)
{
	char name[128];

	snprintf(name, sizeof(name), "%s.count", key);
	stats_put_u64(sb, prefix, name, h->count);
	snprintf(name, sizeof(name), "%s.mean_ns", key);
	stats_put_u64(sb, prefix, name, h->count ? h->sum / h->count : 0);
	snprintf(name, sizeof(name), "%s.p50_ns", key);
	stats_put_u64(sb, prefix, name, hist_quantile(h, 0.50));
	snprintf(name, sizeof(name), "%s.p99_ns", key);
	stats_put_u64(sb, prefix, name, hist_quantile(h, 0.99));
	snprintf(name, sizeof(name), "%s.max_ns", key);
	stats_put_u64(sb, prefix, name, h->max);
}

int stats_find_u64(const char *text, const char *name, uint64_t *ret_v)
{
	size_t nl = strlen(name);
	const char *p = text;

	while (p && *p) {
		if (strncmp(p, name, nl) == 0 && p[nl] == ' ') {
			*ret_v = strtoull(p + nl + 1, NULL, 10);
			return 0;
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return -ENOENT;
}
