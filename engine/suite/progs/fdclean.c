/* fdclean: not a case but a harness helper. Closes every fd above 2 (test
 * runners leak jobserver pipes and the like into children) and execs its
 * arguments, so programs under test start with exactly stdin, stdout and
 * stderr. Retries ETXTBSY: in a multithreaded harness another thread's fork
 * may briefly hold a write fd of a just-copied binary. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	DIR *d;
	struct dirent *e;
	int fd, dfd;

	if (argc < 2) {
		fprintf(stderr, "usage: fdclean PROGRAM [ARGS...]\n");
		return 127;
	}
	if (close_range(3, ~0U, 0) != 0) {
		d = opendir("/proc/self/fd");
		if (d) {
			dfd = dirfd(d);
			while ((e = readdir(d)))
				if ((fd = atoi(e->d_name)) > 2 && fd != dfd)
					close(fd);
			closedir(d);
		}
	}
	for (fd = 0; fd < 200; fd++) {
		execvp(argv[1], argv + 1);
		if (errno != ETXTBSY)
			break;
		usleep(10000);
	}
	perror(argv[1]);
	return 127;
}
