#include "common/slot_file.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

namespace efuse {

struct SlotFile::Header {
  char magic[8];  // "EFUSEST\0"
  uint32_t version;
  uint32_t slot_size;
  std::atomic<uint64_t> used;   // slots ever handed out (the high-water mark)
  std::atomic<uint32_t> clean;  // 1: the writer stopped on purpose, state complete
  std::atomic<uint32_t> overflow;
};
static_assert(sizeof(SlotFile::Slot) == SlotFile::kSlotSize);

namespace {
constexpr char kMagic[8] = {'E', 'F', 'U', 'S', 'E', 'S', 'T', '\0'};
constexpr uint32_t kVersion = 1;
constexpr size_t kGrowSlots = 4096;  // 768 KiB at a time
}  // namespace

SlotFile::SlotFile(UniqueFd fd, unsigned char* base) : fd_(std::move(fd)), base_(base) {}

SlotFile::~SlotFile() { ::munmap(base_, kMaxSize); }

SlotFile::Header* SlotFile::header() const { return reinterpret_cast<Header*>(base_); }

static unsigned char* map(int fd) {
  // The whole range at once: pages past the file's end are never touched (grow() extends
  // the file first), and the address never changes, so slots can be pointed at.
  void* p = ::mmap(nullptr, SlotFile::kMaxSize, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_NORESERVE, fd, 0);
  return p == MAP_FAILED ? nullptr : static_cast<unsigned char*>(p);
}

Result<std::unique_ptr<SlotFile>> SlotFile::create(const std::string& name) {
  UniqueFd fd(::memfd_create(name.c_str(), MFD_CLOEXEC));
  if (!fd) return last_errno();
  if (::ftruncate(fd.get(), kHeaderSize) != 0) return last_errno();
  unsigned char* base = map(fd.get());
  if (base == nullptr) return last_errno();
  std::unique_ptr<SlotFile> f(new SlotFile(std::move(fd), base));
  Header* h = f->header();
  std::memcpy(h->magic, kMagic, sizeof kMagic);
  h->version = kVersion;
  h->slot_size = kSlotSize;
  return f;
}

Result<std::unique_ptr<SlotFile>> SlotFile::adopt(UniqueFd fd, std::string* why) {
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    *why = std::string("fstat: ") + strerror(errno);
    return last_errno();
  }
  if (!S_ISREG(st.st_mode) || static_cast<size_t>(st.st_size) < kHeaderSize ||
      static_cast<size_t>(st.st_size) > kMaxSize ||
      (static_cast<size_t>(st.st_size) - kHeaderSize) % kSlotSize != 0) {
    *why = "not a state file (size " + std::to_string(st.st_size) + ")";
    return Errno{EINVAL};
  }
  unsigned char* base = map(fd.get());
  if (base == nullptr) {
    *why = std::string("mmap: ") + strerror(errno);
    return last_errno();
  }
  std::unique_ptr<SlotFile> f(new SlotFile(std::move(fd), base));
  Header* h = f->header();
  if (std::memcmp(h->magic, kMagic, sizeof kMagic) != 0 || h->version != kVersion ||
      h->slot_size != kSlotSize) {
    *why = "not a state file of this efused (magic, version or slot size differ)";
    return Errno{EINVAL};
  }
  f->capacity_ = (static_cast<size_t>(st.st_size) - kHeaderSize) / kSlotSize;
  uint64_t used = h->used.load();
  if (used > f->capacity_) {
    *why = "state file truncated (" + std::to_string(used) + " slots used, room for " +
           std::to_string(f->capacity_) + ")";
    return Errno{EINVAL};
  }
  for (size_t i = used; i-- > 0;) {
    uint32_t k = f->slot(i)->kind.load();
    if (k == kFree) f->free_.push_back(static_cast<uint32_t>(i));
  }
  return f;
}

bool SlotFile::grow(size_t slots) {
  if (kHeaderSize + slots * kSlotSize > kMaxSize) return false;
  if (::ftruncate(fd_.get(), static_cast<off_t>(kHeaderSize + slots * kSlotSize)) != 0)
    return false;
  capacity_ = slots;
  return true;
}

SlotFile::Slot* SlotFile::alloc() {
  std::lock_guard lk(mu_);
  size_t i;
  if (!free_.empty()) {
    i = free_.back();
    free_.pop_back();
  } else {
    Header* h = header();
    i = h->used.load(std::memory_order_relaxed);
    if (i >= capacity_ && !grow(capacity_ + kGrowSlots)) {
      h->overflow.store(1);
      return nullptr;
    }
    h->used.store(i + 1, std::memory_order_release);
  }
  Slot* s = slot(i);
  s->kind.store(kFree, std::memory_order_relaxed);
  s->len = 0;
  for (auto& v : s->v) v.store(0, std::memory_order_relaxed);
  return s;
}

void SlotFile::free(Slot* s) {
  if (s == nullptr) return;
  s->kind.store(kFree, std::memory_order_release);
  size_t i = static_cast<size_t>(reinterpret_cast<unsigned char*>(s) - base_ - kHeaderSize) /
             kSlotSize;
  std::lock_guard lk(mu_);
  free_.push_back(static_cast<uint32_t>(i));
}

void SlotFile::for_each(Kind kind, const std::function<void(Slot&)>& fn) const {
  uint64_t used = header()->used.load(std::memory_order_acquire);
  for (size_t i = 0; i < used; ++i) {
    Slot* s = slot(i);
    if (s->kind.load(std::memory_order_acquire) == kind) fn(*s);
  }
}

bool SlotFile::incomplete() const { return header()->overflow.load() != 0; }

void SlotFile::mark_incomplete() { header()->overflow.store(1); }

bool SlotFile::clean() const { return header()->clean.load() != 0; }

void SlotFile::mark_clean(bool clean) { header()->clean.store(clean ? 1 : 0); }

}  // namespace efuse
