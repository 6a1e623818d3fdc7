/*
 * The network lock: between a checkpoint that ends a component (--stop) and the restore that
 * takes its TCP connections over, no socket holds them, and the node would answer any segment
 * of a peer (a delayed ACK, new data) with a reset. Each such connection's incoming segments
 * are dropped instead, by an element of a set in an nftables table of ferry's own ("inet
 * ferry": a chain on the input hook, before conntrack); the peer sends them again and reaches
 * the restored socket. The restore removes the element once the connection is its own.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <nftables/libnftables.h>
#include <stdio.h>
#include <string.h>

#include "netlock.h"
#include "util.h"

static void nft_freep(struct nft_ctx **n)
{
	if (*n)
		nft_ctx_free(*n);
}

/* Run one nft command; its error text (trimmed) into msg. */
static int run(struct nft_ctx *nft, const char *cmd, char *msg, size_t len)
{
	int r = nft_run_cmd_from_buffer(nft, cmd);
	const char *e = nft_ctx_get_error_buffer(nft);

	snprintf(msg, len, "%s", e && *e ? e : "nft failed");
	msg[strcspn(msg, "\n")] = '\0';
	return r == 0 ? 0 : -EIO;
}

static int element(const struct sockaddr_storage *local, const struct sockaddr_storage *peer,
                   char *buf, size_t len)
{
	char l[INET6_ADDRSTRLEN], p[INET6_ADDRSTRLEN];

	if (local->ss_family != peer->ss_family)
		return -EINVAL;
	if (local->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)local, *b = (const void *)peer;
		inet_ntop(AF_INET, &a->sin_addr, l, sizeof(l));
		inet_ntop(AF_INET, &b->sin_addr, p, sizeof(p));
		snprintf(buf, len, "lock4 { %s . %u . %s . %u }", p, ntohs(b->sin_port), l,
		         ntohs(a->sin_port));
		return 0;
	}
	if (local->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)local, *b = (const void *)peer;
		inet_ntop(AF_INET6, &a->sin6_addr, l, sizeof(l));
		inet_ntop(AF_INET6, &b->sin6_addr, p, sizeof(p));
		snprintf(buf, len, "lock6 { %s . %u . %s . %u }", p, ntohs(b->sin6_port), l,
		         ntohs(a->sin6_port));
		return 0;
	}
	return -EAFNOSUPPORT;
}

static int nft_ready(struct nft_ctx *nft, struct ferry_error *err)
{
	if (!nft || nft_ctx_buffer_error(nft) < 0 || nft_ctx_buffer_output(nft) < 0)
		return ferr(err, -ENOMEM, "network lock: no nftables context");
	return 0;
}

int netlock_lock(const struct netlock_conn *c, size_t n, struct ferry_error *err)
{
	_cleanup_(nft_freep) struct nft_ctx *nft = NULL;
	_cleanup_free_ char *cmd = NULL;
	char msg[256];
	size_t len = 0;
	int r;

	if (!n)
		return 0;
	nft = nft_ctx_new(NFT_CTX_DEFAULT);
	if ((r = nft_ready(nft, err)) < 0)
		return r;
	r = run(nft,
	        "add table inet ferry\n"
	        "add set inet ferry lock4 { type ipv4_addr . inet_service . ipv4_addr . "
	        "inet_service; }\n"
	        "add set inet ferry lock6 { type ipv6_addr . inet_service . ipv6_addr . "
	        "inet_service; }\n",
	        msg, sizeof(msg));
	if (r < 0)
		return ferr(err, r, "network lock: the table inet ferry: %s", msg);
	/* the chain and its rules once: created only if it is not there yet */
	if (run(nft,
	        "create chain inet ferry input { type filter hook input priority -400; policy "
	        "accept; }\n",
	        msg, sizeof(msg)) == 0) {
		r = run(nft,
		        "add rule inet ferry input ip saddr . tcp sport . ip daddr . tcp dport "
		        "@lock4 drop\n"
		        "add rule inet ferry input ip6 saddr . tcp sport . ip6 daddr . tcp dport "
		        "@lock6 drop\n",
		        msg, sizeof(msg));
		if (r < 0)
			return ferr(err, r, "network lock: the rules of inet ferry: %s", msg);
	}
	/* every connection in one command: one transaction */
	cmd = malloc(n * 256 + 1);
	if (!cmd)
		return ferr(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		char el[200];
		r = element(&c[i].local, &c[i].peer, el, sizeof(el));
		if (r < 0)
			return ferr(err, r, "network lock: not an IPv4 or IPv6 connection");
		len += (size_t)snprintf(cmd + len, 256, "add element inet ferry %s\n", el);
	}
	r = run(nft, cmd, msg, sizeof(msg));
	return r < 0 ? ferr(err, r, "network lock of %zu connections: %s", n, msg) : 0;
}

void netlock_unlock(const struct netlock_conn *c)
{
	_cleanup_(nft_freep) struct nft_ctx *nft = nft_ctx_new(NFT_CTX_DEFAULT);
	char el[200], cmd[256], msg[256];

	if (nft_ready(nft, NULL) < 0 || element(&c->local, &c->peer, el, sizeof(el)) < 0)
		return;
	snprintf(cmd, sizeof(cmd), "delete element inet ferry %s", el);
	/* none there (an image taken while the component ran on) is no error */
	(void)run(nft, cmd, msg, sizeof(msg));
}

int netlock_probe(char *detail, size_t len)
{
	_cleanup_(nft_freep) struct nft_ctx *nft = nft_ctx_new(NFT_CTX_DEFAULT);
	char msg[256] = "no nftables context";
	bool ok = nft_ready(nft, NULL) == 0 && run(nft, "list tables", msg, sizeof(msg)) == 0;

	snprintf(detail, len, "%s",
	         ok ? "nftables usable: TCP connections are locked between checkpoint and restore"
	            : msg);
	return ok;
}
