/*
 * ferryd - the node daemon: accepts components migrated to this node and answers the local
 * CLI. A thin layer: it accepts connections and forks a worker for each; the work is libferry's
 * (src/lib/node.c, src/lib/migrate.c). Workers end with the daemon (PR_SET_PDEATHSIG), the
 * components' monitors do not.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/ferry.h"

static void usage(FILE *f)
{
	fprintf(f, "Usage: ferryd --node NAME --listen HOST:PORT --key FILE [--state-dir DIR]\n"
	           "              [--service NAME=KIND:TARGET]... [--config FILE]\n"
	           "       ferryd --gen-key FILE\n\n"
	           "The ferry node daemon: hosts components migrated to this node and carries out\n"
	           "the migrations the local `ferry migrate` asks for.\n\n"
	           "Options:\n"
	           "  --node NAME        this node's name\n"
	           "  --listen HOST:PORT where other nodes reach this one (TCP)\n"
	           "  --key FILE         the cluster key (64 hex digits, mode 0600), the same on\n"
	           "                     every node; peers without it are refused\n"
	           "  --state-dir DIR    component state (default $FERRY_STATE_DIR, else "
	           "/run/ferry);\n"
	           "                     the CLI reaches this daemon through DIR/ferryd.sock\n"
	           "  --service NAME=KIND:TARGET\n"
	           "                     a service of this node, by a name that is the same on\n"
	           "                     every node: KIND unix (TARGET a socket's path), tcp\n"
	           "                     (HOST:PORT) or rom (a read-only file); `ferry services`\n"
	           "                     lists them\n"
	           "  --config FILE      services from FILE, one a line: service NAME KIND:TARGET\n"
	           "  --gen-key FILE     write a new random cluster key to FILE and exit\n"
	           "  -h, --help         show this help\n");
}

/* The worker of one connection: it ends when the daemon does. */
static void worker(const struct ferry_node *n, int conn, bool peer, pid_t daemon_pid, int lfd,
                   int cfd)
{
	struct ferry_error err = {0};
	int r;

	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != daemon_pid)
		_exit(1);
	close(lfd);
	close(cfd);
	signal(SIGCHLD, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	(void)prctl(PR_SET_NAME, peer ? "ferryd-peer" : "ferryd-ctl");
	r = peer ? ferry_node_serve_peer(n, conn, &err) : ferry_node_serve_control(n, conn, &err);
	if (r < 0)
		fprintf(stderr, "ferryd %s: %s\n", n->name, err.msg);
	_exit(r < 0 ? 1 : 0);
}

static volatile sig_atomic_t stop_requested;

static void on_term(int sig)
{
	(void)sig;
	stop_requested = 1;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {{"node", required_argument, NULL, 'n'},
	                                         {"listen", required_argument, NULL, 'l'},
	                                         {"key", required_argument, NULL, 'k'},
	                                         {"state-dir", required_argument, NULL, 's'},
	                                         {"gen-key", required_argument, NULL, 'g'},
	                                         {"service", required_argument, NULL, 'S'},
	                                         {"config", required_argument, NULL, 'c'},
	                                         {"help", no_argument, NULL, 'h'},
	                                         {NULL, 0, NULL, 0}};
	const char *name = NULL, *listen_addr = NULL, *key = NULL, *state = NULL, *gen = NULL;
	struct ferry_error err = {0};
	struct ferry_node n;
	struct ferry_service *services = NULL;
	size_t nservices = 0;
	int ch, lfd = -1, cfd = -1, r;

	while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'n':
			name = optarg;
			break;
		case 'l':
			listen_addr = optarg;
			break;
		case 'k':
			key = optarg;
			break;
		case 's':
			state = optarg;
			break;
		case 'g':
			gen = optarg;
			break;
		case 'S': {
			struct ferry_service *ns =
			        realloc(services, (nservices + 1) * sizeof(*services));
			if (!ns) {
				fprintf(stderr, "ferryd: out of memory\n");
				return 1;
			}
			services = ns;
			if (ferry_service_parse(optarg, &services[nservices], &err) < 0) {
				fprintf(stderr, "ferryd: %s\n", err.msg);
				return 2;
			}
			nservices++;
			break;
		}
		case 'c':
			if (ferry_services_config(optarg, &services, &nservices, &err) < 0) {
				fprintf(stderr, "ferryd: %s\n", err.msg);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (gen) {
		if (ferry_key_generate(gen, &err) < 0) {
			fprintf(stderr, "ferryd: %s\n", err.msg);
			return 1;
		}
		return 0;
	}
	if (!name || !listen_addr || !key || optind != argc) {
		usage(stderr);
		return 2;
	}
	r = ferry_node_init(&n, name, listen_addr, state, key, &err);
	if (r == 0)
		r = ferry_services_publish(&n.rt, services, nservices, &err);
	free(services);
	if (r == 0)
		r = ferry_node_recover(&n, &err);
	if (r == 0)
		r = ferry_node_listen(&n, &lfd, &err);
	if (r == 0)
		r = ferry_node_control_listen(&n, &cfd, &err);
	if (r < 0) {
		fprintf(stderr, "ferryd: %s\n", err.msg);
		return 1;
	}
	struct sigaction sa = {.sa_handler = on_term};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	pid_t self = getpid();
	fprintf(stderr, "ferryd %s: listening on %s, state in %s, %zu service%s\n", n.name,
	        n.listen, n.rt.state_dir, nservices, nservices == 1 ? "" : "s");
	while (!stop_requested) {
		struct pollfd p[2] = {{.fd = lfd, .events = POLLIN}, {.fd = cfd, .events = POLLIN}};
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		if (poll(p, 2, 500) <= 0)
			continue;
		for (int i = 0; i < 2; i++) {
			if (!(p[i].revents & POLLIN))
				continue;
			int conn = accept4(p[i].fd, NULL, NULL, SOCK_CLOEXEC);
			if (conn < 0)
				continue;
			pid_t w = fork();
			if (w == 0)
				worker(&n, conn, i == 0, self, lfd, cfd);
			if (w < 0)
				fprintf(stderr, "ferryd %s: fork: %s\n", n.name, strerror(errno));
			close(conn);
		}
	}
	char sock[4200];
	snprintf(sock, sizeof(sock), "%s/ferryd.sock", n.rt.state_dir);
	unlink(sock);
	fprintf(stderr, "ferryd %s: stopped\n", n.name);
	return 0;
}
