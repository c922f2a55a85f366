/* Benchmark workload: a tree of small processes joined in a ring of pipes.
 * The arguments are the fanout at each depth: "3" is the root and 3
 * children (4 tasks), "3 4 4" is 1 + 3 + 12 + 48 = 64 tasks. Task i reads a
 * one-byte token from its pipe, sleeps 1 ms and writes it to task i+1's, so
 * almost all the time every task is blocked in read(). The root prints
 * "ready" once the token has gone round once, then "lap N" at most every
 * 100 ms. Children die with their parent (PR_SET_PDEATHSIG). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_DEPTH 8

static int depth, fanout[MAX_DEPTH], ntasks;
static int (*ring)[2];  /* task i reads ring[i][0] and writes ring[(i + 1) % ntasks][1] */

static int size(int d)
{
    return d == depth ? 1 : 1 + fanout[d] * size(d + 1);
}

static void __attribute__((noreturn)) die(const char *what)
{
    fprintf(stderr, "tree: %s: %s\n", what, strerror(errno));
    exit(1);
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000;
}

/* Closes every ring fd but the two task id uses. */
static void keep_only(int id)
{
    for (int i = 0; i < ntasks; i++) {
        if (i != id)
            close(ring[i][0]);
        if (i != (id + 1) % ntasks)
            close(ring[i][1]);
    }
}

static void pass(int id, char token)
{
    while (write(ring[(id + 1) % ntasks][1], &token, 1) < 0)
        if (errno != EINTR)
            die("write");
}

static void __attribute__((noreturn)) hop(int id)
{
    struct timespec ms = { 0, 1000000 };
    unsigned long lap = 0;
    long printed = 0;
    char token;
    for (;;) {
        ssize_t n = read(ring[id][0], &token, 1);
        if (n == 0)
            exit(0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("read");
        }
        nanosleep(&ms, NULL);
        if (id == 0 && ++lap == 1) {
            printf("ready\n");
        } else if (id == 0 && now_ms() - printed >= 100) {
            printf("lap %lu\n", lap);
            printed = now_ms();
        }
        pass(id, token);
    }
}

/* Forks the children of task id (at depth d); task numbers are depth-first. */
static void spawn(int id, int d)
{
    for (int k = 0; d < depth && k < fanout[d]; k++) {
        int child = id + 1 + k * size(d + 1);
        pid_t parent = getpid(), pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(1);
            spawn(child, d + 1);
            keep_only(child);
            hop(child);
        }
    }
}

int main(int argc, char **argv)
{
    depth = argc - 1;
    if (depth < 1 || depth > MAX_DEPTH) {
        fprintf(stderr, "usage: tree FANOUT [FANOUT...]\n");
        return 2;
    }
    for (int d = 0; d < depth; d++)
        fanout[d] = atoi(argv[d + 1]);
    ntasks = size(0);
    setvbuf(stdout, NULL, _IOLBF, 0);
    ring = calloc(ntasks, sizeof(*ring));
    if (!ring)
        die("calloc");
    for (int i = 0; i < ntasks; i++)
        if (pipe(ring[i]))
            die("pipe");
    spawn(0, 0);
    keep_only(0);
    pass(0, 't');
    hop(0);
}
