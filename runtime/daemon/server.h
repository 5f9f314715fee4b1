/*
 * icecached's server: the listening socket, the handshake (peer credentials, segment passed
 * with SCM_RIGHTS), one serving thread per client and the engine they share.
 *
 * Threads: the main thread owns the socket, the client table and every client's lifetime
 * (accept, death, reaping). It reads hellos as they arrive, from every connection not yet
 * welcomed at once, and closes one whose hello has not come by handshake_ms: a silent
 * connection delays no other. Each client thread owns its rings and its sequences and is the only
 * one that touches them. A dead client (its socket hung up) is noticed by the main thread, which
 * tells the client thread to stop; that thread drops the client's sequences and exits.
 */
#ifndef ICE_RUNTIME_SERVER_H
#define ICE_RUNTIME_SERVER_H

#include "config.h"

struct server;

/* Binds the socket (creating a private 0700 directory for the default path). */
int server_new(const struct rt_config *cfg, struct server **ret_srv);
/* Serves until SIGTERM or SIGINT (which the caller must have blocked in every thread), then
 * drains: clients finish their queued requests (up to drain_ms), see `closed`, are let go. */
int server_run(struct server *srv);
void server_free(struct server *srv);
/* A private daemon for benchmarks: forks a child that serves cfg as icecached does (signals
 * blocked, until SIGTERM or SIGINT) and exits 0, or 1 if the server cannot start. Returns the
 * child's pid, or -errno when the fork fails. */
int server_fork(const struct rt_config *cfg);
const char *server_socket_path(const struct server *srv);

#endif
