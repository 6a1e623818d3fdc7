/* ferry: the command line; parses arguments, calls libferry, renders results and reports errors. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "cli.h"
#include "ferry/ferry.h"
#include "restore.h"
#include "util.h"

#ifndef FERRY_VERSION
#define FERRY_VERSION "0.1.0"
#endif

#define EXIT_USAGE 2

/* One invocation: what every command needs, owned by main. */
struct cli {
	const char *cmd; /* command name, for messages */
	const struct command *command;
	struct ferry_runtime rt;
	struct ferry_error err;
};

struct command {
	const char *name;
	int (*fn)(struct cli *c, int argc, char **argv);
	const char *args;
	const char *summary;
	const char *options; /* lines for --help, may be NULL */
};

/* fail - report a library failure once: "ferry: CMD OBJ: msg"; returns the exit status 1. */
static int fail(const struct cli *c, const char *object, int r)
{
	const char *msg = c->err.msg[0] ? c->err.msg : strerror(-r);

	fprintf(stderr, "ferry: %s%s%s: %s\n", c->cmd, object ? " " : "", object ? object : "",
	        msg);
	return EXIT_FAILURE;
}

/* usage_error - report a command line mistake with a hint; returns the exit status 2. */
_printf_(2, 3) static int usage_error(const struct cli *c, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "ferry: %s: ", c->cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'ferry %s --help'.\n", c->cmd);
	return EXIT_USAGE;
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "ferry: %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'ferry %s --help'.\n", cmd);
	return EXIT_USAGE;
}

static int command_help(const struct command *cmd)
{
	printf("Usage: ferry %s %s\n\n%s\n", cmd->name, cmd->args, cmd->summary);
	printf("\nOptions:\n%s  -h, --help         show this help\n",
	       cmd->options ? cmd->options : "");
	return EXIT_SUCCESS;
}

static int runtime_open(struct cli *c)
{
	int r = ferry_runtime_init(&c->rt, NULL, &c->err);

	return r < 0 ? fail(c, NULL, r) : 0;
}

/* ---- option parsing --------------------------------------------------------------------- */

/* What a command's options produced. */
struct opts {
	const char *name, *dir, *parent, *keep, *every, *count;
	bool json, stop, follow, live, lazy;
	int rest; /* index of the first operand in argv */
};

/*
 * parse_cmd - parse the options in SHORTOPTS (a subset of "n:d:jsfp:k:e:c:"; a leading '+' stops at
 * the first operand, for `run`), answer --help and insist on NPOS operands (-1: any number), named
 * WHAT when missing. Returns -1 when the command should proceed, else the exit status to end with.
 */
static int parse_cmd(struct cli *c, int argc, char **argv, const char *shortopts, int npos,
                     const char *what, struct opts *o)
{
	static const struct option longopts[] = {
	        {"help", no_argument, NULL, 'h'},
	        {"name", required_argument, NULL, 'n'},
	        {"dir", required_argument, NULL, 'd'},
	        {"json", no_argument, NULL, 'j'},
	        {"stop", no_argument, NULL, 's'},
	        {"follow", no_argument, NULL, 'f'},
	        {"parent", required_argument, NULL, 'p'},
	        {"keep", required_argument, NULL, 'k'},
	        {"every", required_argument, NULL, 'e'},
	        {"count", required_argument, NULL, 'c'},
	        {"live", no_argument, NULL, 'l'},
	        {"lazy", no_argument, NULL, 'L'},
	        {NULL, 0, NULL, 0},
	};
	bool plus = shortopts[0] == '+';
	char spec[32];
	int ch;

	/* ':' first (after an optional '+') makes getopt return ':' for a missing argument. */
	snprintf(spec, sizeof(spec), "%s:h%s", plus ? "+" : "", shortopts + plus);
	*o = (struct opts){0};
	opterr = 0;
	optind = 0; /* 0 re-initialises GNU getopt for this argv */
	while ((ch = getopt_long(argc, argv, spec, longopts, NULL)) != -1) {
		/* A long option this command does not take is as unknown as a short one. */
		if (ch != 'h' && ch != ':' && ch != '?' && !strchr(shortopts, ch))
			return usage_error(c, "unknown option '%s'", argv[optind - 1]);
		switch (ch) {
		case 'h':
			return command_help(c->command);
		case 'n':
			o->name = optarg;
			break;
		case 'd':
			o->dir = optarg;
			break;
		case 'j':
			o->json = true;
			break;
		case 's':
			o->stop = true;
			break;
		case 'f':
			o->follow = true;
			break;
		case 'p':
			o->parent = optarg;
			break;
		case 'k':
			o->keep = optarg;
			break;
		case 'e':
			o->every = optarg;
			break;
		case 'c':
			o->count = optarg;
			break;
		case 'l':
			o->live = true;
			break;
		case 'L':
			o->lazy = true;
			break;
		case ':':
			return usage_error(c, "option '%s' needs an argument", argv[optind - 1]);
		default:
			if (optopt)
				return usage_error(c, "unknown option '-%c'", optopt);
			return usage_error(c, "unknown option '%s'", argv[optind - 1]);
		}
	}
	o->rest = optind;
	if (npos >= 0 && argc - o->rest < npos)
		return usage_error(c, "missing %s", what);
	if (npos >= 0 && argc - o->rest > npos)
		return usage_error(c, "unexpected argument '%s'", argv[o->rest + npos]);
	return -1;
}

/* ---- small renderers ---------------------------------------------------------------------- */

static double ms(uint64_t ns)
{
	return (double)ns / 1e6;
}

/* Human readable size: "4.0K", "1.5M", "2.0G". */
static const char *size_str(uint64_t bytes, char buf[static 16])
{
	static const char units[] = "BKMGT";
	double v = (double)bytes;
	unsigned u = 0;

	while (v >= 1024.0 && u < sizeof(units) - 2) {
		v /= 1024.0;
		u++;
	}
	if (u == 0)
		snprintf(buf, 16, "%" PRIu64 "B", bytes);
	else
		snprintf(buf, 16, "%.1f%c", v, units[u]);
	return buf;
}

static const char *time_str(int64_t t, char buf[static 32])
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (t <= 0 || !localtime_r(&tt, &tm) || !strftime(buf, 32, "%Y-%m-%d %H:%M:%S", &tm))
		snprintf(buf, 32, "-");
	return buf;
}

/* A JSON double printed as %.3f, not json-c's 17 significant digits. */
static struct json_object *json_ms(uint64_t ns)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%.3f", ms(ns));
	return json_object_new_double_s(ms(ns), buf);
}

static void jset(struct json_object *o, const char *key, struct json_object *v)
{
	json_object_object_add(o, key, v);
}

static void json_print(struct json_object *o)
{
	puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
	                                               JSON_C_TO_STRING_NOSLASHESCAPE));
}

/* Tolerant accessors: a missing or mistyped key reads as absent (DFLT). */
static const char *jstr(struct json_object *o, const char *key, const char *dflt)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return dflt;
	return json_object_get_string(v);
}

static int64_t jint(struct json_object *o, const char *key, int64_t dflt)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
		return dflt;
	return json_object_get_int64(v);
}

static bool jbool(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

static struct json_object *jarr(struct json_object *o, const char *key, size_t *ret_n)
{
	struct json_object *v;

	*ret_n = 0;
	if (!o || !json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_array))
		return NULL;
	*ret_n = json_object_array_length(v);
	return v;
}

/* "0x00007f0000001000" -> "7f0000001000": addresses read better without prefix and zeros. */
static const char *hex_short(const char *s)
{
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		s += 2;
	while (s[0] == '0' && s[1])
		s++;
	return s;
}

/* ---- describe: render inspect/caps JSON as text ------------------------------------------- */

static void describe_threads(struct json_object *proc)
{
	size_t n;
	struct json_object *a = jarr(proc, "threads", &n);

	printf("\n  Threads (%zu)\n", n);
	if (!n)
		return;
	printf("    %-7s %-15s %-14s %-14s %s\n", "TID", "COMM", "RIP", "RSP", "STATE");
	for (size_t i = 0; i < n; i++) {
		struct json_object *t = json_object_array_get_idx(a, i), *regs = NULL;

		json_object_object_get_ex(t, "regs", &regs);
		printf("    %-7" PRId64 " %-15s %-14s %-14s %s\n", jint(t, "tid", 0),
		       jstr(t, "comm", "?"), hex_short(jstr(regs, "rip", "?")),
		       hex_short(jstr(regs, "rsp", "?")), jstr(t, "state", "?"));
	}
}

/* "#0:169 #2:16215": how many of a mapping's saved pages each pages file of a chain holds. */
static void sources_str(struct json_object *m, char *buf, size_t len)
{
	size_t n, at = 0;
	struct json_object *a = jarr(m, "sources", &n);
	int64_t seen[16], count[16];
	size_t k = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		struct json_object *s = json_object_array_get_idx(a, i);
		int64_t f = jint(s, "file", 0), np = jint(s, "pages", 0);
		size_t j = 0;
		while (j < k && seen[j] != f)
			j++;
		if (j == k && k < 16) {
			seen[k] = f;
			count[k++] = 0;
		}
		if (j < k)
			count[j] += np;
	}
	for (size_t j = 0; j < k && at < len; j++)
		at += (size_t)snprintf(buf + at, len - at, "%s#%" PRId64 ":%" PRId64, j ? " " : "",
		                       seen[j], count[j]);
}

static void describe_pagefiles(struct json_object *o)
{
	size_t n;
	struct json_object *a = jarr(o, "pages_files", &n);
	char sz[16], when[32];

	if (n <= 1)
		return;
	printf("\n  Pages files (an incremental chain: the data of %zu checkpoints)\n", n);
	printf("    %-3s %-16s %7s %8s  %s\n", "#", "NAME", "SIZE", "PAGES", "WRITTEN BY");
	for (size_t i = 0; i < n; i++) {
		struct json_object *f = json_object_array_get_idx(a, i);
		printf("    %-3" PRId64 " %-16s %7s %8" PRId64 "  %s generation %" PRId64 ", %s\n",
		       jint(f, "index", 0), jstr(f, "name", "?"),
		       size_str((uint64_t)jint(f, "bytes", 0), sz), jint(f, "pages", 0),
		       jstr(f, "origin", "?"), jint(f, "generation", 0),
		       time_str(jint(f, "created", 0), when));
	}
}

static void describe_memory(struct json_object *proc, bool chain)
{
	size_t n;
	struct json_object *a = jarr(proc, "memory", &n);
	uint64_t total = 0, pages = 0;
	char sz[16], range[48];
	int w = 5;

	printf("\n  Memory (%zu mappings)\n", n);
	for (size_t i = 0; i < n; i++) {
		struct json_object *m = json_object_array_get_idx(a, i);
		int len = snprintf(range, sizeof(range), "%s-%s", hex_short(jstr(m, "start", "?")),
		                   hex_short(jstr(m, "end", "?")));
		w = MAX(w, len);
	}
	if (!n)
		return;
	printf("    %-*s %7s %-4s %-11s %7s  %s%s\n", w, "RANGE", "SIZE", "PROT", "KIND", "PAGES",
	       chain ? "FROM (pages file:pages)  " : "", "PATH");
	for (size_t i = 0; i < n; i++) {
		struct json_object *m = json_object_array_get_idx(a, i);
		int64_t size = jint(m, "size", 0), np = jint(m, "pages", 0);
		const char *path = jstr(m, "path", NULL);

		snprintf(range, sizeof(range), "%s-%s", hex_short(jstr(m, "start", "?")),
		         hex_short(jstr(m, "end", "?")));
		char from[96] = "";
		total += (uint64_t)size;
		pages += (uint64_t)np;
		if (chain) {
			char src[72];
			sources_str(m, src, sizeof(src));
			snprintf(from, sizeof(from), path ? "  %-23s" : "  %s", src);
		}
		printf("    %-*s %7s %-4s %-11s %7" PRId64 "%s%s%s\n", w, range,
		       size_str((uint64_t)size, sz), jstr(m, "prot", "?"), jstr(m, "kind", "?"), np,
		       from, path ? "  " : "", path ? path : "");
	}
	printf("    %-*s %7s %-4s %-11s %7" PRIu64 "  (%s of page data)\n", w, "total",
	       size_str(total, sz), "", "", pages, size_str(pages * PAGE_SIZE_4K, range));
}

static void describe_fds(struct json_object *proc)
{
	size_t n;
	struct json_object *a = jarr(proc, "fds", &n);

	printf("\n  File descriptors (%zu)\n", n);
	if (!n)
		return;
	printf("    %-4s %-7s %-24s %8s  %s\n", "FD", "KIND", "FLAGS", "POS", "MEANING");
	for (size_t i = 0; i < n; i++) {
		struct json_object *f = json_object_array_get_idx(a, i);
		char flags[64], pos[24] = "-";
		int64_t p;

		snprintf(flags, sizeof(flags), "%s%s", jstr(f, "flags", "?"),
		         jbool(f, "cloexec") ? "|O_CLOEXEC" : "");
		if ((p = jint(f, "pos", -1)) >= 0)
			snprintf(pos, sizeof(pos), "%" PRId64, p);
		printf("    %-4" PRId64 " %-7s %-24s %8s  %s\n", jint(f, "fd", -1),
		       jstr(f, "kind", "?"), flags, pos, jstr(f, "meaning", jstr(f, "path", "")));
	}
}

static void describe_signals(struct json_object *proc)
{
	size_t n, np;
	struct json_object *a = jarr(proc, "signals", &n), *p = jarr(proc, "pending", &np);

	printf("\n  Signal handlers (%zu)\n", n);
	for (size_t i = 0; i < n; i++) {
		struct json_object *s = json_object_array_get_idx(a, i);

		printf("    %-10s handler %-14s mask %-18s %s\n", jstr(s, "signal", "?"),
		       jstr(s, "handler", "?"), jstr(s, "mask", "?"), jstr(s, "flags", ""));
	}
	printf("\n  Pending signals (%zu)\n", np);
	for (size_t i = 0; i < np; i++) {
		struct json_object *s = json_object_array_get_idx(p, i);

		printf("    %-10s %s\n", jstr(s, "signal", "?"), jstr(s, "scope", ""));
	}
	struct json_object *t = jarr(proc, "timers", &n);
	printf("\n  Timers (%zu)\n", n);
	if (n)
		printf("    %-14s %-4s %-5s %-14s %-12s %s\n", "KIND", "ID", "CLOCK", "NEXT",
		       "INTERVAL", "NOTIFY");
	for (size_t i = 0; i < n; i++) {
		struct json_object *s = json_object_array_get_idx(t, i), *v;
		char id[16] = "-", clk[16] = "-", next[32] = "disarmed", iv[32] = "once", how[64];
		if (json_object_object_get_ex(s, "id", &v))
			snprintf(id, sizeof(id), "%d", json_object_get_int(v));
		if (json_object_object_get_ex(s, "clock", &v))
			snprintf(clk, sizeof(clk), "%d", json_object_get_int(v));
		if (json_object_object_get_ex(s, "next_ms", &v) && v)
			snprintf(next, sizeof(next), "in %.3f ms", json_object_get_double(v));
		if (json_object_object_get_ex(s, "interval_ms", &v) &&
		    json_object_get_double(v) > 0)
			snprintf(iv, sizeof(iv), "%.3f ms", json_object_get_double(v));
		snprintf(how, sizeof(how), "%s%s%s", jstr(s, "signal", ""),
		         json_object_object_get_ex(s, "signal", NULL) ? " to " : "",
		         jstr(s, "notify", ""));
		printf("    %-14s %-4s %-5s %-14s %-12s %s\n", jstr(s, "kind", "?"), id, clk, next,
		       iv, how);
	}
}

/* describe_print - text form of the inspect/caps object; WHAT names its source. */
static void describe_print(struct json_object *o, const char *what)
{
	size_t n;
	struct json_object *procs = jarr(o, "processes", &n);
	char sz[16], when[32];
	int64_t v;

	printf("%s: component %s\n ", what, jstr(o, "name", "?"));
	if ((v = jint(o, "format_version", -1)) >= 0)
		printf(" format %" PRId64 ",", v);
	if ((v = jint(o, "generation", -1)) >= 0)
		printf(" generation %" PRId64 ",", v);
	if ((v = jint(o, "created", -1)) >= 0)
		printf(" created %s,", time_str(v, when));
	if ((v = jint(o, "image_bytes", -1)) >= 0)
		printf(" image %s,", size_str((uint64_t)v, sz));
	printf(" %zu process%s\n", n, n == 1 ? "" : "es");
	size_t nfiles;
	(void)jarr(o, "pages_files", &nfiles);
	describe_pagefiles(o);

	for (size_t i = 0; i < n; i++) {
		struct json_object *p = json_object_array_get_idx(procs, i);

		printf("\nProcess %" PRId64 " (%s)", jint(p, "pid", 0), jstr(p, "comm", "?"));
		if ((v = jint(p, "host_pid", -1)) >= 0)
			printf(", host pid %" PRId64, v);
		/* 0: outside the component's namespace (inherited from its monitor) */
		const char *ids[][2] = {{"ppid", "parent"}, {"pgid", "group"}, {"sid", "session"}};
		for (size_t k = 0; k < 3; k++)
			if ((v = jint(p, ids[k][0], 0)) > 0)
				printf(", %s %" PRId64, ids[k][1], v);
		if (json_object_get_boolean(json_object_object_get(p, "zombie"))) {
			if ((v = jint(p, "exit_code", -1)) >= 0)
				printf("\n  exited with status %" PRId64, v);
			else
				printf("\n  killed by %s", jstr(p, "exit_signal", "?"));
			printf(", not reaped by its parent yet (a zombie)\n");
			continue;
		}
		printf("\n  exe %s\n  cwd %s, root %s", jstr(p, "exe", "?"), jstr(p, "cwd", "?"),
		       jstr(p, "root", "?"));
		if ((v = jint(p, "umask", -1)) >= 0)
			printf(", umask %04" PRIo64, (uint64_t)v);
		printf("\n");
		describe_threads(p);
		describe_memory(p, nfiles > 1);
		describe_fds(p);
		describe_signals(p);
	}
	struct json_object *fl = jarr(o, "in_flight", &n);
	if (!n)
		return;
	printf("\nFiles in flight in Unix sockets' queues, sent and not received yet (%zu)\n", n);
	for (size_t i = 0; i < n; i++) {
		struct json_object *f = json_object_array_get_idx(fl, i);
		printf("    #%-3" PRId64 " %-7s %s\n", jint(f, "index", -1), jstr(f, "kind", "?"),
		       jstr(f, "meaning", ""));
	}
}

/* ---- commands ----------------------------------------------------------------------------- */

static int cmd_run(struct cli *c, int argc, char **argv)
{
	struct opts o;
	pid_t pid;
	int r = parse_cmd(c, argc, argv, "+n:", -1, NULL, &o);

	if (r >= 0)
		return r;
	if (!o.name)
		return usage_error(c, "missing --name NAME");
	if (!ferry_name_valid(o.name))
		return usage_error(c, "invalid name '%s' (use 1-63 of [A-Za-z0-9_.-])", o.name);
	if (o.rest >= argc)
		return usage_error(c, "missing PROGRAM");
	if ((r = runtime_open(c)))
		return r;
	r = ferry_run(&c->rt, o.name, argv + o.rest, &pid, &c->err);
	if (r < 0)
		return fail(c, o.name, r);
	printf("%s: running, pid %d\n", o.name, (int)pid);
	return 0;
}

/* "100ms", "2s", "1.5s", "500us", "1m": a duration in nanoseconds; 0 if malformed. */
static uint64_t parse_duration(const char *s)
{
	static const struct {
		const char *unit;
		double ns;
	} units[] = {{"ns", 1}, {"us", 1e3}, {"ms", 1e6}, {"s", 1e9}, {"m", 60e9}};
	char *end;
	double v = strtod(s, &end);

	if (end == s || v <= 0)
		return 0;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (strcmp(end, units[i].unit) == 0)
			return (uint64_t)(v * units[i].ns);
	return 0;
}

/* A positive integer option; 0 if malformed. */
static uint64_t parse_count(const char *s)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	return (errno || end == s || *end || s[0] == '-') ? 0 : v;
}

static struct json_object *ckpt_json(const char *name, const char *dir, const struct opts *o,
                                     const char *parent, const struct ferry_ckpt_stats *st)
{
	struct json_object *j = json_object_new_object();

	jset(j, "name", json_object_new_string(name));
	jset(j, "dir", json_object_new_string(dir));
	jset(j, "stopped", json_object_new_boolean(o->stop));
	jset(j, "incremental", json_object_new_boolean(st->incremental));
	jset(j, "parent", parent ? json_object_new_string(parent) : NULL);
	jset(j, "fallback", st->fallback[0] ? json_object_new_string(st->fallback) : NULL);
	jset(j, "tracked", json_object_new_boolean(st->tracked));
	jset(j, "files", json_object_new_int64(st->files));
	jset(j, "live", json_object_new_boolean(o->live));
	jset(j, "precopy_rounds", json_object_new_int64(st->precopy_rounds));
	jset(j, "precopy_bytes", json_object_new_uint64(st->precopy_bytes));
	jset(j, "freeze_ms", json_ms(st->freeze_ns));
	jset(j, "total_ms", json_ms(st->total_ns));
	jset(j, "write_ms", json_ms(st->write_ns));
	jset(j, "pages_scanned", json_object_new_uint64(st->pages_scanned));
	jset(j, "pages_written", json_object_new_uint64(st->pages_written));
	jset(j, "pages_frozen", json_object_new_uint64(st->pages_frozen));
	jset(j, "pages_folded", json_object_new_uint64(st->pages_folded));
	jset(j, "pages_shared", json_object_new_uint64(st->pages_shared));
	jset(j, "bytes_written", json_object_new_uint64(st->bytes_written));
	jset(j, "processes", json_object_new_int64(st->processes));
	jset(j, "threads", json_object_new_int64(st->threads));
	jset(j, "vmas", json_object_new_int64(st->vmas));
	jset(j, "fds", json_object_new_int64(st->fds));
	return j;
}

static void ckpt_print(const char *name, const char *dir, const struct opts *o,
                       const struct ferry_ckpt_stats *st)
{
	printf("%s: %s checkpoint in %s: freeze %.2f ms, total %.2f ms, %" PRIu32
	       " process%s, %" PRIu32 " threads, %" PRIu32 " mappings, %" PRIu32 " fds, %" PRIu64
	       " pages written (%.1f MiB), image %.1f MiB, %" PRIu32 " pages file%s%s\n",
	       name, st->incremental ? "incremental" : "full", dir, ms(st->freeze_ns),
	       ms(st->total_ns), st->processes, st->processes == 1 ? "" : "es", st->threads,
	       st->vmas, st->fds, st->pages_written, st->pages_written * PAGE_SIZE_4K / 1048576.0,
	       st->bytes_written / 1048576.0, st->files, st->files == 1 ? "" : "s",
	       o->stop ? ", component stopped" : "");
	if (st->precopy_rounds)
		printf("%s: %.1f MiB copied in %" PRIu32
		       " round%s while it ran, before the freeze\n",
		       name, st->precopy_bytes / 1048576.0, st->precopy_rounds,
		       st->precopy_rounds == 1 ? "" : "s");
	if (st->pages_shared)
		printf("%s: %" PRIu64 " pages (%.1f MiB) shared copy-on-write between parent and "
		       "child processes, stored once\n",
		       name, st->pages_shared, st->pages_shared * PAGE_SIZE_4K / 1048576.0);
	if (st->fallback[0])
		printf("%s: not incremental: %s\n", name, st->fallback);
	fflush(stdout);
}

/* Continuous mode: what the tick callback needs. */
struct every {
	const char *name, *dir;
	const struct opts *o;
	uint64_t seq;
	sigset_t stop; /* SIGINT, SIGTERM: blocked, seen as pending */
};

static int every_tick(void *arg, const struct ferry_ckpt_stats *st)
{
	struct every *ev = arg;
	sigset_t pending;

	if (st) {
		ev->seq++;
		if (ev->o->json) {
			struct json_object *j = ckpt_json(ev->name, ev->dir, ev->o,
			                                  st->incremental ? ev->dir : NULL, st);
			jset(j, "seq", json_object_new_uint64(ev->seq));
			puts(json_object_to_json_string_ext(
			        j, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
			fflush(stdout);
			json_object_put(j);
		} else {
			ckpt_print(ev->name, ev->dir, ev->o, st);
		}
	}
	if (sigpending(&pending) < 0)
		return 0;
	return sigismember(&pending, SIGINT) == 1 || sigismember(&pending, SIGTERM) == 1;
}

static int cmd_checkpoint(struct cli *c, int argc, char **argv)
{
	struct ferry_ckpt_stats st = {0};
	struct ferry_ckpt_opts co = {0};
	uint64_t every = 0, count = 0;
	const char *name;
	struct opts o;
	int r = parse_cmd(c, argc, argv, "d:jsp:k:e:c:l", 1, "NAME", &o);

	if (r >= 0)
		return r;
	name = argv[o.rest];
	if (!o.dir)
		return usage_error(c, "missing --dir DIR");
	if (o.keep && (!(co.keep = (unsigned)parse_count(o.keep)) || co.keep < 2))
		return usage_error(c, "--keep wants a number of images, 2 or more, not '%s'",
		                   o.keep);
	if (o.every && !(every = parse_duration(o.every)))
		return usage_error(c, "--every wants a duration like 100ms or 2s, not '%s'",
		                   o.every);
	if (o.count && (!o.every || !(count = parse_count(o.count))))
		return usage_error(c, "--count wants --every and a positive number");
	if (o.every && (o.parent || o.stop || o.live))
		return usage_error(c, "--every takes neither --parent, --stop nor --live");
	if (o.live && (o.parent || o.stop))
		return usage_error(c, "--live takes neither --parent nor --stop");
	co.flags = (o.stop ? FERRY_CKPT_STOP : 0) | (o.live ? FERRY_CKPT_LIVE : 0);
	co.parent = o.parent;
	if ((r = runtime_open(c)))
		return r;
	if (o.every) {
		struct every ev = {.name = name, .dir = o.dir, .o = &o};
		if (!o.keep)
			co.keep = 8;
		sigemptyset(&ev.stop);
		sigaddset(&ev.stop, SIGINT);
		sigaddset(&ev.stop, SIGTERM);
		sigprocmask(SIG_BLOCK, &ev.stop, NULL);
		r = ferry_checkpoint_every(&c->rt, name, o.dir, &co, every, count, every_tick, &ev,
		                           &c->err);
		return r < 0 ? fail(c, name, r) : 0;
	}
	r = ferry_checkpoint(&c->rt, name, o.dir, &co, &st, &c->err);
	if (r < 0)
		return fail(c, name, r);
	if (o.json) {
		struct json_object *j =
		        ckpt_json(name, o.dir, &o, st.incremental ? o.parent : NULL, &st);
		json_print(j);
		json_object_put(j);
		return 0;
	}
	ckpt_print(name, o.dir, &o, &st);
	return 0;
}

static struct json_object *summary_json(struct ferry_stat_summary s, bool is_ns)
{
	struct json_object *j = json_object_new_object();

	jset(j, "min", is_ns ? json_ms(s.min) : json_object_new_uint64(s.min));
	jset(j, "median", is_ns ? json_ms(s.median) : json_object_new_uint64(s.median));
	jset(j, "max", is_ns ? json_ms(s.max) : json_object_new_uint64(s.max));
	return j;
}

static int cmd_stats(struct cli *c, int argc, char **argv)
{
	struct ferry_stats st;
	struct opts o;
	int r = parse_cmd(c, argc, argv, "j", 1, "NAME", &o);

	if (r >= 0)
		return r;
	const char *name = argv[o.rest];
	if ((r = runtime_open(c)))
		return r;
	r = ferry_stats(&c->rt, name, &st, &c->err);
	if (r < 0)
		return fail(c, name, r);
	if (o.json) {
		struct json_object *j = json_object_new_object(), *l = json_object_new_object();
		jset(j, "name", json_object_new_string(name));
		jset(j, "count", json_object_new_uint64(st.count));
		jset(j, "incremental", json_object_new_uint64(st.incremental));
		jset(l, "freeze_ms", json_ms(st.latest.freeze_ns));
		jset(l, "total_ms", json_ms(st.latest.total_ns));
		jset(l, "pages_scanned", json_object_new_uint64(st.latest.pages_scanned));
		jset(l, "pages_written", json_object_new_uint64(st.latest.pages_written));
		jset(l, "bytes_written", json_object_new_uint64(st.latest.bytes_written));
		jset(l, "incremental", json_object_new_boolean(st.latest.incremental));
		jset(j, "latest", st.count ? l : NULL);
		if (!st.count)
			json_object_put(l);
		if (st.count) {
			jset(j, "freeze_ms", summary_json(st.freeze_ns, true));
			jset(j, "total_ms", summary_json(st.total_ns, true));
			jset(j, "pages_scanned", summary_json(st.pages_scanned, false));
			jset(j, "pages_written", summary_json(st.pages_written, false));
			jset(j, "bytes_written", summary_json(st.bytes_written, false));
		}
		json_print(j);
		json_object_put(j);
		return 0;
	}
	if (!st.count) {
		printf("%s: no checkpoints since it was started or restored\n", name);
		return 0;
	}
	printf("%s: %" PRIu64 " checkpoints (%" PRIu64 " incremental) since it was started or "
	       "restored\n",
	       name, st.count, st.incremental);
	printf("  %-14s %10s %10s %10s %10s\n", "", "latest", "min", "median", "max");
	printf("  %-14s %10.2f %10.2f %10.2f %10.2f\n", "freeze ms", ms(st.latest.freeze_ns),
	       ms(st.freeze_ns.min), ms(st.freeze_ns.median), ms(st.freeze_ns.max));
	printf("  %-14s %10.2f %10.2f %10.2f %10.2f\n", "total ms", ms(st.latest.total_ns),
	       ms(st.total_ns.min), ms(st.total_ns.median), ms(st.total_ns.max));
	const struct {
		const char *what;
		uint64_t latest;
		struct ferry_stat_summary s;
	} rows[] = {{"pages scanned", st.latest.pages_scanned, st.pages_scanned},
	            {"pages written", st.latest.pages_written, st.pages_written},
	            {"bytes written", st.latest.bytes_written, st.bytes_written}};
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
		printf("  %-14s %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %10" PRIu64 "\n",
		       rows[i].what, rows[i].latest, rows[i].s.min, rows[i].s.median,
		       rows[i].s.max);
	return 0;
}

static int cmd_restore(struct cli *c, int argc, char **argv)
{
	struct ferry_restore_stats st = {0};
	struct json_object *img = NULL;
	char name[FERRY_NAME_MAX] = "";
	struct opts o;
	pid_t pid;
	int r = parse_cmd(c, argc, argv, "d:n:jL", 0, NULL, &o);

	if (r >= 0)
		return r;
	if (!o.dir)
		return usage_error(c, "missing --dir DIR");
	if ((r = runtime_open(c)))
		return r;
	struct restore_opts ro = {.flags = o.lazy ? RESTORE_LAZY : 0};
	r = restore_image(&c->rt, o.dir, o.name, &ro, &pid, &st, &c->err);
	if (r < 0)
		return fail(c, o.dir, r);

	/* The API returns the pid only: the name comes from the command line or the image. */
	if (o.name) {
		snprintf(name, sizeof(name), "%s", o.name);
	} else if (ferry_inspect(o.dir, &img, &c->err) >= 0) {
		snprintf(name, sizeof(name), "%s", jstr(img, "name", ""));
		json_object_put(img);
	}

	if (o.json) {
		struct json_object *j = json_object_new_object();

		jset(j, "name", name[0] ? json_object_new_string(name) : NULL);
		jset(j, "dir", json_object_new_string(o.dir));
		jset(j, "pid", json_object_new_int(pid));
		jset(j, "total_ms", json_ms(st.total_ns));
		jset(j, "verify_ms", json_ms(st.verify_ns));
		jset(j, "pages_ms", json_ms(st.pages_ns));
		jset(j, "pages_loaded", json_object_new_uint64(st.pages_loaded));
		json_print(j);
		json_object_put(j);
		return 0;
	}
	printf("%s%srestored from %s, pid %d, total %.2f ms (verify %.2f ms, pages %.2f ms, "
	       "%" PRIu64 " pages)\n",
	       name, name[0] ? ": " : "", o.dir, (int)pid, ms(st.total_ns), ms(st.verify_ns),
	       ms(st.pages_ns), st.pages_loaded);
	return 0;
}

static const char *state_name(enum ferry_state st)
{
	static const char *const names[] = {"starting", "running", "exited"};

	return (unsigned)st < ARRAY_SIZE(names) ? names[st] : "unknown";
}

/* "running", "exited(0)", "exited(SIGKILL)". */
static const char *state_str(const struct ferry_component *cp, char buf[static 32])
{
	int ws = cp->exit_status;
	const char *sig = WIFSIGNALED(ws) ? sigabbrev_np(WTERMSIG(ws)) : NULL;

	if (cp->state != FERRY_STATE_EXITED)
		return state_name(cp->state);
	if (WIFSIGNALED(ws) && sig)
		snprintf(buf, 32, "exited(SIG%s)", sig);
	else if (WIFSIGNALED(ws))
		snprintf(buf, 32, "exited(signal %d)", WTERMSIG(ws));
	else
		snprintf(buf, 32, "exited(%d)", WEXITSTATUS(ws));
	return buf;
}

static int cmd_ps(struct cli *c, int argc, char **argv)
{
	struct ferry_component *list = NULL;
	struct json_object *a = NULL;
	size_t n = 0;
	struct opts o;
	int r = parse_cmd(c, argc, argv, "j", 0, NULL, &o);

	if (r >= 0)
		return r;
	if ((r = runtime_open(c)))
		return r;
	r = ferry_list(&c->rt, &list, &n, &c->err);
	if (r < 0)
		return fail(c, NULL, r);

	if (o.json)
		a = json_object_new_array();
	else
		printf("%-20s %8s %8s %-18s %-8s %s\n", "NAME", "PID", "MONITOR", "STATE",
		       "RESTORED", "STARTED");
	for (size_t i = 0; i < n; i++) {
		const struct ferry_component *cp = &list[i];
		struct json_object *j;
		char st[32], when[32];

		if (!o.json) {
			printf("%-20s %8d %8d %-18s %-8s %s\n", cp->name, (int)cp->pid,
			       (int)cp->monitor_pid, state_str(cp, st), cp->restored ? "yes" : "no",
			       time_str(cp->started, when));
			continue;
		}
		j = json_object_new_object();
		jset(j, "name", json_object_new_string(cp->name));
		jset(j, "pid", json_object_new_int(cp->pid));
		jset(j, "monitor_pid", json_object_new_int(cp->monitor_pid));
		jset(j, "state", json_object_new_string(state_name(cp->state)));
		jset(j, "exit_status",
		     cp->state == FERRY_STATE_EXITED ? json_object_new_int(cp->exit_status) : NULL);
		jset(j, "restored", json_object_new_boolean(cp->restored));
		jset(j, "started", json_object_new_int64(cp->started));
		jset(j, "log", json_object_new_string(cp->log_path));
		json_object_array_add(a, j);
	}
	if (a)
		json_print(a);
	json_object_put(a);
	free(list);
	return 0;
}

static int cmd_services(struct cli *c, int argc, char **argv)
{
	struct ferry_service *list = NULL;
	struct json_object *a = NULL;
	size_t n = 0;
	struct opts o;
	int r = parse_cmd(c, argc, argv, "j", 0, NULL, &o);

	if (r >= 0)
		return r;
	if ((r = runtime_open(c)))
		return r;
	r = ferry_services_list(&c->rt, &list, &n, &c->err);
	if (r < 0)
		return fail(c, NULL, r);
	if (o.json)
		a = json_object_new_array();
	else
		printf("%-20s %-5s %-40s %s\n", "NAME", "KIND", "TARGET", "STATUS");
	for (size_t i = 0; i < n; i++) {
		char detail[256];
		int up = ferry_service_status(&list[i], detail, sizeof(detail));
		const char *kind = ferry_service_kind_name(list[i].kind);
		if (!o.json) {
			printf("%-20s %-5s %-40s %s%s\n", list[i].name, kind, list[i].target,
			       up ? "" : "down: ", detail);
			continue;
		}
		struct json_object *j = json_object_new_object();
		jset(j, "name", json_object_new_string(list[i].name));
		jset(j, "kind", json_object_new_string(kind));
		jset(j, "target", json_object_new_string(list[i].target));
		jset(j, "up", json_object_new_boolean(up));
		jset(j, "status", json_object_new_string(detail));
		json_object_array_add(a, j);
	}
	if (!o.json && n == 0)
		printf("(no services: ferryd --service or --config declares them)\n");
	if (a)
		json_print(a);
	json_object_put(a);
	free(list);
	return 0;
}

static int cmd_kill(struct cli *c, int argc, char **argv)
{
	struct opts o;
	int r = parse_cmd(c, argc, argv, "", 1, "NAME", &o);

	if (r >= 0)
		return r;
	if ((r = runtime_open(c)))
		return r;
	r = ferry_kill(&c->rt, argv[o.rest], &c->err);
	return r < 0 ? fail(c, argv[o.rest], r) : 0;
}

/* Copy what FD holds past its offset to stdout; 1 if anything came, 0 if not, or -errno. */
static int log_drain(int fd)
{
	char buf[65536];
	ssize_t n;
	int got = 0;

	while ((n = read(fd, buf, sizeof(buf))) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if ((got = write_full(STDOUT_FILENO, buf, (size_t)n)) < 0)
			return got;
		got = 1;
	}
	return got;
}

/* How many bytes at the start of files A and B are equal, up to LIMIT. */
static off_t common_prefix(int a, int b, off_t limit)
{
	char x[4096], y[4096];
	off_t off = 0;

	while (off < limit) {
		size_t want = (size_t)MIN((off_t)sizeof(x), limit - off);
		ssize_t n = pread(a, x, want, off), m = pread(b, y, want, off), k = 0;

		while (k < MIN(n, m) && x[k] == y[k])
			k++;
		off += k;
		if (k <= 0 || (size_t)k < want)
			break;
	}
	return off;
}

/*
 * logs_follow - print the log as it grows, from *fd (may be -EBADF: not there yet), re-reading
 * the record each poll: a restored component's record names its log afresh. When the log is
 * replaced or cut back (a restore brings back the log as it was at the checkpoint), go on after
 * what the new contents share with what was printed. Ends on SIGINT/SIGTERM, or once the
 * component has stayed exited (or forgotten) with nothing new for a few polls. 0 or -errno.
 */
static int logs_follow(struct cli *c, const char *name, int *fd, const char *path)
{
	_cleanup_close_ int sfd = -EBADF;
	char cur[PATH_MAX];
	struct stat st, pst;
	sigset_t mask;
	int quiet = 0;

	snprintf(cur, sizeof(cur), "%s", path);
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0 ||
	    (sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK)) < 0)
		return -errno;

	while (quiet < 5) {
		struct ferry_component cp;
		struct pollfd pfd = {.fd = sfd, .events = POLLIN};
		int got = 0, nfd;
		bool gone;

		if (poll(&pfd, 1, 100) > 0)
			return 0;
		gone = ferry_component_get(&c->rt, name, &cp, &c->err) < 0 ||
		       cp.state == FERRY_STATE_EXITED;
		if (!gone && cp.log_path[0])
			snprintf(cur, sizeof(cur), "%s", cp.log_path);
		/* A different file at the path (or a new path): finish the old one, then switch. */
		if (stat(cur, &pst) == 0 &&
		    (*fd < 0 || fstat(*fd, &st) < 0 || st.st_ino != pst.st_ino ||
		     st.st_dev != pst.st_dev) &&
		    (nfd = open(cur, O_RDONLY | O_CLOEXEC)) >= 0) {
			if (*fd >= 0 && (got = log_drain(*fd)) >= 0)
				lseek(nfd, common_prefix(*fd, nfd, lseek(*fd, 0, SEEK_CUR)),
				      SEEK_SET);
			safe_close(*fd);
			*fd = nfd;
			if (got < 0)
				return got;
		}
		if (*fd >= 0) {
			/*
			 * Truncated under us: a restore cuts the log back to where the checkpoint
			 * left it (what came after never happened), rotation cuts it to 0. Either
			 * way what stays was printed already: go on from the new end.
			 */
			if (fstat(*fd, &st) == 0 && st.st_size < lseek(*fd, 0, SEEK_CUR))
				lseek(*fd, st.st_size, SEEK_SET);
			int r = log_drain(*fd);

			if (r < 0)
				return r;
			got |= r;
		}
		quiet = gone && got == 0 ? quiet + 1 : 0;
	}
	return 0;
}

static int cmd_logs(struct cli *c, int argc, char **argv)
{
	_cleanup_close_ int fd = -EBADF;
	struct ferry_component cp;
	const char *name;
	struct opts o;
	int r = parse_cmd(c, argc, argv, "f", 1, "NAME", &o);

	if (r >= 0)
		return r;
	name = argv[o.rest];
	if ((r = runtime_open(c)))
		return r;
	r = ferry_component_get(&c->rt, name, &cp, &c->err);
	if (r < 0)
		return fail(c, name, r);

	fd = open(cp.log_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 && (!o.follow || errno != ENOENT))
		r = -errno;
	else if (fd >= 0)
		r = log_drain(fd);
	if (r >= 0 && o.follow)
		r = logs_follow(c, name, &fd, cp.log_path);
	if (r < 0) {
		fprintf(stderr, "ferry: %s %s: log %s: %s\n", c->cmd, name, cp.log_path,
		        strerror(-r));
		return EXIT_FAILURE;
	}
	return 0;
}

/* inspect DIR and caps NAME: the same description, of an image or of a running component. */
static int cmd_describe(struct cli *c, int argc, char **argv)
{
	bool caps = strcmp(c->cmd, "caps") == 0;
	struct json_object *j = NULL;
	char what[PATH_MAX + 16];
	const char *obj;
	struct opts o;
	int r = parse_cmd(c, argc, argv, "j", 1, caps ? "NAME" : "DIR", &o);

	if (r >= 0)
		return r;
	obj = argv[o.rest];
	if (caps && (r = runtime_open(c)))
		return r;
	r = caps ? ferry_caps(&c->rt, obj, &j, &c->err) : ferry_inspect(obj, &j, &c->err);
	if (r < 0)
		return fail(c, obj, r);
	snprintf(what, sizeof(what), "Image %s", obj);
	if (o.json)
		json_print(j);
	else
		describe_print(j, caps ? "Running" : what);
	json_object_put(j);
	return 0;
}

static int cmd_check(struct cli *c, int argc, char **argv)
{
	struct json_object *j = NULL, *a;
	struct opts o;
	size_t n = 0;
	int failed = 0;
	int r = parse_cmd(c, argc, argv, "j", 0, NULL, &o);

	if (r >= 0)
		return r;
	r = ferry_check(&j, &c->err);
	if (r < 0)
		return fail(c, NULL, r);
	a = json_object_is_type(j, json_type_array) ? j : NULL;
	n = a ? json_object_array_length(a) : 0;
	for (size_t i = 0; i < n; i++) {
		struct json_object *f = json_object_array_get_idx(a, i);

		failed += !jbool(f, "ok");
		if (!o.json)
			printf("%-4s %-22s %s\n", jbool(f, "ok") ? "ok" : "FAIL",
			       jstr(f, "feature", "?"), jstr(f, "detail", ""));
	}
	if (o.json)
		json_print(j);
	json_object_put(j);
	return failed ? EXIT_FAILURE : 0;
}

static int cmd_migrate_cli(struct cli *c, int argc, char **argv)
{
	return cmd_migrate(c->cmd, argc, argv);
}

static const struct command commands[] = {
        {"run", cmd_run, "--name NAME [--] PROGRAM [ARGS...]",
         "Start PROGRAM as component NAME (own PID and mount namespaces, output to its log).",
         "  -n, --name NAME    name of the component\n"},
        {"checkpoint", cmd_checkpoint,
         "NAME --dir DIR [--parent PREV_DIR | --every INTERVAL [--count N] | --live] [--keep N] "
         "[--stop] [--json]",
         "Freeze component NAME, save it into image directory DIR and let it run on.",
         "  -d, --dir DIR      image directory (an earlier image there stays valid on failure)\n"
         "  -s, --stop         end the component once the image is durable\n"
         "  -p, --parent DIR   incremental: save only the pages written since the checkpoint\n"
         "                     in DIR (the latest of this run of NAME; else a full one is\n"
         "                     taken and the reason printed); restore reads through it\n"
         "  -e, --every T      continuous: an incremental checkpoint into DIR every T (100ms,\n"
         "                     2s, ...) until SIGINT/SIGTERM; DIR always holds the newest\n"
         "                     complete one\n"
         "  -c, --count N      with --every: stop after N checkpoints\n"
         "  -l, --live         a full image with a short freeze: memory is copied while NAME\n"
         "                     runs, in rounds, then only what it wrote meanwhile is copied\n"
         "                     frozen; the image is NAME at that last freeze\n"
         "  -k, --keep N       an image reads at most N pages files (default 8 with --every,\n"
         "                     no bound with --parent): older ones are folded into the new one\n"
         "  -j, --json         print the figures as JSON (--every: one line each)\n"},
        {"stats", cmd_stats, "NAME [--json]",
         "Checkpoint figures of NAME since it was started or restored: latest, min, median, "
         "max.",
         "  -j, --json         print JSON\n"},
        {"restore", cmd_restore, "--dir DIR [--name NAME] [--lazy] [--json]",
         "Recreate the component saved in DIR, with its pids, memory, fds and registers.",
         "  -d, --dir DIR      image directory\n"
         "  -n, --name NAME    name to run it under (default: the name in the image)\n"
         "  -L, --lazy         page data supplied on first touch; for trusted images (no\n"
         "                     checksum verification before it runs)\n"
         "  -j, --json         print the figures as JSON\n"},
        {"migrate", cmd_migrate_cli, cmd_migrate_args, cmd_migrate_summary, cmd_migrate_options},
        {"ps", cmd_ps, "[--json]", "List components.", "  -j, --json         print JSON\n"},
        {"kill", cmd_kill, "NAME", "End component NAME and forget it.", NULL},
        {"services", cmd_services, "[--json]",
         "List the services this node's ferryd declares, and whether each is up.",
         "  -j, --json         print JSON\n"},
        {"logs", cmd_logs, "NAME [-f]", "Print the output of component NAME.",
         "  -f, --follow       keep printing as it grows, until the component exits or ^C\n"},
        {"inspect", cmd_describe, "DIR [--json]",
         "Describe the image in DIR: threads, registers, memory map, fds, signals.",
         "  -j, --json         print JSON\n"},
        {"caps", cmd_describe, "NAME [--json]",
         "Describe running component NAME as a checkpoint would see it (brief freeze).",
         "  -j, --json         print JSON\n"},
        {"check", cmd_check, "[--json]", "Probe the kernel features ferry relies on.",
         "  -j, --json         print JSON\n"},
};

static const struct command *command_find(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static void main_help(FILE *f)
{
	fprintf(f, "Usage: ferry COMMAND [ARGS...]\n\n"
	           "Run Linux programs as components, checkpoint and restore them.\n\n"
	           "Commands:\n");
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
		fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\nState lives in $FERRY_STATE_DIR (default /run/ferry).\n"
	           "'ferry COMMAND --help' describes a command; 'ferry --version' prints the "
	           "version.\n");
}

int main(int argc, char **argv)
{
	struct cli c = {0};
	const struct command *cmd;

	if (argc < 2) {
		main_help(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		if (argc > 2 && (cmd = command_find(argv[2])))
			return command_help(cmd);
		main_help(stdout);
		return 0;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("ferry %s\n", FERRY_VERSION);
		return 0;
	}
	cmd = command_find(argv[1]);
	if (!cmd) {
		fprintf(stderr, "ferry: unknown command '%s'\nTry 'ferry --help'.\n", argv[1]);
		return EXIT_USAGE;
	}
	c.cmd = cmd->name;
	c.command = cmd;
	return cmd->fn(&c, argc - 1, argv + 1);
}
