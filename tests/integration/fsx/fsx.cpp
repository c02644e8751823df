// efuse_fsx: an fsx-style randomized file tester.
//
// Runs a long, reproducible random sequence of operations (pwrite, pread, ftruncate,
// mmap read/write, fallocate, fsync, reopen, copy_file_range) against one file while
// keeping an in-memory model of what the file must contain. Every read (pread, mmap,
// periodic full read-back, fstat size) is checked against the model.
//
// The op sequence and all written data derive from the seed alone, so a failure is
// reproduced by re-running with the printed seed and options.
//
// Exit status: 0 all ops OK, 1 data or size mismatch, 2 unexpected syscall error or bad usage.

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

constexpr int kExitOk = 0;
constexpr int kExitMismatch = 1;
constexpr int kExitError = 2;

constexpr uint64_t kMaxOpLen = 64 << 10;
constexpr uint64_t kFullCheckInterval = 100;
constexpr uint64_t kProgressInterval = 10000;

__attribute__((format(printf, 1, 2))) std::string strprintf(const char* fmt, ...) {
  std::array<char, 512> buf{};
  va_list args;
  va_start(args, fmt);
  vsnprintf(buf.data(), buf.size(), fmt, args);
  va_end(args);
  return buf.data();
}

// ---------------------------------------------------------------------------------------
// Command line

struct Options {
  uint64_t ops = 10000;
  std::optional<uint64_t> seed;
  uint64_t maxSize = 1 << 20;
  bool useMmap = true;
  bool quiet = false;
  uint64_t injectCorruptionAt = 0;  // hidden self-test flag; 0 = never
  std::string path;
};

void printUsage() {
  std::fprintf(stderr,
               "usage: efuse_fsx [--ops N] [--seed S] [--max-size BYTES] [--no-mmap] [--quiet] FILE\n"
               "  --ops N           number of random operations (default 10000)\n"
               "  --seed S          random seed (default: random; always printed)\n"
               "  --max-size BYTES  largest file size to create, k/m/g suffixes allowed (default 1m)\n"
               "  --no-mmap         do not use mmap reads/writes\n"
               "  --quiet           no progress output\n");
}

// Parses a non-negative integer, optionally followed by a k/m/g binary suffix.
std::optional<uint64_t> parseNumber(std::string_view text, bool allowSuffix) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end == text.data()) return std::nullopt;
  std::string_view rest(end, text.data() + text.size() - end);
  if (rest.empty()) return value;
  size_t unit = std::string_view("kmg").find(static_cast<char>(std::tolower(rest[0])));
  if (!allowSuffix || rest.size() != 1 || unit == std::string_view::npos) return std::nullopt;
  int shift = 10 * static_cast<int>(unit + 1);
  if (value > (UINT64_MAX >> shift)) return std::nullopt;
  return value << shift;
}

std::optional<Options> parseArgs(int argc, char** argv) {
  Options opts;
  for (int i = 1; i < argc; ++i) {
    const char* flag = argv[i];
    std::string_view arg = flag;
    auto numberArg = [&](bool allowSuffix) -> std::optional<uint64_t> {
      if (i + 1 >= argc) return std::nullopt;
      return parseNumber(argv[++i], allowSuffix);
    };
    std::optional<uint64_t> number;
    if (arg == "--ops" && (number = numberArg(false))) {
      opts.ops = *number;
    } else if (arg == "--seed" && (number = numberArg(false))) {
      opts.seed = *number;
    } else if (arg == "--max-size" && (number = numberArg(true)) && *number > 0) {
      opts.maxSize = *number;
    } else if (arg == "--inject-corruption-at" && (number = numberArg(false))) {
      opts.injectCorruptionAt = *number;
    } else if (arg == "--no-mmap") {
      opts.useMmap = false;
    } else if (arg == "--quiet") {
      opts.quiet = true;
    } else if (!arg.starts_with("-") && opts.path.empty()) {
      opts.path = arg;
    } else {
      std::fprintf(stderr, "efuse_fsx: bad or incomplete argument '%s'\n", flag);
      return std::nullopt;
    }
  }
  if (opts.path.empty()) return std::nullopt;
  return opts;
}

// ---------------------------------------------------------------------------------------
// Deterministic randomness. mt19937_64 output is specified by the standard, and we avoid
// std::uniform_int_distribution (implementation-defined), so a seed means the same op
// sequence with any standard library.

class Random {
 public:
  explicit Random(uint64_t seed) : engine_(seed) {}
  uint64_t below(uint64_t n) { return n == 0 ? 0 : engine_() % n; }  // [0, n)
  bool oneIn(uint64_t n) { return below(n) == 0; }

 private:
  std::mt19937_64 engine_;
};

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The bytes written by op `opNumber`: a pure function of (seed, opNumber, index).
void fillPattern(uint8_t* out, size_t len, uint64_t seed, uint64_t opNumber) {
  uint64_t state = seed ^ (opNumber * 0xD6E8FEB86659FD93ULL);
  for (size_t i = 0; i < len; i += 8) {
    uint64_t word = splitmix64(state);
    std::memcpy(out + i, &word, std::min<size_t>(8, len - i));
  }
}

// ---------------------------------------------------------------------------------------
// Operation log

enum class OpKind : uint8_t {
  Write, Read, Truncate, MapRead, MapWrite, Fallocate, Sync, Reopen, CopyRange, FullCheck, Inject
};
constexpr size_t kOpKindCount = static_cast<size_t>(OpKind::Inject) + 1;

const char* opName(OpKind kind) {
  constexpr std::array<const char*, kOpKindCount> names{
      "write", "read", "truncate", "mapread", "mapwrite", "fallocate",
      "sync", "reopen", "copy_range", "fullcheck", "inject"};
  return names[static_cast<size_t>(kind)];
}

struct FallocMode {
  int flags;
  const char* name;
};
constexpr std::array<FallocMode, 3> kFallocModes{{
    {0, "0"},
    {FALLOC_FL_KEEP_SIZE, "KEEP_SIZE"},
    {FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "PUNCH_HOLE|KEEP_SIZE"},
}};

struct OpRecord {
  uint64_t number = 0;
  OpKind kind = OpKind::Write;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t aux = 0;  // truncate: new size; copy: destination; fallocate: mode index; sync/mapwrite: flag
  uint64_t sizeBefore = 0;
  uint64_t sizeAfter = 0;
};

std::string describe(const OpRecord& op) {
  std::string text = strprintf("#%-7" PRIu64 " %-10s ", op.number, opName(op.kind));
  auto range = [&](uint64_t start) {
    return strprintf("0x%06" PRIx64 "..0x%06" PRIx64 " (len 0x%" PRIx64 ")", start,
                     start + op.length, op.length);
  };
  switch (op.kind) {
    case OpKind::Write:
    case OpKind::Read:
    case OpKind::MapRead: text += range(op.offset); break;
    case OpKind::MapWrite: text += range(op.offset) + (op.aux ? " +msync" : ""); break;
    case OpKind::Truncate: text += strprintf("to 0x%" PRIx64, op.aux); break;
    case OpKind::Fallocate: text += range(op.offset) + " mode " + kFallocModes[op.aux].name; break;
    case OpKind::Sync: text += op.aux ? "fdatasync" : "fsync"; break;
    case OpKind::CopyRange: text += range(op.offset) + strprintf(" -> 0x%06" PRIx64, op.aux); break;
    case OpKind::Inject:
      text += strprintf("byte at 0x%06" PRIx64 ", then verify ", op.aux) + range(op.offset);
      break;
    case OpKind::Reopen:
    case OpKind::FullCheck: break;
  }
  return text + strprintf("  [size 0x%" PRIx64 " -> 0x%" PRIx64 "]", op.sizeBefore, op.sizeAfter);
}

// Ring buffer with the most recent operations, printed on failure.
class OpLog {
 public:
  OpRecord& push(const OpRecord& op) {
    OpRecord& slot = ring_[count_++ % ring_.size()];
    slot = op;
    return slot;
  }
  void dropLast() { --count_; }
  void print(FILE* out) const {
    uint64_t first = count_ > ring_.size() ? count_ - ring_.size() : 0;
    std::fprintf(out, "fsx: last %" PRIu64 " ops (oldest first):\n", count_ - first);
    for (uint64_t i = first; i < count_; ++i) {
      std::fprintf(out, "  %s\n", describe(ring_[i % ring_.size()]).c_str());
    }
  }

 private:
  std::array<OpRecord, 20> ring_{};
  uint64_t count_ = 0;
};

// ---------------------------------------------------------------------------------------
// The tester

class Fsx;
Fsx* gActiveTester = nullptr;  // for the SIGBUS handler

class Fsx {
 public:
  Fsx(Options opts, uint64_t seed)
      : opts_(std::move(opts)), seed_(seed), rng_(seed),
        pageSize_(static_cast<uint64_t>(sysconf(_SC_PAGESIZE))),
        maxOpLen_(std::min(kMaxOpLen, opts_.maxSize)), mmapEnabled_(opts_.useMmap) {
    fallocEnabled_.fill(true);
  }

  int run();
  [[noreturn]] void onSigbus() {
    fail(kExitMismatch, "SIGBUS while accessing an mmap window inside EOF (file shorter than expected?)");
  }

 private:
  // Operations. Each returns false if it was not applicable and nothing was done.
  bool runRandomOp();
  bool opWrite();
  bool opRead();
  bool opTruncate();
  bool opMapRead();
  bool opMapWrite();
  bool opFallocate();
  bool opSync();
  bool opReopen();
  bool opCopyRange();
  void fullCheck();
  void injectCorruption();

  // Building blocks.
  void beginOp(OpKind kind, uint64_t offset = 0, uint64_t length = 0, uint64_t aux = 0);
  void endOp() { current_->sizeAfter = size(); }
  uint64_t size() const { return model_.size(); }
  uint64_t pickOffset(uint64_t limit);
  uint64_t pickLength(uint64_t maxLen);
  uint64_t pageDown(uint64_t x) const { return x & ~(pageSize_ - 1); }
  uint64_t pageUp(uint64_t x) const { return pageDown(x + pageSize_ - 1); }
  void modelWrite(uint64_t offset, const uint8_t* data, uint64_t len);
  void openFile(int flags);
  void truncateFile(uint64_t newSize);
  size_t preadFully(uint8_t* buf, size_t len, uint64_t offset);
  void pwriteFully(const uint8_t* buf, size_t len, uint64_t offset);
  void readAndVerify(uint64_t offset, uint64_t len);
  void maybeReadBack(uint64_t offset, uint64_t len);
  bool mapReadAndVerify(uint64_t offset, uint64_t len);
  uint8_t* mapWindow(uint64_t start, uint64_t len, int prot);
  void checkSize(const char* after);
  void verifyBytes(const char* source, uint64_t fileOffset, const uint8_t* actual, size_t len);
  void verifyZeros(const char* source, uint64_t fileOffset, const uint8_t* actual, size_t len);
  void notice(const std::string& message) { std::printf("fsx: %s\n", message.c_str()); }
  [[noreturn]] void failErrno(const char* call, int err);
  [[noreturn]] void fail(int exitCode, const std::string& message);

  Options opts_;
  uint64_t seed_;
  Random rng_;
  uint64_t pageSize_;
  uint64_t maxOpLen_;
  int fd_ = -1;
  std::vector<uint8_t> model_;  // expected file content; its size is the expected file size
  std::vector<uint8_t> buf_;    // scratch I/O buffer
  uint64_t opNumber_ = 0;
  OpLog log_;
  OpRecord* current_ = nullptr;
  bool mmapEnabled_;
  std::array<bool, kFallocModes.size()> fallocEnabled_{};
  bool copyEnabled_ = true;
  std::array<uint64_t, kOpKindCount> opCounts_{};
};

// ---- reporting ----

void Fsx::fail(int exitCode, const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "fsx: FAILURE at op #%" PRIu64 " (seed %" PRIu64 ")\n", opNumber_, seed_);
  if (current_) std::fprintf(stderr, "fsx: op: %s\n", describe(*current_).c_str());
  std::fprintf(stderr, "fsx: %s\n", message.c_str());
  std::string inject = opts_.injectCorruptionAt
                           ? strprintf(" --inject-corruption-at %" PRIu64, opts_.injectCorruptionAt)
                           : "";
  std::fprintf(stderr, "fsx: reproduce with: efuse_fsx --seed %" PRIu64 " --ops %" PRIu64
               " --max-size %" PRIu64 "%s%s FILE\n", seed_, opNumber_, opts_.maxSize,
               opts_.useMmap ? "" : " --no-mmap", inject.c_str());
  log_.print(stderr);
  std::fflush(stderr);
  std::exit(exitCode);
}

void Fsx::failErrno(const char* call, int err) {
  fail(kExitError, strprintf("unexpected error: %s failed: errno %d (%s)", call, err, std::strerror(err)));
}

std::string hexLine(const uint8_t* bytes, size_t count) {
  std::string line;
  for (size_t i = 0; i < count; ++i) line += strprintf(" %02x", bytes[i]);
  return line;
}

void Fsx::verifyBytes(const char* source, uint64_t fileOffset, const uint8_t* actual, size_t len) {
  if (len == 0) return;
  const uint8_t* expected = model_.data() + fileOffset;
  auto [badExpected, badActual] = std::mismatch(expected, expected + len, actual);
  if (badExpected == expected + len) return;
  size_t firstBad = badExpected - expected;
  size_t lastBad = firstBad, badCount = 0;
  for (size_t i = firstBad; i < len; ++i) {
    if (expected[i] != actual[i]) {
      lastBad = i;
      ++badCount;
    }
  }
  // Dump 32 bytes starting at the 16-byte-aligned file offset at or before the first bad byte.
  size_t dumpStart = firstBad - std::min<size_t>(firstBad, (fileOffset + firstBad) % 16);
  size_t dumpLen = std::min<size_t>(32, len - dumpStart);
  uint64_t dumpOffset = fileOffset + dumpStart;
  fail(kExitMismatch,
       strprintf("%s: data mismatch at file offset 0x%" PRIx64 " (%zu bad bytes up to 0x%" PRIx64 ")\n",
                 source, fileOffset + firstBad, badCount, fileOffset + lastBad) +
           strprintf("  expected @0x%06" PRIx64 ":", dumpOffset) + hexLine(expected + dumpStart, dumpLen) +
           strprintf("\n  actual   @0x%06" PRIx64 ":", dumpOffset) + hexLine(actual + dumpStart, dumpLen));
}

// Checks bytes that must read as zero although they are not in the model (mmap tail past EOF).
void Fsx::verifyZeros(const char* source, uint64_t fileOffset, const uint8_t* actual, size_t len) {
  const uint8_t* bad = std::find_if(actual, actual + len, [](uint8_t b) { return b != 0; });
  if (bad == actual + len) return;
  size_t index = bad - actual;
  fail(kExitMismatch, strprintf("%s: byte 0x%02x at 0x%" PRIx64 " beyond EOF 0x%" PRIx64
                                " in the last mapped page; expected zero",
                                source, *bad, fileOffset + index, size()));
}

void Fsx::checkSize(const char* after) {
  struct stat st{};
  if (fstat(fd_, &st) != 0) failErrno("fstat", errno);
  if (static_cast<uint64_t>(st.st_size) != size()) {
    fail(kExitMismatch, strprintf("size mismatch after %s: fstat says 0x%" PRIx64 ", expected 0x%" PRIx64,
                                  after, static_cast<uint64_t>(st.st_size), size()));
  }
}

// ---- I/O helpers ----

void Fsx::openFile(int flags) {
  fd_ = open(opts_.path.c_str(), O_RDWR | flags, 0644);
  if (fd_ < 0) failErrno("open", errno);
}

void Fsx::truncateFile(uint64_t newSize) {
  if (ftruncate(fd_, static_cast<off_t>(newSize)) != 0) failErrno("ftruncate", errno);
  model_.resize(newSize, 0);
  checkSize("ftruncate");
}

// Reads up to len bytes, looping over short reads; stops early only at EOF.
size_t Fsx::preadFully(uint8_t* buf, size_t len, uint64_t offset) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd_, buf + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) failErrno("pread", errno);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

void Fsx::pwriteFully(const uint8_t* buf, size_t len, uint64_t offset) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd_, buf + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) failErrno("pwrite", errno);
    if (n == 0) fail(kExitError, "pwrite wrote 0 bytes");
    done += static_cast<size_t>(n);
  }
}

void Fsx::modelWrite(uint64_t offset, const uint8_t* data, uint64_t len) {
  if (offset + len > size()) model_.resize(offset + len, 0);
  std::memcpy(model_.data() + offset, data, len);
}

// Maps [start, start+len) of the file (start page aligned). Returns nullptr if the file
// system does not support this kind of mapping, after disabling mmap ops.
uint8_t* Fsx::mapWindow(uint64_t start, uint64_t len, int prot) {
  void* p = mmap(nullptr, len, prot, MAP_SHARED, fd_, static_cast<off_t>(start));
  if (p != MAP_FAILED) return static_cast<uint8_t*>(p);
  if (errno != ENODEV) failErrno("mmap", errno);
  notice("mmap(MAP_SHARED) not supported (ENODEV); disabling mmap ops");
  mmapEnabled_ = false;
  return nullptr;
}

// ---- random parameters ----

// A random offset in [0, limit): often page aligned or near the current EOF.
uint64_t Fsx::pickOffset(uint64_t limit) {
  if (limit == 0) return 0;
  uint64_t offset = 0;
  switch (rng_.below(8)) {
    case 0:
    case 1: offset = pageDown(rng_.below(limit)); break;
    case 2:  // within a page of EOF
      offset = size() + rng_.below(2 * pageSize_ + 1);
      offset = offset > pageSize_ ? offset - pageSize_ : 0;
      break;
    default: offset = rng_.below(limit); break;
  }
  return std::min(offset, limit - 1);
}

// A random length in [1, maxLen] (maxLen >= 1): sometimes tiny, sometimes whole pages.
uint64_t Fsx::pickLength(uint64_t maxLen) {
  switch (rng_.below(8)) {
    case 0: return 1 + rng_.below(std::min<uint64_t>(maxLen, 16));
    case 1: return std::min(maxLen, pageSize_ * (1 + rng_.below(std::max<uint64_t>(1, maxLen / pageSize_))));
    default: return 1 + rng_.below(maxLen);
  }
}

void Fsx::beginOp(OpKind kind, uint64_t offset, uint64_t length, uint64_t aux) {
  current_ = &log_.push(OpRecord{opNumber_, kind, offset, length, aux, size(), size()});
  ++opCounts_[static_cast<size_t>(kind)];
}

// ---- operations ----

bool Fsx::opWrite() {
  uint64_t offset = pickOffset(opts_.maxSize);
  uint64_t len = pickLength(std::min(maxOpLen_, opts_.maxSize - offset));
  beginOp(OpKind::Write, offset, len);
  buf_.resize(len);
  fillPattern(buf_.data(), len, seed_, opNumber_);
  pwriteFully(buf_.data(), len, offset);
  modelWrite(offset, buf_.data(), len);
  checkSize("pwrite");
  maybeReadBack(offset, len);
  return true;
}

// Reads may start or end beyond EOF; the byte count returned must match the model too.
void Fsx::readAndVerify(uint64_t offset, uint64_t len) {
  buf_.resize(len);
  size_t got = preadFully(buf_.data(), len, offset);
  uint64_t expected = offset < size() ? std::min(len, size() - offset) : 0;
  verifyBytes("pread", offset, buf_.data(), std::min<uint64_t>(got, expected));
  if (got != expected) {
    fail(kExitMismatch, strprintf("pread returned %zu bytes, expected %" PRIu64 " (file size 0x%" PRIx64 ")",
                                  got, expected, size()));
  }
}

// Catches a bad write before later ops can overwrite or truncate the evidence away.
void Fsx::maybeReadBack(uint64_t offset, uint64_t len) {
  if (rng_.oneIn(4)) readAndVerify(offset, len);
}

bool Fsx::opRead() {
  uint64_t offset = pickOffset(size() + pageSize_);
  uint64_t len = pickLength(maxOpLen_);
  beginOp(OpKind::Read, offset, len);
  readAndVerify(offset, len);
  return true;
}

// Half of the truncates move EOF by at most one op length, the rest anywhere.
bool Fsx::opTruncate() {
  bool grow = size() == 0 || (size() < opts_.maxSize && rng_.oneIn(2));
  uint64_t room = grow ? opts_.maxSize - size() : size();
  uint64_t delta = rng_.oneIn(2) ? pickLength(std::min(maxOpLen_, room)) : 1 + rng_.below(room);
  uint64_t newSize = grow ? size() + delta : size() - delta;
  if (rng_.oneIn(4)) newSize = pageDown(newSize);
  beginOp(OpKind::Truncate, 0, 0, newSize);
  truncateFile(newSize);
  return true;
}

// Maps only whole pages that start before EOF, so nothing past the EOF page is touched.
// If the EOF page is mapped, its tail beyond EOF must read as zeros.
bool Fsx::mapReadAndVerify(uint64_t offset, uint64_t len) {
  uint64_t mapStart = pageDown(offset);
  uint64_t mapEnd = pageUp(offset + len);
  uint8_t* map = mapWindow(mapStart, mapEnd - mapStart, PROT_READ);
  if (!map) return false;
  verifyBytes("mmap read", offset, map + (offset - mapStart), len);
  if (mapEnd > size()) verifyZeros("mmap read", size(), map + (size() - mapStart), mapEnd - size());
  if (munmap(map, mapEnd - mapStart) != 0) failErrno("munmap", errno);
  return true;
}

bool Fsx::opMapRead() {
  if (!mmapEnabled_ || size() == 0) return false;
  uint64_t offset = pickOffset(size());
  uint64_t len = pickLength(std::min(maxOpLen_, size() - offset));
  beginOp(OpKind::MapRead, offset, len);
  if (mapReadAndVerify(offset, len)) return true;
  log_.dropLast();
  return false;
}

// Extends the file first if needed: stores through a mapping never reach past EOF.
bool Fsx::opMapWrite() {
  if (!mmapEnabled_) return false;
  uint64_t offset = pickOffset(opts_.maxSize);
  uint64_t len = pickLength(std::min(maxOpLen_, opts_.maxSize - offset));
  bool doMsync = rng_.oneIn(2);
  beginOp(OpKind::MapWrite, offset, len, doMsync);
  if (offset + len > size()) truncateFile(offset + len);
  uint64_t mapStart = pageDown(offset);
  uint64_t mapLen = pageUp(offset + len) - mapStart;
  uint8_t* map = mapWindow(mapStart, mapLen, PROT_READ | PROT_WRITE);
  if (!map) return true;  // mmap unsupported; the extending ftruncate did happen, keep it logged
  buf_.resize(len);
  fillPattern(buf_.data(), len, seed_, opNumber_);
  std::memcpy(map + (offset - mapStart), buf_.data(), len);
  if (doMsync && msync(map, mapLen, MS_SYNC) != 0) failErrno("msync", errno);
  if (munmap(map, mapLen) != 0) failErrno("munmap", errno);
  modelWrite(offset, buf_.data(), len);
  maybeReadBack(offset, len);
  return true;
}

bool Fsx::opFallocate() {
  std::array<size_t, kFallocModes.size()> enabled{};
  size_t enabledCount = 0;
  for (size_t i = 0; i < kFallocModes.size(); ++i) {
    if (fallocEnabled_[i]) enabled[enabledCount++] = i;
  }
  if (enabledCount == 0) return false;
  size_t mode = enabled[rng_.below(enabledCount)];
  uint64_t offset = pickOffset(opts_.maxSize);
  uint64_t len = pickLength(std::min(maxOpLen_, opts_.maxSize - offset));
  beginOp(OpKind::Fallocate, offset, len, mode);
  if (fallocate(fd_, kFallocModes[mode].flags, static_cast<off_t>(offset), static_cast<off_t>(len)) != 0) {
    if (errno != EOPNOTSUPP && errno != ENOSYS) failErrno("fallocate", errno);
    notice(strprintf("fallocate(%s) not supported (%s); disabling it", kFallocModes[mode].name,
                     std::strerror(errno)));
    fallocEnabled_[mode] = false;
    log_.dropLast();
    return false;
  }
  int flags = kFallocModes[mode].flags;
  if (!(flags & FALLOC_FL_KEEP_SIZE) && offset + len > size()) model_.resize(offset + len, 0);
  if ((flags & FALLOC_FL_PUNCH_HOLE) && offset < size()) {
    std::fill_n(model_.begin() + static_cast<ptrdiff_t>(offset), std::min(len, size() - offset), 0);
  }
  checkSize("fallocate");
  return true;
}

bool Fsx::opSync() {
  bool dataOnly = rng_.oneIn(2);
  beginOp(OpKind::Sync, 0, 0, dataOnly);
  if ((dataOnly ? fdatasync(fd_) : fsync(fd_)) != 0) failErrno(dataOnly ? "fdatasync" : "fsync", errno);
  return true;
}

bool Fsx::opReopen() {
  beginOp(OpKind::Reopen);
  if (close(fd_) != 0) failErrno("close", errno);
  openFile(0);
  checkSize("reopen");
  return true;
}

// Copies a range that lies inside the file to a non-overlapping destination (possibly
// beyond EOF, which extends the file).
bool Fsx::opCopyRange() {
  if (!copyEnabled_ || size() == 0) return false;
  uint64_t len = pickLength(std::min(maxOpLen_, size()));
  uint64_t src = rng_.below(size() - len + 1);
  uint64_t dst = pickOffset(opts_.maxSize - len + 1);
  if (dst < src + len && src < dst + len) return false;  // overlapping
  beginOp(OpKind::CopyRange, src, len, dst);
  off64_t in = static_cast<off64_t>(src), out = static_cast<off64_t>(dst);
  for (uint64_t remaining = len; remaining > 0;) {
    ssize_t n = copy_file_range(fd_, &in, fd_, &out, remaining, 0);
    if (n < 0 && errno == EINTR) continue;
    bool unsupported = n < 0 && (errno == EOPNOTSUPP || errno == ENOSYS || errno == EXDEV);
    if (unsupported && remaining == len) {
      notice(strprintf("copy_file_range not supported (%s); disabling it", std::strerror(errno)));
      copyEnabled_ = false;
      log_.dropLast();
      return false;
    }
    if (n < 0) failErrno("copy_file_range", errno);
    if (n == 0) {
      fail(kExitMismatch, strprintf("copy_file_range hit EOF at source offset 0x%" PRIx64
                                    " inside the expected size 0x%" PRIx64,
                                    static_cast<uint64_t>(in), size()));
    }
    remaining -= static_cast<uint64_t>(n);
  }
  std::vector<uint8_t> copied(model_.begin() + static_cast<ptrdiff_t>(src),
                              model_.begin() + static_cast<ptrdiff_t>(src + len));
  modelWrite(dst, copied.data(), len);
  checkSize("copy_file_range");
  maybeReadBack(dst, len);
  return true;
}

// Reads the whole file back (one byte past the expected EOF too) and compares.
void Fsx::fullCheck() {
  beginOp(OpKind::FullCheck);
  checkSize("full check");
  buf_.resize(size() + 1);
  size_t got = preadFully(buf_.data(), size() + 1, 0);
  verifyBytes("full read-back", 0, buf_.data(), std::min<uint64_t>(got, size()));
  if (got != size()) {
    fail(kExitMismatch, strprintf("full read-back returned %zu bytes, expected %" PRIu64, got, size()));
  }
}

// Self-test: change one byte behind the model's back, then verify a range covering it
// with pread or an mmap read. An empty file grows by one byte, which the size check catches.
void Fsx::injectCorruption() {
  uint64_t target = rng_.below(size());  // 0 if the file is empty
  uint8_t byte = static_cast<uint8_t>(size() ? model_[target] ^ (1 + rng_.below(255)) : 0xA5);
  uint64_t start = target - rng_.below(std::min(target, pageSize_) + 1);
  uint64_t end = target + 1 + rng_.below(std::min(size() - target, pageSize_));  // <= size()
  uint64_t len = end - start;
  beginOp(OpKind::Inject, start, len, target);
  pwriteFully(&byte, 1, target);
  checkSize("injected corruption");
  if (!(mmapEnabled_ && rng_.oneIn(2) && mapReadAndVerify(start, len))) readAndVerify(start, len);
}

bool Fsx::runRandomOp() {
  struct Weighted { OpKind kind; uint64_t weight; };
  constexpr std::array<Weighted, 9> kWeights{{
      {OpKind::Write, 20}, {OpKind::Read, 16}, {OpKind::Truncate, 6},
      {OpKind::MapRead, 10}, {OpKind::MapWrite, 10}, {OpKind::Fallocate, 8},
      {OpKind::Sync, 3}, {OpKind::Reopen, 2}, {OpKind::CopyRange, 5},
  }};
  uint64_t total = 0;
  for (const auto& w : kWeights) total += w.weight;
  uint64_t pick = rng_.below(total);
  size_t i = 0;
  while (pick >= kWeights[i].weight) pick -= kWeights[i++].weight;
  switch (kWeights[i].kind) {
    case OpKind::Write: return opWrite();
    case OpKind::Read: return opRead();
    case OpKind::Truncate: return opTruncate();
    case OpKind::MapRead: return opMapRead();
    case OpKind::MapWrite: return opMapWrite();
    case OpKind::Fallocate: return opFallocate();
    case OpKind::Sync: return opSync();
    case OpKind::Reopen: return opReopen();
    case OpKind::CopyRange: return opCopyRange();
    default: return false;
  }
}

int Fsx::run() {
  std::printf("fsx: seed %" PRIu64 "\n", seed_);
  std::fflush(stdout);
  openFile(O_CREAT | O_TRUNC);
  checkSize("open(O_TRUNC)");
  for (opNumber_ = 1; opNumber_ <= opts_.ops; ++opNumber_) {
    if (opNumber_ == opts_.injectCorruptionAt) {
      injectCorruption();
    } else {
      while (!runRandomOp()) continue;  // re-pick if the op did not apply (write always does)
    }
    endOp();
    if (opNumber_ % kFullCheckInterval == 0) fullCheck();
    if (!opts_.quiet && opNumber_ % kProgressInterval == 0) {
      std::printf("fsx: %" PRIu64 " ops done, size 0x%" PRIx64 "\n", opNumber_, size());
      std::fflush(stdout);
    }
  }
  opNumber_ = opts_.ops;
  fullCheck();
  if (close(fd_) != 0) failErrno("close", errno);
  if (!opts_.quiet) {
    std::string counts;
    for (size_t k = 0; k < kOpKindCount; ++k) {
      if (opCounts_[k]) counts += strprintf(" %s=%" PRIu64, opName(static_cast<OpKind>(k)), opCounts_[k]);
    }
    std::printf("fsx: op counts:%s\n", counts.c_str());
  }
  std::printf("fsx: %" PRIu64 " ops OK (seed %" PRIu64 ")\n", opts_.ops, seed_);
  return kExitOk;
}

void handleSigbus(int) {
  if (gActiveTester) gActiveTester->onSigbus();  // not async-signal-safe, but we only exit
  _exit(kExitMismatch);
}

uint64_t randomSeed() {
  std::random_device device;
  return ((static_cast<uint64_t>(device()) << 32) | device()) % 1000000000000ULL;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<Options> opts = parseArgs(argc, argv);
  if (!opts) {
    printUsage();
    return kExitError;
  }
  uint64_t seed = opts->seed ? *opts->seed : randomSeed();
  Fsx tester(std::move(*opts), seed);
  gActiveTester = &tester;
  struct sigaction action{};
  action.sa_handler = handleSigbus;
  sigaction(SIGBUS, &action, nullptr);
  int status = tester.run();
  gActiveTester = nullptr;
  return status;
}
