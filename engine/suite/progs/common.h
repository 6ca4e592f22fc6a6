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
#include <sys/types.h>
#include <sys/wait.h>
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

/* Deterministic pseudo-random numbers (xorshift64): the next value of *s, which
 * starts at XORSHIFT_SEED. */
#define XORSHIFT_SEED 88172645463325252ULL

static inline uint64_t xorshift64(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* One step of the long phase: sleep 100 ms, print the numbered tick. */
static inline void tick(int i)
{
	sleep_ms(100);
	printf("tick %d\n", i);
	fflush(stdout);
}

/* ---- Process trees (tree_*.c): children, their exit, data through fds. ---- */

/* fork(2), failing the test when it fails. */
static inline pid_t fork_or_fail(void)
{
	pid_t p = fork();

	if (p < 0)
		fail("fork");
	return p;
}

/* Reaps child `pid` and fails the test ("<who> status <hex>") unless it exited
 * with `code`; `who` is a printf format. */
__attribute__((format(printf, 3, 4)))
static inline void expect_exit(pid_t pid, int code, const char *who, ...)
{
	va_list ap;
	char name[128];
	int st = 0;

	va_start(ap, who);
	vsnprintf(name, sizeof(name), who, ap);
	va_end(ap);
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == code, "%s status %x", name, st);
}

/* Reads exactly n bytes (retrying on EINTR): 0, or -1 on error or end of file. */
static inline int read_full(int fd, void *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, (char *)buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		got += r;
	}
	return 0;
}

/* Writes exactly n bytes (retrying on EINTR): 0, or -1 on error. */
static inline int write_full(int fd, const void *buf, size_t n)
{
	size_t put = 0;

	while (put < n) {
		ssize_t r = write(fd, (const char *)buf + put, n - put);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		put += r;
	}
	return 0;
}

/* The checksum of a message: seed, then s = s * 131 + byte for each byte. */
static inline uint64_t sum131(const unsigned char *m, size_t n, uint64_t seed)
{
	uint64_t s = seed;
	size_t k;

	for (k = 0; k < n; k++)
		s = s * 131 + m[k];
	return s;
}

/* Shared offsets: the writers of one file write "<tag> <i>\n" lines with
 * tag_line (one write each; a child _exits 5 when it fails). */
static inline void tag_line(int fd, char tag, int i)
{
	char b[32];
	int n = snprintf(b, sizeof(b), "%c %d\n", tag, i);

	if (write(fd, b, n) != n)
		_exit(5);
}

#define TAG_MAX_TICKS 1000

/* Reads back the lines of `path` and counts them in seen[t][i] (t: the tag's
 * index in `tags`); fails on a garbled line, an unknown tag or an i out of range
 * [0, suite_ticks). */
static inline void count_tag_lines(const char *path, const char *tags, int seen[][TAG_MAX_TICKS])
{
	char buf[65536], *p;
	ssize_t n;
	FILE *f;

	f = fopen(path, "r");
	if (!f)
		fail("reopen %s", path);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n < 0 ? 0 : n] = 0;
	for (p = buf; *p;) {
		char who;
		int k, used;

		if (sscanf(p, "%c %d\n%n", &who, &k, &used) != 2 || p[used - 1] != '\n')
			fail("garbled line at byte %d", (int)(p - buf));
		CHECK(k >= 0 && k < suite_ticks && who && strchr(tags, who), "bad line at byte %d", (int)(p - buf));
		seen[strchr(tags, who) - tags][k]++;
		p += used;
	}
}

#endif
