#include "fuse/kernel_answers.h"

#include <time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>

#include "fuse/kernel.h"
#include "fuse/wire.h"

namespace fuse {

namespace {

efuse_handler_name_key name_key(uint64_t parent, std::string_view name) {
  efuse_handler_name_key key{};
  key.parent = parent;
  std::memcpy(key.name, name.data(), std::min(name.size(), sizeof key.name - 1));
  return key;
}

// Names the handlers can be asked about: the module hands them at most 255 bytes.
constexpr uint64_t kRootNodeid = 1;

bool storable(std::string_view name) { return !name.empty() && name.size() < EFUSE_HANDLER_NAME_MAX; }

// When a reply valid for `sec` + `nsec` from now stops being used (bpf_ktime_get_ns(),
// CLOCK_MONOTONIC); 0 for a reply valid for no time at all, which is not stored.
uint64_t expiry(uint64_t sec, uint32_t nsec) {
  if (sec == 0 && nsec == 0) return 0;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  constexpr uint64_t kMaxSec = 100ULL * 365 * 24 * 3600;  // no overflow, "never" in practice
  return (static_cast<uint64_t>(now.tv_sec) + std::min(sec, kMaxSec)) * 1000000000ULL +
         static_cast<uint64_t>(now.tv_nsec) + nsec;
}

}  // namespace

KernelAnswers::KernelAnswers(AnswerStore& store, size_t max_tier_nodes)
    : store_(store), max_tier_nodes_(max_tier_nodes), pool_(store.read_blocks()) {
  sets_ = static_cast<uint32_t>(pool_.size() / EFUSE_READ_WAYS);
  pool_ = pool_.first(static_cast<size_t>(sets_) * EFUSE_READ_WAYS);
  slots_.resize(pool_.size());
  // Whatever the mapping held before (a new array is zeroed): nothing is valid.
  for (efuse_read_block& b : pool_) __atomic_store_n(&b.gen, 0, __ATOMIC_SEQ_CST);
}

size_t KernelAnswers::attr_bucket(uint64_t nodeid) {
  return std::hash<uint64_t>{}(nodeid * 0x9e3779b97f4a7c15ULL) % kBuckets;
}

size_t KernelAnswers::name_bucket(uint64_t parent, std::string_view name) {
  return (std::hash<std::string_view>{}(name) ^ (parent * 0x9e3779b97f4a7c15ULL)) % kBuckets;
}

void KernelAnswers::set_exact(std::function<bool()> exact) {
  exact_ = std::move(exact);
  was_exact_.store(exact_ && exact_(), std::memory_order_relaxed);
}

uint64_t KernelAnswers::hold(uint64_t sec, uint32_t nsec) {
  const uint64_t until = expiry(sec, nsec);
  if (until == 0) return 0;
  const bool exact = exact_ && exact_();
  if (!exact && was_exact_.exchange(false, std::memory_order_relaxed)) drop_all();
  return exact ? UINT64_MAX : until;
}

uint64_t KernelAnswers::begin() {
  std::lock_guard lk(mu_);
  return seq_;
}

static FileStamp stamp_of(const kernel::fuse_attr& a) {
  return {a.size, a.mtime * 1000000000ULL + a.mtimensec};
}

void KernelAnswers::store_attr(uint64_t nodeid, std::span<const char> reply, uint64_t since) {
  if (reply.size() != sizeof(kernel::fuse_attr_out)) return;
  kernel::fuse_attr_out o;
  std::memcpy(&o, reply.data(), sizeof o);
  if (!pool_.empty()) {
    std::lock_guard lk(mu_);
    stamp_seen_locked(nodeid, stamp_of(o.attr));
  }
  efuse_handler_entry e{};
  e.expires = hold(o.attr_valid, o.attr_valid_nsec);
  if (e.expires == 0) return;  // attr_timeout 0: the kernel asks efused every time
  e.answer.nodeid = nodeid;
  e.answer.size = static_cast<uint32_t>(reply.size());
  std::memcpy(e.answer.data, reply.data(), reply.size());
  std::lock_guard lk(mu_);
  if (attr_stamp_[attr_bucket(nodeid)] > since || writers_.contains(nodeid)) {
    ++stores_skipped_;
    return;
  }
  if (store_.put_attr(nodeid, e))
    attrs_.insert(nodeid);
  else
    ++stores_skipped_;
}

void KernelAnswers::store_lookup(uint64_t parent, std::string_view name, int error,
                                 std::span<const char> reply, uint64_t since) {
  // An ENOENT error (negative_timeout 0) is valid for no time: the kernel caches nothing,
  // and neither do the handlers.
  if (error != 0 || reply.size() != sizeof(kernel::fuse_entry_out)) return;
  kernel::fuse_entry_out out;
  std::memcpy(&out, reply.data(), sizeof out);
  const uint64_t node = out.nodeid;
  if (node != 0) entry_sent(parent, name, node);
  if (node != 0 && !pool_.empty()) {
    std::lock_guard lk(mu_);
    stamp_seen_locked(node, stamp_of(out.attr));
  }
  efuse_handler_entry e{};
  e.expires = hold(out.entry_valid, out.entry_valid_nsec);
  if (node != 0) {
    // The entry carries the node's attributes: used while both are valid. The module
    // refuses an entry for the root, and "." and ".." are never asked.
    e.expires = std::min<uint64_t>(e.expires, hold(out.attr_valid, out.attr_valid_nsec));
    if (node == kRootNodeid || name == "." || name == "..") return;
  }
  if (e.expires == 0 || !storable(name)) return;
  e.answer.nodeid = parent;
  e.answer.size = static_cast<uint32_t>(reply.size());
  std::memcpy(e.answer.data, reply.data(), reply.size());
  std::lock_guard lk(mu_);
  if (name_stamp_[name_bucket(parent, name)] > since ||
      (node != 0 && (attr_stamp_[attr_bucket(node)] > since || writers_.contains(node) ||
                     (!taken_.contains(node) && taken_.size() >= max_tier_nodes_)))) {
    ++stores_skipped_;
    return;
  }
  if (!store_.put_name(name_key(parent, name), e)) {
    ++stores_skipped_;
    return;
  }
  Name key(parent, std::string(name));
  auto [it, added] = names_.try_emplace(key, node);
  if (!added && it->second != node) {  // the map entry was overwritten: unlink the old node
    unlink_pointing_locked(it);
    it->second = node;
  }
  if (node != 0) {
    pointing_[node].insert(std::move(key));
    taken_.try_emplace(node, 0);
  }
}

void KernelAnswers::store_read(uint64_t nodeid, uint64_t offset, uint32_t size,
                               std::span<const char> data, const FileStamp& stamp,
                               uint64_t since) {
  constexpr uint64_t kBlock = EFUSE_HANDLER_BLOCK_SIZE;
  if (pool_.empty() || data.size() > size) return;
  const bool eof = data.size() < size;  // FUSE: a short read is the end of the file
  const uint64_t end = offset + data.size();
  // Small files: the data lies in the first EFUSE_HANDLER_READ_MAX bytes, and the reply
  // showed where the file ends or answered a request that stayed there.
  if (end > EFUSE_HANDLER_READ_MAX || (!eof && offset + size > EFUSE_HANDLER_READ_MAX)) return;
  std::lock_guard lk(mu_);
  if (attr_stamp_[attr_bucket(nodeid)] > since || writers_.contains(nodeid)) {
    ++stores_skipped_;
    return;
  }
  // A short read contradicting the size taken before it: changed meanwhile.
  if (eof && end != stamp.size) {
    ++stores_skipped_;
    return;
  }
  if (auto it = files_.find(nodeid); it != files_.end() && !(it->second.stamp == stamp))
    drop_blocks_locked(nodeid);  // another version
  File& f = files_[nodeid];
  if (f.gen == 0) {
    f.gen = ++next_gen_;
    f.stamp = stamp;
  }
  uint64_t index = (offset + kBlock - 1) / kBlock;  // the first block the reply covers whole
  for (; (index + 1) * kBlock <= end; ++index)
    put_block_locked(nodeid, index, f.gen, data.subspan(index * kBlock - offset, kBlock), false);
  // The block the file ends in (empty when it ends at a block's start).
  if (eof && index * kBlock >= offset && index * kBlock <= end)
    put_block_locked(nodeid, index, f.gen, data.subspan(index * kBlock - offset), true);
}

// The protocol of efuse_handler_maps.h: gen 0 first (a handler reading the slot now misses),
// then the block, then its generation. A handler that saw the same non-zero gen before and
// after its copy read a whole block of that generation.
void KernelAnswers::put_block_locked(uint64_t nodeid, uint64_t index, uint64_t gen,
                                     std::span<const char> bytes, bool eof) {
  const uint32_t set = efuse_read_set(nodeid, index, sets_);
  uint32_t slot = set * EFUSE_READ_WAYS;
  uint64_t oldest = UINT64_MAX;
  for (uint32_t w = 0; w < EFUSE_READ_WAYS; ++w) {
    const uint32_t s = set * EFUSE_READ_WAYS + w;
    if (slots_[s].nodeid == nodeid && slots_[s].index == index) {
      slot = s;
      break;
    }
    // An empty slot counts as never used; handlers stamp `used` on each hit.
    const uint64_t used =
        slots_[s].nodeid == 0 ? 0 : __atomic_load_n(&pool_[s].used, __ATOMIC_RELAXED);
    if (used < oldest) {
      oldest = used;
      slot = s;
    }
  }
  efuse_read_block& b = pool_[slot];
  Slot& mine = slots_[slot];
  if (mine.nodeid != nodeid || mine.index != index) {
    if (mine.nodeid != 0) {  // evict another node's block
      ++read_evictions_;
      --read_blocks_;
      if (auto it = files_.find(mine.nodeid); it != files_.end()) {
        std::erase(it->second.slots, slot);
        if (it->second.slots.empty()) files_.erase(it);
      }
    }
    mine = {nodeid, index};
    files_[nodeid].slots.push_back(slot);
    ++read_blocks_;
  }
  __atomic_store_n(&b.gen, 0, __ATOMIC_SEQ_CST);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  b.nodeid = nodeid;
  b.index = index;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  b.used = static_cast<uint64_t>(now.tv_sec) * 1000000000ULL + static_cast<uint64_t>(now.tv_nsec);
  b.valid = static_cast<uint32_t>(bytes.size());
  b.eof = eof ? 1 : 0;
  std::memcpy(b.data, bytes.data(), bytes.size());
  std::memset(b.data + bytes.size(), 0, sizeof b.data - bytes.size());
  std::atomic_thread_fence(std::memory_order_seq_cst);
  __atomic_store_n(&b.gen, gen, __ATOMIC_SEQ_CST);
}

void KernelAnswers::stamp_seen_locked(uint64_t nodeid, const FileStamp& stamp) {
  auto it = files_.find(nodeid);
  if (it == files_.end() || it->second.stamp == stamp) return;
  attr_stamp_[attr_bucket(nodeid)] = ++seq_;  // a READ read before this stores nothing
  drop_blocks_locked(nodeid);
}

void KernelAnswers::drop_blocks_locked(uint64_t nodeid) {
  auto it = files_.find(nodeid);
  if (it == files_.end()) return;
  for (uint32_t slot : it->second.slots) {
    __atomic_store_n(&pool_[slot].gen, 0, __ATOMIC_SEQ_CST);
    slots_[slot] = {};
    --read_blocks_;
    ++drops_;
  }
  files_.erase(it);  // the next block stored gets a new generation
}

void KernelAnswers::attr_validity(uint64_t sec, uint32_t nsec) {
  constexpr uint64_t kMaxSec = 100ULL * 365 * 24 * 3600;
  attr_valid_ns_.store(std::min(sec, kMaxSec) * 1000000000ULL + nsec, std::memory_order_relaxed);
}

void KernelAnswers::store_xattr(uint64_t nodeid, std::string_view name, int error,
                                uint32_t size, std::span<const char> reply, uint64_t since) {
  const bool list = name.empty();
  efuse_handler_entry e{};
  e.answer.nodeid = nodeid;
  if (error == ENODATA && !list) {
    e.answer.error = -ENODATA;
  } else if (error == 0 && size != 0 && reply.size() <= sizeof e.answer.data) {
    e.answer.size = static_cast<uint32_t>(reply.size());
    std::memcpy(e.answer.data, reply.data(), reply.size());
  } else {
    return;  // a size query (no value to store), ERANGE, another error, or too long
  }
  if ((!list && !storable(name)) || name.starts_with("trusted.")) return;
  xattrs_seen_.store(true, std::memory_order_relaxed);  // the backing store has them
  put_xattr_answer(nodeid, name, e, since);
}

void KernelAnswers::put_xattr_answer(uint64_t nodeid, std::string_view name,
                                     efuse_handler_entry& e, uint64_t since) {
  const uint64_t valid = attr_valid_ns_.load(std::memory_order_relaxed);
  if (valid == 0) return;  // attr_timeout 0 (or no attributes sent yet): nothing stored
  e.expires = hold(valid / 1000000000ULL, static_cast<uint32_t>(valid % 1000000000ULL));
  std::lock_guard lk(mu_);
  const bool value = e.answer.error == 0;
  if (attr_stamp_[attr_bucket(nodeid)] > since || (value && writers_.contains(nodeid))) {
    ++stores_skipped_;
    return;
  }
  if (store_.put_xattr(name_key(nodeid, name), e))
    xattrs_[Name(nodeid, std::string(name))] = value;
  else
    ++stores_skipped_;
}

void KernelAnswers::drop_xattrs_locked(uint64_t nodeid, bool absences_too) {
  const Name first(nodeid, std::string()), last(nodeid + 1, std::string());
  for (auto it = xattrs_.lower_bound(first); it != xattrs_.end() && it->first < last;) {
    if (!absences_too && !it->second) {
      ++it;
      continue;
    }
    store_.drop_xattr(name_key(it->first.first, it->first.second));
    ++drops_;
    it = xattrs_.erase(it);
  }
}

void KernelAnswers::xattrs_changed(uint64_t nodeid) {
  std::lock_guard lk(mu_);
  drop_attr_locked(nodeid);
  drop_xattrs_locked(nodeid, true);
}

void KernelAnswers::entry_sent(uint64_t parent, std::string_view name, uint64_t nodeid) {
  if (nodeid == 0 || name == "." || name == "..") return;
  std::lock_guard lk(mu_);
  index_[Name(parent, std::string(name))] = nodeid;
}

void KernelAnswers::node_created(uint64_t nodeid, uint64_t since) {
  // No stored absence where the backing store may have no extended attributes at all.
  if (nodeid == 0 || !xattrs_seen_.load(std::memory_order_relaxed)) return;
  efuse_handler_entry e{};
  e.answer.nodeid = nodeid;
  e.answer.error = -ENODATA;
  put_xattr_answer(nodeid, "security.capability", e, since);
}

void KernelAnswers::dir_complete(uint64_t dir, double negative_timeout, uint64_t since) {
  // Only while every change is seen; the first time it is not, everything goes (hold()).
  const bool exact = exact_ && exact_();
  if (!exact) {
    if (was_exact_.exchange(false, std::memory_order_relaxed)) drop_all();
    return;
  }
  if (dir == 0 || dir == kRootNodeid) return;
  efuse_handler_entry e{};
  e.expires = UINT64_MAX;  // kept exact by name_adding, names_unknown and the drops
  e.answer.nodeid = dir;
  kernel::fuse_entry_out out{};  // nodeid 0: a negative entry, cached for entry_valid
  split_timeout(negative_timeout, &out.entry_valid, &out.entry_valid_nsec);
  if (out.entry_valid == 0 && out.entry_valid_nsec == 0) {
    e.answer.error = -ENOENT;  // negative_timeout 0: efused answers ENOENT, cached nowhere
  } else {
    e.answer.size = sizeof out;
    std::memcpy(e.answer.data, &out, sizeof out);
  }
  std::lock_guard lk(mu_);
  // An outside change of the directory after `since` (the watcher drops its attributes):
  // its emptiness may be older than that change.
  if (attr_stamp_[attr_bucket(dir)] > since || complete_.contains(dir) ||
      complete_.size() >= kMaxCompleteDirs ||
      !store_.put_node(AnswerStore::NodeMap::Complete, dir, e)) {
    ++stores_skipped_;
    return;
  }
  complete_.try_emplace(dir);
}

void KernelAnswers::name_adding(uint64_t parent, std::string_view name) {
  std::lock_guard lk(mu_);
  // A stored answer for the name (the absence efused sent before) would be found first:
  // it goes now, not only after the operation (name_created), so a LOOKUP racing the
  // operation goes up.
  drop_name_locked(parent, name);
  auto it = complete_.find(parent);
  if (it == complete_.end() || it->second.contains(name)) return;
  if (!storable(name) || dir_names_ >= kMaxDirNames ||
      !store_.put_dir_name(name_key(parent, name))) {
    ++stores_skipped_;
    drop_complete_locked(parent);
    return;
  }
  it->second.emplace(name);
  ++dir_names_;
}

void KernelAnswers::name_gone(uint64_t parent, std::string_view name) {
  std::lock_guard lk(mu_);
  auto it = complete_.find(parent);
  if (it == complete_.end()) return;
  auto n = it->second.find(name);
  if (n == it->second.end()) return;
  store_.drop_dir_name(name_key(parent, name));
  it->second.erase(n);
  --dir_names_;
}

void KernelAnswers::names_unknown(uint64_t dir) {
  std::lock_guard lk(mu_);
  drop_complete_locked(dir);
}

void KernelAnswers::drop_complete_locked(uint64_t dir) {
  auto it = complete_.find(dir);
  if (it == complete_.end()) return;
  // The mark before the names: a handler reads the names first, so it never sees the mark
  // without a name that is there.
  store_.drop_node(AnswerStore::NodeMap::Complete, dir);
  for (const std::string& name : it->second) store_.drop_dir_name(name_key(dir, name));
  drops_ += 1 + it->second.size();
  dir_names_ -= it->second.size();
  complete_.erase(it);
}

bool KernelAnswers::store_open(uint64_t nodeid, int32_t backing_id) {
  if (backing_id <= 0 || !opens_allowed()) return false;
  efuse_handler_entry e{};
  e.expires = UINT64_MAX;  // kept exact by the drops, and the id lives as long as the node
  e.answer.nodeid = nodeid;
  kernel::fuse_open_out o{};
  o.open_flags = kernel::kFopenPassthrough;
  o.backing_id = backing_id;
  e.answer.size = sizeof o;
  std::memcpy(e.answer.data, &o, sizeof o);
  std::lock_guard lk(mu_);
  // Written again even when stored: only first opens reach efused, and so an entry that
  // went wrong behind efused's back (it never should) is mended by the next one.
  if ((!opens_.contains(nodeid) && opens_.size() >= kMaxOpenAnswers) ||
      !store_.put_node(AnswerStore::NodeMap::Open, nodeid, e)) {
    ++stores_skipped_;
    return false;
  }
  opens_.insert(nodeid);
  store_flush_locked(nodeid);
  return true;
}

void KernelAnswers::store_statfs(uint64_t nodeid, std::span<const char> reply, double timeout) {
  if (nodeid == 0 || reply.size() != sizeof(kernel::fuse_statfs_out)) return;
  uint64_t sec;
  uint32_t nsec;
  split_timeout(timeout, &sec, &nsec);
  efuse_handler_entry e{};
  e.expires = expiry(sec, nsec);  // never held beyond it (hold() is for what watchers see)
  if (e.expires == 0) return;
  e.answer.nodeid = nodeid;
  e.answer.size = static_cast<uint32_t>(reply.size());
  std::memcpy(e.answer.data, reply.data(), reply.size());
  std::lock_guard lk(mu_);
  if ((!statfs_.contains(nodeid) && statfs_.size() >= kMaxStatfsAnswers) ||
      !store_.put_node(AnswerStore::NodeMap::Statfs, nodeid, e)) {
    ++stores_skipped_;
    return;
  }
  statfs_.insert(nodeid);
}

void KernelAnswers::store_access(uint64_t nodeid, uint32_t uid, uint32_t gid, uint32_t mask,
                                 int error, uint64_t since) {
  if (nodeid == 0 || (error != 0 && error != EACCES && error != EROFS && error != EPERM)) return;
  const uint64_t valid = attr_valid_ns_.load(std::memory_order_relaxed);
  // Never held beyond it (hold() is for what watchers see; see the header).
  const uint64_t until =
      expiry(valid / 1000000000ULL, static_cast<uint32_t>(valid % 1000000000ULL));
  if (until == 0) return;  // attr_timeout 0 (or no attributes sent yet): nothing stored
  std::lock_guard lk(mu_);
  auto it = access_.find(nodeid);
  if (attr_stamp_[attr_bucket(nodeid)] > since ||
      (it == access_.end() && access_.size() >= kMaxAccessAnswers)) {
    ++stores_skipped_;
    return;
  }
  std::vector<efuse_access_slot> slots;
  if (it != access_.end()) slots = it->second;
  // The caller's own slot for the mask is renewed; else a new one, in place of the slot
  // that expires first when the node has EFUSE_ACCESS_SLOTS already.
  auto slot = std::find_if(slots.begin(), slots.end(), [&](const efuse_access_slot& x) {
    return x.uid == uid && x.gid == gid && x.mask == mask;
  });
  if (slot == slots.end()) {
    if (slots.size() < EFUSE_ACCESS_SLOTS)
      slot = slots.insert(slots.end(), efuse_access_slot{});
    else
      slot = std::min_element(slots.begin(), slots.end(), [](const auto& a, const auto& b) {
        return a.expires < b.expires;
      });
  }
  *slot = efuse_access_slot{until, uid, gid, mask, -error};
  efuse_handler_entry e{};
  e.answer.nodeid = nodeid;
  e.answer.size = static_cast<uint32_t>(slots.size() * sizeof(efuse_access_slot));
  std::memcpy(e.answer.data, slots.data(), e.answer.size);
  for (const efuse_access_slot& x : slots) e.expires = std::max(e.expires, x.expires);
  if (!store_.put_node(AnswerStore::NodeMap::Access, nodeid, e)) {
    ++stores_skipped_;
    return;
  }
  access_[nodeid] = std::move(slots);
}

void KernelAnswers::store_flush(uint64_t nodeid) {
  if (nodeid == 0) return;
  std::lock_guard lk(mu_);
  store_flush_locked(nodeid);
}

void KernelAnswers::store_flush_locked(uint64_t nodeid) {
  if (locked_.contains(nodeid) || flushes_.contains(nodeid) || flushes_.size() >= kMaxOpenAnswers)
    return;
  efuse_handler_entry flush{};
  flush.expires = UINT64_MAX;  // kept exact by the drops (a lock request, the node's FORGET)
  flush.answer.nodeid = nodeid;
  if (store_.put_node(AnswerStore::NodeMap::Flush, nodeid, flush)) flushes_.insert(nodeid);
}

void KernelAnswers::drop_flush_locked(uint64_t nodeid) {
  if (flushes_.erase(nodeid) != 0) {
    store_.drop_node(AnswerStore::NodeMap::Flush, nodeid);
    ++drops_;
  }
}

void KernelAnswers::lock_asked(uint64_t nodeid) {
  std::lock_guard lk(mu_);
  locked_.insert(nodeid);
  drop_flush_locked(nodeid);
}

void KernelAnswers::drop_attr_locked(uint64_t nodeid) {
  attr_stamp_[attr_bucket(nodeid)] = ++seq_;
  drop_blocks_locked(nodeid);  // any change of the node may be one of its data
  if (attrs_.erase(nodeid) != 0) {
    store_.drop_attr(nodeid);
    ++drops_;
  }
  if (opens_.erase(nodeid) != 0) {  // goes with the attributes (see the header)
    store_.drop_node(AnswerStore::NodeMap::Open, nodeid);
    ++drops_;
  }
  if (auto it = access_.find(nodeid); it != access_.end()) {  // so do ACCESS answers
    store_.drop_node(AnswerStore::NodeMap::Access, nodeid);
    access_.erase(it);
    ++drops_;
  }
  drop_pointing_locked(nodeid);  // positive entries carry the attributes too
  drop_xattrs_locked(nodeid, false);  // values (a chown or write may remove one)
}

void KernelAnswers::unlink_pointing_locked(std::map<Name, uint64_t>::iterator it) {
  if (it->second == 0) return;
  auto p = pointing_.find(it->second);
  if (p == pointing_.end()) return;
  p->second.erase(it->first);
  if (p->second.empty()) pointing_.erase(p);
}

void KernelAnswers::drop_name_locked(std::map<Name, uint64_t>::iterator it) {
  unlink_pointing_locked(it);
  store_.drop_name(name_key(it->first.first, it->first.second));
  ++drops_;
  names_.erase(it);
}

void KernelAnswers::drop_name_locked(uint64_t parent, std::string_view name) {
  name_stamp_[name_bucket(parent, name)] = ++seq_;
  auto it = names_.find(Name(parent, std::string(name)));
  if (it != names_.end()) drop_name_locked(it);
}

void KernelAnswers::drop_pointing_locked(uint64_t nodeid) {
  auto p = pointing_.find(nodeid);
  if (p == pointing_.end()) return;
  const std::set<Name> names = std::move(p->second);
  pointing_.erase(p);
  for (const Name& n : names) {
    name_stamp_[name_bucket(n.first, n.second)] = ++seq_;
    auto it = names_.find(n);
    if (it != names_.end()) drop_name_locked(it);
  }
}

uint64_t KernelAnswers::child_locked(uint64_t parent, std::string_view name) const {
  auto it = index_.find(Name(parent, std::string(name)));
  return it == index_.end() ? 0 : it->second;
}

void KernelAnswers::attr_changed(uint64_t nodeid) {
  std::lock_guard lk(mu_);
  drop_attr_locked(nodeid);
}

void KernelAnswers::name_created(uint64_t parent, std::string_view name) {
  std::lock_guard lk(mu_);
  drop_name_locked(parent, name);
  drop_attr_locked(parent);
}

void KernelAnswers::name_removed(uint64_t parent, std::string_view name, bool done) {
  std::lock_guard lk(mu_);
  drop_name_locked(parent, name);
  drop_attr_locked(parent);
  if (uint64_t child = child_locked(parent, name)) drop_attr_locked(child);
  if (done) index_.erase(Name(parent, std::string(name)));
}

void KernelAnswers::name_moved(uint64_t from_parent, std::string_view from, uint64_t to_parent,
                               std::string_view to, bool exchange, bool done) {
  std::lock_guard lk(mu_);
  const uint64_t moved = child_locked(from_parent, from);
  const uint64_t replaced = child_locked(to_parent, to);
  for (uint64_t n : {from_parent, to_parent, moved, replaced})
    if (n != 0) drop_attr_locked(n);
  drop_name_locked(from_parent, from);
  drop_name_locked(to_parent, to);
  if (!done) return;
  Name a(from_parent, std::string(from)), b(to_parent, std::string(to));
  index_.erase(a);
  index_.erase(b);
  if (moved != 0) index_[b] = moved;
  if (exchange && replaced != 0) index_[a] = replaced;
}

void KernelAnswers::name_changed_outside(uint64_t parent, std::string_view name) {
  std::lock_guard lk(mu_);
  drop_complete_locked(parent);
  drop_name_locked(parent, name);
  drop_attr_locked(parent);
  if (uint64_t child = child_locked(parent, name)) drop_attr_locked(child);
  index_.erase(Name(parent, std::string(name)));
}

void KernelAnswers::node_changed_outside(uint64_t nodeid) {
  std::lock_guard lk(mu_);
  drop_complete_locked(nodeid);
  drop_attr_locked(nodeid);
  drop_xattrs_locked(nodeid, true);
}

void KernelAnswers::pages_dropped(uint64_t nodeid) {
  std::lock_guard lk(mu_);
  attr_stamp_[attr_bucket(nodeid)] = ++seq_;  // a READ read before this stores nothing
  drop_blocks_locked(nodeid);
}

void KernelAnswers::write_opened(uint64_t nodeid) {
  std::lock_guard lk(mu_);
  ++writers_[nodeid];
  drop_attr_locked(nodeid);
}

void KernelAnswers::write_released(uint64_t nodeid) {
  std::lock_guard lk(mu_);
  auto it = writers_.find(nodeid);
  if (it != writers_.end() && --it->second == 0) writers_.erase(it);
  drop_attr_locked(nodeid);
}

void KernelAnswers::drop_node_locked(uint64_t nodeid) {
  drop_complete_locked(nodeid);
  drop_attr_locked(nodeid);
  drop_flush_locked(nodeid);
  if (statfs_.erase(nodeid) != 0) {
    store_.drop_node(AnswerStore::NodeMap::Statfs, nodeid);
    ++drops_;
  }
  drop_xattrs_locked(nodeid, true);
  const Name first(nodeid, std::string()), last(nodeid + 1, std::string());
  for (auto it = names_.lower_bound(first); it != names_.end() && it->first < last;)
    drop_name_locked(it++);
  index_.erase(index_.lower_bound(first), index_.lower_bound(last));
}

void KernelAnswers::forgotten(uint64_t nodeid) {
  std::lock_guard lk(mu_);
  drop_node_locked(nodeid);
}

void KernelAnswers::drop_all() {
  std::lock_guard lk(mu_);
  while (!complete_.empty()) drop_complete_locked(complete_.begin()->first);
  ++seq_;
  attr_stamp_.fill(seq_);
  name_stamp_.fill(seq_);
  for (uint64_t nodeid : attrs_) store_.drop_attr(nodeid);
  for (const auto& [n, node] : names_) store_.drop_name(name_key(n.first, n.second));
  for (const auto& [n, value] : xattrs_) store_.drop_xattr(name_key(n.first, n.second));
  for (uint64_t nodeid : opens_) store_.drop_node(AnswerStore::NodeMap::Open, nodeid);
  for (uint64_t nodeid : flushes_) store_.drop_node(AnswerStore::NodeMap::Flush, nodeid);
  for (uint64_t nodeid : statfs_) store_.drop_node(AnswerStore::NodeMap::Statfs, nodeid);
  for (const auto& [nodeid, slots] : access_) store_.drop_node(AnswerStore::NodeMap::Access, nodeid);
  drops_ += attrs_.size() + names_.size() + xattrs_.size() + opens_.size() + flushes_.size() +
            statfs_.size() + access_.size();
  while (!files_.empty()) drop_blocks_locked(files_.begin()->first);
  attrs_.clear();
  names_.clear();
  xattrs_.clear();
  opens_.clear();
  flushes_.clear();
  statfs_.clear();
  access_.clear();
  pointing_.clear();
}

uint64_t KernelAnswers::take(uint64_t nodeid) {
  std::lock_guard lk(mu_);
  auto it = taken_.find(nodeid);
  if (it == taken_.end()) return 0;  // never answered for: no counter to read
  const uint64_t counted = store_.entry_lookups(nodeid);
  if (counted <= it->second) return 0;
  const uint64_t fresh = counted - it->second;
  it->second = counted;
  tier_lookups_ += fresh;
  return fresh;
}

void KernelAnswers::withdraw(uint64_t nodeid) {
  std::lock_guard lk(mu_);
  drop_node_locked(nodeid);
  locked_.erase(nodeid);  // evicted: its files were closed, their locks released at FLUSH
  // The kernel evicted the node before the FORGET that dropped it, and the module takes
  // positive answers only for inodes it holds: nothing counts for it any more.
  if (taken_.erase(nodeid) != 0) store_.drop_entry_lookups(nodeid);
}

KernelAnswerStats KernelAnswers::stats() const {
  std::lock_guard lk(mu_);
  KernelAnswerStats s;
  s.attr_entries = attrs_.size();
  s.name_entries = names_.size();
  for (const auto& [node, names] : pointing_) s.positive_entries += names.size();
  s.tier_nodes = taken_.size();
  s.xattr_entries = xattrs_.size();
  s.open_entries = opens_.size();
  s.flush_entries = flushes_.size();
  s.statfs_entries = statfs_.size();
  s.access_entries = access_.size();
  s.complete_dirs = complete_.size();
  s.dir_names = dir_names_;
  s.tier_lookups = tier_lookups_;
  s.read_blocks = read_blocks_;
  s.read_capacity = pool_.size();
  s.read_evictions = read_evictions_;
  s.stores_skipped = stores_skipped_;
  s.drops = drops_;
  return s;
}

}  // namespace fuse
