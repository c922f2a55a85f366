/* 64 MiB of patterned anonymous memory, a heap block, a private file mapping
 * (modified, so its pages are copies) and a shared file mapping; every tick it
 * re-checksums all of them and prints "ok N", or "BAD" and exits 1. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define ANON_SIZE (64UL << 20)
#define HEAP_SIZE (4UL << 20)
#define FILE_SIZE (1UL << 20)

static uint64_t sum(const uint64_t *p, size_t n)
{
    uint64_t s = 0;
    for (size_t i = 0; i < n / 8; i++)
        s = s * 31 + p[i];
    return s;
}

static void *map_file(const char *path, int flags)
{
    int fd = open(path, O_RDWR);
    if (fd < 0) { perror(path); exit(2); }
    void *p = mmap(NULL, FILE_SIZE, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(2); }
    close(fd);
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: memory PRIVATE_FILE SHARED_FILE\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    uint64_t *anon = mmap(NULL, ANON_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *heap = malloc(HEAP_SIZE);
    uint64_t *priv = map_file(argv[1], MAP_PRIVATE);
    uint64_t *shared = map_file(argv[2], MAP_SHARED);
    uint64_t seed = (uint64_t)time(NULL) * 2654435761u;
    for (size_t i = 0; i < ANON_SIZE / 8; i++)
        anon[i] = seed ^ (i * 0x9E3779B97F4A7C15ULL);
    for (size_t i = 0; i < HEAP_SIZE / 8; i++)
        heap[i] = ~seed + i;
    for (size_t i = 0; i < FILE_SIZE / 8; i += 3)
        priv[i] = seed + 7 * i;
    for (size_t i = 0; i < FILE_SIZE / 8; i += 5)
        shared[i] = seed - i;
    uint64_t expect[4] = { sum(anon, ANON_SIZE), sum(heap, HEAP_SIZE), sum(priv, FILE_SIZE), sum(shared, FILE_SIZE) };
    printf("sums %016llx %016llx %016llx %016llx\n", (unsigned long long)expect[0], (unsigned long long)expect[1],
           (unsigned long long)expect[2], (unsigned long long)expect[3]);
    struct timespec ts = { 0, 50 * 1000000L };
    for (unsigned long n = 0;; n++) {
        uint64_t got[4] = { sum(anon, ANON_SIZE), sum(heap, HEAP_SIZE), sum(priv, FILE_SIZE), sum(shared, FILE_SIZE) };
        if (memcmp(got, expect, sizeof(got))) {
            printf("BAD %lu\n", n);
            return 1;
        }
        printf("ok %lu\n", n);
        nanosleep(&ts, NULL);
    }
}
