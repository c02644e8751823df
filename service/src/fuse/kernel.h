// FUSE wire protocol: the structs and constants efuse speaks, protocol 7.45.
//
// Debian 12's <linux/fuse.h> (kernel 6.1) stops at 7.38 and lacks passthrough (7.40) and
// FUSE-over-io_uring (7.42), so efuse keeps its own copy of the facts here, checked against
// the running kernel's uapi layouts (bpftool btf dump of struct fuse_*). Every struct has a
// static_assert on its size: a layout drift is a compile error, not a corrupted reply.
#pragma once

#include <cstddef>
#include <cstdint>
#include <sys/ioctl.h>

#include "fuse/opcode_list.h"

namespace fuse::kernel {

inline constexpr uint32_t kVersion = 7;
inline constexpr uint32_t kMinorVersion = 45;
inline constexpr uint32_t kMinMinor = 31;  // oldest kernel protocol efused serves (Linux 5.10)
inline constexpr size_t kMinReadBuffer = 8192;
inline constexpr uint64_t kRootId = 1;

#define EFUSE_OPCODE_ENUMERATOR(E, n, name) E = n,
enum class Opcode : uint32_t { EFUSE_FUSE_OPCODES(EFUSE_OPCODE_ENUMERATOR, EFUSE_OPCODE_ENUMERATOR) };
#undef EFUSE_OPCODE_ENUMERATOR
// The highest opcode efused knows (opcode_list.h).
inline constexpr uint32_t kMaxOpcode = [] {
  uint32_t max = 0;
#define EFUSE_OPCODE_MAX(E, n, name) max = n > max ? n : max;
  EFUSE_FUSE_OPCODES(EFUSE_OPCODE_MAX, EFUSE_OPCODE_MAX)
#undef EFUSE_OPCODE_MAX
  return max;
}();

// INIT flags (fuse_init_in/out.flags, and flags2 << 32 when FUSE_INIT_EXT is set).
namespace init {
inline constexpr uint64_t kAsyncRead = 1ULL << 0;
inline constexpr uint64_t kPosixLocks = 1ULL << 1;
inline constexpr uint64_t kFileOps = 1ULL << 2;
inline constexpr uint64_t kAtomicOTrunc = 1ULL << 3;
inline constexpr uint64_t kExportSupport = 1ULL << 4;
inline constexpr uint64_t kBigWrites = 1ULL << 5;
inline constexpr uint64_t kDontMask = 1ULL << 6;
inline constexpr uint64_t kSpliceWrite = 1ULL << 7;
inline constexpr uint64_t kSpliceMove = 1ULL << 8;
inline constexpr uint64_t kSpliceRead = 1ULL << 9;
inline constexpr uint64_t kFlockLocks = 1ULL << 10;
inline constexpr uint64_t kHasIoctlDir = 1ULL << 11;
inline constexpr uint64_t kAutoInvalData = 1ULL << 12;
inline constexpr uint64_t kDoReaddirplus = 1ULL << 13;
inline constexpr uint64_t kReaddirplusAuto = 1ULL << 14;
inline constexpr uint64_t kAsyncDio = 1ULL << 15;
inline constexpr uint64_t kWritebackCache = 1ULL << 16;
inline constexpr uint64_t kNoOpenSupport = 1ULL << 17;
inline constexpr uint64_t kParallelDirops = 1ULL << 18;
inline constexpr uint64_t kHandleKillpriv = 1ULL << 19;
inline constexpr uint64_t kPosixAcl = 1ULL << 20;
inline constexpr uint64_t kAbortError = 1ULL << 21;
inline constexpr uint64_t kMaxPages = 1ULL << 22;
inline constexpr uint64_t kCacheSymlinks = 1ULL << 23;
inline constexpr uint64_t kNoOpendirSupport = 1ULL << 24;
inline constexpr uint64_t kExplicitInvalData = 1ULL << 25;
inline constexpr uint64_t kMapAlignment = 1ULL << 26;
inline constexpr uint64_t kSubmounts = 1ULL << 27;
inline constexpr uint64_t kHandleKillprivV2 = 1ULL << 28;
inline constexpr uint64_t kSetxattrExt = 1ULL << 29;
inline constexpr uint64_t kInitExt = 1ULL << 30;
inline constexpr uint64_t kInitReserved = 1ULL << 31;
inline constexpr uint64_t kSecurityCtx = 1ULL << 32;
inline constexpr uint64_t kHasInodeDax = 1ULL << 33;
inline constexpr uint64_t kCreateSuppGroup = 1ULL << 34;
inline constexpr uint64_t kHasExpireOnly = 1ULL << 35;
inline constexpr uint64_t kDirectIoAllowMmap = 1ULL << 36;
inline constexpr uint64_t kPassthrough = 1ULL << 37;
inline constexpr uint64_t kNoExportSupport = 1ULL << 38;
inline constexpr uint64_t kHasResend = 1ULL << 39;
inline constexpr uint64_t kAllowIdmap = 1ULL << 40;
inline constexpr uint64_t kOverIoUring = 1ULL << 41;
inline constexpr uint64_t kRequestTimeout = 1ULL << 42;
}  // namespace init

// fuse_setattr_in.valid
inline constexpr uint32_t kFattrMode = 1 << 0;
inline constexpr uint32_t kFattrUid = 1 << 1;
inline constexpr uint32_t kFattrGid = 1 << 2;
inline constexpr uint32_t kFattrSize = 1 << 3;
inline constexpr uint32_t kFattrAtime = 1 << 4;
inline constexpr uint32_t kFattrMtime = 1 << 5;
inline constexpr uint32_t kFattrFh = 1 << 6;
inline constexpr uint32_t kFattrAtimeNow = 1 << 7;
inline constexpr uint32_t kFattrMtimeNow = 1 << 8;
inline constexpr uint32_t kFattrLockowner = 1 << 9;
inline constexpr uint32_t kFattrCtime = 1 << 10;
inline constexpr uint32_t kFattrKillSuidgid = 1 << 11;

// fuse_open_out.open_flags
inline constexpr uint32_t kFopenDirectIo = 1 << 0;
inline constexpr uint32_t kFopenKeepCache = 1 << 1;
inline constexpr uint32_t kFopenNonseekable = 1 << 2;
inline constexpr uint32_t kFopenCacheDir = 1 << 3;
inline constexpr uint32_t kFopenStream = 1 << 4;
inline constexpr uint32_t kFopenNoflush = 1 << 5;
inline constexpr uint32_t kFopenParallelDirectWrites = 1 << 6;
inline constexpr uint32_t kFopenPassthrough = 1 << 7;

inline constexpr uint32_t kGetattrFh = 1 << 0;      // fuse_getattr_in.getattr_flags
inline constexpr uint32_t kReleaseFlush = 1 << 0;   // fuse_release_in.release_flags
inline constexpr uint32_t kReleaseFlockUnlock = 1 << 1;
inline constexpr uint32_t kLkFlock = 1 << 0;        // fuse_lk_in.lk_flags
inline constexpr uint32_t kWriteCache = 1 << 0;     // fuse_write_in.write_flags
inline constexpr uint32_t kWriteLockowner = 1 << 1;
inline constexpr uint32_t kWriteKillSuidgid = 1 << 2;
inline constexpr uint32_t kOpenKillSuidgid = 1 << 0;  // fuse_open_in/fuse_create_in.open_flags
inline constexpr uint32_t kSetxattrAclKillSgid = 1 << 0;  // fuse_setxattr_in.setxattr_flags
inline constexpr uint32_t kReadLockowner = 1 << 1;  // fuse_read_in.read_flags
inline constexpr uint32_t kFsyncFdatasync = 1 << 0;  // fuse_fsync_in.fsync_flags

enum class NotifyCode : int32_t {
  Poll = 1, InvalInode = 2, InvalEntry = 3, Store = 4, Retrieve = 5, Delete = 6,
  Resend = 7, IncEpoch = 8,
};

struct fuse_attr {
  uint64_t ino, size, blocks, atime, mtime, ctime;
  uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags;
};
struct fuse_kstatfs {
  uint64_t blocks, bfree, bavail, files, ffree;
  uint32_t bsize, namelen, frsize, padding;
  uint32_t spare[6];
};
struct fuse_file_lock {
  uint64_t start, end;
  uint32_t type, pid;
};
struct fuse_entry_out {
  uint64_t nodeid, generation, entry_valid, attr_valid;
  uint32_t entry_valid_nsec, attr_valid_nsec;
  fuse_attr attr;
};
struct fuse_forget_in { uint64_t nlookup; };
struct fuse_forget_one { uint64_t nodeid, nlookup; };
struct fuse_batch_forget_in { uint32_t count, dummy; };
struct fuse_getattr_in { uint32_t getattr_flags, dummy; uint64_t fh; };
struct fuse_attr_out {
  uint64_t attr_valid;
  uint32_t attr_valid_nsec, dummy;
  fuse_attr attr;
};
struct fuse_mknod_in { uint32_t mode, rdev, umask, padding; };
struct fuse_mkdir_in { uint32_t mode, umask; };
struct fuse_rename_in { uint64_t newdir; };
struct fuse_rename2_in { uint64_t newdir; uint32_t flags, padding; };
struct fuse_link_in { uint64_t oldnodeid; };
struct fuse_setattr_in {
  uint32_t valid, padding;
  uint64_t fh, size, lock_owner, atime, mtime, ctime;
  uint32_t atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5;
};
struct fuse_open_in { uint32_t flags, open_flags; };
struct fuse_create_in { uint32_t flags, mode, umask, open_flags; };
struct fuse_open_out { uint64_t fh; uint32_t open_flags; int32_t backing_id; };
struct fuse_release_in { uint64_t fh; uint32_t flags, release_flags; uint64_t lock_owner; };
struct fuse_flush_in { uint64_t fh; uint32_t unused, padding; uint64_t lock_owner; };
struct fuse_read_in {
  uint64_t fh, offset;
  uint32_t size, read_flags;
  uint64_t lock_owner;
  uint32_t flags, padding;
};
struct fuse_write_in {
  uint64_t fh, offset;
  uint32_t size, write_flags;
  uint64_t lock_owner;
  uint32_t flags, padding;
};
struct fuse_write_out { uint32_t size, padding; };
struct fuse_statfs_out { fuse_kstatfs st; };
struct fuse_fsync_in { uint64_t fh; uint32_t fsync_flags, padding; };
struct fuse_setxattr_in { uint32_t size, flags, setxattr_flags, padding; };
inline constexpr size_t kCompatSetxattrInSize = 8;  // without FUSE_SETXATTR_EXT
struct fuse_getxattr_in { uint32_t size, padding; };
struct fuse_getxattr_out { uint32_t size, padding; };
struct fuse_lk_in { uint64_t fh, owner; fuse_file_lock lk; uint32_t lk_flags, padding; };
struct fuse_lk_out { fuse_file_lock lk; };
struct fuse_access_in { uint32_t mask, padding; };
struct fuse_init_in {
  uint32_t major, minor, max_readahead, flags, flags2;
  uint32_t unused[11];
};
inline constexpr size_t kCompatInitInSize = 16;  // before FUSE_INIT_EXT (7.36)
struct fuse_init_out {
  uint32_t major, minor, max_readahead, flags;
  uint16_t max_background, congestion_threshold;
  uint32_t max_write, time_gran;
  uint16_t max_pages, map_alignment;
  uint32_t flags2, max_stack_depth;
  uint16_t request_timeout;
  uint16_t unused[11];
};
struct fuse_interrupt_in { uint64_t unique; };
struct fuse_fallocate_in { uint64_t fh, offset, length; uint32_t mode, padding; };
struct fuse_lseek_in { uint64_t fh, offset; uint32_t whence, padding; };
struct fuse_lseek_out { uint64_t offset; };
struct fuse_copy_file_range_in {
  uint64_t fh_in, off_in, nodeid_out, fh_out, off_out, len, flags;
};
struct fuse_in_header {
  uint32_t len, opcode;
  uint64_t unique, nodeid;
  uint32_t uid, gid, pid;
  uint16_t total_extlen, padding;
};
struct fuse_out_header { uint32_t len; int32_t error; uint64_t unique; };
struct fuse_dirent {
  uint64_t ino, off;
  uint32_t namelen, type;
  // char name[] follows
};
struct fuse_direntplus { fuse_entry_out entry_out; fuse_dirent dirent; };
struct fuse_notify_inval_inode_out { uint64_t ino; int64_t off, len; };
struct fuse_notify_inval_entry_out { uint64_t parent; uint32_t namelen, flags; };
// fuse_notify_inval_entry_out.flags (7.38): mark the dentry expired, so the kernel looks the
// name up again before its next use, instead of dropping it (d_invalidate), which would cut
// off a process whose working directory it is. Kernels before 7.38 ignore the field.
inline constexpr uint32_t kExpireOnly = 1 << 0;
inline constexpr uint32_t kExpireOnlyMinor = 38;
struct fuse_notify_delete_out { uint64_t parent, child; uint32_t namelen, padding; };
struct fuse_backing_map { int32_t fd; uint32_t flags; uint64_t padding; };

inline constexpr size_t dirent_align(size_t x) { return (x + 7) & ~size_t{7}; }
inline constexpr size_t dirent_size(size_t namelen) {
  return dirent_align(sizeof(fuse_dirent) + namelen);
}
inline constexpr size_t direntplus_size(size_t namelen) {
  return dirent_align(sizeof(fuse_direntplus) + namelen);
}

// /dev/fuse ioctls.
inline constexpr uint32_t kDevIocMagic = 229;
inline constexpr unsigned long kDevIocClone = _IOR(kDevIocMagic, 0, uint32_t);
inline constexpr unsigned long kDevIocBackingOpen = _IOW(kDevIocMagic, 1, fuse_backing_map);
inline constexpr unsigned long kDevIocBackingClose = _IOW(kDevIocMagic, 2, uint32_t);

static_assert(sizeof(fuse_attr) == 88);
static_assert(sizeof(fuse_kstatfs) == 80);
static_assert(sizeof(fuse_entry_out) == 128);
static_assert(sizeof(fuse_attr_out) == 104);
static_assert(sizeof(fuse_setattr_in) == 88);
static_assert(sizeof(fuse_open_out) == 16);
static_assert(sizeof(fuse_release_in) == 24);
static_assert(sizeof(fuse_flush_in) == 24);
static_assert(sizeof(fuse_read_in) == 40);
static_assert(sizeof(fuse_write_in) == 40);
static_assert(sizeof(fuse_lk_in) == 48);
static_assert(sizeof(fuse_init_in) == 64);
static_assert(sizeof(fuse_init_out) == 64);
static_assert(sizeof(fuse_in_header) == 40);
static_assert(sizeof(fuse_out_header) == 16);
static_assert(sizeof(fuse_dirent) == 24);
static_assert(sizeof(fuse_direntplus) == 152);
static_assert(sizeof(fuse_copy_file_range_in) == 56);
static_assert(sizeof(fuse_backing_map) == 16);

}  // namespace fuse::kernel
