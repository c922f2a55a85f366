/* usercr self-checkpoint, C API (libusercr.a). See docs/self-checkpoint.md.
 *
 *     #include <usercr.h>
 *     int r = usercr_checkpoint_self("/var/tmp/app.img");
 *     if (r < 0) fprintf(stderr, "%s\n", usercr_last_error());
 *     else if (r == 1) puts("restored");   // rstr -i /var/tmp/app.img
 *
 * Link with -lusercr (cc prog.c -I.../include -L.../native -lusercr). The image is
 * written by the helper program usercr-selfckpt (on PATH, or $USERCR_SELFCKPT),
 * which comes with usercr; rstr restores it. */
#ifndef USERCR_H
#define USERCR_H

#ifdef __cplusplus
extern "C" {
#endif

/* Writes an image of the calling process (every thread, and its children) to
 * path, replacing it atomically if it exists. Returns 0 in the program that
 * wrote it, which goes on running; 1 in a process restored from it; -1 with
 * errno set if no image was written (the program is unharmed). One call at a
 * time per process (another one meanwhile fails with EBUSY). */
int usercr_checkpoint_self(const char *path);

/* Why the last usercr_checkpoint_self() of this process failed, in one line. */
const char *usercr_last_error(void);

#ifdef __cplusplus
}
#endif

#endif
