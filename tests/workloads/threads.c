/* Four threads each bump a shared counter and their slot of an array under
 * a mutex, and their own __thread counter, which must equal their slot; each
 * also checks a __thread tag, its TID and pthread_self() stay the same. The
 * main thread checks the slots add up to the shared counter and that every
 * thread made progress before each tick. With the argument "new-ids" the
 * PID and TID checks are off, for a restore with --no-pids. */
#include "wl.h"
#include <pthread.h>
#include <sys/syscall.h>

#define NT 4

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long shared, slot[NT];
static __thread unsigned long mine;
static __thread uint64_t tag;
static int same_ids = 1;

static pid_t tid(void)
{
    return syscall(SYS_gettid);
}

static void *worker(void *arg)
{
    int i = (int)(intptr_t)arg;
    pthread_t self = pthread_self();
    pid_t me = tid();
    tag = pat(i, 0);
    for (;;) {
        pthread_mutex_lock(&lock);
        shared++;
        unsigned long mine_in_slot = ++slot[i];
        pthread_mutex_unlock(&lock);
        if (++mine != mine_in_slot)
            bad("thread %d: __thread counter %lu, its slot says %lu", i, mine, mine_in_slot);
        if (tag != pat(i, 0))
            bad("thread %d: __thread tag changed", i);
        if ((same_ids && tid() != me) || !pthread_equal(pthread_self(), self))
            bad("thread %d: TID %d became %d, or pthread_self() changed", i, (int)me, (int)tid());
        sleep_ms(1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    same_ids = argc < 2 || strcmp(argv[1], "new-ids");
    pthread_t t[NT];
    for (int i = 0; i < NT; i++)
        if ((errno = pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i)))
            bad("pthread_create: %s", strerror(errno));
    pid_t pid = getpid();
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
        if (same_ids && (getpid() != pid || tid() != pid))
            bad("main: PID %d became %d (TID %d)", (int)pid, (int)getpid(), (int)tid());
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
