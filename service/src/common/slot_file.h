// SlotFile: what a mount must remember to resume its FUSE connection after efused restarts
// (systemctl restart, or kill -9 and Restart=on-failure), kept current as it changes.
//
// A memfd of fixed-size records mapped shared into efused. Writes are plain stores into
// that mapping, so they cost what a memory write costs and survive the process however it
// ends: the memfd itself sits in systemd's file descriptor store (daemon/fd_store.h), and
// the next efused maps the same file and finds every record as the last one left it.
//
// Layout: a 4 KiB header page (magic, version, slot size, how far slots are in use, and a
// meta area of the owner's: the mount's identity and the negotiated INIT parameters), then
// slots of kSlotSize bytes. A slot is published by storing its kind last (release) and freed
// by storing kind 0 first, so a process killed in the middle of a write leaves either a
// complete record or none. Fields that change while published (lookup counts) are atomics.
//
// Kinds are owned by the layer that writes them (fuse/session: backing ids; fs backends:
// inodes and open files). One writer per slot; alloc/free are thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"

namespace efuse {

class SlotFile {
 public:
  static constexpr size_t kSlotSize = 192;
  static constexpr size_t kHeaderSize = 4096;
  static constexpr size_t kMetaSize = 2048;  // the owner's, at offset 2048 of the header
  static constexpr size_t kDataSize = 144;
  // Largest file (and mapping) a SlotFile grows to: about 22 million slots.
  static constexpr size_t kMaxSize = size_t{4} << 30;

  // Slot kinds (0: free).
  enum Kind : uint32_t {
    kFree = 0,
    kBacking = 1,     // fuse::Session: v0 nodeid, v1 backing id, v2 passthrough opens
    kBackingFh = 2,   // fuse::Session: v0 fh, v1 nodeid (a passthrough open)
    kNode = 16,       // passthrough backend: v0 nodeid, v1 nlookup, v2 st_dev, v3 st_ino,
                      //   data: u32 type, then the struct file_handle (len bytes in all)
    kOpen = 17,       // passthrough backend: v0 fh, v1 nodeid, v2 open flags, v3 bit 0: the
                      //   open is served through efused (page cache), not passthrough
    kNodeCounter = 18,  // passthrough backend: v0 the next nodeid to hand out
  };

  struct Slot {
    std::atomic<uint32_t> kind;
    uint32_t len;  // bytes used of data
    std::atomic<uint64_t> v[5];
    unsigned char data[kDataSize];
  };
  static_assert(sizeof(Slot) == kSlotSize);

  // A new, empty file (memfd named `name`).
  static Result<std::unique_ptr<SlotFile>> create(const std::string& name);
  // An existing file (from the fd store). EINVAL (with *why) when it is not a SlotFile of
  // this version or its header does not add up.
  static Result<std::unique_ptr<SlotFile>> adopt(UniqueFd fd, std::string* why);
  ~SlotFile();
  SlotFile(const SlotFile&) = delete;
  SlotFile& operator=(const SlotFile&) = delete;

  int fd() const { return fd_.get(); }

  // A zeroed slot, not yet published (kind 0), or nullptr when the file is full (then
  // incomplete() is true from now on: the state must not be resumed).
  Slot* alloc();
  // Publishes a slot filled since alloc().
  static void publish(Slot* s, Kind kind) { s->kind.store(kind, std::memory_order_release); }
  void free(Slot* s);
  // Every published slot of `kind`, in file order.
  void for_each(Kind kind, const std::function<void(Slot&)>& fn) const;
  // Something could not be recorded (the file is full, a file handle could not be taken):
  // the state does not describe the connection and must not be resumed.
  bool incomplete() const;
  void mark_incomplete();

  // The owner's meta area (kMetaSize bytes). Writers keep it consistent themselves.
  unsigned char* meta() const { return base_ + kHeaderSize - kMetaSize; }
  // Whether the last writer finished cleanly (set by mark_clean(), cleared by mark_dirty()).
  bool clean() const;
  void mark_clean(bool clean);

 private:
  SlotFile(UniqueFd fd, unsigned char* base);
  struct Header;
  Header* header() const;
  Slot* slot(size_t i) const {
    return reinterpret_cast<Slot*>(base_ + kHeaderSize + i * kSlotSize);
  }
  bool grow(size_t slots);  // with mu_ held

  UniqueFd fd_;
  unsigned char* base_;
  mutable std::mutex mu_;
  std::vector<uint32_t> free_;  // free slot indexes below the high-water mark
  size_t capacity_ = 0;         // slots the file has room for now
};

}  // namespace efuse
