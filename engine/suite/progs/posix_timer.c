/* posix_timer: three timers made with timer_create: a periodic 10 ms
 * CLOCK_MONOTONIC timer (SIGRTMIN+2, sival 0x1234), a periodic 25 ms
 * CLOCK_REALTIME timer (SIGALRM, sival 0x5678), and a one-shot 1000 s timer
 * that must stay armed; plus a created-but-disarmed one. After restore the
 * same timer ids must work, keep their intervals, and the periodic ones must
 * keep firing (every one of the last ten ticks sees both fire). */
#include "common.h"
#include <signal.h>

#define MAXT 1000

static volatile sig_atomic_t fires[2], bad;
static int per_tick[MAXT][2];

static void handler(int sig, siginfo_t *si, void *uc)
{
	int k = sig == SIGALRM;

	(void)uc;
	if (si->si_code != SI_TIMER || si->si_value.sival_int != (k ? 0x5678 : 0x1234))
		bad = 1;
	fires[k]++;
}

static timer_t make(clockid_t clk, int sig, int val)
{
	struct sigevent ev;
	timer_t t;

	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = SIGEV_SIGNAL;
	ev.sigev_signo = sig;
	ev.sigev_value.sival_int = val;
	if (timer_create(clk, &ev, &t) != 0)
		fail("timer_create");
	return t;
}

static void arm(timer_t t, long first_ms, long every_ms)
{
	struct itimerspec it = {
		.it_value = { first_ms / 1000, (first_ms % 1000) * 1000000L },
		.it_interval = { every_ms / 1000, (every_ms % 1000) * 1000000L },
	};

	if (timer_settime(t, 0, &it, NULL) != 0)
		fail("timer_settime");
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	struct itimerspec it;
	timer_t fast, slow, once, idle;
	int i, prev[2] = { 0, 0 };

	suite_init(argc, argv);
	if (suite_ticks > MAXT)
		suite_ticks = MAXT;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGRTMIN + 2, &sa, NULL) || sigaction(SIGALRM, &sa, NULL))
		fail("sigaction");
	fast = make(CLOCK_MONOTONIC, SIGRTMIN + 2, 0x1234);
	slow = make(CLOCK_REALTIME, SIGALRM, 0x5678);
	once = make(CLOCK_MONOTONIC, SIGALRM, 0x5678);
	idle = make(CLOCK_MONOTONIC, SIGALRM, 0x5678);
	arm(fast, 10, 10);
	arm(slow, 25, 25);
	arm(once, 1000000, 0);
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		per_tick[i][0] = fires[0] - prev[0];
		per_tick[i][1] = fires[1] - prev[1];
		prev[0] = fires[0];
		prev[1] = fires[1];
	}
	CHECK(!bad, "a timer signal carried the wrong si_code or value");
	for (i = suite_ticks > 10 ? suite_ticks - 10 : 0; i < suite_ticks; i++)
		if (per_tick[i][0] < 1 || per_tick[i][1] < 1)
			fail("timers stopped firing: tick %d saw %d and %d signals", i, per_tick[i][0], per_tick[i][1]);
	if (timer_gettime(fast, &it) != 0)
		fail("timer_gettime(fast): %s", strerror(errno));
	CHECK(it.it_interval.tv_sec == 0 && it.it_interval.tv_nsec == 10000000L, "fast timer interval changed");
	if (timer_gettime(slow, &it) != 0)
		fail("timer_gettime(slow): %s", strerror(errno));
	CHECK(it.it_interval.tv_sec == 0 && it.it_interval.tv_nsec == 25000000L, "slow timer interval changed");
	if (timer_gettime(once, &it) != 0)
		fail("timer_gettime(once): %s", strerror(errno));
	CHECK(it.it_interval.tv_sec == 0 && it.it_interval.tv_nsec == 0, "one-shot timer got an interval");
	CHECK(it.it_value.tv_sec > 900 && it.it_value.tv_sec <= 1000, "one-shot timer has %ld s left", (long)it.it_value.tv_sec);
	if (timer_gettime(idle, &it) != 0)
		fail("timer_gettime(idle): %s", strerror(errno));
	CHECK(it.it_value.tv_sec == 0 && it.it_value.tv_nsec == 0, "disarmed timer became armed");
	CHECK(timer_delete(fast) == 0 && timer_delete(slow) == 0 && timer_delete(once) == 0 && timer_delete(idle) == 0,
	      "timer_delete failed");
	pass();
}
