/* Three threads each bump a shared counter and their own slot under a
 * mutex, and keep a __thread copy of their slot; the main thread checks the
 * slots add up and ticks once every thread made progress. Unlike threads.c
 * nothing depends on PIDs or thread IDs, so it restores with --no-pids too. */
#include "wl.h"
#include <pthread.h>

#define NT 3

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long shared, slot[NT];
static __thread unsigned long mine;

static void *worker(void *arg)
{
    int i = (int)(intptr_t)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        shared++;
        unsigned long in_slot = ++slot[i];
        pthread_mutex_unlock(&lock);
        if (++mine != in_slot)
            bad("thread %d: __thread counter %lu, its slot says %lu", i, mine, in_slot);
        sleep_ms(1);
    }
    return NULL;
}

int main(void)
{
    pthread_t t[NT];
    for (int i = 0; i < NT; i++)
        if ((errno = pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i)))
            bad("pthread_create: %s", strerror(errno));
    unsigned long last[NT] = { 0 };
    for (;;) {
        sleep_ms(20);
        pthread_mutex_lock(&lock);
        unsigned long sum = 0, now[NT];
        for (int i = 0; i < NT; i++)
            sum += now[i] = slot[i];
        unsigned long total = shared;
        pthread_mutex_unlock(&lock);
        if (sum != total)
            bad("main: slots add up to %lu, shared counter is %lu", sum, total);
        int stalled = 0;
        for (int i = 0; i < NT; i++)
            stalled |= now[i] == last[i];
        if (stalled)
            continue;
        memcpy(last, now, sizeof(last));
        if (!wl_tick)
            say("ready");
        tick();
    }
}
