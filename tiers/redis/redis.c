/*
 * The Redis tier: page slots as keys of a Redis server or cluster, moved with hiredis in
 * pipelined batches. See redis.h for the contract; docs/TIERS.md and docs/SCALEOUT.md for the
 * layout and the faults.
 *
 * Per connection set (one per concurrent batch) a hiredis context per node, opened lazily. A
 * batch queues every command on the context of the node that owns its key (redisAppend*),
 * writes all nodes' output, then reads the replies node by node: one round trip per node, and
 * the server sees the whole batch at once. Redirections (MOVED, ASK) go round again, only for
 * the keys they name.
 */
#include "redis.h"

#include <errno.h>
#include <hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

#define RD_MAX_NODES 64u
#define RD_NSLOTS 16384u
#define RD_NONE 0xffu
/* Pages per pipelined round: bounds the stack arrays (keys) of a batch. */
#define RD_BATCH 256u
#define RD_KEY_MAX 80u
#define RD_PREFIX_MAX 56u
#define RD_REDIRECTS 5
#define RD_SEEDS 16u

enum rd_op { RD_GET, RD_SET, RD_DEL };

struct rd_node {
	char host[64];
	int port;
};

struct rd_link {
	redisContext *c;
	uint64_t down_until; /* ns: until then batches fail with down_err */
	int down_err;
	int was_up;
};

struct rd_conn {
	pthread_mutex_t lock;
	struct rd_link link[RD_MAX_NODES];
};

struct redis_tier {
	struct tier tier;
	char prefix[RD_PREFIX_MAX];
	size_t plen;
	struct timeval tv;
	unsigned timeout_ms, retry_ms;
	uint64_t retry_ns;
	int cluster;
	/* Nodes are only added (under map_lock); nnodes is published after the node is written. */
	pthread_mutex_t map_lock;
	unsigned nnodes;
	struct rd_node node[RD_MAX_NODES];
	uint8_t slotmap[RD_NSLOTS];
	unsigned nconns, next_conn;
	struct rd_conn *conn;
	/* ASKING, formatted once. */
	char *asking;
	int asking_len;
	/* Slots a SET was sent for (bit set): what close deletes. */
	uint64_t *written;
	/* Cluster: a node failed since the map was read (refresh_map). */
	int map_stale;
	uint64_t refresh_after;
	uint64_t batches, moved, ask, reconnects, conn_errors, timeouts, oom, missing,
		map_refreshes;
};

static void bump(uint64_t *c)
{
	__atomic_add_fetch(c, 1, __ATOMIC_RELAXED);
}

/* ---- cluster hashing (the cluster spec's CRC16-CCITT/XMODEM, poly 0x1021) ---- */

static uint16_t crc16(const char *buf, size_t len)
{
	uint16_t crc = 0;
	size_t i;
	int b;

	for (i = 0; i < len; i++) {
		crc ^= (uint16_t)((unsigned char)buf[i] << 8);
		for (b = 0; b < 8; b++)
			crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
	}
	return crc;
}

unsigned redis_key_slot(const char *key, size_t len)
{
	size_t s, e;

	for (s = 0; s < len && key[s] != '{'; s++)
		;
	if (s < len) {
		for (e = s + 1; e < len && key[e] != '}'; e++)
			;
		if (e < len && e > s + 1)
			return crc16(key + s + 1, e - s - 1) & (RD_NSLOTS - 1);
	}
	return crc16(key, len) & (RD_NSLOTS - 1);
}

/* ---- errors ---- */

/* A context's failure as -errno; err_no is errno right after the failing call. */
static int ctx_err(const redisContext *c, int err_no)
{
	if (!c)
		return -ENOMEM;
	switch (c->err) {
	case REDIS_ERR_IO:
		if (err_no == EAGAIN || err_no == EWOULDBLOCK || err_no == ETIMEDOUT ||
		    err_no == EINPROGRESS)
			return -ETIMEDOUT;
		return err_no > 0 ? -err_no : -EIO;
	case REDIS_ERR_EOF:
		return -ECONNRESET;
	case REDIS_ERR_PROTOCOL:
		return -EPROTO;
	case REDIS_ERR_OOM:
		return -ENOMEM;
	default:
		/* hiredis reports a connect timeout as REDIS_ERR_OTHER */
		if (strstr(c->errstr, "timed out"))
			return -ETIMEDOUT;
		return err_no > 0 ? -err_no : -EIO;
	}
}

/* An error reply (not a redirection) as -errno. */
static int reply_err(struct redis_tier *r, const redisReply *rep)
{
	const char *s = rep->str ? rep->str : "";

	if (!strncmp(s, "OOM", 3)) {
		bump(&r->oom);
		return -ENOSPC;
	}
	if (!strncmp(s, "TRYAGAIN", 8) || !strncmp(s, "CLUSTERDOWN", 11) ||
	    !strncmp(s, "LOADING", 7) || !strncmp(s, "BUSY", 4) || !strncmp(s, "MASTERDOWN", 10))
		return -EAGAIN;
	if (!strncmp(s, "READONLY", 8))
		return -EROFS;
	if (!strncmp(s, "NOAUTH", 6) || !strncmp(s, "NOPERM", 6))
		return -EACCES;
	return -EIO;
}

/* ---- nodes and links ---- */

static unsigned node_find_or_add(struct redis_tier *r, const char *host, size_t hlen, int port)
{
	unsigned i, n;

	if (!hlen || hlen >= sizeof(r->node[0].host) || port <= 0 || port > 65535)
		return RD_NONE;
	pthread_mutex_lock(&r->map_lock);
	n = r->nnodes;
	for (i = 0; i < n; i++)
		if (r->node[i].port == port && strlen(r->node[i].host) == hlen &&
		    !memcmp(r->node[i].host, host, hlen))
			break;
	if (i == n && n < RD_MAX_NODES) {
		memcpy(r->node[n].host, host, hlen);
		r->node[n].host[hlen] = '\0';
		r->node[n].port = port;
		__atomic_store_n(&r->nnodes, n + 1, __ATOMIC_RELEASE);
	} else if (i == n) {
		i = RD_NONE;
	}
	pthread_mutex_unlock(&r->map_lock);
	return i;
}

static redisContext *connect_node(const struct redis_tier *r, const struct rd_node *nd,
				  int *ret_err)
{
	redisContext *c;
	int e;

	errno = 0;
	c = redisConnectWithTimeout(nd->host, nd->port, r->tv);
	e = errno;
	if (!c || c->err) {
		*ret_err = ctx_err(c, e);
		redisFree(c);
		return NULL;
	}
	if (redisSetTimeout(c, r->tv) != REDIS_OK) {
		*ret_err = -EIO;
		redisFree(c);
		return NULL;
	}
	redisEnableKeepAlive(c);
	/* Keep the reader's buffer between replies: a batch's replies are many 8 KiB strings,
	 * and the default (free it past 16 KiB) reallocates it over and over. */
	c->reader->maxbuf = 0;
	return c;
}

static void link_fail(struct redis_tier *r, struct rd_link *l, int err)
{
	redisFree(l->c);
	l->c = NULL;
	l->down_err = err < 0 ? err : -EIO;
	l->down_until = clock_now_ns() + r->retry_ns;
	if (err == -ETIMEDOUT)
		bump(&r->timeouts);
	bump(&r->conn_errors);
	if (r->cluster)
		__atomic_store_n(&r->map_stale, 1, __ATOMIC_RELAXED);
}

/* The node's context on this connection set: connected now, or the reason it is not. */
static redisContext *link_get(struct redis_tier *r, struct rd_conn *cn, unsigned node, int *ret_err)
{
	struct rd_link *l;

	if (node >= __atomic_load_n(&r->nnodes, __ATOMIC_ACQUIRE)) {
		*ret_err = -EIO;
		return NULL;
	}
	l = &cn->link[node];
	if (l->c)
		return l->c;
	if (l->down_err && clock_now_ns() < l->down_until) {
		*ret_err = l->down_err;
		return NULL;
	}
	l->c = connect_node(r, &r->node[node], ret_err);
	if (!l->c) {
		link_fail(r, l, *ret_err);
		return NULL;
	}
	if (l->was_up)
		bump(&r->reconnects);
	l->was_up = 1;
	l->down_err = 0;
	return l->c;
}

static struct rd_conn *conn_take(struct redis_tier *r)
{
	unsigned i, start = __atomic_fetch_add(&r->next_conn, 1, __ATOMIC_RELAXED) % r->nconns;

	for (i = 0; i < r->nconns; i++) {
		struct rd_conn *c = &r->conn[(start + i) % r->nconns];

		if (pthread_mutex_trylock(&c->lock) == 0)
			return c;
	}
	pthread_mutex_lock(&r->conn[start].lock);
	return &r->conn[start];
}

/* "MOVED 3999 127.0.0.1:6381" / "ASK ...": the node named (added if new), or RD_NONE. */
static unsigned redirect_node(struct redis_tier *r, const char *s, unsigned from,
			      unsigned *ret_slot)
{
	const char *sp = strchr(s, ' '), *hp, *colon;
	unsigned long slot;
	char *end;
	int port;

	if (!sp)
		return RD_NONE;
	slot = strtoul(sp + 1, &end, 10);
	if (*end != ' ' || slot >= RD_NSLOTS)
		return RD_NONE;
	hp = end + 1;
	colon = strrchr(hp, ':');
	if (!colon)
		return RD_NONE;
	port = atoi(colon + 1);
	*ret_slot = (unsigned)slot;
	if (colon == hp) /* no endpoint given: the node that answered */
		return node_find_or_add(r, r->node[from].host, strlen(r->node[from].host), port);
	return node_find_or_add(r, hp, (size_t)(colon - hp), port);
}

/* ---- batches ---- */

static size_t make_key(const struct redis_tier *r, uint64_t slot, char *key)
{
	int n = snprintf(key, RD_KEY_MAX, "%s%llu", r->prefix, (unsigned long long)slot);

	return (size_t)n;
}

/* The command for one entry, formatted by hiredis (malloc'd; redisFreeCommand). */
static int format_cmd(enum rd_op op, const char *key, size_t klen, const struct tier_io *io,
		      char **ret_cmd)
{
	static const char *const names[] = { "GET", "SET", "UNLINK" };
	const char *argv[3] = { names[op], key, io->buf };
	size_t argl[3] = { strlen(names[op]), klen, io->len };

	return redisFormatCommandArgv(ret_cmd, op == RD_SET ? 3 : 2, argv, argl);
}

/*
 * Sends formatted commands on c's socket in one go (sendmsg of all of them): hiredis's own
 * output buffer would copy each page once more and move what is left after every partial
 * write. MSG_NOSIGNAL: a server gone is -EPIPE, not SIGPIPE in someone else's process. The
 * socket's send timeout bounds a stalled server (-ETIMEDOUT).
 */
static int send_all(redisContext *c, struct iovec *iov, size_t n)
{
	while (n) {
		struct msghdr m = { .msg_iov = iov, .msg_iovlen = n < 1024 ? n : 1024 };
		ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
		}
		while (n && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n) {
			iov->iov_base = (char *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

/* The reply to one entry's command: 0, -errno, or 1 to send it again (redirected). */
static int take_reply(struct redis_tier *r, enum rd_op op, int obj, struct tier_io *io,
		      const redisReply *rep, unsigned node, uint8_t *ask_node)
{
	unsigned slot, nd;

	if (rep->type == REDIS_REPLY_ERROR && rep->str &&
	    (!strncmp(rep->str, "MOVED ", 6) || !strncmp(rep->str, "ASK ", 4))) {
		nd = redirect_node(r, rep->str, node, &slot);
		if (nd == RD_NONE)
			return -EIO;
		if (rep->str[0] == 'M') {
			__atomic_store_n(&r->slotmap[slot], (uint8_t)nd, __ATOMIC_RELAXED);
			*ask_node = RD_NONE;
			bump(&r->moved);
		} else {
			*ask_node = (uint8_t)nd;
			bump(&r->ask);
		}
		return 1;
	}
	if (rep->type == REDIS_REPLY_ERROR)
		return reply_err(r, rep);
	switch (op) {
	case RD_GET:
		if (rep->type == REDIS_REPLY_NIL) {
			bump(&r->missing);
			return -ENODATA;
		}
		if (rep->type != REDIS_REPLY_STRING)
			return -EPROTO;
		if (obj) {
			/* a named object: any length that fits */
			if ((size_t)rep->len > io->cap)
				return -EMSGSIZE;
			memcpy(io->buf, rep->str, (size_t)rep->len);
			io->len = (uint32_t)rep->len;
			return 0;
		}
		if (rep->len != io->len) {
			/* not this page's bytes: an error, and nothing of them in the buffer */
			memset(io->buf, 0,
			       io->cap < tier_round_up(io->len) ? io->cap : tier_round_up(io->len));
			__atomic_add_fetch(&r->tier.ctr.csum_failures, 1, __ATOMIC_RELAXED);
			return -EBADMSG;
		}
		memcpy(io->buf, rep->str, io->len);
		return 0;
	case RD_SET:
		return rep->type == REDIS_REPLY_STATUS ? 0 : -EPROTO;
	default:
		return rep->type == REDIS_REPLY_INTEGER ? 0 : -EPROTO;
	}
}

/* One round: queue every pending entry on its node, write every node's output, read the
 * replies. pend[i] stays set for entries redirected. */
static void rd_round(struct redis_tier *r, struct rd_conn *cn, enum rd_op op, int obj,
		     struct tier_io *ios, unsigned n, char (*keys)[RD_KEY_MAX], const size_t *klen,
		     const uint16_t *hslot, uint8_t *pend, uint8_t *ask_node)
{
	uint8_t sent[RD_BATCH], asked[RD_BATCH], used[RD_MAX_NODES] = { 0 };
	unsigned i, nd, nn = __atomic_load_n(&r->nnodes, __ATOMIC_ACQUIRE);
	struct iovec iov[2 * RD_BATCH];
	char *cmd[RD_BATCH];
	int err, len[RD_BATCH];

	for (i = 0; i < n; i++) {
		redisContext *c;

		sent[i] = RD_NONE;
		if (!pend[i])
			continue;
		asked[i] = ask_node[i] != RD_NONE;
		nd = asked[i] ? ask_node[i] :
				__atomic_load_n(&r->slotmap[hslot[i]], __ATOMIC_RELAXED);
		if (nd >= nn)
			nd = 0; /* owner unknown (or added since this round began): MOVED tells */
		c = link_get(r, cn, nd, &err);
		if (!c) {
			ios[i].res = err;
			pend[i] = 0;
			continue;
		}
		len[i] = format_cmd(op, keys[i], klen[i], &ios[i], &cmd[i]);
		if (len[i] < 0) {
			ios[i].res = -ENOMEM;
			pend[i] = 0;
			continue;
		}
		if (op == RD_SET && !obj)
			__atomic_or_fetch(&r->written[ios[i].slot / 64], 1ull << (ios[i].slot % 64),
					  __ATOMIC_RELAXED);
		sent[i] = (uint8_t)nd;
		used[nd] = 1;
	}
	/* Every node's commands go out before any reply is waited for. */
	for (nd = 0; nd < nn; nd++) {
		struct rd_link *l = &cn->link[nd];
		size_t niov = 0;

		if (!used[nd])
			continue;
		for (i = 0; i < n; i++) {
			if (sent[i] != nd)
				continue;
			if (asked[i])
				iov[niov++] = (struct iovec){ r->asking, (size_t)r->asking_len };
			iov[niov++] = (struct iovec){ cmd[i], (size_t)len[i] };
		}
		err = send_all(l->c, iov, niov);
		for (i = 0; i < n; i++)
			if (sent[i] == nd)
				redisFreeCommand(cmd[i]);
		if (err < 0) {
			link_fail(r, l, err);
			used[nd] = 2;
		}
		bump(&r->batches);
	}
	for (nd = 0; nd < nn; nd++) {
		struct rd_link *l = &cn->link[nd];

		if (!used[nd])
			continue;
		for (i = 0; i < n; i++) {
			redisReply *rep = NULL;
			int rr;

			if (sent[i] != nd)
				continue;
			if (used[nd] == 2) {
				ios[i].res = l->down_err;
				pend[i] = 0;
				continue;
			}
			errno = 0;
			if (asked[i] && redisGetReply(l->c, (void **)&rep) == REDIS_OK)
				freeReplyObject(rep); /* ASKING's +OK */
			if (!l->c->err && redisGetReply(l->c, (void **)&rep) == REDIS_OK && rep) {
				rr = take_reply(r, op, obj, &ios[i], rep, nd, &ask_node[i]);
				freeReplyObject(rep);
				if (rr == 1)
					continue; /* redirected: next round */
				ios[i].res = rr;
				pend[i] = 0;
				continue;
			}
			/* The connection broke: this and every later reply on it are lost. */
			link_fail(r, l, ctx_err(l->c, errno));
			used[nd] = 2;
			ios[i].res = l->down_err;
			pend[i] = 0;
		}
	}
}

static void refresh_map(struct redis_tier *r, struct rd_conn *cn);

/* names NULL: the keys are the slots' (<prefix><slot>); else names[i] is entry i's key. */
static int rd_batch(struct redis_tier *r, struct tier_io *ios, unsigned n, enum rd_op op,
		    const char *const *names)
{
	char keys[RD_BATCH][RD_KEY_MAX];
	size_t klen[RD_BATCH];
	uint16_t hslot[RD_BATCH];
	uint8_t pend[RD_BATCH], ask_node[RD_BATCH];
	struct rd_conn *cn = conn_take(r);
	unsigned off, i, k;
	int first = 0, round, left;

	if (__atomic_load_n(&r->map_stale, __ATOMIC_RELAXED))
		refresh_map(r, cn);
	for (off = 0; off < n; off += k) {
		struct tier_io *io = ios + off;

		k = n - off < RD_BATCH ? n - off : RD_BATCH;
		for (i = 0; i < k; i++) {
			if (names) {
				klen[i] = strlen(names[off + i]);
				if (klen[i] >= RD_KEY_MAX) {
					klen[i] = 0;
					pend[i] = 0;
					io[i].res = -ENAMETOOLONG;
					continue;
				}
				memcpy(keys[i], names[off + i], klen[i] + 1);
			} else {
				klen[i] = make_key(r, io[i].slot, keys[i]);
			}
			hslot[i] = r->cluster ? (uint16_t)redis_key_slot(keys[i], klen[i]) : 0;
			pend[i] = 1;
			ask_node[i] = RD_NONE;
			io[i].res = 0;
		}
		for (round = 0; round <= RD_REDIRECTS; round++) {
			rd_round(r, cn, op, names != NULL, io, k, keys, klen, hslot, pend,
				 ask_node);
			for (i = 0, left = 0; i < k; i++)
				left += pend[i];
			if (!left)
				break;
		}
		for (i = 0; i < k; i++) {
			if (pend[i])
				io[i].res = -EIO; /* redirected round and round */
			if (io[i].res < 0 && !first)
				first = io[i].res;
		}
	}
	pthread_mutex_unlock(&cn->lock);
	return first;
}

static int redis_read(struct tier *t, struct tier_io *ios, unsigned n)
{
	return rd_batch((struct redis_tier *)t, ios, n, RD_GET, NULL);
}

static int redis_write(struct tier *t, struct tier_io *ios, unsigned n)
{
	return rd_batch((struct redis_tier *)t, ios, n, RD_SET, NULL);
}

int redis_obj_put(struct tier *t, const char *const *names, struct tier_io *ios, unsigned n)
{
	if (!t || t->ops != &redis_tier_ops || !names || (!ios && n))
		return -EINVAL;
	return rd_batch((struct redis_tier *)t, ios, n, RD_SET, names);
}

int redis_obj_get(struct tier *t, const char *const *names, struct tier_io *ios, unsigned n)
{
	if (!t || t->ops != &redis_tier_ops || !names || (!ios && n))
		return -EINVAL;
	return rd_batch((struct redis_tier *)t, ios, n, RD_GET, names);
}

int redis_obj_del(struct tier *t, const char *const *names, unsigned n)
{
	struct tier_io io[RD_BATCH];
	unsigned off, i, k;
	char dummy = 0;
	int first = 0, r;

	if (!t || t->ops != &redis_tier_ops || (!names && n))
		return -EINVAL;
	for (off = 0; off < n; off += k) {
		k = n - off < RD_BATCH ? n - off : RD_BATCH;
		for (i = 0; i < k; i++)
			io[i] = (struct tier_io){ .buf = &dummy };
		r = rd_batch((struct redis_tier *)t, io, k, RD_DEL, names + off);
		if (r < 0 && !first)
			first = r;
	}
	return first;
}

static int redis_probe(struct tier *t)
{
	struct redis_tier *r = (struct redis_tier *)t;
	struct rd_conn *cn = conn_take(r);
	unsigned nd, nn = __atomic_load_n(&r->nnodes, __ATOMIC_ACQUIRE);
	int err = 0;

	for (nd = 0; nd < nn && !err; nd++) {
		redisContext *c = link_get(r, cn, nd, &err);
		redisReply *rep = NULL;
		struct iovec v;
		char *cmd;

		if (!c)
			break;
		v.iov_len = (size_t)redisFormatCommand(&cmd, "PING");
		v.iov_base = cmd;
		err = send_all(c, &v, 1);
		redisFreeCommand(cmd);
		errno = 0;
		if (!err && redisGetReply(c, (void **)&rep) != REDIS_OK)
			err = ctx_err(c, errno);
		if (err || !rep) {
			link_fail(r, &cn->link[nd], err ? err : -EIO);
			err = err ? err : -EIO;
			break;
		}
		if (rep->type == REDIS_REPLY_ERROR)
			err = reply_err(r, rep);
		freeReplyObject(rep);
	}
	pthread_mutex_unlock(&cn->lock);
	return err;
}

/* ---- open, close ---- */

/* "redis://h:p,h:p" or "h:p,...": fills seeds, returns how many, or -EINVAL. */
static int parse_url(const char *url, struct rd_node *seeds, unsigned max)
{
	const char *p = url;
	unsigned n = 0;

	if (!url || !*url)
		return -EINVAL;
	if (!strncmp(p, "redis://", 8))
		p += 8;
	while (*p) {
		const char *end = strchr(p, ','), *colon;
		size_t len = end ? (size_t)(end - p) : strlen(p), hlen;
		char num[8];
		long port;
		char *e;

		colon = memchr(p, ':', len);
		if (!colon || n == max)
			return -EINVAL;
		hlen = (size_t)(colon - p);
		if (!hlen || hlen >= sizeof(seeds[n].host) || len - hlen - 1 >= sizeof(num) ||
		    len - hlen - 1 == 0)
			return -EINVAL;
		memcpy(num, colon + 1, len - hlen - 1);
		num[len - hlen - 1] = '\0';
		port = strtol(num, &e, 10);
		if (*e || port <= 0 || port > 65535)
			return -EINVAL;
		memcpy(seeds[n].host, p, hlen);
		seeds[n].host[hlen] = '\0';
		seeds[n].port = (int)port;
		n++;
		p += len;
		if (*p == ',')
			p++;
	}
	return n ? (int)n : -EINVAL;
}

/* A CLUSTER SLOTS answer into the slot map (hosts left empty are `host`'s). */
static int apply_slots(struct redis_tier *r, const redisReply *rep, const char *host0)
{
	unsigned s, n = 0;
	size_t i;

	if (rep->type != REDIS_REPLY_ARRAY || !rep->elements)
		return -EIO; /* a cluster with no slots assigned yet */
	for (i = 0; i < rep->elements; i++) {
		const redisReply *e = rep->element[i], *m;
		const char *host;
		unsigned nd;

		if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
		    e->element[0]->type != REDIS_REPLY_INTEGER ||
		    e->element[1]->type != REDIS_REPLY_INTEGER ||
		    e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2)
			continue;
		m = e->element[2];
		host = m->element[0]->type == REDIS_REPLY_STRING && m->element[0]->len &&
				       strcmp(m->element[0]->str, "?") ?
			       m->element[0]->str :
			       host0;
		nd = node_find_or_add(r, host, strlen(host), (int)m->element[1]->integer);
		if (nd == RD_NONE)
			continue;
		for (s = (unsigned)e->element[0]->integer;
		     s <= (unsigned)e->element[1]->integer && s < RD_NSLOTS; s++)
			__atomic_store_n(&r->slotmap[s], (uint8_t)nd, __ATOMIC_RELAXED);
		n++;
	}
	return n ? 0 : -EIO;
}

/* CLUSTER SLOTS on c: 1 and the map filled for a cluster, 0 for a standalone server. */
static int discover(struct redis_tier *r, redisContext *c, const struct rd_node *seed)
{
	redisReply *rep;
	int err;

	errno = 0;
	rep = redisCommand(c, "CLUSTER SLOTS");
	if (!rep)
		return ctx_err(c, errno);
	if (rep->type == REDIS_REPLY_ERROR) {
		/* "ERR This instance has cluster support disabled" */
		freeReplyObject(rep);
		r->cluster = 0;
		return node_find_or_add(r, seed->host, strlen(seed->host), seed->port) == 0 ? 0 :
											      -EIO;
	}
	r->cluster = 1;
	err = apply_slots(r, rep, seed->host);
	freeReplyObject(rep);
	return err < 0 ? err : 1;
}

/*
 * After a node failed, the slots it owned may have a new owner (a replica promoted by
 * failover) that no MOVED will ever name, since the old owner does not answer: ask the nodes
 * that do for the map again, at most once per retry_ms.
 */
static void refresh_map(struct redis_tier *r, struct rd_conn *cn)
{
	unsigned nd, nn = __atomic_load_n(&r->nnodes, __ATOMIC_ACQUIRE);
	uint64_t now = clock_now_ns();
	char *cmd;
	int len;

	if (now < __atomic_load_n(&r->refresh_after, __ATOMIC_RELAXED))
		return;
	__atomic_store_n(&r->refresh_after, now + r->retry_ns, __ATOMIC_RELAXED);
	len = redisFormatCommand(&cmd, "CLUSTER SLOTS");
	if (len < 0)
		return;
	for (nd = 0; nd < nn; nd++) {
		struct iovec v = { cmd, (size_t)len };
		redisReply *rep = NULL;
		redisContext *c;
		int err;

		c = link_get(r, cn, nd, &err);
		if (!c)
			continue;
		err = send_all(c, &v, 1);
		errno = 0;
		if (!err && redisGetReply(c, (void **)&rep) != REDIS_OK)
			err = ctx_err(c, errno);
		if (err || !rep) {
			link_fail(r, &cn->link[nd], err ? err : -EIO);
			continue;
		}
		err = apply_slots(r, rep, r->node[nd].host);
		freeReplyObject(rep);
		if (err == 0) {
			__atomic_store_n(&r->map_stale, 0, __ATOMIC_RELAXED);
			bump(&r->map_refreshes);
			break;
		}
	}
	redisFreeCommand(cmd);
}

/* A server that evicts keys would lose pages: refused where CONFIG GET answers. */
static int check_policy(redisContext *c)
{
	redisReply *rep = redisCommand(c, "CONFIG GET maxmemory-policy");
	int r = 0;

	if (!rep)
		return -EIO;
	if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
	    rep->element[1]->type == REDIS_REPLY_STRING &&
	    strcmp(rep->element[1]->str, "noeviction") != 0)
		r = -EINVAL;
	freeReplyObject(rep);
	return r;
}

static void rd_free(struct redis_tier *r)
{
	unsigned i, nd;

	for (i = 0; r->conn && i < r->nconns; i++) {
		for (nd = 0; nd < RD_MAX_NODES; nd++)
			redisFree(r->conn[i].link[nd].c);
		pthread_mutex_destroy(&r->conn[i].lock);
	}
	free(r->conn);
	free(r->written);
	redisFreeCommand(r->asking);
	pthread_mutex_destroy(&r->map_lock);
	tier_done_common(&r->tier);
	free(r);
}

static int redis_open(const struct tier_config *cfg, struct tier **ret_tier)
{
	struct rd_node seeds[RD_SEEDS];
	struct redis_tier *r;
	redisContext *c = NULL;
	int ns, i, err;
	unsigned nd;

	ns = parse_url(cfg->path, seeds, RD_SEEDS);
	if (ns < 0)
		return ns;
	if (cfg->key_prefix && strlen(cfg->key_prefix) >= RD_PREFIX_MAX)
		return -ENAMETOOLONG;
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	pthread_mutex_init(&r->map_lock, NULL);
	err = tier_init_common(&r->tier, &redis_tier_ops, cfg);
	if (err) {
		pthread_mutex_destroy(&r->map_lock);
		free(r);
		return err;
	}
	r->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 1000;
	r->retry_ms = cfg->retry_ms ? cfg->retry_ms : 1000;
	r->tv.tv_sec = r->timeout_ms / 1000;
	r->tv.tv_usec = (suseconds_t)(r->timeout_ms % 1000) * 1000;
	r->retry_ns = (uint64_t)r->retry_ms * 1000000ull;
	if (cfg->key_prefix && cfg->key_prefix[0]) {
		snprintf(r->prefix, sizeof(r->prefix), "%s", cfg->key_prefix);
	} else {
		char host[24] = "host";
		struct timespec ts;

		gethostname(host, sizeof(host) - 1);
		host[sizeof(host) - 1] = '\0';
		clock_gettime(CLOCK_REALTIME, &ts);
		snprintf(r->prefix, sizeof(r->prefix), "ice:%s:%d:%llx:", host, (int)getpid(),
			 (unsigned long long)ts.tv_sec * 1000000000ull +
				 (unsigned long long)ts.tv_nsec);
	}
	r->plen = strlen(r->prefix);
	memset(r->slotmap, RD_NONE, sizeof(r->slotmap));
	r->nconns = cfg->nrings ? cfg->nrings : 2;
	r->conn = calloc(r->nconns, sizeof(*r->conn));
	r->written = calloc((r->tier.nslots + 63) / 64, sizeof(uint64_t));
	r->asking_len = redisFormatCommand(&r->asking, "ASKING");
	if (!r->conn || !r->written || r->asking_len < 0) {
		err = -ENOMEM;
		goto out_free;
	}
	for (nd = 0; nd < r->nconns; nd++)
		pthread_mutex_init(&r->conn[nd].lock, NULL);
	err = -ECONNREFUSED;
	for (i = 0; i < ns; i++) {
		c = connect_node(r, &seeds[i], &err);
		if (!c)
			continue;
		err = discover(r, c, &seeds[i]);
		redisFree(c);
		if (err >= 0)
			break;
	}
	if (err < 0)
		goto out_free;
	/* Every node must answer now, and keep what it is given. */
	for (nd = 0; nd < r->nnodes; nd++) {
		c = connect_node(r, &r->node[nd], &err);
		if (!c)
			goto out_free;
		err = check_policy(c);
		redisFree(c);
		if (err < 0)
			goto out_free;
	}
	*ret_tier = &r->tier;
	return 0;
out_free:
	rd_free(r);
	return err;
}

static void redis_close(struct tier *t)
{
	struct redis_tier *r = (struct redis_tier *)t;
	struct tier_io io[RD_BATCH];
	uint64_t w, words = (t->nslots + 63) / 64;
	unsigned n = 0;
	char dummy = 0;

	/* Delete what was written; a server that is gone keeps it (first failure: give up). */
	for (w = 0; w < words; w++) {
		uint64_t bits = r->written[w];

		while (bits) {
			io[n++] =
				(struct tier_io){ .slot = w * 64 + (uint64_t)__builtin_ctzll(bits),
						  .buf = &dummy };
			bits &= bits - 1;
			if (n == RD_BATCH) {
				if (rd_batch(r, io, n, RD_DEL, NULL) < 0)
					goto out;
				n = 0;
			}
		}
	}
	if (n)
		rd_batch(r, io, n, RD_DEL, NULL);
out:
	rd_free(r);
}

static void redis_stats(struct tier *t, struct stats_buf *sb, const char *prefix)
{
	struct redis_tier *r = (struct redis_tier *)t;
	struct redis_info in;

	redis_get_info(t, &in);
	stats_put_str(sb, prefix, "mode", in.cluster ? "cluster" : "standalone");
	stats_put_u64(sb, prefix, "nodes", in.nodes);
	stats_put_u64(sb, prefix, "conns", r->nconns);
	stats_put_u64(sb, prefix, "timeout_ms", r->timeout_ms);
	stats_put_u64(sb, prefix, "retry_ms", r->retry_ms);
	stats_put_str(sb, prefix, "key_prefix", r->prefix);
	stats_put_u64(sb, prefix, "batches", in.batches);
	stats_put_u64(sb, prefix, "moved", in.moved);
	stats_put_u64(sb, prefix, "ask", in.ask);
	stats_put_u64(sb, prefix, "reconnects", in.reconnects);
	stats_put_u64(sb, prefix, "conn_errors", in.conn_errors);
	stats_put_u64(sb, prefix, "timeouts", in.timeouts);
	stats_put_u64(sb, prefix, "oom", in.oom);
	stats_put_u64(sb, prefix, "missing", in.missing);
	stats_put_u64(sb, prefix, "map_refreshes", in.map_refreshes);
}

void redis_get_info(struct tier *t, struct redis_info *ret_info)
{
	struct redis_tier *r = (struct redis_tier *)t;

	*ret_info = (struct redis_info){
		.cluster = r->cluster,
		.nodes = __atomic_load_n(&r->nnodes, __ATOMIC_ACQUIRE),
		.batches = __atomic_load_n(&r->batches, __ATOMIC_RELAXED),
		.moved = __atomic_load_n(&r->moved, __ATOMIC_RELAXED),
		.ask = __atomic_load_n(&r->ask, __ATOMIC_RELAXED),
		.reconnects = __atomic_load_n(&r->reconnects, __ATOMIC_RELAXED),
		.conn_errors = __atomic_load_n(&r->conn_errors, __ATOMIC_RELAXED),
		.timeouts = __atomic_load_n(&r->timeouts, __ATOMIC_RELAXED),
		.oom = __atomic_load_n(&r->oom, __ATOMIC_RELAXED),
		.missing = __atomic_load_n(&r->missing, __ATOMIC_RELAXED),
		.map_refreshes = __atomic_load_n(&r->map_refreshes, __ATOMIC_RELAXED),
	};
}

const struct tier_ops redis_tier_ops = {
	.name = "redis",
	.kind = TIER_REMOTE,
	.open = redis_open,
	.close = redis_close,
	.read = redis_read,
	.write = redis_write,
	.probe = redis_probe,
	.stats = redis_stats,
};
