/* tree_shm: parent and child share memory: an anonymous MAP_SHARED page and a
 * memfd mapped MAP_SHARED (at another address in the child, which maps it again
 * after the fork). A token goes parent -> child -> parent through pipes every
 * tick; the child adds to both counters, the parent checks it sees the child's
 * writes and writes a value the child checks. After a restore both processes
 * must still see one memory. */
#include "common.h"
#include <sys/mman.h>

struct shared {
	volatile long count;
	volatile long from_parent;
};

int main(int argc, char **argv)
{
	int p2c[2], c2p[2], mfd, i;
	struct shared *anon, *mem, *mem2;
	char tok;
	pid_t child;

	suite_init(argc, argv);
	anon = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	mfd = memfd_create("tree-shm", 0);
	if (anon == MAP_FAILED || mfd < 0 || ftruncate(mfd, 8192) != 0)
		fail("setting up shared memory");
	mem = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (mem == MAP_FAILED || pipe(p2c) || pipe(c2p))
		fail("mmap/pipe");
	child = fork_or_fail();
	if (child == 0) {
		close(p2c[1]);
		close(c2p[0]);
		/* A second mapping of the memfd, then the fd goes away. */
		mem2 = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
		close(mfd);
		if (mem2 == MAP_FAILED)
			_exit(2);
		while (read(p2c[0], &tok, 1) == 1) {
			if (anon->from_parent != anon->count)
				_exit(3);
			anon->count++;
			mem2->count += 2;
			if (write(c2p[1], &tok, 1) != 1)
				_exit(4);
		}
		_exit(anon->count == mem->count / 2 ? 0 : 5);
	}
	close(p2c[0]);
	close(c2p[1]);
	close(mfd);
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		anon->from_parent = i;
		tok = 't';
		if (write(p2c[1], &tok, 1) != 1 || read(c2p[0], &tok, 1) != 1)
			fail("token lost at tick %d", i);
		CHECK(anon->count == i + 1, "anonymous shared counter %ld at tick %d", anon->count, i);
		CHECK(mem->count == 2L * (i + 1), "memfd counter %ld at tick %d", mem->count, i);
	}
	close(p2c[1]);
	expect_exit(child, 0, "child");
	pass();
}
