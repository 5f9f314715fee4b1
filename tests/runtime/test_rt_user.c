/*
 * Other users, run as root with forked children that drop to nobody:
 * - a second user cannot use a client's segment: the child tries (1) the daemon's socket through
 *   the private directory, (2) the socket with the directory opened up, which the daemon must
 *   refuse by peer credentials, (3) the client's segment through /proc/<pid>/fd;
 * - a daemon run by nobody where root's client would look for its own (a directory nobody made
 *   first) is refused by the client, and the real daemon refuses that directory;
 * - a user allowed to connect (allow_uid) sees only its own clients and sequences in stats.
 * Skips (77) when not root, since only root can become another user.
 */
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>

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

static uid_t nobody = 65534;
static gid_t nogroup = 65534;

static void find_nobody(void)
{
	struct passwd *pw = getpwnam("nobody");

	if (pw) {
		nobody = pw->pw_uid;
		nogroup = pw->pw_gid;
	}
}

static void become_nobody(void)
{
	if (setgroups(0, NULL) || setgid(nogroup) || setuid(nobody))
		_exit(100);
}

/* ice_connect with this process's stderr captured into errpath. */
static int connect_capturing(const char *sock, const char *errpath, struct ice_ctx **ret)
{
	int saved, fd, r;

	fflush(stderr);
	saved = dup(2);
	fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	dup2(fd, 2);
	close(fd);
	r = ice_connect(sock, ret);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	return r;
}

START_TEST(impostor_daemon_is_refused)
{
	char base[64], idir[128], isock[160], real[128], out[128], bin[512], nb[32], msg[512];
	char *argv[] = { bin, (char *)"--set", (char *)"dram_bytes=67108864", NULL };
	struct ice_ctx *c;
	pid_t imp;
	int i, r, fd;

	find_nobody();
	snprintf(base, sizeof(base), "%s", rt_tmpdir());
	snprintf(idir, sizeof(idir), "%s/icecache", base);
	snprintf(isock, sizeof(isock), "%s/icecached.sock", idir);
	snprintf(real, sizeof(real), "%s/real", base);
	snprintf(out, sizeof(out), "%s/out", base);
	snprintf(nb, sizeof(nb), "uid %u", (unsigned)nobody);
	rt_bin("runtime/icecached", bin, sizeof(bin));
	/* base plays /tmp (sticky, everyone may create in it), and root's default directory is
	 * base/icecache: no XDG_RUNTIME_DIR of its own, as for root and for services. */
	ck_assert_int_eq(chmod(base, 01777), 0);
	setenv("XDG_RUNTIME_DIR", base, 1);
	unsetenv("ICECACHE_SOCKET");
	unsetenv("ICECACHE_DAEMON_UID");
	/* nobody gets there first and serves a real icecached from it. */
	imp = fork();
	if (imp == 0) {
		closefrom(3);
		become_nobody();
		if (mkdir(idir, 0700))
			_exit(101);
		execl(bin, bin, "--socket", isock, "--set", "dram_bytes=67108864", (char *)NULL);
		_exit(127);
	}
	for (i = 0; i < 1000 && (fd = rt_raw_connect(isock)) < 0; i++)
		usleep(10000);
	ck_assert_int_ge(fd, 0);
	close(fd);
	/* (a) The default path leads into nobody's directory: refused before connecting. */
	r = connect_capturing(NULL, out, &c);
	if (!r)
		ice_close(c);
	ck_assert_msg(r == -EPERM, "root's default connect to nobody's daemon: %s",
		      r ? strerror(-r) : "connected");
	ck_assert_msg(strstr(rt_slurp(out), idir) && strstr(rt_slurp(out), nb),
		      "no message naming %s and its owner: %s", idir, rt_slurp(out));
	printf("%s", rt_slurp(out));
	ck_assert_int_gt(ice_last_error(msg, sizeof(msg)), 0);
	ck_assert_msg(strstr(msg, idir) != NULL, "ice_last_error: %s", msg);
	/* (b) Named explicitly, it is still nobody's daemon: refused by its peer credentials. */
	r = connect_capturing(isock, out, &c);
	if (!r)
		ice_close(c);
	ck_assert_msg(r == -EPERM, "root's connect to %s (nobody's daemon): %s", isock,
		      r ? strerror(-r) : "connected");
	ck_assert_msg(strstr(rt_slurp(out), isock) && strstr(rt_slurp(out), nb),
		      "no message naming %s and the daemon's uid: %s", isock, rt_slurp(out));
	printf("%s", rt_slurp(out));
	/* (c) Trusted by name, the same daemon is accepted. */
	snprintf(nb, sizeof(nb), "%u", (unsigned)nobody);
	setenv("ICECACHE_DAEMON_UID", nb, 1);
	ck_assert_int_eq(ice_connect(isock, &c), 0);
	ck_assert_int_eq(ice_last_error(msg, sizeof(msg)), 0);
	ck_assert_int_eq(ice_noop(c), 0);
	ice_close(c);
	unsetenv("ICECACHE_DAEMON_UID");
	/* (d) The real daemon refuses nobody's directory and says which and why. */
	r = rt_run(argv, out, 5000, NULL);
	ck_assert_msg(r == 1 && strstr(rt_slurp(out), idir) && strstr(rt_slurp(out), "owned by"),
		      "root's icecached on the default path: status %d, said: %s", r,
		      rt_slurp(out));
	printf("%s", rt_slurp(out));
	kill(imp, SIGTERM);
	ck_assert_int_eq(waitpid(imp, &r, 0), imp);
	/* (e) A symbolic link in its place (to a private directory of root's, even) is refused by
	 * both sides too: whoever made the link chooses where it points. */
	rmdir(idir);
	ck_assert_int_eq(mkdir(real, 0700), 0);
	ck_assert_int_eq(symlink(real, idir), 0);
	r = connect_capturing(NULL, out, &c);
	if (!r)
		ice_close(c);
	ck_assert_msg(r == -EPERM, "default connect through a symlinked directory: %s",
		      r ? strerror(-r) : "connected");
	r = rt_run(argv, out, 5000, NULL);
	ck_assert_msg(r == 1 && strstr(rt_slurp(out), idir) && strstr(rt_slurp(out), "symbolic"),
		      "icecached on a symlinked default directory: status %d, said: %s", r,
		      rt_slurp(out));
	unsetenv("XDG_RUNTIME_DIR");
}
END_TEST

static Suite *user_suite(void)
{
	Suite *s = suite_create("runtime-user");
	TCase *t = tcase_create("user");

	tcase_set_timeout(t, 60);
	tcase_add_test(t, other_user_cannot_reach_segment_or_daemon);
	tcase_add_test(t, impostor_daemon_is_refused);
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
