/* A SysV message queue (IPC_PRIVATE), its size lowered to 8 KiB, between a
 * producer and a consumer child. Two message types with their own sequence
 * numbers go in bursts that fill the queue, so messages are in it at any
 * checkpoint and the producer often waits in msgsnd; the consumer takes the
 * types in turn and checks each sequence. Both report to the root, which
 * also checks the queue's size limit. */
#include "wl.h"
#include <sys/msg.h>

#define QBYTES 8192
#define BURST 64

struct qmsg {
    long mtype;
    uint64_t seq, check;
};
#define TEXT (sizeof(struct qmsg) - sizeof(long))

int main(void)
{
    int q = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    if (q < 0)
        bad("msgget: %s", strerror(errno));
    struct msqid_ds ds;
    if (msgctl(q, IPC_STAT, &ds))
        bad("IPC_STAT: %s", strerror(errno));
    ds.msg_qbytes = QBYTES;
    if (msgctl(q, IPC_SET, &ds))
        bad("IPC_SET: %s", strerror(errno));
    report_init();
    uint64_t seq[3] = { 0 };
    struct qmsg m;
    if (wl_fork() == 0) {
        for (uint32_t burst = 0;; burst++) {
            for (int i = 0; i < BURST; i++) {
                m.mtype = 1 + i % 2;
                m.seq = seq[m.mtype]++;
                m.check = ~m.seq * m.mtype;
                while (msgsnd(q, &m, TEXT, 0))
                    if (errno != EINTR)
                        bad("producer: msgsnd: %s", strerror(errno));
            }
            report(1, burst);
            sleep_ms(10);
        }
    }
    if (wl_fork() == 0) {
        for (uint32_t n = 0;; n++) {
            for (long type = 1; type <= 2; type++) {
                ssize_t r;
                while ((r = msgrcv(q, &m, TEXT, type, 0)) < 0)
                    if (errno != EINTR)
                        bad("consumer: msgrcv: %s", strerror(errno));
                if (r != (ssize_t)TEXT || m.mtype != type || m.seq != seq[type] || m.check != ~m.seq * type)
                    bad("consumer: type %ld message %llu, expected type %ld message %llu", m.mtype,
                        (unsigned long long)m.seq, type, (unsigned long long)seq[type]);
                seq[type]++;
            }
            if (n % 16 == 0)
                report(2, n / 16);
            sleep_ms(1);
        }
    }
    report_seal();
    collect(2);
    say("ready");
    for (;;) {
        collect(2);
        check_children();
        if (msgctl(q, IPC_STAT, &ds))
            bad("root: IPC_STAT of queue %d: %s", q, strerror(errno));
        if (ds.msg_qbytes != QBYTES)
            bad("root: queue limit is %lu bytes, expected %d", (unsigned long)ds.msg_qbytes, QBYTES);
        tick();
    }
}
