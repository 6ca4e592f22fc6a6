/* tls: initialised (.tdata), zeroed (.tbss) and large __thread variables plus
 * pthread_setspecific values, set to distinct values in the main thread and
 * eight workers, checked every 5 ms and at the end, together with the address
 * of each thread's TLS block (fs base): all must survive checkpoint and
 * restore in every thread. */
#include "common.h"
#include <pthread.h>
#include <stdatomic.h>

#define NW 8
#define BIG 8192

static __thread long t_init = 0x1234;
static __thread long t_bss;
static __thread unsigned char t_big[BIG];
static pthread_key_t key;
static atomic_int stop;

struct spec {
	long magic;
};

static void set_all(int k, struct spec *sp)
{
	int j;

	t_init += k;
	t_bss = k * 1000 + 7;
	for (j = 0; j < BIG; j++)
		t_big[j] = (unsigned char)(k * 31 + j);
	sp->magic = 0x5eed0000L + k;
	pthread_setspecific(key, sp);
}

static const char *check_all(int k, struct spec *sp, void *addr)
{
	static __thread char m[200];
	int j;

	if (t_init != 0x1234 + k)
		snprintf(m, sizeof(m), "thread %d: t_init %#lx", k, t_init);
	else if (t_bss != k * 1000 + 7)
		snprintf(m, sizeof(m), "thread %d: t_bss %ld", k, t_bss);
	else if ((void *)&t_bss != addr)
		snprintf(m, sizeof(m), "thread %d: TLS block moved", k);
	else if (pthread_getspecific(key) != sp || sp->magic != 0x5eed0000L + k)
		snprintf(m, sizeof(m), "thread %d: pthread_getspecific value lost", k);
	else {
		for (j = 0; j < BIG; j++)
			if (t_big[j] != (unsigned char)(k * 31 + j)) {
				snprintf(m, sizeof(m), "thread %d: t_big[%d] differs", k, j);
				return m;
			}
		return NULL;
	}
	return m;
}

static void *worker(void *arg)
{
	int k = (int)(intptr_t)arg;
	struct spec sp;
	void *addr = &t_bss;
	const char *e;

	set_all(k, &sp);
	while (!atomic_load(&stop)) {
		if ((e = check_all(k, &sp, addr)))
			return (void *)e;
		sleep_ms(5);
	}
	return (void *)check_all(k, &sp, addr);
}

int main(int argc, char **argv)
{
	pthread_t t[NW];
	struct spec sp;
	void *addr = &t_bss, *ret;
	const char *e;
	int i;

	suite_init(argc, argv);
	pthread_key_create(&key, NULL);
	set_all(0, &sp);
	for (i = 0; i < NW; i++)
		if (pthread_create(&t[i], NULL, worker, (void *)(intptr_t)(i + 1)) != 0)
			fail("pthread_create");
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		if ((e = check_all(0, &sp, addr)))
			fail("%s", e);
	}
	atomic_store(&stop, 1);
	for (i = 0; i < NW; i++) {
		pthread_join(t[i], &ret);
		if (ret)
			fail("%s", (const char *)ret);
	}
	pass();
}
