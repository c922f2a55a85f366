/* Reads a file 8 bytes a tick and appends a line per tick to another; prints
 * the read offset and what it read, so a test can see both continue. */
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: files INPUT APPEND_LOG\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int in = open(argv[1], O_RDONLY);
    int log = open(argv[2], O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (in < 0 || log < 0) { perror("open"); return 2; }
    struct timespec ts = { 0, 30 * 1000000L };
    char buf[9] = { 0 };
    for (unsigned long n = 0;; n++) {
        off_t at = lseek(in, 0, SEEK_CUR);
        if (read(in, buf, 8) != 8) { printf("eof\n"); return 1; }
        printf("%ld %s\n", (long)at, buf);
        dprintf(log, "%lu\n", n);
        nanosleep(&ts, NULL);
    }
}
