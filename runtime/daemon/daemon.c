/*
 * icecached: hosts the engine for every inference process of the host.
 *   icecached [--config FILE] [--set key=value]... [--socket PATH]
 *   icecached --print-config [...]   print the effective config and exit
 *   icecached --check-config [...]   check it and exit (0 valid, 2 invalid)
 * Runs in the foreground; SIGTERM or SIGINT drains (clients finish queued requests) and exits 0.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "server.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: icecached [--config FILE] [--set key=value]... [--socket PATH]\n"
		   "                 [--print-config | --check-config]\n"
		   "Serves the IceCache engine on a unix socket (default: "
		   "$XDG_RUNTIME_DIR/icecache/icecached.sock\n"
		   "or /tmp/icecache-$UID/icecached.sock). SIGTERM drains and exits.\n"
		   "Config keys: see `icecached --print-config` or docs/ICECTL.md.\n");
}

static int load_file(struct rt_config *c, const char *path)
{
	char *text;
	long n;
	int line = 0, err;
	FILE *f = fopen(path, "r");

	if (!f)
		return -errno;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	if (n < 0 || n > (1 << 20)) {
		fclose(f);
		return -EFBIG;
	}
	text = calloc(1, (size_t)n + 1);
	if (!text || fread(text, 1, (size_t)n, f) != (size_t)n) {
		free(text);
		fclose(f);
		return -EIO;
	}
	fclose(f);
	err = config_parse(c, text, &line);
	free(text);
	if (err)
		fprintf(stderr, "icecached: %s:%d: %s\n", path, line, strerror(-err));
	return err;
}

int main(int argc, char **argv)
{
	struct rt_config cfg;
	struct server *srv;
	char buf[8192];
	int i, err, print = 0, check = 0;
	sigset_t ss;

	config_defaults(&cfg);
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "--print-config")) {
			print = 1;
		} else if (!strcmp(a, "--check-config")) {
			check = 1;
		} else if (!strcmp(a, "--config") && i + 1 < argc) {
			if (load_file(&cfg, argv[++i]))
				return 2;
		} else if (!strcmp(a, "--set") && i + 1 < argc) {
			err = config_set(&cfg, argv[++i]);
			if (err) {
				fprintf(stderr, "icecached: --set %s: %s\n", argv[i],
					strerror(-err));
				return 2;
			}
		} else if (!strcmp(a, "--socket") && i + 1 < argc) {
			char kv[160];

			snprintf(kv, sizeof(kv), "socket_path=%s", argv[++i]);
			err = config_set(&cfg, kv);
			if (err) {
				fprintf(stderr, "icecached: --socket: %s\n", strerror(-err));
				return 2;
			}
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (print) {
		err = config_print(&cfg, buf, sizeof(buf));
		if (err < 0)
			return 1;
		fputs(buf, stdout);
		return 0;
	}
	if (check)
		return 0;
	/* Signals arrive through the server's signalfd: block them in every thread. */
	sigemptyset(&ss);
	sigaddset(&ss, SIGTERM);
	sigaddset(&ss, SIGINT);
	pthread_sigmask(SIG_BLOCK, &ss, NULL);
	signal(SIGPIPE, SIG_IGN);
	err = server_new(&cfg, &srv);
	if (err) {
		fprintf(stderr, "icecached: cannot start: %s\n", strerror(-err));
		return 1;
	}
	err = server_run(srv);
	server_free(srv);
	if (err) {
		fprintf(stderr, "icecached: %s\n", strerror(-err));
		return 1;
	}
	return 0;
}
