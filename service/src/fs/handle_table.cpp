#include "fs/handle_table.h"

namespace efuse::fs {

size_t HandleTable::Shard::find(uint64_t fh, uint64_t m, bool* found) const {
  const size_t mask = slots.size() - 1;
  size_t i = static_cast<size_t>(m) & mask;
  size_t first_removed = slots.size();
  for (size_t probes = 0; probes <= mask; ++probes, i = (i + 1) & mask) {
    const uint64_t v = slots[i];
    if (v == fh) {
      *found = true;
      return i;
    }
    if (v == kEmpty) break;
    if (v == kRemoved && first_removed == slots.size()) first_removed = i;
  }
  *found = false;
  // rehash() keeps at least one empty slot, so a probe path always ends.
  return first_removed != slots.size() ? first_removed : i;
}

void HandleTable::Shard::rehash(size_t capacity) {
  std::vector<uint64_t> old(capacity, kEmpty);
  old.swap(slots);
  removed = 0;
  for (uint64_t v : old) {
    if (v == kEmpty || v == kRemoved) continue;
    bool found;
    slots[find(v, mix(v), &found)] = v;
  }
}

bool HandleTable::add(uint64_t fh) {
  if (fh == kEmpty || fh == kRemoved) return false;
  const uint64_t m = mix(fh);
  Shard& s = shard(m);
  std::lock_guard lk(s.mu);
  // At most 3/4 of the slots live or removed: probe paths stay short and end at an empty slot.
  if ((s.live + s.removed + 1) * 4 > s.slots.size() * 3) {
    size_t cap = s.slots.empty() ? 16 : s.slots.size();
    while ((s.live + 1) * 2 > cap) cap *= 2;  // live handles fill at most half after it
    s.rehash(cap);
  }
  bool found;
  size_t i = s.find(fh, m, &found);
  if (found) return false;
  if (s.slots[i] == kRemoved) --s.removed;
  s.slots[i] = fh;
  ++s.live;
  return true;
}

bool HandleTable::contains(uint64_t fh) const {
  if (fh == kEmpty || fh == kRemoved) return false;
  const uint64_t m = mix(fh);
  const Shard& s = shard(m);
  std::lock_guard lk(s.mu);
  if (s.slots.empty()) return false;
  bool found;
  s.find(fh, m, &found);
  return found;
}

bool HandleTable::remove(uint64_t fh) {
  if (fh == kEmpty || fh == kRemoved) return false;
  const uint64_t m = mix(fh);
  Shard& s = shard(m);
  std::lock_guard lk(s.mu);
  if (s.slots.empty()) return false;
  bool found;
  size_t i = s.find(fh, m, &found);
  if (!found) return false;
  s.slots[i] = kRemoved;
  --s.live;
  ++s.removed;
  return true;
}

size_t HandleTable::size() const {
  size_t n = 0;
  for (const Shard& s : shards_) {
    std::lock_guard lk(s.mu);
    n += s.live;
  }
  return n;
}

}  // namespace efuse::fs
