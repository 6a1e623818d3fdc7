/*
 * The monitor's relays of re-created sessions (see fd-session.c): a session restored with bytes
 * its service had sent and the component had not read gets them first through a socket pair
 * whose other end is here. Meanwhile what the component writes goes on to the service; what
 * the service sends waits in the connection's own queue. Once the component has read the
 * delivered bytes, the connection itself takes the pair's place at the component's fd, and
 * from then on the component and the service talk directly: no relay on the hot path.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/sockios.h>

#include "checkpoint.h"
#include "fds.h"
#include "procfs.h"
#include "session.h"
#include "tracee.h"
#include "util.h"

struct relay_sess {
	int mon; /* our end of the component's pair */
	int svc; /* the connection to the service */
	pid_t pid;
	struct relay_hello h;
	unsigned tries;
};

struct relay {
	struct ferry_runtime rt;
	char name[FERRY_NAME_MAX];
	int lis;
	int seal[2];
	struct relay_sess *s;
	size_t n;
};

socklen_t relay_address(pid_t monitor, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	int len = snprintf(sa->sun_path + 1, sizeof(sa->sun_path) - 1, "ferry-relay-%d", monitor);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len);
}

bool relay_needed(const struct component *c, bool all)
{
	for (size_t k = 0; k < c->nprocs; k++)
		for (size_t i = 0; i < c->procs[k].nfds; i++) {
			const struct fd_entry *e = &c->procs[k].fds[i];
			if (e->kind == FD_SESSION && e->nextra >= SS_MIN &&
			    e->extra[SS_KIND] != FERRY_SERVICE_ROM && (all || e->extra[UX_LEN]))
				return true;
		}
	return false;
}

/* Is pid a process of the restore this monitor runs (its helper, or a child of it)? Anyone in
 * the network namespace can reach the relay's address. */
static bool ours(pid_t pid)
{
	pid_t self = getpid();

	for (int depth = 0; pid > 1 && depth < 64; depth++) {
		uint64_t st[PROCFS_STAT_FIELDS];
		if (procfs_stat(pid, st) < 0)
			return false;
		pid = (pid_t)st[4];
		if (pid == self)
			return true;
	}
	return false;
}

/* A helper hands over a relay: its two fds, and who it is (the sender's pid, as we see it). */
static int take(struct relay *rl, int lis)
{
	_cleanup_close_ int a = accept4(lis, NULL, NULL, SOCK_CLOEXEC);
	int one = 1;
	struct relay_sess x = {.mon = -EBADF, .svc = -EBADF};
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(2 * sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
	} cm;
	struct iovec io = {&x.h, sizeof(x.h)};
	struct msghdr mh = {
	        .msg_iov = &io, .msg_iovlen = 1, .msg_control = &cm, .msg_controllen = sizeof(cm)};

	if (a < 0)
		return -errno;
	(void)setsockopt(a, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one));
	struct pollfd pf = {.fd = a, .events = POLLIN};
	if (poll(&pf, 1, 1000) <= 0)
		return -ETIMEDOUT;
	ssize_t got = recvmsg(a, &mh, MSG_CMSG_CLOEXEC);
	for (struct cmsghdr *h = got > 0 ? CMSG_FIRSTHDR(&mh) : NULL; h; h = CMSG_NXTHDR(&mh, h)) {
		if (h->cmsg_level != SOL_SOCKET)
			continue;
		if (h->cmsg_type == SCM_RIGHTS && h->cmsg_len == CMSG_LEN(2 * sizeof(int))) {
			int fds[2];
			memcpy(fds, CMSG_DATA(h), sizeof(fds));
			x.mon = fds[0];
			x.svc = fds[1];
		} else if (h->cmsg_type == SCM_CREDENTIALS) {
			struct ucred uc;
			memcpy(&uc, CMSG_DATA(h), sizeof(uc));
			x.pid = uc.pid;
		}
	}
	if (got != (ssize_t)sizeof(x.h) || x.mon < 0 || x.svc < 0 || x.pid <= 0 || !ours(x.pid) ||
	    GROW(rl->s, rl->n) < 0) {
		safe_close(x.mon);
		safe_close(x.svc);
		return -EPROTO;
	}
	x.h.service[sizeof(x.h.service) - 1] = '\0';
	rl->s[rl->n++] = x;
	char ok = 1;
	(void)send(a, &ok, 1, MSG_NOSIGNAL);
	return 0;
}

/* What the component wrote, on to the service (all of it queued now, when drain). */
static int forward(struct relay_sess *x)
{
	char buf[65536];

	for (;;) {
		ssize_t n = recv(x->mon, buf, sizeof(buf), MSG_DONTWAIT);
		if (n == 0)
			return -EPIPE; /* the component closed it, or is gone */
		if (n < 0)
			return errno == EAGAIN ? 0 : -errno;
		/* the service's pace is the component's: a blocking send */
		if (send(x->svc, buf, (size_t)n, MSG_NOSIGNAL) != n)
			return -EPIPE;
	}
}

/* The epoll instances of pid watching its fd: (epfd, events, data) triples. */
struct interest {
	int epfd;
	uint32_t events;
	uint64_t data;
};

/* Where fd of pid is referred to: the interest of each epoll instance watching it, and the
 * other fds of the same socket (inode ino: dups). */
struct refs {
	struct interest in[16];
	size_t nin;
	int dups[16];
	bool dup_cloexec[16]; /* each dup's own close-on-exec flag */
	size_t ndups;
};

/* fd k of pid has close-on-exec set (its fdinfo's flags). */
static bool fd_cloexec(pid_t pid, int k)
{
	_cleanup_free_ char *info = NULL;
	unsigned flags = 0;
	const char *f;

	if (fds_fdinfo(pid, k, &info) < 0 || !(f = strstr(info, "flags:")) ||
	    sscanf(f, "flags: %o", &flags) != 1)
		return false;
	return flags & O_CLOEXEC;
}

static void refs_of(pid_t pid, int fd, uint64_t ino, struct refs *rf)
{
	char path[64], link[64];
	struct dirent *de;

	rf->nin = rf->ndups = 0;
	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	DIR *d = opendir(path);
	while (d && (de = readdir(d))) {
		char p2[128];
		struct stat sb;
		int k = atoi(de->d_name);
		snprintf(p2, sizeof(p2), "%s/%s", path, de->d_name);
		ssize_t l = readlink(p2, link, sizeof(link) - 1);
		if (l < 0 || k == fd)
			continue;
		link[l] = '\0';
		if (stat(p2, &sb) == 0 && S_ISSOCK(sb.st_mode) && sb.st_ino == ino &&
		    rf->ndups < ARRAY_SIZE(rf->dups)) {
			rf->dup_cloexec[rf->ndups] = fd_cloexec(pid, k);
			rf->dups[rf->ndups++] = k;
		}
		_cleanup_free_ char *info = NULL;
		if (strcmp(link, "anon_inode:[eventpoll]") != 0 || fds_fdinfo(pid, k, &info) < 0)
			continue;
		for (char *t = strstr(info, "tfd:"); t && rf->nin < ARRAY_SIZE(rf->in);
		     t = strstr(t + 4, "tfd:")) {
			int tfd;
			unsigned ev;
			unsigned long long data;
			if (sscanf(t, "tfd: %d events: %x data: %llx", &tfd, &ev, &data) == 3 &&
			    tfd == fd)
				rf->in[rf->nin++] = (struct interest){k, ev, data};
		}
	}
	if (d)
		closedir(d);
}

/*
 * In the stopped thread t of pid: receive the connection queued in the pair (one byte with
 * SCM_RIGHTS) on fd, put it there and at the fd's dups, close the extra number, register the
 * epoll interest again.
 */
static int inject(pid_t pid, int fd, struct tracee *t, bool cloexec, const struct refs *rf,
                  struct ferry_error *err)
{
	const int *dups = rf->dups;
	const struct interest *in = rf->in;
	size_t ndups = rf->ndups, nin = rf->nin;
	struct stack_scratch sc;
	long ret;
	int r = stack_scratch_take(&sc, pid, t, err);

	if (r < 0)
		return r;
	/* the message header, its iovec, one byte and room for one fd, at the scratch */
	uint8_t buf[160] = {0};
	struct msghdr mh = {.msg_iov = (struct iovec *)(sc.addr + 64),
	                    .msg_iovlen = 1,
	                    .msg_control = (void *)(sc.addr + 96),
	                    .msg_controllen = CMSG_SPACE(sizeof(int))};
	struct iovec io = {(void *)(sc.addr + 80), 1};
	memcpy(buf, &mh, sizeof(mh));
	memcpy(buf + 64, &io, sizeof(io));
	if (tracee_poke(pid, sc.addr, buf, sizeof(buf)) < 0) {
		r = ferr(err, -EIO, "pid %d: writing the scratch", pid);
		goto out;
	}
	r = tracee_syscall(t, &ret, NULL, SYS_recvmsg, (uint64_t)fd, sc.addr, MSG_CMSG_CLOEXEC, 0,
	                   0, 0, err);
	if (r == 0 && ret != 1)
		r = ferr(err, ret < 0 ? (int)ret : -EPROTO, "pid %d fd %d: recvmsg: %s", pid, fd,
		         ret < 0 ? strerror((int)-ret) : "no message");
	if (r < 0)
		goto out;
	uint8_t got[CMSG_SPACE(sizeof(int))];
	struct cmsghdr ch;
	int newfd = -1;
	if (tracee_peek(pid, sc.addr + 96, got, sizeof(got)) == 0) {
		memcpy(&ch, got, sizeof(ch));
		if (ch.cmsg_level == SOL_SOCKET && ch.cmsg_type == SCM_RIGHTS)
			memcpy(&newfd, got + CMSG_LEN(0), sizeof(int));
	}
	if (newfd < 0) {
		r = ferr(err, -EPROTO, "pid %d fd %d: no connection received", pid, fd);
		goto out;
	}
	r = tracee_syscall(t, &ret, NULL, SYS_dup3, (uint64_t)newfd, (uint64_t)fd,
	                   cloexec ? O_CLOEXEC : 0, 0, 0, 0, err);
	if (r == 0 && ret < 0)
		r = ferr(err, (int)ret, "pid %d: dup3 %d to %d: %s", pid, newfd, fd,
		         strerror((int)-ret));
	/* the other numbers of the same open file (dup): the same connection */
	for (size_t i = 0; r == 0 && i < ndups; i++) {
		r = tracee_syscall(t, &ret, NULL, SYS_dup3, (uint64_t)newfd, (uint64_t)dups[i],
		                   rf->dup_cloexec[i] ? O_CLOEXEC : 0, 0, 0, 0, err);
		if (r == 0 && ret < 0)
			r = ferr(err, (int)ret, "pid %d: dup3 %d to %d: %s", pid, newfd, dups[i],
			         strerror((int)-ret));
	}
	long ignored;
	(void)tracee_syscall(t, &ignored, NULL, SYS_close, (uint64_t)newfd, 0, 0, 0, 0, 0, NULL);
	for (size_t i = 0; r == 0 && i < nin; i++) {
		struct epoll_event ev = {.events = in[i].events, .data.u64 = in[i].data};
		if (tracee_poke(pid, sc.addr + 128, &ev, sizeof(ev)) < 0) {
			r = ferr(err, -EIO, "pid %d: writing the scratch", pid);
			break;
		}
		r = tracee_syscall(t, &ret, NULL, SYS_epoll_ctl, (uint64_t)in[i].epfd,
		                   EPOLL_CTL_ADD, (uint64_t)fd, sc.addr + 128, 0, 0, err);
		if (r == 0 && ret < 0 && ret != -EEXIST)
			r = ferr(err, (int)ret, "pid %d: epoll fd %d: adding fd %d again: %s", pid,
			         in[i].epfd, fd, strerror((int)-ret));
	}
out:;
	int r2 = stack_scratch_release(&sc, err);
	return r < 0 ? r : r2;
}

/* A process holding the pair's end: its first fd of it, its stopped threads in fz.t[t0..). */
struct holder {
	pid_t pid;
	int fd;
	size_t t0;
};

/* The first fd of pid that is the socket with inode ino (-1: none). */
static int fd_of(pid_t pid, uint64_t ino)
{
	char path[64];
	int found = -1;
	struct dirent *de;

	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	DIR *d = opendir(path);
	while (d && (de = readdir(d))) {
		char p2[128];
		struct stat sb;
		snprintf(p2, sizeof(p2), "%s/%s", path, de->d_name);
		int k = atoi(de->d_name);
		if (de->d_name[0] >= '0' && de->d_name[0] <= '9' && stat(p2, &sb) == 0 &&
		    S_ISSOCK(sb.st_mode) && sb.st_ino == ino && (found < 0 || k < found))
			found = k;
	}
	if (d)
		closedir(d);
	return found;
}

/* The processes holding the pair's end: pid and its descendants (a session the init made
 * before its children forked is held by them too). */
static int holders_of(pid_t pid, uint64_t ino, struct holder **ret, size_t *ret_n)
{
	_cleanup_free_ pid_t *todo = malloc(sizeof(pid_t));
	size_t ntodo = 1;

	if (!todo)
		return -ENOMEM;
	todo[0] = pid;
	for (size_t i = 0; i < ntodo; i++) {
		int fd = fd_of(todo[i], ino);
		if (fd >= 0) {
			if (GROW(*ret, *ret_n) < 0)
				return -ENOMEM;
			(*ret)[(*ret_n)++] = (struct holder){todo[i], fd, 0};
		}
		_cleanup_free_ pid_t *kids = NULL;
		size_t nkids = 0;
		if (procfs_children(todo[i], &kids, &nkids) < 0 || !nkids)
			continue;
		pid_t *n = realloc(todo, (ntodo + nkids) * sizeof(pid_t));
		if (!n)
			return -ENOMEM;
		todo = n;
		memcpy(todo + ntodo, kids, nkids * sizeof(pid_t));
		ntodo += nkids;
	}
	return 0;
}

/* The connection at the component's fds in place of the pair's end: with every thread of every
 * process holding it stopped, so none is inside a call on it (a blocked read restarts on the
 * new file). Each process receives it from the pair by an injected recvmsg. */
static int swap(struct relay *rl, struct relay_sess *x, struct ferry_error *err)
{
	struct frozen fz = {0};
	_cleanup_free_ struct holder *hs = NULL;
	_cleanup_free_ char *info = NULL;
	size_t nh = 0;
	char path[64];
	struct stat sb;
	uint64_t flags = 0;
	int r;

	snprintf(path, sizeof(path), "/proc/%d/fd/%d", x->pid, x->h.fd);
	if (stat(path, &sb) < 0 || !S_ISSOCK(sb.st_mode))
		return ferr(err, -ESTALE, "pid %d fd %d: no longer the session", x->pid, x->h.fd);
	if ((r = holders_of(x->pid, sb.st_ino, &hs, &nh)) < 0)
		return ferr(err, r, "pid %d: the holders of fd %d: %s", x->pid, x->h.fd,
		            strerror(-r));
	for (size_t i = 0; i < nh; i++) {
		hs[i].t0 = fz.n;
		if ((r = checkpoint_freeze(hs[i].pid, &fz, err)) < 0)
			goto out;
		if (fz.n == hs[i].t0) {
			r = ferr(err, -ESRCH, "pid %d: gone", hs[i].pid);
			goto out;
		}
	}
	if (nh == 0) {
		r = ferr(err, -ESRCH, "pid %d: gone", x->pid);
		goto out;
	}
	/* the last of what it wrote, on; the fd's flags as they are */
	if ((r = forward(x)) < 0) {
		r = ferr(err, r, "session %s: forwarding: %s", x->h.service, strerror(-r));
		goto out;
	}
	int inq = 0;
	if (ioctl(x->mon, SIOCOUTQ, &inq) < 0 || inq != 0) {
		r = ferr(err, -EAGAIN, "session %s: not read yet", x->h.service);
		goto out;
	}
	if ((r = fds_fdinfo(hs[0].pid, hs[0].fd, &info)) < 0 ||
	    fds_fdinfo_u64(info, "flags", 8, &flags) < 0) {
		r = ferr(err, -ESTALE, "pid %d fd %d: no longer the session", x->pid, x->h.fd);
		goto out;
	}
	if (fcntl(x->svc, F_SETFL, (int)(flags & O_NONBLOCK)) < 0) {
		r = ferr(err, -errno, "session %s: F_SETFL: %m", x->h.service);
		goto out;
	}
	/* the connection, queued once for each holder's injected recvmsg */
	for (size_t i = 0; i < nh; i++) {
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int))];
		} cm = {0};
		char one = 0;
		struct iovec io = {&one, 1};
		struct msghdr mh = {.msg_iov = &io,
		                    .msg_iovlen = 1,
		                    .msg_control = &cm,
		                    .msg_controllen = sizeof(cm)};
		cm.h.cmsg_level = SOL_SOCKET;
		cm.h.cmsg_type = SCM_RIGHTS;
		cm.h.cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(&cm.h), &x->svc, sizeof(int));
		if (sendmsg(x->mon, &mh, MSG_NOSIGNAL) != 1) {
			r = ferr(err, -errno, "session %s: sending the connection: %m",
			         x->h.service);
			goto out;
		}
	}
	for (size_t i = 0; r == 0 && i < nh; i++) {
		_cleanup_free_ struct proc_map *maps = NULL;
		_cleanup_free_ char *finfo = NULL;
		size_t nmaps = 0;
		uint64_t fflags = 0;
		struct tracee *th = &fz.t[hs[i].t0];
		struct refs rf;
		if ((r = procfs_maps_noflags(hs[i].pid, &maps, &nmaps)) < 0 ||
		    (r = tracee_find_syscall_insn(hs[i].pid, maps, nmaps, &th->syscall_ip)) < 0) {
			r = ferr(err, r, "pid %d: no syscall instruction", hs[i].pid);
			break;
		}
		if (fds_fdinfo(hs[i].pid, hs[i].fd, &finfo) == 0)
			(void)fds_fdinfo_u64(finfo, "flags", 8, &fflags);
		refs_of(hs[i].pid, hs[i].fd, sb.st_ino, &rf);
		r = inject(hs[i].pid, hs[i].fd, th, fflags & O_CLOEXEC, &rf, err);
	}
	if (r == 0) {
		struct stat nb;
		struct session_reg g = {.id = x->h.id, .seq = x->h.seq};
		if (fstat(x->svc, &nb) == 0) {
			g.ino = nb.st_ino;
			(void)session_register(&rl->rt, rl->name, sb.st_ino, &g, 1);
		}
	}
out:
	checkpoint_thaw(&fz);
	return r;
}

static void drop(struct relay *rl, size_t i)
{
	safe_close(rl->s[i].mon);
	safe_close(rl->s[i].svc);
	rl->s[i] = rl->s[--rl->n];
}

static void *relay_main(void *arg)
{
	struct relay *rl = arg;
	bool sealed = false;

	(void)prctl(PR_SET_NAME, "ferry-relay");
	while (!sealed || rl->n) {
		struct pollfd pf[66];
		size_t np = 0, first = sealed ? 0 : 2;
		if (!sealed) {
			pf[np++] = (struct pollfd){.fd = rl->seal[0], .events = POLLIN};
			pf[np++] = (struct pollfd){.fd = rl->lis, .events = POLLIN};
		}
		for (size_t i = 0; i < rl->n && np < ARRAY_SIZE(pf); i++)
			pf[np++] = (struct pollfd){.fd = rl->s[i].mon, .events = POLLIN};
		/* while bytes wait to be read: look every 2 ms whether they were */
		if (poll(pf, np, rl->n ? 2 : -1) < 0 && errno != EINTR)
			break;
		if (!sealed && (pf[0].revents || pf[1].revents & (POLLERR | POLLHUP))) {
			sealed = true;
			rl->lis = safe_close(rl->lis);
		} else if (!sealed && pf[1].revents & POLLIN) {
			(void)take(rl, rl->lis);
			continue;
		}
		for (size_t i = rl->n; i-- > 0;) {
			struct relay_sess *x = &rl->s[i];
			int inq = -1;
			if (first + i < np && pf[first + i].revents && forward(x) < 0) {
				drop(rl, i);
				continue;
			}
			/* not before the restore is over: a migration may queue late bytes */
			if (!sealed || ioctl(x->mon, SIOCOUTQ, &inq) < 0 || inq != 0 ||
			    x->tries >= 3)
				continue;
			struct ferry_error e = {0};
			int r = swap(rl, x, &e);
			if (r == 0 || r == -ESRCH || r == -ESTALE || r == -EPIPE)
				drop(rl, i);
			else if (r != -EAGAIN)
				x->tries++; /* after three failures it stays a relay */
		}
	}
	for (size_t i = rl->n; i-- > 0;)
		drop(rl, i);
	safe_close(rl->lis);
	safe_close(rl->seal[0]);
	free(rl->s);
	free(rl);
	return NULL;
}

int relay_start(const struct ferry_runtime *rt, const char *name, int *ret_seal,
                struct ferry_error *err)
{
	struct sockaddr_un sa;
	socklen_t sl = relay_address(getpid(), &sa);
	struct relay *rl = calloc(1, sizeof(*rl));
	pthread_t th;
	int r;

	*ret_seal = -EBADF;
	if (!rl)
		return ferr(err, -ENOMEM, "out of memory");
	rl->rt = *rt;
	snprintf(rl->name, sizeof(rl->name), "%s", name);
	rl->seal[0] = rl->seal[1] = -EBADF;
	rl->lis = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (rl->lis < 0 || bind(rl->lis, (struct sockaddr *)&sa, sl) < 0 ||
	    listen(rl->lis, 64) < 0 || pipe2(rl->seal, O_CLOEXEC) < 0) {
		r = ferr(err, -errno, "the session relay's socket: %m");
		goto fail;
	}
	r = -pthread_create(&th, NULL, relay_main, rl);
	if (r < 0) {
		ferr(err, r, "the session relay's thread: %s", strerror(-r));
		goto fail;
	}
	pthread_detach(th);
	*ret_seal = rl->seal[1];
	return 0;
fail:
	safe_close(rl->lis);
	safe_close(rl->seal[0]);
	safe_close(rl->seal[1]);
	free(rl);
	return r;
}
