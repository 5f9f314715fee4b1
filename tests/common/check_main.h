/*
 * Shared main() for the Check test programs: runs the suites a file builds, prints Check's
 * summary, and maps the result to meson's exit codes (0 pass, 1 fail, 77 skip).
 * A file defines `static Suite *const *test_suites(void)` returning a NULL-ended array, and
 * may call check_skip("why") from main-time probes (for hardware it cannot find).
 */
#ifndef ICE_TEST_CHECK_MAIN_H
#define ICE_TEST_CHECK_MAIN_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_EXIT_SKIP 77

/* Runs the suites; fork is CK_FORK_GETENV (Check's default: $CK_FORK decides) or CK_NOFORK
 * for programs whose tests must share the process (CUDA does not survive a fork). */
static inline int check_run_suites_fork(Suite *const *suites, enum fork_status fork)
{
	SRunner *sr = NULL;
	int failed, i;

	for (i = 0; suites[i]; i++) {
		if (!sr)
			sr = srunner_create(suites[i]);
		else
			srunner_add_suite(sr, suites[i]);
	}
	if (!sr)
		return EXIT_FAILURE;
	srunner_set_fork_status(sr, fork);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

static inline int check_run_suites(Suite *const *suites)
{
	return check_run_suites_fork(suites, CK_FORK_GETENV);
}

static inline void check_skip(const char *why)
{
	printf("SKIP: %s\n", why);
	fflush(stdout);
	exit(CHECK_EXIT_SKIP);
}

/* True when $ICE_GPU_SKIP names this test case (the sanitizer runs leave some out). */
static inline int check_case_skipped(const char *name)
{
	const char *s = getenv("ICE_GPU_SKIP");

	return s && strstr(s, name) != NULL;
}

#endif
