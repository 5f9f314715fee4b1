/* icebench: dispatches to the benchmark subcommands the build registered. */
#include <stdio.h>
#include <string.h>

#include "bench.h"

void bench_set_cmdline(int argc, char **argv);

static struct bench_cmd *commands;

void bench_register(struct bench_cmd *cmd)
{
	struct bench_cmd **p = &commands;

	/* Keep them sorted by name so `icebench --help` is stable. */
	while (*p && strcmp((*p)->name, cmd->name) < 0)
		p = &(*p)->next;
	cmd->next = *p;
	*p = cmd;
}

static void usage(FILE *f)
{
	struct bench_cmd *c;

	fprintf(f, "usage: icebench <benchmark> [options]   (each takes --help and --json)\n\n");
	for (c = commands; c; c = c->next)
		fprintf(f, "  %-8s %s\n", c->name, c->help);
	if (!commands)
		fprintf(f, "  (no benchmarks built)\n");
}

int main(int argc, char **argv)
{
	struct bench_cmd *c;

	bench_set_cmdline(argc, argv);
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	for (c = commands; c; c = c->next)
		if (!strcmp(c->name, argv[1]))
			return c->main(argc - 1, argv + 1);
	fprintf(stderr, "icebench: unknown benchmark '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
