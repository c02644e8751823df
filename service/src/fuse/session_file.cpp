// Session: file operations (open, create, read, write, flush, release, fsync, fallocate,
// lseek, copy_file_range).
#include "fuse/session.h"

#include <fcntl.h>
#include <sys/file.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "fuse/kernel_answers.h"
#include "fuse/session_request.h"

namespace fuse {

void Session::reply_open(Request& r, const fs::OpenInfo& info, bool dir) {
  k::fuse_open_out o;
  fill_open_out(&o, info, dir, r.hdr.nodeid);
  r.reply(o);
}

void Session::do_open(Request& r) {
  TAKE(in, k::fuse_open_in);
  r.ctx.kill_suidgid = in->open_flags & k::kOpenKillSuidgid;
  auto o = fs_.open(r.ctx, r.hdr.nodeid, static_cast<int>(in->flags));
  if (!o.ok()) return r.reply_err(o.error());
  reply_open(r, *o, false);
}

void Session::do_create(Request& r) {
  TAKE(in, k::fuse_create_in);
  TAKE_NAME(name);
  if (negotiated_.has(k::init::kDontMask)) r.ctx.umask = in->umask;
  r.ctx.kill_suidgid = in->open_flags & k::kOpenKillSuidgid;
  auto create = [this, ctx = r.ctx, parent = r.hdr.nodeid, leaf = std::string(*name),
                 mode = in->mode, flags = static_cast<int>(in->flags)] {
    auto c = fs_.create(ctx, parent, leaf, mode, flags);
    if (!c.ok()) return BlockingAnswer::error(c.error());
    struct {
      k::fuse_entry_out e;
      k::fuse_open_out o;
    } out{};
    out.e.nodeid = c->entry.ino;
    out.e.generation = c->entry.generation;
    split_timeout(c->entry.entry_timeout, &out.e.entry_valid, &out.e.entry_valid_nsec);
    split_timeout(c->entry.attr_timeout, &out.e.attr_valid, &out.e.attr_valid_nsec);
    encode_attr(c->entry.attr, &out.e.attr);
    fill_open_out(&out.o, c->open, false, c->entry.ino);
    static_assert(sizeof out == sizeof(k::fuse_entry_out) + sizeof(k::fuse_open_out));
    return BlockingAnswer::of(out);
  };
  // Only a create that truncates an existing file may take long (freeing its blocks).
  if (!(in->flags & O_TRUNC)) {
    BlockingAnswer a = create();
    return a.err != 0 ? r.reply_err(a.err) : r.reply(a.body.data(), a.len);
  }
  serve_blocking(r, efuse::accel::Blocking::Create, std::move(create));
}

void Session::do_read(Request& r) {
  TAKE(in, k::fuse_read_in);
  size_t size = std::min<size_t>(in->size, r.scratch.size());
  if (r.answers != nullptr && r.answers->keeps_read(in->offset)) {
    // The READ block cache keeps what this reply carries as the version of the file these
    // attributes describe, so they are taken before the bytes (fuse/kernel_answers.h).
    const uint64_t fh = own_fh(r.ctx, r.hdr.nodeid, in->fh);
    if (auto a = fs_.getattr(r.ctx, r.hdr.nodeid, &fh); a.ok()) {
      r.read_stamp = {static_cast<uint64_t>(a->attr.st_size),
                      static_cast<uint64_t>(a->attr.st_mtim.tv_sec) * 1000000000ULL +
                          static_cast<uint64_t>(a->attr.st_mtim.tv_nsec)};
      r.read_attrs = true;
    }
  }
  auto n = fs_.read(r.ctx, r.hdr.nodeid, own_fh(r.ctx, r.hdr.nodeid, in->fh), in->offset,
                    r.scratch.first(size));
  if (!n.ok()) return r.reply_err(n.error());
  r.reply(r.scratch.data(), std::min(*n, size));
}

void Session::do_write(Request& r) {
  TAKE(in, k::fuse_write_in);
  auto data = r.body.take_bytes(in->size);
  if (!data) return malformed(r);
  r.ctx.kill_suidgid = in->write_flags & k::kWriteKillSuidgid;
  auto n = fs_.write(r.ctx, r.hdr.nodeid, own_fh(r.ctx, r.hdr.nodeid, in->fh), in->offset, *data);
  if (!n.ok()) return r.reply_err(n.error());
  k::fuse_write_out o{};
  o.size = static_cast<uint32_t>(*n);
  r.reply(o);
}

void Session::do_flush(Request& r) {
  TAKE(in, k::fuse_flush_in);
  const uint64_t fh = own_fh(r.ctx, r.hdr.nodeid, in->fh);
  flock_closed(r.hdr.nodeid, fh, false);
  r.reply_err(fs_.flush(r.ctx, r.hdr.nodeid, fh, in->lock_owner).error());
}

void Session::do_release(Request& r) {
  TAKE(in, k::fuse_release_in);
  r.reply_err(release_open(r.ctx, r.hdr.nodeid, in->fh, in->release_flags).error());
}

Status Session::release_open(const fs::Context& ctx, uint64_t nodeid, uint64_t kernel_fh,
                             uint32_t release_flags) {
  const std::optional<uint64_t> fh = released_kernel_fh(kernel_fh);
  if (!fh) return {};  // an open a handler answered: nothing held for it
  backing_released(*fh);
  if (release_flags & k::kReleaseFlockUnlock) (void)fs_.flock(ctx, nodeid, *fh, LOCK_UN);
  Status s = fs_.release(ctx, nodeid, *fh);
  flock_closed(nodeid, *fh, true);  // after the description is gone
  return s;
}

// A RELEASE the module's RELEASE handler took over (kmod patch 0015): carried out as the
// request, on the handler set's reader thread (or before a FORGET), with no caller.
void Session::released_in_kernel(uint64_t nodeid, uint64_t fh, uint32_t flags,
                                 uint32_t release_flags) {
  (void)release_open(fs::Context{}, nodeid, fh, release_flags);
  // What keep_answers does for a RELEASE request.
  if (for_writing(flags))
    if (KernelAnswers* a = answers_.load(std::memory_order_acquire)) a->write_released(nodeid);
  kernel_releases_.fetch_add(1, std::memory_order_relaxed);
}

void Session::do_fsync(Request& r) {
  TAKE(in, k::fuse_fsync_in);
  serve_blocking(r, efuse::accel::Blocking::Fsync,
                 [this, ctx = r.ctx, nodeid = r.hdr.nodeid, fh = own_fh(r.ctx, r.hdr.nodeid, in->fh),
                  datasync = (in->fsync_flags & k::kFsyncFdatasync) != 0] {
                   return BlockingAnswer::error(fs_.fsync(ctx, nodeid, fh, datasync).error());
                 });
}

void Session::do_fallocate(Request& r) {
  TAKE(in, k::fuse_fallocate_in);
  serve_blocking(r, efuse::accel::Blocking::Fallocate,
                 [this, ctx = r.ctx, nodeid = r.hdr.nodeid, fh = own_fh(r.ctx, r.hdr.nodeid, in->fh),
                  mode = static_cast<int>(in->mode), off = in->offset, len = in->length] {
                   return BlockingAnswer::error(
                       fs_.fallocate(ctx, nodeid, fh, mode, off, len).error());
                 });
}

void Session::do_lseek(Request& r) {
  TAKE(in, k::fuse_lseek_in);
  auto off = fs_.lseek(r.ctx, r.hdr.nodeid, own_fh(r.ctx, r.hdr.nodeid, in->fh), in->offset,
                       static_cast<int>(in->whence));
  if (!off.ok()) return r.reply_err(off.error());
  k::fuse_lseek_out o{*off};
  r.reply(o);
}

void Session::do_copy_file_range(Request& r) {
  TAKE(in, k::fuse_copy_file_range_in);
  auto n = fs_.copy_file_range(r.ctx, r.hdr.nodeid, own_fh(r.ctx, r.hdr.nodeid, in->fh_in),
                               in->off_in, in->nodeid_out,
                               own_fh(r.ctx, in->nodeid_out, in->fh_out), in->off_out, in->len,
                               in->flags);
  if (!n.ok()) return r.reply_err(n.error());
  k::fuse_write_out o{};
  o.size = static_cast<uint32_t>(std::min<size_t>(*n, UINT32_MAX));
  r.reply(o);
}

}  // namespace fuse
