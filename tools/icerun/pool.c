#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct pool {
	int n;
	pthread_t *th;
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	unsigned gen;
	int quit;
	int busy; /* workers still inside the current run */
	pool_fn fn;
	void *arg;
	int ntasks;
	atomic_int next;
};

struct worker_arg {
	struct pool *p;
	int id;
};

static void drain(struct pool *p, int id)
{
	int t;

	while ((t = atomic_fetch_add(&p->next, 1)) < p->ntasks)
		p->fn(p->arg, t, id);
}

static void *worker(void *a)
{
	struct worker_arg *wa = a;
	struct pool *p = wa->p;
	int id = wa->id;
	unsigned seen = 0;

	free(wa);
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (p->gen == seen && !p->quit)
			pthread_cond_wait(&p->go, &p->mu);
		if (p->quit)
			break;
		seen = p->gen;
		pthread_mutex_unlock(&p->mu);
		drain(p, id);
		pthread_mutex_lock(&p->mu);
		if (--p->busy == 0)
			pthread_cond_signal(&p->done);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int pool_new(int nthreads, struct pool **ret)
{
	struct worker_arg *wa;
	struct pool *p;
	int i, err;

	if (nthreads < 1 || nthreads > 256)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->n = nthreads;
	p->th = calloc((size_t)nthreads, sizeof(*p->th));
	if (!p->th) {
		free(p);
		return -ENOMEM;
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	for (i = 1; i < nthreads; i++) {
		wa = malloc(sizeof(*wa));
		if (!wa) {
			err = -ENOMEM;
			goto out_stop;
		}
		wa->p = p;
		wa->id = i;
		err = -pthread_create(&p->th[i], NULL, worker, wa);
		if (err) {
			free(wa);
			goto out_stop;
		}
	}
	*ret = p;
	return 0;
out_stop:
	p->n = i;
	pool_free(p);
	return err;
}

void pool_free(struct pool *p)
{
	int i;

	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->quit = 1;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	for (i = 1; i < p->n; i++)
		pthread_join(p->th[i], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
	free(p->th);
	free(p);
}

int pool_threads(const struct pool *p)
{
	return p ? p->n : 1;
}

void pool_run(struct pool *p, pool_fn fn, void *arg, int ntasks)
{
	int t;

	if (!p || p->n == 1 || ntasks <= 1) {
		for (t = 0; t < ntasks; t++)
			fn(arg, t, 0);
		return;
	}
	pthread_mutex_lock(&p->mu);
	p->fn = fn;
	p->arg = arg;
	p->ntasks = ntasks;
	atomic_store(&p->next, 0);
	p->busy = p->n - 1;
	p->gen++;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	drain(p, 0);
	pthread_mutex_lock(&p->mu);
	while (p->busy)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}
