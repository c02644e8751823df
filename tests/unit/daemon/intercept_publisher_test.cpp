// What efused publishes for libefuse_intercept.so: the record, the counters and the
// generation counter, their modes, withdrawal, and the metrics read from the counters.
#include "daemon/intercept_publisher.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <filesystem>
#include <cstring>
#include <string>

#include "../testing/eventually.h"
#include "../testing/temp_dir.h"
#include "fs/passthrough/passthrough_fs.h"

namespace efuse::daemon {
namespace {

class InterceptPublisherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* old = std::getenv("EFUSE_INTERCEPT_DIR");
    if (old != nullptr) saved_ = old, had_ = true;
    setenv("EFUSE_INTERCEPT_DIR", (tmp_ / "pub").c_str(), 1);
    cfg_.name = "data";
    cfg_.mountpoint = "/srv/efuse/data";
    cfg_.backend = "passthrough";
    cfg_.source = "/srv/data";
    cfg_.intercept = true;
  }
  void TearDown() override {
    if (had_) setenv("EFUSE_INTERCEPT_DIR", saved_.c_str(), 1);
    else unsetenv("EFUSE_INTERCEPT_DIR");
  }

  std::string only(const char* suffix) {
    std::string found;
    for (const auto& e : std::filesystem::directory_iterator(tmp_ / "pub")) {
      std::string n = e.path().filename();
      if (n.size() > 4 && n.compare(n.size() - 4, 4, suffix) == 0) {
        EXPECT_TRUE(found.empty()) << "two " << suffix << " files";
        found = e.path();
      }
    }
    return found;
  }
  uint64_t generation() {
    int fd = ::open((tmp_ / "pub/generation").c_str(), O_RDONLY);
    if (fd < 0) return 0;
    uint64_t v = 0;
    EXPECT_EQ(::pread(fd, &v, sizeof v, 0), static_cast<ssize_t>(sizeof v));
    ::close(fd);
    return v;
  }
  template <typename T>
  T* map(const std::string& path, int prot) {
    int fd = ::open(path.c_str(), (prot & PROT_WRITE) ? O_RDWR : O_RDONLY);
    EXPECT_GE(fd, 0) << path;
    void* p = mmap(nullptr, sizeof(T), prot, MAP_SHARED, fd, 0);
    ::close(fd);
    EXPECT_NE(p, MAP_FAILED);
    return static_cast<T*>(p);
  }
  uint32_t record_flags() {
    auto* rec = map<efuse_intercept_record>(only(".rec"), PROT_READ);
    uint32_t flags = rec->flags;
    munmap(rec, sizeof *rec);
    return flags;
  }
  static double series(const std::vector<fs::Metric>& ms, const char* op, const char* path) {
    for (const auto& m : ms)
      if (m.labels.size() == 2 && m.labels[0].second == op && m.labels[1].second == path)
        return m.value;
    ADD_FAILURE() << "no series op=" << op << " path=" << path;
    return -1;
  }

  efuse::testing::TempDir tmp_;
  MountConfig cfg_;
  std::string saved_;
  bool had_ = false;
};

TEST_F(InterceptPublisherTest, PublishesRecordCountersAndGeneration) {
  InterceptPublisher p;
  p.publish(cfg_, 42);
  ASSERT_TRUE(p.published());
  EXPECT_EQ(generation(), 1u);
  std::string rec_path = only(".rec");
  ASSERT_FALSE(rec_path.empty());
  EXPECT_TRUE(only(".cnt").empty());  // no shared counters file any more
  struct stat st;
  ASSERT_EQ(stat(rec_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  EXPECT_EQ(static_cast<size_t>(st.st_size), sizeof(efuse_intercept_record));
  // The counters' directory: every user may create files there, none may list it.
  ASSERT_EQ(lstat((tmp_ / "pub/counts").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 01733u);

  auto* rec = map<efuse_intercept_record>(rec_path, PROT_READ);
  EXPECT_EQ(rec->magic, EFUSE_INTERCEPT_MAGIC);
  EXPECT_EQ(rec->version, EFUSE_INTERCEPT_VERSION);
  EXPECT_EQ(rec->pid, getpid());
  EXPECT_NE(rec->pid_start, 0u);
  EXPECT_EQ(rec->dev_major, 0u);
  EXPECT_EQ(rec->dev_minor, 42u);
  EXPECT_STREQ(rec->mountpoint, "/srv/efuse/data");
  EXPECT_STREQ(rec->source, "/srv/data");
  EXPECT_EQ(rec->flags, EFUSE_IR_LIVE | EFUSE_IR_ALLOW_OTHER | EFUSE_IR_SERVE);

  // What the libraries count, per user, is what /metrics shows summed.
  std::string base = std::filesystem::path(rec_path).filename().string();
  base = std::string(tmp_ / "pub/counts") + "/" + base.substr(0, base.size() - 4) + "-" +
         std::to_string(getpid()) + "-" + std::to_string(rec->generation) + ".";
  auto put = [&](const std::string& path, uid_t owner, uint64_t open_lib, uint64_t readdir_k,
                 uint64_t magic = EFUSE_INTERCEPT_MAGIC) {
    efuse_intercept_counters c{};
    c.magic = magic;
    c.version = EFUSE_INTERCEPT_VERSION;
    c.size = sizeof c;
    c.calls[0][EFUSE_IOP_open] = open_lib;
    c.calls[1][EFUSE_IOP_readdir] = readdir_k;
    ::unlink(path.c_str());
    int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_EXCL, 0644);
    ASSERT_GE(fd, 0) << path;
    ASSERT_EQ(::write(fd, &c, sizeof c), static_cast<ssize_t>(sizeof c));
    ASSERT_EQ(fchown(fd, owner, owner), 0);
    ::close(fd);
  };
  put(base + "0", 0, 3, 5);
  put(base + "1234", 1234, 10, 0);
  put(base + "4321", 1234, 1000, 1000);     // owned by another user than it names: ignored
  put(base + "77", 77, 1000, 1000, 12345);  // not the layout: ignored
  put(base + "x1", 0, 1000, 1000);          // not a uid: ignored
  auto ms = p.metrics();
  EXPECT_EQ(ms.size(), 2u * EFUSE_IOP_COUNT);
  EXPECT_STREQ(ms[0].name, "efuse_intercept_calls_total");
  EXPECT_EQ(series(ms, "open", "library"), 13);
  EXPECT_EQ(series(ms, "readdir", "kernel"), 5);
  EXPECT_EQ(series(ms, "read", "library"), 0);
  // A user resetting or removing their own file never makes the sum go down.
  put(base + "1234", 1234, 2, 0);
  EXPECT_EQ(series(p.metrics(), "open", "library"), 13);
  ::unlink((base + "1234").c_str());
  EXPECT_EQ(series(p.metrics(), "open", "library"), 13);
  put(base + "1234", 1234, 12, 0);
  EXPECT_EQ(series(p.metrics(), "open", "library"), 15);

  // Withdrawn while the mount goes on (intercept turned off): a library holding the old
  // record sees it not live at once, but its open descriptors go on; the record and the
  // counter files are gone, the generation moved, no series.
  p.withdraw(true);
  EXPECT_FALSE(p.published());
  EXPECT_EQ(rec->flags, EFUSE_IR_FILES_GO_ON);
  EXPECT_TRUE(only(".rec").empty());
  EXPECT_FALSE(std::filesystem::exists(base + "0"));
  EXPECT_FALSE(std::filesystem::exists(base + "1234"));
  EXPECT_EQ(generation(), 2u);
  EXPECT_TRUE(p.metrics().empty());

  // Published again (a remount): a new record, counters from 0 (a counter reset).
  p.publish(cfg_, 43);
  EXPECT_EQ(generation(), 3u);
  EXPECT_EQ(series(p.metrics(), "open", "library"), 0);
  auto* rec2 = map<efuse_intercept_record>(only(".rec"), PROT_READ);
  EXPECT_EQ(rec2->dev_minor, 43u);
  EXPECT_GT(rec2->generation, 1u);
  // The mount stops: every record it published says so (descriptors fail with ENOTCONN).
  p.withdraw(false);
  EXPECT_EQ(rec->flags, 0u);
  EXPECT_EQ(rec2->flags, 0u);
  EXPECT_TRUE(only(".rec").empty());
  munmap(rec, sizeof *rec);
  munmap(rec2, sizeof *rec2);
}

TEST_F(InterceptPublisherTest, FlagsFollowTheMount) {
  cfg_.options.read_only = true;
  cfg_.options.allow_other = false;
  {
    InterceptPublisher p;
    p.publish(cfg_, 7);
    auto* rec = map<efuse_intercept_record>(only(".rec"), PROT_READ);
    EXPECT_EQ(rec->flags, EFUSE_IR_LIVE | EFUSE_IR_READ_ONLY | EFUSE_IR_SERVE);
    munmap(rec, sizeof *rec);
  }  // the destructor withdraws
  EXPECT_TRUE(only(".rec").empty());
  // Memory mounts without data files to hand out (no backend here; no private tmpfs) and
  // mounts without default_permissions are published for counting only.
  for (int i = 0; i < 2; ++i) {
    MountConfig c = cfg_;
    if (i == 0) c.backend = "memory", c.source.clear();
    else c.options.default_permissions = false;
    InterceptPublisher p;
    p.publish(c, 7);
    auto* rec = map<efuse_intercept_record>(only(".rec"), PROT_READ);
    EXPECT_EQ(rec->flags & EFUSE_IR_SERVE, 0u) << i;
    EXPECT_NE(rec->flags & EFUSE_IR_LIVE, 0u) << i;
    munmap(rec, sizeof *rec);
  }
}

// A record left by a killed efused (its process gone) is removed, with its counters, when
// a mount is published; a record of a running efused stays.
TEST_F(InterceptPublisherTest, RemovesRecordsOfDeadDaemons) {
  std::filesystem::create_directories(tmp_ / "pub");
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);
  auto write_record = [&](const std::string& base, int32_t pid, uint64_t start) {
    efuse_intercept_record rec{};
    rec.magic = EFUSE_INTERCEPT_MAGIC;
    rec.version = EFUSE_INTERCEPT_VERSION;
    rec.size = sizeof rec;
    rec.pid = pid;
    rec.pid_start = start;
    int fd = ::open((tmp_ / "pub/" + base + ".rec").c_str(), O_CREAT | O_WRONLY, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, &rec, sizeof rec), static_cast<ssize_t>(sizeof rec));
    ::close(fd);
    fd = ::open((tmp_ / "pub/" + base + ".cnt").c_str(), O_CREAT | O_WRONLY, 0644);
    ::close(fd);
  };
  write_record("m-dead000000000000", child, 12345);
  std::filesystem::create_directories(tmp_ / "pub/counts");
  std::string dead_counts =
      std::string(tmp_ / "pub/counts") + "/m-dead000000000000-" + std::to_string(child) + "-1.0";
  ::close(::open(dead_counts.c_str(), O_CREAT | O_WRONLY, 0644));
  // A running process (pid 1) whose start time does not match: its PID was reused.
  write_record("m-reused0000000000", 1, ~0ull - 1);
  InterceptPublisher p;
  p.publish(cfg_, 5);
  EXPECT_FALSE(std::filesystem::exists(tmp_ / "pub/m-dead000000000000.rec"));
  EXPECT_FALSE(std::filesystem::exists(tmp_ / "pub/m-dead000000000000.cnt"));
  EXPECT_FALSE(std::filesystem::exists(tmp_ / "pub/m-reused0000000000.rec"));
  EXPECT_FALSE(std::filesystem::exists(dead_counts));
  EXPECT_FALSE(only(".rec").empty());  // its own
}

// The alive file: a robust mutex a thread of efused holds; killed, the kernel clears the
// holder's TID in its futex word (what the library reads instead of polling a pidfd), and
// the next publish removes the file.
TEST_F(InterceptPublisherTest, AliveFileTellsWhetherEfusedRuns) {
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    InterceptPublisher p;
    p.publish(cfg_, 3);
    char c = p.published() ? 'y' : 'n';
    (void)!::write(ready[1], &c, 1);
    for (;;) pause();
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  EXPECT_EQ(c, 'y');
  std::string alive;
  for (const auto& e : std::filesystem::directory_iterator(tmp_ / "pub"))
    if (e.path().filename().string().rfind("alive-" + std::to_string(child) + "-", 0) == 0)
      alive = e.path();
  ASSERT_FALSE(alive.empty());
  struct stat st;
  ASSERT_EQ(stat(alive.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  EXPECT_EQ(static_cast<size_t>(st.st_size), EFUSE_INTERCEPT_ALIVE_SIZE);
  int fd = ::open(alive.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  void* p = mmap(nullptr, EFUSE_INTERCEPT_ALIVE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  ASSERT_NE(p, MAP_FAILED);
  const auto* word = static_cast<const uint32_t*>(p);
  EXPECT_NE(__atomic_load_n(word, __ATOMIC_ACQUIRE) & EFUSE_INTERCEPT_ALIVE_TID_MASK, 0u);
  ASSERT_EQ(kill(child, SIGKILL), 0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);
  uint32_t after = __atomic_load_n(word, __ATOMIC_ACQUIRE);
  EXPECT_EQ(after & EFUSE_INTERCEPT_ALIVE_TID_MASK, 0u);
  EXPECT_NE(after & 0x40000000u, 0u);  // FUTEX_OWNER_DIED
  munmap(p, EFUSE_INTERCEPT_ALIVE_SIZE);
  // This process's own publish removes the dead one's alive file, and makes its own.
  InterceptPublisher mine;
  mine.publish(cfg_, 4);
  EXPECT_FALSE(std::filesystem::exists(alive));
  int own = 0;
  for (const auto& e : std::filesystem::directory_iterator(tmp_ / "pub"))
    own += e.path().filename().string().rfind("alive-" + std::to_string(getpid()) + "-", 0) == 0;
  EXPECT_EQ(own, 1);
  ::close(ready[0]);
  ::close(ready[1]);
}

// Left for the next efused (a restart keeping the connection): the record says the mount
// goes on, and stays so after this efused's publisher is gone.
TEST_F(InterceptPublisherTest, LeftForRestartStaysGoingOn) {
  efuse_intercept_record* rec = nullptr;
  {
    InterceptPublisher p;
    p.publish(cfg_, 9);
    rec = map<efuse_intercept_record>(only(".rec"), PROT_READ);
    p.leave_for_restart();
    EXPECT_FALSE(p.published());
    EXPECT_TRUE(only(".rec").empty());
  }
  EXPECT_EQ(rec->flags, EFUSE_IR_FILES_GO_ON);
  munmap(rec, sizeof *rec);
}

TEST_F(InterceptPublisherTest, UnusableDirectoryLeavesItUnpublished) {
  setenv("EFUSE_INTERCEPT_DIR", (tmp_ / "file/sub").c_str(), 1);
  int fd = ::open((tmp_ / "file").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  ::close(fd);
  InterceptPublisher p;
  p.publish(cfg_, 1);  // logged; the mount goes on without it
  EXPECT_FALSE(p.published());
  EXPECT_TRUE(p.metrics().empty());
}

// A connection to the intercept socket `sock`, or -1.
int connected(const std::string& sock) {
  int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, sock.c_str(), sizeof addr.sun_path - 1);
  if (::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(s);
    return -1;
  }
  return s;
}

// One request on the intercept socket with `fd` attached: efused's errno, or -1.
int ask(const std::string& sock, uint32_t op, int fd) {
  int s = connected(sock);
  if (s < 0) return -1;
  efuse_intercept_request req;
  struct iovec iov;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  struct msghdr msg;
  efuse_intercept_message(&msg, &iov, &req, op, control, fd);
  efuse_intercept_reply reply = {-1, 0};
  bool ok = ::sendmsg(s, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof req) &&
            ::recv(s, &reply, sizeof reply, 0) == static_cast<ssize_t>(sizeof reply);
  ::close(s);
  return ok ? reply.error : -1;
}

// A backend whose regular files' data the library may read itself (memory with its private
// tmpfs): it only says so and counts what reaches it.
struct NodeBackend : fs::Filesystem {
  bool library_opens() const override { return true; }
  uint64_t library_data_dev() const override { return 1234; }
  Result<int> library_open_node(uint64_t, int, const LibraryCaller&) override {
    ++calls;
    return Errno{EACCES};
  }
  int calls = 0;
};

// EFUSE_IREQ_OPEN_NODE of `flags` with `fd` attached (none if negative), or EFUSE_IREQ_OPEN
// of path "f" (`path`): efused's answer, -1 if the exchange failed.
int ask_node(const std::string& sock, int fd, uint32_t flags, bool path = false) {
  int s = connected(sock);
  if (s < 0) return -1;
  efuse_intercept_open req = {};
  req.head = {EFUSE_INTERCEPT_MAGIC, EFUSE_INTERCEPT_VERSION,
              path ? EFUSE_IREQ_OPEN : EFUSE_IREQ_OPEN_NODE};
  req.flags = flags;
  req.path_len = path ? 1 : 0;
  req.path[0] = 'f';
  struct iovec iov;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  struct msghdr msg;
  const size_t len = offsetof(efuse_intercept_open, path) + req.path_len;
  efuse_intercept_prepare(&msg, &iov, &req, len, control, fd);
  efuse_intercept_reply reply = {-1, 0};
  bool ok = ::sendmsg(s, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(len) &&
            ::recv(s, &reply, sizeof reply, 0) == static_cast<ssize_t>(sizeof reply);
  ::close(s);
  return ok ? reply.error : -1;
}

TEST_F(InterceptPublisherTest, MemoryMountsHandOutDataFilesByNodeOnly) {
  cfg_.backend = "memory";
  cfg_.source.clear();
  NodeBackend backend;
  {
    InterceptPublisher p;
    p.publish(cfg_, 9, &backend);
    ASSERT_NE(p.server(), nullptr);
    auto* rec = map<efuse_intercept_record>(only(".rec"), PROT_READ);
    EXPECT_EQ(rec->flags, EFUSE_IR_LIVE | EFUSE_IR_ALLOW_OTHER | EFUSE_IR_NODES);
    EXPECT_EQ(rec->data_dev, 1234u);
    munmap(rec, sizeof *rec);
    const std::string sock = p.server()->path();
    // Only a regular file of this mount (device 0:9) reaches the backend: none exists here.
    int other = ::open("/proc/self/exe", O_PATH | O_CLOEXEC);
    ASSERT_GE(other, 0);
    EXPECT_EQ(ask_node(sock, other, O_RDONLY), EINVAL);     // another file system's
    EXPECT_EQ(ask_node(sock, other, O_RDWR), EINVAL);       // malformed: for reading only
    EXPECT_EQ(ask_node(sock, -1, O_RDONLY), EINVAL);        // malformed: no descriptor
    EXPECT_EQ(ask_node(sock, -1, O_RDONLY, true), EOPNOTSUPP);  // a path: passthrough's form
    EXPECT_EQ(ask(sock, EFUSE_IREQ_WRITING, other), EROFS);  // no writes through the library
    ::close(other);
    EXPECT_EQ(backend.calls, 0);
    EXPECT_EQ(p.server()->malformed(), 2u);
    EXPECT_EQ(p.server()->handover_refused(), 2u);
  }
  // With the writeback cache (pages the data files lack) it is counted only.
  cfg_.cache.writeback = true;
  InterceptPublisher q;
  q.publish(cfg_, 10, &backend);
  EXPECT_EQ(q.server(), nullptr);
  EXPECT_EQ(record_flags() & (EFUSE_IR_NODES | EFUSE_IR_OPENS | EFUSE_IR_SERVE), 0u);
}

TEST_F(InterceptPublisherTest, WritesGoThroughASocketWhereTheBackendTakesThem) {
  std::string src = tmp_ / "src";
  ASSERT_EQ(::mkdir(src.c_str(), 0755), 0);
  cfg_.source = src;
  fs::passthrough::PassthroughFs backend(src, fs::Policy{});
  {
    InterceptPublisher p;
    p.publish(cfg_, 42, &backend);
    ASSERT_NE(p.server(), nullptr);
    EXPECT_TRUE(record_flags() & EFUSE_IR_WRITES);
    std::string sock = p.server()->path();
    std::string tail = "-" + std::to_string(getpid()) + ".sock";
    EXPECT_EQ(sock.compare(sock.size() - tail.size(), tail.size(), tail), 0) << sock;
    struct stat st;
    ASSERT_EQ(::stat(sock.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0666u);
    // A file opened for writing is marked until no open for writing of it remains.
    std::string f = src + "/f";
    int fd = ::open(f.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(ask(sock, EFUSE_IREQ_WRITING, fd), 0);
    EXPECT_EQ(backend.library_marked(), 1u);
    EXPECT_EQ(ask(sock, EFUSE_IREQ_CHANGED, fd), 0);
    EXPECT_EQ(ask(sock, 77, fd), EINVAL);
    int ro = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_EQ(ask(sock, EFUSE_IREQ_WRITING, ro), EBADF);
    ::close(ro);
    ::close(fd);
    EXPECT_TRUE(efuse::testing::eventually([&] { return backend.library_marked() == 0; }));
    EXPECT_EQ(p.server()->accepted(), 2u);
    EXPECT_EQ(p.server()->malformed(), 1u);
    // Turned off live: the socket stays for the descriptors already handed out.
    p.withdraw(true);
    EXPECT_NE(p.server(), nullptr);
    EXPECT_EQ(ask(sock, EFUSE_IREQ_CHANGED, fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC)), 0);
    ::close(fd);
    p.withdraw(false);
    EXPECT_EQ(p.server(), nullptr);
    EXPECT_NE(::stat(sock.c_str(), &st), 0) << "removed with the mount";
  }
  // A read-only mount takes no writes: no flag, and its socket (there for hand-overs when
  // efused is root) refuses them.
  cfg_.options.read_only = true;
  InterceptPublisher q;
  q.publish(cfg_, 43, &backend);
  EXPECT_FALSE(record_flags() & EFUSE_IR_WRITES);
  EXPECT_EQ(q.server() != nullptr, backend.library_opens());
  EXPECT_EQ((record_flags() & EFUSE_IR_OPENS) != 0, backend.library_opens());
  if (q.server() != nullptr) {
    int fd = ::open((src + "/f").c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(ask(q.server()->path(), EFUSE_IREQ_WRITING, fd), EROFS);
    ::close(fd);
    EXPECT_EQ(backend.library_marked(), 0u);
  }
}

// One EFUSE_IREQ_OPEN of `path` with `flags`, `len` overriding the message's length: the
// reply's errno (0 with *got the descriptor), or -1 when the exchange failed.
int ask_open(const std::string& sock, const std::string& path, uint32_t flags, int* got,
             size_t len = 0) {
  *got = -1;
  int s = connected(sock);
  if (s < 0) return -1;
  efuse_intercept_open req = {};
  req.head = {EFUSE_INTERCEPT_MAGIC, EFUSE_INTERCEPT_VERSION, EFUSE_IREQ_OPEN};
  req.flags = flags;
  req.path_len = static_cast<uint32_t>(path.size());
  std::memcpy(req.path, path.data(), std::min(path.size(), sizeof req.path));
  size_t size = len != 0 ? len : offsetof(efuse_intercept_open, path) + path.size();
  efuse_intercept_reply reply = {-1, 0};
  struct iovec iov;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr msg;
  efuse_intercept_prepare(&msg, &iov, &req, size, nullptr, -1);
  bool ok = ::sendmsg(s, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(size);
  efuse_intercept_prepare(&msg, &iov, &reply, sizeof reply, nullptr, -1);
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ok = ok && ::recvmsg(s, &msg, MSG_CMSG_CLOEXEC) == static_cast<ssize_t>(sizeof reply);
  struct cmsghdr* c = ok ? CMSG_FIRSTHDR(&msg) : nullptr;
  if (c != nullptr && c->cmsg_type == SCM_RIGHTS) std::memcpy(got, CMSG_DATA(c), sizeof(int));
  ::close(s);
  return ok ? reply.error : -1;
}

TEST_F(InterceptPublisherTest, HandOversOpenWithTheCallersCredentials) {
  std::string src = tmp_ / "src";
  ASSERT_EQ(::mkdir(src.c_str(), 0755), 0);
  cfg_.source = src;
  fs::passthrough::PassthroughFs backend(src, fs::Policy{});
  if (!backend.library_opens()) GTEST_SKIP() << "hand-overs need efused to be root";
  int made = ::open((src + "/f").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(made, 0);
  ASSERT_EQ(::write(made, "data", 4), 4);
  ::close(made);
  ASSERT_EQ(::mkdir((src + "/d").c_str(), 0755), 0);
  // The other user below reaches the socket, and may search the mountpoint's parent
  // (search only on the test's directory).
  ASSERT_EQ(::chmod(tmp_.path().c_str(), 0711), 0);
  cfg_.mountpoint = tmp_ / "mnt";
  InterceptPublisher p;
  p.publish(cfg_, 44, &backend);
  ASSERT_NE(p.server(), nullptr);
  EXPECT_TRUE(record_flags() & EFUSE_IR_OPENS);
  const std::string sock = p.server()->path();
  int fd = -1;
  // Malformed: EINVAL, counted as such, nothing opened.
  EXPECT_EQ(ask_open(sock, "/f", O_RDONLY, &fd), EINVAL);
  EXPECT_EQ(ask_open(sock, std::string("f\0x", 3), O_RDONLY, &fd), EINVAL);
  EXPECT_EQ(ask_open(sock, "f", O_RDONLY | O_CREAT, &fd), EINVAL);
  EXPECT_EQ(ask_open(sock, "f", O_RDONLY | O_TRUNC, &fd), EINVAL);
  EXPECT_EQ(ask_open(sock, "f", O_ACCMODE, &fd), EINVAL);
  EXPECT_EQ(ask_open(sock, "f", O_RDONLY, &fd, offsetof(efuse_intercept_open, path) + 9), EINVAL);
  EXPECT_EQ(ask_open(sock, "", O_RDONLY, &fd), EINVAL);
  EXPECT_EQ(fd, -1);
  EXPECT_EQ(p.server()->malformed(), 7u);
  // Root (this test) is never handed a descriptor: its capabilities are not known.
  EXPECT_EQ(ask_open(sock, "f", O_RDONLY, &fd), EPERM);
  EXPECT_EQ(fd, -1);
  EXPECT_EQ(p.server()->handover_refused(), 1u);
  // As another user (a child that dropped to 65534 with group 65534 and no other group):
  // the file (0644) opens for reading, not for writing; a directory, a symlink and a
  // missing name are refused.
  ASSERT_EQ(::symlink("f", (src + "/link").c_str()), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
        ::setresuid(65534, 65534, 65534) != 0)
      ::_exit(10);
    int got = -1;
    if (ask_open(sock, "f", O_RDONLY, &got) != 0 || got < 0) ::_exit(11);
    char buf[8] = {};
    if (::read(got, buf, sizeof buf) != 4 || std::memcmp(buf, "data", 4) != 0) ::_exit(12);
    if (::fcntl(got, F_GETFD) != FD_CLOEXEC) ::_exit(13);
    if (ask_open(sock, "f", O_WRONLY, &got) != EACCES || got != -1) ::_exit(14);
    if (ask_open(sock, "d", O_RDONLY, &got) != EINVAL) ::_exit(15);
    if (ask_open(sock, "link", O_RDONLY, &got) != EINVAL) ::_exit(16);  // never followed
    if (ask_open(sock, "missing", O_RDONLY, &got) != ENOENT) ::_exit(17);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child step " << WEXITSTATUS(status);
  EXPECT_EQ(p.server()->handed_over(), 1u);
  EXPECT_EQ(p.server()->handover_refused(), 5u);
  EXPECT_EQ(backend.library_marked(), 0u);
  // The thread that opened went back to efused's own identity: marks still work.
  fd = ::open((src + "/f").c_str(), O_RDWR | O_CLOEXEC);
  EXPECT_EQ(ask(sock, EFUSE_IREQ_WRITING, fd), 0);
  ::close(fd);
}

}  // namespace
}  // namespace efuse::daemon
