/* `ferry migrate`: ask the local node's ferryd to move a component to another node. */
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "ferry/ferry.h"

const char cmd_migrate_args[] =
        "NAME --to HOST:PORT [--mode precopy|postcopy|stop-and-copy] [--max-downtime MS] "
        "[--max-rounds N] [--carry-files] [--compress] [--json]";
const char cmd_migrate_summary[] =
        "Move running component NAME to the node at HOST:PORT while it runs.";
const char cmd_migrate_options[] =
        "  -t, --to HOST:PORT    the destination node's ferryd\n"
        "  -m, --mode MODE       precopy (default): memory is sent while NAME runs, in\n"
        "                        rounds of what it wrote meanwhile, until the rest fits\n"
        "                        --max-downtime; then it is frozen, the rest is sent and it\n"
        "                        resumes there. stop-and-copy: frozen, everything sent,\n"
        "                        resumed there. postcopy: frozen, everything but its\n"
        "                        anonymous memory sent, resumed there at once; its pages\n"
        "                        follow, first those it touches. Post-copy cannot survive\n"
        "                        losing the source (node or link) after the hand-over: the\n"
        "                        pages not sent yet are lost, and so is the component\n"
        "  -D, --max-downtime MS pre-copy target for the frozen part (default 20)\n"
        "  -r, --max-rounds N    pre-copy rounds at most (default 30)\n"
        "  -c, --carry-files     send open files that are missing or differ at the\n"
        "                        destination (else the migration is refused, listing them)\n"
        "  -z, --compress        compress the stream (zstd), for links slower than that\n"
        "  -j, --json            print the figures as JSON\n"
        "The component runs in exactly one place: if anything fails before the hand-over it\n"
        "runs on here unharmed; after it, only at the destination. Needs ferryd running for\n"
        "$FERRY_STATE_DIR and at the destination, both with the same cluster key.\n";

struct prog {
	bool tty;
	bool any;
};

static double mib(uint64_t b)
{
	return (double)b / 1048576.0;
}

static void on_progress(void *arg, const struct ferry_migrate_progress *p)
{
	struct prog *pg = arg;
	char line[256];
	snprintf(line, sizeof(line),
	         "%-8s round %2u  %9.1f MiB sent  %8.1f MiB/s  dirty %7.1f MiB/s  "
	         "downtime ~%.1f ms",
	         p->phase ? p->phase : "?", p->round, mib(p->bytes), mib(p->rate),
	         mib(p->dirty_rate), (double)p->expected_down_ns / 1e6);
	if (pg->tty)
		fprintf(stderr, "\r\033[K%s", line);
	else
		fprintf(stderr, "%s\n", line);
	pg->any = true;
}

int cmd_migrate(const char *cmd, int argc, char **argv)
{
	static const struct option longopts[] = {{"to", required_argument, NULL, 't'},
	                                         {"mode", required_argument, NULL, 'm'},
	                                         {"max-downtime", required_argument, NULL, 'D'},
	                                         {"max-rounds", required_argument, NULL, 'r'},
	                                         {"carry-files", no_argument, NULL, 'c'},
	                                         {"compress", no_argument, NULL, 'z'},
	                                         {"json", no_argument, NULL, 'j'},
	                                         {"help", no_argument, NULL, 'h'},
	                                         {NULL, 0, NULL, 0}};
	struct ferry_migrate_opts o = {0};
	struct ferry_migrate_stats st;
	struct ferry_runtime rt;
	struct ferry_error err = {0};
	struct prog pg = {.tty = isatty(2)};
	const char *to = NULL;
	bool json = false;
	int ch;

	opterr = 0;
	optind = 0;
	while ((ch = getopt_long(argc, argv, ":t:m:D:r:czjh", longopts, NULL)) != -1) {
		switch (ch) {
		case 't':
			to = optarg;
			break;
		case 'm':
			if (strcmp(optarg, "precopy") == 0 || strcmp(optarg, "pre-copy") == 0)
				o.mode = FERRY_MIGRATE_PRECOPY;
			else if (strcmp(optarg, "stop-and-copy") == 0)
				o.mode = FERRY_MIGRATE_STOP_AND_COPY;
			else if (strcmp(optarg, "postcopy") == 0 ||
			         strcmp(optarg, "post-copy") == 0)
				o.mode = FERRY_MIGRATE_POSTCOPY;
			else
				return cli_usage_error(cmd,
				                       "--mode wants precopy, postcopy or "
				                       "stop-and-copy, not '%s'",
				                       optarg);
			break;
		case 'D':
		case 'r': {
			char *end;
			unsigned long v = strtoul(optarg, &end, 10);
			if (*end || v == 0 || v > 3600000)
				return cli_usage_error(
				        cmd, "%s wants a positive number, not '%s'",
				        ch == 'D' ? "--max-downtime" : "--max-rounds", optarg);
			if (ch == 'D')
				o.max_downtime_ms = (unsigned)v;
			else
				o.max_rounds = (unsigned)v;
			break;
		}
		case 'c':
			o.carry_files = true;
			break;
		case 'z':
			o.compress = true;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			printf("Usage: ferry %s %s\n\n%s\n\nOptions:\n%s  -h, --help            "
			       "show "
			       "this help\n",
			       cmd, cmd_migrate_args, cmd_migrate_summary, cmd_migrate_options);
			return 0;
		case ':':
			return cli_usage_error(cmd, "option '%s' needs an argument",
			                       argv[optind - 1]);
		default:
			return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cli_usage_error(cmd, "missing NAME");
	if (optind + 1 < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
	if (!to)
		return cli_usage_error(cmd, "missing --to HOST:PORT");
	const char *name = argv[optind];
	if (ferry_runtime_init(&rt, NULL, &err) < 0) {
		fprintf(stderr, "ferry: %s: %s\n", cmd, err.msg);
		return 1;
	}
	o.progress = on_progress;
	o.progress_arg = &pg;
	int r = ferry_migrate_request(&rt, name, to, &o, &st, &err);
	if (pg.tty && pg.any)
		fprintf(stderr, "\n");
	if (r < 0) {
		fprintf(stderr, "ferry: %s %s: %s\n", cmd, name, err.msg);
		return 1;
	}
	if (json) {
		json_object *j = json_object_new_object();
		json_object_object_add(j, "name", json_object_new_string(name));
		json_object_object_add(j, "id", json_object_new_string(st.id));
		json_object_object_add(j, "destination", json_object_new_string(st.dest_node));
		json_object_object_add(j, "destination_pid", json_object_new_int(st.dest_pid));
		json_object_object_add(j, "total_ms", json_object_new_double(st.total_ns / 1e6));
		json_object_object_add(j, "setup_ms", json_object_new_double(st.setup_ns / 1e6));
		json_object_object_add(j, "downtime_ms",
		                       json_object_new_double(st.downtime_ns / 1e6));
		json_object_object_add(j, "restore_ms",
		                       json_object_new_double(st.restore_ns / 1e6));
		json_object_object_add(j, "bytes_precopy",
		                       json_object_new_uint64(st.bytes_precopy));
		json_object_object_add(j, "bytes_downtime",
		                       json_object_new_uint64(st.bytes_downtime));
		json_object_object_add(j, "bytes_postcopy",
		                       json_object_new_uint64(st.bytes_postcopy));
		json_object_object_add(j, "bytes_total", json_object_new_uint64(st.bytes_total));
		json_object_object_add(j, "rounds", json_object_new_int((int)st.rounds));
		json_object_object_add(j, "dirty_rate", json_object_new_uint64(st.dirty_rate));
		json_object_object_add(j, "rate", json_object_new_uint64(st.rate));
		json_object_object_add(j, "files_carried",
		                       json_object_new_int((int)st.files_carried));
		json_object_object_add(j, "confirmed", json_object_new_boolean(st.confirmed));
		if (st.post_error[0])
			json_object_object_add(j, "post_error",
			                       json_object_new_string(st.post_error));
		printf("%s\n",
		       json_object_to_json_string_ext(j, JSON_C_TO_STRING_PRETTY |
		                                                 JSON_C_TO_STRING_NOSLASHESCAPE));
		json_object_put(j);
		return 0;
	}
	printf("%s: migrated to %s (pid %d there) in %.1f ms\n", name, st.dest_node, st.dest_pid,
	       st.total_ns / 1e6);
	printf("  downtime   %8.2f ms (restore at the destination %.2f ms)\n", st.downtime_ns / 1e6,
	       st.restore_ns / 1e6);
	printf("  setup      %8.2f ms\n", st.setup_ns / 1e6);
	printf("  transferred %7.1f MiB: %.1f MiB pre-copy, %.1f MiB in the downtime, %.1f MiB "
	       "post-copy\n",
	       mib(st.bytes_total), mib(st.bytes_precopy), mib(st.bytes_downtime),
	       mib(st.bytes_postcopy));
	printf("  rounds     %8u   link %.1f MiB/s, dirty rate %.1f MiB/s\n", st.rounds,
	       mib(st.rate), mib(st.dirty_rate));
	if (st.files_carried)
		printf("  files carried: %u\n", st.files_carried);
	if (!st.confirmed)
		printf("  the destination did not confirm; it settles by asking this node\n");
	if (st.post_error[0])
		printf("  post-copy failed after the hand-over: %s\n", st.post_error);
	return 0;
}
