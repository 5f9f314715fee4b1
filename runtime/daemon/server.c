#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "clock.h"
#include "engine.h"
#include "ops.h"
#include "segment.h"

#define WAIT_SLICE_NS 100000000ull /* a sleeping client thread re-checks stop flags this often */

struct client {
	struct server *srv;
	uint32_t id;
	uint32_t kind;
	pid_t pid;
	uid_t uid;
	int sock;
	struct segment seg;
	struct ops_ctx oc;
	pthread_t thr;
	int dead;	/* main -> thread: the peer is gone, stop now */
	int exited;	/* thread -> main: ready to be joined */
	uint64_t ops;
	uint64_t started_ns;
	const char *why; /* why the thread stopped */
};

struct server {
	struct rt_config cfg;
	char path[108];
	int lfd, efd, sigfd, reapfd;
	struct engine *eng;
	struct ops_stats st;
	pthread_mutex_t lock;	/* the client table, for host_stats readers */
	struct client **cl;
	uint32_t nclients, ncontrol;
	uint32_t next_id;
	int stopping;
	uint64_t stop_deadline_ns;
	uint64_t start_ns;
	uint64_t accepted, refused, died, bad_rings;
};

const char *server_socket_path(const struct server *srv)
{
	return srv->path;
}

/* The default directory must be ours and private; anything else is someone's trap. */
static int private_dir(const char *dir)
{
	struct stat st;

	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	if (lstat(dir, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077))
		return -EPERM;
	return 0;
}

static int bind_socket(struct server *srv)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char dir[108];
	int fd, err;

	if (srv->cfg.socket_path[0]) {
		snprintf(srv->path, sizeof(srv->path), "%s", srv->cfg.socket_path);
	} else {
		err = config_default_socket(srv->path, sizeof(srv->path));
		if (err)
			return err;
		snprintf(dir, sizeof(dir), "%s", srv->path);
		err = private_dir(dirname(dir));
		if (err)
			return err;
	}
	if (strlen(srv->path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, srv->path, strlen(srv->path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* A socket file nobody answers on is left over from a dead daemon: replace it. One that
	 * answers belongs to a live daemon: refuse to steal it. */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		close(fd);
		return -EADDRINUSE;
	}
	close(fd);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	unlink(srv->path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	srv->lfd = fd;
	return 0;
}

static void host_stats(void *arg, struct stats_buf *sb)
{
	struct server *srv = arg;
	uint32_t i;

	pthread_mutex_lock(&srv->lock);
	stats_put_u64(sb, "daemon", "pid", (uint64_t)getpid());
	stats_put_str(sb, "daemon", "socket", srv->path);
	stats_put_u64(sb, "daemon", "uptime_ns", clock_now_ns() - srv->start_ns);
	stats_put_u64(sb, "daemon", "clients", srv->nclients);
	stats_put_u64(sb, "daemon", "control_clients", srv->ncontrol);
	stats_put_u64(sb, "daemon", "accepted", srv->accepted);
	stats_put_u64(sb, "daemon", "refused", srv->refused);
	stats_put_u64(sb, "daemon", "clients_died", srv->died);
	stats_put_u64(sb, "daemon", "bad_rings", srv->bad_rings);
	for (i = 0; i < srv->cfg.max_clients; i++) {
		struct client *c = srv->cl[i];
		char pfx[32];

		if (!c || c->kind != PROTO_KIND_CLIENT)
			continue;
		snprintf(pfx, sizeof(pfx), "client.%u", c->id);
		stats_put_u64(sb, pfx, "pid", (uint64_t)c->pid);
		stats_put_u64(sb, pfx, "uid", (uint64_t)c->uid);
		stats_put_u64(sb, pfx, "ops", __atomic_load_n(&c->ops, __ATOMIC_RELAXED));
		engine_owner_stats(srv->eng, c->id, pfx, sb); /* its use against its quotas */
	}
	pthread_mutex_unlock(&srv->lock);
}

static int should_stop(struct client *c)
{
	struct server *srv = c->srv;

	if (__atomic_load_n(&c->dead, __ATOMIC_ACQUIRE)) {
		c->why = "peer gone";
		return 1;
	}
	if (__atomic_load_n(&srv->stopping, __ATOMIC_ACQUIRE) &&
	    clock_now_ns() >= srv->stop_deadline_ns) {
		c->why = "drain deadline";
		return 1;
	}
	return 0;
}

static void *client_main(void *arg)
{
	struct client *c = arg;
	struct server *srv = c->srv;
	struct ring_sqe sqe;
	struct ring_cqe cqe;
	uint64_t one = 1;
	int err = 0;

	c->why = "stop";
	for (;;) {
		const void *e;
		void *slot;

		if (should_stop(c))
			break;
		e = ring_peek(&c->seg.sq, &err);
		if (err) {
			c->why = "bad submission ring";
			__atomic_add_fetch(&srv->bad_rings, 1, __ATOMIC_RELAXED);
			break;
		}
		if (!e) {
			/* Drained: on shutdown an empty ring means this client is done. */
			if (__atomic_load_n(&srv->stopping, __ATOMIC_ACQUIRE)) {
				c->why = "drained";
				break;
			}
			ring_wait_ready(&c->seg.sq, srv->cfg.spin_ns, WAIT_SLICE_NS);
			continue;
		}
		/* One private copy: what is checked is what is used. */
		memcpy(&sqe, e, sizeof(sqe));
		ring_consume(&c->seg.sq);
		ops_dispatch(&c->oc, &sqe, &cqe);
		__atomic_add_fetch(&c->ops, 1, __ATOMIC_RELAXED);
		while (!(slot = ring_produce_slot(&c->seg.cq, &err))) {
			if (err || should_stop(c))
				break;
			/* The client is not reaping completions: wait for it, only this thread. */
			ring_wait_space(&c->seg.cq, 0, WAIT_SLICE_NS / 10);
		}
		if (!slot) {
			if (err) {
				c->why = "bad completion ring";
				__atomic_add_fetch(&srv->bad_rings, 1, __ATOMIC_RELAXED);
			}
			break;
		}
		memcpy(slot, &cqe, sizeof(cqe));
		ring_produce_commit(&c->seg.cq);
	}
	engine_drop_owner(srv->eng, c->id);
	__atomic_store_n(&c->seg.hdr->closed, 1, __ATOMIC_RELEASE);
	ring_kick(&c->seg.cq);
	__atomic_store_n(&c->exited, 1, __ATOMIC_RELEASE);
	if (write(srv->reapfd, &one, sizeof(one)) < 0) {
		/* eventfd cannot overflow here; nothing else to do */
	}
	return NULL;
}

static int send_welcome(int fd, const struct proto_welcome *w, int segfd)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { (void *)w, sizeof(*w) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (segfd >= 0) {
		struct cmsghdr *cm;

		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &segfd, sizeof(int));
	}
	n = sendmsg(fd, &mh, MSG_NOSIGNAL);
	if (n < 0)
		return -errno;
	return n == sizeof(*w) ? 0 : -EPROTO;
}

static void refuse(struct server *srv, int fd, int status)
{
	struct proto_welcome w = { PROTO_MAGIC, PROTO_VERSION, status, 0, 0 };

	send_welcome(fd, &w, -1);
	srv->refused++;
	close(fd);
}

static void client_free(struct client *c)
{
	if (!c)
		return;
	seg_close(&c->seg);
	engine_ws_done(&c->oc.ws);
	engine_ws_done(&c->oc.ws_refs);
	if (c->sock >= 0)
		close(c->sock);
	free(c);
}

static void accept_one(struct server *srv)
{
	struct timeval tv = { 0, 200000 };
	struct proto_welcome w = { PROTO_MAGIC, PROTO_VERSION, 0, 0, 0 };
	struct proto_hello h;
	struct seg_layout lay;
	struct ucred cr;
	socklen_t crlen = sizeof(cr);
	struct epoll_event ev;
	struct client *c;
	uint32_t i;
	ssize_t n;
	int fd, err;

	fd = accept4(srv->lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0) {
		refuse(srv, fd, -EPERM);
		return;
	}
	if (cr.uid != getuid() && cr.uid != 0 && (uint64_t)cr.uid != srv->cfg.allow_uid) {
		refuse(srv, fd, -EPERM);
		return;
	}
	/* A client that connects and says nothing must not stall the accept loop. */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	n = recv(fd, &h, sizeof(h), MSG_WAITALL);
	if (n != sizeof(h) || h.magic != PROTO_MAGIC || h.version != PROTO_VERSION ||
	    h.kind > PROTO_KIND_CONTROL || h.reserved) {
		refuse(srv, fd, -EPROTO);
		return;
	}
	if (srv->stopping) {
		refuse(srv, fd, -ESHUTDOWN);
		return;
	}
	for (i = 0; i < srv->cfg.max_clients; i++)
		if (!srv->cl[i])
			break;
	if (i == srv->cfg.max_clients) {
		refuse(srv, fd, -EUSERS);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		refuse(srv, fd, -ENOMEM);
		return;
	}
	c->srv = srv;
	c->sock = fd;
	c->seg.fd = -1;
	c->id = ++srv->next_id;
	c->kind = h.kind;
	c->pid = cr.pid;
	c->uid = cr.uid;
	c->started_ns = clock_now_ns();
	/* icectl needs only small text answers: give control clients a small arena. */
	err = seg_layout((uint32_t)srv->cfg.sq_entries, (uint32_t)srv->cfg.cq_entries,
			 h.kind == PROTO_KIND_CONTROL ? (1u << 20) : srv->cfg.arena_bytes, &lay);
	if (!err)
		err = seg_create(&c->seg, &lay, c->id);
	if (err)
		goto out_refuse;
	c->oc.eng = srv->eng;
	c->oc.owner = c->id;
	c->oc.arena = c->seg.arena;
	c->oc.arena_bytes = lay.arena_bytes;
	c->oc.cfg = &srv->cfg;
	c->oc.st = &srv->st;
	c->oc.host_stats = host_stats;
	c->oc.host_arg = srv;
	w.client_id = c->id;
	w.seg_bytes = lay.total_bytes;
	err = send_welcome(fd, &w, c->seg.fd);
	if (err)
		goto out_free;
	/* The daemon keeps its mapping; the fd itself is no longer needed here. */
	close(c->seg.fd);
	c->seg.fd = -1;
	ev.events = EPOLLRDHUP | EPOLLHUP | EPOLLIN;
	ev.data.ptr = c;
	if (epoll_ctl(srv->efd, EPOLL_CTL_ADD, fd, &ev) < 0)
		goto out_free;
	err = pthread_create(&c->thr, NULL, client_main, c);
	if (err) {
		epoll_ctl(srv->efd, EPOLL_CTL_DEL, fd, NULL);
		goto out_free;
	}
	pthread_mutex_lock(&srv->lock);
	srv->cl[i] = c;
	if (c->kind == PROTO_KIND_CONTROL)
		srv->ncontrol++;
	else
		srv->nclients++;
	srv->accepted++;
	pthread_mutex_unlock(&srv->lock);
	return;
out_refuse:
	c->sock = -1;
	client_free(c);
	refuse(srv, fd, err);
	return;
out_free:
	client_free(c);
	srv->refused++;
}

/* Main thread: joins client threads that finished and frees their slots. */
static void reap(struct server *srv)
{
	uint32_t i;

	for (i = 0; i < srv->cfg.max_clients; i++) {
		struct client *c = srv->cl[i];

		if (!c || !__atomic_load_n(&c->exited, __ATOMIC_ACQUIRE))
			continue;
		pthread_join(c->thr, NULL);
		epoll_ctl(srv->efd, EPOLL_CTL_DEL, c->sock, NULL);
		pthread_mutex_lock(&srv->lock);
		srv->cl[i] = NULL;
		if (c->kind == PROTO_KIND_CONTROL)
			srv->ncontrol--;
		else
			srv->nclients--;
		if (__atomic_load_n(&c->dead, __ATOMIC_RELAXED))
			srv->died++;
		pthread_mutex_unlock(&srv->lock);
		client_free(c);
	}
}

static void mark_dead(struct client *c)
{
	__atomic_store_n(&c->dead, 1, __ATOMIC_RELEASE);
	ring_kick(&c->seg.sq);
	ring_kick(&c->seg.cq);
}

int server_new(const struct rt_config *cfg, struct server **ret_srv)
{
	struct engine_opts eo;
	struct epoll_event ev;
	struct server *srv;
	sigset_t ss;
	int err;

	config_engine_opts(cfg, &eo);
	err = ops_verify();
	if (err)
		return err;
	srv = calloc(1, sizeof(*srv));
	if (!srv)
		return -ENOMEM;
	srv->cfg = *cfg;
	srv->lfd = srv->efd = srv->sigfd = srv->reapfd = -1;
	srv->start_ns = clock_now_ns();
	pthread_mutex_init(&srv->lock, NULL);
	ops_stats_init(&srv->st);
	srv->cl = calloc(cfg->max_clients, sizeof(*srv->cl));
	if (!srv->cl) {
		err = -ENOMEM;
		goto out_free;
	}
	err = engine_new(&eo, &srv->eng);
	if (err)
		goto out_free;
	err = bind_socket(srv);
	if (err)
		goto out_free;
	sigemptyset(&ss);
	sigaddset(&ss, SIGTERM);
	sigaddset(&ss, SIGINT);
	srv->sigfd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);
	srv->reapfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	srv->efd = epoll_create1(EPOLL_CLOEXEC);
	if (srv->sigfd < 0 || srv->reapfd < 0 || srv->efd < 0) {
		err = -errno;
		goto out_free;
	}
	ev.events = EPOLLIN;
	ev.data.ptr = &srv->lfd;
	epoll_ctl(srv->efd, EPOLL_CTL_ADD, srv->lfd, &ev);
	ev.data.ptr = &srv->sigfd;
	epoll_ctl(srv->efd, EPOLL_CTL_ADD, srv->sigfd, &ev);
	ev.data.ptr = &srv->reapfd;
	epoll_ctl(srv->efd, EPOLL_CTL_ADD, srv->reapfd, &ev);
	*ret_srv = srv;
	return 0;
out_free:
	server_free(srv);
	return err;
}

static void begin_stop(struct server *srv)
{
	uint32_t i;

	srv->stop_deadline_ns = clock_now_ns() + srv->cfg.drain_ms * 1000000ull;
	__atomic_store_n(&srv->stopping, 1, __ATOMIC_RELEASE);
	epoll_ctl(srv->efd, EPOLL_CTL_DEL, srv->lfd, NULL);
	close(srv->lfd);
	srv->lfd = -1;
	unlink(srv->path);
	for (i = 0; i < srv->cfg.max_clients; i++)
		if (srv->cl[i])
			ring_kick(&srv->cl[i]->seg.sq);
}

int server_run(struct server *srv)
{
	struct epoll_event evs[32];
	int i, n;

	fprintf(stderr, "icecached: pid %d listening on %s\n", (int)getpid(), srv->path);
	for (;;) {
		if (srv->stopping && !srv->nclients && !srv->ncontrol)
			break;
		n = epoll_wait(srv->efd, evs, 32, srv->stopping ? 50 : 1000);
		if (n < 0 && errno != EINTR)
			return -errno;
		for (i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;

			if (p == &srv->lfd) {
				accept_one(srv);
			} else if (p == &srv->sigfd) {
				struct signalfd_siginfo si;

				while (read(srv->sigfd, &si, sizeof(si)) == sizeof(si))
					;
				if (!srv->stopping) {
					fprintf(stderr, "icecached: signal %u, draining\n",
						si.ssi_signo);
					begin_stop(srv);
				}
			} else if (p == &srv->reapfd) {
				uint64_t v;

				if (read(srv->reapfd, &v, sizeof(v)) < 0) {
					/* EAGAIN: already drained */
				}
			} else {
				struct client *c = p;

				/* Any traffic or hang-up on a client socket after the handshake
				 * means the peer closed it or died. */
				epoll_ctl(srv->efd, EPOLL_CTL_DEL, c->sock, NULL);
				mark_dead(c);
			}
		}
		reap(srv);
	}
	fprintf(stderr, "icecached: stopped\n");
	return 0;
}

void server_free(struct server *srv)
{
	uint32_t i;

	if (!srv)
		return;
	if (srv->cl) {
		for (i = 0; i < srv->cfg.max_clients; i++) {
			struct client *c = srv->cl[i];

			if (!c)
				continue;
			mark_dead(c);
			pthread_join(c->thr, NULL);
			client_free(c);
		}
	}
	if (srv->lfd >= 0) {
		close(srv->lfd);
		unlink(srv->path);
	}
	if (srv->efd >= 0)
		close(srv->efd);
	if (srv->sigfd >= 0)
		close(srv->sigfd);
	if (srv->reapfd >= 0)
		close(srv->reapfd);
	engine_free(srv->eng);
	free(srv->cl);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
}
