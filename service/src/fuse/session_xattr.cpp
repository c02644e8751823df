// Session: extended attributes. With SessionOptions::xattr off every xattr request is
// answered ENOSYS: the kernel then stops sending that request for the connection.
#include "fuse/session.h"

#include "fuse/session_request.h"

namespace fuse {

void Session::do_setxattr(Request& r) {
  if (!opts_.xattr) return r.reply_err(ENOSYS);
  size_t in_size = negotiated_.has(k::init::kSetxattrExt) ? sizeof(k::fuse_setxattr_in)
                                                          : k::kCompatSetxattrInSize;
  auto in = r.body.take_prefix<k::fuse_setxattr_in>(in_size);
  if (!in) return malformed(r);
  auto name = r.body.take_string();
  if (!name || name->empty()) return malformed(r);
  auto value = r.body.take_bytes(in->size);
  if (!value) return malformed(r);
  // Only the extended struct has setxattr_flags (FUSE_SETXATTR_EXT).
  r.ctx.kill_sgid = in_size == sizeof(k::fuse_setxattr_in) &&
                    (in->setxattr_flags & k::kSetxattrAclKillSgid);
  r.reply_err(fs_.setxattr(r.ctx, r.hdr.nodeid, *name, *value, static_cast<int>(in->flags)).error());
}

void Session::do_getxattr(Request& r) {
  if (!opts_.xattr) return r.reply_err(ENOSYS);
  TAKE(in, k::fuse_getxattr_in);
  auto name = r.body.take_string();
  if (!name || name->empty()) return malformed(r);
  if (in->size == 0) {
    auto n = fs_.getxattr(r.ctx, r.hdr.nodeid, *name, {});
    if (!n.ok()) return r.reply_err(n.error());
    k::fuse_getxattr_out o{static_cast<uint32_t>(*n), 0};
    return r.reply(o);
  }
  if (in->size > r.scratch.size()) return r.reply_err(E2BIG);
  auto n = fs_.getxattr(r.ctx, r.hdr.nodeid, *name, r.scratch.first(in->size));
  if (!n.ok()) return r.reply_err(n.error());
  r.reply(r.scratch.data(), *n);
}

void Session::do_listxattr(Request& r) {
  if (!opts_.xattr) return r.reply_err(ENOSYS);
  TAKE(in, k::fuse_getxattr_in);
  if (in->size == 0) {
    auto n = fs_.listxattr(r.ctx, r.hdr.nodeid, {});
    if (!n.ok()) return r.reply_err(n.error());
    k::fuse_getxattr_out o{static_cast<uint32_t>(*n), 0};
    return r.reply(o);
  }
  if (in->size > r.scratch.size()) return r.reply_err(E2BIG);
  auto n = fs_.listxattr(r.ctx, r.hdr.nodeid, r.scratch.first(in->size));
  if (!n.ok()) return r.reply_err(n.error());
  r.reply(r.scratch.data(), *n);
}

void Session::do_removexattr(Request& r) {
  if (!opts_.xattr) return r.reply_err(ENOSYS);
  auto name = r.body.take_string();
  if (!name || name->empty()) return malformed(r);
  r.reply_err(fs_.removexattr(r.ctx, r.hdr.nodeid, *name).error());
}

}  // namespace fuse
