#include "fs/memory/store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "fs/memory/pool.h"

namespace efuse::fs::memory {
namespace {

// The new mount API (Linux 5.2; glibc 2.36 has wrappers, but <sys/mount.h> and
// <linux/mount.h> do not mix): the calls and constants this file needs.
constexpr unsigned kFsopenCloexec = 0x1;
constexpr unsigned kFsconfigSetString = 1;
constexpr unsigned kFsconfigCmdCreate = 6;
constexpr unsigned kFsconfigCmdReconfigure = 7;
constexpr unsigned kFsmountCloexec = 0x1;
constexpr unsigned kMountAttrNosuid = 0x2, kMountAttrNodev = 0x4, kMountAttrNoexec = 0x8;
constexpr unsigned kFspickCloexec = 0x1, kFspickEmptyPath = 0x8;

int fsconfig_string(int fs, const char* key, const char* value) {
  return static_cast<int>(syscall(SYS_fsconfig, fs, kFsconfigSetString, key, value, 0));
}
int fsconfig_cmd(int fs, unsigned cmd) {
  return static_cast<int>(syscall(SYS_fsconfig, fs, cmd, nullptr, nullptr, 0));
}

std::string name_of(uint64_t nodeid) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%" PRIx64, nodeid);
  return buf;
}

std::string size_option(uint64_t blocks) { return std::to_string(blocks * kBlockSize); }

Status errno_status() { return Errno{errno}; }

}  // namespace

std::unique_ptr<Store> Store::create(uint64_t max_bytes, std::string* why) {
  const uint64_t blocks = std::max<uint64_t>(max_bytes / kBlockSize, 1);
  int fsfd = static_cast<int>(syscall(SYS_fsopen, "tmpfs", kFsopenCloexec));
  if (fsfd < 0) {
    *why = std::string("fsopen(tmpfs): ") + std::strerror(errno);
    return nullptr;
  }
  const std::string size = size_option(blocks);
  // nr_inodes=0: no inode limit of its own (memory.max_inodes is counted by efused, and
  // covers directories and links, which have no data file); huge=never: 4 KiB pages, the
  // unit the limit and statfs count.
  const char* failed = nullptr;
  if (fsconfig_string(fsfd, "size", size.c_str()) < 0) failed = "size";
  else if (fsconfig_string(fsfd, "nr_inodes", "0") < 0) failed = "nr_inodes";
  else if (fsconfig_string(fsfd, "mode", "0700") < 0) failed = "mode";
  else if (fsconfig_string(fsfd, "huge", "never") < 0) failed = "huge";
  else if (fsconfig_cmd(fsfd, kFsconfigCmdCreate) < 0) failed = "create";
  if (failed != nullptr) {
    *why = std::string("fsconfig(tmpfs, ") + failed + "): " + std::strerror(errno);
    ::close(fsfd);
    return nullptr;
  }
  int mnt = static_cast<int>(syscall(SYS_fsmount, fsfd, kFsmountCloexec,
                                     kMountAttrNosuid | kMountAttrNodev | kMountAttrNoexec));
  int saved = errno;
  ::close(fsfd);
  if (mnt < 0) {
    *why = std::string("fsmount(tmpfs): ") + std::strerror(saved);
    return nullptr;
  }
  int ballast = openat(mnt, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (ballast < 0) {
    *why = std::string("O_TMPFILE in the private tmpfs: ") + std::strerror(errno);
    ::close(mnt);
    return nullptr;
  }
  std::unique_ptr<Store> s(new Store(mnt, ballast, blocks));
  s->size_ = blocks;
  return s;
}

Store::Store(int mnt, int ballast, uint64_t limit_blocks)
    : mnt_(mnt), ballast_(ballast), limit_(limit_blocks) {}

Store::~Store() {
  // The instance, and every data file in it, goes with its last reference.
  ::close(ballast_);
  ::close(mnt_);
}

Status Store::make(uint64_t nodeid) {
  int fd = openat(mnt_, name_of(nodeid).c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) return errno_status();
  ::close(fd);
  return {};
}

Result<int> Store::open(uint64_t nodeid, int flags) {
  // O_CREAT (the default): a removed file opened again through a descriptor that outlived
  // its names (/proc/PID/fd) finds it empty, as its data went with its last name.
  int fd = openat(mnt_, name_of(nodeid).c_str(), flags | O_CLOEXEC, 0600);
  if (fd < 0) return Errno{errno};
  return fd;
}

void Store::remove(uint64_t nodeid) {
  (void)unlinkat(mnt_, name_of(nodeid).c_str(), 0);
  shrink();
}

Status Store::stat(uint64_t nodeid, int fd, struct stat* st) const {
  int rc = fd >= 0 ? fstat(fd, st) : fstatat(mnt_, name_of(nodeid).c_str(), st, AT_SYMLINK_NOFOLLOW);
  return rc == 0 ? Status() : errno_status();
}

Status Store::set_mtime(uint64_t nodeid, int fd, const struct timespec& mtime) {
  const struct timespec times[2] = {{0, UTIME_OMIT}, mtime};
  int rc = fd >= 0 ? futimens(fd, times) : utimensat(mnt_, name_of(nodeid).c_str(), times, 0);
  return rc == 0 ? Status() : errno_status();
}

dev_t Store::dev() const {
  struct stat st {};
  return fstat(mnt_, &st) == 0 ? st.st_dev : 0;
}

uint64_t Store::used_blocks() const {
  struct statfs st {};
  if (fstatfs(mnt_, &st) != 0) return 0;
  return st.f_blocks >= st.f_bfree ? st.f_blocks - st.f_bfree : 0;
}

bool Store::resize(uint64_t blocks) {
  int fsfd = static_cast<int>(syscall(SYS_fspick, mnt_, "", kFspickCloexec | kFspickEmptyPath));
  if (fsfd < 0) return false;
  const std::string size = size_option(blocks);
  bool ok = fsconfig_string(fsfd, "size", size.c_str()) == 0 &&
            fsconfig_cmd(fsfd, kFsconfigCmdReconfigure) == 0;
  ::close(fsfd);
  if (ok) size_ = blocks;
  return ok;
}

void Store::set_limit(uint64_t max_bytes) {
  limit_.store(std::max<uint64_t>(max_bytes / kBlockSize, 1), std::memory_order_relaxed);
  std::lock_guard lk(mu_);
  // Below what is in use tmpfs refuses (EINVAL): stay at the use until pages are freed. A
  // write between the two calls can grow the use: try again with the new one.
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (resize(std::max(limit_blocks(), used_blocks()))) return;
  }
}

void Store::shrink() {
  std::lock_guard lk(mu_);
  if (size_ <= limit_blocks()) return;
  uint64_t want = std::max(limit_blocks(), used_blocks());
  if (want < size_) (void)resize(want);
}

bool Store::charge(uint64_t n) {
  if (n == 0) return true;
  std::lock_guard lk(mu_);
  if (fallocate(ballast_, 0, static_cast<off_t>(ballast_blocks_ * kBlockSize),
                static_cast<off_t>(n * kBlockSize)) != 0)
    return false;
  ballast_blocks_ += n;
  return true;
}

void Store::uncharge(uint64_t n) {
  {
    std::lock_guard lk(mu_);
    ballast_blocks_ -= std::min(n, ballast_blocks_);
    (void)ftruncate(ballast_, static_cast<off_t>(ballast_blocks_ * kBlockSize));
  }
  shrink();
}

}  // namespace efuse::fs::memory
