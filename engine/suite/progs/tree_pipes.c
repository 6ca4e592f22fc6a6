/* tree_pipes: a process tree talking through pipes, with data in flight.
 *   - worker (fork): in its own process group; reads 1000-byte records from
 *     pipe A lagging ~3 records behind the parent (so A always holds data),
 *     checks each, answers with an 8-byte sum on pipe B; at EOF answers its
 *     record count and exits 0. Counts SIGUSR1s sent to its group.
 *   - relay (fork + exec of cat): the parent writes "line <i>\n" into its stdin
 *     pipe and reads the same line back from its stdout pipe each tick.
 *   - zombie (fork): exits 7 at once and is reaped only at the end.
 * After a restore the pipes, their buffered data, the pids (waitpid on the
 * recorded pids), the zombie's status and the worker's group must be intact. */
#include "common.h"
#include <fcntl.h>
#include <signal.h>

#define REC 1000

static volatile sig_atomic_t usr1;

static void on_usr1(int s)
{
	(void)s;
	usr1++;
}

static uint64_t rec_sum(const unsigned char *r)
{
	uint64_t s = 0;
	int k;

	for (k = 0; k < REC; k++)
		s = s * 31 + r[k];
	return s;
}

static void fill(unsigned char *r, int i)
{
	int k;

	for (k = 0; k < REC; k++)
		r[k] = (unsigned char)(i * 7 + k);
}

static void worker(int in, int out)
{
	unsigned char r[REC], want[REC];
	uint64_t v;
	int i = 0;

	signal(SIGUSR1, on_usr1);
	setpgid(0, 0);
	sleep_ms(300);
	for (;;) {
		if (read_full(in, r, REC) != 0)
			break;
		fill(want, i);
		if (memcmp(r, want, REC) != 0)
			_exit(3);
		v = rec_sum(r);
		if (write_full(out, &v, 8) != 0)
			_exit(4);
		i++;
		sleep_ms(100);
	}
	v = 0xc0ffee00000000ULL | (uint64_t)i | ((uint64_t)usr1 << 16);
	write_full(out, &v, 8);
	_exit(0);
}

int main(int argc, char **argv)
{
	int a[2], b[2], c[2], d[2], i, answered = 0;
	unsigned char r[REC];
	char line[64], back[64];
	pid_t w, relay, zombie;
	uint64_t v;

	suite_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	if (pipe(a) || pipe(b) || pipe(c) || pipe(d))
		fail("pipe");
	w = fork_or_fail();
	if (w == 0) {
		close(a[1]);
		close(b[0]);
		close(c[0]);
		close(c[1]);
		close(d[0]);
		close(d[1]);
		worker(a[0], b[1]);
	}
	setpgid(w, w);
	relay = fork_or_fail();
	if (relay == 0) {
		dup2(c[0], 0);
		dup2(d[1], 1);
		close(a[0]);
		close(a[1]);
		close(b[0]);
		close(b[1]);
		close(c[0]);
		close(c[1]);
		close(d[0]);
		close(d[1]);
		execlp("cat", "cat", (char *)NULL);
		_exit(5);
	}
	zombie = fork_or_fail();
	if (zombie == 0)
		_exit(7);
	close(a[0]);
	close(b[1]);
	close(c[0]);
	close(d[1]);
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		fill(r, i);
		if (write_full(a[1], r, REC) != 0)
			fail("write to the worker at tick %d", i);
		/* Answers lag: take one whenever more than 3 records are outstanding. */
		while (i + 1 - answered > 3) {
			fill(r, answered);
			if (read_full(b[0], &v, 8) != 0)
				fail("worker answer %d missing", answered);
			CHECK(v == rec_sum(r), "worker answer %d wrong", answered);
			answered++;
		}
		snprintf(line, sizeof(line), "line %d\n", i);
		if (write_full(c[1], line, strlen(line)) != 0)
			fail("write to cat at tick %d", i);
		memset(back, 0, sizeof(back));
		if (read_full(d[0], back, strlen(line)) != 0 || strcmp(back, line) != 0)
			fail("cat returned %s for %s", back, line);
		if (i == suite_ticks - 5 && kill(-w, SIGUSR1) != 0)
			fail("kill of the worker's group: %s", strerror(errno));
	}
	close(a[1]);
	while (answered < suite_ticks) {
		fill(r, answered);
		if (read_full(b[0], &v, 8) != 0)
			fail("worker answer %d missing at the end", answered);
		CHECK(v == rec_sum(r), "worker answer %d wrong", answered);
		answered++;
	}
	if (read_full(b[0], &v, 8) != 0)
		fail("no final count from the worker");
	CHECK((v & 0xffff) == (uint64_t)suite_ticks, "worker counted %d records", (int)(v & 0xffff));
	CHECK(((v >> 16) & 0xffff) == 1, "worker got %d SIGUSR1 (group signal)", (int)((v >> 16) & 0xffff));
	expect_exit(w, 0, "worker");
	close(c[1]);
	CHECK(read(d[0], back, 1) == 0, "cat did not end");
	expect_exit(relay, 0, "cat");
	expect_exit(zombie, 7, "zombie");
	pass();
}
