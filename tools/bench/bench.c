#include "bench.h"

#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

static char cmdline[4096];

void bench_set_cmdline(int argc, char **argv);

void bench_set_cmdline(int argc, char **argv)
{
	size_t len = 0;
	int i;

	cmdline[0] = '\0';
	for (i = 0; i < argc && len + 2 < sizeof(cmdline); i++) {
		int n = snprintf(cmdline + len, sizeof(cmdline) - len, "%s%s", i ? " " : "",
				 argv[i]);

		if (n < 0)
			break;
		len += (size_t)n;
	}
	if (len >= sizeof(cmdline))
		cmdline[sizeof(cmdline) - 1] = '\0';
}

const char *bench_cmdline(void)
{
	return cmdline;
}

void bench_json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void cpu_model(char *buf, size_t cap)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[512];

	snprintf(buf, cap, "unknown");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *colon = strchr(line, ':');

		if (strncmp(line, "model name", 10) == 0 && colon) {
			colon += 2;
			colon[strcspn(colon, "\n")] = '\0';
			snprintf(buf, cap, "%s", colon);
			break;
		}
	}
	fclose(f);
}

void bench_json_begin(FILE *f, const char *name)
{
	char model[256], when[64];
	struct utsname u;
	time_t now = time(NULL);

	cpu_model(model, sizeof(model));
	if (uname(&u) != 0)
		memset(&u, 0, sizeof(u));
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
	fprintf(f, "{\"bench\":");
	bench_json_str(f, name);
	fprintf(f, ",\"command\":");
	bench_json_str(f, cmdline);
	fprintf(f, ",\"machine\":{\"cpu\":");
	bench_json_str(f, model);
	fprintf(f, ",\"online_cpus\":%ld,\"kernel\":", sysconf(_SC_NPROCESSORS_ONLN));
	bench_json_str(f, u.release);
	fprintf(f, "},\"time\":");
	bench_json_str(f, when);
}
