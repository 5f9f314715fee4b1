/*
 * Other users, run as root with forked children that drop to nobody:
 * - a second user cannot use a client's segment: the child tries (1) the daemon's socket through
 *   the private directory, (2) the socket with the directory opened up, which the daemon must
 *   refuse by peer credentials, (3) the client's segment through /proc/<pid>/fd;
 * - a daemon run by nobody where root's client would look for its own (a directory nobody made
 *   first) is refused by the client, and the real daemon refuses that directory;
 * - a user allowed to connect (allow_uid) sees only its own clients and sequences in stats, and
 *   may not save or drop shared prefixes.
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

START_TEST(other_user_sees_only_its_own_sequences)
{
	static const struct ice_model_shape sh = { 1, 2, 1, 32, ICE_DTYPE_F32 };
	static const struct ice_budget bg = { 16, 16, 32, 0 };
	char sock[256], *dir = rt_tmpdir(), allow[64], mine[64], theirs[64];
	static char buf[1 << 16];
	struct {
		uint32_t seq, id;
	} kid;
	uint32_t sa;
	struct ice_ctx *c;
	int ready[2], go[2], st;
	pid_t d, child;
	char b;

	find_nobody();
	snprintf(allow, sizeof(allow), "allow_uid=%u", (unsigned)nobody);
	d = rt_daemon_start(dir, sock, sizeof(sock), allow);
	ck_assert_int_gt(d, 0);
	/* The way in for nobody: the daemon lets it (allow_uid), the file system too. */
	ck_assert_int_eq(chmod(dir, 0755), 0);
	ck_assert_int_eq(chmod(sock, 0777), 0);
	ck_assert_int_eq(ice_connect(sock, &c), 0);
	ck_assert_int_eq(ice_seq_open(c, &sh, &bg, &sa), 0);
	ck_assert_int_eq(pipe(ready), 0);
	ck_assert_int_eq(pipe(go), 0);
	child = fork();
	if (child == 0) {
		struct ice_ctx *x;
		int bad = 0;

		become_nobody();
		if (ice_connect(sock, &x) || ice_seq_open(x, &sh, &bg, &kid.seq))
			_exit(101);
		kid.id = shim_client_id(x);
		if (write(ready[1], &kid, sizeof(kid)) != sizeof(kid) || read(go[0], &b, 1) != 1)
			_exit(102);
		snprintf(mine, sizeof(mine), "seq.%u.owner %u\n", kid.seq, kid.id);
		snprintf(theirs, sizeof(theirs), "seq.%u.", sa);
		if (ice_seqs(x, buf, sizeof(buf)) < 0 || !strstr(buf, mine) ||
		    strstr(buf, theirs)) {
			fprintf(stderr, "nobody's seqs:\n%s", buf);
			bad |= 1;
		}
		snprintf(mine, sizeof(mine), "client.%u.uid %u\n", kid.id, (unsigned)nobody);
		snprintf(theirs, sizeof(theirs), "client.%u.", shim_client_id(c));
		if (ice_stats(x, buf, sizeof(buf)) < 0 || !strstr(buf, mine) ||
		    strstr(buf, theirs)) {
			fprintf(stderr, "nobody's stats (client lines):\n");
			for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n"))
				if (!strncmp(l, "client.", 7))
					fprintf(stderr, "%s\n", l);
			bad |= 2;
		}
		/* shared prefixes: another user's client may not replace or delete them */
		if (ice_prefix_save(x, kid.seq, "p1", NULL) != -EPERM ||
		    ice_prefix_drop(x, "p1") != -EPERM)
			bad |= 4;
		_exit(bad);
	}
	ck_assert_int_eq(read(ready[0], &kid, sizeof(kid)), sizeof(kid));
	/* Root (and the daemon's own user) sees everyone. */
	ck_assert_int_gt(ice_seqs(c, buf, sizeof(buf)), 0);
	snprintf(mine, sizeof(mine), "seq.%u.owner %u\n", sa, shim_client_id(c));
	snprintf(theirs, sizeof(theirs), "seq.%u.owner %u\n", kid.seq, kid.id);
	ck_assert_msg(strstr(buf, mine) && strstr(buf, theirs), "root's seqs: %s", buf);
	ck_assert_int_gt(ice_stats(c, buf, sizeof(buf)), 0);
	snprintf(theirs, sizeof(theirs), "client.%u.uid %u\n", kid.id, (unsigned)nobody);
	ck_assert_msg(strstr(buf, theirs) != NULL, "root's stats lack %s in:\n%s", theirs, buf);
	/* root's may (this daemon has no Redis tier to keep them) */
	ck_assert_int_eq(ice_prefix_drop(c, "p1"), -EOPNOTSUPP);
	ck_assert_int_eq(write(go[1], "g", 1), 1);
	ck_assert_int_eq(waitpid(child, &st, 0), child);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "nobody's view (status %d: 1 = others' sequences, 2 = others' clients, "
		      "4 = prefixes not refused)",
		      WEXITSTATUS(st));
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
	tcase_add_test(t, impostor_daemon_is_refused);
	tcase_add_test(t, other_user_sees_only_its_own_sequences);
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
