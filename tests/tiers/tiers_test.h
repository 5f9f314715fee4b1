/* Helpers shared by the tiers tests: temp directories on a real filesystem, page patterns. */
#ifndef ICE_TESTS_TIERS_TEST_H
#define ICE_TESTS_TIERS_TEST_H

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

/* A fresh directory under $TMPDIR or /var/tmp (real filesystems, so O_DIRECT works; /dev/shm
 * would be tmpfs). */
static inline void tt_mkdtemp(char *buf, size_t cap)
{
	const char *base = getenv("TMPDIR");

	if (!base || !*base)
		base = "/var/tmp";
	snprintf(buf, cap, "%s/icetiers-XXXXXX", base);
	if (!mkdtemp(buf)) {
		perror("mkdtemp");
		abort();
	}
}

static inline int tt_rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	return type == FTW_DP ? rmdir(path) : unlink(path);
}

/* Removes a temp tree (depth first, symlinks not followed). */
static inline void tt_rmtree(const char *dir)
{
	nftw(dir, tt_rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* Removes the files of a flat temp dir, then the dir. */
static inline void tt_rmdir(const char *dir)
{
	char path[PATH_MAX];
	struct dirent *de;
	DIR *d = opendir(dir);

	if (!d)
		return;
	while ((de = readdir(d)) != NULL) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) < (int)sizeof(path))
			unlink(path);
	}
	closedir(d);
	rmdir(dir);
}

/* Does this directory's filesystem take O_DIRECT (open and an aligned write)? */
static inline int tt_direct_ok(const char *dir)
{
	char path[PATH_MAX];
	void *b = NULL;
	int fd, ok;

	if (snprintf(path, sizeof(path), "%s/.direct-probe", dir) >= (int)sizeof(path))
		return 0;
	fd = open(path, O_RDWR | O_CREAT | O_DIRECT, 0600);
	if (fd < 0)
		return 0;
	ok = posix_memalign(&b, 4096, 4096) == 0 && memset(b, 0, 4096) &&
	     pwrite(fd, b, 4096, 0) == 4096;
	free(b);
	close(fd);
	unlink(path);
	return ok;
}

/* Deterministic payload for (key, version): any mix-up of pages or versions shows. */
static inline void tt_pattern(void *buf, size_t len, const struct store_key *k, uint64_t version)
{
	uint64_t x = k->seq * 0x9E3779B97F4A7C15ull ^ ((uint64_t)k->layer << 48) ^
		     ((uint64_t)k->head << 32) ^ k->page ^ (version << 20) ^ 0x5bd1e995u;
	uint8_t *p = buf;
	size_t i;

	for (i = 0; i < len; i++) {
		if (i % 8 == 0) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
		}
		p[i] = (uint8_t)(x >> (8 * (i % 8)));
	}
}

static inline int tt_check_pattern(const void *buf, size_t len, const struct store_key *k,
				   uint64_t version, void *scratch)
{
	tt_pattern(scratch, len, k, version);
	return memcmp(buf, scratch, len) == 0;
}

/* Peak resident set (VmHWM) in bytes, from /proc/self/status; 0 if unknown. */
static inline uint64_t tt_vmhwm(void)
{
	char line[256];
	uint64_t kb = 0;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmHWM: %" SCNu64 " kB", &kb) == 1)
			break;
	fclose(f);
	return kb * 1024;
}

#endif
