/* An inotify instance watching a directory (argv[1]) and two files in it,
 * a and b; a third watch, on x, is removed before anything else, so the
 * watch descriptors have a gap: dir=1 a=2 b=4. Prints "watches ..." and
 * "ready", then one line per event it reads: "event WD MASK NAME" (hex
 * mask, NAME "-" for none). The test makes the events and checks the wds. */
#include "wl.h"
#include <sys/inotify.h>

static void touch(const char *path)
{
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    if (fd < 0)
        bad("create %s: %s", path, strerror(errno));
    close(fd);
}

int main(int argc, char **argv)
{
    char a[4096], b[4096], x[4096];
    if (argc != 2)
        bad("usage: inotify DIR");
    snprintf(a, sizeof(a), "%s/a", argv[1]);
    snprintf(b, sizeof(b), "%s/b", argv[1]);
    snprintf(x, sizeof(x), "%s/x", argv[1]);
    touch(a);
    touch(b);
    touch(x);
    int in = inotify_init1(IN_CLOEXEC);
    if (in < 0)
        bad("inotify_init1: %s", strerror(errno));
    int wd_dir = inotify_add_watch(in, argv[1], IN_CREATE | IN_DELETE);
    int wd_a = inotify_add_watch(in, a, IN_MODIFY);
    int wd_x = inotify_add_watch(in, x, IN_MODIFY);
    int wd_b = inotify_add_watch(in, b, IN_MODIFY | IN_ATTRIB);
    if (wd_dir < 0 || wd_a < 0 || wd_x < 0 || wd_b < 0)
        bad("inotify_add_watch: %s", strerror(errno));
    if (inotify_rm_watch(in, wd_x))
        bad("inotify_rm_watch: %s", strerror(errno));
    char buf[4096] __attribute__((aligned(8)));
    ssize_t n = read(in, buf, sizeof(buf));   /* the removed watch's IN_IGNORED */
    if (n != (ssize_t)sizeof(struct inotify_event) || !(((struct inotify_event *)buf)->mask & IN_IGNORED))
        bad("expected one IN_IGNORED event, read %zd bytes", n);
    say("watches dir=%d a=%d b=%d", wd_dir, wd_a, wd_b);
    say("ready");
    for (;;) {
        n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            bad("read: %s", n < 0 ? strerror(errno) : "end of file");
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            say("event %d %x %s", e->wd, e->mask, e->len ? e->name : "-");
            p += sizeof(*e) + e->len;
        }
    }
}
