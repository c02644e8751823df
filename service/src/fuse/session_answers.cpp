// Session: keeping the kernel module's handler maps exact (KernelAnswers, fuse/kernel_answers.h).
// Called for every reply just before it is sent, with the request as the kernel sent it and
// the reply body: what the reply answers goes into the maps, what the request changed is
// dropped from them. Nothing here touches the stock tier (no KernelAnswers attached).
#include <fcntl.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <optional>
#include <span>

#include "fuse/kernel_answers.h"
#include "fuse/session_request.h"

namespace fuse {

namespace {

// The reply body, when it went out in one piece (every reply that matters here does).
std::span<const char> body_of(const struct iovec* payload, int n) {
  if (n != 1 || payload == nullptr) return {};
  return {static_cast<const char*>(payload[0].iov_base), payload[0].iov_len};
}

// The attribute validity a reply gave the kernel, for KernelAnswers::attr_validity: the
// attributes of a GETATTR or SETATTR, or those of an entry (creating operations' replies
// start with their entry).
void note_validity(KernelAnswers& a, uint32_t opcode, std::span<const char> body) {
  switch (static_cast<k::Opcode>(opcode)) {
    case k::Opcode::Getattr:
    case k::Opcode::Setattr: {
      k::fuse_attr_out o;
      if (body.size() != sizeof o) return;
      std::memcpy(&o, body.data(), sizeof o);
      return a.attr_validity(o.attr_valid, o.attr_valid_nsec);
    }
    case k::Opcode::Lookup:
    case k::Opcode::Create:
    case k::Opcode::Mknod:
    case k::Opcode::Mkdir:
    case k::Opcode::Symlink:
    case k::Opcode::Link: {
      k::fuse_entry_out e;
      if (body.size() < sizeof e) return;
      std::memcpy(&e, body.data(), sizeof e);
      if (e.nodeid != 0) a.attr_validity(e.attr_valid, e.attr_valid_nsec);
      return;
    }
    default:
      return;
  }
}

uint64_t entry_nodeid(std::span<const char> body) {
  k::fuse_entry_out e;
  if (body.size() < sizeof e) return 0;
  std::memcpy(&e, body.data(), sizeof e);
  return e.nodeid;
}

// An OPEN reply (or CREATE's open part) in passthrough mode with a backing id.
std::optional<k::fuse_open_out> passthrough_open(std::span<const char> body) {
  k::fuse_open_out o;
  if (body.size() != sizeof o) return std::nullopt;
  std::memcpy(&o, body.data(), sizeof o);
  if (!(o.open_flags & k::kFopenPassthrough) || o.backing_id <= 0) return std::nullopt;
  return o;
}

// Whether an OPEN reply keeps the kernel's page cache of the file (FOPEN_KEEP_CACHE).
bool keeps_cache(std::span<const char> body) {
  k::fuse_open_out o;
  if (body.size() != sizeof o) return false;
  std::memcpy(&o, body.data(), sizeof o);
  return (o.open_flags & k::kFopenKeepCache) != 0;
}

// The entries of a READDIRPLUS reply: each one with a node is an entry reply for its name
// (the kernel takes it as a LOOKUP's), stored as the name's positive LOOKUP answer and
// indexed. Entries without a node (nodeid 0: the name only) say nothing of the name's
// absence and are not stored.
void store_direntplus(KernelAnswers& a, uint64_t dir, std::span<const char> body,
                      uint64_t since) {
  while (body.size() >= sizeof(k::fuse_direntplus)) {
    k::fuse_direntplus d;
    std::memcpy(&d, body.data(), sizeof d);
    size_t len = k::direntplus_size(d.dirent.namelen);
    if (len > body.size()) return;
    const std::string_view name(body.data() + sizeof d, d.dirent.namelen);
    if (d.entry_out.nodeid != 0)
      a.store_lookup(dir, name, 0,
                     std::span<const char>(body.data() + offsetof(k::fuse_direntplus, entry_out),
                                           sizeof d.entry_out),
                     since);
    body = body.subspan(len);
  }
}

}  // namespace

uint64_t Session::answers_begin(uint32_t opcode) {
  KernelAnswers* a = answers_.load(std::memory_order_acquire);
  if (a == nullptr) return 0;
  switch (static_cast<k::Opcode>(opcode)) {
    case k::Opcode::Getattr:
    case k::Opcode::Lookup:
    case k::Opcode::Getxattr:
    case k::Opcode::Listxattr:
    case k::Opcode::Access:
    case k::Opcode::Read:
    case k::Opcode::Readdirplus:
    case k::Opcode::Create:
    case k::Opcode::Mknod:
    case k::Opcode::Mkdir:
    case k::Opcode::Symlink:
      break;
    default:
      return 0;
  }
  return a->begin();
}

void Session::answers_before(Request& r) noexcept {
  KernelAnswers* a = r.answers;
  if (a == nullptr) return;
  try {
    // The names the request may make go into the index of a complete directory before the
    // backend makes them (KernelAnswers::name_adding): a LOOKUP racing it goes up.
    Reader in(r.raw);
    const uint64_t node = r.hdr.nodeid;
    std::optional<std::string_view> name;
    switch (static_cast<k::Opcode>(r.hdr.opcode)) {
      case k::Opcode::Create:
        if (in.take<k::fuse_create_in>()) name = in.take_name();
        break;
      case k::Opcode::Mknod:
        if (in.take<k::fuse_mknod_in>()) name = in.take_name();
        break;
      case k::Opcode::Mkdir:
        if (in.take<k::fuse_mkdir_in>()) name = in.take_name();
        break;
      case k::Opcode::Symlink:
        name = in.take_name();
        break;
      case k::Opcode::Link:
        if (in.take<k::fuse_link_in>()) name = in.take_name();
        break;
      case k::Opcode::Rename:
      case k::Opcode::Rename2: {
        auto rn = take_rename(r.hdr.opcode, in);
        if (!rn) return;
        a->name_adding(rn->newdir, rn->to);
        // RENAME_EXCHANGE moves the target's object to the source name, which stays.
        if (rn->flags & RENAME_EXCHANGE) a->name_adding(node, rn->from);
        return;
      }
      default:
        return;
    }
    if (name) a->name_adding(node, *name);
  } catch (...) {
    // Only allocating a name can fail (std::bad_alloc): the directory may lack it in the
    // index, so it is complete no more.
    a->names_unknown(r.hdr.nodeid);
    LOG_ERROR("kernel answers: out of memory before %s; its directory's negative answers "
              "are dropped", opcode_name(r.hdr.opcode));
  }
}

void Session::keep_answers(Request& r, const struct iovec* payload, int n, int err) noexcept {
  KernelAnswers* a = r.answers;
  if (a == nullptr) return;
  try {
    Reader in(r.raw);
    const uint64_t node = r.hdr.nodeid;
    const bool ok = err == 0;
    const std::span<const char> body = body_of(payload, n);
    if (ok) note_validity(*a, r.hdr.opcode, body);
    switch (static_cast<k::Opcode>(r.hdr.opcode)) {
      case k::Opcode::Getattr:
        if (ok) a->store_attr(node, body, r.answers_since);
        break;
      case k::Opcode::Lookup:
        if (auto name = in.take_name()) a->store_lookup(node, *name, err, body, r.answers_since);
        break;
      case k::Opcode::Getxattr:
        if (auto gin = in.take<k::fuse_getxattr_in>()) {
          if (auto name = in.take_name())
            a->store_xattr(node, *name, err, gin->size, body, r.answers_since);
        }
        break;
      case k::Opcode::Listxattr:
        if (auto gin = in.take<k::fuse_getxattr_in>())
          a->store_xattr(node, {}, err, gin->size, body, r.answers_since);
        break;
      case k::Opcode::Access:
        if (auto ain = in.take<k::fuse_access_in>())
          a->store_access(node, r.hdr.uid, r.hdr.gid, ain->mask, err, r.answers_since);
        break;
      case k::Opcode::Read:
        if (auto rin = in.take<k::fuse_read_in>(); rin && ok && r.read_attrs)
          a->store_read(node, rin->offset, rin->size, body, r.read_stamp, r.answers_since);
        break;
      case k::Opcode::Setattr:
      case k::Opcode::Write:
      case k::Opcode::Fallocate:
        a->attr_changed(node);
        break;
      case k::Opcode::Setxattr:
      case k::Opcode::Removexattr:
        a->xattrs_changed(node);
        break;
      case k::Opcode::CopyFileRange:
        if (auto cin = in.take<k::fuse_copy_file_range_in>()) a->attr_changed(cin->nodeid_out);
        break;
      case k::Opcode::Open:
        if (auto o = in.take<k::fuse_open_in>()) {
          // An open without FOPEN_KEEP_CACHE makes the kernel drop the file's pages (close
          // to open consistency): its READ blocks go too.
          if (o->flags & O_TRUNC) a->attr_changed(node);
          if (ok && !keeps_cache(body)) a->pages_dropped(node);
          if (ok && for_writing(o->flags)) a->write_opened(node);
          // What the OPEN handler answers (efuse_open.bpf.c): read-only, no O_TRUNC,
          // passthrough. The FLUSH handler answers the FLUSH of every passthrough open of
          // the node, this one too (kmod patch 0013), until a lock is asked for.
          const auto pt = ok ? passthrough_open(body) : std::nullopt;
          if (pt && !for_writing(o->flags) && !(o->flags & O_TRUNC) && a->opens_allowed() &&
              hold_for_kernel_opens(r.ctx, node, pt->backing_id))
            a->store_open(node, pt->backing_id);
          if (pt) a->store_flush(node);
        }
        break;

      case k::Opcode::Release:
        if (auto rel = in.take<k::fuse_release_in>(); rel && for_writing(rel->flags))
          a->write_released(node);
        break;
      case k::Opcode::Create: {
        auto c = in.take<k::fuse_create_in>();
        auto name = c ? in.take_name() : std::nullopt;
        if (!name) break;
        a->name_created(node, *name);
        if (!ok) {
          a->names_unknown(node);  // perhaps made before it failed (KernelAnswers)
          break;
        }
        uint64_t child = entry_nodeid(body);
        a->entry_sent(node, *name, child);
        // A new file (O_EXCL; without it CREATE may have opened an existing one), before
        // its writable open stamps it (which keeps absences).
        if (c->flags & O_EXCL) a->node_created(child, r.answers_since);
        if (child != 0 && (c->flags & O_TRUNC)) a->attr_changed(child);  // an existing file
        if (child != 0 && for_writing(c->flags)) a->write_opened(child);
        // Its FLUSH, when the new open is in passthrough mode (kmod patch 0013).
        if (child != 0 && body.size() > sizeof(k::fuse_entry_out) &&
            passthrough_open(body.subspan(sizeof(k::fuse_entry_out))))
          a->store_flush(child);
        restore_dir_attr(r, *a, node);
        break;
      }
      case k::Opcode::Mknod:
      case k::Opcode::Mkdir:
      case k::Opcode::Symlink:
      case k::Opcode::Link: {
        std::optional<std::string_view> name;
        if (r.hdr.opcode == static_cast<uint32_t>(k::Opcode::Mknod)) {
          if (in.take<k::fuse_mknod_in>()) name = in.take_name();
        } else if (r.hdr.opcode == static_cast<uint32_t>(k::Opcode::Mkdir)) {
          if (in.take<k::fuse_mkdir_in>()) name = in.take_name();
        } else if (r.hdr.opcode == static_cast<uint32_t>(k::Opcode::Link)) {
          if (auto l = in.take<k::fuse_link_in>()) {
            a->attr_changed(l->oldnodeid);
            name = in.take_name();
          }
        } else {
          name = in.take_name();
        }
        if (!name) break;
        a->name_created(node, *name);
        if (!ok) {
          a->names_unknown(node);  // perhaps made before it failed (KernelAnswers)
          break;
        }
        a->entry_sent(node, *name, entry_nodeid(body));
        if (r.hdr.opcode != static_cast<uint32_t>(k::Opcode::Link))  // LINK: an old node
          a->node_created(entry_nodeid(body), r.answers_since);
        // A new directory is empty: every name it will hold goes through name_adding (or
        // the watcher, which takes the mark away), so lookups of others are answered
        // negative in the kernel.
        if (r.hdr.opcode == static_cast<uint32_t>(k::Opcode::Mkdir)) {
          const uint64_t child = entry_nodeid(body);
          if (child != 0 && fs_.new_dir_complete(child))
            a->dir_complete(child, negative_timeout_.load(std::memory_order_relaxed),
                            r.answers_since);
        }
        restore_dir_attr(r, *a, node);
        break;
      }
      case k::Opcode::Unlink:
      case k::Opcode::Rmdir:
        if (auto name = in.take_name()) {
          a->name_removed(node, *name, ok);
          if (ok) {
            a->name_gone(node, *name);
            restore_dir_attr(r, *a, node);
          }
        }
        break;
      case k::Opcode::Rename:
      case k::Opcode::Rename2: {
        auto rn = take_rename(r.hdr.opcode, in);
        if (!rn) break;
        const uint64_t newdir = rn->newdir;
        const uint32_t flags = rn->flags;
        a->name_moved(node, rn->from, newdir, rn->to, (flags & RENAME_EXCHANGE) != 0, ok);
        if (!ok) {
          // name_adding put the target (and with RENAME_EXCHANGE the source) in before; what
          // a failed rename left behind efused cannot tell.
          a->names_unknown(newdir);
          if (flags & RENAME_EXCHANGE) a->names_unknown(node);
          break;
        }
        if (!(flags & (RENAME_EXCHANGE | RENAME_WHITEOUT)))
          a->name_gone(node, rn->from);  // a whiteout takes the source name's place
        restore_dir_attr(r, *a, node);
        if (newdir != node) restore_dir_attr(r, *a, newdir);
        break;
      }
      case k::Opcode::Readdirplus:
        if (ok) store_direntplus(*a, node, body, r.answers_since);
        break;
      case k::Opcode::Statfs:
        if (ok) a->store_statfs(node, body, statfs_timeout_.load(std::memory_order_relaxed));
        break;
      default:
        break;
    }
  } catch (...) {
    // Only allocating a name can fail (std::bad_alloc); the change may then not have been
    // applied to the maps, which an operator must know about.
    LOG_ERROR("kernel answers: out of memory while keeping the handler maps exact for %s; "
              "handler answers may be stale until the mount restarts",
              opcode_name(r.hdr.opcode));
  }
}

// After a change of `dir`'s entries, made through the mount and successful: the change's
// drop (name_created, name_removed, name_moved) took the directory's attributes out, and
// the kernel marks its own copy stale when it gets the reply (fuse_dir_changed), so the
// next path walk through `dir` asks for them (the MAY_EXEC check of default_permissions):
// one GETATTR per entry a tar extracts. Stored here as efused would answer that GETATTR,
// read after the change; a change of `dir` racing this read stamps the directory after
// begin() and the store is skipped (KernelAnswers::store_attr), as for a GETATTR reply.
void Session::restore_dir_attr(Request& r, KernelAnswers& a, uint64_t dir) {
  if (dir == 0 || !a.keeps_attrs()) return;
  const uint64_t since = a.begin();
  auto attr = fs_.getattr(r.ctx, dir, nullptr);
  if (!attr.ok()) return;
  const k::fuse_attr_out o = attr_out(*attr);
  a.store_attr(dir, {reinterpret_cast<const char*>(&o), sizeof o}, since);
}

}  // namespace fuse
