/* tree_shared_log: a parent and two children write lines to ONE open file
 * description (inherited fd, no O_APPEND: one shared offset). Child A writes
 * through the inherited fd; child B has it as its stdout (dup2, as a shell
 * redirection does) and uses stdio. After a restore the three must still share
 * one offset: with separate offsets they would overwrite each other's lines.
 * The parent checks at the end that every line is there exactly once. */
#include "common.h"
#include <fcntl.h>

static pid_t child(int fd, char who)
{
	pid_t c = fork_or_fail();
	int i;

	if (c != 0)
		return c;
	if (who == 'B') {
		if (dup2(fd, 1) != 1)
			_exit(6);
		close(fd);
	}
	for (i = 0; i < suite_ticks; i++) {
		sleep_ms(100);
		if (who == 'B') {
			printf("%c %d\n", who, i);
			fflush(stdout);
		} else {
			tag_line(fd, who, i);
		}
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	int fd, i, seen[3][TAG_MAX_TICKS] = { { 0 } };
	pid_t a, b;

	suite_init(argc, argv);
	if (suite_ticks > TAG_MAX_TICKS)
		fail("too many ticks");
	fd = open("log.txt", O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		fail("open log.txt");
	if (fd < 10) {
		int hi = fcntl(fd, F_DUPFD, 10);

		close(fd);
		fd = hi;
	}
	a = child(fd, 'A');
	b = child(fd, 'B');
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		tag_line(fd, 'P', i);
	}
	expect_exit(a, 0, "child A");
	expect_exit(b, 0, "child B");
	CHECK(lseek(fd, 0, SEEK_CUR) == lseek(fd, 0, SEEK_END), "shared offset is not at the end");
	count_tag_lines("log.txt", "PAB", seen);
	for (i = 0; i < suite_ticks; i++)
		CHECK(seen[0][i] == 1 && seen[1][i] == 1 && seen[2][i] == 1,
		      "line %d seen %d/%d/%d times (P/A/B): offsets not shared", i, seen[0][i], seen[1][i], seen[2][i]);
	pass();
}
