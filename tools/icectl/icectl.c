/*
 * icectl: looks at a running icecached over its own socket (a control connection: it gets a
 * small segment and speaks the same opcodes as any client). docs/ICECTL.md is the manual.
 *   icectl [--socket PATH] [--timeout S] [--json] status|seqs|stats|config
 *   icectl [--socket PATH] [--timeout S] [--json] watch [--interval MS] [--count N]
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "icecache/icecache.h"
#include "proto.h"
#include "shim.h"

#define TEXT_CAP (512 * 1024)

struct kv {
	char *name;
	char *value;
};

struct kvs {
	struct kv *v;
	size_t n;
};

/* Splits "name value" lines in place. */
static int kvs_parse(char *text, struct kvs *out)
{
	size_t cap = 0;
	char *line, *save = NULL;

	out->n = 0;
	out->v = NULL;
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *sp = strchr(line, ' ');

		if (!sp)
			continue;
		*sp = '\0';
		if (buf_grow(&out->v, &cap, out->n + 1, sizeof(*out->v)))
			return -ENOMEM;
		out->v[out->n].name = line;
		out->v[out->n].value = sp + 1;
		out->n++;
	}
	return 0;
}

static const char *kvs_get(const struct kvs *k, const char *name)
{
	size_t i;

	for (i = 0; i < k->n; i++)
		if (!strcmp(k->v[i].name, name))
			return k->v[i].value;
	return NULL;
}

static uint64_t kvs_u64(const struct kvs *k, const char *name)
{
	const char *v = kvs_get(k, name);

	return v ? strtoull(v, NULL, 10) : 0;
}

static int is_number(const char *s)
{
	char *end;

	if (!*s)
		return 0;
	strtod(s, &end);
	return *end == '\0';
}

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", (unsigned char)*s);
		else
			putchar(*s);
	}
	putchar('"');
}

static void json_value(const char *v)
{
	if (is_number(v))
		fputs(v, stdout);
	else
		json_str(v);
}

static void human_bytes(uint64_t b, char *buf, size_t cap)
{
	static const char *const u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double x = (double)b;
	int i = 0;

	while (x >= 1024 && i < 4) {
		x /= 1024;
		i++;
	}
	snprintf(buf, cap, i ? "%.1f %s" : "%.0f %s", x, u[i]);
}

/* Distinct "<prefix>.<id>." groups, in first-seen order. */
static size_t groups(const struct kvs *k, const char *prefix, char ids[][32], size_t max)
{
	size_t i, j, n = 0, pl = strlen(prefix);

	for (i = 0; i < k->n; i++) {
		const char *nm = k->v[i].name, *dot;
		size_t len;

		if (strncmp(nm, prefix, pl) || nm[pl] != '.')
			continue;
		dot = strchr(nm + pl + 1, '.');
		if (!dot)
			continue;
		len = (size_t)(dot - (nm + pl + 1));
		if (len >= 32)
			continue;
		for (j = 0; j < n; j++)
			if (strlen(ids[j]) == len && !strncmp(ids[j], nm + pl + 1, len))
				break;
		if (j == n && n < max) {
			memcpy(ids[n], nm + pl + 1, len);
			ids[n][len] = '\0';
			n++;
		}
	}
	return n;
}

static uint64_t grp_u64(const struct kvs *k, const char *prefix, const char *id, const char *f)
{
	char name[128];

	snprintf(name, sizeof(name), "%s.%s.%s", prefix, id, f);
	return kvs_u64(k, name);
}

static const char *grp_str(const struct kvs *k, const char *prefix, const char *id, const char *f)
{
	char name[128];
	const char *v;

	snprintf(name, sizeof(name), "%s.%s.%s", prefix, id, f);
	v = kvs_get(k, name);
	return v ? v : "";
}

#define MAXG 4096
static char tier_ids[16][32], client_ids[MAXG][32], seq_ids[MAXG][32];

/* Pages resident in a tier: each page holds one slot there. */
static uint64_t tier_pages(const struct kvs *st, const char *id)
{
	char name[128];

	snprintf(name, sizeof(name), "tier.%s.pages", id);
	if (kvs_get(st, name))
		return kvs_u64(st, name);
	return grp_u64(st, "tier", id, "used_slots");
}

static size_t seqs_of(const struct kvs *st, const struct kvs *sq, size_t nseq, const char *client)
{
	char name[128];
	size_t i, n = 0;

	snprintf(name, sizeof(name), "client.%s.seqs", client);
	if (kvs_get(st, name))
		return (size_t)kvs_u64(st, name);

	for (i = 0; i < nseq; i++)
		if (grp_u64(sq, "seq", seq_ids[i], "owner") == strtoull(client, NULL, 10))
			n++;
	return n;
}

static int print_status(struct kvs *st, struct kvs *sq, int json)
{
	size_t nt = groups(st, "tier", tier_ids, 16), nc = groups(st, "client", client_ids, MAXG);
	size_t ns = groups(sq, "seq", seq_ids, MAXG), i;
	char a[32], b[32];

	if (json) {
		printf("{\"daemon\":{\"pid\":%llu,\"socket\":",
		       (unsigned long long)kvs_u64(st, "daemon.pid"));
		json_str(kvs_get(st, "daemon.socket") ? kvs_get(st, "daemon.socket") : "");
		printf(",\"uptime_ns\":%llu},\"tiers\":[",
		       (unsigned long long)kvs_u64(st, "daemon.uptime_ns"));
		for (i = 0; i < nt; i++)
			printf("%s{\"name\":\"%s\",\"capacity_bytes\":%llu,\"used_bytes\":%llu,"
			       "\"pages\":%llu}",
			       i ? "," : "", tier_ids[i],
			       (unsigned long long)grp_u64(st, "tier", tier_ids[i],
							   "capacity_bytes"),
			       (unsigned long long)grp_u64(st, "tier", tier_ids[i], "used_bytes"),
			       (unsigned long long)tier_pages(st, tier_ids[i]));
		printf("],\"clients\":[");
		for (i = 0; i < nc; i++)
			printf("%s{\"id\":%s,\"pid\":%llu,\"uid\":%llu,\"ops\":%llu,\"seqs\":%zu,"
			       "\"host_bytes\":%llu,\"dram_pages\":%llu,\"nvme_pages\":%llu}",
			       i ? "," : "", client_ids[i],
			       (unsigned long long)grp_u64(st, "client", client_ids[i], "pid"),
			       (unsigned long long)grp_u64(st, "client", client_ids[i], "uid"),
			       (unsigned long long)grp_u64(st, "client", client_ids[i], "ops"),
			       seqs_of(st, sq, ns, client_ids[i]),
			       (unsigned long long)grp_u64(st, "client", client_ids[i],
							   "host_bytes"),
			       (unsigned long long)grp_u64(st, "client", client_ids[i],
							   "dram_pages"),
			       (unsigned long long)grp_u64(st, "client", client_ids[i],
							   "nvme_pages"));
		printf("],\"client_quotas\":{\"host_bytes\":%llu,\"dram_pages\":%llu,"
		       "\"nvme_pages\":%llu,\"seqs\":%llu}",
		       (unsigned long long)kvs_u64(st, "engine.client_host_bytes"),
		       (unsigned long long)kvs_u64(st, "engine.client_dram_pages"),
		       (unsigned long long)kvs_u64(st, "engine.client_nvme_pages"),
		       (unsigned long long)kvs_u64(st, "engine.client_max_seqs"));
		printf(",\"control_clients\":%llu,\"seqs\":%zu,\"engine\":{"
		       "\"host_capacity_bytes\":%llu,\"host_used_bytes\":%llu,\"store\":",
		       (unsigned long long)kvs_u64(st, "daemon.control_clients"), ns,
		       (unsigned long long)kvs_u64(st, "engine.host_capacity_bytes"),
		       (unsigned long long)kvs_u64(st, "engine.host_used_bytes"));
		json_str(kvs_get(st, "engine.store") ? kvs_get(st, "engine.store") : "");
		printf(",\"index\":");
		json_str(kvs_get(st, "engine.index") ? kvs_get(st, "engine.index") : "");
		printf("}}\n");
		return 0;
	}
	printf("icecached pid %llu on %s, up %.1f s\n",
	       (unsigned long long)kvs_u64(st, "daemon.pid"),
	       kvs_get(st, "daemon.socket") ? kvs_get(st, "daemon.socket") : "?",
	       (double)kvs_u64(st, "daemon.uptime_ns") / 1e9);
	printf("\n%-6s %12s %12s %6s %10s\n", "TIER", "CAPACITY", "USED", "USE%", "PAGES");
	for (i = 0; i < nt; i++) {
		uint64_t capb = grp_u64(st, "tier", tier_ids[i], "capacity_bytes");
		uint64_t used = grp_u64(st, "tier", tier_ids[i], "used_bytes");

		human_bytes(capb, a, sizeof(a));
		human_bytes(used, b, sizeof(b));
		printf("%-6s %12s %12s %5.1f%% %10llu\n", tier_ids[i], a, b,
		       capb ? 100.0 * (double)used / (double)capb : 0.0,
		       (unsigned long long)tier_pages(st, tier_ids[i]));
	}
	human_bytes(kvs_u64(st, "engine.host_used_bytes"), a, sizeof(a));
	human_bytes(kvs_u64(st, "engine.host_capacity_bytes"), b, sizeof(b));
	printf("%-6s %12s %12s %5.1f%% %10s   (indexes, page sums, sinks, windows)\n", "host", b, a,
	       kvs_u64(st, "engine.host_capacity_bytes") ?
		       100.0 * (double)kvs_u64(st, "engine.host_used_bytes") /
			       (double)kvs_u64(st, "engine.host_capacity_bytes") :
		       0.0,
	       "-");
	printf("\nclients: %zu (+%llu control)   sequences: %zu   store: %s   index: %s\n", nc,
	       (unsigned long long)kvs_u64(st, "daemon.control_clients"), ns,
	       kvs_get(st, "engine.store") ? kvs_get(st, "engine.store") : "?",
	       kvs_get(st, "engine.index") ? kvs_get(st, "engine.index") : "?");
	if (nc) {
		/* each client's use, and below it the quota each may reach (0: none) */
		printf("\n%-6s %8s %6s %10s %5s %12s %8s %8s\n", "CLIENT", "PID", "UID", "OPS",
		       "SEQS", "HOST", "DRAM", "NVME");
		for (i = 0; i < nc; i++) {
			human_bytes(grp_u64(st, "client", client_ids[i], "host_bytes"), a,
				    sizeof(a));
			printf("%-6s %8llu %6llu %10llu %5zu %12s %8llu %8llu\n", client_ids[i],
			       (unsigned long long)grp_u64(st, "client", client_ids[i], "pid"),
			       (unsigned long long)grp_u64(st, "client", client_ids[i], "uid"),
			       (unsigned long long)grp_u64(st, "client", client_ids[i], "ops"),
			       seqs_of(st, sq, ns, client_ids[i]), a,
			       (unsigned long long)grp_u64(st, "client", client_ids[i],
							   "dram_pages"),
			       (unsigned long long)grp_u64(st, "client", client_ids[i],
							   "nvme_pages"));
		}
		human_bytes(kvs_u64(st, "engine.client_host_bytes"), a, sizeof(a));
		printf("%-6s %8s %6s %10s %5llu %12s %8llu %8llu\n", "quota", "", "", "",
		       (unsigned long long)kvs_u64(st, "engine.client_max_seqs"), a,
		       (unsigned long long)kvs_u64(st, "engine.client_dram_pages"),
		       (unsigned long long)kvs_u64(st, "engine.client_nvme_pages"));
	}
	return 0;
}

static int print_seqs(struct kvs *sq, int json)
{
	size_t ns = groups(sq, "seq", seq_ids, MAXG), i;
	static const char *const f[] = { "owner",    "layers", "q_heads", "kv_heads",
					 "head_dim", "tokens", "pages",   "bytes" };
	size_t j;

	if (json) {
		printf("{\"seqs\":[");
		for (i = 0; i < ns; i++) {
			printf("%s{\"id\":%s", i ? "," : "", seq_ids[i]);
			for (j = 0; j < sizeof(f) / sizeof(f[0]); j++)
				printf(",\"%s\":%llu", f[j],
				       (unsigned long long)grp_u64(sq, "seq", seq_ids[i], f[j]));
			printf(",\"dtype\":");
			json_str(grp_str(sq, "seq", seq_ids[i], "dtype"));
			printf("}");
		}
		printf("]}\n");
		return 0;
	}
	printf("%-10s %6s %6s %5s %5s %5s %5s %10s %8s %12s\n", "SEQ", "CLIENT", "LAYERS", "HQ",
	       "HKV", "D", "DTYPE", "TOKENS", "PAGES", "BYTES");
	for (i = 0; i < ns; i++)
		printf("%-10s %6llu %6llu %5llu %5llu %5llu %5s %10llu %8llu %12llu\n", seq_ids[i],
		       (unsigned long long)grp_u64(sq, "seq", seq_ids[i], "owner"),
		       (unsigned long long)grp_u64(sq, "seq", seq_ids[i], "layers"),
		       (unsigned long long)grp_u64(sq, "seq", seq_ids[i], "q_heads"),
		       (unsigned long long)grp_u64(sq, "seq", seq_ids[i], "kv_heads"),
		       (unsigned long long)grp_u64(sq, "seq", seq_ids[i], "head_dim"),
		       grp_str(sq, "seq", seq_ids[i], "dtype"),
		       (unsigned long long)grp_u64(sq, "seq", seq_ids[i], "tokens"),
		       (unsigned long long)grp_u64(sq, "seq", seq_ids[i], "pages"),
		       (unsigned long long)grp_u64(sq, "seq", seq_ids[i], "bytes"));
	return 0;
}

static int print_flat(struct kvs *k, int json)
{
	size_t i;

	if (json) {
		printf("{");
		for (i = 0; i < k->n; i++) {
			printf("%s", i ? "," : "");
			json_str(k->v[i].name);
			putchar(':');
			json_value(k->v[i].value);
		}
		printf("}\n");
		return 0;
	}
	for (i = 0; i < k->n; i++)
		printf("%-40s %s\n", k->v[i].name, k->v[i].value);
	return 0;
}

static int print_config(char *text, int json)
{
	struct kvs k = { 0 };
	char *line, *save = NULL;
	int first = 1;

	if (!json) {
		fputs(text, stdout);
		return 0;
	}
	printf("{");
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *eq = strstr(line, " = ");

		if (line[0] == '#' || !eq)
			continue;
		*eq = '\0';
		printf("%s", first ? "" : ",");
		first = 0;
		json_str(line);
		putchar(':');
		json_value(eq + 3);
	}
	printf("}\n");
	free(k.v);
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: icectl [--socket PATH] [--timeout S] [--json] status|seqs|stats|config\n"
		"       icectl [--socket PATH] [--timeout S] [--json] watch [--interval MS] "
		"[--count N]\n"
		"       icectl [--socket PATH] [--timeout S] prefix-drop NAME   (a saved prefix)\n"
		"--timeout: seconds to wait for the daemon (default: $ICECACHE_TIMEOUT_MS "
		"or 5 s; 0: for ever)\n");
}

static int fetch_text(struct ice_ctx *c, int (*fn)(struct ice_ctx *, char *, size_t), char *buf,
		      struct kvs *k)
{
	int n = fn(c, buf, TEXT_CAP);

	if (n < 0)
		return n;
	return k ? kvs_parse(buf, k) : 0;
}

static int one(struct ice_ctx *c, const char *cmd, const char *arg, int json)
{
	static char b1[TEXT_CAP], b2[TEXT_CAP];
	struct kvs st = { 0 }, sq = { 0 };
	int err;

	if (!strcmp(cmd, "status")) {
		err = fetch_text(c, ice_stats, b1, &st);
		if (!err)
			err = fetch_text(c, ice_seqs, b2, &sq);
		if (!err)
			err = print_status(&st, &sq, json);
	} else if (!strcmp(cmd, "seqs")) {
		err = fetch_text(c, ice_seqs, b2, &sq);
		if (!err)
			err = print_seqs(&sq, json);
	} else if (!strcmp(cmd, "stats")) {
		err = fetch_text(c, ice_stats, b1, &st);
		if (!err)
			err = print_flat(&st, json);
	} else if (!strcmp(cmd, "config")) {
		err = fetch_text(c, ice_config, b1, NULL);
		if (!err)
			err = print_config(b1, json);
	} else if (!strcmp(cmd, "prefix-drop") && arg) {
		err = ice_prefix_drop(c, arg);
		if (!err)
			printf(json ? "{\"dropped\":\"%s\"}\n" : "dropped %s\n", arg);
		else if (err == -ENOENT)
			fprintf(stderr, "icectl: no saved prefix named %s\n", arg);
		else if (err == -EOPNOTSUPP)
			fprintf(stderr, "icectl: the daemon has no Redis tier (remote_url)\n");
	} else {
		usage(stderr);
		return -EINVAL;
	}
	free(st.v);
	free(sq.v);
	fflush(stdout);
	return err;
}

int main(int argc, char **argv)
{
	const char *sock = NULL, *cmd = NULL, *arg = NULL;
	long interval = 1000, count = -1, i;
	uint64_t timeout_ns = SHIM_TIMEOUT_DEFAULT;
	struct ice_ctx *c;
	int json = 0, err, a;

	for (a = 1; a < argc; a++) {
		if (!strcmp(argv[a], "--json")) {
			json = 1;
		} else if (!strcmp(argv[a], "--socket") && a + 1 < argc) {
			sock = argv[++a];
		} else if (!strcmp(argv[a], "--timeout") && a + 1 < argc) {
			char *end;
			double sec = strtod(argv[++a], &end);

			if (*end || !(sec >= 0 && sec < 1e6)) {
				usage(stderr);
				return 2;
			}
			timeout_ns = sec > 0 ? (uint64_t)(sec * 1e9) : SHIM_TIMEOUT_NONE;
			if (!timeout_ns)
				timeout_ns = 1; /* under a nanosecond: still a limit */
		} else if (!strcmp(argv[a], "--interval") && a + 1 < argc) {
			interval = strtol(argv[++a], NULL, 10);
		} else if (!strcmp(argv[a], "--count") && a + 1 < argc) {
			count = strtol(argv[++a], NULL, 10);
		} else if (!strcmp(argv[a], "--help") || !strcmp(argv[a], "-h")) {
			usage(stdout);
			return 0;
		} else if (argv[a][0] != '-' && !cmd) {
			cmd = argv[a];
		} else if (argv[a][0] != '-' && !arg) {
			arg = argv[a];
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (!cmd)
		cmd = "status";
	if (interval < 10)
		interval = 10;
	err = shim_connect(sock, PROTO_KIND_CONTROL, timeout_ns, &c);
	if (err) {
		char why[512];

		/* The library's text names the path and what was wrong (e.g. whose daemon). */
		if (ice_last_error(why, sizeof(why)) <= 0) {
			char def[128] = "";

			ice_default_socket(def, sizeof(def));
			snprintf(why, sizeof(why), "%s: %s", sock ? sock : def, strerror(-err));
		}
		fprintf(stderr, "icectl: cannot reach icecached: %s\n", why);
		return 1;
	}
	if (strcmp(cmd, "watch")) {
		err = one(c, cmd, arg, json);
	} else {
		for (i = 0; count < 0 || i < count; i++) {
			struct timespec ts = { interval / 1000, (interval % 1000) * 1000000 };

			if (!json && isatty(1))
				printf("\033[H\033[2J");
			err = one(c, "status", NULL, json);
			if (err)
				break;
			if (count < 0 || i + 1 < count)
				nanosleep(&ts, NULL);
		}
	}
	ice_close(c);
	if (err) {
		fprintf(stderr, "icectl: %s: %s\n", cmd, strerror(-err));
		return 1;
	}
	return 0;
}
