// InodeTable: the restart state (record and restore), see inode_table.h and
// common/slot_file.h. Kept apart from the table's request path: ref() and forget() only
// store into a slot the inode already has.
#include <fcntl.h>

#include <cstring>

#include "common/log.h"
#include "fs/passthrough/inode_table.h"

namespace efuse::fs::passthrough {

bool InodeTable::record_node(Inode& inode, uint64_t lookups) {
  if (inode.nodeid == 1) return true;  // the root is the source, opened anew by each efused
  if (inode.handle_.empty()) {
    int fd = inode.fd_.load();
    if (fd >= 0) inode.handle_ = handle_of(fd);
  }
  if (inode.handle_.empty() || inode.handle_.size() + sizeof(uint32_t) > SlotFile::kDataSize)
    return false;
  SlotFile::Slot* s = state_->alloc();
  if (s == nullptr) return false;
  s->v[0].store(inode.nodeid, std::memory_order_relaxed);
  s->v[1].store(lookups, std::memory_order_relaxed);
  s->v[2].store(static_cast<uint64_t>(inode.dev), std::memory_order_relaxed);
  s->v[3].store(static_cast<uint64_t>(inode.ino), std::memory_order_relaxed);
  uint32_t type = inode.type;
  std::memcpy(s->data, &type, sizeof type);
  std::memcpy(s->data + sizeof type, inode.handle_.data(), inode.handle_.size());
  s->len = static_cast<uint32_t>(sizeof type + inode.handle_.size());
  SlotFile::publish(s, SlotFile::kNode);
  inode.state_slot = s;
  if (counter_slot_ != nullptr && counter_slot_->v[0].load() <= inode.nodeid)
    counter_slot_->v[0].store(inode.nodeid + 1, std::memory_order_release);
  return true;
}

bool InodeTable::record(SlotFile* file) {
  if (!handles_) return false;
  std::unique_lock lk(mu_);
  state_ = file;
  counter_slot_ = file->alloc();
  if (counter_slot_ == nullptr) {
    state_ = nullptr;
    return false;
  }
  counter_slot_->v[0].store(2);
  SlotFile::publish(counter_slot_, SlotFile::kNodeCounter);
  for (auto& inode : nodes_.all()) {
    if (inode->state_slot != nullptr || record_node(*inode, nodes_.lookups(inode->nodeid)))
      continue;
    LOG_WARN("cannot record inode %llu for a restart (no file handle)",
             static_cast<unsigned long long>(inode->nodeid));
    state_ = nullptr;
    return false;
  }
  return true;
}

Status InodeTable::restore(SlotFile* file, std::string* why) {
  if (!handles_) {
    *why = "file handles do not work on the source (" + std::string(strerror(handles_errno_)) +
           ")";
    return Errno{EOPNOTSUPP};
  }
  uint64_t next = 0;
  bool counters = false;
  file->for_each(SlotFile::kNodeCounter, [&](SlotFile::Slot& s) {
    next = s.v[0].load();
    counters = true;
  });
  if (!counters) {
    *why = "the state has no nodeid counter";
    return Errno{EINVAL};
  }
  std::vector<std::pair<std::shared_ptr<Inode>, uint64_t>> restored;  // with lookups
  std::string problem;
  file->for_each(SlotFile::kNode, [&](SlotFile::Slot& s) {
    if (!problem.empty()) return;
    uint64_t nodeid = s.v[0].load();
    uint64_t nlookup = s.v[1].load();
    if (nodeid < 2 || nodeid >= next || nlookup == 0 || s.len <= sizeof(uint32_t) ||
        s.len > SlotFile::kDataSize) {
      problem = "inode record " + std::to_string(nodeid) + " does not add up";
      return;
    }
    uint32_t type = 0;
    std::memcpy(&type, s.data, sizeof type);
    auto inode = std::make_shared<Inode>(*this, -1, static_cast<dev_t>(s.v[2].load()),
                                         static_cast<ino_t>(s.v[3].load()),
                                         static_cast<mode_t>(type & S_IFMT), nodeid);
    inode->handle_.assign(s.data + sizeof type, s.data + s.len);
    auto* fh = reinterpret_cast<const file_handle*>(inode->handle_.data());
    if (inode->handle_.size() < sizeof(file_handle) ||
        sizeof(file_handle) + fh->handle_bytes != inode->handle_.size()) {
      problem = "inode record " + std::to_string(nodeid) + " has a malformed file handle";
      return;
    }
    inode->state_slot = &s;
    restored.emplace_back(std::move(inode), nlookup);
  });
  if (!problem.empty()) {
    *why = problem;
    return Errno{EINVAL};
  }
  std::unique_lock lk(mu_);
  if (nodes_.size() != 1) {
    *why = "the inode table is in use already";
    return Errno{EBUSY};
  }
  std::unordered_set<uint64_t> ids;
  for (auto& [inode, lookups] : restored) {
    if (!ids.insert(inode->nodeid).second) {
      *why = "nodeid " + std::to_string(inode->nodeid) + " recorded twice";
      for (auto& r : restored) r.first->state_slot = nullptr;
      return Errno{EINVAL};
    }
  }
  for (auto& [inode, lookups] : restored) nodes_.insert(inode->nodeid, inode, lookups);
  // An object recorded under two nodeids (its inode number reused after an evicted inode's
  // object went): the newer nodeid takes the key, as ref() does.
  for (auto& [inode, lookups] : restored) {
    auto& slot = by_key_[{inode->dev, inode->ino}];
    if (!slot || slot->nodeid < inode->nodeid) slot = inode;
  }
  nodes_.reserve_below(next);
  state_ = file;
  file->for_each(SlotFile::kNodeCounter, [&](SlotFile::Slot& s) {
    if (counter_slot_ == nullptr) counter_slot_ = &s;
  });
  return {};
}

}  // namespace efuse::fs::passthrough
