/* thread_spawn: a spawner thread creates and joins batches of short-lived
 * joinable threads and also starts detached ones, without pause, so threads
 * are being created and exiting while the checkpoint stops the process.
 * After restore every created thread must have run exactly once with the
 * right result, every join must succeed and every detached thread finish. */
#include "common.h"
#include <pthread.h>
#include <stdatomic.h>

#define BATCH 8

static atomic_int stop;
static atomic_long ran, detached_started, detached_done;

struct job {
	long seq;
	long result;
};

static void *work(void *arg)
{
	struct job *j = arg;
	long k, s = 0;

	for (k = 0; k <= j->seq % 1000; k++)
		s += k;
	j->result = s;
	atomic_fetch_add(&ran, 1);
	return arg;
}

static void *detached(void *arg)
{
	(void)arg;
	atomic_fetch_add(&detached_done, 1);
	return NULL;
}

static char msg[200];

static void *spawner(void *arg)
{
	struct job jobs[BATCH];
	pthread_t t[BATCH], d;
	pthread_attr_t da;
	long seq = 0, joined = 0;
	void *ret;
	int b;

	(void)arg;
	pthread_attr_init(&da);
	pthread_attr_setdetachstate(&da, PTHREAD_CREATE_DETACHED);
	while (!atomic_load(&stop)) {
		for (b = 0; b < BATCH; b++) {
			jobs[b].seq = seq++;
			jobs[b].result = -1;
			if (pthread_create(&t[b], NULL, work, &jobs[b]) != 0) {
				snprintf(msg, sizeof(msg), "pthread_create failed at seq %ld", seq);
				return msg;
			}
		}
		for (b = 0; b < BATCH; b++) {
			long n = jobs[b].seq % 1000;

			if (pthread_join(t[b], &ret) != 0 || ret != &jobs[b]) {
				snprintf(msg, sizeof(msg), "join of thread seq %ld failed", jobs[b].seq);
				return msg;
			}
			if (jobs[b].result != n * (n + 1) / 2) {
				snprintf(msg, sizeof(msg), "thread seq %ld computed %ld", jobs[b].seq, jobs[b].result);
				return msg;
			}
			joined++;
		}
		if (pthread_create(&d, &da, detached, NULL) == 0)
			atomic_fetch_add(&detached_started, 1);
		sleep_ms(1);
	}
	if (joined != seq || atomic_load(&ran) != seq) {
		snprintf(msg, sizeof(msg), "created %ld, joined %ld, ran %ld", seq, joined, atomic_load(&ran));
		return msg;
	}
	if (seq < 100) {
		snprintf(msg, sizeof(msg), "only %ld threads created", seq);
		return msg;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t s;
	void *ret;
	int i;

	suite_init(argc, argv);
	if (pthread_create(&s, NULL, spawner, NULL) != 0)
		fail("pthread_create");
	ready();
	for (i = 0; i < suite_ticks; i++)
		tick(i);
	atomic_store(&stop, 1);
	pthread_join(s, &ret);
	if (ret)
		fail("%s", (const char *)ret);
	for (i = 0; i < 500 && atomic_load(&detached_done) != atomic_load(&detached_started); i++)
		sleep_ms(10);
	CHECK(atomic_load(&detached_done) == atomic_load(&detached_started), "%ld detached threads started, %ld finished",
	      atomic_load(&detached_started), atomic_load(&detached_done));
	pass();
}
