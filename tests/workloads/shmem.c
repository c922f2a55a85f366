/* Parent and child take turns through shared memory: the parent writes a
 * pattern for round s into a MAP_SHARED|MAP_ANONYMOUS region, the child
 * checks it and answers with its own pattern in a shared memfd mapping,
 * which the parent checks. The child maps the memfd a second time after the
 * fork and checks the two views stay one memory. */
#include "wl.h"
#include <sys/mman.h>

#define LEN (64UL << 10)

struct ctl {
    uint32_t pseq, cseq;    /* last round the parent wrote / the child answered */
};

static void *map(size_t len, int fd)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | (fd < 0 ? MAP_ANONYMOUS : 0), fd, 0);
    if (p == MAP_FAILED)
        bad("mmap: %s", strerror(errno));
    return p;
}

int main(void)
{
    struct ctl *ctl = map(4096 + LEN, -1);
    char *pdata = (char *)ctl + 4096;
    int fd = memfd_create("wl-shmem", 0);
    if (fd < 0 || ftruncate(fd, LEN))
        bad("memfd: %s", strerror(errno));
    char *cdata = map(LEN, fd);
    if (wl_fork() == 0) {
        char *view = map(LEN, fd);
        close(fd);
        for (uint32_t s = 1;; s++) {
            uint32_t p;
            while ((p = __atomic_load_n(&ctl->pseq, __ATOMIC_ACQUIRE)) == s - 1)
                sleep_ms(1);
            if (p != s)
                bad("child: parent is at round %u, expected %u", p, s);
            if (!pattern_ok(pdata, LEN, 2 * s))
                bad("child: the anonymous shared region does not hold round %u", s);
            pattern_fill(cdata, LEN, 2 * s + 1);
            if (memcmp(cdata, view, LEN))
                bad("child: the two mappings of the memfd differ");
            __atomic_store_n(&ctl->cseq, s, __ATOMIC_RELEASE);
        }
    }
    close(fd);
    uint64_t next_tick = 0;
    for (uint32_t s = 1;; s++) {
        pattern_fill(pdata, LEN, 2 * s);
        __atomic_store_n(&ctl->pseq, s, __ATOMIC_RELEASE);
        uint32_t c;
        while ((c = __atomic_load_n(&ctl->cseq, __ATOMIC_ACQUIRE)) == s - 1) {
            check_children();
            sleep_ms(1);
        }
        if (c != s)
            bad("parent: child is at round %u, expected %u", c, s);
        if (!pattern_ok(cdata, LEN, 2 * s + 1))
            bad("parent: the memfd region does not hold round %u", s);
        if (now_ms() >= next_tick) {
            if (!wl_tick)
                say("ready");
            tick();
            next_tick = now_ms() + 20;
        }
    }
}
