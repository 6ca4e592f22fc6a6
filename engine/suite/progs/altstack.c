/* altstack: the main thread and a worker each have their own sigaltstack and
 * an SA_ONSTACK handler that checks it runs on that stack (and that
 * sigaltstack reports SS_ONSTACK inside it). Signals keep arriving through the
 * checkpoint; after restore both altstacks must read back unchanged and the
 * handlers must still run on them. */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#define MAIN_SS (64 * 1024)
#define WORKER_SS (48 * 1024)

static char main_stack[MAIN_SS] __attribute__((aligned(16)));
static __thread char *my_ss;
static __thread size_t my_ss_size;
static __thread volatile sig_atomic_t n_on, n_off;
static atomic_int stop;

static void handler(int sig)
{
	char here;
	stack_t cur;

	(void)sig;
	sigaltstack(NULL, &cur);
	if (my_ss && &here >= my_ss && &here < my_ss + my_ss_size && (cur.ss_flags & SS_ONSTACK))
		n_on++;
	else
		n_off++;
}

static void setup_ss(char *p, size_t size)
{
	stack_t ss = { .ss_sp = p, .ss_size = size, .ss_flags = 0 };

	if (sigaltstack(&ss, NULL) != 0)
		fail("sigaltstack");
	my_ss = p;
	my_ss_size = size;
}

static const char *check_ss(void)
{
	stack_t cur;

	if (sigaltstack(NULL, &cur) != 0)
		return "sigaltstack query failed";
	if (cur.ss_sp != my_ss || cur.ss_size != my_ss_size)
		return "altstack address or size changed";
	if (cur.ss_flags != 0)
		return "altstack flags changed";
	return NULL;
}

static void *worker(void *arg)
{
	char *p = malloc(WORKER_SS);
	long n = 0;
	static char msg[200];
	const char *e;

	(void)arg;
	setup_ss(p, WORKER_SS);
	while (!atomic_load(&stop)) {
		pthread_kill(pthread_self(), SIGUSR2);
		n++;
		if (n_on != n || n_off) {
			snprintf(msg, sizeof(msg), "worker: %d handler runs on the altstack, %d off, of %ld", (int)n_on, (int)n_off, n);
			return msg;
		}
		sleep_ms(5);
	}
	if ((e = check_ss()))
		snprintf(msg, sizeof(msg), "worker: %s", e);
	return (e || n < 10) ? (void *)(e ? msg : "worker: too few rounds") : NULL;
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	pthread_t w;
	void *ret;
	const char *e;
	int i;

	suite_init(argc, argv);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sa.sa_flags = SA_ONSTACK | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) || sigaction(SIGUSR2, &sa, NULL))
		fail("sigaction");
	setup_ss(main_stack, MAIN_SS);
	if (pthread_create(&w, NULL, worker, NULL) != 0)
		fail("pthread_create");
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		raise(SIGUSR1);
		if (n_on != i + 1 || n_off)
			fail("main: %d handler runs on the altstack, %d off, after tick %d", (int)n_on, (int)n_off, i);
	}
	atomic_store(&stop, 1);
	pthread_join(w, &ret);
	if (ret)
		fail("%s", (const char *)ret);
	if ((e = check_ss()))
		fail("main: %s", e);
	sigaction(SIGUSR1, NULL, &sa);
	CHECK(sa.sa_flags & SA_ONSTACK, "SA_ONSTACK lost");
	pass();
}
