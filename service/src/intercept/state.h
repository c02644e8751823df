// libefuse_intercept.so, internal: the mounts efused published (common/intercept_abi.h),
// the descriptors the library handed out, path resolution and the counters. Everything here
// is usable before main, from several threads and from signal handlers: no allocation, no
// locks that can block, raw system calls for the library's own work (its exported names
// shadow libc's, so calling open() or close() here would call the library again).
#pragma once

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <atomic>

#include "common/intercept_abi.h"

namespace efuse::intercept {

// libc's own function behind an exported name (dlsym RTLD_NEXT), resolved on first use.
void* real_symbol(std::atomic<void*>* slot, const char* name);
#define EFUSE_REAL(name)                                                                   \
  ([]() {                                                                                  \
    static std::atomic<void*> slot_{nullptr};                                              \
    return reinterpret_cast<decltype(&::name)>(::efuse::intercept::real_symbol(&slot_, #name)); \
  }())

constexpr int kMaxMounts = 64;
constexpr int kMaxFds = 65536;  // descriptors above are never the library's own
constexpr int kHighFd = 512;    // the library's own descriptors live at or above this
constexpr int kMaxHoles = 8;    // mounts inside one published mount the library tells apart

struct Mount {
  std::atomic<int> state{0};  // 0 unused, 1 active, 2 dead (efused gone or withdrew it)
  const efuse_intercept_record* rec = nullptr;  // mapped read-only
  efuse_intercept_counters* cnt = nullptr;       // mapped read-write (may be null)
  // The futex word of efused's alive mutex (common/intercept_abi.h): efused runs while its
  // TID bits are set. Null when efused published none: then its pidfd tells.
  const uint32_t* alive = nullptr;
  std::atomic<int> pidfd{-1};  // efused's pidfd: readable once efused exited; -1: reopen
  std::atomic<uint64_t> pidfd_ino{0};  // its inode, to tell it from a reused number
  uint64_t generation = 0;
  int32_t pid = 0;
  uint32_t flags = 0;      // rec->flags when loaded
  bool serve = false;      // the library serves calls (else it only counts them)
  dev_t dev = 0;           // what the mount reports
  uint64_t mnt_id = 0;     // statx stx_mnt_id of the mount
  uint64_t root_ino = 0;   // the mount root's inode (STATX_ATTR_MOUNT_ROOT)
  uint64_t attributes_mask = 0;  // stx_attributes_mask the kernel reports for the mount
  char mp[EFUSE_INTERCEPT_PATH_MAX] = {};
  size_t mp_len = 0;
  char parent[EFUSE_INTERCEPT_PATH_MAX] = {};  // the mountpoint's parent directory
  bool parent_open = false;  // every directory above the mount searchable by all, no ACLs
  char src[EFUSE_INTERCEPT_PATH_MAX] = {};
  size_t src_len = 0;
  // The library opens files for writing and changes attributes itself, telling efused over
  // `sock` (EFUSE_IR_WRITES, not on a read-only mount; see mount_writes()).
  bool writes = false;
  // efused opens, with this process's credentials, files it cannot open itself
  // (EFUSE_IR_OPENS; hand_over() in calls.cpp).
  bool opens = false;
  // A memory mount (EFUSE_IR_NODES): opens for reading are served with the file's data
  // file, which efused opens for a descriptor of the file opened O_PATH through the mount
  // (node_open() in calls.cpp); every other call goes through the kernel. `data_dev`: the
  // data files' st_dev.
  bool nodes = false;
  uint64_t data_dev = 0;
  std::atomic<int> writable{0};  // mount_writes(): 0 not asked yet, 1 yes, 2 no
  // The backing directory, opened O_PATH by this process (mount_root()): -1 not yet, -2
  // cannot be (then paths are walked from / as before).
  std::atomic<int> root_fd{-1};
  std::atomic<uint64_t> src_dev{0};  // its st_dev, once opened
  char sock[EFUSE_INTERCEPT_PATH_MAX + 64] = {};
  // File systems mounted inside the mount, as this process's mount table shows them at
  // the last rescan (efused bumps the generation whenever its table changes): paths at or
  // under one are the kernel's, and while there is any, so are calls relative to directory
  // descriptors. `holes` < 0: too many to list (everything goes to the kernel). Written by
  // the scanning thread only, under `holes_seq` (odd while it writes).
  std::atomic<uint32_t> holes_seq{0};
  int holes = 0;
  char hole[kMaxHoles][EFUSE_INTERCEPT_PATH_MAX] = {};
};

// The descriptor table: per fd, 0 or (mount index + 1) | kind.
constexpr uint32_t kFdLibrary = 0x10000;  // a backing-file descriptor the library opened
constexpr uint32_t kFdKernel = 0x20000;   // opened through the mount (counted as kernel)
// Known not to be in a published mount (a directory descriptor calls were made relative
// to): its calls go to libc without another look. Forgotten like any entry.
constexpr uint32_t kFdOther = 0x40000;
// With kFdLibrary: open for writing (efused was told, EFUSE_IREQ_WRITING). Such a
// descriptor works only while the efused that was told runs (writes_alive).
constexpr uint32_t kFdWritable = 0x80000;
uint32_t fd_entry(int fd);
// Also forgets the number's backing directory (fd_unbind): a new entry is a new descriptor.
void fd_put(int fd, uint32_t entry);
void fd_clear(int fd);
inline int fd_mount(uint32_t entry) { return static_cast<int>(entry & 0xffff) - 1; }
// The backing file a library descriptor was opened on: a descriptor closed behind the
// library's back (fclose of an fdopen'ed stream, a raw close) and its number reused is
// told apart by it, so it is never taken for the mount's (no rewritten st_dev, no ENOTCONN).
void fd_identity(int fd, dev_t dev, ino_t ino);
bool fd_same(int fd, dev_t dev, ino_t ino);
// dup and friends: `to` gets `from`'s entry and identity (and a copy of its companion).
void fd_copy(int from, int to);

// A memory mount's library descriptor is the file's data file; beside it the library keeps
// the file opened O_PATH through the mount, its companion (at a high number, close-on-exec
// exactly when the descriptor is, so both cross an exec together and are paired again by
// adopt_inherited), through which the kernel answers what the data file cannot say as the
// mount would: fstat, statx, fstatfs, xattrs, attribute changes. Set after fd_put (which,
// like fd_clear, closes the previous one). -1: none.
void fd_set_companion(int fd, int companion);
int fd_companion(int fd);

// A directory descriptor opened through the mount (kFdKernel) and the backing directory it
// stands for: a descriptor of the same directory (checked by inode when bound; opened for
// reading where the caller may, else O_PATH) that the library keeps at a high number,
// close-on-exec, so calls relative to the kernel descriptor (fstatat(dirfd, name), what
// find and fts do for every entry) are answered relative to the backing one, with no path
// to rebuild and no symlink to fear above it. Both name the same directory whatever is
// renamed later, and the kernel checks no directory above a dirfd either. Bound on first
// use (or when opened relative to a bound one); -1 when it cannot be (not a directory,
// renamed or replaced while binding, a symlink on the way): then the kernel answers.
int fd_backing_dir(int fd, int mount_index);
// `fd` was just opened through the kernel as `path` relative to a directory descriptor
// bound to `parent`: binds it the cheap way (no path to read back), when it is a directory.
void fd_bind_child(int fd, int mount_index, int parent, const char* path);
// Forgets `fd`'s backing directory (closing the library's descriptor).
void fd_unbind(int fd);
// `fd`'s backing directory descriptor when bound and open for reading (else -1): what a
// directory stream on `fd` reads its entries from. Its file position is the stream's.
int fd_backing_stream(int fd);

Mount* mount_at(int index);
// True when `m` may be served right now: published live, same generation, efused running.
// A dead mount is marked so and a rescan is requested.
bool mount_alive(Mount* m);
// True while descriptors the library opened on `m` may be used: the mount is published, or
// was withdrawn while it goes on (EFUSE_IR_FILES_GO_ON), and efused runs.
bool files_alive(Mount* m);
// m's backing directory opened O_PATH (close-on-exec, at a high number) with this process's
// credentials, once; -2 when it cannot be. Paths under the mount are resolved beneath it,
// so each call walks the components under the mount only, not the backing directory's
// path from / (the kernel path checks no directory above the backing one either, and the
// mountpoint's parents are checked as before). It follows the directory efused serves
// whatever is renamed above it later. Forgotten (and opened again when needed) when the
// program closes or replaces its number (internal_fd_gone).
int mount_root(Mount* m);
// The library may open files of `m` for writing: efused takes them (Mount::writes) and this
// process does not see the mount read-only (asked once).
bool mount_writes(Mount* m);
// For a descriptor the library opened for writing: the mount is published (or withdrawn
// while it goes on) by the efused that was told of the open, and that efused runs. Another
// efused that took the mount over knows nothing of the library's writers.
bool writes_alive(Mount* m);
// Tells m's efused about backing file `fd` (EFUSE_IREQ_WRITING or _CHANGED) and waits for
// its answer: 0, or -1 with errno (efused's refusal; ENOTCONN when it cannot be reached or
// went away meanwhile). Never hangs on an efused that is gone: its end of the socket closes.
int ask_efused(Mount* m, uint32_t op, int fd);
// Asks m's efused to open the regular file `rel` (relative to the mount's root) with
// `flags` (EFUSE_IOPEN_FLAGS) and this thread's credentials (EFUSE_IREQ_OPEN): the
// descriptor (close-on-exec if `cloexec`), or -1 with efused's errno (ENOTCONN when it
// cannot be reached).
int ask_efused_open(Mount* m, const char* rel, int flags, bool cloexec);
// Asks m's efused (EFUSE_IREQ_OPEN_NODE) to open for reading, with `flags`, the data file of
// the file `opath` names (opened O_PATH through the mount): the descriptor (close-on-exec if
// `cloexec`), or -1 with efused's errno (ENOTCONN when it cannot be reached).
int ask_efused_node(Mount* m, int opath, int flags, bool cloexec);
// Re-reads the published mounts when efused changed them (cheap when nothing changed).
void refresh();
// Any mount published and active (checked before resolving paths).
bool any_active();
// `path` (absolute, normalized) is at or under a file system mounted inside `m`, or
// (path null) `m` has any such file system; true as well while the list is being rewritten.
bool in_hole(const Mount* m, const char* path, size_t len);

void count(Mount* m, int op, bool by_library, uint64_t n = 1);

// Path resolution. `out` receives what the caller meant: the mount and the path inside
// it ("" for its root, else "/a/b", trailing '/' kept), or nothing (nullptr) when the path
// is not under a published mount, or cannot be judged lexically ("..", too long): then
// the kernel decides.
struct Resolved {
  Mount* mount = nullptr;
  int index = -1;
  char backing[2 * EFUSE_INTERCEPT_PATH_MAX + 8];  // source + rest
  bool is_root = false;
  // One name right under `at_fd` (the mount's backing root, a bound directory or the bound
  // working directory), resolved beneath that descriptor: only the name itself can be a
  // symlink, so one lstat and one openat(O_NOFOLLOW) resolve it. Never a name relative to a
  // directory known by path only: a path the kernel gave (getcwd, /proc/self/fd) says where
  // the kernel's directory was when it was last looked up through the mount, not what that
  // path leads to in the backing tree now (a directory on it renamed or replaced there,
  // by a symlink say, before efused's watcher told the kernel).
  bool single_name = false;
  // What to resolve in the backing tree: `at_path` relative to `at_fd`. Either AT_FDCWD
  // and `backing`, or a bound directory (fd_backing_dir, or the working directory's:
  // cwd_binding in state.cpp) and the caller's relative path, resolved beneath it.
  int at_fd = -100;  // AT_FDCWD
  const char* at_path = nullptr;
  bool bound = false;
  // at_fd is the working directory's binding, held (not closed or replaced) until this
  // is destroyed: its slot, or -1.
  int cwd_slot = -1;
  // at_fd is the mount's backing root (mount_root()) and at_path the rest of the path:
  // resolved beneath it, as beneath a bound directory.
  bool beneath = false;
  // Under the mount, but the kernel answers (counted as such): a call relative to a
  // directory descriptor that could not be bound, or whose path holds "..".
  bool decline = false;
  // This process cannot open the mount's backing directory (mount_root() failed: a
  // directory above it is closed to it, or it is not in its mount namespace): stats go to
  // the kernel, opens to efused (hand_over).
  bool no_root = false;
  // The path below the mountpoint, without a leading '/' ("." for the root); null for a
  // call relative to a directory descriptor or to a working directory below the mount's
  // root (those are only ever answered relative to the directory itself).
  const char* rest = nullptr;
  Resolved() = default;
  Resolved(const Resolved&) = delete;
  Resolved& operator=(const Resolved&) = delete;
  ~Resolved();
};
bool resolve(int dirfd, const char* path, Resolved* out);

// The per-thread guard: calls made while the library is already working in this thread
// (from a signal handler, or libc calling back) go to libc untouched.
struct Guard {
  Guard();
  ~Guard();
  bool entered;  // false: nested, do not intercept
};

// Appends the decimal digits of `v` at `out`; returns the end (not NUL-terminated).
char* append_uint(char* out, unsigned v);
char* append_u64(char* out, uint64_t v);

// Raw system calls: -1 and errno on failure, as syscall(2), inline where the architecture
// is known (libc's variadic syscall() was 4 % of a served fstatat).
long sys_slow(long nr, long a, long b, long c, long d, long e, long f);
inline long sys(long nr, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0) {
#if defined(__x86_64__)
  long ret;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  if (ret < 0 && ret > -4096) {
    errno = static_cast<int>(-ret);
    return -1;
  }
  return ret;
#else
  return sys_slow(nr, a, b, c, d, e, f);
#endif
}

// Rewrites what a backing file reports to what the mount reports.
void rewrite_stat(const Mount* m, struct stat* st);
// Adopts descriptors inherited across exec (called from the constructor).
void adopt_inherited();
// A descriptor the library keeps for itself was closed or replaced by the program.
void internal_fd_gone(int fd);
void internal_fds_gone(unsigned first, unsigned last);

}  // namespace efuse::intercept
