// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Test fixture for tests/vm (check kmod_handler): two raw_tp.w programs for efuse.ko's
 * efuse_handler tracepoint, one writing the buffer's last byte, one writing the byte after
 * it. Both pass the verifier at load (it only records how far each reaches); attaching
 * must accept the first and refuse the second, since the tracepoint's writable size is
 * sizeof(struct efuse_handler_ctx). Neither ever answers (out.verdict stays 0).
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "efuse_handler.h"

SEC("raw_tp.w/efuse_handler")
int efuse_last_byte(struct bpf_raw_tracepoint_args *args)
{
	char *buf = (char *)args->args[0];

	buf[sizeof(struct efuse_handler_ctx) - 1] = 0;
	return 0;
}

SEC("raw_tp.w/efuse_handler")
int efuse_past_end(struct bpf_raw_tracepoint_args *args)
{
	char *buf = (char *)args->args[0];

	buf[sizeof(struct efuse_handler_ctx)] = 0;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
