/*
 * libicecache: the ice_* API (include/icecache/icecache.h). Every call builds one submission
 * entry, puts its inputs in the arena and waits for the completion: on the daemon's ring, or
 * straight through the opcode table in embedded mode, so both modes check and answer alike.
 */
#include "shim.h"

#include <errno.h>
#include <libgen.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "buf.h"
#include "clock.h"
#include "config.h"
#include "dtype.h"
#include "engine.h"
#include "ops.h"
#include "segment.h"

#define CQ_SLICE_NS 20000000ull /* between checks that the daemon is still there */
#define TIMEOUT_DEFAULT_MS 5000 /* without $ICECACHE_TIMEOUT_MS */

/* What the context knows of its own sequences: enough to size and split requests and to
 * answer ice_seq_info without a round trip. */
struct seq_info {
	uint32_t id;
	struct ice_model_shape shape;
	struct ice_budget budget;
	uint64_t *layer_tokens; /* tokens appended per layer, shape.layers of them */
	uint64_t tokens;        /* the largest of those */
};

struct ice_ctx {
	pthread_mutex_t lock;
	int embedded;
	int broken; /* the ring can no longer be trusted: every call fails */
	uint64_t next_tag;
	unsigned char *arena;
	uint64_t arena_bytes;
	uint32_t client_id;
	/* daemon mode */
	int sock;
	struct segment seg;
	uint64_t spin_ns;
	uint64_t timeout_ns; /* longest wait for the daemon; 0: for ever */
	/* embedded mode */
	struct rt_config cfg;
	struct engine *eng;
	struct ops_ctx oc;
	struct ops_stats st;
	/* this context's sequences */
	struct seq_info *seqs;
	size_t nseqs, seqs_cap;
};

int ice_default_socket(char *buf, size_t cap)
{
	if (!buf)
		return -EINVAL;
	return config_default_socket(buf, cap);
}

int ice_is_embedded(const struct ice_ctx *ctx)
{
	return ctx && ctx->embedded;
}

/* Why this thread's last ice_connect failed, for ice_last_error. */
static __thread char last_error[320];

int ice_last_error(char *buf, size_t cap)
{
	size_t n = strlen(last_error);

	if (!buf || !cap)
		return -EINVAL;
	snprintf(buf, cap, "%s", last_error);
	return n < cap ? (int)n : -ENOSPC;
}

/*
 * Refuses a daemon that may not be ours (-EPERM). Said on stderr as well as kept for
 * ice_last_error: a process that meets an impostor should not have to ask to hear of it.
 */
__attribute__((format(printf, 2, 3))) static int distrust(const char *path, const char *fmt, ...)
{
	int n = snprintf(last_error, sizeof(last_error), "refusing the daemon socket %s: ", path);
	va_list ap;

	if (n > 0 && (size_t)n < sizeof(last_error)) {
		va_start(ap, fmt);
		vsnprintf(last_error + n, sizeof(last_error) - (size_t)n, fmt, ap);
		va_end(ap);
	}
	fprintf(stderr, "libicecache: %s\n", last_error);
	return -EPERM;
}

/* Who may serve us: this user, root, or the one uid $ICECACHE_DAEMON_UID names. */
static int trusted_uid(uid_t u)
{
	const char *env = getenv("ICECACHE_DAEMON_UID");
	unsigned long v;
	char *end;

	if (u == getuid() || u == 0)
		return 1;
	if (!env || !*env)
		return 0;
	errno = 0;
	v = strtoul(env, &end, 10);
	return !errno && !*end && v == (unsigned long)u;
}

/*
 * The default path's directory must be a private one of a trusted user: under /tmp anyone can
 * create it first, and whoever owns it decides what the socket in it is. A path the caller
 * names is the caller's choice; the peer credentials are checked for every path.
 */
static int check_default_dir(const char *path)
{
	char buf[108], *dir;
	struct stat st;

	snprintf(buf, sizeof(buf), "%s", path);
	dir = dirname(buf);
	if (lstat(dir, &st) < 0)
		return 0; /* nothing there: connect answers -ENOENT */
	if (S_ISLNK(st.st_mode))
		return distrust(path, "its directory %s is a symbolic link", dir);
	if (!S_ISDIR(st.st_mode))
		return distrust(path, "%s is not a directory", dir);
	if (!trusted_uid(st.st_uid))
		return distrust(path,
				"its directory %s is owned by uid %u, not by this user "
				"(uid %u), root or $ICECACHE_DAEMON_UID",
				dir, (unsigned)st.st_uid, (unsigned)getuid());
	if (st.st_mode & 077)
		return distrust(path,
				"its directory %s has mode %04o: group and others must "
				"have no access",
				dir, (unsigned)(st.st_mode & 07777));
	return 0;
}

/* The process that listens on the socket: a trusted user's, before we say anything to it. */
static int check_peer(int fd, const char *path)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return -errno;
	if (!trusted_uid(cr.uid))
		return distrust(path,
				"it is served by uid %u (pid %d), not by this user "
				"(uid %u), root or $ICECACHE_DAEMON_UID",
				(unsigned)cr.uid, (int)cr.pid, (unsigned)getuid());
	return 0;
}

/* SHIM_TIMEOUT_DEFAULT: $ICECACHE_TIMEOUT_MS, else 5 s. Returns ns, 0 for no limit. */
static uint64_t resolve_timeout(uint64_t timeout_ns)
{
	const char *env = getenv("ICECACHE_TIMEOUT_MS");
	unsigned long long ms = TIMEOUT_DEFAULT_MS;
	char *end;

	if (timeout_ns == SHIM_TIMEOUT_NONE)
		return 0;
	if (timeout_ns != SHIM_TIMEOUT_DEFAULT)
		return timeout_ns;
	if (env && *env) {
		errno = 0;
		ms = strtoull(env, &end, 10);
		if (errno || *end || ms > UINT64_MAX / 1000000)
			ms = TIMEOUT_DEFAULT_MS;
	}
	return ms * 1000000ull;
}

/* SO_SNDTIMEO / SO_RCVTIMEO of ns (at least 1 us: 0 would mean no limit at all). */
static void sock_timeout(int fd, int opt, uint64_t ns)
{
	struct timeval tv = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull / 1000) };

	if (!tv.tv_sec && !tv.tv_usec)
		tv.tv_usec = 1;
	setsockopt(fd, SOL_SOCKET, opt, &tv, sizeof(tv));
}

static struct ice_ctx *ctx_alloc(void)
{
	struct ice_ctx *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	pthread_mutex_init(&c->lock, NULL);
	c->sock = -1;
	c->seg.fd = -1;
	c->next_tag = 1;
	return c;
}

static int recv_welcome(int fd, struct proto_welcome *w, int *ret_fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { w, sizeof(*w) };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm;
	ssize_t n;
	int segfd = -1;

	n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_WAITALL);
	if (n < 0)
		return -errno;
	for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
		    cm->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(&segfd, CMSG_DATA(cm), sizeof(int));
	if (n != sizeof(*w) || w->magic != PROTO_MAGIC || w->version != PROTO_VERSION ||
	    (mh.msg_flags & MSG_CTRUNC)) {
		if (segfd >= 0)
			close(segfd);
		return -EPROTO;
	}
	*ret_fd = segfd;
	return 0;
}

int shim_connect(const char *socket_path, uint32_t kind, uint64_t timeout_ns,
		 struct ice_ctx **ret_ctx)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct proto_hello h = { PROTO_MAGIC, PROTO_VERSION, kind, 0 };
	struct proto_welcome w;
	struct rt_config defaults;
	char path[108];
	struct ice_ctx *c;
	const char *env;
	uint64_t deadline = 0, now;
	ssize_t sent;
	int fd, segfd = -1, err;

	last_error[0] = '\0';
	if (!ret_ctx)
		return -EINVAL;
	if (socket_path) {
		if (strlen(socket_path) >= sizeof(path))
			return -ENAMETOOLONG;
		strcpy(path, socket_path);
	} else {
		err = config_default_socket(path, sizeof(path));
		if (err)
			return err;
		if (!config_env_socket()) {
			err = check_default_dir(path);
			if (err)
				return err;
		}
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	c = ctx_alloc();
	if (!c)
		return -ENOMEM;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		err = -errno;
		goto out_free;
	}
	c->sock = fd;
	/* A stopped or wedged daemon still has a listening socket: connect waits while its backlog
	 * is full, the welcome never comes. Both waits share one deadline. */
	c->timeout_ns = resolve_timeout(timeout_ns);
	if (c->timeout_ns) {
		deadline = clock_now_ns() + c->timeout_ns;
		sock_timeout(fd, SO_SNDTIMEO, c->timeout_ns);
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		err = errno == EAGAIN && deadline ? -ETIMEDOUT : -errno;
		goto out_free;
	}
	err = check_peer(fd, path);
	if (err)
		goto out_free;
	if (deadline) {
		now = clock_now_ns();
		if (now >= deadline) {
			err = -ETIMEDOUT;
			goto out_free;
		}
		sock_timeout(fd, SO_RCVTIMEO, deadline - now);
	}
	/* A daemon that refuses us may answer and close before reading the hello: a failed send
	 * is not the verdict, the welcome (if any) is. */
	sent = send(fd, &h, sizeof(h), MSG_NOSIGNAL);
	err = recv_welcome(fd, &w, &segfd);
	if (err == -EAGAIN && deadline)
		err = -ETIMEDOUT;
	else if (err && sent != sizeof(h))
		err = -ECONNRESET;
	if (err)
		goto out_free;
	if (w.status) {
		err = w.status < 0 ? w.status : -EPROTO;
		goto out_closefd;
	}
	if (segfd < 0) {
		err = -EPROTO;
		goto out_free;
	}
	err = seg_attach(&c->seg, segfd, w.seg_bytes);
	if (err)
		goto out_closefd;
	c->arena = c->seg.arena;
	c->arena_bytes = c->seg.lay.arena_bytes;
	c->client_id = w.client_id;
	config_defaults(&defaults);
	c->spin_ns = defaults.client_spin_ns;
	env = getenv("ICECACHE_CLIENT_SPIN_NS");
	if (env && *env)
		c->spin_ns = strtoull(env, NULL, 10);
	*ret_ctx = c;
	return 0;
out_closefd:
	if (segfd >= 0)
		close(segfd);
out_free:
	if (err == -ETIMEDOUT)
		snprintf(last_error, sizeof(last_error),
			 "%s: %s: no answer within %.3g s (is "
			 "the daemon stopped?)",
			 path, strerror(ETIMEDOUT), (double)c->timeout_ns / 1e9);
	ice_close(c);
	if (!last_error[0])
		snprintf(last_error, sizeof(last_error), "%s: %s", path, strerror(-err));
	return err;
}

int ice_connect(const char *socket_path, struct ice_ctx **ret_ctx)
{
	return shim_connect(socket_path, PROTO_KIND_CLIENT, SHIM_TIMEOUT_DEFAULT, ret_ctx);
}

int ice_open_embedded(const char *config, struct ice_ctx **ret_ctx)
{
	struct engine_opts eo;
	struct ice_ctx *c;
	void *m;
	int err;

	if (!ret_ctx)
		return -EINVAL;
	err = ops_verify();
	if (err)
		return err;
	c = ctx_alloc();
	if (!c)
		return -ENOMEM;
	c->embedded = 1;
	config_defaults(&c->cfg);
	if (config) {
		err = config_parse(&c->cfg, config, NULL);
		if (err)
			goto out_free;
	}
	config_engine_opts(&c->cfg, &eo);
	eo.owner_share = 1; /* one client: quotas left at 0 are the whole engine */
	err = engine_new(&eo, &c->eng);
	if (err)
		goto out_free;
	/* Untouched pages of an anonymous mapping cost nothing: the arena is only as big as use. */
	m = mmap(NULL, c->cfg.arena_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		 0);
	if (m == MAP_FAILED) {
		err = -errno;
		goto out_free;
	}
	c->arena = m;
	c->arena_bytes = c->cfg.arena_bytes;
	c->client_id = 1;
	ops_stats_init(&c->st);
	c->oc.eng = c->eng;
	c->oc.owner = c->client_id;
	c->oc.arena = c->arena;
	c->oc.arena_bytes = c->arena_bytes;
	c->oc.cfg = &c->cfg;
	c->oc.st = &c->st;
	*ret_ctx = c;
	return 0;
out_free:
	ice_close(c);
	return err;
}

void ice_close(struct ice_ctx *c)
{
	size_t i;

	if (!c)
		return;
	if (c->embedded) {
		if (c->eng)
			engine_drop_owner(c->eng, c->client_id);
		engine_free(c->eng);
		engine_ws_done(&c->oc.ws);
		engine_ws_done(&c->oc.ws_refs);
		if (c->arena)
			munmap(c->arena, c->arena_bytes);
	} else {
		seg_close(&c->seg);
	}
	/* Closing the socket is what tells the daemon to free this client's sequences. */
	if (c->sock >= 0)
		close(c->sock);
	for (i = 0; i < c->nseqs; i++)
		free(c->seqs[i].layer_tokens);
	free(c->seqs);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

uint32_t shim_client_id(const struct ice_ctx *ctx)
{
	return ctx ? ctx->client_id : 0;
}

int shim_segment_fd(const struct ice_ctx *ctx)
{
	return ctx && !ctx->embedded ? ctx->seg.fd : -1;
}

void *shim_sq_shared(struct ice_ctx *ctx)
{
	return ctx && !ctx->embedded ? (void *)ctx->seg.sq.sh : NULL;
}

void *shim_arena(struct ice_ctx *ctx, uint64_t *ret_bytes)
{
	if (!ctx)
		return NULL;
	if (ret_bytes)
		*ret_bytes = ctx->arena_bytes;
	return ctx->arena;
}

static int daemon_gone(struct ice_ctx *c)
{
	struct pollfd pfd = { c->sock, POLLRDHUP, 0 };

	if (__atomic_load_n(&c->seg.hdr->closed, __ATOMIC_ACQUIRE))
		return -ESHUTDOWN;
	if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)))
		return -ECONNRESET;
	return 0;
}

/*
 * A wait for the daemon found nothing for one more slice: -ETIMEDOUT once the wait has lasted
 * the context's timeout. The clock starts with the first empty slice, so a request answered
 * within the spin never reads it.
 */
static int waited_too_long(const struct ice_ctx *c, uint64_t *start)
{
	uint64_t now;

	if (!c->timeout_ns)
		return 0;
	now = clock_now_ns();
	if (!*start)
		*start = now;
	return now - *start >= c->timeout_ns ? -ETIMEDOUT : 0;
}

/* Caller holds c->lock. Waits for one completion, copies it out. */
static int reap_one(struct ice_ctx *c, struct ring_cqe *cqe)
{
	uint64_t start = 0;
	const void *e;
	int err;

	for (;;) {
		e = ring_peek(&c->seg.cq, &err);
		if (err)
			return err;
		if (e)
			break;
		if (ring_wait_ready(&c->seg.cq, c->spin_ns, CQ_SLICE_NS) == 0)
			continue;
		err = daemon_gone(c);
		if (!err)
			err = waited_too_long(c, &start);
		if (err)
			return err;
	}
	memcpy(cqe, e, sizeof(*cqe));
	ring_consume(&c->seg.cq);
	return 0;
}

/* Caller holds c->lock. */
static int submit(struct ice_ctx *c, struct ring_sqe *sqe, struct ring_cqe *cqe)
{
	uint64_t start = 0;
	void *slot;
	int err;

	if (c->broken)
		return -EPIPE;
	sqe->tag = c->next_tag++;
	if (c->embedded) {
		ops_dispatch(&c->oc, sqe, cqe);
		return 0;
	}
	while (!(slot = ring_produce_slot(&c->seg.sq, &err))) {
		if (err)
			goto out_broken;
		err = daemon_gone(c);
		if (!err)
			err = waited_too_long(c, &start);
		if (err)
			goto out_broken;
		ring_wait_space(&c->seg.sq, c->spin_ns, CQ_SLICE_NS);
	}
	memcpy(slot, sqe, sizeof(*sqe));
	ring_produce_commit(&c->seg.sq);
	err = reap_one(c, cqe);
	if (err)
		goto out_broken;
	if (cqe->tag != sqe->tag) {
		err = -EPROTO;
		goto out_broken;
	}
	return 0;
out_broken:
	c->broken = 1;
	return err;
}

int shim_raw(struct ice_ctx *c, const struct ring_sqe *sqe, struct ring_cqe *ret_cqe)
{
	struct ring_sqe s;
	struct ring_cqe cqe;
	int err;

	if (!c || !sqe || !ret_cqe)
		return -EINVAL;
	s = *sqe;
	pthread_mutex_lock(&c->lock);
	err = submit(c, &s, &cqe);
	pthread_mutex_unlock(&c->lock);
	if (!err)
		*ret_cqe = cqe;
	return err;
}

int shim_raw_batch(struct ice_ctx *c, const struct ring_sqe *sqes, size_t n,
		   struct ring_cqe *ret_cqes)
{
	size_t sent = 0, got = 0;
	uint64_t tag0;
	int err = 0;

	if (!c || !sqes || !ret_cqes)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	if (c->embedded || c->broken) {
		for (; got < n && !err; got++) {
			struct ring_sqe s = sqes[got];

			err = submit(c, &s, &ret_cqes[got]);
		}
		goto out;
	}
	tag0 = c->next_tag;
	c->next_tag += n;
	/* Keep at most the CQ's size in flight: the daemon never waits on a full CQ here. */
	while (got < n) {
		void *slot;

		while (sent < n && sent - got <= c->seg.cq.mask &&
		       (slot = ring_produce_slot(&c->seg.sq, &err))) {
			struct ring_sqe s = sqes[sent];

			s.tag = tag0 + sent;
			memcpy(slot, &s, sizeof(s));
			ring_produce_commit(&c->seg.sq);
			sent++;
		}
		if (err)
			break;
		err = reap_one(c, &ret_cqes[got]);
		if (err)
			break;
		if (ret_cqes[got].tag != tag0 + got) {
			err = -EPROTO;
			break;
		}
		got++;
	}
	if (err)
		c->broken = 1;
out:
	pthread_mutex_unlock(&c->lock);
	return err;
}

/* Runs one request; returns the completion's res (or the transport error). */
static int call(struct ice_ctx *c, struct ring_sqe *sqe, struct ring_cqe *cqe)
{
	int err = submit(c, sqe, cqe);

	return err ? err : cqe->res;
}

int ice_noop(struct ice_ctx *c)
{
	struct ring_sqe s = { .opcode = OP_NOOP };
	struct ring_cqe q;
	int err;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	err = call(c, &s, &q);
	pthread_mutex_unlock(&c->lock);
	return err;
}

static struct seq_info *seq_find(struct ice_ctx *c, uint32_t id)
{
	size_t i;

	for (i = 0; i < c->nseqs; i++)
		if (c->seqs[i].id == id)
			return &c->seqs[i];
	return NULL;
}

/* Takes the context's lock and finds sequence id; -ENOENT (lock released) when it is not ours. */
static int lock_seq(struct ice_ctx *c, uint32_t id, struct seq_info **ret_si)
{
	pthread_mutex_lock(&c->lock);
	*ret_si = seq_find(c, id);
	if (*ret_si)
		return 0;
	pthread_mutex_unlock(&c->lock);
	return -ENOENT;
}

int ice_seq_open(struct ice_ctx *c, const struct ice_model_shape *shape,
		 const struct ice_budget *budget, uint32_t *ret_seq)
{
	struct ring_sqe s = { .opcode = OP_SEQ_OPEN, .in_len = sizeof(struct proto_open_args) };
	struct proto_open_args a;
	uint64_t *lt = NULL;
	struct ring_cqe q;
	int err;

	if (!c || !shape || !budget || !ret_seq)
		return -EINVAL;
	/* Counters first, so nothing can fail once the engine holds the sequence; layers outside
	 * 1..1024 (icecache.h) get -EINVAL from the engine and need none. */
	if (shape->layers && shape->layers <= 1024) {
		lt = calloc(shape->layers, sizeof(*lt));
		if (!lt)
			return -ENOMEM;
	}
	a = (struct proto_open_args){ shape->layers,         shape->q_heads,
				      shape->kv_heads,       shape->head_dim,
				      shape->dtype,          budget->sink_tokens,
				      budget->window_tokens, budget->retrieved_tokens,
				      budget->dense_layers,  0 };
	pthread_mutex_lock(&c->lock);
	err = buf_grow(&c->seqs, &c->seqs_cap, c->nseqs + 1, sizeof(*c->seqs));
	if (err)
		goto out;
	memcpy(c->arena, &a, sizeof(a));
	err = call(c, &s, &q);
	if (err)
		goto out;
	if (!lt) { /* the engine took a shape it should have refused */
		err = -EPROTO;
		goto out;
	}
	c->seqs[c->nseqs] = (struct seq_info){
		.id = (uint32_t)q.val[0], .shape = *shape, .budget = *budget, .layer_tokens = lt
	};
	lt = NULL;
	c->nseqs++;
	*ret_seq = (uint32_t)q.val[0];
out:
	pthread_mutex_unlock(&c->lock);
	free(lt);
	return err;
}

/* The name into the arena at off (checked by the daemon too); its length, or -EINVAL. */
static int put_name(struct ice_ctx *c, size_t off, const char *name)
{
	size_t n = name ? strlen(name) : 0;

	if (!n || n > PROTO_PREFIX_NAME_MAX)
		return -EINVAL;
	memcpy(c->arena + off, name, n);
	return (int)n;
}

int ice_prefix_save(struct ice_ctx *c, uint32_t seq, const char *name, uint32_t *ret_hash)
{
	struct ring_sqe s = { .opcode = OP_PREFIX_SAVE, .seq = seq };
	struct ring_cqe q;
	int n, err;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	n = put_name(c, 0, name);
	if (n < 0) {
		pthread_mutex_unlock(&c->lock);
		return n;
	}
	s.in_len = (uint64_t)n;
	err = call(c, &s, &q);
	pthread_mutex_unlock(&c->lock);
	if (!err && ret_hash)
		*ret_hash = (uint32_t)q.val[1];
	return err;
}

int ice_prefix_open(struct ice_ctx *c, const char *name, const struct ice_model_shape *shape,
		    const struct ice_budget *budget, uint32_t *ret_seq, uint32_t *ret_hash)
{
	struct ring_sqe s = { .opcode = OP_PREFIX_OPEN };
	struct proto_open_args a;
	uint64_t *lt = NULL, tok;
	struct ring_cqe q;
	uint32_t i;
	int n, err;

	if (!c || !shape || !budget || !ret_seq)
		return -EINVAL;
	if (shape->layers && shape->layers <= 1024) {
		lt = calloc(shape->layers, sizeof(*lt));
		if (!lt)
			return -ENOMEM;
	}
	a = (struct proto_open_args){ shape->layers,         shape->q_heads,
				      shape->kv_heads,       shape->head_dim,
				      shape->dtype,          budget->sink_tokens,
				      budget->window_tokens, budget->retrieved_tokens,
				      budget->dense_layers,  0 };
	pthread_mutex_lock(&c->lock);
	err = buf_grow(&c->seqs, &c->seqs_cap, c->nseqs + 1, sizeof(*c->seqs));
	if (err)
		goto out;
	memcpy(c->arena, &a, sizeof(a));
	n = put_name(c, sizeof(a), name);
	if (n < 0) {
		err = n;
		goto out;
	}
	s.in_len = sizeof(a) + (uint64_t)n;
	err = call(c, &s, &q);
	if (err)
		goto out;
	if (!lt) { /* the engine took a shape it should have refused */
		err = -EPROTO;
		goto out;
	}
	tok = q.val[1] >> 32;
	for (i = 0; i < shape->layers; i++)
		lt[i] = tok;
	c->seqs[c->nseqs] = (struct seq_info){ .id = (uint32_t)q.val[0],
					       .shape = *shape,
					       .budget = *budget,
					       .layer_tokens = lt,
					       .tokens = tok };
	lt = NULL;
	c->nseqs++;
	*ret_seq = (uint32_t)q.val[0];
	if (ret_hash)
		*ret_hash = (uint32_t)q.val[1];
out:
	pthread_mutex_unlock(&c->lock);
	free(lt);
	return err;
}

int ice_prefix_drop(struct ice_ctx *c, const char *name)
{
	struct ring_sqe s = { .opcode = OP_PREFIX_DROP };
	struct ring_cqe q;
	int n, err;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	n = put_name(c, 0, name);
	if (n < 0) {
		pthread_mutex_unlock(&c->lock);
		return n;
	}
	s.in_len = (uint64_t)n;
	err = call(c, &s, &q);
	pthread_mutex_unlock(&c->lock);
	return err;
}

int ice_seq_close(struct ice_ctx *c, uint32_t seq)
{
	struct ring_sqe s = { .opcode = OP_SEQ_CLOSE, .seq = seq };
	struct ring_cqe q;
	struct seq_info *si;
	int err;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	err = call(c, &s, &q);
	si = seq_find(c, seq);
	if (si && (!err || err == -ENOENT)) {
		free(si->layer_tokens);
		*si = c->seqs[--c->nseqs];
	}
	pthread_mutex_unlock(&c->lock);
	return err;
}

size_t ice_page_bytes(const struct ice_model_shape *shape)
{
	if (!shape)
		return 0;
	return 2ull * ICE_PAGE_TOKENS * shape->head_dim * dtype_size(shape->dtype);
}

int ice_append(struct ice_ctx *c, uint32_t seq, uint32_t layer, uint32_t n, const void *k,
	       const void *v)
{
	struct seq_info *si;
	size_t row, per_tok, chunk, t, h, m;
	struct ring_cqe q;
	int err = 0;

	if (!c || !k || !v || !n || layer > UINT16_MAX)
		return -EINVAL;
	err = lock_seq(c, seq, &si);
	if (err)
		return err;
	row = (size_t)si->shape.head_dim * dtype_size(si->shape.dtype);
	per_tok = 2 * row * si->shape.kv_heads;
	if (!per_tok) {
		err = -EINVAL;
		goto out;
	}
	chunk = c->arena_bytes / per_tok;
	if (!chunk) {
		err = -E2BIG;
		goto out;
	}
	/* Split across requests by tokens; each request carries all heads, K then V. */
	for (t = 0; t < n; t += m) {
		struct ring_sqe s = { .opcode = OP_APPEND, .seq = seq, .layer = (uint16_t)layer };

		m = n - t < chunk ? n - t : chunk;
		for (h = 0; h < si->shape.kv_heads; h++) {
			memcpy(c->arena + h * m * row, (const unsigned char *)k + (h * n + t) * row,
			       m * row);
			memcpy(c->arena + (si->shape.kv_heads + h) * m * row,
			       (const unsigned char *)v + (h * n + t) * row, m * row);
		}
		s.arg[0] = m;
		s.in_len = per_tok * m;
		err = call(c, &s, &q);
		if (err)
			break;
		if (layer < si->shape.layers) { /* else the engine said -EINVAL */
			si->layer_tokens[layer] += m;
			if (si->layer_tokens[layer] > si->tokens)
				si->tokens = si->layer_tokens[layer];
		}
	}
out:
	pthread_mutex_unlock(&c->lock);
	return err;
}

int ice_seq_info(struct ice_ctx *c, uint32_t seq, struct ice_seq_info *ret)
{
	struct seq_info *si;
	int err = 0;

	if (!c || !ret)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	si = seq_find(c, seq);
	if (!si)
		err = -ENOENT;
	else
		*ret = (struct ice_seq_info){ .shape = si->shape,
					      .budget = si->budget,
					      .tokens = si->tokens,
					      .page_bytes = ice_page_bytes(&si->shape) };
	pthread_mutex_unlock(&c->lock);
	return err;
}

int ice_select_cap(struct ice_ctx *c, uint32_t seq, uint32_t layer)
{
	struct ring_sqe s = { .opcode = OP_SELECT_CAP, .seq = seq, .layer = (uint16_t)layer };
	struct ring_cqe q;
	int err;

	if (!c || layer > UINT16_MAX)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	err = call(c, &s, &q);
	pthread_mutex_unlock(&c->lock);
	return err;
}

static uint64_t align64(uint64_t x)
{
	return (x + 63) & ~63ull;
}

/*
 * select and select_rest: q goes first in the arena; the output area follows it, the rest block
 * (select_rest: rest_len bytes padded to 8) first, then as many refs as fit and the caller
 * takes. On -ENOSPC the completion says how many refs the table needs.
 */
static int select_call(struct ice_ctx *c, uint8_t op, uint32_t seq, uint32_t layer, const float *qv,
		       struct ice_page_ref *out, size_t cap, float *rest, size_t rest_len,
		       size_t *ret_need)
{
	struct ring_sqe s = { .opcode = op, .seq = seq, .layer = (uint16_t)layer };
	struct seq_info *si;
	struct ring_cqe q;
	uint64_t qb, rb = 0, room;
	int err;

	if (!c || !qv || !out || !cap || layer > UINT16_MAX || (op == OP_SELECT_REST && !rest))
		return -EINVAL;
	err = lock_seq(c, seq, &si);
	if (err)
		return err;
	qb = (uint64_t)si->shape.q_heads * si->shape.head_dim * sizeof(float);
	if (op == OP_SELECT_REST) {
		rb = (uint64_t)si->shape.q_heads * (si->shape.head_dim + 1) * sizeof(float);
		if (rest_len != rb) {
			err = -EINVAL;
			goto out;
		}
		rb = (rb + 7) & ~7ull;
	}
	if (align64(qb) + rb + sizeof(*out) > c->arena_bytes) {
		err = -E2BIG;
		goto out;
	}
	room = (c->arena_bytes - align64(qb) - rb) / sizeof(*out);
	memcpy(c->arena, qv, qb);
	s.in_len = qb;
	s.out_off = align64(qb);
	s.arg[0] = rb;
	s.out_len = rb + (cap < room ? cap : room) * sizeof(*out);
	err = call(c, &s, &q);
	if (err >= 0 && rb)
		memcpy(rest, c->arena + s.out_off, rest_len);
	if (err > 0)
		memcpy(out, c->arena + s.out_off + rb, (size_t)err * sizeof(*out));
	if (err >= 0 && ret_need)
		*ret_need = (size_t)err;
	if (err == -ENOSPC && q.val[0] > room)
		err = -E2BIG; /* no cap helps: the table does not fit this context's arena */
	else if (err == -ENOSPC && ret_need)
		*ret_need = q.val[0];
out:
	pthread_mutex_unlock(&c->lock);
	return err;
}

int ice_select(struct ice_ctx *c, uint32_t seq, uint32_t layer, const float *qv,
	       struct ice_page_ref *out, size_t cap, size_t *ret_need)
{
	return select_call(c, OP_SELECT, seq, layer, qv, out, cap, NULL, 0, ret_need);
}

int ice_select_rest(struct ice_ctx *c, uint32_t seq, uint32_t layer, const float *qv,
		    struct ice_page_ref *out, size_t cap, float *rest, size_t rest_len,
		    size_t *ret_need)
{
	return select_call(c, OP_SELECT_REST, seq, layer, qv, out, cap, rest, rest_len, ret_need);
}

int ice_fetch(struct ice_ctx *c, uint32_t seq, uint32_t layer, const struct ice_page_ref *refs,
	      size_t n, void *buf, size_t cap)
{
	struct seq_info *si;
	struct ring_cqe q;
	size_t pb, done, m, per;
	int err = 0;

	if (!c || !refs || !buf || !n || layer > UINT16_MAX)
		return -EINVAL;
	err = lock_seq(c, seq, &si);
	if (err)
		return err;
	pb = ice_page_bytes(&si->shape);
	if (n > cap / pb) {
		err = -ENOSPC;
		goto out;
	}
	/* Pages per request: refs plus page data must fit in the arena. */
	per = (c->arena_bytes - 64) / (sizeof(*refs) + pb);
	if (!per) {
		err = -E2BIG;
		goto out;
	}
	for (done = 0; done < n; done += m) {
		struct ring_sqe s = { .opcode = OP_FETCH, .seq = seq, .layer = (uint16_t)layer };

		m = n - done < per ? n - done : per;
		memcpy(c->arena, refs + done, m * sizeof(*refs));
		s.in_len = m * sizeof(*refs);
		s.out_off = align64(s.in_len);
		s.out_len = m * pb;
		err = call(c, &s, &q);
		if (err == -E2BIG && m > 1) {
			/* more refs than the daemon's fetch_max_refs: ask for fewer at a time */
			per = m / 2;
			m = 0;
			err = 0;
			continue;
		}
		if (err)
			break;
		memcpy((unsigned char *)buf + done * pb, c->arena + s.out_off, m * pb);
	}
out:
	pthread_mutex_unlock(&c->lock);
	return err;
}

static int text_call(struct ice_ctx *c, uint8_t op, char *buf, size_t cap)
{
	struct ring_sqe s = { .opcode = op };
	struct ring_cqe q;
	int err;

	if (!c || !buf || cap < 2)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	s.out_len = cap - 1 < c->arena_bytes ? cap - 1 : c->arena_bytes;
	err = call(c, &s, &q);
	if (err >= 0) {
		if ((size_t)err >= cap)
			err = -EPROTO;
		else {
			memcpy(buf, c->arena, (size_t)err);
			buf[err] = '\0';
		}
	}
	pthread_mutex_unlock(&c->lock);
	return err;
}

int ice_stats(struct ice_ctx *c, char *buf, size_t cap)
{
	return text_call(c, OP_STATS, buf, cap);
}

int ice_seqs(struct ice_ctx *c, char *buf, size_t cap)
{
	return text_call(c, OP_SEQS, buf, cap);
}

int ice_config(struct ice_ctx *c, char *buf, size_t cap)
{
	return text_call(c, OP_CONFIG, buf, cap);
}
