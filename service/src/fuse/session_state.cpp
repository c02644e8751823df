// Session: the restart state (session.h, common/slot_file.h). INIT's outcome goes into the
// first bytes of the state's meta area; backing ids into SlotFile::kBacking and kBackingFh
// slots (session_backing.cpp keeps them current).
#include <cstring>

#include "common/log.h"
#include "fuse/session.h"
#include "fuse/session_request.h"

namespace fuse {

namespace {

// In the state's meta area, at offset 0 (the daemon's record follows at kSessionMetaSize).
struct SessionMeta {
  uint32_t magic;  // kMetaMagic once INIT was answered
  uint32_t major, minor, max_readahead, max_write;
  uint16_t max_pages, pad;
  uint64_t kernel_flags, flags;
};
constexpr uint32_t kMetaMagic = 0x45464e49;  // "INFE"
static_assert(sizeof(SessionMeta) <= 256);

}  // namespace

void Session::record_negotiated() {
  if (state_ == nullptr) return;
  SessionMeta m{};
  m.major = negotiated_.major;
  m.minor = negotiated_.minor;
  m.max_readahead = negotiated_.max_readahead;
  m.max_write = negotiated_.max_write;
  m.max_pages = negotiated_.max_pages;
  m.kernel_flags = negotiated_.kernel_flags;
  m.flags = negotiated_.flags;
  m.magic = kMetaMagic;
  std::memcpy(state_->meta(), &m, sizeof m);
}

void Session::record_state(efuse::SlotFile* file) {
  state_ = file;
  if (initialized()) record_negotiated();
}

efuse::Status Session::restore_state(efuse::SlotFile* file, std::string* why) {
  SessionMeta m;
  std::memcpy(&m, file->meta(), sizeof m);
  if (m.magic != kMetaMagic) {
    *why = "the state holds no INIT (the previous efused never answered one)";
    return efuse::Errno{EINVAL};
  }
  if (m.major != k::kVersion || m.minor < k::kMinMinor || m.minor > k::kMinorVersion ||
      m.max_write < 4096 || m.max_write > opts_.max_write || m.max_pages == 0 ||
      (m.flags & ~m.kernel_flags) != 0) {
    *why = "the recorded INIT parameters do not add up (FUSE " + std::to_string(m.major) + "." +
           std::to_string(m.minor) + ", max_write " + std::to_string(m.max_write) + ")";
    return efuse::Errno{EINVAL};
  }
  std::unordered_map<uint64_t, Backing> backing;
  std::unordered_map<uint64_t, uint64_t> backing_fh;
  std::unordered_map<uint64_t, efuse::SlotFile::Slot*> fh_slots;
  file->for_each(efuse::SlotFile::kBacking, [&](efuse::SlotFile::Slot& s) {
    Backing& b = backing[s.v[0].load()];
    b.id = static_cast<int>(s.v[1].load());
    b.opens = static_cast<uint32_t>(s.v[2].load());
    b.slot = &s;
  });
  file->for_each(efuse::SlotFile::kBackingFh, [&](efuse::SlotFile::Slot& s) {
    backing_fh[s.v[0].load()] = s.v[1].load();
    fh_slots[s.v[0].load()] = &s;
  });
  for (const auto& [fh, nodeid] : backing_fh) {
    if (!backing.count(nodeid)) {
      *why = "passthrough handle " + std::to_string(fh) + " has no backing id";
      return efuse::Errno{EINVAL};
    }
  }
  Negotiated& n = negotiated_;
  n.major = m.major;
  n.minor = m.minor;
  n.max_readahead = m.max_readahead;
  n.max_write = m.max_write;
  n.max_pages = m.max_pages;
  n.kernel_flags = m.kernel_flags;
  n.flags = m.flags;
  fs::Capabilities caps;
  caps.writeback_cache = n.has(k::init::kWritebackCache);
  caps.passthrough = n.has(k::init::kPassthrough);
  caps.posix_locks = n.has(k::init::kPosixLocks);
  caps.flock_locks = n.has(k::init::kFlockLocks);
  fs_.init(caps);
  {
    std::lock_guard lk(backing_mu_);
    backing_ = std::move(backing);
    backing_fh_ = std::move(backing_fh);
    backing_fh_slots_ = std::move(fh_slots);
  }
  state_ = file;
  initialized_.store(true, std::memory_order_release);
  LOG_INFO("resumed FUSE 7.%u connection without INIT: max_write %u, passthrough %s, "
           "io_uring %s; %zu passthrough backing ids kept",
           n.minor, n.max_write, caps.passthrough ? "on" : "off",
           n.has(k::init::kOverIoUring) ? "on" : "off", backing_.size());
  return {};
}

}  // namespace fuse
