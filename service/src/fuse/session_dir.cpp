// Session: directory operations (opendir, readdir, readdirplus, releasedir, fsyncdir).
#include "fuse/session.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>

#include "fuse/session_request.h"

namespace fuse {

void Session::do_opendir(Request& r) {
  TAKE(in, k::fuse_open_in);
  auto o = fs_.opendir(r.ctx, r.hdr.nodeid, static_cast<int>(in->flags));
  if (!o.ok()) return r.reply_err(o.error());
  reply_open(r, *o, true);
}

namespace {

class BufferDirSink final : public fs::DirSink {
 public:
  BufferDirSink(std::span<char> buf, bool plus) : buf_(buf), plus_(plus) {}
  bool plus() const override { return plus_; }
  bool fits(std::string_view name) const override {
    size_t need = plus_ ? k::direntplus_size(name.size()) : k::dirent_size(name.size());
    return used_ + need <= buf_.size();
  }
  bool add(std::string_view name, uint64_t ino, uint32_t dtype, uint64_t next_off) override {
    if (plus_) {
      fs::Entry e;
      e.attr.st_ino = ino;
      e.attr.st_mode = dtype << 12;
      return add_plus(name, e, next_off);
    }
    size_t need = k::dirent_size(name.size());
    if (used_ + need > buf_.size()) return false;
    char* p = buf_.data() + used_;
    k::fuse_dirent d{ino, next_off, static_cast<uint32_t>(name.size()), dtype};
    std::memcpy(p, &d, sizeof d);
    std::memcpy(p + sizeof d, name.data(), name.size());
    std::memset(p + sizeof d + name.size(), 0, need - sizeof d - name.size());
    used_ += need;
    return true;
  }
  bool add_plus(std::string_view name, const fs::Entry& e, uint64_t next_off) override {
    size_t need = k::direntplus_size(name.size());
    if (used_ + need > buf_.size()) return false;
    char* p = buf_.data() + used_;
    k::fuse_direntplus d{};
    d.entry_out.nodeid = e.ino;
    d.entry_out.generation = e.generation;
    split_timeout(e.entry_timeout, &d.entry_out.entry_valid, &d.entry_out.entry_valid_nsec);
    split_timeout(e.attr_timeout, &d.entry_out.attr_valid, &d.entry_out.attr_valid_nsec);
    encode_attr(e.attr, &d.entry_out.attr);
    d.dirent = {e.attr.st_ino, next_off, static_cast<uint32_t>(name.size()),
                static_cast<uint32_t>((e.attr.st_mode & S_IFMT) >> 12)};
    std::memcpy(p, &d, sizeof d);
    std::memcpy(p + sizeof d, name.data(), name.size());
    std::memset(p + sizeof d + name.size(), 0, need - sizeof d - name.size());
    used_ += need;
    return true;
  }
  size_t used() const { return used_; }

 private:
  std::span<char> buf_;
  bool plus_;
  size_t used_ = 0;
};

}  // namespace

void Session::readdir_common(Request& r, bool plus) {
  TAKE(in, k::fuse_read_in);
  size_t size = std::min<size_t>(in->size, r.scratch.size());
  BufferDirSink sink(r.scratch.first(size), plus);
  auto s = fs_.readdir(r.ctx, r.hdr.nodeid, in->fh, in->offset, sink);
  // Entries already added must reach the kernel (readdirplus counted lookups for them).
  if (!s.ok() && sink.used() == 0) return r.reply_err(s.error());
  r.reply(r.scratch.data(), sink.used());
}

void Session::do_readdir(Request& r) { readdir_common(r, false); }
void Session::do_readdirplus(Request& r) { readdir_common(r, true); }

void Session::do_releasedir(Request& r) {
  TAKE(in, k::fuse_release_in);
  r.reply_err(fs_.releasedir(r.ctx, r.hdr.nodeid, in->fh).error());
}

void Session::do_fsyncdir(Request& r) {
  TAKE(in, k::fuse_fsync_in);
  serve_blocking(r, efuse::accel::Blocking::Fsyncdir,
                 [this, ctx = r.ctx, nodeid = r.hdr.nodeid, fh = in->fh,
                  datasync = (in->fsync_flags & k::kFsyncFdatasync) != 0] {
                   return BlockingAnswer::error(fs_.fsyncdir(ctx, nodeid, fh, datasync).error());
                 });
}

}  // namespace fuse
