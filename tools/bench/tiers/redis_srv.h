/*
 * Real redis-server processes for the Redis tier tests and icebench tiers: standalone or a 3-node cluster on
 * loopback, on ports picked here (free now, with the cluster bus port +10000 free too), in a
 * temp directory, stopped after. A server dies with the test process that started it
 * (PR_SET_PDEATHSIG), so a failed test leaves none behind.
 */
#ifndef ICE_TESTS_REDIS_SRV_H
#define ICE_TESTS_REDIS_SRV_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct rsrv {
	pid_t pid;
	int port;
	char dir[256];
};

/* redis-server on PATH? */
static inline int rs_installed(void)
{
	return system("redis-server --version >/dev/null 2>&1") == 0;
}

static inline int rs_port_free(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0), ok;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

static inline int rs_pick_port(void)
{
	static unsigned seed;
	int i;

	if (!seed)
		seed = (unsigned)getpid() ^ (unsigned)time(NULL);
	for (i = 0; i < 1000; i++) {
		int p = 20000 + (int)(rand_r(&seed) % 30000);

		if (rs_port_free(p) && rs_port_free(p + 10000))
			return p;
	}
	return -1;
}

static inline redisContext *rs_connect(int port)
{
	struct timeval tv = { 2, 0 };
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);

	if (c && c->err) {
		redisFree(c);
		return NULL;
	}
	if (c)
		redisSetTimeout(c, tv);
	return c;
}

/* One command's reply as an integer (INTEGER replies), -1 on anything else. */
static inline long long rs_int(int port, const char *cmd)
{
	redisContext *c = rs_connect(port);
	redisReply *r;
	long long v = -1;

	if (!c)
		return -1;
	r = redisCommand(c, cmd);
	if (r && r->type == REDIS_REPLY_INTEGER)
		v = r->integer;
	freeReplyObject(r);
	redisFree(c);
	return v;
}

/* Starts redis-server on s->port (0: pick one) in dir with the extra arguments (NULL-ended),
 * and waits until it answers PING. 0, or -1 when it did not come up. */
static inline int rs_start(struct rsrv *s, const char *dir, const char *const *extra)
{
	char port[16], log[320];
	const char *argv[40];
	int n = 0, i, tries;

	if (!s->port)
		s->port = rs_pick_port();
	snprintf(s->dir, sizeof(s->dir), "%s", dir);
	snprintf(port, sizeof(port), "%d", s->port);
	snprintf(log, sizeof(log), "%s/redis-%d.log", dir, s->port);
	argv[n++] = "redis-server";
	argv[n++] = "--port";
	argv[n++] = port;
	argv[n++] = "--bind";
	argv[n++] = "127.0.0.1";
	argv[n++] = "--dir";
	argv[n++] = dir;
	argv[n++] = "--save";
	argv[n++] = "";
	argv[n++] = "--appendonly";
	argv[n++] = "no";
	argv[n++] = "--daemonize";
	argv[n++] = "no";
	argv[n++] = "--logfile";
	argv[n++] = log;
	for (i = 0; extra && extra[i] && n < 38; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	s->pid = fork();
	if (s->pid < 0)
		return -1;
	if (s->pid == 0) {
		int fd = open("/dev/null", O_RDWR);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(fd, 1);
		dup2(fd, 2);
		execvp("redis-server", (char *const *)argv);
		_exit(127);
	}
	for (tries = 0; tries < 250; tries++) {
		redisContext *c;
		int st;

		if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
			s->pid = 0;
			return -1;
		}
		c = rs_connect(s->port);
		if (c) {
			redisReply *r = redisCommand(c, "PING");
			int ok = r && r->type == REDIS_REPLY_STATUS;

			freeReplyObject(r);
			redisFree(c);
			if (ok)
				return 0;
		}
		usleep(20000);
	}
	return -1;
}

static inline void rs_stop(struct rsrv *s)
{
	if (s->pid <= 0)
		return;
	kill(s->pid, SIGCONT);
	kill(s->pid, SIGKILL);
	waitpid(s->pid, NULL, 0);
	s->pid = 0;
}

/* A server of its own on a picked port; retries a few ports (another process may take one
 * between the check and the bind). */
static inline int rs_start_any(struct rsrv *s, const char *dir, const char *const *extra)
{
	int i;

	for (i = 0; i < 5; i++) {
		s->port = 0;
		if (rs_start(s, dir, extra) == 0)
			return 0;
	}
	return -1;
}

/* A 3-node cluster (masters only): slots split in three, nodes met, every node seeing
 * cluster_state:ok and all three masters. 0 or -1. */
static inline int rs_cluster_start(struct rsrv *s, const char *dir)
{
	static const char *const lo[3] = { "0", "5461", "10923" }, *const hi[3] = { "5460", "10922",
										    "16383" };
	int i, j, tries;

	for (i = 0; i < 3; i++) {
		char conf[64];
		const char *extra[] = { "--cluster-enabled",
					"yes",
					"--cluster-config-file",
					conf,
					"--cluster-node-timeout",
					"5000",
					NULL };

		s[i].port = 0;
		for (j = 0; j < 5; j++) {
			s[i].port = rs_pick_port();
			snprintf(conf, sizeof(conf), "nodes-%d.conf", s[i].port);
			if (rs_start(&s[i], dir, extra) == 0)
				break;
		}
		if (j == 5)
			return -1;
	}
	for (i = 0; i < 3; i++) {
		redisContext *c = rs_connect(s[i].port);
		redisReply *r;

		if (!c)
			return -1;
		r = redisCommand(c, "CLUSTER ADDSLOTSRANGE %s %s", lo[i], hi[i]);
		freeReplyObject(r);
		if (i == 0) {
			for (j = 1; j < 3; j++) {
				r = redisCommand(c, "CLUSTER MEET 127.0.0.1 %d", s[j].port);
				freeReplyObject(r);
			}
		}
		redisFree(c);
	}
	for (tries = 0; tries < 300; tries++) {
		int ok = 0;

		for (i = 0; i < 3; i++) {
			redisContext *c = rs_connect(s[i].port);
			redisReply *r = c ? redisCommand(c, "CLUSTER INFO") : NULL;

			if (r && r->type == REDIS_REPLY_STRING &&
			    strstr(r->str, "cluster_state:ok") &&
			    strstr(r->str, "cluster_known_nodes:3") &&
			    strstr(r->str, "cluster_size:3"))
				ok++;
			freeReplyObject(r);
			redisFree(c);
		}
		if (ok == 3)
			return 0;
		usleep(50000);
	}
	return -1;
}

#endif
