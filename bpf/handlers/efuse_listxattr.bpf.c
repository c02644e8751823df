// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * LISTXATTR handler (kmod/ patch 0009): answers listxattr(2) from the list efused stored
 * under the name "" in efuse_xattr_answers. See efuse_xattr.bpf.h.
 */
#include "efuse_xattr.bpf.h"

EFUSE_HANDLER_OPCODE(FUSE_LISTXATTR);

SEC("raw_tp.w/efuse_handler")
int efuse_listxattr(struct bpf_raw_tracepoint_args *args)
{
	return efuse_xattr_handler(efuse_handler_ctx(args), FUSE_LISTXATTR);
}

char LICENSE[] SEC("license") = "GPL";
