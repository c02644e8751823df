// An in-memory fuse::AnswerStore: the handler maps as tables (the READ block cache as an
// array, as efused maps it), for tests of
// fuse::KernelAnswers and of the session's hook (the BPF maps themselves are exercised by
// the guest tests, tests/vm/guest_kmod.py).
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "fuse/kernel_answers.h"

namespace fuse {

class AnswerTable final : public AnswerStore {
 public:
  bool put_attr(uint64_t nodeid, const efuse_handler_entry& e) override {
    if (full || !keeps_attrs_) return false;
    attrs[nodeid] = e;
    return true;
  }
  void drop_attr(uint64_t nodeid) override {
    if (on_drop) on_drop();
    ++drops;
    attrs.erase(nodeid);
  }
  bool keeps_attrs() const override { return keeps_attrs_; }
  void drain_releases() override {
    ++drains;
    if (on_drain) on_drain();
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
    node_map(map)[nodeid] = e;
    return true;
  }
  void drop_node(NodeMap map, uint64_t nodeid) override {
    if (on_drop) on_drop();
    node_map(map).erase(nodeid);
  }
  bool put_dir_name(const efuse_handler_name_key& key) override {
    if (on_put_dir_name) on_put_dir_name(key.parent, key.name);
    if (full || dir_names_full) return false;
    dir_names.insert({key.parent, key.name});
    return true;
  }
  void drop_dir_name(const efuse_handler_name_key& key) override {
    if (on_drop) on_drop();
    // The handler reads a name before the mark: when a mark goes, it goes before the
    // names of its directory (a name removed from a complete directory goes alone).
    if (complete.contains(key.parent)) ++names_dropped_under_mark;
    dir_names.erase({key.parent, key.name});
  }
  // What the LOOKUP handler answers from the complete directories for a name that missed
  // the stored answers: the directory's negative answer, or nothing (nullptr: it goes up).
  const efuse_handler_entry* negative_for(uint64_t parent, const std::string& name) const {
    if (dir_names.contains({parent, name})) return nullptr;
    auto it = complete.find(parent);
    return it == complete.end() ? nullptr : &it->second;
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

  std::map<uint64_t, efuse_handler_entry>& node_map(NodeMap map) {
    return map == NodeMap::Open     ? opens
           : map == NodeMap::Flush  ? flushes
           : map == NodeMap::Statfs ? statfs
           : map == NodeMap::Access ? access
                                    : complete;
  }

  bool full = false;
  bool keeps_attrs_ = true;  // false: as without a GETATTR handler's map
  size_t drops = 0;          // drop_attr calls
  size_t drains = 0;         // drain_releases calls
  std::function<void()> on_drain;
  bool dir_names_full = false;
  std::function<void(uint64_t, const std::string&)> on_put_dir_name;  // before it is put
  std::map<uint64_t, efuse_handler_entry> complete;  // efuse_complete_dirs
  std::set<std::pair<uint64_t, std::string>> dir_names;  // efuse_dir_names
  int names_dropped_under_mark = 0;
  std::function<void()> on_drop;  // runs before every drop that reaches the table
  std::map<uint64_t, efuse_handler_entry> attrs;
  std::map<std::pair<uint64_t, std::string>, efuse_handler_entry> names;
  std::map<uint64_t, uint64_t> counts;
  std::map<uint64_t, efuse_handler_entry> opens;    // efuse_open_answers
  std::map<uint64_t, efuse_handler_entry> flushes;  // efuse_flush_answers
  std::map<uint64_t, efuse_handler_entry> statfs;   // efuse_statfs_answers
  std::map<uint64_t, efuse_handler_entry> access;   // efuse_access_answers
  std::vector<efuse_read_block> pool = std::vector<efuse_read_block>(4 * EFUSE_READ_WAYS);
  std::map<std::pair<uint64_t, std::string>, efuse_handler_entry> xattrs;  // efuse_entry_lookups, as the counting program keeps it
};

}  // namespace fuse
