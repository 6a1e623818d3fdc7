/* The model of a captured component: what capture produces, the image stores and restore reads. */
#pragma once

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/user.h>

#include "image.h"

struct ferry_service;
struct session_reg;

/* Size of pages in page runs; the image always uses 4 KiB units. */
#define MODEL_PAGE 4096UL

/*
 * A run of page data: npages pages for addr (or shmem offset), stored at offset off of pages file
 * `file` (an index into the image's list of pages files; 0 is the image's own). The data lies
 * inside a checksummed block of that file (blk_pages pages at blk_off, checksum csum): a fresh
 * run is its own block; a run an incremental image takes from its parent may be part of one.
 */
struct page_run {
	uint64_t addr;
	uint64_t npages;
	uint32_t file;
	uint64_t off;
	uint64_t blk_off;
	uint64_t blk_pages;
	uint64_t csum;
};

/* Where a pages file of the image was first written (for `inspect`), in manifest order. */
struct pagefile {
	char *origin;    /* image directory that wrote it */
	uint64_t gen;    /* its generation there */
	int64_t created; /* unix seconds */
};

enum vma_kind {
	VMA_ANON = 1, /* private anonymous (heap, stacks, malloc arenas) */
	VMA_FILE_PRIVATE =
	        2, /* private file mapping: only pages differing from the file are saved */
	VMA_FILE_SHARED = 3, /* shared file mapping: the file holds the data */
	VMA_SHMEM = 4,       /* shared anonymous or memfd: data in the shmem object */
	VMA_VVAR = 5,
	VMA_VVAR_VCLOCK = 6,
	VMA_VDSO = 7,
};

/* Mapping flags beyond protection, from smaps VmFlags. */
#define VMA_F_SHARED     (1u << 0)  /* MAP_SHARED */
#define VMA_F_GROWSDOWN  (1u << 1)  /* stack-like, MAP_GROWSDOWN */
#define VMA_F_HUGEPAGE   (1u << 2)  /* MADV_HUGEPAGE */
#define VMA_F_NOHUGEPAGE (1u << 3)  /* MADV_NOHUGEPAGE */
#define VMA_F_DONTDUMP   (1u << 4)  /* MADV_DONTDUMP */
#define VMA_F_DONTFORK   (1u << 5)  /* MADV_DONTFORK */
#define VMA_F_WIPEONFORK (1u << 6)  /* MADV_WIPEONFORK */
#define VMA_F_LOCKED     (1u << 7)  /* mlock */
#define VMA_F_HEAP       (1u << 8)  /* [heap] */
#define VMA_F_STACK      (1u << 9)  /* [stack] */
#define VMA_F_NORESERVE  (1u << 10) /* MAP_NORESERVE */

/* Identity of a file at checkpoint; restore refuses a file that changed. */
struct file_id {
	uint64_t dev;
	uint64_t ino;
	uint64_t size;
	int64_t mtime_ns;
};

struct vma {
	uint64_t start;
	uint64_t end;
	uint64_t pgoff; /* in bytes */
	uint32_t prot;  /* PROT_* */
	uint32_t flags; /* VMA_F_* */
	uint32_t kind;  /* enum vma_kind */
	int32_t shmem;  /* index into component.shmems for VMA_SHMEM, else -1 */
	char *path;     /* file path for file mappings, NULL otherwise */
	struct file_id fid;
	struct page_run *runs;
	size_t nruns;
	bool from_parent; /* at capture, not stored: the pages not in runs yet come from the
	                     parent (mem_finish_runs, after the thaw) */
};

enum shmem_kind {
	SHMEM_ANON = 1,    /* MAP_SHARED|MAP_ANONYMOUS */
	SHMEM_MEMFD = 2,   /* memfd_create */
	SHMEM_DELETED = 3, /* a file deleted while mapped shared (a POSIX semaphore in /dev/shm,
	                      say): made again at its path, and unlinked */
	SHMEM_SYSV = 4,    /* a SysV shared memory segment (shmget), with its key, id and mode */
};

struct shmem {
	uint32_t kind;
	uint64_t ino; /* identity at checkpoint (dedup key with dev) */
	uint64_t dev;
	uint64_t size;
	char *name; /* memfd name (without "memfd:"), deleted file's path, NULL for anon */
	struct page_run *runs; /* addr = offset in the object */
	size_t nruns;
	int32_t sysv_key, sysv_id; /* SHMEM_SYSV */
	uint32_t sysv_mode;        /* its permissions, and SHM_DEST if it is to go with its users */
};

/* A TCP service's address (one of what its HOST:PORT resolves to): svc indexes the node's
 * services. */
struct svc_addr {
	struct sockaddr_storage sa;
	socklen_t len;
	uint32_t svc;
};

/* One pending signal, the kernel's 128-byte siginfo kept as bytes. */
struct pending_sig {
	int32_t tid; /* 0: process-wide queue */
	uint8_t info[128];
};

/* One POSIX timer (timer_create): restored with its id (PR_TIMER_CREATE_RESTORE_IDS). */
struct ptimer {
	int32_t id;
	int32_t clock;  /* clockid_t as created (a CPU-time clock names its pid or tid) */
	int32_t notify; /* SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD_ID */
	int32_t signo;
	int32_t tid;    /* SIGEV_THREAD_ID: the thread, in the component's namespace */
	uint64_t value; /* sigev_value */
	uint64_t interval_ns, value_ns; /* timer_gettime: the period, the time left (0: disarmed) */
};

struct sigact {
	int32_t sig;
	uint64_t handler;
	uint64_t flags;
	uint64_t restorer;
	uint64_t mask;
};

#define XSTATE_MAX 16384

struct thread {
	int32_t tid;      /* in the component's pid namespace */
	int32_t host_tid; /* at capture, not stored */
	char comm[16];
	struct user_regs_struct regs; /* as captured (syscall restart not applied) */
	uint8_t *xstate;
	uint32_t xstate_len;
	uint64_t sigmask;
	uint64_t ss_sp;
	uint64_t ss_size;
	int32_t ss_flags;
	uint64_t rseq_ptr;
	uint32_t rseq_len;
	uint32_t rseq_sig;
	uint64_t clear_tid;
	uint64_t robust_head;
	uint64_t robust_len;
};

enum fd_kind {
	FD_FILE = 1,  /* regular file or directory, reopened by path */
	FD_CHR = 2,   /* character device, reopened by path (same rdev required) */
	FD_LOG = 3,   /* the runtime's log of this component */
	FD_MEMFD = 4, /* a memfd, shared with mappings through the shmem table */
	FD_EVENTFD = 5,
	FD_TIMERFD = 6,
	FD_SIGNALFD = 7,
	FD_EPOLL = 8,
	FD_PIPE = 9,     /* a pipe whose two ends are both in the process */
	FD_DELETED = 10, /* a regular file deleted while open, content in the image */
	FD_INET = 11,    /* a listening TCP or an unconnected UDP socket */
	FD_INOTIFY = 12, /* an inotify instance and its watches */
	FD_TCP = 13,     /* an established TCP connection (TCP_REPAIR) */
	FD_UNIX = 14,    /* a Unix socket: a pair inside the component, a listener, bound... */
	FD_FIFO = 15,    /* a FIFO (named pipe), reopened by its path */
	FD_SESSION = 16, /* a session to a service of the node (path: the service's name) */
};

struct fd_entry {
	int32_t fd;
	uint32_t kind;  /* enum fd_kind */
	uint32_t flags; /* F_GETFL */
	uint32_t cloexec;
	uint64_t pos;
	char *path;
	struct file_id fid;
	uint64_t rdev;
	uint32_t mode;  /* st_mode */
	int32_t shmem;  /* FD_MEMFD: index into component.shmems */
	int32_t dup_of; /* an earlier fd sharing this open file description, or -1 */
	/* a component of several processes: the open file description the root restores once
	 * for all its holders (component.nshares of them), or -1 (an fd of its own process);
	 * the first entry of a share (in process order) holds what was captured of it */
	int32_t share;
	uint64_t cap_dev, cap_ino; /* at capture, not stored: the fd's stat identity */
	uint64_t *extra; /* numbers of the kind (eventfd count, timer values, epoll targets) */
	uint32_t nextra;
};

#define MODEL_NRLIMITS 16

struct process {
	int32_t pid;
	int32_t host_pid; /* at capture, not stored */
	/* in the component's pid namespace; 0: outside it (the root's parent, or a group or
	 * session the component inherited from its monitor) */
	int32_t ppid, pgid, sid;
	uint32_t zombie;     /* exited, not yet reaped by its parent: nothing else is captured */
	int32_t exit_status; /* zombie: its status as wait() would report it */
	/* credentials: real, effective, saved, fs ids; supplementary groups; capability sets
	 * (inheritable, permitted, effective, bounding, ambient); no_new_privs */
	uint32_t uid[4], gid[4];
	uint32_t *groups;
	uint32_t ngroups;
	uint64_t cap[5];
	uint32_t no_new_privs;
	char comm[16];
	char *exe;
	struct file_id exe_id;
	char *cwd;
	char *root;
	uint32_t umask;
	uint32_t personality;
	struct rlimit rlim[MODEL_NRLIMITS];
	/* mm fields for PR_SET_MM_MAP */
	uint64_t start_code, end_code, start_data, end_data;
	uint64_t start_brk, brk, start_stack;
	uint64_t arg_start, arg_end, env_start, env_end;
	uint8_t *auxv;
	uint32_t auxv_len;
	/* interval timers (ITIMER_REAL, _VIRTUAL, _PROF): interval s, us, value s, us */
	uint64_t itimer[3][4];

	struct thread *threads;
	size_t nthreads;
	struct vma *vmas;
	size_t nvmas;
	struct fd_entry *fds;
	size_t nfds;
	struct sigact *sigacts;
	size_t nsigacts;
	struct pending_sig *pending;
	size_t npending;
	struct ptimer *ptimers;
	size_t nptimers;
};

struct component {
	char name[64];
	int64_t created;
	uint64_t log_offset; /* log length at checkpoint */
	uint64_t log_id;     /* identity of the log history */
	uint64_t capture_id; /* random identity of this capture (an incremental child names it) */
	uint64_t track_id;   /* identity of the dirty tracking that ran since it (0: none) */
	uint64_t parent_id;  /* capture_id of the parent of an incremental image, else 0 */
	struct pagefile *pagefiles;
	size_t npagefiles;
	struct process *procs;
	size_t nprocs;
	struct shmem *shmems;
	size_t nshmems;
	uint32_t nshares; /* open file descriptions held by several processes (fd_entry.share) */
	/*
	 * Files in flight: sent with SCM_RIGHTS over a Unix socket of the component and not
	 * received yet (the socket's queue names them by index). Entry k has fd = k and is either
	 * the open file description of fd dup_of of the one process, or share share of a tree, or
	 * (both -1) a file no process holds, captured here like an fd.
	 */
	struct fd_entry *inflight;
	size_t ninflight;
	int *inflight_local; /* at capture, not stored: our copies of them (closed by model_free) */
	uint64_t *inflight_from; /* at capture, not stored: the socket, as pid << 32 | fd */
	/* at capture, not stored: copies of every file in flight, taken when a pipe's other end
	 * is nowhere else, so that it is found if it is in flight (fd_unix_preview) */
	int *inflight_pre;
	size_t ninflight_pre;
	bool previewed;
	/* at capture, not stored: the node's services, and the sessions its monitor re-created
	 * (fd-session.c) */
	struct ferry_service *services;
	size_t nservices;
	struct session_reg *sessreg;
	size_t nsessreg;
	struct svc_addr *svaddrs; /* the addresses of its TCP services, resolved */
	size_t nsvaddrs;
	bool ending; /* at capture, not stored: it ends after it (checkpoint --stop) */
};

/* model_free - release everything a component owns (NULL ok); returns NULL. */
struct component *model_free(struct component *c);
void process_clear(struct process *p);

/* model_save - write every record of c into the image writer. */
int model_save(const struct component *c, struct image_writer *w, struct ferry_error *err);

/* model_load - rebuild a component from an opened image. *ret owned by caller (model_free). */
int model_load(struct image_reader *r, struct component **ret, struct ferry_error *err);

/* Growable-array helper: ensure room for one more element; 0 or -ENOMEM. */
int grow(void **arr, size_t *n, size_t elem);
#define GROW(arr, n) grow((void **)&(arr), &(n), sizeof(*(arr)))
