#include "daemon/intercept_publisher.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>

#include "common/log.h"
#include "common/unique_fd.h"

namespace efuse::daemon {
namespace {

constexpr size_t kGenerationSize = 4096;

std::string hash_name(const std::string& mountpoint) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : mountpoint) h = (h ^ c) * 1099511628211ull;
  char buf[24];
  std::snprintf(buf, sizeof buf, "m-%016llx", static_cast<unsigned long long>(h));
  return buf;
}

uint64_t start_time(const std::string& pid) {
  char buf[1024];
  UniqueFd fd(::open(("/proc/" + pid + "/stat").c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return 0;
  ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');  // the command may hold spaces and parentheses
  if (p == nullptr) return 0;
  // After ")": field 3 (state) ... field 22 (starttime).
  int field = 2;
  for (; *p != '\0' && field < 22; ++p)
    if (*p == ' ') ++field;
  return std::strtoull(p, nullptr, 10);
}

std::string alive_name(unsigned long pid, unsigned long long start) {
  return "alive-" + std::to_string(pid) + "-" + std::to_string(start);
}

// efused's copy of its mount table (common/intercept_abi.h): a header line, then
// /proc/self/mountinfo as read.
std::string mounts_name(unsigned long pid, unsigned long long start) {
  return "mounts-" + std::to_string(pid) + "-" + std::to_string(start);
}

// Writes the copy anew (a new file renamed over the old one). Called before the generation
// is bumped for a change of the table, so a library that rescans reads the new one.
void publish_mount_table(const std::string& dir, int table) {
  struct stat ns, root;
  if (::stat("/proc/self/ns/mnt", &ns) != 0 || ::stat("/", &root) != 0) return;
  std::string text = "efuse-mounts " + std::to_string(root.st_dev) + " " +
                     std::to_string(root.st_ino) + " " + std::to_string(ns.st_ino) + "\n";
  char buf[16384];
  for (off_t off = 0;;) {
    ssize_t n = ::pread(table, buf, sizeof buf, off);
    if (n < 0) return;  // the libraries read their own table while the copy is missing
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    off += n;
  }
  std::string path = dir + "/" + mounts_name(getpid(), start_time("self"));
  std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd || ::fchmod(fd.get(), 0644) != 0 ||
      ::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
      ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    ::unlink(path.c_str());  // none rather than a stale one
  }
}

// Records left by an efused that was killed (its mounts detached since): removed with
// their counters, so /run does not collect them. Libraries ignore them anyway (PID check).
void remove_dead_records(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::string name = e.path().filename();
    unsigned long pid = 0;
    unsigned long long start = 0;
    char tail = 0;
    if ((std::sscanf(name.c_str(), "alive-%lu-%llu%c", &pid, &start, &tail) == 2 &&
         name == alive_name(pid, start)) ||
        (std::sscanf(name.c_str(), "mounts-%lu-%llu%c", &pid, &start, &tail) == 2 &&
         name == mounts_name(pid, start))) {
      if (static_cast<pid_t>(pid) != getpid() && start_time(std::to_string(pid)) != start) {
        ::unlink(e.path().c_str());
        LOG_INFO("intercept: removed %s, left by efused %lu, which is gone", e.path().c_str(), pid);
      }
      continue;
    }
    unsigned long sock_pid = 0;
    int used = 0;
    if (name.size() > 24 && name.compare(0, 2, "m-") == 0 &&
        name.compare(name.size() - 5, 5, ".sock") == 0 &&
        std::sscanf(name.c_str() + 18, "-%lu.sock%n", &sock_pid, &used) == 1 &&
        static_cast<size_t>(used) + 18 == name.size()) {
      // An intercept socket of an efused that is gone (m-<hash>-<pid>.sock).
      if (static_cast<pid_t>(sock_pid) != getpid() && ::kill(static_cast<pid_t>(sock_pid), 0) != 0 &&
          errno == ESRCH)
        ::unlink(e.path().c_str());
      continue;
    }
    if (name.size() < 7 || name.compare(0, 2, "m-") != 0 ||
        name.compare(name.size() - 4, 4, ".rec") != 0)
      continue;
    efuse_intercept_record rec;
    UniqueFd fd(::open(e.path().c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd || ::pread(fd.get(), &rec, sizeof rec, 0) != static_cast<ssize_t>(sizeof rec) ||
        rec.magic != EFUSE_INTERCEPT_MAGIC || rec.pid == getpid())
      continue;
    if (start_time(std::to_string(rec.pid)) == rec.pid_start) continue;  // its efused runs
    std::string base = e.path().string();
    base.resize(base.size() - 4);
    ::unlink((base + ".rec").c_str());
    ::unlink((base + ".cnt").c_str());
    LOG_INFO("intercept: removed %s.rec, left by efused %d, which is gone", base.c_str(), rec.pid);
  }
  // Counter files of publications whose efused is gone (their PID names no process).
  for (const auto& e : std::filesystem::directory_iterator(dir + "/" + EFUSE_INTERCEPT_COUNTS_DIR, ec)) {
    std::string name = e.path().filename();
    unsigned long pid = 0;
    int used = 0;
    if (name.size() < 20 || name.compare(0, 2, "m-") != 0 ||
        std::sscanf(name.c_str() + 18, "-%lu-%*u.%*u%n", &pid, &used) != 1 ||
        static_cast<size_t>(used) + 18 != name.size() || static_cast<pid_t>(pid) == getpid())
      continue;
    if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) ::unlink(e.path().c_str());
  }
}

bool make_dir(const std::string& dir) {
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i != dir.size() && dir[i] != '/') continue;
    std::string part = dir.substr(0, i);
    if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) return false;
  }
  return true;
}

// Adds one to the directory's generation counter (creating it), so libraries rescan.
void bump_generation(const std::string& dir) {
  std::string path = dir + "/generation";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644));
  struct stat st;
  if (!fd || fstat(fd.get(), &st) != 0) {
    LOG_WARN("intercept: cannot update %s: %s", path.c_str(), strerror(errno));
    return;
  }
  if (st.st_size < static_cast<off_t>(kGenerationSize) &&
      ftruncate(fd.get(), kGenerationSize) != 0) {
    LOG_WARN("intercept: cannot size %s: %s", path.c_str(), strerror(errno));
    return;
  }
  void* p = mmap(nullptr, kGenerationSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) {
    LOG_WARN("intercept: cannot map %s: %s", path.c_str(), strerror(errno));
    return;
  }
  __atomic_fetch_add(static_cast<uint64_t*>(p), 1, __ATOMIC_SEQ_CST);
  munmap(p, kGenerationSize);
}

template <typename T>
T* map_file(const std::string& path, int flags, mode_t mode, bool fresh, std::string* why) {
  UniqueFd fd(::open(path.c_str(), flags | O_RDWR | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd) {
    *why = path + ": " + strerror(errno);
    return nullptr;
  }
  struct stat st;
  if (fstat(fd.get(), &st) != 0 || fchmod(fd.get(), mode) != 0 ||  // umask may have masked it
      (fresh && ftruncate(fd.get(), 0) != 0) ||
      (static_cast<size_t>(st.st_size) != sizeof(T) && ftruncate(fd.get(), sizeof(T)) != 0)) {
    *why = path + ": " + strerror(errno);
    return nullptr;
  }
  void* p = mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) {
    *why = path + ": " + strerror(errno);
    return nullptr;
  }
  return static_cast<T*>(p);
}

constexpr const char* kCountsDir = EFUSE_INTERCEPT_COUNTS_DIR;

// <dir>/counts: 01733, efused's, a real directory.
bool make_counts_dir(const std::string& path, std::string* why) {
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    *why = "cannot create " + path + ": " + strerror(errno);
    return false;
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
    *why = path + " is not a directory of efused's user";
    return false;
  }
  if ((st.st_mode & 07777) != 01733 && ::chmod(path.c_str(), 01733) != 0) {
    *why = "cannot make " + path + " mode 1733: " + strerror(errno);
    return false;
  }
  return true;
}

// Calls f(name, uid) for the files "<prefix><uid>" in `dir` (at most 65,536 looked at).
template <typename F>
void for_each_count_file(const std::string& dir, const std::string& prefix, F&& f) {
  if (dir.empty() || prefix.empty()) return;
  std::error_code ec;
  int seen = 0;
  for (auto it = std::filesystem::directory_iterator(dir, ec);
       !ec && it != std::filesystem::directory_iterator() && seen < 65536; it.increment(ec), ++seen) {
    std::string name = it->path().filename();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const char* digits = name.c_str() + prefix.size();
    char* end = nullptr;
    errno = 0;
    unsigned long uid = std::strtoul(digits, &end, 10);
    if (errno != 0 || *end != '\0' || !std::isdigit(static_cast<unsigned char>(*digits)) ||
        uid > 0xffffffffu || std::to_string(uid) != digits)
      continue;
    f(name, static_cast<uint32_t>(uid));
  }
}

// A user's counters: their own regular file, of the right size and layout.
bool read_count_file(const std::string& path, uint32_t uid, efuse_intercept_counters* c) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  struct stat st;
  return fd && fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == uid &&
         static_cast<size_t>(st.st_size) == sizeof *c &&
         ::pread(fd.get(), c, sizeof *c, 0) == static_cast<ssize_t>(sizeof *c) &&
         c->magic == EFUSE_INTERCEPT_MAGIC && c->version == EFUSE_INTERCEPT_VERSION &&
         c->size == sizeof *c;
}

// The alive file (common/intercept_abi.h): one per directory this efused publishes in, its
// robust mutex locked by a thread that never lets go and lives as long as the process.
struct AlivePage {
  pthread_mutex_t mutex;
  char pad[EFUSE_INTERCEPT_ALIVE_SIZE - sizeof(pthread_mutex_t)];
};
static_assert(sizeof(AlivePage) == EFUSE_INTERCEPT_ALIVE_SIZE);
static_assert(offsetof(pthread_mutex_t, __data.__lock) == 0, "the futex word comes first");

bool ensure_alive(const std::string& dir, std::string* why) {
  static std::mutex mu;
  static std::vector<std::string> done;  // directories with this process's alive file
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& d : done)
    if (d == dir) return true;
  std::string path = dir + "/" + alive_name(getpid(), start_time("self"));
  ::unlink(path.c_str());
  auto* page = map_file<AlivePage>(path, O_CREAT | O_EXCL, 0644, true, why);
  if (page == nullptr) return false;
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&page->mutex, &attr);
  pthread_mutexattr_destroy(&attr);
  std::promise<int> locked;
  std::future<int> result = locked.get_future();
  // The holder: locks, reports, and stays until the process ends (every signal blocked,
  // so none is delivered here). It owns nothing to clean up. Meanwhile it watches this
  // namespace's mount table: a file system mounted inside a published mount (or one
  // unmounted there) must be seen by the libraries, which read the table when they rescan,
  // so any change of it is copied for them (mounts-<pid>-<start>: reading the kernel's
  // mountinfo cost each process under efuse-run ~40 us at its start) and then bumps the
  // generation.
  std::thread([page, dir, locked = std::move(locked)]() mutable {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    UniqueFd table(::open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC));
    if (table) publish_mount_table(dir, table.get());
    locked.set_value(pthread_mutex_lock(&page->mutex));
    for (;;) {
      struct pollfd p = {table.get(), POLLPRI, 0};
      if (!table || ::poll(&p, 1, -1) < 0 || (p.revents & POLLNVAL)) {
        LOG_WARN("intercept: cannot watch /proc/self/mountinfo (%s): file systems mounted "
                 "inside published mounts later are not seen by running programs",
                 strerror(errno));
        for (;;) pause();
      }
      if (p.revents & (POLLPRI | POLLERR)) {
        publish_mount_table(dir, table.get());
        bump_generation(dir);
      }
    }
  }).detach();
  int rc = result.get();
  if (rc != 0) {
    *why = path + ": locking its mutex: " + strerror(rc);
    return false;  // left mapped: the holder thread may still refer to it
  }
  done.push_back(dir);
  return true;
}

}  // namespace

std::string intercept_dir() {
  const char* env = std::getenv("EFUSE_INTERCEPT_DIR");
  return env != nullptr && *env == '/' ? std::string(env) : EFUSE_INTERCEPT_DEFAULT_DIR;
}

void InterceptPublisher::publish(const MountConfig& cfg, unsigned conn_id, fs::Filesystem* fs) {
  withdraw(true);
  std::string dir = intercept_dir();
  if (cfg.mountpoint.size() >= EFUSE_INTERCEPT_PATH_MAX ||
      cfg.source.size() >= EFUSE_INTERCEPT_PATH_MAX) {
    LOG_WARN("%s: intercept: mountpoint or source longer than %d bytes; not published, every "
             "call goes through the kernel", cfg.name.c_str(), EFUSE_INTERCEPT_PATH_MAX - 1);
    return;
  }
  if (!make_dir(dir)) {
    LOG_WARN("%s: intercept: cannot create %s: %s; every call goes through the kernel",
             cfg.name.c_str(), dir.c_str(), strerror(errno));
    return;
  }
  remove_dead_records(dir);
  std::string base = dir + "/" + hash_name(cfg.mountpoint);
  std::string why;
  if (!ensure_alive(dir, &why)) {
    LOG_WARN("%s: intercept: cannot publish the mount (%s); every call goes through the kernel",
             cfg.name.c_str(), why.c_str());
    return;
  }
  // The counters: one file per user of this publication, made by that user's libraries in
  // a sticky directory every user may write in (none may list it, remove or write another
  // user's file); a new publication counts from 0 (a counter reset to Prometheus).
  std::string counts = dir + "/" + kCountsDir;
  if (!make_counts_dir(counts, &why))
    LOG_WARN("%s: intercept: %s; the calls of programs using the library are not counted",
             cfg.name.c_str(), why.c_str());
  // The record: a new file each time (a library holding the old one sees it not live).
  std::string tmp = base + ".rec.tmp";
  ::unlink(tmp.c_str());
  auto* rec = map_file<efuse_intercept_record>(tmp, O_CREAT | O_EXCL, 0644, true, &why);
  if (rec == nullptr) {
    LOG_WARN("%s: intercept: cannot publish the mount (%s); every call goes through the kernel",
             cfg.name.c_str(), why.c_str());
    ::unlink(tmp.c_str());
    return;
  }
  rec->magic = EFUSE_INTERCEPT_MAGIC;
  rec->version = EFUSE_INTERCEPT_VERSION;
  rec->size = sizeof(efuse_intercept_record);
  rec->pid = static_cast<int32_t>(getpid());
  rec->pid_start = start_time("self");
  rec->generation = ++generation_;
  rec->uid = geteuid();
  rec->dev_major = 0;
  rec->dev_minor = conn_id;
  std::memcpy(rec->mountpoint, cfg.mountpoint.c_str(), cfg.mountpoint.size() + 1);
  std::memcpy(rec->source, cfg.source.c_str(), cfg.source.size() + 1);
  uint32_t flags = EFUSE_IR_LIVE;
  if (cfg.options.read_only) flags |= EFUSE_IR_READ_ONLY;
  if (cfg.options.allow_other) flags |= EFUSE_IR_ALLOW_OTHER;
  // The library serves a backing tree with the caller's own credentials: only where the
  // kernel checks permissions the same way (default_permissions, and xattrs served: without
  // them the kernel checks modes only, where the backing file system applies ACLs too, which
  // may grant more) and there is one.
  if (cfg.backend == "passthrough" && cfg.options.default_permissions && cfg.options.xattr &&
      !cfg.source.empty())
    flags |= EFUSE_IR_SERVE;
  // Writes: the backend keeps the kernel's caches exact around them (docs/intercept.md).
  // Hand-overs: efused (as root) opens for a caller that cannot reach the backing file.
  // Memory mounts with their data in files of a private tmpfs: efused opens a file's data
  // file for reading for a process that sends it the file opened O_PATH through the mount
  // (EFUSE_IR_NODES; not with the writeback cache, whose dirty pages the data file lacks).
  const bool nodes = cfg.backend == "memory" && cfg.options.default_permissions &&
                     !cfg.cache.writeback && fs != nullptr && fs->library_data_dev() != 0;
  InterceptServer::Options so;
  so.allow_other = cfg.options.allow_other;
  so.writes = (flags & EFUSE_IR_SERVE) && !cfg.options.read_only && fs != nullptr &&
              fs->library_writes();
  so.opens = ((flags & EFUSE_IR_SERVE) || nodes) && fs != nullptr && fs->library_opens();
  so.nodes = nodes;
  so.mount_dev = makedev(0, conn_id);
  so.mount_parent = cfg.mountpoint.substr(0, std::max<size_t>(cfg.mountpoint.rfind('/'), 1));
  if (so.writes || so.opens) {
    // The socket lives as long as the mount: a reload that turns writes off (none does
    // today) keeps the first publication's.
    if (server_ == nullptr) {
      std::string sock = base + "-" + std::to_string(rec->pid) + ".sock";
      server_ = InterceptServer::start(sock, *fs, so, &why);
      if (server_ == nullptr)
        LOG_WARN("%s: intercept: no socket for the library's writes and hand-overs (%s); "
                 "opens for writing, and opens the caller cannot make itself, go through the "
                 "kernel", cfg.name.c_str(), why.c_str());
    }
    if (server_ != nullptr && server_->options().writes) flags |= EFUSE_IR_WRITES;
    if (server_ != nullptr && server_->options().opens)
      flags |= server_->options().nodes ? EFUSE_IR_NODES : EFUSE_IR_OPENS;
  }
  if (flags & EFUSE_IR_NODES) rec->data_dev = fs->library_data_dev();
  __atomic_store_n(&rec->flags, flags, __ATOMIC_RELEASE);
  record_path_ = base + ".rec";
  if (::rename(tmp.c_str(), record_path_.c_str()) != 0) {
    LOG_WARN("%s: intercept: cannot publish %s: %s", cfg.name.c_str(), record_path_.c_str(),
             strerror(errno));
    munmap(rec, sizeof *rec);
    ::unlink(tmp.c_str());
    return;
  }
  record_ = rec;
  counts_dir_ = counts;
  counts_prefix_ = hash_name(cfg.mountpoint) + "-" + std::to_string(rec->pid) + "-" +
                   std::to_string(rec->generation) + ".";
  {
    std::lock_guard<std::mutex> lock(counts_mu_);
    counts_seen_.clear();
  }
  bump_generation(dir);
  LOG_INFO("%s: intercept: published %s for libefuse_intercept.so (%s)", cfg.name.c_str(),
           record_path_.c_str(),
           (flags & EFUSE_IR_WRITES)  ? "served by the library, writes too"
           : (flags & EFUSE_IR_OPENS) ? "served by the library, writes through the kernel"
           : (flags & EFUSE_IR_SERVE) ? "served by the library, writes through the kernel"
           : (flags & EFUSE_IR_NODES) ? "opens for reading served by the library from the "
                                        "data files, everything else through the kernel"
                                      : "counted only: the library serves passthrough mounts "
                                        "with default_permissions and memory mounts with "
                                        "their data in a private tmpfs");
}

void InterceptPublisher::withdraw(bool mount_goes_on) {
  if (!mount_goes_on) {
    server_.reset();  // the backend goes with the mount
    for (auto* rec : withdrawn_) {
      __atomic_store_n(&rec->flags, 0u, __ATOMIC_SEQ_CST);
      munmap(rec, sizeof *rec);
    }
    withdrawn_.clear();
  }
  if (record_ == nullptr) return;
  // Libraries stop serving now (and, unless the mount goes on, fail their descriptors).
  __atomic_store_n(&record_->flags, mount_goes_on ? EFUSE_IR_FILES_GO_ON : 0u, __ATOMIC_SEQ_CST);
  ::unlink(record_path_.c_str());
  // /run keeps nothing of a mount no longer published.
  for_each_count_file(counts_dir_, counts_prefix_, [&](const std::string& name, uint32_t) {
    ::unlinkat(AT_FDCWD, (counts_dir_ + "/" + name).c_str(), 0);
  });
  if (mount_goes_on)
    withdrawn_.push_back(record_);
  else
    munmap(record_, sizeof *record_);
  record_ = nullptr;
  bump_generation(record_path_.substr(0, record_path_.rfind('/')));
}

void InterceptPublisher::leave_for_restart() {
  withdraw(true);
  // The next efused knows nothing of the library's writers: their descriptors fail with
  // ENOTCONN once this efused is gone (the library checks that the efused it asked runs).
  server_.reset();
  for (auto* rec : withdrawn_) munmap(rec, sizeof *rec);  // as they are: FILES_GO_ON
  withdrawn_.clear();
}

std::vector<fs::Metric> InterceptPublisher::metrics() const {
  std::vector<fs::Metric> out;
  if (record_ == nullptr) return out;
  Calls total{};
  {
    std::lock_guard<std::mutex> lock(counts_mu_);
    for_each_count_file(counts_dir_, counts_prefix_, [&](const std::string& name, uint32_t uid) {
      efuse_intercept_counters c;
      if (!read_count_file(counts_dir_ + "/" + name, uid, &c)) return;
      Calls& seen = counts_seen_[uid];
      for (int i = 0; i < 2 * EFUSE_IOP_COUNT; ++i)
        seen[i] = std::max(seen[i], c.calls[i / EFUSE_IOP_COUNT][i % EFUSE_IOP_COUNT]);
    });
    for (const auto& [uid, seen] : counts_seen_)
      for (int i = 0; i < 2 * EFUSE_IOP_COUNT; ++i) total[i] += seen[i];
  }
  static const char* const kOps[] = {
#define EFUSE_IOP_NAME(name) #name,
      EFUSE_INTERCEPT_OPS(EFUSE_IOP_NAME)
#undef EFUSE_IOP_NAME
  };
  static const char* const kHelp =
      "File calls on the mount by processes running libefuse_intercept.so (efuse-run): "
      "served by the library (path=library) or passed to the kernel (path=kernel)";
  for (int path = 0; path < 2; ++path)
    for (int op = 0; op < EFUSE_IOP_COUNT; ++op)
      out.push_back({"efuse_intercept_calls_total", kHelp, fs::Metric::Type::Counter,
                     static_cast<double>(total[path * EFUSE_IOP_COUNT + op]),
                     {{"op", kOps[op]}, {"path", path == 0 ? "library" : "kernel"}}});
  if (server_ != nullptr && server_->options().opens) {
    static const char* const kHandoverHelp =
        "Backing files (memory mounts: data files) efused opened with the caller's "
        "credentials for a process under libefuse_intercept.so that could not open them "
        "itself (result=opened), and such opens it refused (result=refused: the kernel "
        "answered the call)";
    out.push_back({"efuse_intercept_handovers_total", kHandoverHelp, fs::Metric::Type::Counter,
                   static_cast<double>(server_->handed_over()), {{"result", "opened"}}});
    out.push_back({"efuse_intercept_handovers_total", kHandoverHelp, fs::Metric::Type::Counter,
                   static_cast<double>(server_->handover_refused()), {{"result", "refused"}}});
  }
  return out;
}

}  // namespace efuse::daemon
