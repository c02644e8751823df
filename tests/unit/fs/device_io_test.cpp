// The device path's reads (fs/passthrough/device_io.h) on a real file: O_DIRECT through
// io_uring at aligned and unaligned offsets, lengths and buffers, compared with what a
// buffered pread returns.
#include "fs/passthrough/device_io.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "../testing/temp_dir.h"

namespace efuse::fs::passthrough {
namespace {

using efuse::testing::TempDir;

constexpr long kTmpfsMagic = 0x01021994;

class DeviceIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A file of 1 MiB and 1,000 bytes (its end is not aligned), random contents.
    data_.resize((1 << 20) + 1000);
    std::mt19937 rng(21);
    for (char& c : data_) c = static_cast<char>(rng());
    path_ = tmp_ / "f";
    int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, data_.data(), data_.size()), static_cast<ssize_t>(data_.size()));
    ASSERT_EQ(::fsync(fd), 0);
    ::close(fd);
    buffered_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(buffered_, 0);
    align_ = direct_io_alignment(buffered_);
  }
  void TearDown() override {
    if (buffered_ >= 0) ::close(buffered_);
    if (direct_ >= 0) ::close(direct_);
  }
  // Skips where $TMPDIR does no direct I/O (a tmpfs; the integration tests cover that).
  bool open_direct() {
    if (align_ == 0) return false;
    direct_ = ::open(path_.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    EXPECT_GE(direct_, 0) << strerror(errno);
    return direct_ >= 0;
  }

  TempDir tmp_;
  std::string path_;
  std::vector<char> data_;
  int buffered_ = -1, direct_ = -1;
  uint32_t align_ = 0;
};

TEST_F(DeviceIoTest, TmpfsReportsNoDirectIoAlignment) {
  struct statfs sf {};
  ASSERT_EQ(fstatfs(buffered_, &sf), 0);
  if (sf.f_type == kTmpfsMagic)
    EXPECT_EQ(align_, 0u);
  else
    EXPECT_GT(align_, 0u) << "TMPDIR is on a file system without direct I/O";
}

TEST_F(DeviceIoTest, AlignedReadsLandInTheCallersBuffer) {
  if (!open_direct()) GTEST_SKIP() << "TMPDIR does no direct I/O";
  void* p = nullptr;
  ASSERT_EQ(posix_memalign(&p, 4096, 256 * 1024), 0);
  std::span<char> buf(static_cast<char*>(p), 256 * 1024);
  for (uint64_t off : {0ul, 256ul * 1024, 768ul * 1024}) {
    auto n = direct_read(direct_, buf, off, align_);
    ASSERT_TRUE(n.ok()) << strerror(n.error());
    ASSERT_EQ(*n, buf.size());
    EXPECT_EQ(0, memcmp(buf.data(), data_.data() + off, buf.size())) << off;
  }
  // The last 128 KiB window runs past the end: short, with exactly the file's tail.
  auto n = direct_read(direct_, buf.first(128 * 1024), 1 << 20, align_);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1000u);
  EXPECT_EQ(0, memcmp(buf.data(), data_.data() + (1 << 20), 1000));
  // At and past the end: nothing.
  n = direct_read(direct_, buf.first(4096), data_.size() + 4096, align_);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  free(p);
}

TEST_F(DeviceIoTest, UnalignedHeadsTailsAndBuffersGoThroughTheBounceBuffer) {
  if (!open_direct()) GTEST_SKIP() << "TMPDIR does no direct I/O";
  std::vector<char> raw(300 * 1024);
  struct Case {
    uint64_t off;
    size_t len;
    size_t buf_at;  // the buffer starts this far into `raw` (1: never aligned)
  };
  for (const Case& c : {Case{1, 4095, 0}, Case{4095, 2, 0}, Case{100, 200 * 1024, 1},
                        Case{0, 4096, 1}, Case{(1 << 20) - 10, 4096, 3},
                        Case{12345, 131072, 0}, Case{(1 << 20) + 999, 10, 0}}) {
    std::span<char> buf(raw.data() + c.buf_at, c.len);
    auto n = direct_read(direct_, buf, c.off, align_);
    ASSERT_TRUE(n.ok()) << c.off << ": " << strerror(n.error());
    const size_t want = std::min<size_t>(c.len, data_.size() - c.off);
    ASSERT_EQ(*n, want) << c.off;
    EXPECT_EQ(0, memcmp(buf.data(), data_.data() + c.off, want)) << c.off << "+" << c.len;
  }
}

TEST_F(DeviceIoTest, ABadAlignmentOrDescriptorIsAnError) {
  std::vector<char> buf(4096);
  auto n = direct_read(buffered_, buf, 0, 3);  // not a power of two
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error(), EINVAL);
  n = direct_read(-1, buf, 0, 4096);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error(), EBADF);
}

// The readahead stream: sequential 128 KiB reads (as FUSE readahead sends them), odd-sized
// reads, reads that go back and jump ahead, reads past the end: always the file's bytes,
// with the shallowest window, 1 MiB and a window deeper than the file.
TEST_F(DeviceIoTest, AStreamReadsAheadAndReturnsTheFilesBytes) {
  if (!open_direct()) GTEST_SKIP() << "TMPDIR does no direct I/O";
  // The counters outlive every stream that bumps them (the last one is used below).
  const size_t depths[] = {0, size_t{1} << 20, size_t{16} << 20};
  std::array<StreamCounters, std::size(depths)> all_counters;
  std::unique_ptr<DirectStream> stream;
  for (size_t d = 0; d < std::size(depths); ++d) {
    const size_t depth = depths[d];
    SCOPED_TRACE(depth);
    int err = 0;
    StreamCounters& counters = all_counters[d];
    stream = DirectStream::create(direct_, align_, depth, &err, &counters);
    ASSERT_TRUE(stream) << strerror(err);
    EXPECT_EQ(stream->window(), DirectStream::window_for(depth));
    EXPECT_EQ(stream->buffer_bytes(), size_t{stream->window()} * DirectStream::kChunk);
    std::vector<char> buf(DirectStream::kChunk);
    // Sequential, whole file, then its end.
    std::string got;
    for (uint64_t off = 0;; off += buf.size()) {
      auto n = stream->read(buf, off);
      ASSERT_TRUE(n.ok()) << strerror(n.error());
      got.append(buf.data(), *n);
      if (*n < buf.size()) break;
    }
    ASSERT_EQ(got.size(), data_.size());
    EXPECT_TRUE(got == std::string(data_.begin(), data_.end()));
    DirectStream::Stats st = stream->stats();
    EXPECT_GE(st.chunks_read, data_.size() / DirectStream::kChunk);
    EXPECT_LT(st.chunks_waited, st.chunks_read) << "later chunks were read ahead";
    EXPECT_EQ(counters.chunks_read.load(), st.chunks_read);
    EXPECT_EQ(counters.chunks_waited.load(), st.chunks_waited);
    // Odd offsets and sizes, backwards and forwards, across chunk boundaries.
    std::mt19937 rng(7);
    for (int i = 0; i < 200; ++i) {
      uint64_t off = rng() % (data_.size() + 100);
      size_t len = 1 + rng() % (3 * DirectStream::kChunk);
      std::vector<char> b(len);
      auto n = stream->read(b, off);
      ASSERT_TRUE(n.ok()) << strerror(n.error());
      size_t want = off >= data_.size() ? 0 : std::min<size_t>(len, data_.size() - off);
      ASSERT_EQ(*n, want) << off << "+" << len;
      EXPECT_EQ(std::memcmp(b.data(), data_.data() + off, want), 0) << off << "+" << len;
    }
  }
  // The file changes (through efused: drop() is called): the new bytes are read.
  int w = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(w, 0);
  ASSERT_EQ(::pwrite(w, "CHANGED", 7, 4096 * 3), 7);
  ASSERT_EQ(::fsync(w), 0);
  ::close(w);
  stream->drop();
  std::vector<char> b(16);
  ASSERT_EQ(*stream->read(b, 4096 * 3), 16u);
  EXPECT_EQ(std::string(b.data(), 7), "CHANGED");
}

// A deep stream ramps up for a sequential reader and not for one that jumps: random reads
// pay for about one chunk ahead each, not for the 16 MiB window.
TEST_F(DeviceIoTest, AStreamReadsFarAheadOnlyForSequentialReaders) {
  if (!open_direct()) GTEST_SKIP() << "TMPDIR does no direct I/O";
  constexpr size_t kFile = size_t{16} << 20;
  std::vector<char> big(kFile);
  std::mt19937 rng(5);
  for (char& c : big) c = static_cast<char>(rng());
  const std::string path = tmp_ / "big";
  int w = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(w, 0);
  ASSERT_EQ(::write(w, big.data(), big.size()), static_cast<ssize_t>(big.size()));
  ASSERT_EQ(::fsync(w), 0);
  ::close(w);
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  int err = 0;
  auto stream = DirectStream::create(fd, align_, kFile, &err);
  ASSERT_TRUE(stream) << strerror(err);
  ASSERT_EQ(stream->window(), kFile / DirectStream::kChunk);
  // 24 jumps, each at least 3 chunks from every chunk read before.
  std::vector<char> b(4096);
  const size_t chunks = kFile / DirectStream::kChunk;
  for (int i = 0; i < 24; ++i) {
    const uint64_t off = ((static_cast<uint64_t>(i) * 5) % chunks) * DirectStream::kChunk + 512;
    auto n = stream->read(b, off);
    ASSERT_TRUE(n.ok()) << strerror(n.error());
    ASSERT_EQ(*n, b.size());
    EXPECT_EQ(std::memcmp(b.data(), big.data() + off, b.size()), 0) << off;
  }
  const DirectStream::Stats jumps = stream->stats();
  EXPECT_LE(jumps.chunks_read, 2u * 24) << "random reads read ahead at most one chunk each";
  // Sequential 256 KiB reads from the start: the window ramps to its depth.
  std::vector<char> r(2 * DirectStream::kChunk);
  for (uint64_t off = 0; off < (size_t{4} << 20); off += r.size()) {
    auto n = stream->read(r, off);
    ASSERT_TRUE(n.ok()) << strerror(n.error());
    ASSERT_EQ(*n, r.size());
    EXPECT_EQ(std::memcmp(r.data(), big.data() + off, r.size()), 0) << off;
  }
  const DirectStream::Stats seq = stream->stats();
  EXPECT_GE(seq.chunks_read - jumps.chunks_read, 64u) << "4 MiB read, far more issued ahead";
  stream.reset();
  ::close(fd);
}

// A stream's depth in chunks: whole chunks covering what was asked, within its bounds.
TEST(DirectStreamWindow, CoversTheDepthInWholeChunksWithinBounds) {
  constexpr size_t c = DirectStream::kChunk;
  EXPECT_EQ(DirectStream::window_for(0), DirectStream::kMinWindow);
  EXPECT_EQ(DirectStream::window_for(c), DirectStream::kMinWindow);
  EXPECT_EQ(DirectStream::window_for(8 * c), 8u);
  EXPECT_EQ(DirectStream::window_for(8 * c + 1), 9u);
  EXPECT_EQ(DirectStream::window_for(size_t{8} << 20), (size_t{8} << 20) / c);
  EXPECT_EQ(DirectStream::window_for(size_t{1} << 40), DirectStream::kMaxWindow);
}

// The read-ahead of a block device is what sysfs says for it (a partition: its disk's);
// a file system with no device behind it (device number 0:N, as tmpfs) has none.
TEST(DeviceReadahead, IsTheBlockDevicesOrNone) {
  EXPECT_EQ(device_readahead_bytes(makedev(0, 1234)), 0u);
  struct stat st;
  ASSERT_EQ(::stat("/", &st), 0);
  const size_t ra = device_readahead_bytes(st.st_dev);
  char path[96];
  snprintf(path, sizeof path, "/sys/dev/block/%u:%u", major(st.st_dev), minor(st.st_dev));
  if (::access(path, F_OK) != 0) {
    EXPECT_EQ(ra, 0u) << "no block device behind /";
    return;
  }
  // A disk has a queue; a partition's is its disk's, one level up.
  size_t kb = 0;
  for (const char* rel : {"/queue/read_ahead_kb", "/../queue/read_ahead_kb"}) {
    std::ifstream f(std::string(path) + rel);
    if (f >> kb) break;
  }
  EXPECT_EQ(ra, kb * 1024) << path;
}

}  // namespace
}  // namespace efuse::fs::passthrough
