/* Sits inside one long syscall: "sleep" (nanosleep) or "read" (read on stdin).
 * Interruption with EINTR is a failure: the syscall must resume. */
#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 2 && !strcmp(argv[1], "sleep")) {
        struct timespec ts = { 0, 0 }, rem;
        ts.tv_sec = atoi(argv[2]);
        printf("sleeping\n");
        if (nanosleep(&ts, &rem)) {
            printf("interrupted %s\n", strerror(errno));
            return 1;
        }
        printf("woke\n");
        return 0;
    }
    char buf[64] = { 0 };
    printf("reading\n");
    ssize_t n = read(0, buf, sizeof(buf) - 1);
    if (n < 0) {
        printf("interrupted %s\n", strerror(errno));
        return 1;
    }
    printf("got %s", buf);
    return 0;
}
