/*
 * A small persistent thread pool: pool_run() hands ntasks task indexes to the workers and the
 * calling thread, and returns when all are done. Workers sleep on a condition variable between
 * runs (the machine is shared, so no spinning).
 */
#ifndef ICERUN_POOL_H
#define ICERUN_POOL_H

struct pool;

typedef void (*pool_fn)(void *arg, int task, int thread);

/* nthreads counts the caller: 1 means no worker threads. */
int pool_new(int nthreads, struct pool **ret);
void pool_free(struct pool *p);
int pool_threads(const struct pool *p);
void pool_run(struct pool *p, pool_fn fn, void *arg, int ntasks);

#endif
