/* common.h: the protocol shared by every suite program (zdtm style).
 *
 * A program sets up its state, prints "READY <pid>" (or "SKIP: <reason>" when
 * the hardware lacks a feature), then prints "tick <i>" every 100 ms for the
 * number of ticks given as argv[1] (default 40) while it keeps its state
 * changing, then checks its state from inside and prints "PASS" (exit 0) or
 * "FAIL: <reason>" (exit 1) as its last line. Every line but READY is
 * deterministic, so the harness can stitch the output of a checkpointed,
 * killed and restored run and compare it with the uninterrupted one. */
#ifndef TORPOR_SUITE_COMMON_H
#define TORPOR_SUITE_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int suite_ticks = 40;

static inline void suite_init(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1)
		suite_ticks = atoi(argv[1]);
	if (suite_ticks < 1)
		suite_ticks = 1;
}

static inline void ready(void)
{
	printf("READY %d\n", (int)getpid());
	fflush(stdout);
}

static inline void skip(const char *why)
{
	printf("SKIP: %s\n", why);
	fflush(stdout);
	exit(0);
}

__attribute__((noreturn, format(printf, 1, 2)))
static inline void fail(const char *fmt, ...)
{
	va_list ap;
	char buf[512];

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	printf("FAIL: %s\n", buf);
	fflush(stdout);
	exit(1);
}

__attribute__((noreturn))
static inline void pass(void)
{
	printf("PASS\n");
	fflush(stdout);
	exit(0);
}

#define CHECK(cond, ...) do { if (!(cond)) fail(__VA_ARGS__); } while (0)

/* Monotonic time in nanoseconds. */
static inline int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Relative sleep that tolerates EINTR (the checkpoint signal, timers). */
static inline void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L }, rem;

	while (nanosleep(&ts, &rem) != 0 && errno == EINTR)
		ts = rem;
}

/* One step of the long phase: sleep 100 ms, print the numbered tick. */
static inline void tick(int i)
{
	sleep_ms(100);
	printf("tick %d\n", i);
	fflush(stdout);
}

#endif
