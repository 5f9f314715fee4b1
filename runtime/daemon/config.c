#include "config.h"
#include "engine.h"
#include "select.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum cfg_type { CFG_U64, CFG_PATH };

struct cfg_item {
	const char *name;
	enum cfg_type type;
	size_t off;
	uint64_t min, max;
	const char *help;
};

/* clang-format 14 lays out a macro body in braces as a block, with #field in column 0. */
/* clang-format off */
#define U64(field, lo, hi, help) { #field, CFG_U64, offsetof(struct rt_config, field), lo, hi, help }
/* clang-format on */

static const struct cfg_item cfg_items[] = {
	{ "socket_path", CFG_PATH, offsetof(struct rt_config, socket_path), 0, 0,
	  "unix socket (empty: $XDG_RUNTIME_DIR/icecache/icecached.sock or /tmp/icecache-$UID/)" },
	U64(arena_bytes, 1ull << 16, 1ull << 32, "per-client data arena bytes"),
	U64(sq_entries, 2, 1u << 16, "submission ring entries (power of two)"),
	U64(cq_entries, 2, 1u << 16, "completion ring entries (power of two, >= sq_entries)"),
	U64(spin_ns, 0, 1000000000ull, "daemon spin before sleeping on an empty ring"),
	U64(client_spin_ns, 0, 1000000000ull, "client spin before sleeping for a completion"),
	U64(max_clients, 1, 4096, "clients at once"),
	U64(max_seqs, 1, 65536, "sequences at once (all clients)"),
	U64(client_max_seqs, 1, 65536, "sequences one client may hold at once"),
	U64(client_host_bytes, 0, 1ull << 42,
	    "host bytes one client's sequences may hold (0: half of host_bytes)"),
	U64(client_dram_pages, 0, 1ull << 32,
	    "DRAM tier pages one client may hold (0: half of the tier)"),
	U64(client_nvme_pages, 0, 1ull << 32,
	    "NVMe tier pages one client may hold (0: half of the tier)"),
	U64(client_remote_pages, 0, 1ull << 32,
	    "Redis tier pages one client may hold (0: half of the tier)"),
	U64(fetch_max_refs, 16, 1u << 24,
	    "page refs one fetch request may carry (staged in daemon memory, counted in host bytes)"),
	U64(dram_bytes, 1ull << 20, 1ull << 42, "DRAM tier capacity in bytes (allocated at start)"),
	U64(slot_bytes, 4096, 1u << 20,
	    "page slot bytes in every tier (multiple of 4096; a page is 2*16*head_dim*dtype bytes)"),
	U64(host_bytes, 1ull << 20, 1ull << 42,
	    "engine memory cap besides the tiers (indexes, page sums, sinks, windows)"),
	{ "nvme_path", CFG_PATH, offsetof(struct rt_config, nvme_path), 0, 0,
	  "NVMe tier file or block device (empty: no NVMe tier)" },
	U64(nvme_bytes, 1ull << 20, 1ull << 44, "NVMe tier capacity in bytes"),
	{ "remote_url", CFG_PATH, offsetof(struct rt_config, remote_url), 0, 0,
	  "Redis tier past NVMe (or DRAM): redis://host:port[,host:port...], standalone or cluster (empty: none)" },
	U64(remote_bytes, 1ull << 20, 1ull << 44,
	    "Redis tier capacity in bytes (its keys' payload; the server needs room for it)"),
	U64(remote_timeout_ms, 1, 600000,
	    "ms a Redis connect or batch may take; past it the request gets -ETIMEDOUT"),
	U64(remote_retry_ms, 1, 600000,
	    "ms a failed Redis connection fails requests at once before the tier reconnects"),
	{ "remote_prefix", CFG_PATH, offsetof(struct rt_config, remote_prefix), 0, 0,
	  "prefix of the Redis tier's keys (empty: ice:<host>:<pid>:<time>:, unique per start)" },
	U64(exact_search, 0, 1, "1: score every page exactly (reference); 0: DCI-tree search"),
	U64(page_mass, 0, 1,
	    "1: a page ranks by the softmax weight of all its tokens; 0: by its best token's"),
	U64(group_merge, 0, 1,
	    "1: a GQA group's queries share pages by the weight each adds beside its sink and window; 0: round-robin"),
	U64(overfetch, 1, 8,
	    "retrieved pages per page of budget; the budget's worth of their best tokens is attended (1: whole pages)"),
	U64(allow_uid, 0, UINT64_MAX,
	    "one more uid allowed to connect (18446744073709551615: none)"),
	U64(drain_ms, 0, 600000, "on SIGTERM, time clients get to finish queued requests"),
	U64(handshake_ms, 1, 600000, "ms a new connection has for its hello before it is closed"),
};

#define NITEMS (sizeof(cfg_items) / sizeof(cfg_items[0]))

void config_defaults(struct rt_config *c)
{
	memset(c, 0, sizeof(*c));
	c->arena_bytes = 64ull << 20;
	c->sq_entries = 256;
	c->cq_entries = 256;
	c->spin_ns = 50000;
	c->client_spin_ns = 50000;
	c->max_clients = 256;
	c->max_seqs = 4096;
	c->client_max_seqs = 1024;
	/* 64 Ki refs = 2 MiB of staging: more than a default 64 MiB arena can return pages for
	 * (1 KiB the smallest page), so the client library never meets the limit by default. */
	c->fetch_max_refs = 65536;
	c->dram_bytes = 512ull << 20;
	/* 8 KiB: a page of d 128 bf16 or d 64 f32; d 128 f32 needs 16384. */
	c->slot_bytes = 8192;
	c->host_bytes = 1ull << 30;
	c->nvme_bytes = 1ull << 30;
	c->remote_bytes = 1ull << 30;
	c->remote_timeout_ms = 1000;
	c->remote_retry_ms = 1000;
	c->allow_uid = UINT64_MAX;
	c->drain_ms = 2000;
	c->handshake_ms = 2000;
	c->group_merge = 1;
	c->page_mass = 1;
	c->overfetch = SELECT_OVERFETCH;
}

static const struct cfg_item *find_item(const char *name, size_t len)
{
	size_t i;

	for (i = 0; i < NITEMS; i++)
		if (strlen(cfg_items[i].name) == len && !strncmp(cfg_items[i].name, name, len))
			return &cfg_items[i];
	return NULL;
}

static int set_item(struct rt_config *c, const struct cfg_item *it, const char *v, size_t vlen)
{
	char tmp[128], *end;
	unsigned long long x;

	if (vlen >= sizeof(tmp))
		return -EINVAL;
	memcpy(tmp, v, vlen);
	tmp[vlen] = '\0';
	if (it->type == CFG_PATH) {
		if (vlen >= sizeof(c->socket_path)) /* every path field is 108 bytes */
			return -ENAMETOOLONG;
		memcpy((char *)c + it->off, tmp, vlen + 1);
		return 0;
	}
	if (!vlen || tmp[0] == '-')
		return -EINVAL;
	errno = 0;
	x = strtoull(tmp, &end, 0);
	if (errno || *end || x < it->min || x > it->max)
		return -EINVAL;
	if ((!strcmp(it->name, "sq_entries") || !strcmp(it->name, "cq_entries")) && (x & (x - 1)))
		return -EINVAL;
	if ((!strcmp(it->name, "arena_bytes") || !strcmp(it->name, "slot_bytes")) && x % 4096)
		return -EINVAL;
	*(uint64_t *)(void *)((char *)c + it->off) = x;
	return 0;
}

static int apply_line(struct rt_config *c, const char *s, size_t len)
{
	const char *eq, *k, *v;
	size_t klen, vlen;
	const struct cfg_item *it;

	while (len && isspace((unsigned char)*s))
		s++, len--;
	while (len && isspace((unsigned char)s[len - 1]))
		len--;
	if (!len || *s == '#')
		return 0;
	eq = memchr(s, '=', len);
	if (!eq)
		return -EINVAL;
	k = s;
	klen = (size_t)(eq - s);
	while (klen && isspace((unsigned char)k[klen - 1]))
		klen--;
	v = eq + 1;
	vlen = len - (size_t)(v - s);
	while (vlen && isspace((unsigned char)*v))
		v++, vlen--;
	it = find_item(k, klen);
	if (!it)
		return -EINVAL;
	return set_item(c, it, v, vlen);
}

static int check_all(const struct rt_config *c)
{
	return c->cq_entries < c->sq_entries ? -EINVAL : 0;
}

int config_set(struct rt_config *c, const char *kv)
{
	struct rt_config tmp = *c;
	int err = apply_line(&tmp, kv, strlen(kv));

	if (!err)
		err = check_all(&tmp);
	if (!err)
		*c = tmp;
	return err;
}

int config_parse(struct rt_config *c, const char *text, int *ret_line)
{
	struct rt_config tmp = *c;
	const char *p = text;
	int line = 0, err;

	while (p && *p) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);

		line++;
		err = apply_line(&tmp, p, len);
		if (err) {
			if (ret_line)
				*ret_line = line;
			return err;
		}
		p = nl ? nl + 1 : NULL;
	}
	err = check_all(&tmp);
	if (err) {
		if (ret_line)
			*ret_line = 0;
		return err;
	}
	*c = tmp;
	return 0;
}

int config_print(const struct rt_config *c, char *buf, size_t cap)
{
	size_t len = 0, i;
	int n;

	for (i = 0; i < NITEMS; i++) {
		const struct cfg_item *it = &cfg_items[i];

		if (it->type == CFG_PATH)
			n = snprintf(buf + len, cap - len, "# %s\n%s = %s\n", it->help, it->name,
				     (const char *)c + it->off);
		else
			n = snprintf(
				buf + len, cap - len, "# %s\n%s = %llu\n", it->help, it->name,
				(unsigned long long)*(
					const uint64_t *)(const void *)((const char *)c + it->off));
		if (n < 0 || (size_t)n >= cap - len) {
			if (cap)
				buf[len] = '\0';
			return -ENOSPC;
		}
		len += (size_t)n;
	}
	return (int)len;
}

const char *config_env_socket(void)
{
	const char *env = getenv("ICECACHE_SOCKET");

	return env && *env ? env : NULL;
}

int config_default_socket(char *buf, size_t cap)
{
	const char *env = config_env_socket();
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	int n;

	if (env)
		n = snprintf(buf, cap, "%s", env);
	else if (xdg && *xdg)
		n = snprintf(buf, cap, "%s/icecache/icecached.sock", xdg);
	else
		n = snprintf(buf, cap, "/tmp/icecache-%u/icecached.sock", (unsigned)getuid());
	if (n < 0 || (size_t)n >= cap || (size_t)n >= 108)
		return -ENAMETOOLONG;
	return 0;
}

void config_engine_opts(const struct rt_config *c, struct engine_opts *o)
{
	*o = (struct engine_opts){
		.dram_bytes = c->dram_bytes,
		.slot_bytes = c->slot_bytes,
		.host_bytes = c->host_bytes,
		.nvme_path = c->nvme_path,
		.nvme_bytes = c->nvme_bytes,
		.remote_url = c->remote_url,
		.remote_bytes = c->remote_bytes,
		.remote_timeout_ms = (uint32_t)c->remote_timeout_ms,
		.remote_retry_ms = (uint32_t)c->remote_retry_ms,
		.remote_prefix = c->remote_prefix,
		.max_seqs = (uint32_t)c->max_seqs,
		.exact_search = (int)c->exact_search,
		.owner_max_seqs = (uint32_t)c->client_max_seqs,
		.owner_host_bytes = c->client_host_bytes,
		.owner_dram_pages = c->client_dram_pages,
		.owner_nvme_pages = c->client_nvme_pages,
		.owner_remote_pages = c->client_remote_pages,
		.owner_share = CONFIG_CLIENT_SHARE,
		.fetch_max_refs = (uint32_t)c->fetch_max_refs,
		.group_merge = (int)c->group_merge,
		.page_mass = (int)c->page_mass,
		.overfetch = (uint32_t)c->overfetch,
	};
}
