/* Needs a real kernel: qemu-user answers ptrace with ENOSYS.
 * Seizes a forked child, stops it with PTRACE_INTERRUPT and reads its
 * registers with PTRACE_GETREGSET NT_PRSTATUS.  Exits with argv[1]
 * (default 0) so the caller can check exit-status propagation. */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int status = argc > 1 ? atoi(argv[1]) : 0;
    struct utsname u;
    uname(&u);
    printf("machine %s long %zu\n", u.machine, sizeof(long));
    fflush(stdout);

    pid_t child = fork();
    if (child < 0) { perror("fork"); return 100; }
    if (child == 0) { for (;;) pause(); }
    if (ptrace(PTRACE_SEIZE, child, 0, 0) < 0) {
        fprintf(stderr, "PTRACE_SEIZE: %s\n", strerror(errno));
        kill(child, SIGKILL);
        return 101;
    }
    if (ptrace(PTRACE_INTERRUPT, child, 0, 0) < 0) {
        fprintf(stderr, "PTRACE_INTERRUPT: %s\n", strerror(errno));
        kill(child, SIGKILL);
        return 102;
    }
    int ws;
    if (waitpid(child, &ws, __WALL) != child || !WIFSTOPPED(ws)) {
        fprintf(stderr, "waitpid: unexpected status %#x\n", ws);
        kill(child, SIGKILL);
        return 103;
    }
    unsigned long regs[64];
    struct iovec iov = { regs, sizeof regs };
    if (ptrace(PTRACE_GETREGSET, child, (void *)NT_PRSTATUS, &iov) < 0) {
        fprintf(stderr, "GETREGSET: %s\n", strerror(errno));
        kill(child, SIGKILL);
        return 104;
    }
    printf("NT_PRSTATUS %zu\n", iov.iov_len);
    fprintf(stderr, "probe stderr line\n");
    kill(child, SIGKILL);
    waitpid(child, &ws, __WALL);
    printf("exiting %d\n", status);
    return status;
}
