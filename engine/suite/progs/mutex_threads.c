/* mutex_threads: threads hold an ERRORCHECK, a RECURSIVE (locked twice) and a
 * PI mutex across the checkpoint, the main thread holds another ERRORCHECK
 * mutex, and two threads wait on a condvar (one untimed, one timed). After
 * restore every unlock must succeed and relocking must still report EDEADLK:
 * the futex words hold the owners' tids, so this case needs the original
 * pids/tids restored. */
#include "common.h"
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>

enum { M_ERR, M_REC, M_PI, NMUTEX };

static pthread_mutex_t mtx[NMUTEX];
static pthread_mutex_t main_mtx;
static pthread_mutex_t cmtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int go;			/* guarded by cmtx */
static atomic_int stop;
static atomic_int timed_wakeups;
static pthread_barrier_t held;
static char result[NMUTEX][200];

/* Relock a mutex we should own: EDEADLK if the owner tid still matches; with
 * a changed tid glibc would wait forever, so give up after 2 s. */
static int relock(pthread_mutex_t *m)
{
	struct timespec abs;

	clock_gettime(CLOCK_REALTIME, &abs);
	abs.tv_sec += 2;
	return pthread_mutex_timedlock(m, &abs);
}

static void init_mutex(pthread_mutex_t *m, int type, int proto)
{
	pthread_mutexattr_t a;

	pthread_mutexattr_init(&a);
	pthread_mutexattr_settype(&a, type);
	pthread_mutexattr_setprotocol(&a, proto);
	if (pthread_mutex_init(m, &a) != 0)
		fail("pthread_mutex_init");
	pthread_mutexattr_destroy(&a);
}

#define HFAIL(...) do { snprintf(result[k], sizeof(result[k]), __VA_ARGS__); return NULL; } while (0)

static void *holder(void *arg)
{
	int k = (int)(intptr_t)arg;
	pthread_mutex_t *m = &mtx[k];
	int r;
	pid_t tid0 = (pid_t)syscall(SYS_gettid), tid1;

	if ((r = pthread_mutex_lock(m)) != 0)
		HFAIL("mutex %d: lock: %s", k, strerror(r));
	if (k == M_REC && (r = pthread_mutex_lock(m)) != 0)
		HFAIL("recursive relock: %s", strerror(r));
	if (k == M_ERR && (r = pthread_mutex_lock(m)) != EDEADLK)
		HFAIL("errorcheck relock before checkpoint: %s", strerror(r));
	pthread_barrier_wait(&held);
	while (!atomic_load(&stop))
		sleep_ms(10);
	/* restored from here on */
	tid1 = (pid_t)syscall(SYS_gettid);
	if (k == M_ERR && (r = relock(m)) != EDEADLK)
		HFAIL("errorcheck relock after restore returned %d (%s), tid %d -> %d", r, strerror(r), tid0, tid1);
	if (k == M_REC && (r = pthread_mutex_unlock(m)) != 0)
		HFAIL("recursive unlock 1 after restore: %s (tid %d -> %d)", strerror(r), tid0, tid1);
	if ((r = pthread_mutex_unlock(m)) != 0)
		HFAIL("mutex %d unlock after restore: %s (tid %d -> %d)", k, strerror(r), tid0, tid1);
	if (k != M_PI && (r = pthread_mutex_unlock(m)) != EPERM)
		HFAIL("mutex %d: extra unlock returned %d, expected EPERM", k, r);
	snprintf(result[k], sizeof(result[k]), "ok");
	return NULL;
}

static void *waiter(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&cmtx);
	while (!go)
		pthread_cond_wait(&cv, &cmtx);
	pthread_mutex_unlock(&cmtx);
	return NULL;
}

static void *timed_waiter(void *arg)
{
	struct timespec abs;
	int r;

	(void)arg;
	pthread_mutex_lock(&cmtx);
	while (!go) {
		clock_gettime(CLOCK_REALTIME, &abs);
		abs.tv_nsec += 50 * 1000000L;
		if (abs.tv_nsec >= 1000000000L) {
			abs.tv_sec++;
			abs.tv_nsec -= 1000000000L;
		}
		r = pthread_cond_timedwait(&cv, &cmtx, &abs);
		if (r != 0 && r != ETIMEDOUT) {
			pthread_mutex_unlock(&cmtx);
			return (void *)"pthread_cond_timedwait failed";
		}
		atomic_fetch_add(&timed_wakeups, 1);
	}
	pthread_mutex_unlock(&cmtx);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t h[NMUTEX], w, tw;
	void *ret;
	int r, i, k;

	suite_init(argc, argv);
	init_mutex(&mtx[M_ERR], PTHREAD_MUTEX_ERRORCHECK, PTHREAD_PRIO_NONE);
	init_mutex(&mtx[M_REC], PTHREAD_MUTEX_RECURSIVE, PTHREAD_PRIO_NONE);
	init_mutex(&mtx[M_PI], PTHREAD_MUTEX_NORMAL, PTHREAD_PRIO_INHERIT);
	init_mutex(&main_mtx, PTHREAD_MUTEX_ERRORCHECK, PTHREAD_PRIO_NONE);
	pthread_barrier_init(&held, NULL, NMUTEX + 1);
	for (k = 0; k < NMUTEX; k++)
		if (pthread_create(&h[k], NULL, holder, (void *)(intptr_t)k) != 0)
			fail("pthread_create");
	if (pthread_create(&w, NULL, waiter, NULL) != 0 ||
	    pthread_create(&tw, NULL, timed_waiter, NULL) != 0)
		fail("pthread_create");
	pthread_barrier_wait(&held);
	if ((r = pthread_mutex_lock(&main_mtx)) != 0)
		fail("main lock: %s", strerror(r));
	ready();

	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		for (k = 0; k < NMUTEX; k++)
			if ((r = pthread_mutex_trylock(&mtx[k])) != EBUSY)
				fail("trylock of held mutex %d returned %d", k, r);
	}

	atomic_store(&stop, 1);
	for (k = 0; k < NMUTEX; k++) {
		pthread_join(h[k], NULL);
		if (strcmp(result[k], "ok") != 0)
			fail("%s", result[k][0] ? result[k] : "holder gave no result");
	}
	if ((r = relock(&main_mtx)) != EDEADLK)
		fail("main errorcheck relock after restore returned %d", r);
	if ((r = pthread_mutex_unlock(&main_mtx)) != 0)
		fail("main errorcheck unlock after restore: %s", strerror(r));
	for (k = 0; k < NMUTEX; k++) {
		if ((r = relock(&mtx[k])) != 0)
			fail("relock of released mutex %d: %s", k, strerror(r));
		if ((r = pthread_mutex_unlock(&mtx[k])) != 0)
			fail("unlock of relocked mutex %d: %s", k, strerror(r));
	}
	pthread_mutex_lock(&cmtx);
	go = 1;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&cmtx);
	pthread_join(w, NULL);
	pthread_join(tw, &ret);
	if (ret != NULL)
		fail("%s", (const char *)ret);
	if (atomic_load(&timed_wakeups) < 10)
		fail("timed condvar waiter woke only %d times", atomic_load(&timed_wakeups));
	pass();
}
