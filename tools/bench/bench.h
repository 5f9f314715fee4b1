/*
 * icebench: one binary, one subcommand per area (index, tiers, ring, gpu). Each area lives in
 * tools/bench/<area>/ and registers itself with BENCH_COMMAND; the dispatcher finds it by name.
 * Every benchmark prints a short table, and with --json writes one JSON object that starts with
 * bench_json_begin() (command line, machine, time) so results carry how they were produced.
 */
#ifndef ICE_BENCH_H
#define ICE_BENCH_H

#include <stdio.h>

struct bench_cmd {
	const char *name;
	const char *help;
	int (*main)(int argc, char **argv);
	struct bench_cmd *next;
};

void bench_register(struct bench_cmd *cmd);

#define BENCH_COMMAND(var, cmd_name, cmd_help, cmd_main)                      \
	static struct bench_cmd var = { cmd_name, cmd_help, cmd_main, NULL }; \
	__attribute__((constructor)) static void var##_register(void)         \
	{                                                                     \
		bench_register(&var);                                         \
	}

/* The full command line icebench was started with (argv joined by spaces). */
const char *bench_cmdline(void);

/*
 * Writes `{"bench":"<name>","command":"...","machine":{...},"time":"..."` with no closing
 * brace: the caller adds its own fields (`,"results":[...]`) and then `}`.
 */
void bench_json_begin(FILE *f, const char *name);

/* Writes s as a JSON string literal, quotes included. */
void bench_json_str(FILE *f, const char *s);

#endif
