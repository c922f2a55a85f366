/* Counts forever, one line per tick, so a test can see where it continues. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
    long ms = argc > 1 ? atol(argv[1]) : 20;
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (unsigned long n = 0;; n++) {
        printf("%lu\n", n);
        nanosleep(&ts, NULL);
    }
}
