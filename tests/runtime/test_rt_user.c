/*
 * A second user cannot use a client's segment: run as root, a forked child drops to nobody and
 * tries (1) the daemon's socket through the private directory, (2) the socket with the directory
 * opened up, which the daemon must refuse by peer credentials, (3) the client's segment through
 * /proc/<pid>/fd. Skips (77) when not root, since only root can become another user.
 */
#include <grp.h>
#include <pwd.h>

#include "check_main.h"
#include "rt_util.h"
#include "shim.h"

START_TEST(other_user_cannot_reach_segment_or_daemon)
{
	char sock[256], path[128], *dir = rt_tmpdir();
	struct ice_ctx *c, *x;
	int segfd, st;
	pid_t d, child;
	uid_t nobody = 65534;
	gid_t nogroup = 65534;
	struct passwd *pw = getpwnam("nobody");

	if (pw) {
		nobody = pw->pw_uid;
		nogroup = pw->pw_gid;
	}
	d = rt_daemon_start(dir, sock, sizeof(sock), NULL);
	ck_assert_int_gt(d, 0);
	ck_assert_int_eq(ice_connect(sock, &c), 0);
	segfd = shim_segment_fd(c);
	ck_assert_int_ge(segfd, 0);
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)getpid(), segfd);
	child = fork();
	if (child == 0) {
		int fd, r = 0;

		closefrom(3);
		if (setgroups(0, NULL) || setgid(nogroup) || setuid(nobody))
			_exit(100);
		/* (1) the directory is 0700 root: no way to the socket */
		if (ice_connect(sock, &x) != -EACCES)
			r |= 1;
		/* (3) the segment through /proc */
		fd = open(path, O_RDWR);
		if (fd >= 0 || errno != EACCES)
			r |= 4;
		_exit(r);
	}
	ck_assert_int_eq(waitpid(child, &st, 0), child);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", WEXITSTATUS(st));
	/* (2) Open the directory and the socket to everyone: now only SO_PEERCRED stands. */
	ck_assert_int_eq(chmod(dir, 0755), 0);
	ck_assert_int_eq(chmod(sock, 0777), 0);
	child = fork();
	if (child == 0) {
		closefrom(3);
		if (setgroups(0, NULL) || setgid(nogroup) || setuid(nobody))
			_exit(100);
		st = ice_connect(sock, &x);
		if (st != -EPERM)
			fprintf(stderr, "connect as nobody: %s\n", strerror(-st));
		_exit(st == -EPERM ? 0 : 2);
	}
	ck_assert_int_eq(waitpid(child, &st, 0), child);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", WEXITSTATUS(st));
	/* The owner still works. */
	ck_assert_int_eq(ice_noop(c), 0);
	ice_close(c);
	ck_assert_int_eq(rt_daemon_stop(d), 0);
}
END_TEST

static Suite *user_suite(void)
{
	Suite *s = suite_create("runtime-user");
	TCase *t = tcase_create("user");

	tcase_set_timeout(t, 60);
	tcase_add_test(t, other_user_cannot_reach_segment_or_daemon);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	Suite *const suites[] = { user_suite(), NULL };

	if (geteuid() != 0)
		check_skip("needs root to switch to another user");
	return check_run_suites(suites);
}
