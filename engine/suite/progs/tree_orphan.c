/* tree_orphan: a daemon-style double fork. The root forks A; A forks the worker W
 * and exits at once, so W is an orphan: under torpor it is reparented to the root
 * (a child subreaper) and stays in the checkpointed tree; without that it would be
 * reparented outside the tree and its pipes to the root could not be checkpointed.
 * Each tick the root sends W a number through one pipe and W answers through another
 * (W keeps writing through the checkpoint). At the end W reports how many numbers it
 * answered and exits. */
#include "common.h"
#include <signal.h>

static void worker(int in, int out, pid_t a)
{
	int64_t v, n = 0;

	/* Wait until the double fork is complete (A is gone). */
	while (getppid() == a)
		sleep_ms(1);
	v = -1;
	write_full(out, &v, 8);
	while (read_full(in, &v, 8) == 0) {
		v = v * v + 3;
		if (write_full(out, &v, 8) != 0)
			_exit(2);
		n++;
	}
	write_full(out, &n, 8);
	_exit(0);
}

int main(int argc, char **argv)
{
	int down[2], up[2], i;
	int64_t v;
	pid_t a;

	suite_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	if (pipe(down) || pipe(up))
		fail("pipe");
	a = fork_or_fail();
	if (a == 0) {
		pid_t me = getpid();

		if (fork() == 0) {
			close(down[1]);
			close(up[0]);
			worker(down[0], up[1], me);
		}
		_exit(0);
	}
	expect_exit(a, 0, "A");
	close(down[0]);
	close(up[1]);
	if (read_full(up[0], &v, 8) != 0 || v != -1)
		fail("the worker did not start");
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		v = i;
		if (write_full(down[1], &v, 8) != 0)
			fail("write to the worker at tick %d", i);
		if (read_full(up[0], &v, 8) != 0)
			fail("no answer from the worker at tick %d", i);
		CHECK(v == (int64_t)i * i + 3, "worker answered %lld at tick %d", (long long)v, i);
	}
	close(down[1]);
	if (read_full(up[0], &v, 8) != 0)
		fail("no final count from the worker");
	CHECK(v == suite_ticks, "worker answered %lld numbers", (long long)v);
	CHECK(read(up[0], &v, 1) == 0, "worker did not end");
	pass();
}
