// Memory backend: construction, metrics, attributes and the namespace operations.
#include "fs/memory/memory_fs.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>  // RENAME_NOREPLACE, RENAME_EXCHANGE
#include <limits>
#include <mutex>
#include <new>
#include <vector>

#include "common/log.h"
#include "fs/memory/acl.h"
#include "fs/memory/store.h"

namespace efuse::fs::memory {

namespace {

constexpr size_t kNameMax = 255;
constexpr size_t kPathMax = 4096;
// Directory sizes as tmpfs reports them: a bogus 20 bytes per entry, "." and ".." included.
constexpr uint64_t kDirentSize = 20;

struct timespec now() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

// An entry of `dir` was created, removed or renamed at `t` (after the change): its times, and
// what keeps the kernel's cached listing of it exact (memory_dir.cpp).
void touch_dir(Node& dir, const struct timespec& t) {
  dir.mtime = dir.ctime = t;
  dir.entries_changed();
}

Status check_name(std::string_view name) {
  if (name.empty() || name == "." || name == "..") return Errno{EINVAL};
  if (name.size() > kNameMax) return Errno{ENAMETOOLONG};
  if (name.find('/') != std::string_view::npos) return Errno{EINVAL};
  return {};
}

// What a change of owner clears on a non-directory: set-user-ID, and set-group-ID when
// the group may execute (without group execute it marks mandatory locking and stays).
mode_t killed_privs(mode_t mode) {
  mode_t kill = S_ISUID;
  if ((mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP)) kill |= S_ISGID;
  return mode & ~kill;
}

}  // namespace

Node::Node(Pool& pool_, uint64_t nodeid_, mode_t mode_) : pool(pool_), nodeid(nodeid_), mode(mode_) {
  atime = mtime = ctime = now();
}

Node::~Node() {
  if (fd >= 0) ::close(fd);
  pool.release(xattr_blocks);
  pool.give_inode();
}

struct stat Node::attributes() const {
  struct stat st {};
  st.st_ino = nodeid;
  st.st_mode = mode;
  st.st_nlink = nlink;
  st.st_uid = uid;
  st.st_gid = gid;
  st.st_rdev = rdev;
  st.st_size = static_cast<off_t>(is_dir() ? kDirentSize * (names.size() + 2) : size);
  st.st_blksize = kBlockSize;
  st.st_blocks =
      static_cast<blkcnt_t>((blocks.size() + xattr_blocks) * (kBlockSize / 512)) + data_blocks;
  st.st_atim = atime;
  st.st_mtim = mtime;
  st.st_ctim = ctime;
  struct stat data;
  if (S_ISREG(mode) && pool.store() != nullptr && pool.store()->stat(nodeid, fd, &data).ok()) {
    // The data file knows what passthrough writes did: size, pages, mtime, ctime. A change
    // of the inode's own (chmod, link, xattr) is in `ctime`; the later of the two wins.
    st.st_size = data.st_size;
    st.st_blocks = static_cast<blkcnt_t>(data.st_blocks + xattr_blocks * (kBlockSize / 512));
    st.st_mtim = data.st_mtim;
    if (data.st_ctim.tv_sec > ctime.tv_sec ||
        (data.st_ctim.tv_sec == ctime.tv_sec && data.st_ctim.tv_nsec > ctime.tv_nsec))
      st.st_ctim = data.st_ctim;
  }
  return st;
}

MemoryFs::MemoryFs(const Limits& limits, const Policy& policy, bool store)
    : pool_(1, 1),
      entry_timeout_(policy.entry_timeout),
      attr_timeout_(policy.attr_timeout),
      passthrough_io_(policy.passthrough_io) {
  set_limits(limits);
  if (store) {
    std::string why;
    if (auto s = Store::create(pool_.max_bytes(), &why))
      pool_.use_store(std::move(s));
    else
      LOG_INFO("memory mount: file data in efused's block pool, without FUSE passthrough (no "
               "private tmpfs: %s)", why.c_str());
  }
  if (!pool_.take_inode()) throw std::bad_alloc();  // max_inodes >= 1 (config checks it)
  auto root = std::make_shared<Node>(pool_, NodeTable<Node>::kRoot, S_IFDIR | 0755);
  root->uid = geteuid();
  root->gid = getegid();
  root->nlink = 2;
  root->parent = NodeTable<Node>::kRoot;
  nodes_.set_root(std::move(root));
}

MemoryFs::~MemoryFs() {
  // Nodes return their blocks to pool_, which outlives them only if they go first.
  nodes_.clear();
}

void MemoryFs::set_limits(const Limits& limits) {
  uint64_t bytes = limits.max_bytes != 0 ? limits.max_bytes : default_max_bytes();
  uint64_t inodes = limits.max_inodes != 0 ? limits.max_inodes : default_max_inodes(bytes);
  pool_.set_limits(bytes, inodes);
}

Capabilities MemoryFs::negotiate(const Capabilities& offered) {
  Capabilities want;
  want.writeback_cache = offered.writeback_cache;
  want.passthrough = offered.passthrough && pool_.store() != nullptr;
  return want;
}

void MemoryFs::init(const Capabilities& granted) {
  passthrough_.store(granted.passthrough && pool_.store() != nullptr);
}

void MemoryFs::passthrough_refused(uint64_t ino) {
  std::shared_lock lk(mu_);
  if (NodePtr node = get(ino)) {
    std::unique_lock nl(node->mu);
    node->no_passthrough = true;  // its opens go through efused from now on
  }
}

void MemoryFs::set_policy(const Policy& policy) {
  entry_timeout_.store(policy.entry_timeout);
  attr_timeout_.store(policy.attr_timeout);
  passthrough_io_.store(policy.passthrough_io);
}

std::vector<Metric> MemoryFs::metrics() const {
  std::vector<Metric> out;
  add_node_metrics(out, nodes_.referenced(), nodes_.excess_forgets());
  out.push_back({"efuse_memory_bytes",
                 "Bytes of the memory backend's block pool in use: file data in 4 KiB blocks, "
                 "and extended attributes charged in whole blocks.",
                 Metric::Type::Gauge, static_cast<double>(pool_.used_bytes())});
  out.push_back({"efuse_memory_bytes_limit",
                 "The memory backend's block pool limit (memory.max_bytes); writes beyond it "
                 "get ENOSPC.",
                 Metric::Type::Gauge, static_cast<double>(pool_.max_bytes())});
  out.push_back({"efuse_memory_inodes",
                 "Inodes of the memory backend: files, directories, links and nodes with a "
                 "name, or still held by the kernel or an open file.",
                 Metric::Type::Gauge, static_cast<double>(pool_.inodes())});
  out.push_back({"efuse_memory_inodes_limit",
                 "The memory backend's inode limit (memory.max_inodes).",
                 Metric::Type::Gauge, static_cast<double>(pool_.max_inodes())});
  out.push_back({"efuse_listing_cache_drops_total", kListingDropsHelp, Metric::Type::Counter,
                 static_cast<double>(listing_drops_.load(std::memory_order_relaxed))});
  out.push_back({"efuse_memory_enospc_total",
                 "Requests of the memory backend refused with ENOSPC: the block pool or the "
                 "inode limit was reached.",
                 Metric::Type::Counter, static_cast<double>(pool_.enospc())});
  return out;
}

Attr MemoryFs::attr_of(const Node& node) const {
  return Attr{node.attributes(), attr_timeout_.load(std::memory_order_relaxed)};
}

Entry MemoryFs::entry_of(const Node& node) {
  nodes_.ref(node.nodeid);
  Entry e;
  e.ino = node.nodeid;
  e.attr = node.attributes();
  e.entry_timeout = entry_timeout_.load(std::memory_order_relaxed);
  e.attr_timeout = attr_timeout_.load(std::memory_order_relaxed);
  return e;
}

void MemoryFs::drop_if_unused(Node& node) {
  if (node.nlink != 0) return;
  // Not at the kernel's FORGET, which may come much later (an O_PATH descriptor, a cached
  // dentry): a write right after the unlink would see ENOSPC on a full pool.
  if (S_ISREG(node.mode) && node.opens == 0) drop_data(node);
  nodes_.erase_unreferenced(node.nodeid);
}

Result<MemoryFs::NodePtr> MemoryFs::dir_of(uint64_t nodeid) const {
  NodePtr dir = get(nodeid);
  if (!dir) return Errno{ESTALE};
  if (!dir->is_dir()) return Errno{ENOTDIR};
  return dir;
}

Result<MemoryFs::NodePtr> MemoryFs::child_of(const Node& dir, std::string_view name) const {
  auto it = dir.names.find(name);
  if (it == dir.names.end()) return Errno{ENOENT};
  NodePtr child = get(it->second.nodeid);
  if (!child) return Errno{EIO};
  return child;
}

Result<Entry> MemoryFs::lookup(const Context&, uint64_t parent, std::string_view name) {
  if (name.size() > kNameMax) return Errno{ENAMETOOLONG};
  std::shared_lock lk(mu_);
  auto dir = dir_of(parent);
  if (!dir.ok()) return Errno{dir.error()};
  auto child = child_of(**dir, name);
  if (!child.ok()) return Errno{child.error()};
  std::shared_lock nl((*child)->mu);
  return entry_of(**child);
}

void MemoryFs::forget(uint64_t ino, uint64_t nlookup) {
  // Shared is enough: link counts change only under mu_ exclusive, and the node table
  // serialises forgets among themselves.
  std::shared_lock lk(mu_);
  nodes_.forget(ino, nlookup, [](const Node& n) { return n.nlink != 0; });
}

Result<Attr> MemoryFs::getattr(const Context&, uint64_t ino, const uint64_t*) {
  std::shared_lock lk(mu_);
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  std::shared_lock nl(node->mu);
  return attr_of(*node);
}

Result<Attr> MemoryFs::setattr(const Context& ctx, uint64_t ino, const SetattrRequest& s) {
  std::shared_lock lk(mu_);
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  if (s.has_fh && !check_fh(ino, s.fh).ok()) return Errno{EBADF};
  std::unique_lock nl(node->mu);
  struct timespec t = now();
  Store* store = S_ISREG(node->mode) ? pool_.store() : nullptr;
  if (s.set_size) {
    if (node->is_dir()) return Errno{EISDIR};
    if (!S_ISREG(node->mode)) return Errno{EINVAL};
    if (s.size > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) return Errno{EFBIG};
    if (store != nullptr) {
      // ftruncate sets the data file's mtime and ctime when the size changes.
      if (Status d = truncate_data(*node, s.size); !d.ok()) return Errno{d.error()};
    } else if (s.size != node->size) {
      truncate(*node, s.size);
      node->mtime = t;
    }
    if (ctx.kill_suidgid) node->mode = killed_privs(node->mode);
  }
  if (s.set_uid || s.set_gid) {
    if (s.set_uid) node->uid = s.uid;
    if (s.set_gid) node->gid = s.gid;
    if (!node->is_dir()) node->mode = killed_privs(node->mode);
  }
  if (s.set_mode) {
    node->mode = (node->mode & S_IFMT) | (s.mode & 07777);
    chmod_acl(*node);
  }
  if (s.set_atime) node->atime = s.atime_now ? t : s.atime;
  if (s.set_mtime) {
    node->mtime = s.mtime_now ? t : s.mtime;
    if (store != nullptr) {
      Status d = store->set_mtime(node->nodeid, node->fd, node->mtime);
      if (!d.ok()) return Errno{d.error()};
    }
  }
  node->ctime = t;
  return attr_of(*node);
}

Result<std::string> MemoryFs::readlink(const Context&, uint64_t ino) {
  std::shared_lock lk(mu_);
  NodePtr node = get(ino);
  if (!node) return Errno{ESTALE};
  if (!S_ISLNK(node->mode)) return Errno{EINVAL};
  return node->target;
}

Result<MemoryFs::NodePtr> MemoryFs::make_node(const Context& ctx, Node& dir,
                                              std::string_view name, mode_t mode) {
  if (!dir.is_dir()) return Errno{ENOTDIR};
  if (dir.nlink == 0) return Errno{ENOENT};  // removed while the kernel still held it
  Status ok = check_name(name);
  if (!ok.ok()) return Errno{ok.error()};
  if (dir.names.count(name)) return Errno{EEXIST};
  if (!pool_.take_inode()) return Errno{ENOSPC};
  NodePtr node;
  try {
    node = std::make_shared<Node>(pool_, nodes_.allocate(), mode);
  } catch (const std::bad_alloc&) {
    pool_.give_inode();
    return Errno{ENOMEM};
  }
  node->uid = ctx.uid;
  node->gid = ctx.gid;
  // inode_init_owner(); the VFS has already dropped a set-group-ID bit the caller may not
  // set (vfs_prepare_mode).
  if (dir.mode & S_ISGID) {
    node->gid = dir.gid;
    if (S_ISDIR(mode)) node->mode |= S_ISGID;
  }
  // The directory's default ACL, if any, replaces the umask (acl.h).
  auto def = dir.xattrs.find(acl::kDefault);
  if (def != dir.xattrs.end() && !S_ISLNK(mode)) {
    if (auto parsed = acl::parse(def->second)) {
      acl::Acl access = *parsed;
      mode_t m = node->mode;
      bool keep = acl::create_masq(access, &m);
      node->mode = m;
      if (keep && !store_xattr(*node, acl::kAccess, acl::format(access)).ok()) return Errno{ENOSPC};
      if (S_ISDIR(mode) && !store_xattr(*node, acl::kDefault, def->second).ok())
        return Errno{ENOSPC};
    }
  } else if (!S_ISLNK(mode)) {
    node->mode &= ~(ctx.umask & 0777);
  }
  if (S_ISREG(mode) && pool_.store() != nullptr) {
    // Its data file, born with it: the two agree on mtime and ctime from the start.
    Status made = pool_.store()->make(node->nodeid);
    if (!made.ok()) return Errno{made.error() == EMFILE ? ENFILE : made.error()};
  }
  return node;
}

void MemoryFs::add_name(Node& dir, std::string_view name, Node& node) {
  uint64_t cookie = dir.next_cookie++;
  dir.names.emplace(std::string(name), Node::Child{node.nodeid, cookie});
  dir.by_cookie.emplace(cookie, std::string(name));
  ++node.nlink;
  if (node.is_dir()) {
    node.parent = dir.nodeid;
    ++dir.nlink;
  }
  touch_dir(dir, now());
}

void MemoryFs::remove_name(Node& dir, std::string_view name, Node& node) {
  auto it = dir.names.find(name);
  dir.by_cookie.erase(it->second.cookie);
  dir.names.erase(it);
  struct timespec t = now();
  touch_dir(dir, t);
  node.ctime = t;
  if (node.is_dir()) {
    node.nlink = 0;  // its own "." and the name: an empty directory has no other links
    --dir.nlink;
  } else {
    --node.nlink;
  }
  drop_if_unused(node);
}

Result<Entry> MemoryFs::mknod(const Context& ctx, uint64_t parent, std::string_view name,
                              mode_t mode, dev_t rdev) {
  switch (mode & S_IFMT) {
    case S_IFREG: case S_IFIFO: case S_IFSOCK: case S_IFCHR: case S_IFBLK: break;
    case 0: mode |= S_IFREG; break;
    default: return Errno{EINVAL};
  }
  std::unique_lock lk(mu_);
  NodePtr dir = get(parent);
  if (!dir) return Errno{ESTALE};
  auto node = make_node(ctx, *dir, name, mode);
  if (!node.ok()) return Errno{node.error()};
  (*node)->rdev = rdev;
  nodes_.insert((*node)->nodeid, *node, 0);
  add_name(*dir, name, **node);
  return entry_of(**node);
}

Result<Entry> MemoryFs::mkdir(const Context& ctx, uint64_t parent, std::string_view name,
                              mode_t mode) {
  std::unique_lock lk(mu_);
  NodePtr dir = get(parent);
  if (!dir) return Errno{ESTALE};
  auto node = make_node(ctx, *dir, name, S_IFDIR | (mode & 07777));
  if (!node.ok()) return Errno{node.error()};
  (*node)->nlink = 1;  // "."; the name adds the other
  nodes_.insert((*node)->nodeid, *node, 0);
  add_name(*dir, name, **node);
  return entry_of(**node);
}

Result<Entry> MemoryFs::symlink(const Context& ctx, uint64_t parent, std::string_view name,
                                std::string_view target) {
  if (target.empty()) return Errno{ENOENT};
  if (target.size() >= kPathMax) return Errno{ENAMETOOLONG};
  std::unique_lock lk(mu_);
  NodePtr dir = get(parent);
  if (!dir) return Errno{ESTALE};
  auto node = make_node(ctx, *dir, name, S_IFLNK | 0777);
  if (!node.ok()) return Errno{node.error()};
  (*node)->target = std::string(target);
  (*node)->size = target.size();
  nodes_.insert((*node)->nodeid, *node, 0);
  add_name(*dir, name, **node);
  return entry_of(**node);
}

Result<Entry> MemoryFs::link(const Context&, uint64_t ino, uint64_t newparent,
                             std::string_view newname) {
  std::unique_lock lk(mu_);
  NodePtr node = get(ino);
  NodePtr dir = get(newparent);
  if (!node || !dir) return Errno{ESTALE};
  if (node->is_dir()) return Errno{EPERM};
  if (!dir->is_dir()) return Errno{ENOTDIR};
  if (dir->nlink == 0) return Errno{ENOENT};
  Status ok = check_name(newname);
  if (!ok.ok()) return Errno{ok.error()};
  if (dir->names.count(newname)) return Errno{EEXIST};
  if (node->nlink == 0) return Errno{ENOENT};  // linkat of an O_TMPFILE-less unlinked file
  add_name(*dir, newname, *node);
  node->ctime = dir->mtime;
  return entry_of(*node);
}

Status MemoryFs::unlink(const Context&, uint64_t parent, std::string_view name) {
  std::unique_lock lk(mu_);
  auto dir = dir_of(parent);
  if (!dir.ok()) return Errno{dir.error()};
  auto node = child_of(**dir, name);
  if (!node.ok()) return Errno{node.error()};
  if ((*node)->is_dir()) return Errno{EISDIR};
  remove_name(**dir, name, **node);
  return {};
}

Status MemoryFs::rmdir(const Context&, uint64_t parent, std::string_view name) {
  if (name == ".") return Errno{EINVAL};
  if (name == "..") return Errno{ENOTEMPTY};
  std::unique_lock lk(mu_);
  auto dir = dir_of(parent);
  if (!dir.ok()) return Errno{dir.error()};
  auto node = child_of(**dir, name);
  if (!node.ok()) return Errno{node.error()};
  if (!(*node)->is_dir()) return Errno{ENOTDIR};
  if (!(*node)->names.empty()) return Errno{ENOTEMPTY};
  remove_name(**dir, name, **node);
  return {};
}

Status MemoryFs::rename(const Context&, uint64_t parent, std::string_view name,
                        uint64_t newparent, std::string_view newname, uint32_t flags) {
  if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) return Errno{EINVAL};  // no whiteouts
  if ((flags & RENAME_NOREPLACE) && (flags & RENAME_EXCHANGE)) return Errno{EINVAL};
  Status ok = check_name(newname);
  if (!ok.ok()) return ok;
  std::unique_lock lk(mu_);
  NodePtr from = get(parent);
  NodePtr to = get(newparent);
  if (!from || !to) return Errno{ESTALE};
  if (!from->is_dir() || !to->is_dir()) return Errno{ENOTDIR};
  auto src_it = from->names.find(name);
  if (src_it == from->names.end()) return Errno{ENOENT};
  NodePtr src = get(src_it->second.nodeid);
  if (!src) return Errno{EIO};
  auto dst_it = to->names.find(newname);
  NodePtr dst = dst_it == to->names.end() ? nullptr : get(dst_it->second.nodeid);
  if (to->nlink == 0) return Errno{ENOENT};

  // A directory may not move below itself (nor, in an exchange, the other one below it).
  auto below = [this](const Node& dir, uint64_t ancestor) {
    for (uint64_t id = dir.nodeid;;) {
      if (id == ancestor) return true;
      if (id == NodeTable<Node>::kRoot) return false;
      NodePtr n = get(id);
      if (!n) return false;
      id = n->parent;
    }
  };
  if (src->is_dir() && below(*to, src->nodeid)) return Errno{EINVAL};
  std::vector<NodePtr> moved;  // directories whose ".." changes

  if (flags & RENAME_EXCHANGE) {
    if (!dst) return Errno{ENOENT};
    if (dst->is_dir() && below(*from, dst->nodeid)) return Errno{EINVAL};
    if (src == dst) return {};
    src_it->second.nodeid = dst->nodeid;
    dst_it->second.nodeid = src->nodeid;
    if (from != to) {
      // A directory that moves gets another "..": its cached listing names the old parent.
      if (src->is_dir()) moved.push_back(src);
      if (dst->is_dir()) moved.push_back(dst);
      if (src->is_dir() != dst->is_dir()) {
        // The directory's ".." moves to the other parent.
        Node& gains = src->is_dir() ? *to : *from;
        Node& loses = src->is_dir() ? *from : *to;
        ++gains.nlink;
        --loses.nlink;
      }
      if (src->is_dir()) src->parent = to->nodeid;
      if (dst->is_dir()) dst->parent = from->nodeid;
    }
    struct timespec t = now();
    touch_dir(*from, t);
    touch_dir(*to, t);
    src->ctime = dst->ctime = t;
    for (const NodePtr& dir : moved) dir->entries_changed();
    lk.unlock();
    for (const NodePtr& dir : moved) drop_listing(dir->nodeid);
    return {};
  }

  if (dst) {
    if (flags & RENAME_NOREPLACE) return Errno{EEXIST};
    if (src == dst) return {};  // two names of one file: nothing happens (POSIX)
    if (src->is_dir() && !dst->is_dir()) return Errno{ENOTDIR};
    if (!src->is_dir() && dst->is_dir()) return Errno{EISDIR};
    if (dst->is_dir() && !dst->names.empty()) return Errno{ENOTEMPTY};
    remove_name(*to, newname, *dst);
  }
  // Take the name out of the old directory and put it into the new one: a new cookie, so
  // a listing in progress there may return it (POSIX allows either).
  std::string keep(name);
  from->by_cookie.erase(src_it->second.cookie);
  from->names.erase(src_it);
  if (src->is_dir()) --from->nlink;
  --src->nlink;
  add_name(*to, newname, *src);
  struct timespec t = now();
  touch_dir(*from, t);
  src->ctime = t;
  if (src->is_dir() && from != to) {
    // Its ".." names the new parent now: the kernel's cached listing of it names the old.
    src->entries_changed();
    lk.unlock();
    drop_listing(src->nodeid);
  }
  return {};
}

Result<struct statvfs> MemoryFs::statfs(const Context&, uint64_t) {
  struct statvfs st {};
  st.f_bsize = kBlockSize;
  st.f_frsize = kBlockSize;
  uint64_t max = pool_.max_blocks(), used = pool_.used_blocks();
  st.f_blocks = max;
  st.f_bfree = st.f_bavail = used < max ? max - used : 0;
  uint64_t imax = pool_.max_inodes(), iused = pool_.inodes();
  st.f_files = imax;
  st.f_ffree = st.f_favail = iused < imax ? imax - iused : 0;
  st.f_namemax = kNameMax;
  return st;
}

// The kernel checks permissions (default_permissions); ACCESS reaches a backend only
// without it, which memory mounts do not allow.
Status MemoryFs::access(const Context&, uint64_t ino, int) {
  std::shared_lock lk(mu_);
  return get(ino) ? Status() : Status(Errno{ESTALE});
}

}  // namespace efuse::fs::memory
