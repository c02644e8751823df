#include "fuse/opcodes.h"

#include "fuse/kernel.h"

namespace fuse {
namespace {
constexpr const char* kNames[kernel::kMaxOpcode + 1] = {
    nullptr,        "lookup",      "forget",      "getattr",      "setattr",
    "readlink",     "symlink",     nullptr,       "mknod",        "mkdir",
    "unlink",       "rmdir",       "rename",      "link",         "open",
    "read",         "write",       "statfs",      "release",      nullptr,
    "fsync",        "setxattr",    "getxattr",    "listxattr",    "removexattr",
    "flush",        "init",        "opendir",     "readdir",      "releasedir",
    "fsyncdir",     "getlk",       "setlk",       "setlkw",       "access",
    "create",       "interrupt",   "bmap",        "destroy",      "ioctl",
    "poll",         "notify_reply", "batch_forget", "fallocate",  "readdirplus",
    "rename2",      "lseek",       "copy_file_range", "setupmapping", "removemapping",
    "syncfs",       "tmpfile",     "statx",       "copy_file_range_64",
};
}  // namespace

const char* opcode_name(uint32_t opcode) {
  if (opcode > kernel::kMaxOpcode || kNames[opcode] == nullptr) return "unknown";
  return kNames[opcode];
}

}  // namespace fuse
