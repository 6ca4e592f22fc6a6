/* counter: a deterministic computation that prints progress, for the Slurm resume tests.
 *
 *   counter STEPS DELAY_MS [TRACE]
 *
 * stdout: "step I HEX" per step, then "RESULT HEX": the same bytes on every run whatever
 * DELAY_MS is. The program knows nothing about torpor. TRACE (optional; ".<SLURM_PROCID>"
 * is appended in a Slurm task) is a side log the tests read to see what really ran:
 * "start <ms>" when main() is entered, "step I <ms>" per step, "end <ms>"; each line is
 * appended with open/write/close so that no trace descriptor is open between steps. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char trace[4096];

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void note(const char *what, int step) {
    if (!trace[0]) return;
    char line[128];
    int n = step >= 0 ? snprintf(line, sizeof line, "%s %d %lld\n", what, step, now_ms())
                      : snprintf(line, sizeof line, "%s %lld\n", what, now_ms());
    int fd = open(trace, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    if (write(fd, line, (size_t)n) != n) perror("trace");
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: counter STEPS DELAY_MS [TRACE]\n");
        return 2;
    }
    int steps = atoi(argv[1]);
    int delay = atoi(argv[2]);
    if (argc > 3) {
        const char *rank = getenv("SLURM_PROCID");
        if (rank && getenv("SLURM_STEP_ID") && strcmp(getenv("SLURM_STEP_ID"), "4294967291") != 0)
            snprintf(trace, sizeof trace, "%s.%s", argv[3], rank);
        else
            snprintf(trace, sizeof trace, "%s", argv[3]);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    note("start", -1);
    const size_t n = 1 << 18; /* 2 MiB of state that must survive a restore */
    uint64_t *buf = malloc(n * sizeof *buf);
    if (!buf) return 1;
    for (size_t i = 0; i < n; i++) buf[i] = i * 0x9e3779b97f4a7c15ULL;
    uint64_t acc = 0xcbf29ce484222325ULL;
    for (int s = 0; s < steps; s++) {
        for (int r = 0; r < 4; r++) {
            for (size_t i = 0; i < n; i++) {
                buf[i] = buf[i] * 6364136223846793005ULL + (acc ^ i);
                acc = (acc ^ (buf[i] >> 29)) * 0x100000001b3ULL;
            }
        }
        printf("step %d %016llx\n", s, (unsigned long long)acc);
        note("step", s);
        struct timespec ts = {delay / 1000, (long)(delay % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
    printf("RESULT %016llx\n", (unsigned long long)acc);
    note("end", -1);
    return 0;
}
