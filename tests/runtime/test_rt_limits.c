/*
 * Fault tests of the daemon's edges, where a careless or hostile local user pushes: a socket
 * path that names someone's file, connections that never say hello, a daemon that stops
 * answering (SIGSTOP), and an NVMe tier file larger than its filesystem.
 */
#include <dirent.h>
#include <poll.h>
#include <sys/statvfs.h>

#include "check_main.h"
#include "clock.h"
#include "proto.h"
#include "rt_util.h"
#include "shim.h"
#include "stats.h"

static void write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static long ms_since(uint64_t t0)
{
	return (long)((clock_now_ns() - t0) / 1000000);
}

START_TEST(socket_path_that_is_not_a_socket_is_left_alone)
{
	char bin[512], dir[64], path[128], lnk[128], out[128], sock[256], stale[64];
	char *argv[] = {
		bin, (char *)"--socket", path, (char *)"--set", (char *)"dram_bytes=67108864", NULL
	};
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	pid_t d;
	int rc, fd;

	rt_bin("runtime/icecached", bin, sizeof(bin));
	snprintf(dir, sizeof(dir), "%s", rt_tmpdir());
	snprintf(path, sizeof(path), "%s/icecached.sock", dir);
	snprintf(lnk, sizeof(lnk), "%s/link.sock", dir);
	snprintf(out, sizeof(out), "%s/out", dir);
	write_text(path, "precious\n");
	rc = rt_run(argv, out, 3000, NULL);
	ck_assert_msg(rc == 1,
		      "icecached --socket <regular file>: status %d (-1: it started "
		      "serving there); it said: %s",
		      rc, rt_slurp(out));
	ck_assert_str_eq(rt_slurp(path), "precious\n");
	ck_assert_msg(strstr(rt_slurp(out), path) && strstr(rt_slurp(out), "not a socket"),
		      "no message naming %s: %s", path, rt_slurp(out));
	/* A symbolic link (here to that file) is not a stale socket either: link and file stay. */
	ck_assert_int_eq(symlink(path, lnk), 0);
	argv[2] = lnk;
	rc = rt_run(argv, out, 3000, NULL);
	ck_assert_msg(rc == 1, "icecached --socket <symlink>: status %d; it said: %s", rc,
		      rt_slurp(out));
	ck_assert_int_eq(lstat(lnk, &st), 0);
	ck_assert(S_ISLNK(st.st_mode));
	ck_assert_str_eq(rt_slurp(path), "precious\n");
	/* A stale socket of ours (a daemon that died without unlinking) is still replaced. */
	snprintf(stale, sizeof(stale), "%s", rt_tmpdir());
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/icecached.sock", stale);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	d = rt_daemon_start(stale, sock, sizeof(sock), NULL);
	ck_assert_int_gt(d, 0);
	ck_assert_int_eq(rt_daemon_stop(d), 0);
}
END_TEST

#define SILENT 20

START_TEST(silent_connections_do_not_delay_a_handshake)
{
	char sock[256], buf[4096];
	int fds[SILENT], i, open_n;
	struct ice_ctx *c;
	uint64_t t0, v = 0;
	long took, closed_ms = 0;
	pid_t d;

	d = rt_daemon_start(rt_tmpdir(), sock, sizeof(sock), NULL);
	ck_assert_int_gt(d, 0);
	for (i = 0; i < SILENT; i++) {
		fds[i] = rt_raw_connect(sock);
		ck_assert_int_ge(fds[i], 0);
	}
	t0 = clock_now_ns();
	ck_assert_int_eq(ice_connect(sock, &c), 0);
	took = ms_since(t0);
	/* A bound on correctness, not a benchmark: the accept path must not wait on anyone. */
	ck_assert_msg(took < 1000, "ice_connect behind %d silent connections took %ld ms", SILENT,
		      took);
	ck_assert_int_eq(ice_noop(c), 0);
	/* The silent ones get a -ETIMEDOUT welcome and are closed once handshake_ms (2 s by
	 * default) has passed, not before. */
	for (open_n = SILENT; open_n && ms_since(t0) < 6000;) {
		struct pollfd p[SILENT];

		for (i = 0; i < SILENT; i++)
			p[i] = (struct pollfd){ fds[i], POLLIN, 0 };
		if (poll(p, SILENT, 100) <= 0)
			continue;
		for (i = 0; i < SILENT; i++) {
			struct proto_welcome w;
			ssize_t n;

			if (fds[i] < 0 || !p[i].revents)
				continue;
			n = recv(fds[i], &w, sizeof(w), MSG_DONTWAIT);
			if (n == sizeof(w)) {
				ck_assert_int_eq(w.status, -ETIMEDOUT);
				continue;
			}
			ck_assert_int_eq(n, 0);
			close(fds[i]);
			fds[i] = -1;
			open_n--;
			closed_ms = ms_since(t0);
			ck_assert_msg(closed_ms >= 1500,
				      "a silent connection was closed after "
				      "%ld ms, before the 2 s deadline",
				      closed_ms);
		}
	}
	ck_assert_msg(!open_n, "%d silent connections still open after %ld ms", open_n,
		      ms_since(t0));
	ck_assert_int_gt(ice_stats(c, buf, sizeof(buf)), 0);
	ck_assert_int_eq(stats_find_u64(buf, "daemon.handshake_timeouts", &v), 0);
	ck_assert_uint_eq(v, SILENT);
	printf("handshake behind %d silent connections: %ld ms; they were closed by %ld ms\n",
	       SILENT, took, closed_ms);
	ice_close(c);
	ck_assert_int_eq(rt_daemon_stop(d), 0);
}
END_TEST

/* Waits for a child up to ms; its exit status, or -1 when it had to be killed. */
static int wait_child(pid_t pid, int ms)
{
	int st, i;

	for (i = 0; i < ms; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		usleep(1000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

/* Whether every thread of pid is in the stopped state ('T' in /proc/pid/task/TID/stat)
 * within ms. */
static int wait_stopped(pid_t pid, long ms)
{
	char path[64], buf[512];
	long waited;

	for (waited = 0; waited <= ms; waited += 5) {
		DIR *dir;
		struct dirent *de;
		int all = 1, any = 0;

		snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
		dir = opendir(path);
		if (!dir)
			return 0;
		while ((de = readdir(dir))) {
			FILE *f;
			char *p;

			if (de->d_name[0] == '.')
				continue;
			snprintf(buf, sizeof(buf), "/proc/%d/task/%s/stat", (int)pid, de->d_name);
			f = fopen(buf, "r");
			if (!f)
				continue;
			if (!fgets(buf, sizeof(buf), f))
				buf[0] = '\0';
			fclose(f);
			p = strrchr(buf, ')'); /* the state follows the command name */
			any = 1;
			if (!p || p[1] != ' ' || (p[2] != 'T' && p[2] != 't'))
				all = 0;
		}
		closedir(dir);
		if (any && all)
			return 1;
		usleep(5000);
	}
	return 0;
}

START_TEST(stopped_daemon_times_out_connect_requests_and_icectl)
{
	char sock[256], bin[512], out[300], why[2048] = "";
	char *argv[] = { bin,           (char *)"--socket", sock, (char *)"--timeout",
			 (char *)"0.3", (char *)"status",   NULL };
	int ready[2], go[2], rc;
	long took;
	pid_t d, child;
	char b;

	rt_bin("tools/icectl/icectl", bin, sizeof(bin));
	d = rt_daemon_start(rt_tmpdir(), sock, sizeof(sock), NULL);
	ck_assert_int_gt(d, 0);
	snprintf(out, sizeof(out), "%s.out", sock);
	ck_assert_int_eq(pipe(ready), 0);
	ck_assert_int_eq(pipe(go), 0);
	child = fork();
	if (child == 0) {
		struct ice_ctx *c, *x;
		uint64_t t0;
		int r, bad = 0;

		setenv("ICECACHE_TIMEOUT_MS", "300", 1);
		if (ice_connect(sock, &c))
			_exit(100);
		setvbuf(stdout, NULL, _IONBF, 0);
		if (write(ready[1], "r", 1) != 1 || read(go[0], &b, 1) != 1)
			_exit(101);
		/* A request on the established connection... */
		t0 = clock_now_ns();
		r = ice_noop(c);
		printf("stopped daemon: ice_noop %s after %ld ms\n", strerror(-r), ms_since(t0));
		if (r != -ETIMEDOUT || ms_since(t0) > 2000)
			bad |= 1;
		/* ...leaves the context failed: a late completion must not answer the next. */
		if (ice_noop(c) != -EPIPE)
			bad |= 2;
		/* ...and a new connection. */
		t0 = clock_now_ns();
		r = ice_connect(sock, &x);
		printf("stopped daemon: ice_connect %s after %ld ms\n", strerror(-r), ms_since(t0));
		if (r != -ETIMEDOUT || ms_since(t0) > 2000)
			bad |= 4;
		ice_close(c);
		_exit(bad);
	}
	ck_assert_int_eq(read(ready[0], &b, 1), 1);
	ck_assert_int_eq(kill(d, SIGSTOP), 0);
	/* kill() returns before the stop lands: a worker spinning on the ring could still answer
	 * the child's first request. Wait until the kernel says the daemon is stopped. */
	ck_assert_msg(wait_stopped(d, 2000), "daemon %d not stopped 2 s after SIGSTOP", (int)d);
	ck_assert_int_eq(write(go[1], "g", 1), 1);
	rc = wait_child(child, 6000);
	if (rc)
		snprintf(why, sizeof(why), "client with ICECACHE_TIMEOUT_MS=300: %s (status %d); ",
			 rc < 0 ? "still blocked 6 s after SIGSTOP" : "wrong answers", rc);
	rc = rt_run(argv, out, 4000, &took);
	printf("stopped daemon: icectl --timeout 0.3 exit %d after %ld ms: %s", rc, took,
	       rt_slurp(out));
	if (rc != 1 || !strstr(rt_slurp(out), "timed out"))
		snprintf(why + strlen(why), sizeof(why) - strlen(why),
			 "icectl --timeout 0.3: status %d after %ld ms (-1: still waiting), "
			 "said: %.1000s",
			 rc, took, rt_slurp(out));
	ck_assert_int_eq(kill(d, SIGCONT), 0);
	ck_assert_msg(!why[0], "%s", why);
	ck_assert_int_eq(rt_daemon_stop(d), 0);
}
END_TEST

START_TEST(nvme_tier_larger_than_its_filesystem_is_refused)
{
	char bin[512], dir[64], sock[128], tier[128], keep[128], out[128], pv[160], bv[64];
	char *argv[] = { bin,
			 (char *)"--socket",
			 sock,
			 (char *)"--set",
			 (char *)"dram_bytes=67108864",
			 (char *)"--set",
			 pv,
			 (char *)"--set",
			 bv,
			 NULL };
	struct statvfs vs;
	struct stat st;
	uint64_t free_b, want;
	int rc;

	rt_bin("runtime/icecached", bin, sizeof(bin));
	snprintf(dir, sizeof(dir), "%s", rt_tmpdir());
	snprintf(sock, sizeof(sock), "%s/icecached.sock", dir);
	snprintf(tier, sizeof(tier), "%s/tier", dir);
	snprintf(keep, sizeof(keep), "%s/keep", dir);
	snprintf(out, sizeof(out), "%s/out", dir);
	ck_assert_int_eq(statvfs(dir, &vs), 0);
	/* More than even root may take (reserved blocks included), so that only the daemon's own
	 * check stands between this request and a full disk: without it the daemon would allocate
	 * all that is free before it failed. */
	free_b = (uint64_t)(vs.f_bfree > vs.f_bavail ? vs.f_bfree : vs.f_bavail) * vs.f_frsize;
	want = (free_b + (256ull << 20) + (1ull << 20) - 1) & ~((1ull << 20) - 1);
	if (want > (1ull << 44)) {
		printf("skipped: %s has more free space than nvme_bytes may ask for\n", dir);
		return;
	}
	snprintf(pv, sizeof(pv), "nvme_path=%s", tier);
	snprintf(bv, sizeof(bv), "nvme_bytes=%llu", (unsigned long long)want);
	rc = rt_run(argv, out, 10000, NULL);
	if (lstat(tier, &st) == 0) {
		unlink(tier);
		ck_abort_msg("icecached (status %d) left a %lld-byte tier file (%lld bytes "
			     "allocated); it said: %s",
			     rc, (long long)st.st_size, (long long)st.st_blocks * 512,
			     rt_slurp(out));
	}
	ck_assert_msg(rc == 1, "status %d (-1: it started); it said: %s", rc, rt_slurp(out));
	ck_assert_msg(strstr(rt_slurp(out), tier) && strstr(rt_slurp(out), "free"),
		      "no message naming %s and its free space: %s", tier, rt_slurp(out));
	ck_assert_int_ne(access(sock, F_OK), 0);
	/* A file that was there before is left as it was. */
	write_text(keep, "keep me\n");
	snprintf(pv, sizeof(pv), "nvme_path=%s", keep);
	rc = rt_run(argv, out, 10000, NULL);
	ck_assert_msg(rc == 1, "status %d; it said: %s", rc, rt_slurp(out));
	ck_assert_int_eq(stat(keep, &st), 0);
	ck_assert_int_eq(st.st_size, 8);
	ck_assert_str_eq(rt_slurp(keep), "keep me\n");
}
END_TEST

static Suite *limits_suite(void)
{
	Suite *s = suite_create("runtime-limits");
	TCase *t = tcase_create("limits");

	tcase_set_timeout(t, 60);
	tcase_add_test(t, socket_path_that_is_not_a_socket_is_left_alone);
	tcase_add_test(t, silent_connections_do_not_delay_a_handshake);
	tcase_add_test(t, stopped_daemon_times_out_connect_requests_and_icectl);
	tcase_add_test(t, nvme_tier_larger_than_its_filesystem_is_refused);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	Suite *const suites[] = { limits_suite(), NULL };

	return check_run_suites(suites);
}
