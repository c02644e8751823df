// InodeTable's descriptor budget: past it, unused inodes close their O_PATH descriptor and
// are reopened by file handle on their next use. Needs CAP_DAC_READ_SEARCH (root) for
// open_by_handle_at; without it the table evicts nothing, which is checked too. What
// eviction does is tested on tables whose requests evict (Evictor::kRequests: at once, in
// the caller); when and where it runs in production, in the table's own thread, at the end.
#include "fs/passthrough/inode_table.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../testing/eventually.h"
#include "../testing/temp_dir.h"

namespace efuse::fs::passthrough {
namespace {

using efuse::testing::eventually;
using efuse::testing::TempDir;
using efuse::testing::write_file;

constexpr size_t kBudget = 16;
constexpr int kFiles = 200;

// Installs `dir` as the table's root, as PassthroughFs does; *fd gets its O_PATH descriptor.
void install_root(InodeTable& table, const std::string& dir, int* fd) {
  *fd = ::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(*fd, 0);
  struct stat st;
  ASSERT_EQ(fstat(*fd, &st), 0);
  table.set_root(*fd, st);
}

class InodeTableTest : public ::testing::Test {
 protected:
  InodeTableTest() : table_(kBudget, InodeTable::Evictor::kRequests) {
    int fd;
    install_root(table_, tmp_.path(), &fd);
  }

  // Looks up `name` in the source directory as PassthroughFs does and adopts it.
  std::shared_ptr<Inode> ref(const std::string& name) {
    int fd = openat(root_fd(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
    EXPECT_GE(fd, 0) << name;
    struct stat st;
    EXPECT_EQ(fstat(fd, &st), 0);
    return table_.ref(fd, st);
  }
  int root_fd() {
    root_pin_ = std::make_unique<PathFd>(table_.get(1)->pin());
    return *root_pin_;
  }

  // Looks up kFiles new files, far more than the budget: older inodes get evicted.
  void crowd_out(const std::string& prefix = "f") {
    for (int i = 0; i < kFiles; ++i) {
      ASSERT_TRUE(write_file(tmp_ / (prefix + std::to_string(i)), "x"));
      ref(prefix + std::to_string(i));
    }
  }

  // The descriptor still names the object the inode was made for.
  static void expect_same(Inode& inode) {
    PathFd fd = inode.pin();
    ASSERT_TRUE(fd.ok()) << strerror(fd.error().code);
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    EXPECT_EQ(st.st_ino, inode.ino);
    EXPECT_EQ(st.st_dev, inode.dev);
  }

  TempDir tmp_;
  InodeTable table_;
  std::unique_ptr<PathFd> root_pin_;
};

TEST_F(InodeTableTest, DescriptorsStayWithinTheBudgetAndReopenByHandle) {
  if (!table_.handles()) GTEST_SKIP() << "no file handles here (needs CAP_DAC_READ_SEARCH)";
  std::vector<std::shared_ptr<Inode>> inodes;
  for (int i = 0; i < kFiles; ++i) {
    std::string name(i % 10 == 0 ? "d" : "f");  // not "d" + ...: GCC 12 -O3 false -Wrestrict
    name += std::to_string(i);
    if (i % 10 == 0) ASSERT_EQ(::mkdir((tmp_ / name).c_str(), 0755), 0);
    else if (i % 10 == 1) ASSERT_EQ(::symlink("target", (tmp_ / name).c_str()), 0);
    else ASSERT_TRUE(write_file(tmp_ / name, name));
    inodes.push_back(ref(name));
  }
  BackendStats s = table_.stats();
  EXPECT_EQ(s.inodes, kFiles + 1u);
  EXPECT_LE(s.fds, kBudget) << "evicted down to the budget";
  EXPECT_GE(s.evictions, kFiles + 1 - kBudget);

  // Every inode, files, directories and symlinks alike, reopens to its own object.
  for (auto& inode : inodes) expect_same(*inode);
  s = table_.stats();
  EXPECT_GE(s.reopens, kFiles - kBudget);
  EXPECT_EQ(s.reopen_failures, 0u);
  EXPECT_LE(s.fds, kBudget + 1) << "reopens evict others in turn";
}

TEST_F(InodeTableTest, PinnedAndOpenInodesKeepTheirDescriptor) {
  if (!table_.handles()) GTEST_SKIP() << "no file handles here (needs CAP_DAC_READ_SEARCH)";
  ASSERT_TRUE(write_file(tmp_ / "pinned", "p"));
  ASSERT_TRUE(write_file(tmp_ / "open", "o"));
  auto pinned = ref("pinned");
  auto open = ref("open");
  PathFd pin = pinned->pin();
  ASSERT_TRUE(pin.ok());
  int pinned_fd = pin;
  open->opens.fetch_add(1);
  ASSERT_NO_FATAL_FAILURE(crowd_out());
  EXPECT_GT(table_.stats().evictions, 0u);
  // Still the same descriptor, still open on the same file (not closed and reused).
  PathFd again = pinned->pin();
  EXPECT_EQ(static_cast<int>(again), pinned_fd);
  expect_same(*pinned);
  uint64_t reopens = table_.stats().reopens;
  expect_same(*open);
  EXPECT_EQ(table_.stats().reopens, reopens) << "an open file was never evicted";
  open->opens.fetch_sub(1);
}

TEST_F(InodeTableTest, RemovedWhileEvictedIsStale) {
  if (!table_.handles()) GTEST_SKIP() << "no file handles here (needs CAP_DAC_READ_SEARCH)";
  ASSERT_TRUE(write_file(tmp_ / "victim", "v"));
  auto victim = ref("victim");
  ASSERT_NO_FATAL_FAILURE(crowd_out());
  ASSERT_EQ(::unlink((tmp_ / "victim").c_str()), 0);
  // A new file may even get the old inode number; the handle's generation tells them apart.
  ASSERT_TRUE(write_file(tmp_ / "newcomer", "n"));
  PathFd fd = victim->pin();
  EXPECT_FALSE(fd.ok());
  EXPECT_EQ(fd.error().code, ESTALE);
  EXPECT_EQ(table_.stats().reopen_failures, 1u);
}

TEST_F(InodeTableTest, ReusedInodeNumberIsANewInode) {
  if (!table_.handles()) GTEST_SKIP() << "no file handles here (needs CAP_DAC_READ_SEARCH)";
  // tar replaces placeholder files with symlinks at the end: the placeholder's inode (still
  // known to the kernel, evicted here) is unlinked and ext4 hands its number to the symlink.
  ASSERT_TRUE(write_file(tmp_ / "placeholder", ""));
  auto old = ref("placeholder");
  ASSERT_NO_FATAL_FAILURE(crowd_out());
  ASSERT_EQ(::unlink((tmp_ / "placeholder").c_str()), 0);
  struct stat st {};
  std::string name;
  for (int i = 0; i < 50 && st.st_ino != old->ino; ++i) {
    name = "link" + std::to_string(i);
    ASSERT_EQ(::symlink("target", (tmp_ / name).c_str()), 0);
    ASSERT_EQ(::lstat((tmp_ / name).c_str(), &st), 0);
  }
  if (st.st_ino != old->ino) GTEST_SKIP() << "the file system did not reuse the inode number";
  auto fresh = ref(name);
  EXPECT_NE(fresh->nodeid, old->nodeid) << "a new object gets a new nodeid";
  EXPECT_TRUE(S_ISLNK(fresh->type));
  expect_same(*fresh);
  EXPECT_EQ(old->pin().error().code, ESTALE) << "the removed placeholder stays stale";
  EXPECT_EQ(table_.find(st.st_dev, st.st_ino), fresh);
  // Forgetting the old nodeid leaves the new one findable by its key.
  EXPECT_NE(table_.forget(old->nodeid, 1), nullptr);
  EXPECT_EQ(table_.find(st.st_dev, st.st_ino), fresh);
}

TEST(InodeTableBudget, ForgottenInodesGiveTheirDescriptorsBack) {
  TempDir tmp;
  InodeTable table(1000);
  int fd;
  ASSERT_NO_FATAL_FAILURE(install_root(table, tmp.path(), &fd));
  ASSERT_TRUE(write_file(tmp / "f", "x"));
  struct stat st;
  int f = openat(fd, "f", O_PATH | O_CLOEXEC);
  ASSERT_EQ(fstat(f, &st), 0);
  auto inode = table.ref(f, st);
  EXPECT_EQ(table.stats().fds, 2u);
  uint64_t id = inode->nodeid;
  inode.reset();
  EXPECT_NE(table.forget(id, 1), nullptr);  // the returned reference closes on destruction
  EXPECT_EQ(table.stats().fds, 1u);
  EXPECT_EQ(table.stats().inodes, 1u);
}

TEST_F(InodeTableTest, AReadableDescriptorKeepsItsNumberAndIsEvictedLikeAnother) {
  if (!table_.handles()) GTEST_SKIP() << "no file handles here (needs CAP_DAC_READ_SEARCH)";
  ASSERT_TRUE(write_file(tmp_ / "r", "data"));
  auto inode = ref("r");
  {
    PathFd fd = inode->pin();
    ASSERT_TRUE(fd.ok());
    EXPECT_NE(fcntl(fd, F_GETFL) & O_PATH, 0);
    EXPECT_EQ(inode->readable_fd(fd), int{fd}) << "same number, now readable";
    EXPECT_EQ(fcntl(fd, F_GETFL) & (O_ACCMODE | O_PATH), O_RDONLY);
    char c;
    EXPECT_EQ(pread(fd, &c, 1, 0), 1);
    EXPECT_EQ(inode->readable_fd(fd), int{fd}) << "once is enough";
  }
  crowd_out();
  EXPECT_GE(table_.stats().evictions, 1u);
  PathFd fd = inode->pin();  // reopened by handle: O_PATH again
  ASSERT_TRUE(fd.ok());
  EXPECT_NE(fcntl(fd, F_GETFL) & O_PATH, 0);
  EXPECT_EQ(inode->readable_fd(fd), int{fd});
  EXPECT_EQ(fcntl(fd, F_GETFL) & (O_ACCMODE | O_PATH), O_RDONLY);
}

TEST_F(InodeTableTest, AReadableReopenOpensTheFileForReadingAtOnce) {
  if (!table_.handles()) GTEST_SKIP() << "no file handles here (needs CAP_DAC_READ_SEARCH)";
  ASSERT_TRUE(write_file(tmp_ / "r", "data"));
  ASSERT_EQ(mkdir((tmp_ / "d").c_str(), 0755), 0);
  auto file = ref("r");
  auto dir = ref("d");
  crowd_out();
  uint64_t reopens = table_.stats().reopens;
  {
    PathFd fd = file->pin(Inode::Reopen::kReadable);
    ASSERT_TRUE(fd.ok()) << strerror(fd.error().code);
    EXPECT_EQ(table_.stats().reopens, reopens + 1);
    EXPECT_EQ(fcntl(fd, F_GETFL) & (O_ACCMODE | O_PATH), O_RDONLY) << "readable already";
    EXPECT_EQ(file->readable_fd(fd), int{fd}) << "nothing left to upgrade";
    char buf[4];
    EXPECT_EQ(pread(fd, buf, sizeof buf, 0), 4);
  }
  // Only regular files: a directory comes back as O_PATH whatever the caller asked.
  PathFd dfd = dir->pin(Inode::Reopen::kReadable);
  ASSERT_TRUE(dfd.ok());
  EXPECT_NE(fcntl(dfd, F_GETFL) & O_PATH, 0);
  // Evicted again, a plain pin() reopens O_PATH: the readable flag went with the old one.
  crowd_out("g");
  PathFd fd = file->pin();
  ASSERT_TRUE(fd.ok());
  EXPECT_NE(fcntl(fd, F_GETFL) & O_PATH, 0);
  EXPECT_EQ(file->readable_fd(fd), int{fd});
  EXPECT_EQ(fcntl(fd, F_GETFL) & (O_ACCMODE | O_PATH), O_RDONLY);
}

// Whether a thread of this process has the name `name` (/proc/self/task/*/comm).
bool thread_named(const std::string& name) {
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string line;
    if (std::getline(comm, line) && line == name) return true;
  }
  return false;
}

// The table's stats once its evictor thread has been idle for 100 ms (no pass begun, no
// descriptor closed): a pass the thread is still in would race with what a test checks.
BackendStats settled(const InodeTable& table) {
  BackendStats last = table.stats();
  for (int quiet = 0, rounds = 0; quiet < 50 && rounds < 5000; ++rounds) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    BackendStats now = table.stats();
    bool same = now.evictor_passes == last.evictor_passes && now.evictions == last.evictions;
    quiet = same ? quiet + 1 : 0;
    last = now;
  }
  return last;
}

// Adopts the object at `path` (any file system) into `table`, as a lookup would.
std::shared_ptr<Inode> adopt(InodeTable& table, const std::string& path) {
  int fd = ::open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
  EXPECT_GE(fd, 0) << path;
  struct stat st;
  EXPECT_EQ(fstat(fd, &st), 0) << path;
  return table.ref(fd, st);
}

// Creates `count` files prefix0, prefix1, ... in `dir` and adopts each into `table`.
void adopt_new_files(InodeTable& table, const TempDir& dir, const std::string& prefix,
                     size_t count, std::vector<std::shared_ptr<Inode>>& out) {
  for (size_t i = 0; i < count; ++i) {
    std::string name = prefix + std::to_string(i);
    ASSERT_TRUE(write_file(dir / name, name));
    out.push_back(adopt(table, dir / name));
  }
}

// Production tables evict in their own thread: the request that crosses the budget only
// wakes it (no scan, no closes of its own), and the thread brings the count back under.
TEST(InodeTableEvictor, TheRequestCrossingTheBudgetLeavesEvictionToTheThread) {
  TempDir tmp;
  InodeTable table(kBudget);
  int root;
  ASSERT_NO_FATAL_FAILURE(install_root(table, tmp.path(), &root));
  if (!table.handles()) GTEST_SKIP() << "no file handles here (needs CAP_DAC_READ_SEARCH)";
  EXPECT_TRUE(eventually([] { return thread_named("efuse-evict"); }));
  std::vector<std::shared_ptr<Inode>> inodes;
  // The root and kBudget + 2 files: over the budget, under the hard limit (half again).
  ASSERT_NO_FATAL_FAILURE(adopt_new_files(table, tmp, "f", kBudget + 2, inodes));
  BackendStats s = settled(table);
  EXPECT_LE(s.fds, kBudget);
  EXPECT_EQ(s.request_passes, 0u) << "no request evicted";
  EXPECT_GE(s.evictor_passes, 1u);
  // Woken at kBudget + 1 descriptors at the earliest, a pass closes down to three quarters.
  EXPECT_GE(s.evictions, kBudget + 1 - kBudget * 3 / 4);
  // Evicted by the thread, every inode reopens to its own object.
  for (auto& inode : inodes) {
    PathFd fd = inode->pin();
    ASSERT_TRUE(fd.ok()) << strerror(fd.error().code);
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    EXPECT_EQ(st.st_ino, inode->ino);
  }
  EXPECT_GE(table.stats().reopens, 1u);
}

// Requests evict only past the hard limit. The table holds inodes of another file system
// (/proc's, as a mount inside the source tree would give): those are never evicted, so the
// thread, woken at the budget, finds nothing, and the count climbs to the hard limit.
TEST(InodeTableEvictor, RequestsEvictOnlyPastTheHardLimit) {
  TempDir tmp;
  InodeTable table(kBudget);
  int root;
  ASSERT_NO_FATAL_FAILURE(install_root(table, tmp.path(), &root));
  if (!table.handles()) GTEST_SKIP() << "no file handles here (needs CAP_DAC_READ_SEARCH)";
  std::vector<std::string> others;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self"))
    others.push_back(e.path());
  size_t hard = kBudget + kBudget / 2;
  ASSERT_GT(others.size(), hard) << "too few entries in /proc/self";
  std::vector<std::shared_ptr<Inode>> inodes;
  for (size_t i = 0; i + 1 < hard; ++i) inodes.push_back(adopt(table, others[i]));
  BackendStats s = settled(table);
  EXPECT_EQ(s.fds, hard) << "the root and hard - 1 inodes, none evictable";
  EXPECT_GE(s.evictor_passes, 1u);
  EXPECT_EQ(s.request_passes, 0u);
  inodes.push_back(adopt(table, others[hard - 1]));  // one past the hard limit
  s = table.stats();
  EXPECT_EQ(s.request_passes, 1u);
  EXPECT_EQ(s.evictions, 0u);
  EXPECT_EQ(s.fds, hard + 1);
}

// The budget is the process's: a busy table crossing it wakes the thread of a quiet table
// that holds most of the descriptors, and that one gives up its share too, instead of the
// busy one evicting its whole working set.
TEST(InodeTableEvictor, EveryTableGivesUpItsShare) {
  TempDir tmp_quiet, tmp_busy;
  InodeTable quiet(kBudget), busy(kBudget);
  int quiet_root, busy_root;
  ASSERT_NO_FATAL_FAILURE(install_root(quiet, tmp_quiet.path(), &quiet_root));
  if (!quiet.handles()) GTEST_SKIP() << "no file handles here (needs CAP_DAC_READ_SEARCH)";
  std::vector<std::shared_ptr<Inode>> inodes;
  // The root and kBudget - 2 files.
  ASSERT_NO_FATAL_FAILURE(adopt_new_files(quiet, tmp_quiet, "q", kBudget - 2, inodes));
  ASSERT_NO_FATAL_FAILURE(install_root(busy, tmp_busy.path(), &busy_root));
  // 15 + 5 = 20 descriptors in the process: over by 4.
  ASSERT_NO_FATAL_FAILURE(adopt_new_files(busy, tmp_busy, "b", 4, inodes));
  BackendStats q = settled(quiet), b = settled(busy);
  EXPECT_LE(q.fds + b.fds, kBudget);
  EXPECT_GE(q.evictor_passes, 1u) << "the quiet table's thread was woken";
  EXPECT_GT(q.evictions, b.evictions) << "in proportion to what each holds";
  EXPECT_EQ(q.request_passes + b.request_passes, 0u);
}

}  // namespace
}  // namespace efuse::fs::passthrough
