#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>

#include "client_io.h"
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
	struct client_io io; /* the request path over seg and oc */
	pthread_t thr;
	int dead;   /* main -> thread: the peer is gone, stop now */
	int exited; /* thread -> main: ready to be joined */
	uint64_t started_ns;
	const char *why; /* why the thread stopped */
};

/* An accepted connection whose hello has not all arrived: the main thread polls it with the
 * rest and drops it at its deadline, so a silent one holds up no one. */
struct pending {
	int fd; /* -1: a free slot */
	struct ucred cr;
	uint64_t deadline_ns;
	size_t got;
	struct proto_hello h;
};

struct server {
	struct rt_config cfg;
	char path[108];
	int lfd, efd, sigfd, reapfd;
	struct engine *eng;
	struct ops_stats st;
	pthread_mutex_t lock; /* the client table, for host_stats readers */
	struct client **cl;
	uint32_t nclients, ncontrol;
	uint32_t next_id;
	int stopping;
	uint64_t stop_deadline_ns;
	uint64_t start_ns;
	uint64_t accepted, refused, died, bad_rings;
	struct pending *pend; /* main thread only */
	uint32_t npend;
	uint32_t pending;            /* in use now (atomic: stats readers) */
	uint64_t handshake_timeouts; /* atomic */
};

const char *server_socket_path(const struct server *srv)
{
	return srv->path;
}

__attribute__((format(printf, 2, 3))) static int refuse_start(int err, const char *fmt, ...)
{
	va_list ap;

	fputs("icecached: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return err;
}

/* The default directory must be ours and private: in /tmp anyone could have made it first. */
static int private_dir(const char *dir)
{
	struct stat st;

	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return refuse_start(-errno, "cannot create %s: %s", dir, strerror(errno));
	if (lstat(dir, &st) < 0)
		return refuse_start(-errno, "%s: %s", dir, strerror(errno));
	if (S_ISLNK(st.st_mode))
		return refuse_start(-EPERM,
				    "%s is a symbolic link, not a directory of ours: "
				    "refusing it (remove it, or choose --socket)",
				    dir);
	if (!S_ISDIR(st.st_mode))
		return refuse_start(-EPERM, "%s is not a directory: refusing it", dir);
	if (st.st_uid != getuid())
		return refuse_start(-EPERM,
				    "%s is owned by uid %u, not %u: someone else's "
				    "directory, refusing it (remove it, or choose --socket)",
				    dir, (unsigned)st.st_uid, (unsigned)getuid());
	if (st.st_mode & 077)
		return refuse_start(-EPERM,
				    "%s has mode %04o: group and others must have no "
				    "access (chmod 0700 it)",
				    dir, (unsigned)(st.st_mode & 07777));
	return 0;
}

/* A socket path chosen by name may lie in a shared directory such as /tmp, but only one where
 * no one else can replace what we create there: ours or root's, and writable by no one else
 * unless sticky. Clients check the daemon's peer credentials whatever the directory. */
static int named_dir(const char *dir)
{
	struct stat st;

	if (stat(dir, &st) < 0)
		return refuse_start(-errno, "socket directory %s: %s", dir, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return refuse_start(-ENOTDIR, "socket directory %s is not a directory", dir);
	if (st.st_uid != getuid() && st.st_uid != 0)
		return refuse_start(-EPERM,
				    "socket directory %s is owned by uid %u: refusing to "
				    "serve from someone else's directory",
				    dir, (unsigned)st.st_uid);
	if ((st.st_mode & 022) && !(st.st_mode & S_ISVTX))
		return refuse_start(-EPERM,
				    "socket directory %s has mode %04o: writable by "
				    "others and not sticky, anyone could replace the socket",
				    dir, (unsigned)(st.st_mode & 07777));
	return 0;
}

/* What the path names now: nothing, or a socket of ours (a live daemon's, or one left over by
 * a dead one). Anything else is someone's file: never delete it. */
static int socket_path_free(const char *path, int *ret_stale)
{
	struct stat st;

	*ret_stale = 0;
	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		return refuse_start(-errno, "%s: %s", path, strerror(errno));
	}
	if (!S_ISSOCK(st.st_mode))
		return refuse_start(-EEXIST,
				    "%s exists and is not a socket (%s): refusing to "
				    "replace it",
				    path,
				    S_ISLNK(st.st_mode) ? "a symbolic link" :
				    S_ISREG(st.st_mode) ? "a regular file" :
				    S_ISDIR(st.st_mode) ? "a directory" :
							  "a special file");
	if (st.st_uid != getuid())
		return refuse_start(-EPERM, "%s is a socket of uid %u: refusing to replace it",
				    path, (unsigned)st.st_uid);
	*ret_stale = 1;
	return 0;
}

static int bind_socket(struct server *srv)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char dir[108];
	int fd, err, stale;

	if (srv->cfg.socket_path[0]) {
		snprintf(srv->path, sizeof(srv->path), "%s", srv->cfg.socket_path);
	} else {
		err = config_default_socket(srv->path, sizeof(srv->path));
		if (err)
			return err;
	}
	snprintf(dir, sizeof(dir), "%s", srv->path);
	if (srv->cfg.socket_path[0] || config_env_socket())
		err = named_dir(dirname(dir));
	else
		err = private_dir(dirname(dir));
	if (err)
		return err;
	if (strlen(srv->path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, srv->path, strlen(srv->path) + 1);
	err = socket_path_free(srv->path, &stale);
	if (err)
		return err;
	/* A socket file nobody answers on is left over from a dead daemon: replace it. One that
	 * answers belongs to a live daemon: refuse to steal it. */
	if (stale) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -errno;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(fd);
			return refuse_start(-EADDRINUSE, "a live daemon answers on %s", srv->path);
		}
		close(fd);
		unlink(srv->path);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
		err = -errno;
		close(fd);
		return refuse_start(err, "cannot listen on %s: %s", srv->path, strerror(-err));
	}
	srv->lfd = fd;
	return 0;
}

static void host_stats(void *arg, uint32_t viewer, struct stats_buf *sb)
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
	stats_put_u64(sb, "daemon", "handshakes_pending",
		      __atomic_load_n(&srv->pending, __ATOMIC_RELAXED));
	stats_put_u64(sb, "daemon", "handshake_timeouts",
		      __atomic_load_n(&srv->handshake_timeouts, __ATOMIC_RELAXED));
	for (i = 0; i < srv->cfg.max_clients; i++) {
		struct client *c = srv->cl[i];
		char pfx[32];

		if (!c || c->kind != PROTO_KIND_CLIENT || (viewer && c->id != viewer))
			continue;
		snprintf(pfx, sizeof(pfx), "client.%u", c->id);
		stats_put_u64(sb, pfx, "pid", (uint64_t)c->pid);
		stats_put_u64(sb, pfx, "uid", (uint64_t)c->uid);
		stats_put_u64(sb, pfx, "ops", __atomic_load_n(&c->io.ops, __ATOMIC_RELAXED));
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
	uint64_t one = 1;
	int n;

	c->why = "stop";
	for (;;) {
		/* A held completion is retried before the stop flags are looked at again: the
		 * wait for CQ space below checks them itself. */
		if (!c->io.held && should_stop(c))
			break;
		n = client_io_step(&c->io);
		if (n == -EBADMSG) {
			c->why = c->io.why;
			__atomic_add_fetch(&srv->bad_rings, 1, __ATOMIC_RELAXED);
			break;
		}
		if (n == -EAGAIN) {
			if (should_stop(c))
				break;
			/* The client is not reaping completions: wait for it, only this thread. */
			ring_wait_space(&c->seg.cq, 0, WAIT_SLICE_NS / 10);
			continue;
		}
		if (n == 0) {
			/* Drained: on shutdown an empty ring means this client is done. */
			if (__atomic_load_n(&srv->stopping, __ATOMIC_ACQUIRE)) {
				c->why = "drained";
				break;
			}
			ring_wait_ready(&c->seg.sq, srv->cfg.spin_ns, WAIT_SLICE_NS);
		}
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

/* The hello has arrived whole: check it, make the segment, welcome, start the thread. */
static void start_client(struct server *srv, int fd, const struct ucred *cr,
			 const struct proto_hello *h)
{
	struct proto_welcome w = { PROTO_MAGIC, PROTO_VERSION, 0, 0, 0 };
	struct seg_layout lay;
	struct epoll_event ev;
	struct client *c;
	uint32_t i;
	int err;

	if (h->magic != PROTO_MAGIC || h->version != PROTO_VERSION ||
	    h->kind > PROTO_KIND_CONTROL || h->reserved) {
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
	c->kind = h->kind;
	c->pid = cr->pid;
	c->uid = cr->uid;
	c->started_ns = clock_now_ns();
	/* icectl needs only small text answers: give control clients a small arena. */
	err = seg_layout((uint32_t)srv->cfg.sq_entries, (uint32_t)srv->cfg.cq_entries,
			 h->kind == PROTO_KIND_CONTROL ? (1u << 20) : srv->cfg.arena_bytes, &lay);
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
	/* Other clients' sequences, shapes, pids and uids are for the daemon's user and root. */
	c->oc.own_only = cr->uid != getuid() && cr->uid != 0;
	client_io_init(&c->io, &c->seg.sq, &c->seg.cq, &c->oc);
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

static void pending_drop(struct server *srv, struct pending *pd, int status)
{
	epoll_ctl(srv->efd, EPOLL_CTL_DEL, pd->fd, NULL);
	if (status)
		refuse(srv, pd->fd, status);
	else
		close(pd->fd);
	pd->fd = -1;
	__atomic_sub_fetch(&srv->pending, 1, __ATOMIC_RELAXED);
}

/* Takes what has arrived of a pending hello; the whole of it starts the client. */
static void pending_read(struct server *srv, struct pending *pd)
{
	ssize_t n;
	struct proto_hello h;
	struct ucred cr;
	int fd;

	if (pd->fd < 0)
		return; /* an event of this batch for a slot dropped earlier in it */
	n = recv(pd->fd, (char *)&pd->h + pd->got, sizeof(pd->h) - pd->got, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		pending_drop(srv, pd, 0); /* gone before it said hello */
		return;
	}
	pd->got += (size_t)n;
	if (pd->got < sizeof(pd->h))
		return;
	fd = pd->fd;
	cr = pd->cr;
	h = pd->h;
	epoll_ctl(srv->efd, EPOLL_CTL_DEL, fd, NULL);
	pd->fd = -1;
	__atomic_sub_fetch(&srv->pending, 1, __ATOMIC_RELAXED);
	start_client(srv, fd, &cr, &h);
}

static int is_pending(const struct server *srv, const void *p)
{
	uintptr_t a = (uintptr_t)p, b = (uintptr_t)srv->pend;

	return a >= b && a < b + srv->npend * sizeof(*srv->pend);
}

/* A free slot; when every one holds a silent connection, the oldest is let go for this one. */
static struct pending *pending_slot(struct server *srv)
{
	struct pending *old = NULL;
	uint32_t i;

	for (i = 0; i < srv->npend; i++) {
		struct pending *pd = &srv->pend[i];

		if (pd->fd < 0)
			return pd;
		if (!old || pd->deadline_ns < old->deadline_ns)
			old = pd;
	}
	__atomic_add_fetch(&srv->handshake_timeouts, 1, __ATOMIC_RELAXED);
	pending_drop(srv, old, -ETIMEDOUT);
	return old;
}

/*
 * Accepts what the listening socket holds (a bounded batch: signals and deaths are served
 * between batches). Peer credentials are checked at once; the hello is then read as it comes,
 * by the main loop, so no connection waits for another's.
 */
static void accept_ready(struct server *srv)
{
	struct epoll_event ev;
	struct pending *pd;
	struct ucred cr;
	socklen_t crlen;
	int n, fd;

	for (n = 0; n < 64; n++) {
		fd = accept4(srv->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0)
			return;
		crlen = sizeof(cr);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0 ||
		    (cr.uid != getuid() && cr.uid != 0 && (uint64_t)cr.uid != srv->cfg.allow_uid)) {
			refuse(srv, fd, -EPERM);
			continue;
		}
		pd = pending_slot(srv);
		*pd = (struct pending){ .fd = fd,
					.cr = cr,
					.got = 0,
					.deadline_ns = clock_now_ns() +
						       srv->cfg.handshake_ms * 1000000ull };
		ev.events = EPOLLIN | EPOLLRDHUP;
		ev.data.ptr = pd;
		if (epoll_ctl(srv->efd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			refuse(srv, fd, -ENOMEM);
			pd->fd = -1;
			continue;
		}
		__atomic_add_fetch(&srv->pending, 1, __ATOMIC_RELAXED);
		pending_read(srv, pd); /* the hello is usually there already */
	}
}

/* Drops pending connections past their deadline (-ETIMEDOUT welcome); returns the
 * milliseconds until the next deadline, or -1 when none is pending. */
static int pending_expire(struct server *srv)
{
	uint64_t now = clock_now_ns(), next = UINT64_MAX;
	uint32_t i;

	if (!__atomic_load_n(&srv->pending, __ATOMIC_RELAXED))
		return -1;
	for (i = 0; i < srv->npend; i++) {
		struct pending *pd = &srv->pend[i];

		if (pd->fd < 0)
			continue;
		if (now >= pd->deadline_ns) {
			__atomic_add_fetch(&srv->handshake_timeouts, 1, __ATOMIC_RELAXED);
			pending_drop(srv, pd, -ETIMEDOUT);
		} else if (pd->deadline_ns < next) {
			next = pd->deadline_ns;
		}
	}
	return next == UINT64_MAX ? -1 : (int)((next - now + 999999) / 1000000);
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

/* engine_new said -ENOSPC with an NVMe tier configured: the tier file does not fit (the tier
 * checked before allocating and left nothing behind). Say so with the figures. */
static void nvme_space_message(const struct rt_config *cfg)
{
	char dir[sizeof(cfg->nvme_path)];
	struct statvfs vs;
	uint64_t avail = 0;

	snprintf(dir, sizeof(dir), "%s", cfg->nvme_path);
	if (statvfs(cfg->nvme_path, &vs) == 0 || statvfs(dirname(dir), &vs) == 0)
		avail = (uint64_t)vs.f_bavail * vs.f_frsize;
	refuse_start(-ENOSPC,
		     "NVMe tier %s: nvme_bytes = %llu does not fit, its file system has "
		     "%llu bytes free",
		     cfg->nvme_path, (unsigned long long)cfg->nvme_bytes,
		     (unsigned long long)avail);
}

/* engine_new failed with a Redis tier configured and an error that is the tier's: say which
 * server and what it needs. */
static void remote_message(const struct rt_config *cfg, int err)
{
	const char *why =
		err == -EINVAL ? "remote_url must be redis://host:port[,host:port...], and the "
				 "server must run with maxmemory-policy noeviction (an evicted key "
				 "is a lost page)" :
				 "no server answered (is it running, and reachable from here?)";

	if (err == -EINVAL || err == -ECONNREFUSED || err == -ETIMEDOUT || err == -EHOSTUNREACH ||
	    err == -ENETUNREACH || err == -ECONNRESET || err == -EIO)
		refuse_start(err, "Redis tier %s: %s", cfg->remote_url, why);
}

int server_new(const struct rt_config *cfg, struct server **ret_srv)
{
	struct engine_opts eo;
	struct epoll_event ev;
	struct server *srv;
	sigset_t ss;
	uint32_t i;
	int err;

	config_engine_opts(cfg, &eo);
	err = ops_verify();
	if (err)
		return err;
	/*
	 * Large blocks straight from mmap, always: glibc raises its mmap threshold to the size of
	 * each large block freed, and then serves the indexes' growing arrays and the appends'
	 * scratch from the heap, where freed memory stays resident. The daemon's RSS then grows
	 * past what host_bytes accounts; with a fixed threshold a freed large block goes back to
	 * the kernel.
	 */
	mallopt(M_MMAP_THRESHOLD, 256 * 1024);
	mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
	/* One arena: an append's helper thread (engine/append.c) would otherwise get an arena of
	 * its own, whose freed blocks stay resident past what host_bytes accounts. */
	mallopt(M_ARENA_MAX, 1);
	srv = calloc(1, sizeof(*srv));
	if (!srv)
		return -ENOMEM;
	srv->cfg = *cfg;
	srv->lfd = srv->efd = srv->sigfd = srv->reapfd = -1;
	srv->start_ns = clock_now_ns();
	pthread_mutex_init(&srv->lock, NULL);
	ops_stats_init(&srv->st);
	srv->cl = calloc(cfg->max_clients, sizeof(*srv->cl));
	srv->npend = cfg->max_clients < 64 ? 64 : (uint32_t)cfg->max_clients;
	srv->pend = calloc(srv->npend, sizeof(*srv->pend));
	if (!srv->cl || !srv->pend) {
		err = -ENOMEM;
		goto out_free;
	}
	for (i = 0; i < srv->npend; i++)
		srv->pend[i].fd = -1;
	/* The socket first: a path that is not ours to take is refused before the tiers are
	 * allocated (and the socket is removed again if they cannot be). */
	err = bind_socket(srv);
	if (err)
		goto out_free;
	err = engine_new(&eo, &srv->eng);
	if (err == -ENOSPC && cfg->nvme_path[0])
		nvme_space_message(cfg);
	else if (err && cfg->remote_url[0])
		remote_message(cfg, err);
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
	for (i = 0; i < srv->npend; i++)
		if (srv->pend[i].fd >= 0)
			pending_drop(srv, &srv->pend[i], -ESHUTDOWN);
	for (i = 0; i < srv->cfg.max_clients; i++)
		if (srv->cl[i])
			ring_kick(&srv->cl[i]->seg.sq);
}

int server_run(struct server *srv)
{
	struct epoll_event evs[32];
	int i, n, wait_ms, next;

	fprintf(stderr, "icecached: pid %d listening on %s\n", (int)getpid(), srv->path);
	for (;;) {
		if (srv->stopping && !srv->nclients && !srv->ncontrol)
			break;
		wait_ms = srv->stopping ? 50 : 1000;
		next = pending_expire(srv);
		if (next >= 0 && next < wait_ms)
			wait_ms = next;
		n = epoll_wait(srv->efd, evs, 32, wait_ms);
		if (n < 0 && errno != EINTR)
			return -errno;
		for (i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;

			if (p == &srv->lfd) {
				accept_ready(srv);
			} else if (is_pending(srv, p)) {
				pending_read(srv, p);
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
	for (i = 0; srv->pend && i < srv->npend; i++)
		if (srv->pend[i].fd >= 0)
			close(srv->pend[i].fd);
	free(srv->pend);
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

int server_fork(const struct rt_config *cfg)
{
	struct server *srv;
	sigset_t ss;
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid > 0)
		return (int)pid;
	sigemptyset(&ss);
	sigaddset(&ss, SIGTERM);
	sigaddset(&ss, SIGINT);
	pthread_sigmask(SIG_BLOCK, &ss, NULL);
	if (server_new(cfg, &srv))
		_exit(1);
	server_run(srv);
	server_free(srv);
	_exit(0);
}
