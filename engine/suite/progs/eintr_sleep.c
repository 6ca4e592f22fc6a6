/* eintr_sleep: threads sleeping through the checkpoint in ways that may see
 * EINTR: a relative nanosleep loop that continues with the remaining time, a
 * nanosleep loop that checks the semantics (a sleep that returns 0 lasted at
 * least what was asked, EINTR leaves rem <= req, CLOCK_MONOTONIC never goes
 * back), an absolute clock_nanosleep loop that must never wake before its
 * deadline, and a poll() loop that accepts only 0 or EINTR. */
#include "common.h"
#include <poll.h>
#include <sys/prctl.h>
#include <pthread.h>
#include <stdatomic.h>

static atomic_int stop;
static atomic_long done[4];

#define TFAIL(...) do { static char m[200]; snprintf(m, sizeof(m), __VA_ARGS__); return m; } while (0)

static void *tolerant(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop)) {
		sleep_ms(200);
		atomic_fetch_add(&done[0], 1);
	}
	return NULL;
}

static void *semantics(void *arg)
{
	const int64_t req_ns = 30 * 1000000LL, slack = 2 * 1000000LL;
	struct timespec req = { 0, req_ns }, rem;
	int64_t t0, t1, last = now_ns();
	/* The kernel arms the sleep's timer at req + the thread's timer slack and reports
	 * rem against that hard expiry (hrtimer_expires_remaining), so a sleep interrupted
	 * within the first tens of microseconds legitimately leaves rem a little above req. */
	const int64_t timer_slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
	int r;

	(void)arg;
	if (timer_slack < 0)
		TFAIL("prctl(PR_GET_TIMERSLACK): %s", strerror(errno));
	while (!atomic_load(&stop)) {
		t0 = now_ns();
		if (t0 < last)
			TFAIL("CLOCK_MONOTONIC went back by %lld ns", (long long)(last - t0));
		r = nanosleep(&req, &rem);
		t1 = now_ns();
		if (t1 < t0)
			TFAIL("CLOCK_MONOTONIC went back by %lld ns across nanosleep", (long long)(t0 - t1));
		if (r == 0 && t1 - t0 < req_ns - slack)
			TFAIL("nanosleep(30 ms) returned 0 after %lld ns", (long long)(t1 - t0));
		if (r != 0 && errno != EINTR)
			TFAIL("nanosleep failed: %s", strerror(errno));
		if (r != 0 && (rem.tv_sec != 0 || rem.tv_nsec > req_ns + timer_slack))
			TFAIL("nanosleep EINTR left rem %ld.%09ld > req + timer slack %lld ns",
			      (long)rem.tv_sec, rem.tv_nsec, (long long)timer_slack);
		last = t1;
		atomic_fetch_add(&done[1], 1);
	}
	return NULL;
}

static void *absolute(void *arg)
{
	struct timespec dl, now;
	int r;

	(void)arg;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	while (!atomic_load(&stop)) {
		dl.tv_nsec += 50 * 1000000L;
		if (dl.tv_nsec >= 1000000000L) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000L;
		}
		while ((r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &dl, NULL)) == EINTR)
			;
		if (r != 0)
			TFAIL("clock_nanosleep: %s", strerror(r));
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec < dl.tv_sec || (now.tv_sec == dl.tv_sec && now.tv_nsec < dl.tv_nsec))
			TFAIL("clock_nanosleep(TIMER_ABSTIME) woke before its deadline");
		atomic_fetch_add(&done[2], 1);
	}
	return NULL;
}

static void *poller(void *arg)
{
	int r;

	(void)arg;
	while (!atomic_load(&stop)) {
		r = poll(NULL, 0, 40);
		if (r != 0 && !(r < 0 && errno == EINTR))
			TFAIL("poll returned %d (%s)", r, strerror(errno));
		atomic_fetch_add(&done[3], 1);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	void *(*fn[4])(void *) = { tolerant, semantics, absolute, poller };
	pthread_t t[4];
	void *ret;
	int i;

	suite_init(argc, argv);
	for (i = 0; i < 4; i++)
		if (pthread_create(&t[i], NULL, fn[i], NULL) != 0)
			fail("pthread_create");
	ready();
	for (i = 0; i < suite_ticks; i++)
		tick(i);
	atomic_store(&stop, 1);
	for (i = 0; i < 4; i++) {
		pthread_join(t[i], &ret);
		if (ret)
			fail("%s", (const char *)ret);
		if (atomic_load(&done[i]) < 2)
			fail("sleeper %d completed only %ld rounds", i, atomic_load(&done[i]));
	}
	pass();
}
