#include "intercept/state.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <dirent.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

namespace efuse::intercept {
namespace {

std::atomic<uint32_t> g_fds[kMaxFds];
std::atomic<uint64_t> g_fd_dev[kMaxFds];
std::atomic<uint64_t> g_fd_ino[kMaxFds];
// fd_backing_dir: per program descriptor, 0 unbound, the library's descriptor + 1, or -1
// (cannot be bound); per library descriptor, its program descriptor + 1.
std::atomic<int32_t> g_fd_bound[kMaxFds];
std::atomic<int32_t> g_bound_owner[kMaxFds];
std::atomic<bool> g_bound_readable[kMaxFds];  // per library descriptor: opened O_RDONLY
// fd_set_companion: per program descriptor, 0 or its companion + 1; per companion, its
// program descriptor + 1.
std::atomic<int32_t> g_fd_comp[kMaxFds];
std::atomic<int32_t> g_comp_owner[kMaxFds];
Mount g_mounts[kMaxMounts];
std::atomic<int> g_mount_count{0};
std::atomic<int> g_active{0};
std::atomic<const uint64_t*> g_gen{nullptr};
std::atomic<uint64_t> g_gen_seen{~0ull};
std::atomic<bool> g_rescan{true};
std::atomic<bool> g_scanning{false};
std::atomic<int64_t> g_next_probe_ns{0};
thread_local int t_depth __attribute__((tls_model("initial-exec"))) = 0;
thread_local char t_bind[2 * EFUSE_INTERCEPT_PATH_MAX + 8] __attribute__((tls_model("initial-exec")));

// Only the scanning thread (g_scanning held) uses these.
char g_dir[EFUSE_INTERCEPT_PATH_MAX];
alignas(8) char g_dents[8192];
char g_table[16384 + EFUSE_INTERCEPT_PATH_MAX * 4];  // /proc/self/mountinfo, a chunk at a time
char g_point[EFUSE_INTERCEPT_PATH_MAX];
// No member initializers: zero-initialized in .bss with no dynamic initializer, which
// would touch one page per entry of g_new_holes (64 page faults) in every process at load.
struct HoleList {
  int count;
  char path[kMaxHoles][EFUSE_INTERCEPT_PATH_MAX];
};
HoleList g_new_holes[kMaxMounts];


int64_t now_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void close_fd(int fd) { sys(SYS_close, fd); }

const char* intercept_dir() {
  if (g_dir[0] == '\0') {
    const char* env = getenv("EFUSE_INTERCEPT_DIR");
    const char* d = env != nullptr && env[0] == '/' ? env : EFUSE_INTERCEPT_DEFAULT_DIR;
    size_t n = strlen(d);
    if (n >= sizeof g_dir - 32) d = EFUSE_INTERCEPT_DEFAULT_DIR, n = strlen(d);
    memcpy(g_dir, d, n + 1);
  }
  return g_dir;
}

// A file efused wrote: owned by root or by us, not writable by others.
bool trusted(int fd, size_t size) {
  struct stat st;
  if (sys(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0) return false;
  return S_ISREG(st.st_mode) && static_cast<size_t>(st.st_size) == size &&
         (st.st_uid == 0 || st.st_uid == geteuid()) && (st.st_mode & 022) == 0;
}

void* map_at(int dirfd, const char* name, int prot, size_t size, bool check_owner) {
  int fd = static_cast<int>(sys(SYS_openat, dirfd, reinterpret_cast<long>(name),
                                ((prot & PROT_WRITE) ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW));
  if (fd < 0) return nullptr;
  struct stat st;
  bool ok = check_owner ? trusted(fd, size)
                        : sys(SYS_fstat, fd, reinterpret_cast<long>(&st)) == 0 &&
                              S_ISREG(st.st_mode) && static_cast<size_t>(st.st_size) == size;
  void* p = ok ? mmap(nullptr, size, prot, MAP_SHARED, fd, 0) : MAP_FAILED;
  close_fd(fd);
  return p == MAP_FAILED ? nullptr : p;
}

void map_generation() {
  char path[EFUSE_INTERCEPT_PATH_MAX + 16];
  const char* d = intercept_dir();
  size_t n = strlen(d);
  memcpy(path, d, n);
  memcpy(path + n, "/generation", 12);
  void* p = map_at(AT_FDCWD, path, PROT_READ, 4096, true);
  if (p != nullptr) g_gen.store(static_cast<const uint64_t*>(p), std::memory_order_release);
}

// Calls f(dirfd, name) for every entry of `dir`, reading with getdents64 into buf.
template <typename F>
void for_each_name(const char* dir, char* buf, size_t size, F&& f) {
  int dirfd = static_cast<int>(sys(SYS_openat, AT_FDCWD, reinterpret_cast<long>(dir),
                                   O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dirfd < 0) return;
  for (;;) {
    long n = sys(SYS_getdents64, dirfd, reinterpret_cast<long>(buf), size);
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      auto* d = reinterpret_cast<struct dirent64*>(buf + off);
      off += d->d_reclen;
      f(dirfd, d->d_name);
    }
  }
  close_fd(dirfd);
}

uint64_t start_time_of(int pid) {
  char path[64] = "/proc/";
  memcpy(append_uint(path + 6, static_cast<unsigned>(pid)), "/stat", 6);
  int fd = static_cast<int>(sys(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path), O_RDONLY | O_CLOEXEC));
  if (fd < 0) return 0;
  char buf[1024];
  long r = sys(SYS_read, fd, reinterpret_cast<long>(buf), sizeof buf - 1);
  close_fd(fd);
  if (r <= 0) return 0;
  buf[r] = '\0';
  const char* p = strrchr(buf, ')');
  if (p == nullptr) return 0;
  int field = 2;
  for (; *p != '\0' && field < 22; ++p)
    if (*p == ' ') ++field;
  return strtoull(p, nullptr, 10);
}

// efused's pidfd, checked against PID reuse, at a high number and close-on-exec; -1 when
// efused is gone (or another process has its PID).
int open_pidfd(int32_t pid, uint64_t start, uint64_t* ino) {
  int pidfd = static_cast<int>(sys(SYS_pidfd_open, pid, 0));
  if (pidfd >= 0 && (start == 0 || start_time_of(pid) != start)) {
    close_fd(pidfd);
    return -1;
  }
  if (pidfd >= 0 && pidfd < kHighFd) {
    int high = static_cast<int>(sys(SYS_fcntl, pidfd, F_DUPFD_CLOEXEC, kHighFd));
    close_fd(pidfd);
    pidfd = high;
  }
  struct stat st;
  if (pidfd >= 0) *ino = sys(SYS_fstat, pidfd, reinterpret_cast<long>(&st)) == 0 ? st.st_ino : 0;
  return pidfd;
}

// Every directory from / down to `dir` is a real directory that everyone may search and
// that carries no access ACL (which could refuse one user what "other" grants).
bool searchable_by_all(const char* dir) {
  char part[EFUSE_INTERCEPT_PATH_MAX];
  size_t n = strlen(dir);
  if (n >= sizeof part) return false;
  for (size_t i = 1; i <= n; ++i) {
    if (i != n && dir[i] != '/') continue;
    memcpy(part, dir, i);
    part[i] = '\0';
    struct stat st;
    if (sys(SYS_newfstatat, AT_FDCWD, reinterpret_cast<long>(part), reinterpret_cast<long>(&st),
            AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISDIR(st.st_mode) || (st.st_mode & 0001) == 0)
      return false;
    long r = sys(SYS_lgetxattr, reinterpret_cast<long>(part),
                 reinterpret_cast<long>("system.posix_acl_access"), 0, 0);
    if (r >= 0 || (errno != ENODATA && errno != EOPNOTSUPP)) return false;
  }
  return true;
}

void mark_dead(Mount* m) {
  int one = 1;
  if (m->state.compare_exchange_strong(one, 2)) g_active.fetch_sub(1);
  g_rescan.store(true);
}

bool same_record(const Mount& m, const efuse_intercept_record* r) {
  return m.pid == r->pid && m.generation == r->generation &&
         strncmp(m.mp, r->mountpoint, sizeof m.mp) == 0;
}

// This user's counters for the record `name` ("m-<hash>.rec"): counts/m-<hash>-<pid>-
// <generation>.<euid>, created if missing (common/intercept_abi.h). Null when it cannot
// be had as a file of this user's that no one else may write: the calls go uncounted.
efuse_intercept_counters* open_counters(int dirfd, const char* name, const efuse_intercept_record* rec) {
  char path[128] = EFUSE_INTERCEPT_COUNTS_DIR "/";
  size_t off = strlen(path);
  size_t nlen = strlen(name);
  if (nlen < 5 || nlen + off + 64 > sizeof path) return nullptr;
  memcpy(path + off, name, nlen - 4);
  char* e = path + off + nlen - 4;
  *e++ = '-';
  e = append_uint(e, static_cast<unsigned>(rec->pid));
  *e++ = '-';
  e = append_u64(e, rec->generation);
  *e++ = '.';
  unsigned uid = static_cast<unsigned>(geteuid());
  e = append_uint(e, uid);
  *e = '\0';
  constexpr size_t kSize = sizeof(efuse_intercept_counters);
  // Made by this user's first process; every later one opens it (one call, not two).
  int fd = static_cast<int>(sys(SYS_openat, dirfd, reinterpret_cast<long>(path),
                                O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (fd < 0 && errno == ENOENT)
    fd = static_cast<int>(sys(SYS_openat, dirfd, reinterpret_cast<long>(path),
                              O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (fd < 0 && errno == EEXIST)  // another process made it meanwhile
    fd = static_cast<int>(sys(SYS_openat, dirfd, reinterpret_cast<long>(path),
                              O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (fd < 0) return nullptr;
  struct stat st;
  bool ok = sys(SYS_fstat, fd, reinterpret_cast<long>(&st)) == 0 && S_ISREG(st.st_mode) &&
            st.st_uid == uid && (st.st_mode & 022) == 0 &&
            (static_cast<size_t>(st.st_size) == kSize ||
             (st.st_size == 0 && sys(SYS_ftruncate, fd, kSize) == 0));
  void* p = ok ? mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  close_fd(fd);
  if (p == MAP_FAILED) return nullptr;
  auto* cnt = static_cast<efuse_intercept_counters*>(p);
  if (__atomic_load_n(&cnt->magic, __ATOMIC_ACQUIRE) == 0) {  // new (two makers write the same)
    cnt->version = EFUSE_INTERCEPT_VERSION;
    cnt->size = kSize;
    __atomic_store_n(&cnt->magic, EFUSE_INTERCEPT_MAGIC, __ATOMIC_RELEASE);
  }
  if (cnt->magic != EFUSE_INTERCEPT_MAGIC || cnt->version != EFUSE_INTERCEPT_VERSION ||
      cnt->size != kSize) {
    munmap(p, kSize);
    return nullptr;
  }
  return cnt;
}

// Loads one published record into a new slot (or confirms the slot it is in).
void load_record(int dirfd, const char* name, bool* seen) {
  auto* rec = static_cast<const efuse_intercept_record*>(
      map_at(dirfd, name, PROT_READ, sizeof(efuse_intercept_record), true));
  if (rec == nullptr) return;
  uint32_t flags = __atomic_load_n(&rec->flags, __ATOMIC_ACQUIRE);
  bool usable = rec->magic == EFUSE_INTERCEPT_MAGIC && rec->version == EFUSE_INTERCEPT_VERSION &&
                rec->size == sizeof(efuse_intercept_record) && (flags & EFUSE_IR_LIVE) &&
                rec->pid != getpid() && rec->mountpoint[0] == '/' &&
                memchr(rec->mountpoint, '\0', sizeof rec->mountpoint) != nullptr &&
                memchr(rec->source, '\0', sizeof rec->source) != nullptr;
  int count = g_mount_count.load(std::memory_order_acquire);
  for (int i = 0; usable && i < count; ++i) {
    if (g_mounts[i].state.load() == 1 && same_record(g_mounts[i], rec)) {
      seen[i] = true;
      usable = false;  // already loaded
    }
  }
  if (!usable || count >= kMaxMounts) {
    munmap(const_cast<efuse_intercept_record*>(rec), sizeof *rec);
    return;
  }
  Mount& m = g_mounts[count];
  // efused's alive mutex: once mapped, liveness costs a load instead of a poll().
  char aname[64] = "alive-";
  char* e = append_uint(aname + 6, static_cast<unsigned>(rec->pid));
  *e++ = '-';
  e = append_u64(e, rec->pid_start);
  *e = '\0';
  auto* alive = static_cast<const uint32_t*>(
      map_at(dirfd, aname, PROT_READ, EFUSE_INTERCEPT_ALIVE_SIZE, true));
  if (alive != nullptr && (__atomic_load_n(alive, __ATOMIC_ACQUIRE) & EFUSE_INTERCEPT_ALIVE_TID_MASK) == 0) {
    munmap(const_cast<uint32_t*>(alive), EFUSE_INTERCEPT_ALIVE_SIZE);  // not held: ask the pidfd
    alive = nullptr;
  }
  // Without one, efused's pidfd (checked against PID reuse) tells whether it runs.
  uint64_t pidfd_ino = 0;
  int pidfd = alive != nullptr ? -1 : open_pidfd(rec->pid, rec->pid_start, &pidfd_ino);
  // The mount as this process sees it: the same device (not another namespace's view, not
  // covered by another mount), its mount id and attribute mask for statx.
  struct statx sx;
  bool same_mount =
      (pidfd >= 0 || alive != nullptr) &&
      sys(SYS_statx, AT_FDCWD, reinterpret_cast<long>(rec->mountpoint),
          AT_NO_AUTOMOUNT | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_MNT_ID,
          reinterpret_cast<long>(&sx)) == 0 &&
      sx.stx_dev_major == rec->dev_major && sx.stx_dev_minor == rec->dev_minor &&
      (sx.stx_mask & STATX_MNT_ID);
  if (!same_mount) {
    if (pidfd >= 0) close_fd(pidfd);
    if (alive != nullptr) munmap(const_cast<uint32_t*>(alive), EFUSE_INTERCEPT_ALIVE_SIZE);
    munmap(const_cast<efuse_intercept_record*>(rec), sizeof *rec);
    return;
  }
  m.rec = rec;
  m.alive = alive;
  m.pid = rec->pid;
  m.generation = rec->generation;
  m.flags = flags;
  m.dev = makedev(rec->dev_major, rec->dev_minor);
  m.mnt_id = sx.stx_mnt_id;
  m.root_ino = sx.stx_ino;
  m.attributes_mask = sx.stx_attributes_mask;
  m.mp_len = strlen(rec->mountpoint);
  memcpy(m.mp, rec->mountpoint, m.mp_len + 1);
  m.src_len = strlen(rec->source);
  memcpy(m.src, rec->source, m.src_len + 1);
  const char* slash = strrchr(m.mp, '/');
  size_t plen = slash == m.mp ? 1 : static_cast<size_t>(slash - m.mp);
  memcpy(m.parent, m.mp, plen);
  m.parent[plen] = '\0';
  m.parent_open = searchable_by_all(m.parent);
  // allow_other: false lets only efused's user through the kernel; others get EACCES there.
  m.serve = (flags & EFUSE_IR_SERVE) && m.src_len > 0 &&
            ((flags & EFUSE_IR_ALLOW_OTHER) || geteuid() == rec->uid);
  // Writes: efused's socket is m-<hash>-<pid>.sock beside the record (whether this process
  // sees the mount writable is asked at the first open for writing: mount_writes()).
  size_t nlen = strlen(name);
  const char* dir = intercept_dir();
  size_t dlen = strlen(dir);
  const bool sock_fits = dlen + nlen + 32 < sizeof m.sock;
  m.writes = m.serve && (flags & EFUSE_IR_WRITES) && !(flags & EFUSE_IR_READ_ONLY) && sock_fits;
  m.opens = m.serve && (flags & EFUSE_IR_OPENS) && sock_fits;
  m.nodes = !(flags & EFUSE_IR_SERVE) && (flags & EFUSE_IR_NODES) && rec->data_dev != 0 &&
            ((flags & EFUSE_IR_ALLOW_OTHER) || geteuid() == rec->uid) && sock_fits;
  m.data_dev = m.nodes ? rec->data_dev : 0;
  if (m.writes || m.opens || m.nodes) {
    memcpy(m.sock, dir, dlen);
    m.sock[dlen] = '/';
    memcpy(m.sock + dlen + 1, name, nlen - 4);  // without ".rec"
    char* se = m.sock + dlen + 1 + nlen - 4;
    *se++ = '-';
    se = append_uint(se, static_cast<unsigned>(rec->pid));
    memcpy(se, ".sock", 6);
  }
  m.cnt = open_counters(dirfd, name, rec);
  m.pidfd_ino.store(pidfd_ino);
  m.pidfd.store(pidfd);
  m.state.store(1, std::memory_order_release);
  seen[count] = true;
  g_active.fetch_add(1);
  g_mount_count.store(count + 1, std::memory_order_release);
}

// One mount table line's mount point (field 5, octal escapes undone) into g_point; false
// when the line is malformed or the point too long.
bool mount_point_of(const char* line, const char* end) {
  const char* f = line;
  for (int field = 1; field < 5; ++field) {
    while (f < end && *f != ' ') ++f;
    if (f >= end) return false;
    ++f;
  }
  size_t w = 0;
  for (; f < end && *f != ' '; ++f) {
    char c = *f;
    if (c == '\\' && end - f >= 4 && f[1] >= '0' && f[1] <= '3') {
      c = static_cast<char>(((f[1] - '0') << 6) | ((f[2] - '0') << 3) | (f[3] - '0'));
      f += 3;
    }
    if (w + 1 >= sizeof g_point) return false;
    g_point[w++] = c;
  }
  g_point[w] = '\0';
  return w > 0;
}

// efused's copy of its mount table (mounts-<pid>-<start>, common/intercept_abi.h),
// positioned after its header line, when it was made with this process's root; else -1.
// Whether it is this process's mount namespace too is told by the mount ids in it
// (read_mount_table).
int open_efused_table() {
  int count = g_mount_count.load(std::memory_order_acquire);
  const Mount* m = nullptr;
  for (int i = 0; i < count && m == nullptr; ++i)
    if (g_mounts[i].state.load() == 1) m = &g_mounts[i];
  struct stat root;
  if (m == nullptr ||
      sys(SYS_newfstatat, AT_FDCWD, reinterpret_cast<long>("/"), reinterpret_cast<long>(&root), 0) != 0)
    return -1;
  char path[EFUSE_INTERCEPT_PATH_MAX + 64];
  const char* d = intercept_dir();
  size_t n = strlen(d);
  memcpy(path, d, n);
  char* e = path + n;
  memcpy(e, "/mounts-", 8);
  e = append_uint(e + 8, static_cast<unsigned>(m->pid));
  *e++ = '-';
  e = append_u64(e, m->rec->pid_start);
  *e = '\0';
  int fd = static_cast<int>(sys(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path),
                                O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (fd < 0) return -1;
  // "efuse-mounts <root st_dev> <root st_ino> <mnt ns inode>\n", then the table.
  char want[64] = "efuse-mounts ";
  char* w = append_u64(want + 13, root.st_dev);
  *w++ = ' ';
  w = append_u64(w, root.st_ino);
  *w++ = ' ';
  size_t wl = static_cast<size_t>(w - want);
  char head[96];
  struct stat st;
  long got = sys(SYS_fstat, fd, reinterpret_cast<long>(&st)) == 0 && S_ISREG(st.st_mode) &&
                     (st.st_uid == 0 || st.st_uid == geteuid()) && (st.st_mode & 022) == 0
                 ? sys(SYS_read, fd, reinterpret_cast<long>(head), sizeof head)
                 : -1;
  const char* nl = got > 0 ? static_cast<const char*>(memchr(head, '\n', static_cast<size_t>(got))) : nullptr;
  if (nl == nullptr || static_cast<size_t>(got) < wl || memcmp(head, want, wl) != 0 ||
      sys(SYS_lseek, fd, nl + 1 - head, SEEK_SET) < 0) {
    close_fd(fd);
    return -1;
  }
  return fd;
}

// Reads a mount table from `fd` (closed here) into g_new_holes: per active mount, the file
// systems mounted strictly inside it. False when it could not be read whole, or (`check_ids`)
// when a mount's own line does not carry the mount id this process sees there: then the
// table is another namespace's.
bool read_mount_table(int fd, bool check_ids) {
  int count = g_mount_count.load(std::memory_order_acquire);
  uint64_t top_id[kMaxMounts] = {};
  for (int i = 0; i < count; ++i) g_new_holes[i].count = 0;
  bool complete = fd >= 0;
  size_t have = 0;
  const size_t chunk = 16384;
  while (fd >= 0) {
    long n = sys(SYS_read, fd, reinterpret_cast<long>(g_table + have), chunk);
    if (n < 0) complete = false;
    if (n <= 0) break;
    have += static_cast<size_t>(n);
    char* start = g_table;
    for (char* nl; (nl = static_cast<char*>(memchr(start, '\n', have - (start - g_table)))) != nullptr;
         start = nl + 1) {
      if (!mount_point_of(start, nl)) continue;
      size_t plen = strlen(g_point);
      for (int i = 0; i < count; ++i) {
        Mount& m = g_mounts[i];
        if (m.state.load() != 1) continue;
        if (plen == m.mp_len && memcmp(g_point, m.mp, plen) == 0)
          top_id[i] = strtoull(start, nullptr, 10);  // the last one is what paths reach
        if (plen <= m.mp_len || memcmp(g_point, m.mp, m.mp_len) != 0 ||
            (g_point[m.mp_len] != '/' && m.mp_len != 1))
          continue;
        HoleList& h = g_new_holes[i];
        if (h.count >= 0 && h.count < kMaxHoles) memcpy(h.path[h.count++], g_point, plen + 1);
        else h.count = -1;
      }
    }
    have -= static_cast<size_t>(start - g_table);
    memmove(g_table, start, have);
    if (have > sizeof g_table - chunk) {  // a line longer than the buffer: give up on it
      complete = false;
      break;
    }
  }
  if (fd >= 0) close_fd(fd);
  for (int i = 0; check_ids && complete && i < count; ++i)
    if (g_mounts[i].state.load() == 1 && top_id[i] != g_mounts[i].mnt_id) complete = false;
  return complete;
}

// Reads this process's mount table and records, per active mount, the file systems
// mounted strictly inside it (published to readers under holes_seq). efused's copy serves
// when it is this namespace's (reading /proc/self/mountinfo cost each process ~40 us).
void update_holes() {
  int count = g_mount_count.load(std::memory_order_acquire);
  bool complete = read_mount_table(open_efused_table(), true);
  if (!complete)
    complete = read_mount_table(static_cast<int>(sys(SYS_openat, AT_FDCWD,
                                                     reinterpret_cast<long>("/proc/self/mountinfo"),
                                                     O_RDONLY | O_CLOEXEC)),
                                false);
  for (int i = 0; i < count; ++i) {
    Mount& m = g_mounts[i];
    HoleList& h = g_new_holes[i];
    int want = complete ? h.count : -1;  // an unreadable table: nothing under the mount is served
    bool same = m.holes == want;
    for (int k = 0; same && k < want; ++k) same = strcmp(m.hole[k], h.path[k]) == 0;
    if (same) continue;
    m.holes_seq.fetch_add(1, std::memory_order_acq_rel);  // odd: being written
    m.holes = want;
    for (int k = 0; k < want; ++k) memcpy(m.hole[k], h.path[k], strlen(h.path[k]) + 1);
    m.holes_seq.fetch_add(1, std::memory_order_release);
  }
}

void scan() {
  bool seen[kMaxMounts] = {};
  for_each_name(intercept_dir(), g_dents, sizeof g_dents, [&](int dirfd, const char* name) {
    size_t len = strlen(name);
    if (len > 6 && memcmp(name, "m-", 2) == 0 && memcmp(name + len - 4, ".rec", 4) == 0)
      load_record(dirfd, name, seen);
  });
  int count = g_mount_count.load(std::memory_order_acquire);
  for (int i = 0; i < count; ++i)
    if (!seen[i] && g_mounts[i].state.load() == 1) mark_dead(&g_mounts[i]);
  update_holes();
  g_rescan.store(false);  // mark_dead above asked again; this scan already saw everything
}

}  // namespace

void* real_symbol(std::atomic<void*>* slot, const char* name) {
  void* p = slot->load(std::memory_order_acquire);
  if (p == nullptr) {
    p = dlsym(RTLD_NEXT, name);
    slot->store(p, std::memory_order_release);
  }
  return p;
}

long sys_slow(long nr, long a, long b, long c, long d, long e, long f) {
  return syscall(nr, a, b, c, d, e, f);
}

uint32_t fd_entry(int fd) {
  return fd >= 0 && fd < kMaxFds ? g_fds[fd].load(std::memory_order_acquire) : 0;
}
namespace {
// Forgets `fd`'s companion, closing it.
void drop_companion(int fd) {
  int32_t c = g_fd_comp[fd].exchange(0, std::memory_order_acq_rel);
  if (c <= 0) return;
  int32_t owner = fd + 1;
  if (g_comp_owner[c - 1].compare_exchange_strong(owner, 0)) {
    int saved = errno;
    close_fd(c - 1);
    errno = saved;
  }
}
}  // namespace

void fd_put(int fd, uint32_t entry) {
  if (fd < 0 || fd >= kMaxFds) return;
  if (g_fd_bound[fd].load(std::memory_order_relaxed) != 0) fd_unbind(fd);
  if (g_fd_comp[fd].load(std::memory_order_relaxed) != 0) drop_companion(fd);
  g_fds[fd].store(entry, std::memory_order_release);
}

void fd_set_companion(int fd, int companion) {
  if (fd < 0 || fd >= kMaxFds || companion < 0 || companion >= kMaxFds) return;
  g_comp_owner[companion].store(fd + 1, std::memory_order_release);
  int32_t expected = 0;
  if (!g_fd_comp[fd].compare_exchange_strong(expected, companion + 1)) {
    g_comp_owner[companion].store(0);
    close_fd(companion);
  }
}

int fd_companion(int fd) {
  int32_t c = fd >= 0 && fd < kMaxFds ? g_fd_comp[fd].load(std::memory_order_acquire) : 0;
  return c - 1;
}

void fd_unbind(int fd) {
  if (fd < 0 || fd >= kMaxFds) return;
  int32_t b = g_fd_bound[fd].exchange(0, std::memory_order_acq_rel);
  if (b <= 0) return;
  int hidden = b - 1;
  int32_t owner = fd + 1;
  if (g_bound_owner[hidden].compare_exchange_strong(owner, 0)) {
    int saved = errno;
    close_fd(hidden);
    errno = saved;
  }
}

namespace {
// The backing directory `path` (relative to `dirfd`), opened without following any symlink:
// for reading where the caller may (a directory stream on it reads its entries from this
// descriptor), else O_PATH (enough for lookups, which check search permission themselves).
long open_backing_dir(int dirfd, const char* path, uint64_t resolve, bool* readable) {
  struct open_how how = {};
  how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
  how.resolve = RESOLVE_NO_SYMLINKS | resolve;
  long bfd = sys(SYS_openat2, dirfd, reinterpret_cast<long>(path), reinterpret_cast<long>(&how),
                 sizeof how);
  *readable = bfd >= 0;
  if (bfd < 0 && errno == EACCES) {
    how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
    bfd = sys(SYS_openat2, dirfd, reinterpret_cast<long>(path), reinterpret_cast<long>(&how),
              sizeof how);
  }
  return bfd;
}

// Makes `bfd` (closed here) `fd`'s binding if it is the same directory (not renamed or
// replaced between the kernel's open and this one): a copy at a high number. Returns the
// binding, or -1 (and `fd` is marked as not to be bound).
int keep_binding(int fd, const Mount* m, long bfd, bool readable) {
  int hidden = -1;
  struct stat kst, bst;
  if (bfd >= 0 && sys(SYS_fstat, fd, reinterpret_cast<long>(&kst)) == 0 &&
      sys(SYS_fstat, bfd, reinterpret_cast<long>(&bst)) == 0 && S_ISDIR(kst.st_mode) &&
      S_ISDIR(bst.st_mode) && kst.st_ino == bst.st_ino && kst.st_dev == m->dev)
    hidden = static_cast<int>(sys(SYS_fcntl, bfd, F_DUPFD_CLOEXEC, kHighFd));
  if (bfd >= 0) close_fd(static_cast<int>(bfd));
  if (hidden >= kMaxFds) {
    close_fd(hidden);
    hidden = -1;
  }
  int32_t expected = 0;
  if (hidden < 0) {
    g_fd_bound[fd].compare_exchange_strong(expected, -1);
    return -1;
  }
  g_bound_readable[hidden].store(readable, std::memory_order_relaxed);
  g_bound_owner[hidden].store(fd + 1, std::memory_order_release);
  if (!g_fd_bound[fd].compare_exchange_strong(expected, hidden + 1)) {  // another thread won
    g_bound_owner[hidden].store(0);
    close_fd(hidden);
    return expected > 0 ? expected - 1 : -1;
  }
  return hidden;
}
}  // namespace

int fd_backing_dir(int fd, int index) {
  if (fd < 0 || fd >= kMaxFds) return -1;
  int32_t b = g_fd_bound[fd].load(std::memory_order_acquire);
  if (b != 0) return b - 1;  // -1 stays -1 (cannot be bound)
  Mount* m = mount_at(index);
  if (m == nullptr || !m->serve) return -1;
  int saved = errno;
  long bfd = -1;
  bool readable = false;
  // The directory's path in the mount, as the kernel has it now, and the same path in
  // the backing tree.
  char link[40] = "/proc/self/fd/";
  *append_uint(link + 14, static_cast<unsigned>(fd)) = '\0';
  char* path = t_bind;
  long n = sys(SYS_readlinkat, AT_FDCWD, reinterpret_cast<long>(link), reinterpret_cast<long>(path),
               EFUSE_INTERCEPT_PATH_MAX);
  if (n > 0 && static_cast<size_t>(n) >= m->mp_len && n < EFUSE_INTERCEPT_PATH_MAX &&
      memcmp(path, m->mp, m->mp_len) == 0 && (n == static_cast<long>(m->mp_len) || path[m->mp_len] == '/')) {
    size_t rlen = static_cast<size_t>(n) - m->mp_len;
    char* backing = t_bind + EFUSE_INTERCEPT_PATH_MAX + 4;
    if (m->src_len + rlen + 1 <= EFUSE_INTERCEPT_PATH_MAX + 4) {
      memcpy(backing + m->src_len, path + m->mp_len, rlen);
      memcpy(backing, m->src, m->src_len);
      backing[m->src_len + rlen] = '\0';
      bfd = open_backing_dir(AT_FDCWD, backing, 0, &readable);
    }
  }
  int hidden = keep_binding(fd, m, bfd, readable);
  errno = saved;
  return hidden;
}

namespace {
// The working directory's binding: what calls relative to it (a name relative to AT_FDCWD
// while the working directory is below a mount's root) are answered relative to, as calls
// relative to a bound directory descriptor are. The kernel resolves such a name in the
// directory the process is in (an inode, whatever its name is now), not at the path getcwd
// reports: the backing directory at that path may have been renamed, removed or replaced
// (by a symlink leading anywhere) since, and the kernel's name for it may be stale until
// efused's watcher told it. So the backing directory at the reported path (opened O_PATH
// beneath the backing root, following no symlink, on the backing file system) is used only
// if it is the working directory's own inode (statx of the working directory: its mount
// and inode number), and is kept, at a high number and close-on-exec, for the calls after.
// A few slots (the working directory is the process's: it changes only at chdir), each
// held by the calls using it (`refs`; kCwdBusy while one is rewritten), so no descriptor is
// closed or replaced under a call in another thread. The fields are read only while held.
struct CwdSlot {
  std::atomic<uint32_t> refs;
  std::atomic<int> fd1;  // the library's descriptor + 1; 0: none
  std::atomic<int> mount;
  std::atomic<uint64_t> generation;
  std::atomic<uint64_t> ino;
  char rest[EFUSE_INTERCEPT_PATH_MAX];  // the directory's path below the mount's root
};
constexpr int kCwdSlots = 4;
constexpr uint32_t kCwdBusy = 1u << 30;
CwdSlot g_cwd[kCwdSlots];
std::atomic<uint32_t> g_cwd_next{0};

// The working directory is a directory of the published mount itself (not of a bind mount
// of it, nor of another mount at the same path): true, with its inode number in *ino.
bool cwd_in_mount(const Mount* m, uint64_t* ino) {
  int saved = errno;
  struct statx sx = {};
  long rc = sys(SYS_statx, AT_FDCWD, reinterpret_cast<long>(""),
                AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC,
                STATX_TYPE | STATX_INO | STATX_MNT_ID, reinterpret_cast<long>(&sx));
  errno = saved;
  *ino = sx.stx_ino;
  return rc == 0 && (sx.stx_mask & STATX_MNT_ID) && S_ISDIR(sx.stx_mode) &&
         sx.stx_mnt_id == m->mnt_id && makedev(sx.stx_dev_major, sx.stx_dev_minor) == m->dev;
}

// The binding of the working directory, which the kernel reports at `rest` below m's root
// (not the root itself): its descriptor, held in slot *slot (cwd_release), or -1 (then the
// kernel answers). A binding is used again for the same inode number at the same path only
// (the inode numbers of directories on different file systems mounted in the backing tree
// may be equal).
int cwd_binding(Mount* m, int index, const char* rest, int* slot) {
  int saved = errno;
  uint64_t ino = 0;
  if (!cwd_in_mount(m, &ino)) return -1;
  for (int k = 0; k < kCwdSlots; ++k) {
    CwdSlot& c = g_cwd[k];
    if (c.refs.fetch_add(1, std::memory_order_acquire) >= kCwdBusy) {
      c.refs.fetch_sub(1, std::memory_order_release);
      continue;
    }
    int fd1 = c.fd1.load(std::memory_order_acquire);
    if (fd1 > 0 && c.mount.load(std::memory_order_relaxed) == index &&
        c.generation.load(std::memory_order_relaxed) == m->generation &&
        c.ino.load(std::memory_order_relaxed) == ino && strcmp(c.rest, rest) == 0) {
      *slot = k;
      return fd1 - 1;
    }
    c.refs.fetch_sub(1, std::memory_order_release);
  }
  int root = mount_root(m);
  uint64_t sdev = m->src_dev.load(std::memory_order_acquire);
  if (root < 0 || sdev == 0) return -1;
  struct open_how how = {};
  how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  long bfd = sys(SYS_openat2, root, reinterpret_cast<long>(rest), reinterpret_cast<long>(&how),
                 sizeof how);
  struct stat bst;
  long hidden = -1;
  if (bfd >= 0 && sys(SYS_fstat, bfd, reinterpret_cast<long>(&bst)) == 0 && S_ISDIR(bst.st_mode) &&
      bst.st_ino == ino && bst.st_dev == sdev)
    hidden = sys(SYS_fcntl, bfd, F_DUPFD_CLOEXEC, kHighFd);
  if (bfd >= 0) close_fd(static_cast<int>(bfd));
  errno = saved;
  if (hidden < 0) return -1;  // renamed, removed or replaced in the backing tree: the kernel's
  if (hidden >= kMaxFds) {
    close_fd(static_cast<int>(hidden));
    return -1;
  }
  uint32_t start = g_cwd_next.fetch_add(1, std::memory_order_relaxed);
  for (int n = 0; n < kCwdSlots; ++n) {
    int k = static_cast<int>((start + static_cast<uint32_t>(n)) % kCwdSlots);
    CwdSlot& c = g_cwd[k];
    uint32_t idle = 0;
    if (!c.refs.compare_exchange_strong(idle, kCwdBusy, std::memory_order_acquire)) continue;
    int old1 = c.fd1.exchange(0, std::memory_order_acq_rel);
    if (old1 > 0) close_fd(old1 - 1);
    c.mount.store(index, std::memory_order_relaxed);
    c.generation.store(m->generation, std::memory_order_relaxed);
    c.ino.store(ino, std::memory_order_relaxed);
    memcpy(c.rest, rest, strlen(rest) + 1);  // shorter than EFUSE_INTERCEPT_PATH_MAX (resolve)
    c.fd1.store(static_cast<int>(hidden) + 1, std::memory_order_release);
    c.refs.fetch_sub(kCwdBusy - 1, std::memory_order_acq_rel);  // held by this call now
    *slot = k;
    errno = saved;
    return static_cast<int>(hidden);
  }
  close_fd(static_cast<int>(hidden));  // every slot in use: the kernel answers this one
  errno = saved;
  return -1;
}

void cwd_release(int slot) { g_cwd[slot].refs.fetch_sub(1, std::memory_order_release); }

// The program closed or replaced number `fd`: a binding there is forgotten (not closed).
void cwd_fd_gone(unsigned first, unsigned last) {
  for (CwdSlot& c : g_cwd) {
    int fd1 = c.fd1.load(std::memory_order_acquire);
    if (fd1 > 0 && static_cast<unsigned>(fd1 - 1) >= first &&
        static_cast<unsigned>(fd1 - 1) <= last)
      c.fd1.compare_exchange_strong(fd1, 0);
  }
}
}  // namespace

Resolved::~Resolved() {
  if (cwd_slot >= 0) cwd_release(cwd_slot);
}

void fd_bind_child(int fd, int index, int parent, const char* path) {
  if (fd < 0 || fd >= kMaxFds || g_fd_bound[fd].load(std::memory_order_acquire) != 0) return;
  Mount* m = mount_at(index);
  if (m == nullptr || !m->serve) return;
  int saved = errno;
  bool readable = false;
  long bfd = open_backing_dir(parent, path, RESOLVE_BENEATH, &readable);
  keep_binding(fd, m, bfd, readable);
  errno = saved;
}
void fd_clear(int fd) { fd_put(fd, 0); }
void fd_identity(int fd, dev_t dev, ino_t ino) {
  if (fd < 0 || fd >= kMaxFds) return;
  g_fd_dev[fd].store(dev, std::memory_order_relaxed);
  g_fd_ino[fd].store(ino, std::memory_order_relaxed);
}
bool fd_same(int fd, dev_t dev, ino_t ino) {
  return fd >= 0 && fd < kMaxFds && g_fd_dev[fd].load(std::memory_order_relaxed) == dev &&
         g_fd_ino[fd].load(std::memory_order_relaxed) == ino;
}
void fd_copy(int from, int to) {
  if (to < 0 || to >= kMaxFds || from == to) return;
  uint32_t e = fd_entry(from);
  if (e != 0 && from >= 0 && from < kMaxFds)
    fd_identity(to, g_fd_dev[from].load(std::memory_order_relaxed),
                g_fd_ino[from].load(std::memory_order_relaxed));
  fd_put(to, e);
  int saved = errno;
  // A data file's copy gets a copy of its companion, close-on-exec as the copy is.
  int comp = from >= 0 && from < kMaxFds ? fd_companion(from) : -1;
  if (comp >= 0) {
    long fdfl = sys(SYS_fcntl, to, F_GETFD);
    long copy = fdfl < 0 ? -1
                         : sys(SYS_fcntl, comp, (fdfl & FD_CLOEXEC) ? F_DUPFD_CLOEXEC : F_DUPFD,
                               kHighFd);
    if (copy >= kMaxFds) close_fd(static_cast<int>(copy));
    else if (copy >= 0) fd_set_companion(to, static_cast<int>(copy));
    errno = saved;
  }
  // A bound directory's copy (fts keeps one as its working directory) is bound to a copy
  // of the same backing descriptor: one call instead of binding it anew.
  int32_t b = from >= 0 && from < kMaxFds ? g_fd_bound[from].load(std::memory_order_acquire) : 0;
  if (b <= 0) return;
  long hidden = sys(SYS_fcntl, b - 1, F_DUPFD_CLOEXEC, kHighFd);
  errno = saved;
  if (hidden < 0) return;
  if (hidden >= kMaxFds) {
    close_fd(static_cast<int>(hidden));
    return;
  }
  g_bound_readable[hidden].store(g_bound_readable[b - 1].load(std::memory_order_relaxed));
  g_bound_owner[hidden].store(to + 1, std::memory_order_release);
  int32_t expected = 0;
  if (!g_fd_bound[to].compare_exchange_strong(expected, static_cast<int32_t>(hidden) + 1)) {
    g_bound_owner[hidden].store(0);
    close_fd(static_cast<int>(hidden));
  }
}

int fd_backing_stream(int fd) {
  int32_t b = fd >= 0 && fd < kMaxFds ? g_fd_bound[fd].load(std::memory_order_acquire) : 0;
  return b > 0 && g_bound_readable[b - 1].load(std::memory_order_relaxed) ? b - 1 : -1;
}

Mount* mount_at(int index) {
  return index >= 0 && index < g_mount_count.load(std::memory_order_acquire) ? &g_mounts[index]
                                                                              : nullptr;
}

bool any_active() { return g_active.load(std::memory_order_relaxed) > 0; }

bool in_hole(const Mount* m, const char* path, size_t len) {
  uint32_t seq = m->holes_seq.load(std::memory_order_acquire);
  if (seq & 1) return true;
  int n = m->holes;
  if (n == 0) return m->holes_seq.load(std::memory_order_acquire) != seq;
  if (n < 0 || path == nullptr) return true;
  bool inside = false;
  for (int k = 0; k < n && !inside; ++k) {
    size_t hl = strnlen(m->hole[k], EFUSE_INTERCEPT_PATH_MAX);
    inside = len >= hl && memcmp(path, m->hole[k], hl) == 0 && (len == hl || path[hl] == '/');
  }
  return inside || m->holes_seq.load(std::memory_order_acquire) != seq;
}

namespace {
// efused still runs (its pidfd not readable).
bool efused_running(Mount* m) {
  if (m->alive != nullptr)
    return (__atomic_load_n(m->alive, __ATOMIC_ACQUIRE) & EFUSE_INTERCEPT_ALIVE_TID_MASK) != 0;
  int saved = errno;
  for (int attempt = 0; attempt < 2; ++attempt) {
    int pidfd = m->pidfd.load(std::memory_order_acquire);
    if (pidfd < 0) {
      // The program closed or replaced the library's pidfd: open another one.
      uint64_t ino = 0;
      int fresh = open_pidfd(m->pid, m->rec->pid_start, &ino);
      if (fresh < 0) break;  // efused is gone
      int expected = -1;
      if (m->pidfd.compare_exchange_strong(expected, fresh)) {
        m->pidfd_ino.store(ino);
        pidfd = fresh;
      } else {
        close_fd(fresh);  // another thread was faster
        continue;
      }
    }
    // Readable once efused exited. POLLNVAL: the descriptor was closed behind the
    // library's back; readable but not the same inode: its number now belongs to the
    // program. Either way the library forgets it (without closing it) and opens another.
    struct pollfd p = {pidfd, POLLIN, 0};
    long r = sys(SYS_poll, reinterpret_cast<long>(&p), 1, 0);
    if (r == 0) {
      errno = saved;
      return true;
    }
    struct stat st;
    bool ours = r > 0 && !(p.revents & POLLNVAL) &&
                sys(SYS_fstat, pidfd, reinterpret_cast<long>(&st)) == 0 &&
                st.st_ino == m->pidfd_ino.load();
    if (ours) break;  // efused exited
    m->pidfd.compare_exchange_strong(pidfd, -1);
  }
  errno = saved;
  return false;
}
}  // namespace

bool mount_alive(Mount* m) {
  if (m == nullptr || m->state.load(std::memory_order_acquire) != 1) return false;
  uint32_t flags = __atomic_load_n(&m->rec->flags, __ATOMIC_ACQUIRE);
  if (!(flags & EFUSE_IR_LIVE) || m->rec->generation != m->generation || !efused_running(m)) {
    mark_dead(m);
    return false;
  }
  return true;
}

bool writes_alive(Mount* m) {
  if (m == nullptr || m->rec == nullptr) return false;
  uint32_t flags = __atomic_load_n(&m->rec->flags, __ATOMIC_ACQUIRE);
  bool published = (flags & EFUSE_IR_LIVE) && m->rec->generation == m->generation;
  if (!published && !(flags & EFUSE_IR_FILES_GO_ON)) return false;
  if (efused_running(m)) return true;
  mark_dead(m);
  return false;
}

bool files_alive(Mount* m) {
  if (writes_alive(m)) return true;
  if (m == nullptr || m->rec == nullptr) return false;
  uint32_t flags = __atomic_load_n(&m->rec->flags, __ATOMIC_ACQUIRE);
  if (!(flags & EFUSE_IR_FILES_GO_ON)) return false;
  // Left to the next efused (a restart that keeps the connection): once it resumed and
  // published the same connection (the same device), the descriptors go on.
  refresh();
  int count = g_mount_count.load(std::memory_order_acquire);
  for (int i = 0; i < count; ++i) {
    Mount* s = &g_mounts[i];
    if (s != m && s->dev == m->dev && mount_alive(s)) return true;
  }
  return false;
}

int mount_root(Mount* m) {
  int fd = m->root_fd.load(std::memory_order_acquire);
  if (fd != -1) return fd;
  int saved = errno;
  long root = sys(SYS_openat, AT_FDCWD, reinterpret_cast<long>(m->src),
                  O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root >= 0 && root < kHighFd) {
    long high = sys(SYS_fcntl, root, F_DUPFD_CLOEXEC, kHighFd);
    close_fd(static_cast<int>(root));
    root = high;
  }
  if (root >= kMaxFds) {
    close_fd(static_cast<int>(root));
    root = -1;
  }
  struct stat st;
  if (root >= 0 && sys(SYS_fstat, root, reinterpret_cast<long>(&st)) == 0)
    m->src_dev.store(st.st_dev, std::memory_order_release);
  errno = saved;
  int got = root >= 0 ? static_cast<int>(root) : -2;
  int expected = -1;
  if (!m->root_fd.compare_exchange_strong(expected, got)) {  // another thread was faster
    if (got >= 0) close_fd(got);
    return expected;
  }
  return got;
}

bool mount_writes(Mount* m) {
  if (m == nullptr || !m->writes) return false;
  int known = m->writable.load(std::memory_order_acquire);
  if (known == 0) {
    // A mount this process sees read-only (a read-only bind of it, say) is written through
    // the kernel, which says EROFS. One STATFS round trip, once per process.
    struct statfs sfs;
    int saved = errno;
    known = sys(SYS_statfs, reinterpret_cast<long>(m->mp), reinterpret_cast<long>(&sfs)) == 0 &&
                    !(sfs.f_flags & ST_RDONLY)
                ? 1
                : 2;
    errno = saved;
    m->writable.store(known, std::memory_order_release);
  }
  return known == 1;
}


void refresh() {
  const uint64_t* gen = g_gen.load(std::memory_order_acquire);
  if (gen == nullptr) {
    // No efused published anything yet: look again at most once a second.
    int64_t now = now_ns();
    int64_t next = g_next_probe_ns.load(std::memory_order_relaxed);
    if (now < next || !g_next_probe_ns.compare_exchange_strong(next, now + 1000000000)) return;
    bool expected = false;
    if (!g_scanning.compare_exchange_strong(expected, true)) return;
    int saved = errno;
    map_generation();
    errno = saved;
    g_scanning.store(false);
    gen = g_gen.load(std::memory_order_acquire);
    if (gen == nullptr) return;
  }
  uint64_t v = __atomic_load_n(gen, __ATOMIC_ACQUIRE);
  if (v == g_gen_seen.load(std::memory_order_relaxed) && !g_rescan.load(std::memory_order_relaxed))
    return;
  bool expected = false;
  if (!g_scanning.compare_exchange_strong(expected, true)) return;  // another thread scans
  int saved = errno;
  g_gen_seen.store(v);
  scan();
  errno = saved;
  g_scanning.store(false);
}

void count(Mount* m, int op, bool by_library, uint64_t n) {
  if (m != nullptr && m->cnt != nullptr)
    __atomic_fetch_add(&m->cnt->calls[by_library ? 0 : 1][op], n, __ATOMIC_RELAXED);
}

Guard::Guard() : entered(t_depth++ == 0) {}
Guard::~Guard() { --t_depth; }

namespace {
thread_local char t_path[2 * EFUSE_INTERCEPT_PATH_MAX + 8] __attribute__((tls_model("initial-exec")));

// Collapses "//" and "/./" and a trailing "/."; false on a ".." component (the kernel
// resolves those: across the mountpoint they leave the mount).
bool normalize(char* p) {
  char* w = p;
  const char* r = p;
  while (*r != '\0') {
    if (r[0] == '/') {
      if (r[1] == '/') { ++r; continue; }
      if (r[1] == '.' && (r[2] == '/' || r[2] == '\0')) {
        r += 2;
        if (*r == '\0') *w++ = '/';
        continue;
      }
      if (r[1] == '.' && r[2] == '.' && (r[3] == '/' || r[3] == '\0')) return false;
    }
    *w++ = *r++;
  }
  *w = '\0';
  return true;
}
}  // namespace

namespace {
// `p` (relative) without its "." components and repeated slashes, into `out`; false for a
// ".." component (it may leave the directory, and the mount), for the directory itself,
// and when too long.
bool without_dots(const char* p, char* out, size_t cap) {
  size_t w = 0;
  for (const char* c = p; *c != '\0';) {
    if (*c == '/') {
      if (w > 0 && out[w - 1] != '/') {
        if (w + 1 >= cap) return false;
        out[w++] = '/';
      }
      ++c;
      continue;
    }
    const char* end = c;
    while (*end != '\0' && *end != '/') ++end;
    size_t n = static_cast<size_t>(end - c);
    if (n == 2 && c[0] == '.' && c[1] == '.') return false;
    if (!(n == 1 && c[0] == '.')) {
      if (w + n + 1 >= cap) return false;
      memcpy(out + w, c, n);
      w += n;
    }
    c = end;
  }
  out[w] = '\0';  // "a/." became "a/" (still: a directory); "." alone, nothing
  return w > 0;
}

// A descriptor the library did not see opened (inherited and not adopted, received over a
// socket, opened by a raw system call): the published mount its path lies in, recorded as
// the mount's (kernel) descriptor, or -1, recorded as not the library's concern.
int mount_of_fd(int fd) {
  char link[40] = "/proc/self/fd/";
  *append_uint(link + 14, static_cast<unsigned>(fd)) = '\0';
  int saved = errno;
  long n = sys(SYS_readlinkat, AT_FDCWD, reinterpret_cast<long>(link), reinterpret_cast<long>(t_bind),
               EFUSE_INTERCEPT_PATH_MAX);
  errno = saved;
  if (n <= 0 || n >= EFUSE_INTERCEPT_PATH_MAX) return -1;  // gone, or too long to judge
  int count = g_mount_count.load(std::memory_order_acquire);
  for (int i = 0; i < count; ++i) {
    Mount& m = g_mounts[i];
    if (m.state.load(std::memory_order_acquire) != 1 || static_cast<size_t>(n) < m.mp_len ||
        memcmp(t_bind, m.mp, m.mp_len) != 0 ||
        (static_cast<size_t>(n) > m.mp_len && t_bind[m.mp_len] != '/'))
      continue;
    fd_put(fd, kFdKernel | static_cast<uint32_t>(i + 1));
    return i;
  }
  if (t_bind[0] == '/') fd_put(fd, kFdOther);
  return -1;
}
}  // namespace

bool resolve(int dirfd, const char* path, Resolved* out) {
  if (path == nullptr || path[0] == '\0') return false;
  refresh();
  if (!any_active()) return false;
  out->at_fd = AT_FDCWD;
  out->at_path = out->backing;
  out->bound = false;
  out->beneath = false;
  out->decline = false;
  out->no_root = false;
  out->rest = nullptr;
  if (out->cwd_slot >= 0) {
    cwd_release(out->cwd_slot);
    out->cwd_slot = -1;
  }
  if (path[0] != '/' && dirfd != AT_FDCWD) {
    // Relative to a directory descriptor: only ever answered relative to the backing
    // directory it is bound to (its path may no longer lead to it: renamed outside, the
    // kernel's name for it may be stale), else by the kernel.
    if (dirfd < 0) return false;
    uint32_t e = fd_entry(dirfd);
    if (e & (kFdLibrary | kFdOther)) return false;  // a regular file (ENOTDIR), or not ours
    int index = (e & kFdKernel) ? fd_mount(e) : mount_of_fd(dirfd);
    Mount* m = mount_at(index);
    if (m == nullptr || m->state.load(std::memory_order_acquire) != 1) return false;
    out->mount = m;
    out->index = index;
    out->backing[0] = '\0';
    out->is_root = false;
    out->single_name = false;
    if (m->nodes) return true;  // the kernel walks the path (node_open in calls.cpp)
    char* rel = t_path;
    // A file system mounted anywhere inside: the directory may lead into it.
    int bound = !in_hole(m, nullptr, 0) && without_dots(path, rel, sizeof t_path)
                    ? fd_backing_dir(dirfd, index) : -1;
    if (bound < 0) {
      out->decline = true;  // ".." (which may leave the mount), the directory itself, unbound
      return true;
    }
    out->at_fd = bound;
    out->at_path = rel;
    out->bound = true;
    out->single_name = strchr(rel, '/') == nullptr;
    return true;
  }
  char* buf = t_path;
  const size_t cap = sizeof t_path;
  size_t len = 0;
  size_t cwd_len = 0;  // relative to the working directory: its path's length in `buf`
  size_t plen = strlen(path);
  int saved = errno;
  if (path[0] != '/') {
    long n;
    if (dirfd == AT_FDCWD) {
      n = sys(SYS_getcwd, reinterpret_cast<long>(buf), cap);
      if (n > 0) n -= 1;  // the kernel counts the NUL
    } else {
      return false;  // handled above
    }
    errno = saved;
    if (n <= 0 || buf[0] != '/' || static_cast<size_t>(n) + plen + 2 >= cap) return false;
    len = cwd_len = static_cast<size_t>(n);
    buf[len++] = '/';
  } else if (plen + 1 >= cap) {
    return false;
  }
  memcpy(buf + len, path, plen + 1);
  if (!normalize(buf)) return false;
  len = strlen(buf);
  int count = g_mount_count.load(std::memory_order_acquire);
  for (int i = 0; i < count; ++i) {
    Mount& m = g_mounts[i];
    if (m.state.load(std::memory_order_acquire) != 1) continue;
    if (len < m.mp_len || memcmp(buf, m.mp, m.mp_len) != 0) continue;
    if (buf[m.mp_len] != '\0' && buf[m.mp_len] != '/') continue;
    const char* rest = buf + m.mp_len;
    size_t rlen = len - m.mp_len;
    if (m.src_len + rlen + 1 > sizeof out->backing) return false;
    memcpy(out->backing, m.src, m.src_len);
    memcpy(out->backing + m.src_len, rest, rlen + 1);
    out->mount = &m;
    out->index = i;
    out->decline = in_hole(&m, buf, len);  // inside a file system mounted in the mount
    const char* below = rest;
    while (*below == '/') ++below;
    out->rest = *below != '\0' ? below : ".";
    int root = m.serve ? mount_root(&m) : -2;
    if (root >= 0) {
      out->at_fd = root;
      out->at_path = out->rest;
      out->beneath = true;
    } else if (m.serve) {
      out->no_root = true;
    }
    out->is_root = rlen == 0 || (rlen == 1 && rest[0] == '/');
    // One name under the mount's root ("/mnt/f", or "f" with the working directory there):
    // beneath the backing directory's own descriptor nothing but the name itself can be a
    // symlink, so it is looked at with one lstat and opened with one openat(O_NOFOLLOW), as
    // a single name relative to a bound directory is (no openat2, no O_PATH open to stat
    // through). A longer path is walked beneath it following no symlink (openat2).
    out->single_name = out->beneath && strchr(out->rest, '/') == nullptr &&
                       strcmp(out->rest, ".") != 0;
    // Relative to a working directory below the mount's root: the kernel resolves the name
    // in that directory, whatever path now leads to it (or not) in the backing tree, and
    // checks no directory above it. Answered relative to its binding (cwd_binding), as a
    // call relative to a bound directory descriptor is; else (a directory on its path
    // renamed, removed or replaced in the backing tree, "..", the directory itself, a file
    // system mounted inside, the backing root out of reach) by the kernel.
    const char* cwd_rest = buf + m.mp_len;
    while (cwd_len > 0 && *cwd_rest == '/' && cwd_rest < buf + cwd_len) ++cwd_rest;
    uint64_t cwd_ino = 0;
    if (cwd_len > 0 && m.serve && cwd_rest == buf + cwd_len &&
        (!cwd_in_mount(&m, &cwd_ino) || cwd_ino != m.root_ino)) {
      // getcwd names the mountpoint, but the working directory is not this mount's root
      // (the root of a mount this one was stacked on, say): the kernel's.
      out->decline = true;
      return true;
    }
    if (cwd_len > 0 && m.serve && cwd_rest < buf + cwd_len) {
      out->rest = nullptr;  // no hand-over: efused would resolve it by path
      out->no_root = false;
      out->beneath = false;
      out->at_fd = AT_FDCWD;
      out->at_path = out->backing;
      out->single_name = false;
      // t_bind: the working directory below the mount's root, then the relative path
      // without "." components (fd_backing_dir and mount_of_fd, its other users, are not
      // called on this path).
      size_t dlen = static_cast<size_t>(buf + cwd_len - cwd_rest);
      char* dir = t_bind;
      char* rel = t_bind + EFUSE_INTERCEPT_PATH_MAX + 4;
      int bound = -1;
      if (!out->decline && root >= 0 && dlen < EFUSE_INTERCEPT_PATH_MAX &&
          !in_hole(&m, nullptr, 0) && without_dots(path, rel, EFUSE_INTERCEPT_PATH_MAX)) {
        memcpy(dir, cwd_rest, dlen);
        dir[dlen] = '\0';
        bound = cwd_binding(&m, i, dir, &out->cwd_slot);
      }
      if (bound < 0) {
        out->decline = true;
        return true;
      }
      out->at_fd = bound;
      out->at_path = rel;
      out->bound = true;
      out->single_name = strchr(rel, '/') == nullptr;
    }
    return true;
  }
  return false;
}

void rewrite_stat(const Mount* m, struct stat* st) { st->st_dev = m->dev; }

namespace {
// The program closed or replaced one of the library's bound-directory descriptors: its
// program descriptor resolves by path again (nothing is closed: the number is the program's).
void bound_gone(int fd) {
  int32_t owner = g_bound_owner[fd].exchange(0);
  if (owner <= 0) return;
  int32_t expected = fd + 1;
  g_fd_bound[owner - 1].compare_exchange_strong(expected, 0);
}
}  // namespace

namespace {
// The program closed or replaced the companion `c` of a memory mount's library descriptor
// (a closefrom, a close_range before exec, a loop closing every number): the descriptor
// becomes a kernel open of the same file (reopened through the companion while it is still
// there, at the same offset, with the same flags, at the same number), which answers
// everything as the mount does from then on. If it cannot be reopened (its permissions
// changed meanwhile), it stays the data file, no longer the library's. Either way the
// companion is closed here, so the program's own close of that number finds it closed, as
// it would without the library.
void companion_gone(int c) {
  int32_t owner1 = g_comp_owner[c].load(std::memory_order_acquire);
  if (owner1 <= 0) return;
  int owner = owner1 - 1;
  int saved = errno;
  uint32_t e = fd_entry(owner);
  long fl = sys(SYS_fcntl, owner, F_GETFL);
  long fdfl = sys(SYS_fcntl, owner, F_GETFD);
  long off = sys(SYS_lseek, owner, 0, SEEK_CUR);
  char link[40] = "/proc/self/fd/";
  *append_uint(link + 14, static_cast<unsigned>(c)) = '\0';
  constexpr long kKept = O_ACCMODE | O_APPEND | O_NONBLOCK | O_DSYNC | O_SYNC;
  long k = fl < 0 || fdfl < 0 || off < 0
               ? -1
               : sys(SYS_openat, AT_FDCWD, reinterpret_cast<long>(link),
                     (fl & kKept) | O_LARGEFILE | O_CLOEXEC);
  bool moved = k >= 0 && sys(SYS_lseek, k, off, SEEK_SET) == off &&
               sys(SYS_dup3, k, owner, (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0) == owner;
  if (k >= 0) close_fd(static_cast<int>(k));
  fd_put(owner, moved ? (kFdKernel | (e & 0xffff)) : 0);  // closes the companion
  errno = saved;
}
}  // namespace

void internal_fd_gone(int fd) {
  if (fd < kHighFd) return;
  if (fd < kMaxFds) bound_gone(fd);
  if (fd < kMaxFds && g_comp_owner[fd].load(std::memory_order_relaxed) != 0) companion_gone(fd);
  cwd_fd_gone(static_cast<unsigned>(fd), static_cast<unsigned>(fd));
  int count = g_mount_count.load(std::memory_order_acquire);
  for (int i = 0; i < count; ++i) {
    int expected = fd;
    g_mounts[i].pidfd.compare_exchange_strong(expected, -1);
    expected = fd;
    g_mounts[i].root_fd.compare_exchange_strong(expected, -1);
  }
}

void internal_fds_gone(unsigned first, unsigned last) {
  for (unsigned fd = first < static_cast<unsigned>(kHighFd) ? kHighFd : first;
       fd <= last && fd < static_cast<unsigned>(kMaxFds); ++fd) {
    if (g_bound_owner[fd].load(std::memory_order_relaxed) != 0) bound_gone(static_cast<int>(fd));
    if (g_comp_owner[fd].load(std::memory_order_relaxed) != 0) companion_gone(static_cast<int>(fd));
  }
  cwd_fd_gone(first, last);
  int count = g_mount_count.load(std::memory_order_acquire);
  for (int i = 0; i < count; ++i) {
    int fd = g_mounts[i].pidfd.load();
    if (fd >= 0 && static_cast<unsigned>(fd) >= first && static_cast<unsigned>(fd) <= last)
      g_mounts[i].pidfd.compare_exchange_strong(fd, -1);
    fd = g_mounts[i].root_fd.load();
    if (fd >= 0 && static_cast<unsigned>(fd) >= first && static_cast<unsigned>(fd) <= last)
      g_mounts[i].root_fd.compare_exchange_strong(fd, -1);
  }
}

namespace {
// Memory mounts' data files inherited across exec, paired with their companions by
// pair_inherited (the constructor's thread only).
struct Inherited {
  int fd;
  int mount;
  uint64_t ino;     // its inode number in the private tmpfs
  uint64_t nodeid;  // the file's, which its companion reports as its inode number
};
constexpr int kMaxInherited = 64;
Inherited g_data[kMaxInherited];
int g_data_count;

// The nodeid a data file is named after (hex, in the root of efused's private tmpfs: "/1a",
// "/1a (deleted)"); 0 when `fd`'s name is not one.
uint64_t data_file_nodeid(int fd) {
  char link[40] = "/proc/self/fd/";
  *append_uint(link + 14, static_cast<unsigned>(fd)) = '\0';
  char name[64];
  long n = sys(SYS_readlinkat, AT_FDCWD, reinterpret_cast<long>(link), reinterpret_cast<long>(name),
               sizeof name - 1);
  if (n < 2 || name[0] != '/') return 0;
  name[n] = '\0';
  uint64_t id = 0;
  const char* p = name + 1;
  for (; (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'); ++p)
    id = id * 16 + static_cast<uint64_t>(*p <= '9' ? *p - '0' : *p - 'a' + 10);
  return p > name + 1 && p - name <= 17 && (*p == '\0' || strcmp(p, " (deleted)") == 0) ? id : 0;
}

// A memory mount's data file, kept for pairing. True when `fd` is one.
bool note_inherited(int fd, const struct stat& fst) {
  int count = g_mount_count.load(std::memory_order_acquire);
  for (int i = 0; i < count; ++i) {
    Mount& m = g_mounts[i];
    if (m.state.load() != 1 || !m.nodes || !S_ISREG(fst.st_mode) || fst.st_dev != m.data_dev)
      continue;
    uint64_t id = data_file_nodeid(fd);
    if (id == 0 || g_data_count >= kMaxInherited) return true;  // stays the program's
    g_data[g_data_count++] = {fd, i, fst.st_ino, id};
    return true;
  }
  return false;
}

// Pairs the data files noted with their companions (close-on-exec exactly when their data
// files are, so both came across): each becomes the library's again. The companions are
// O_PATH descriptors at kHighFd or above, which poll() does not see (it reports them
// closed), so they are looked for here, below 1024, only while a data file lacks one.
// Data files without one stay the program's (reported as the data file).
void pair_inherited() {
  int unpaired = g_data_count;
  for (int fd = kHighFd; unpaired > 0 && fd < 1024; ++fd) {
    struct stat st;
    if (fd_entry(fd) != 0 || sys(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0 ||
        !S_ISREG(st.st_mode))
      continue;
    for (int d = 0; d < g_data_count; ++d) {
      Inherited& in = g_data[d];
      Mount& m = g_mounts[in.mount];
      if (in.fd < 0 || st.st_dev != m.dev || st.st_ino != in.nodeid) continue;
      long fl = sys(SYS_fcntl, fd, F_GETFL);
      if (fl < 0 || !(fl & O_PATH)) break;
      fd_identity(in.fd, m.data_dev, in.ino);
      fd_put(in.fd, kFdLibrary | static_cast<uint32_t>(in.mount + 1));
      fd_set_companion(in.fd, fd);
      in.fd = -1;
      --unpaired;
      break;
    }
  }
  g_data_count = 0;
}

// Adopts inherited descriptor `fd` if it is one of a published mount or of its backing tree.
void adopt_one(int fd) {
  if (fd < 0 || fd >= kMaxFds) return;
  // Only a descriptor on a mount's device, or a regular file on its backing directory's
  // file system, can be one; its path is read only then (a pipe or a terminal costs an
  // fstat, not a readlink).
  struct stat fst;
  if (sys(SYS_fstat, fd, reinterpret_cast<long>(&fst)) != 0) return;
  if (note_inherited(fd, fst)) return;
  bool candidate = false;
  int count = g_mount_count.load(std::memory_order_acquire);
  for (int i = 0; i < count && !candidate; ++i) {
    Mount& m = g_mounts[i];
    if (m.state.load() != 1) continue;
    if (fst.st_dev == m.dev) candidate = true;
    if (m.serve && S_ISREG(fst.st_mode)) {
      uint64_t sdev = mount_root(&m) >= 0 ? m.src_dev.load(std::memory_order_acquire) : 0;
      candidate |= sdev == 0 || fst.st_dev == sdev;
    }
  }
  if (!candidate) return;
  char link[40] = "/proc/self/fd/";
  *append_uint(link + 14, static_cast<unsigned>(fd)) = '\0';
  char target[EFUSE_INTERCEPT_PATH_MAX];
  long len = sys(SYS_readlinkat, AT_FDCWD, reinterpret_cast<long>(link),
                 reinterpret_cast<long>(target), sizeof target - 1);
  if (len <= 0 || target[0] != '/') return;
  target[len] = '\0';
  for (int i = 0; i < count; ++i) {
    Mount& m = g_mounts[i];
    if (m.state.load() != 1) continue;
    auto under = [&](const char* dir, size_t dlen) {
      return static_cast<size_t>(len) >= dlen && memcmp(target, dir, dlen) == 0 &&
             (target[dlen] == '\0' || target[dlen] == '/');
    };
    if (under(m.mp, m.mp_len)) {
      fd_put(fd, kFdKernel | static_cast<uint32_t>(i + 1));
      return;
    }
    // A regular file of the backing tree: one the library opened before exec (a program
    // that opened the backing tree itself is taken for one too). One open for writing (a
    // shell's `> file` under efuse-run) is handed to this efused first, as an open of the
    // library's would be; if it cannot be, it is left alone.
    long fl = sys(SYS_fcntl, fd, F_GETFL);
    bool writable = fl >= 0 && (fl & O_ACCMODE) != O_RDONLY;
    if (m.serve && under(m.src, m.src_len) && fl >= 0 && S_ISREG(fst.st_mode) &&
        (!writable || ask_efused(&m, EFUSE_IREQ_WRITING, fd) == 0)) {
      fd_identity(fd, fst.st_dev, fst.st_ino);
      fd_put(fd, kFdLibrary | (writable ? kFdWritable : 0) | static_cast<uint32_t>(i + 1));
      return;
    }
  }
}
}  // namespace

void adopt_inherited() {
  refresh();
  if (!any_active()) return;
  // The open descriptors below 1024: one poll() of them says which are open (POLLNVAL:
  // not), which costs a new process far less than listing /proc/self/fd (~30 us). Inherited
  // descriptors at 1024 or above are not adopted: a backing file's reports its own st_dev
  // (an open for writing stays exact all the same: efused's mark lasts while it is open),
  // a mount's is recognised at its first call relative to it (mount_of_fd).
  struct rlimit rl;
  constexpr unsigned kPolled = 1024;
  if (sys(SYS_prlimit64, 0, RLIMIT_NOFILE, 0, reinterpret_cast<long>(&rl)) == 0) {
    struct pollfd p[kPolled];
    unsigned n = rl.rlim_cur < kPolled ? static_cast<unsigned>(rl.rlim_cur) : kPolled;
    for (unsigned i = 0; i < n; ++i) p[i] = {static_cast<int>(i), 0, 0};
    if (sys(SYS_poll, reinterpret_cast<long>(p), n, 0) >= 0) {
      for (unsigned i = 0; i < n; ++i)
        if (!(p[i].revents & POLLNVAL)) adopt_one(static_cast<int>(i));
      pair_inherited();
      return;
    }
  }
  alignas(8) char dents[4096];
  for_each_name("/proc/self/fd", dents, sizeof dents, [&](int dirfd, const char* name) {
    if (name[0] < '0' || name[0] > '9') return;
    int fd = atoi(name);
    if (fd != dirfd) adopt_one(fd);
  });
  pair_inherited();
}

char* append_u64(char* out, uint64_t v) {
  char digits[24];
  int k = 0;
  do digits[k++] = static_cast<char>('0' + v % 10); while ((v /= 10) != 0);
  while (k > 0) *out++ = digits[--k];
  return out;
}

char* append_uint(char* out, unsigned v) { return append_u64(out, v); }

}  // namespace efuse::intercept
