// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * GETXATTR handler (kmod/ patch 0009): answers getxattr(2), and the kernel's own
 * security.capability checks, from efuse_xattr_answers. See efuse_xattr.bpf.h.
 */
#include "efuse_xattr.bpf.h"

EFUSE_HANDLER_OPCODE(FUSE_GETXATTR);

SEC("raw_tp.w/efuse_handler")
int efuse_getxattr(struct bpf_raw_tracepoint_args *args)
{
	return efuse_xattr_handler(efuse_handler_ctx(args), FUSE_GETXATTR);
}

char LICENSE[] SEC("license") = "GPL";
