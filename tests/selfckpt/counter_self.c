/* Self-checkpointing counter (C API): two threads count (one with THREADS 0);
 * every EVERY ticks the main thread writes an image of the process with
 * usercr_checkpoint_self(). Log lines (O_APPEND): "tick N A B" (A: main's
 * count, B: the thread's), "ckpt N R" (R: 0 here, 1 in a restored copy),
 * "error N MESSAGE". Each tick the heap also turns over (HEAP_SLOTS blocks,
 * one replaced per tick, each checked when freed): a restored copy's malloc,
 * brk included, must work on its restored heap.
 *     counter_self IMAGE LOG [EVERY [THREADS]] */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <usercr.h>

#define HEAP_SLOTS 16

static volatile unsigned long thread_count;
static unsigned char *heap[HEAP_SLOTS];
static size_t heap_size[HEAP_SLOTS];

/* The block of tick n - HEAP_SLOTS must still hold that tick's byte; it gives
 * way to tick n's, larger as n grows (the brk heap grows at most ticks; all
 * below malloc's mmap threshold). */
static int turn_heap(unsigned long n)
{
    unsigned long k = n % HEAP_SLOTS;
    unsigned char old = (unsigned char)(n - HEAP_SLOTS);
    if (heap[k] && (heap[k][0] != old || heap[k][heap_size[k] - 1] != old))
        return -1;
    free(heap[k]);
    heap_size[k] = 16384 + (n % 96) * 1024;
    heap[k] = malloc(heap_size[k]);
    if (!heap[k])
        return -1;
    memset(heap[k], (int)(n & 0xff), heap_size[k]);
    return 0;
}

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
        if (turn_heap(n)) {
            dprintf(log, "error %lu heap lost\n", n);
            return 1;
        }
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
