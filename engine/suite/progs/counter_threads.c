/* counter_threads: four threads increment a mutex-protected shared counter,
 * an atomic counter and their own counter and running sum, all the time
 * (with short sleeps), through the checkpoint. After restore the counters
 * must be consistent: shared == atomic == sum of per-thread counts, and each
 * thread's running sum == n(n+1)/2 for its count n. */
#include "common.h"
#include <pthread.h>
#include <stdatomic.h>

#define NT 4

static pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
static long shared;
static atomic_long atom;
static atomic_int stop;
static struct {
	long count, sum;
} per[NT];

static void *worker(void *arg)
{
	int k = (int)(intptr_t)arg;
	long n = 0, s = 0;

	while (!atomic_load(&stop)) {
		pthread_mutex_lock(&mtx);
		shared++;
		pthread_mutex_unlock(&mtx);
		atomic_fetch_add(&atom, 1);
		n++;
		s += n;
		if (n % 2000 == 0)
			sleep_ms(1);
	}
	per[k].count = n;
	per[k].sum = s;
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t[NT];
	long total = 0;
	int i;

	suite_init(argc, argv);
	for (i = 0; i < NT; i++)
		if (pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) != 0)
			fail("pthread_create");
	ready();
	for (i = 0; i < suite_ticks; i++)
		tick(i);
	atomic_store(&stop, 1);
	for (i = 0; i < NT; i++) {
		pthread_join(t[i], NULL);
		CHECK(per[i].count > 1000, "thread %d counted only %ld", i, per[i].count);
		CHECK(per[i].sum == per[i].count * (per[i].count + 1) / 2, "thread %d: sum %ld for count %ld", i,
		      per[i].sum, per[i].count);
		total += per[i].count;
	}
	CHECK(shared == total, "shared counter %ld, threads counted %ld", shared, total);
	CHECK(atomic_load(&atom) == total, "atomic counter %ld, threads counted %ld", atomic_load(&atom), total);
	pass();
}
