/* The restore plan: what rstr hands to the restorer blob, laid out in the
 * restorer's region so it survives the unmapping of everything else.
 * Only fixed-width types and no preprocessor lines below the guard: cffi's
 * cdef reads this file as it is. Pointers are carried as uint64_t so that
 * one layout serves 32- and 64-bit builds. */
#ifndef UCR_PLAN_H
#define UCR_PLAN_H

/* Restorer steps; a failing step is reported with its number. */
enum ucr_step {
    UCR_STEP_READY = 0, UCR_STEP_RSEQ_DROP = 1, UCR_STEP_PARK = 2, UCR_STEP_UNMAP = 3,
    UCR_STEP_MAP = 4, UCR_STEP_READ = 5, UCR_STEP_RECORD = 6, UCR_STEP_CHECKSUM = 7,
    UCR_STEP_PROTECT = 8, UCR_STEP_SPECIAL = 9, UCR_STEP_MM = 10, UCR_STEP_FDS = 11,
    UCR_STEP_FS = 12, UCR_STEP_RLIMIT = 13, UCR_STEP_SIGACTION = 14, UCR_STEP_SIGQUEUE = 15,
    UCR_STEP_CREDS = 16, UCR_STEP_RSEQ = 17, UCR_STEP_TLS = 18, UCR_STEP_GO = 19,
    UCR_STEP_SIGRETURN = 20, UCR_STEP_CLONE = 21, UCR_STEP_IDS = 22, UCR_STEP_THREAD = 23,
    UCR_STEP_TIMER = 24, UCR_STEP_ZOMBIE = 25, UCR_STEP_CAPS = 26, UCR_STEP_SECCOMP = 27,
    UCR_STEP_LOCK = 28, UCR_STEP_PARENT = 29, UCR_STEP_BRK = 30
};

struct ucr_vma {
    uint64_t start, end, offset;  /* offset: file offset in bytes */
    uint32_t prot;
    uint32_t mmap_flags;
    int32_t fd;           /* backing file, -1 for anonymous; the shmid of UCR_VMA_SYSV */
    uint32_t kind;        /* UCR_VMA_*: records.VMA_KINDS */
    uint64_t cur;         /* special mappings: where this kernel put it now */
    uint64_t park;        /* special mappings: parking place inside the region */
};

struct ucr_fd {
    int32_t src, dst;     /* src -1: the task opens path itself (its own /proc entry) */
    uint32_t cloexec, flags;
    uint64_t path, pos;   /* entries of one open file description share one path string */
};

struct ucr_sigaction {
    uint64_t handler, flags, restorer, mask;
};

struct ucr_siginfo {
    uint32_t shared, signo;
    uint32_t thread, pad;  /* per-thread signals: index into threads */
    uint8_t info[128];
};

struct ucr_status {
    int32_t step;         /* 0: ready */
    int32_t err;          /* errno */
    uint64_t detail;      /* address or offset the step was working on */
    int32_t task;         /* index of the process in the tree */
    int32_t pid;          /* its PID in its namespace */
};

/* A process the restorer creates from its parent's restorer. */
struct ucr_child {
    uint64_t plan;
    int32_t pid;          /* set_tid: the PID to create it with; 0: any */
    int32_t exit_signal;
    uint32_t zombie;
    uint32_t placeholder;  /* stands in for a gone leader: reaped once it made its children */
    uint32_t clone_parent; /* created by a placeholder for the placeholder's parent */
    uint32_t adopted;      /* a placeholder made by another with CLONE_PARENT: only reaped here */
};

struct ucr_thread {
    uint64_t plan;          /* the process's plan */
    uint64_t sigframe;      /* prebuilt frame bytes inside the region */
    uint64_t sigframe_len;
    uint64_t sigframe_dest; /* where the frame goes on the restored stack */
    uint64_t sigreturn_sp;  /* stack pointer for the final rt_sigreturn */
    uint64_t tls[4];        /* arch: x86_64 fs_base, gs_base */
    uint64_t rseq;          /* the image's rseq registration */
    uint32_t rseq_len, rseq_sig;
    uint64_t clear_child_tid, robust_list, robust_len;
    uint64_t stack_top;     /* restorer stack of a non-main thread */
    int32_t tid;            /* set_tid; 0: any */
    int32_t new_tid;        /* what it got, for timers aimed at it */

    /* creds.py: this thread's capability sets, securebits, no_new_privs and
     * the seccomp filters it installs itself (oldest first). */
    uint64_t cap_eff, cap_prm, cap_inh, cap_bset, cap_amb;
    uint32_t securebits, no_new_privs;
    uint32_t restore_caps, nr_filters;
    uint64_t filters;       /* struct ucr_filter[nr_filters] */
};

struct ucr_filter {
    uint64_t insns;         /* struct sock_filter[len] inside the region */
    uint32_t len, flags;    /* flags for seccomp(SECCOMP_SET_MODE_FILTER) */
};

struct ucr_timer {
    int32_t id, clockid, signo, notify;
    uint64_t value;         /* sigev_value */
    int32_t thread, pad;    /* SIGEV_THREAD_ID: index into threads */
    uint64_t its[4];        /* interval s, ns, value s, ns (no 64-bit division on ARM) */
};

/* A POSIX lock the process takes on one of its fds (F_SETLK). */
struct ucr_lock {
    int32_t fd;
    int32_t type;         /* F_RDLCK, F_WRLCK */
    int64_t start, len;   /* len 0: to end of file */
};

/* Shared by every process of the tree (MAP_SHARED): whose turn it is to read
 * its pages from the image stream, the running checksum and offset it hands
 * on, and each process's PID and progress. */
struct ucr_slot {
    int32_t pid;
    uint32_t state;       /* UCR_SLOT_* */
};

enum ucr_slot_state { UCR_SLOT_NONE = 0, UCR_SLOT_IDS = 1, UCR_SLOT_READY = 2, UCR_SLOT_ZOMBIE = 3 };

struct ucr_shared {
    uint32_t turn, pad;
    uint64_t csum[2];
    uint64_t image_offset;
    struct ucr_slot slots[1];  /* nr_tasks of them */
};

struct ucr_plan {
    uint64_t region_start, region_end, unmap_end, page_size;
    int32_t image_fd, status_fd, go_fd, fd_base;
    uint64_t shared;      /* struct ucr_shared */
    uint64_t stack_top;   /* the restorer's stack, the same in every process */
    uint64_t csum[2];
    uint64_t image_offset;

    int32_t index;        /* this process's slot */
    int32_t image_pid;
    int32_t pages_turn;   /* position of its pages in the image */
    uint32_t last_pages;  /* its section is the last: the TAIL follows */
    uint32_t setsid;
    uint32_t pgid_action; /* 0: keep the parent's group, 1: its own, 2: join pgid_leader's */
    int32_t pgid_leader;
    int32_t ctty_fd;      /* the controlling terminal to take (session leader) or put in the foreground */
    uint32_t ctty_fg;     /* its group was the terminal's foreground group */
    uint32_t zombie;
    uint32_t placeholder;
    int32_t exit_status;
    int32_t pad4;
    int32_t pdeathsig;

    uint32_t nr_vmas, nr_fds, nr_siginfo, nr_groups;
    uint64_t vmas, fds, siginfo, groups;   /* arrays inside the region */
    uint32_t nr_children, nr_threads;
    uint64_t children, threads;
    uint32_t nr_timers, threads_ready;
    uint64_t timers;
    uint32_t threads_go, pad2;
    uint64_t itimers[12];
    struct ucr_sigaction sigactions[64];
    uint64_t rlimits[32];
    uint32_t nr_rlimits;
    int32_t cwd_fd, root_fd;
    uint32_t umask;
    char comm[16];

    uint64_t mm[11];      /* prctl_mm_map order: start_code .. env_end */
    uint64_t auxv;
    uint32_t auxv_size;
    int32_t exe_fd;

    uint64_t cur_rseq;    /* glibc's registration in rstr, to drop (root only) */
    uint32_t cur_rseq_len, cur_rseq_sig;

    uint32_t uid, euid, suid, fsuid, gid, egid, sgid, fsgid;
    uint32_t restore_creds, pad3;

    uint32_t stopped;       /* stop the process (SIGSTOP) once go arrived */
    uint32_t cap_last_cap;  /* this kernel's /proc/sys/kernel/cap_last_cap */
    uint32_t nr_locks, pad5;
    uint64_t locks;       /* struct ucr_lock[], POSIX locks only */
    uint32_t dumpable;    /* PR_SET_DUMPABLE once the credentials are back (which reset it) */
    uint32_t pad6;

    /* incremental.py: the images this one is incremental to (chain_fds[0]:
     * its parent), read by PAGES_PARENT records; at most 32 */
    uint32_t nr_chain, pad7;
    int32_t chain_fds[32];

    /* inplace.py: a lone process created by fork where clone3 is missing
     * (qemu-user): it unmaps only what its /proc/self/maps lists (qemu-user
     * keeps memory of its own in the guest's range), read into maps_buf;
     * sets the brk with brk(); skip_mm: no PR_SET_MM_MAP (it fails there);
     * keep_start..keep_end: the emulator's signal return trampoline, kept;
     * brk_raised: set by the restorer where the emulator would not take the
     * image's brk (below rstr's first one): where it stands instead. */
    uint32_t forked, skip_mm;
    uint64_t maps_buf;
    uint32_t maps_size, pad8;
    uint64_t keep_start, keep_end;
    uint64_t brk_raised;
};

#endif
