/* signals: handlers with SA_SIGINFO/SA_RESTART/SA_NODEFER flags and sa_masks,
 * ignored signals, a blocked-signal mask on the main thread and a different
 * one on a worker thread. Every tick raises SIGUSR1, SIGUSR2 and a queued
 * SIGRTMIN+1 carrying the tick number; after restore the handlers must still
 * run (counts equal the ticks), see their sa_mask blocked, and sigaction and
 * both threads' masks must read back as set up. */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

static volatile sig_atomic_t n_usr1, n_usr2, n_rt, bad_mask, bad_value, bad_code;
static volatile int expect_value;
static atomic_int stop;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	sigset_t cur;

	(void)sig;
	(void)uc;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	if (!sigismember(&cur, SIGUSR2) || !sigismember(&cur, SIGTERM) || !sigismember(&cur, SIGUSR1))
		bad_mask = 1;
	if (si->si_code != SI_TKILL)
		bad_code = 1;
	n_usr1++;
}

static void on_usr2(int sig)
{
	sigset_t cur;

	(void)sig;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	if (sigismember(&cur, SIGUSR2))	/* SA_NODEFER */
		bad_mask = 1;
	n_usr2++;
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (si->si_value.sival_int != expect_value)
		bad_value = 1;
	if (si->si_code != SI_QUEUE)
		bad_code = 1;
	n_rt++;
}

static void install(int sig, void *fn, int flags, const int *mask)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	for (; mask && *mask; mask++)
		sigaddset(&sa.sa_mask, *mask);
	if (flags & SA_SIGINFO)
		sa.sa_sigaction = fn;
	else
		sa.sa_handler = fn;
	sa.sa_flags = flags;
	if (sigaction(sig, &sa, NULL) != 0)
		fail("sigaction(%d)", sig);
}

static void check_action(int sig, void *fn, int flags, const int *mask)
{
	struct sigaction sa;
	sigset_t want;
	int s;

	if (sigaction(sig, NULL, &sa) != 0)
		fail("sigaction(%d) query", sig);
	if ((flags & SA_SIGINFO ? (void *)sa.sa_sigaction : (void *)sa.sa_handler) != fn)
		fail("signal %d: handler changed", sig);
	if ((sa.sa_flags & (SA_SIGINFO | SA_RESTART | SA_NODEFER | SA_ONSTACK | SA_RESETHAND)) != (unsigned)flags)
		fail("signal %d: flags %#x, expected %#x", sig, sa.sa_flags, flags);
	sigemptyset(&want);
	for (; mask && *mask; mask++)
		sigaddset(&want, *mask);
	for (s = 1; s < 32; s++)
		if (s != SIGKILL && s != SIGSTOP && sigismember(&sa.sa_mask, s) != sigismember(&want, s))
			fail("signal %d: sa_mask differs at %d", sig, s);
}

static void check_mask(const char *who, const int *blocked)
{
	sigset_t cur, want;
	int s;

	sigemptyset(&want);
	for (; *blocked; blocked++)
		sigaddset(&want, *blocked);
	sigaddset(&want, SIGRTMIN + 5);
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	for (s = 1; s < 32; s++)
		if (sigismember(&cur, s) != sigismember(&want, s))
			fail("%s: mask differs at signal %d", who, s);
	if (sigismember(&cur, SIGRTMIN + 5) != sigismember(&want, SIGRTMIN + 5))
		fail("%s: mask differs at SIGRTMIN+5", who);
}

static const int usr1_mask[] = { SIGUSR2, SIGTERM, 0 };
static const int main_blocked[] = { SIGWINCH, SIGTTIN, 0 };
static const int worker_blocked[] = { SIGWINCH, SIGTTIN, SIGXCPU, SIGPROF, 0 };
static char worker_msg[200];

static void *worker(void *arg)
{
	sigset_t s;
	sigset_t cur;
	int n;

	(void)arg;
	sigemptyset(&s);
	sigaddset(&s, SIGXCPU);
	sigaddset(&s, SIGPROF);
	pthread_sigmask(SIG_BLOCK, &s, NULL);
	while (!atomic_load(&stop))
		sleep_ms(10);
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	for (n = 1; n < 32; n++) {
		int want = 0;
		const int *b;

		for (b = worker_blocked; *b; b++)
			want |= *b == n;
		if (sigismember(&cur, n) != want) {
			snprintf(worker_msg, sizeof(worker_msg), "worker: mask differs at signal %d", n);
			break;
		}
	}
	if (!worker_msg[0] && !sigismember(&cur, SIGRTMIN + 5))
		snprintf(worker_msg, sizeof(worker_msg), "worker: SIGRTMIN+5 no longer blocked");
	return NULL;
}

int main(int argc, char **argv)
{
	sigset_t s;
	pthread_t w;
	union sigval v;
	int i;

	suite_init(argc, argv);
	install(SIGUSR1, (void *)on_usr1, SA_SIGINFO | SA_RESTART, usr1_mask);
	install(SIGUSR2, (void *)on_usr2, SA_NODEFER, NULL);
	install(SIGRTMIN + 1, (void *)on_rt, SA_SIGINFO, NULL);
	install(SIGHUP, (void *)SIG_IGN, 0, NULL);
	install(SIGPIPE, (void *)SIG_IGN, SA_RESTART, NULL);
	sigemptyset(&s);
	sigaddset(&s, SIGWINCH);
	sigaddset(&s, SIGTTIN);
	sigaddset(&s, SIGRTMIN + 5);
	pthread_sigmask(SIG_BLOCK, &s, NULL);
	if (pthread_create(&w, NULL, worker, NULL) != 0)
		fail("pthread_create");
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		raise(SIGUSR1);
		raise(SIGUSR2);
		expect_value = i;
		v.sival_int = i;
		if (pthread_sigqueue(pthread_self(), SIGRTMIN + 1, v) != 0)
			fail("pthread_sigqueue");
		if (n_usr1 != i + 1 || n_usr2 != i + 1 || n_rt != i + 1)
			fail("tick %d: handler counts %d/%d/%d", i, (int)n_usr1, (int)n_usr2, (int)n_rt);
	}
	atomic_store(&stop, 1);
	pthread_join(w, NULL);
	if (worker_msg[0])
		fail("%s", worker_msg);
	CHECK(!bad_mask, "a handler ran with the wrong signal mask");
	CHECK(!bad_value, "queued signal carried the wrong value");
	CHECK(!bad_code, "handler saw the wrong si_code");
	check_action(SIGUSR1, (void *)on_usr1, SA_SIGINFO | SA_RESTART, usr1_mask);
	check_action(SIGUSR2, (void *)on_usr2, SA_NODEFER, NULL);
	check_action(SIGRTMIN + 1, (void *)on_rt, SA_SIGINFO, NULL);
	check_action(SIGHUP, (void *)SIG_IGN, 0, NULL);
	check_action(SIGPIPE, (void *)SIG_IGN, SA_RESTART, NULL);
	check_action(SIGTERM, (void *)SIG_DFL, 0, NULL);
	check_mask("main", main_blocked);
	pass();
}
