/* The ptrace-free self-checkpoint (selfdump.c); read by cffi's cdef too. */
#ifndef UCR_SELFDUMP_H
#define UCR_SELFDUMP_H

/* Spawns the helper argv (its stdin: our answers, its stdout: its questions)
 * and answers it from a signal handler until the image is written. 0 here,
 * 1 in a restored copy, -errno on failure (err: the helper's reason, or ""). */
int ucr_self_inside(char *const argv[], char *err, uint32_t errlen);

#endif
