/*
 * The one typed config table of the runtime. The daemon reads it from a file (or --set
 * key=value), embedded mode from a string; `icectl config` prints the running one in the same
 * "key = value" form so the output can start a daemon again.
 */
#ifndef ICE_RUNTIME_CONFIG_H
#define ICE_RUNTIME_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* One field per key of config.c's table, of the same name; what each means is said once, in
 * that table's help text and in docs/ICECTL.md's config table. */
struct rt_config {
	char socket_path[108];
	uint64_t arena_bytes;
	uint64_t sq_entries;
	uint64_t cq_entries;
	uint64_t spin_ns;
	uint64_t client_spin_ns;
	uint64_t max_clients;
	uint64_t max_seqs;
	uint64_t client_max_seqs;
	uint64_t client_host_bytes;
	uint64_t client_dram_pages;
	uint64_t client_nvme_pages;
	uint64_t client_remote_pages;
	uint64_t fetch_max_refs;
	uint64_t dram_bytes;
	uint64_t slot_bytes;
	uint64_t host_bytes;
	char nvme_path[108];
	uint64_t nvme_bytes;
	char remote_url[108];
	uint64_t remote_bytes;
	uint64_t remote_timeout_ms;
	uint64_t remote_retry_ms;
	char remote_prefix[108];
	uint64_t exact_search;
	uint64_t group_merge;
	uint64_t page_mass;
	uint64_t overfetch;
	uint64_t allow_uid;
	uint64_t drain_ms;
	uint64_t handshake_ms;
};

/*
 * Client quotas left at 0 are this share of the whole: half. No one client can take more than
 * half of the host budget or of a tier, so a greedy client always leaves half to the others,
 * while a lone client can still hold a long context of a real model (the demo's 4k-token
 * SmolLM2 sequence takes 38% of the default DRAM tier: a quarter refused it). Embedded mode has
 * one client and no share (all of it).
 */
#define CONFIG_CLIENT_SHARE 2

void config_defaults(struct rt_config *c);

/* Applies "key = value" lines ('#' comments, blank lines); -EINVAL on an unknown key or a value
 * out of range, with the offending line number in *ret_line when not NULL. */
int config_parse(struct rt_config *c, const char *text, int *ret_line);
/* Applies one "key=value". */
int config_set(struct rt_config *c, const char *kv);
/* Writes the config as "key = value" lines; returns the length or -ENOSPC. */
int config_print(const struct rt_config *c, char *buf, size_t cap);

/* The default socket path for this user (creates nothing). */
int config_default_socket(char *buf, size_t cap);
/* $ICECACHE_SOCKET when set and not empty, else NULL. A path named there is treated as one
 * named by --socket: the daemon creates no directory for it and neither side expects the
 * default path's private directory. */
const char *config_env_socket(void);

struct engine_opts;
/* The engine options a configuration names (o->nvme_path, remote_url and remote_prefix point
 * into c: engine_new reads them only while it runs). */
void config_engine_opts(const struct rt_config *c, struct engine_opts *o);

#endif
