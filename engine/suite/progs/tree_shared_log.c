/* tree_shared_log: a parent and two children write lines to ONE open file
 * description (inherited fd, no O_APPEND: one shared offset). Child A writes
 * through the inherited fd; child B has it as its stdout (dup2, as a shell
 * redirection does) and uses stdio. After a restore the three must still share
 * one offset: with separate offsets they would overwrite each other's lines.
 * The parent checks at the end that every line is there exactly once. */
#include "common.h"
#include <fcntl.h>
#include <sys/wait.h>

static void line(int fd, char who, int i)
{
	char b[32];
	int n = snprintf(b, sizeof(b), "%c %d\n", who, i);

	if (write(fd, b, n) != n)
		_exit(5);
}

static pid_t child(int fd, char who)
{
	pid_t c = fork();
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
			line(fd, who, i);
		}
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	int fd, i, st, seen[3][1000] = { { 0 } };
	pid_t a, b;
	char buf[65536], *p;
	ssize_t n;
	FILE *f;

	suite_init(argc, argv);
	if (suite_ticks > 1000)
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
	if (a < 0 || b < 0)
		fail("fork");
	ready();
	for (i = 0; i < suite_ticks; i++) {
		tick(i);
		line(fd, 'P', i);
	}
	CHECK(waitpid(a, &st, 0) == a && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child A status %x", st);
	CHECK(waitpid(b, &st, 0) == b && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child B status %x", st);
	CHECK(lseek(fd, 0, SEEK_CUR) == lseek(fd, 0, SEEK_END), "shared offset is not at the end");
	f = fopen("log.txt", "r");
	if (!f)
		fail("reopen log.txt");
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n < 0 ? 0 : n] = 0;
	for (p = buf; *p;) {
		char who;
		int k, used;

		if (sscanf(p, "%c %d\n%n", &who, &k, &used) != 2 || p[used - 1] != '\n')
			fail("garbled line at byte %d", (int)(p - buf));
		CHECK(k >= 0 && k < suite_ticks && (who == 'P' || who == 'A' || who == 'B'), "bad line at byte %d", (int)(p - buf));
		seen[who == 'P' ? 0 : who == 'A' ? 1 : 2][k]++;
		p += used;
	}
	for (i = 0; i < suite_ticks; i++)
		CHECK(seen[0][i] == 1 && seen[1][i] == 1 && seen[2][i] == 1,
		      "line %d seen %d/%d/%d times (P/A/B): offsets not shared", i, seen[0][i], seen[1][i], seen[2][i]);
	pass();
}
