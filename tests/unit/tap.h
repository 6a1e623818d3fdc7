/* The unit tests' small TAP harness: a tally, one "ok"/"not ok" line per case, and fail() to
 * put the reason in the case's why buffer (WHY_MAX bytes). */
#pragma once

#include <stdarg.h>
#include <stdio.h>

#include "util.h"

#define WHY_MAX 1024

struct tally {
	int passed;
	int failed;
};

static inline void report(struct tally *t, const char *name, int ok, const char *why)
{
	if (ok) {
		t->passed++;
		printf("ok - %s\n", name);
	} else {
		t->failed++;
		printf("not ok - %s: %s\n", name, why);
	}
	fflush(stdout);
}

static inline int fail(char *why, const char *fmt, ...) _printf_(2, 3);
static inline int fail(char *why, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, WHY_MAX, fmt, ap);
	va_end(ap);
	return 0;
}
