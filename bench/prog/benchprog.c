/* The benchmark's program (torpor-bench): fills memory, then its worker threads tick.
 *
 *   benchprog run KIND MIB THREADS   KIND = random | compressible | zero
 *       Maps MIB MiB of private anonymous memory, fills it from THREADS threads, prints
 *       "ready", then every worker loops: note the time, record the longest gap since its
 *       previous tick, sleep 1 ms. The main thread prints "tick SEQ MAXGAP_US" every 10 ms
 *       (MAXGAP_US: the longest gap any worker saw since the previous line). A line
 *       "dirty PERMILLE" on stdin rewrites that share of the pages (spread evenly) and
 *       answers "dirtied N" (pages).
 *   benchprog compute N              N rounds of an integer loop; prints "elapsed_ns T"
 *   benchprog syscall N              N getppid() + clock_gettime pairs; prints "elapsed_ns T"
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static uint8_t *mem;
static size_t mem_len;
static int kind; /* 0 random, 1 compressible, 2 zero */
static int nthreads;
static _Atomic uint64_t maxgap_ns;
static _Atomic uint64_t generation = 1;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Fills page `p` for generation `g` of the data kind. */
static void fill_page(size_t p, uint64_t g) {
    uint64_t *w = (uint64_t *)(mem + p * PAGE);
    if (kind == 0) {
        uint64_t s = (p + 1) * 0x9e3779b97f4a7c15ULL ^ g;
        for (size_t i = 0; i < PAGE / 8; i++) w[i] = xorshift(&s);
    } else if (kind == 1) {
        /* Compressible: one 8-byte value repeated per page, a little entropy per page. */
        uint64_t v = p * 0x9e3779b97f4a7c15ULL ^ g;
        for (size_t i = 0; i < PAGE / 8; i++) w[i] = v;
    } else {
        if (g > 1) w[0] = g; /* a dirtied zero page becomes non-zero */
        else memset(w, 0, PAGE);
    }
}

struct range { size_t from, to; };

static void *filler(void *arg) {
    struct range *r = arg;
    for (size_t p = r->from; p < r->to; p++) fill_page(p, 1);
    return NULL;
}

static void *worker(void *arg) {
    (void)arg;
    uint64_t last = now_ns();
    for (;;) {
        uint64_t t = now_ns();
        uint64_t gap = t - last;
        last = t;
        uint64_t cur = atomic_load(&maxgap_ns);
        while (gap > cur && !atomic_compare_exchange_weak(&maxgap_ns, &cur, gap)) {}
        struct timespec d = {0, 1000000};
        nanosleep(&d, NULL);
    }
    return NULL;
}

static void *commands(void *arg) {
    (void)arg;
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        unsigned permille;
        if (sscanf(line, "dirty %u", &permille) == 1 && permille > 0) {
            size_t pages = mem_len / PAGE, step = 1000 / permille, n = 0;
            uint64_t g = atomic_fetch_add(&generation, 1) + 1;
            for (size_t p = 0; p < pages; p += step, n++) fill_page(p, g);
            printf("dirtied %zu\n", n);
            fflush(stdout);
        }
    }
    return NULL;
}

static int run(int argc, char **argv) {
    if (argc < 5) return 2;
    kind = !strcmp(argv[2], "random") ? 0 : !strcmp(argv[2], "compressible") ? 1 : 2;
    mem_len = (size_t)atol(argv[3]) << 20;
    nthreads = atoi(argv[4]);
    if (nthreads < 1 || nthreads > 64 || mem_len == 0) return 2;
    mem = mmap(NULL, mem_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 1; }
    pthread_t th[64];
    struct range rs[64];
    size_t pages = mem_len / PAGE;
    for (int i = 0; i < nthreads; i++) {
        rs[i].from = pages * i / nthreads;
        rs[i].to = pages * (i + 1) / nthreads;
        pthread_create(&th[i], NULL, filler, &rs[i]);
    }
    for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < nthreads; i++) pthread_create(&th[i], NULL, worker, NULL);
    pthread_t cmd;
    pthread_create(&cmd, NULL, commands, NULL);
    printf("ready\n");
    fflush(stdout);
    for (uint64_t seq = 0;; seq++) {
        uint64_t next = now_ns() + 10000000ULL;
        while (now_ns() < next) {
            uint64_t left = next - now_ns();
            struct timespec d = {0, (long)(left < 10000000ULL ? left : 10000000ULL)};
            nanosleep(&d, NULL);
        }
        uint64_t g = atomic_exchange(&maxgap_ns, 0);
        printf("tick %llu %llu\n", (unsigned long long)seq, (unsigned long long)(g / 1000));
        fflush(stdout);
    }
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "run")) return run(argc, argv);
    if (argc >= 3 && (!strcmp(argv[1], "compute") || !strcmp(argv[1], "syscall"))) {
        uint64_t n = strtoull(argv[2], NULL, 10), t0 = now_ns();
        /* The accumulator stays in a register: a volatile stack slot would make the
         * timing depend on where the stack sits (the environment's size moves it). */
        uint64_t acc = 1;
        if (argv[1][0] == 'c') {
            uint64_t x = 88172645463325252ULL;
            for (uint64_t i = 0; i < n; i++) acc += xorshift(&x) >> 60;
        } else {
            for (uint64_t i = 0; i < n; i++) acc += (uint64_t)syscall(SYS_getppid) + now_ns();
        }
        printf("elapsed_ns %llu %llu\n", (unsigned long long)(now_ns() - t0),
               (unsigned long long)(acc & 1));
        return 0;
    }
    fprintf(stderr, "usage: benchprog run KIND MIB THREADS | compute N | syscall N\n");
    return 2;
}
