// Session: entries and attributes (lookup, forget, getattr, setattr, the namespace
// operations, statfs, access).
#include "fuse/session.h"

#include <sys/stat.h>

#include <cstring>

#include "fuse/kernel_answers.h"
#include "fuse/session_request.h"

namespace fuse {

void Session::reply_entry(Request& r, const fs::Entry& e) {
  k::fuse_entry_out o{};
  o.nodeid = e.ino;
  o.generation = e.generation;
  split_timeout(e.entry_timeout, &o.entry_valid, &o.entry_valid_nsec);
  split_timeout(e.attr_timeout, &o.attr_valid, &o.attr_valid_nsec);
  encode_attr(e.attr, &o.attr);
  r.reply(o);
}

k::fuse_attr_out Session::attr_out(const fs::Attr& a) {
  k::fuse_attr_out o{};
  split_timeout(a.timeout, &o.attr_valid, &o.attr_valid_nsec);
  encode_attr(a.attr, &o.attr);
  return o;
}

void Session::reply_attr(Request& r, const fs::Attr& a) { r.reply(attr_out(a)); }

void Session::do_lookup(Request& r) {
  TAKE_NAME(name);
  auto e = fs_.lookup(r.ctx, r.hdr.nodeid, *name);
  if (!e.ok()) {
    // A negative entry with a timeout lets the kernel cache the absence.
    double neg_timeout = negative_timeout_.load(std::memory_order_relaxed);
    if (e.error() == ENOENT && neg_timeout > 0) {
      fs::Entry neg;
      neg.entry_timeout = neg_timeout;
      return reply_entry(r, neg);
    }
    return r.reply_err(e.error());
  }
  reply_entry(r, *e);
}

void Session::do_forget(Request& r) {
  r.none();
  auto in = r.body.take<k::fuse_forget_in>();
  if (!in) {
    decode_errors_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (KernelAnswers* a = answers_.load(std::memory_order_acquire)) {
    a->drain_releases();  // the node's RELEASEs taken over in the kernel come first
    a->forgotten(r.hdr.nodeid);
  }
  fs_.forget(r.hdr.nodeid, in->nlookup);
  node_forgotten(r.hdr.nodeid);
}

void Session::do_batch_forget(Request& r) {
  r.none();
  auto in = r.body.take<k::fuse_batch_forget_in>();
  if (!in) {
    decode_errors_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // The nodes' RELEASEs taken over in the kernel come first.
  if (KernelAnswers* a = answers_.load(std::memory_order_acquire)) a->drain_releases();
  for (uint32_t i = 0; i < in->count; ++i) {
    auto one = r.body.take<k::fuse_forget_one>();
    if (!one) {
      decode_errors_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (KernelAnswers* a = answers_.load(std::memory_order_acquire)) a->forgotten(one->nodeid);
    fs_.forget(one->nodeid, one->nlookup);
    node_forgotten(one->nodeid);
  }
}

void Session::do_getattr(Request& r) {
  TAKE(in, k::fuse_getattr_in);
  uint64_t fh = own_fh(r.ctx, r.hdr.nodeid, in->fh);
  auto a = fs_.getattr(r.ctx, r.hdr.nodeid, (in->getattr_flags & k::kGetattrFh) ? &fh : nullptr);
  if (!a.ok()) return r.reply_err(a.error());
  reply_attr(r, *a);
}

void Session::do_setattr(Request& r) {
  TAKE(in, k::fuse_setattr_in);
  fs::SetattrRequest s;
  uint32_t v = in->valid;
  s.set_mode = v & k::kFattrMode;
  s.set_uid = v & k::kFattrUid;
  s.set_gid = v & k::kFattrGid;
  s.set_size = v & k::kFattrSize;
  s.set_atime = v & k::kFattrAtime;
  s.set_mtime = v & k::kFattrMtime;
  s.atime_now = v & k::kFattrAtimeNow;
  s.mtime_now = v & k::kFattrMtimeNow;
  s.has_fh = v & k::kFattrFh;
  r.ctx.kill_suidgid = v & k::kFattrKillSuidgid;
  s.fh = s.has_fh ? own_fh(r.ctx, r.hdr.nodeid, in->fh) : in->fh;
  s.mode = in->mode;
  s.uid = in->uid;
  s.gid = in->gid;
  s.size = in->size;
  s.atime = {static_cast<time_t>(in->atime), static_cast<long>(in->atimensec)};
  s.mtime = {static_cast<time_t>(in->mtime), static_cast<long>(in->mtimensec)};
  if (s.atime.tv_nsec >= 1000000000 || s.mtime.tv_nsec >= 1000000000) return malformed(r);
  if (!s.set_size) {
    auto a = fs_.setattr(r.ctx, r.hdr.nodeid, s);
    if (!a.ok()) return r.reply_err(a.error());
    return reply_attr(r, *a);
  }
  // A size change may take long (freeing or allocating a large file's blocks).
  serve_blocking(r, efuse::accel::Blocking::Setattr, [this, ctx = r.ctx, nodeid = r.hdr.nodeid, s] {
    auto a = fs_.setattr(ctx, nodeid, s);
    if (!a.ok()) return BlockingAnswer::error(a.error());
    return BlockingAnswer::of(attr_out(*a));
  });
}

void Session::do_readlink(Request& r) {
  auto s = fs_.readlink(r.ctx, r.hdr.nodeid);
  if (!s.ok()) return r.reply_err(s.error());
  r.reply(s->data(), s->size());
}

void Session::do_symlink(Request& r) {
  TAKE_NAME(name);
  auto target = r.body.take_string();
  if (!target || target->empty()) return malformed(r);
  auto e = fs_.symlink(r.ctx, r.hdr.nodeid, *name, *target);
  if (!e.ok()) return r.reply_err(e.error());
  reply_entry(r, *e);
}

void Session::do_mknod(Request& r) {
  TAKE(in, k::fuse_mknod_in);
  TAKE_NAME(name);
  if (negotiated_.has(k::init::kDontMask)) r.ctx.umask = in->umask;
  auto e = fs_.mknod(r.ctx, r.hdr.nodeid, *name, in->mode, in->rdev);
  if (!e.ok()) return r.reply_err(e.error());
  reply_entry(r, *e);
}

void Session::do_mkdir(Request& r) {
  TAKE(in, k::fuse_mkdir_in);
  TAKE_NAME(name);
  if (negotiated_.has(k::init::kDontMask)) r.ctx.umask = in->umask;
  auto e = fs_.mkdir(r.ctx, r.hdr.nodeid, *name, in->mode);
  if (!e.ok()) return r.reply_err(e.error());
  reply_entry(r, *e);
}

void Session::do_unlink(Request& r) {
  TAKE_NAME(name);
  auto s = fs_.unlink(r.ctx, r.hdr.nodeid, *name);
  r.reply_err(s.error());
}

void Session::do_rmdir(Request& r) {
  TAKE_NAME(name);
  auto s = fs_.rmdir(r.ctx, r.hdr.nodeid, *name);
  r.reply_err(s.error());
}

void Session::do_rename(Request& r) {  // RENAME and RENAME2 (with flags)
  auto rn = take_rename(r.hdr.opcode, r.body);
  if (!rn) return malformed(r);
  r.reply_err(fs_.rename(r.ctx, r.hdr.nodeid, rn->from, rn->newdir, rn->to, rn->flags).error());
}

void Session::do_rename2(Request& r) { do_rename(r); }

void Session::do_link(Request& r) {
  TAKE(in, k::fuse_link_in);
  TAKE_NAME(name);
  auto e = fs_.link(r.ctx, in->oldnodeid, r.hdr.nodeid, *name);
  if (!e.ok()) return r.reply_err(e.error());
  reply_entry(r, *e);
}

void Session::do_statfs(Request& r) {
  auto s = fs_.statfs(r.ctx, r.hdr.nodeid);
  if (!s.ok()) return r.reply_err(s.error());
  k::fuse_statfs_out o{};
  o.st.blocks = s->f_blocks;
  o.st.bfree = s->f_bfree;
  o.st.bavail = s->f_bavail;
  o.st.files = s->f_files;
  o.st.ffree = s->f_ffree;
  o.st.bsize = static_cast<uint32_t>(s->f_bsize);
  o.st.namelen = static_cast<uint32_t>(s->f_namemax);
  o.st.frsize = static_cast<uint32_t>(s->f_frsize);
  r.reply(o);
}

void Session::do_access(Request& r) {
  TAKE(in, k::fuse_access_in);
  r.reply_err(fs_.access(r.ctx, r.hdr.nodeid, static_cast<int>(in->mask)).error());
}

}  // namespace fuse
