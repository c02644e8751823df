// An in-memory fuse::AnswerStore: the handler maps as tables (the READ block cache as an
// array, as efused maps it), for tests of
// fuse::KernelAnswers and of the session's hook (the BPF maps themselves are exercised by
// the guest tests, tests/vm/guest_kmod.py).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "fuse/kernel_answers.h"

namespace fuse {

class AnswerTable final : public AnswerStore {
 public:
  bool put_attr(uint64_t nodeid, const efuse_handler_entry& e) override {
    if (full) return false;
    attrs[nodeid] = e;
    return true;
  }
  void drop_attr(uint64_t nodeid) override {
    if (on_drop) on_drop();
    attrs.erase(nodeid);
  }
  bool put_name(const efuse_handler_name_key& key, const efuse_handler_entry& e) override {
    names[{key.parent, key.name}] = e;
    return true;
  }
  void drop_name(const efuse_handler_name_key& key) override {
    if (on_drop) on_drop();
    names.erase({key.parent, key.name});
  }

  uint64_t entry_lookups(uint64_t nodeid) override {
    auto it = counts.find(nodeid);
    return it == counts.end() ? 0 : it->second;
  }
  void drop_entry_lookups(uint64_t nodeid) override { counts.erase(nodeid); }
  bool put_xattr(const efuse_handler_name_key& key, const efuse_handler_entry& e) override {
    xattrs[{key.parent, key.name}] = e;
    return true;
  }
  void drop_xattr(const efuse_handler_name_key& key) override {
    if (on_drop) on_drop();
    xattrs.erase({key.parent, key.name});
  }

  bool put_node(NodeMap map, uint64_t nodeid, const efuse_handler_entry& e) override {
    if (full) return false;
    (map == NodeMap::Open ? opens : flushes)[nodeid] = e;
    return true;
  }
  void drop_node(NodeMap map, uint64_t nodeid) override {
    if (on_drop) on_drop();
    (map == NodeMap::Open ? opens : flushes).erase(nodeid);
  }
  std::span<efuse_read_block> read_blocks() override { return pool; }

  // The READ blocks held for `nodeid` (gen not 0): index -> the block.
  std::map<uint64_t, efuse_read_block> blocks_of(uint64_t nodeid) const {
    std::map<uint64_t, efuse_read_block> out;
    for (const efuse_read_block& b : pool)
      if (b.gen != 0 && b.nodeid == nodeid) out[b.index] = b;
    return out;
  }

  bool has_name(uint64_t parent, const std::string& name) const {
    return names.contains({parent, name});
  }

  bool full = false;
  std::function<void()> on_drop;  // runs before every drop that reaches the table
  std::map<uint64_t, efuse_handler_entry> attrs;
  std::map<std::pair<uint64_t, std::string>, efuse_handler_entry> names;
  std::map<uint64_t, uint64_t> counts;
  std::map<uint64_t, efuse_handler_entry> opens;    // efuse_open_answers
  std::map<uint64_t, efuse_handler_entry> flushes;  // efuse_flush_answers
  std::vector<efuse_read_block> pool = std::vector<efuse_read_block>(4 * EFUSE_READ_WAYS);
  std::map<std::pair<uint64_t, std::string>, efuse_handler_entry> xattrs;  // efuse_entry_lookups, as the counting program keeps it
};

}  // namespace fuse
