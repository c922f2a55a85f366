/* Self-checkpointing counter (C API): two threads count (one with THREADS 0);
 * every EVERY ticks the main thread writes an image of the process with
 * usercr_checkpoint_self(). Log lines (O_APPEND): "tick N A B" (A: main's
 * count, B: the thread's), "ckpt N R" (R: 0 here, 1 in a restored copy),
 * "error N MESSAGE".
 *     counter_self IMAGE LOG [EVERY [THREADS]] */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <usercr.h>

static volatile unsigned long thread_count;

static void *worker(void *arg)
{
    struct timespec ts = {0, 5000000L};
    (void)arg;
    for (;;) {
        thread_count++;
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s IMAGE LOG [EVERY [THREADS]]\n", argv[0]);
        return 2;
    }
    long every = argc > 3 ? atol(argv[3]) : 10;
    int log = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log < 0) {
        perror(argv[2]);
        return 1;
    }
    pthread_t t;
    if (argc < 5 || atoi(argv[4]))
        pthread_create(&t, NULL, worker, NULL);
    struct timespec ts = {0, 20000000L};
    for (unsigned long n = 1;; n++) {
        dprintf(log, "tick %lu %lu %lu\n", n, n, thread_count);
        if (n % every == 0) {
            int r = usercr_checkpoint_self(argv[1]);
            if (r < 0)
                dprintf(log, "error %lu %s\n", n, usercr_last_error());
            else
                dprintf(log, "ckpt %lu %d\n", n, r);
        }
        nanosleep(&ts, NULL);
    }
}
