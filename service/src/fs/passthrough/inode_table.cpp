#include "fs/passthrough/inode_table.h"

#include <unistd.h>

namespace efuse::fs::passthrough {

Inode::~Inode() {
  for (auto& [owner, lo] : lock_fds) ::close(lo.fd);
  ::close(fd);
}

void InodeTable::set_root(int fd, const struct stat& st) {
  std::unique_lock lk(mu_);
  auto root = std::make_shared<Inode>(fd, st.st_dev, st.st_ino, st.st_mode & S_IFMT, 1);
  root->nlookup = 1;
  by_id_[1] = root;
  by_key_[{st.st_dev, st.st_ino}] = root;
}

std::shared_ptr<Inode> InodeTable::get(uint64_t nodeid) const {
  std::shared_lock lk(mu_);
  auto it = by_id_.find(nodeid);
  return it == by_id_.end() ? nullptr : it->second;
}

std::shared_ptr<Inode> InodeTable::ref(int fd, const struct stat& st, bool* created) {
  std::unique_lock lk(mu_);
  auto it = by_key_.find({st.st_dev, st.st_ino});
  if (created != nullptr) *created = it == by_key_.end();
  if (it != by_key_.end()) {
    ::close(fd);
    ++it->second->nlookup;
    return it->second;
  }
  auto inode = std::make_shared<Inode>(fd, st.st_dev, st.st_ino, st.st_mode & S_IFMT,
                                       next_nodeid_++);
  inode->nlookup = 1;
  by_id_[inode->nodeid] = inode;
  by_key_[{st.st_dev, st.st_ino}] = inode;
  return inode;
}

std::shared_ptr<Inode> InodeTable::find(dev_t dev, ino_t ino) const {
  std::shared_lock lk(mu_);
  auto it = by_key_.find({dev, ino});
  return it == by_key_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<Inode>> InodeTable::all() const {
  std::shared_lock lk(mu_);
  std::vector<std::shared_ptr<Inode>> out;
  out.reserve(by_id_.size());
  for (const auto& [id, inode] : by_id_) out.push_back(inode);
  return out;
}

std::shared_ptr<Inode> InodeTable::forget(uint64_t nodeid, uint64_t n) {
  std::shared_ptr<Inode> dropped;  // closed by the caller, outside the lock
  std::unique_lock lk(mu_);
  auto it = by_id_.find(nodeid);
  if (it == by_id_.end() || nodeid == 1) return nullptr;
  Inode& inode = *it->second;
  inode.nlookup = n >= inode.nlookup ? 0 : inode.nlookup - n;
  if (inode.nlookup == 0) {
    dropped = it->second;
    by_key_.erase({inode.dev, inode.ino});
    by_id_.erase(it);
  }
  return dropped;
}

size_t InodeTable::size() const {
  std::shared_lock lk(mu_);
  return by_id_.size();
}

}  // namespace efuse::fs::passthrough
