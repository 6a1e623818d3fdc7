/* Commands of the ferry CLI kept in files of their own. */
#pragma once

/* cli_usage_error - "ferry: CMD: ..." and a hint; returns the exit status 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

extern const char cmd_migrate_args[], cmd_migrate_summary[], cmd_migrate_options[];
int cmd_migrate(const char *cmd, int argc, char **argv);
