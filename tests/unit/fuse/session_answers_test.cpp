// The session's side of the kernel module tier (fuse/session_answers.cpp): over a real
// passthrough backend, what its replies store in the handler maps and what each change
// drops, before the change's reply is sent.
#include "fuse/session.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>
#include <string>

#include "answer_table.h"
#include "fuse/kernel_answers.h"
#include "session_harness.h"

namespace fuse::testing {
namespace {

using efuse::testing::write_file;
using k::kRootId;
using Op = k::Opcode;

class SessionAnswers : public ::testing::Test {
 protected:
  SessionAnswers() : answers_(table_) {
    h_.session().set_kernel_answers(&answers_);
    EXPECT_EQ(h_.init().error(), 0);
    // Every drop must come before the reply of the request that causes it.
    table_.on_drop = [this] { replies_before_drop_ += h_.transport().take().size(); };
  }

  uint64_t make_file(const std::string& name, const std::string& data = "x") {
    EXPECT_TRUE(write_file(h_.src(name), data));
    return h_.lookup(kRootId, name).nodeid;
  }
  // GETATTR through the session: its reply must be what the map holds afterwards.
  void stat_stored(uint64_t nodeid) {
    Reply r = h_.call(Op::Getattr, nodeid, pod(k::fuse_getattr_in{}));
    ASSERT_EQ(r.error(), 0);
    ASSERT_TRUE(table_.attrs.contains(nodeid));
    const efuse_handler_answer& a = table_.attrs[nodeid].answer;
    ASSERT_EQ(a.size, r.payload.size());
    EXPECT_EQ(std::memcmp(a.data, r.payload.data(), a.size), 0) << "the exact reply";
  }

  // The stored GETATTR answer is what efused answers now (the GETATTR's own reply stores
  // it again).
  void expect_current(uint64_t nodeid, const char* what = "") {
    ASSERT_TRUE(table_.attrs.contains(nodeid)) << what;
    const efuse_handler_answer stored = table_.attrs[nodeid].answer;
    Reply r = h_.call(Op::Getattr, nodeid, pod(k::fuse_getattr_in{}));
    ASSERT_EQ(r.error(), 0);
    ASSERT_EQ(stored.size, r.payload.size()) << what;
    EXPECT_EQ(std::memcmp(stored.data, r.payload.data(), stored.size), 0)
        << what << ": not the attributes efused answers after the change";
  }

  // Pages kept across opens (as with efused's watcher): an open does not drop the blocks.
  static efuse::fs::Policy keeping() {
    efuse::fs::Policy p;
    p.keep_cache = true;
    return p;
  }
  SessionHarness h_{serial_options(), keeping()};
  AnswerTable table_;
  KernelAnswers answers_;
  size_t replies_before_drop_ = 0;
};

TEST_F(SessionAnswers, GetattrStoredAndEveryAttributeChangeDropsIt) {
  const uint64_t f = make_file("f", "hello");
  struct Change {
    const char* what;
    Op op;
    std::string body;
  };
  k::fuse_setattr_in sa{};
  sa.valid = k::kFattrMode;
  sa.mode = S_IFREG | 0600;
  k::fuse_fallocate_in fa{};
  fa.length = 4096;
  const uint64_t fh = h_.open(f, O_RDONLY);
  fa.fh = fh;
  for (const Change& c :
       {Change{"setattr", Op::Setattr, pod(sa)},
        Change{"setxattr", Op::Setxattr, setxattr_body("user.k", "v")},
        Change{"removexattr", Op::Removexattr, cstr("user.k")},
        Change{"fallocate", Op::Fallocate, pod(fa)}}) {
    stat_stored(f);
    h_.call(c.op, f, c.body);
    EXPECT_FALSE(table_.attrs.contains(f)) << c.what;
  }
  h_.release(f, fh);
  EXPECT_EQ(replies_before_drop_, 0u) << "a drop came after its request's reply";
}

TEST_F(SessionAnswers, PositiveLookupsStoredAndDroppedWithTheNodesAttributes) {
  const uint64_t f = make_file("f");  // a LOOKUP: its entry is stored for the name
  ASSERT_TRUE(table_.has_name(kRootId, "f"));
  k::fuse_entry_out stored;
  const std::pair<uint64_t, std::string> fname{kRootId, "f"};
  std::memcpy(&stored, table_.names[fname].answer.data, sizeof stored);
  EXPECT_EQ(stored.nodeid, f);
  EXPECT_EQ(answers_.stats().positive_entries, 1u);
  k::fuse_setattr_in sa{};
  sa.valid = k::kFattrMode;
  sa.mode = S_IFREG | 0600;
  ASSERT_EQ(h_.call(Op::Setattr, f, pod(sa)).error(), 0);
  EXPECT_FALSE(table_.has_name(kRootId, "f")) << "the entry carries the old mode";
  EXPECT_EQ(replies_before_drop_, 0u) << "a drop came after its request's reply";
  // Looked up again: stored again; the kernel forgets the node: gone.
  h_.lookup(kRootId, "f");
  ASSERT_TRUE(table_.has_name(kRootId, "f"));
  k::fuse_forget_in fo{};
  fo.nlookup = 2;
  h_.call_no_reply(Op::Forget, f, pod(fo));
  EXPECT_FALSE(table_.has_name(kRootId, "f"));
}

TEST_F(SessionAnswers, XattrRepliesStoredAndDroppedBeforeTheChangesReply) {
  const uint64_t f = make_file("f");  // its entry gives the attribute validity
  Reply none = h_.call(Op::Getxattr, f, getxattr_body("security.capability", 0));
  ASSERT_EQ(none.error(), ENODATA);
  const std::pair<uint64_t, std::string> caps{f, "security.capability"};
  ASSERT_TRUE(table_.xattrs.contains(caps));
  EXPECT_EQ(table_.xattrs[caps].answer.error, -ENODATA);
  ASSERT_EQ(h_.call(Op::Setxattr, f, setxattr_body("user.k", "v")).error(), 0);
  EXPECT_TRUE(table_.xattrs.empty()) << "SETXATTR drops every stored answer of the node";
  Reply v = h_.call(Op::Getxattr, f, getxattr_body("user.k", 64));
  ASSERT_EQ(v.error(), 0);
  const std::pair<uint64_t, std::string> key{f, "user.k"};
  ASSERT_TRUE(table_.xattrs.contains(key));
  const efuse_handler_answer& a = table_.xattrs[key].answer;
  ASSERT_EQ(a.size, v.payload.size());
  EXPECT_EQ(std::memcmp(a.data, v.payload.data(), a.size), 0) << "the exact reply";
  ASSERT_EQ(h_.call(Op::Removexattr, f, cstr("user.k")).error(), 0);
  EXPECT_TRUE(table_.xattrs.empty());
  EXPECT_EQ(replies_before_drop_, 0u) << "a drop came after its request's reply";
}

TEST_F(SessionAnswers, CreatedNodesHaveTheirCapabilityAbsenceStored) {
  const uint64_t f = make_file("f");
  ASSERT_EQ(h_.call(Op::Getxattr, f, getxattr_body("user.none", 0)).error(), ENODATA);
  const auto created = [](const Reply& r) { return r.as<k::fuse_entry_out>().nodeid; };
  k::fuse_create_in cr{};
  cr.flags = O_WRONLY | O_CREAT | O_EXCL;
  cr.mode = S_IFREG | 0644;
  Reply c = h_.call(Op::Create, kRootId, pod(cr) + cstr("c"));
  ASSERT_EQ(c.error(), 0);
  k::fuse_mkdir_in mk{};
  mk.mode = S_IFDIR | 0755;
  Reply d = h_.call(Op::Mkdir, kRootId, pod(mk) + cstr("d"));
  ASSERT_EQ(d.error(), 0);
  k::fuse_mknod_in mn{};
  mn.mode = S_IFIFO | 0644;
  Reply m = h_.call(Op::Mknod, kRootId, pod(mn) + cstr("m"));
  ASSERT_EQ(m.error(), 0);
  for (const Reply* r : {&c, &d, &m}) {
    const std::pair<uint64_t, std::string> caps{created(*r), "security.capability"};
    ASSERT_TRUE(table_.xattrs.contains(caps));
    EXPECT_EQ(table_.xattrs[caps].answer.error, -ENODATA);
    // What efused itself answers for it.
    EXPECT_EQ(h_.call(Op::Getxattr, created(*r), getxattr_body("security.capability", 0)).error(),
              ENODATA);
  }
  // CREATE without O_EXCL may open a file that exists: nothing stored for it.
  cr.flags = O_WRONLY | O_CREAT;
  Reply again = h_.call(Op::Create, kRootId, pod(cr) + cstr("f"));
  ASSERT_EQ(again.error(), 0);
  EXPECT_FALSE(table_.xattrs.contains({created(again), "security.capability"}));
}

TEST_F(SessionAnswers, NothingStoredWhileOpenForWriting) {
  const uint64_t f = make_file("f");
  stat_stored(f);
  const uint64_t fh = h_.open(f, O_WRONLY);
  EXPECT_FALSE(table_.attrs.contains(f));
  h_.call(Op::Getattr, f, pod(k::fuse_getattr_in{}));
  EXPECT_FALSE(table_.attrs.contains(f)) << "passthrough writes change it behind efused";
  h_.call(Op::Write, f, write_body(fh, 0, "abc"));
  k::fuse_release_in rel{};
  rel.fh = fh;
  rel.flags = O_WRONLY;  // the kernel sends the file's flags
  EXPECT_EQ(h_.call(Op::Release, f, pod(rel)).error(), 0);
  stat_stored(f);  // released: stored again
  EXPECT_EQ(table_.attrs[f].answer.size, sizeof(k::fuse_attr_out));
}

// A RELEASE the module's RELEASE handler took over (kmod patch 0015) is carried out as the
// request: the handle goes (a second release of it is EBADF, a write with it too), the
// writer is counted down (attributes are stored again), and nothing is replied.
TEST_F(SessionAnswers, ReleasesTakenOverInTheKernelAreCarriedOut) {
  const uint64_t f = make_file("f");
  const uint64_t fh = h_.open(f, O_WRONLY);
  ASSERT_EQ(h_.call(Op::Write, f, write_body(fh, 0, "abc")).error(), 0);
  h_.call(Op::Getattr, f, pod(k::fuse_getattr_in{}));
  EXPECT_FALSE(table_.attrs.contains(f)) << "open for writing";
  const uint64_t before = h_.session().kernel_releases();
  (void)h_.transport().take();
  h_.session().released_in_kernel(f, fh, O_WRONLY, 0);
  EXPECT_TRUE(h_.transport().take().empty()) << "nothing to reply to";
  EXPECT_EQ(h_.session().kernel_releases(), before + 1);
  EXPECT_EQ(h_.call(Op::Write, f, write_body(fh, 0, "x")).error(), EBADF) << "handle gone";
  k::fuse_release_in rel{};
  rel.fh = fh;
  EXPECT_EQ(h_.call(Op::Release, f, pod(rel)).error(), EBADF);
  stat_stored(f);  // the writer was counted down: stored again
  // Read-only: the handle goes, no writer to count down.
  const uint64_t ro = h_.open(f, O_RDONLY);
  h_.session().released_in_kernel(f, ro, O_RDONLY, 0);
  rel.fh = ro;
  EXPECT_EQ(h_.call(Op::Release, f, pod(rel)).error(), EBADF);
}

// Before a FORGET (and a BATCH_FORGET) is applied, the RELEASEs taken over in the kernel
// and queued so far are carried out: they came first (the module released the inode only
// after queuing them).
TEST_F(SessionAnswers, ForgetDrainsTheReleasesTakenOverFirst) {
  const uint64_t f = make_file("f");
  stat_stored(f);
  bool attrs_still_there = false;
  table_.on_drain = [&] { attrs_still_there = table_.attrs.contains(f); };
  k::fuse_forget_in fo{};
  fo.nlookup = 1;
  h_.call_no_reply(Op::Forget, f, pod(fo));
  EXPECT_EQ(table_.drains, 1u);
  EXPECT_TRUE(attrs_still_there) << "drained after the node was forgotten";
  const uint64_t g = make_file("g");
  k::fuse_batch_forget_in bf{};
  bf.count = 1;
  k::fuse_forget_one one{};
  one.nodeid = g;
  one.nlookup = 1;
  h_.call_no_reply(Op::BatchForget, 0, pod(bf) + pod(one));
  EXPECT_EQ(table_.drains, 2u);
}

std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + i / 4096) % 26);
  return s;
}

TEST_F(SessionAnswers, ReadRepliesOfSmallFilesFillTheBlockCache) {
  const std::string data = pattern(10000);
  const uint64_t f = make_file("f", data);
  const uint64_t fh = h_.open(f, O_RDONLY);
  // Readahead of the whole file: a short reply shows where it ends.
  Reply r = h_.call(Op::Read, f, read_body(fh, 0, 12288));
  ASSERT_EQ(r.payload, data);
  auto blocks = table_.blocks_of(f);
  ASSERT_EQ(blocks.size(), 3u);
  const uint64_t gen = blocks[0].gen;
  for (const auto& [index, b] : blocks) {
    EXPECT_EQ(b.gen, gen) << "one generation per version of the file";
    const size_t len = std::min<size_t>(4096, data.size() - index * 4096);
    EXPECT_EQ(b.valid, len);
    EXPECT_EQ(b.eof, index == 2 ? 1u : 0u);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.data), len), data.substr(index * 4096, len));
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.data) + len, 4096 - len),
              std::string(4096 - len, '\0')) << "zero past the file's bytes";
  }
  h_.release(f, fh);
  // A file ending on a block boundary gets an empty end block; a big file nothing.
  const uint64_t g = make_file("g", pattern(8192));
  const uint64_t gh = h_.open(g, O_RDONLY);
  ASSERT_EQ(h_.call(Op::Read, g, read_body(gh, 0, 16384)).payload.size(), 8192u);
  auto gb = table_.blocks_of(g);
  ASSERT_EQ(gb.size(), 3u);
  EXPECT_EQ(gb[2].valid, 0u);
  EXPECT_EQ(gb[2].eof, 1u);
  h_.release(g, gh);
  const uint64_t big = make_file("big", pattern(100000));
  const uint64_t bh = h_.open(big, O_RDONLY);
  ASSERT_EQ(h_.call(Op::Read, big, read_body(bh, 0, 131072)).payload.size(), 100000u);
  ASSERT_EQ(h_.call(Op::Read, big, read_body(bh, 8192, 65536)).payload.size(), 65536u);
  EXPECT_TRUE(table_.blocks_of(big).empty()) << "only small files";
  // Direct I/O inside the first 32 KiB: the blocks it covers whole.
  ASSERT_EQ(h_.call(Op::Read, big, read_body(bh, 4096, 4096)).payload.size(), 4096u);
  ASSERT_EQ(h_.call(Op::Read, big, read_body(bh, 100, 4096)).payload.size(), 4096u);
  auto bb = table_.blocks_of(big);
  ASSERT_EQ(bb.size(), 1u);
  EXPECT_EQ(bb.begin()->first, 1u);
  EXPECT_EQ(bb.begin()->second.eof, 0u);
  h_.release(big, bh);
}

TEST_F(SessionAnswers, EveryChangeOfAFileDropsItsBlocksBeforeItsReply) {
  const uint64_t f = make_file("f", pattern(6000));
  const uint64_t other = make_file("other", pattern(3000));
  const uint64_t rfh = h_.open(other, O_RDONLY);
  // A RELEASE as the kernel sends it, with the open's flags (a writable one ends a writer).
  auto release_w = [&](uint64_t node, uint64_t fh, uint32_t flags) {
    k::fuse_release_in rel{};
    rel.fh = fh;
    rel.flags = flags;
    EXPECT_EQ(h_.call(Op::Release, node, pod(rel)).error(), 0);
  };
  const uint64_t ofh = h_.open(other, O_RDONLY);
  ASSERT_EQ(h_.call(Op::Read, other, read_body(ofh, 0, 4096)).error(), 0);
  h_.release(other, ofh);
  ASSERT_FALSE(table_.blocks_of(other).empty());
  // Blocks of the file, read through a read-only open (an open for writing stores none).
  auto fill = [&](uint64_t node) {
    const uint64_t fh = h_.open(node, O_RDONLY);
    EXPECT_EQ(h_.call(Op::Read, node, read_body(fh, 0, 8192)).error(), 0);
    EXPECT_FALSE(table_.blocks_of(node).empty());
    return fh;
  };
  k::fuse_setattr_in sa{};
  sa.valid = k::kFattrSize;
  sa.size = 100;
  k::fuse_fallocate_in fa{};
  fa.length = 65536;
  struct Change {
    const char* what;
    std::function<void(uint64_t fh)> run;
  };
  const std::vector<Change> changes = {
      {"truncate", [&](uint64_t) { h_.call(Op::Setattr, f, pod(sa)); }},
      {"write",
       [&](uint64_t) {
         const uint64_t w = h_.open(f, O_RDWR);
         h_.call(Op::Write, f, write_body(w, 10, "xyz"));
         release_w(f, w, O_RDWR);
       }},
      {"fallocate",
       [&](uint64_t fh) {
         fa.fh = fh;
         h_.call(Op::Fallocate, f, pod(fa));
       }},
      {"copy_file_range",
       [&](uint64_t fh) {
         k::fuse_copy_file_range_in c{};
         c.fh_in = rfh;
         c.nodeid_out = f;
         c.fh_out = fh;
         c.len = 100;
         h_.call(Op::CopyFileRange, other, pod(c));
       }},
      {"open O_TRUNC",
       [&](uint64_t) {
         const uint64_t w = h_.open(f, O_WRONLY | O_TRUNC);
         release_w(f, w, O_WRONLY);
       }},
      {"rename over",
       [&](uint64_t) {
         ASSERT_TRUE(write_file(h_.src("n"), "new"));
         h_.lookup(kRootId, "n");
         h_.lookup(kRootId, "f");
         h_.call(Op::Rename, kRootId, pod(k::fuse_rename_in{kRootId}) + cstr("n") + cstr("f"));
       }},
  };
  for (const Change& c : changes) {
    const uint64_t fh = fill(f);
    c.run(fh);
    EXPECT_TRUE(table_.blocks_of(f).empty()) << c.what;
    h_.release(f, fh);
    if (std::string(c.what) == "rename over") break;
    ASSERT_TRUE(write_file(h_.src("f"), pattern(6000)));
  }
  EXPECT_FALSE(table_.blocks_of(other).empty()) << "another file keeps its blocks";
  h_.release(other, rfh);
  EXPECT_EQ(replies_before_drop_, 0u);
}

TEST(SessionReadBlocks, AnOpenThatDropsThePageCacheDropsTheBlocks) {
  SessionHarness h;  // no keep_cache: the kernel drops a file's pages at each open
  AnswerTable table;
  KernelAnswers answers(table);
  h.session().set_kernel_answers(&answers);
  ASSERT_EQ(h.init().error(), 0);
  ASSERT_TRUE(write_file(h.src("f"), pattern(5000)));
  const uint64_t f = h.lookup(kRootId, "f").nodeid;
  const uint64_t fh = h.open(f, O_RDONLY);
  ASSERT_EQ(h.call(Op::Read, f, read_body(fh, 0, 8192)).error(), 0);
  EXPECT_EQ(table.blocks_of(f).size(), 2u);
  const uint64_t fh2 = h.open(f, O_RDONLY);
  EXPECT_TRUE(table.blocks_of(f).empty());
  h.release(f, fh);
  h.release(f, fh2);
}

TEST_F(SessionAnswers, AbsentNamesStoredAndDroppedByWhatCreatesThem) {
  Reply miss = h_.call(Op::Lookup, kRootId, cstr("new"));  // negative_timeout 1: an entry
  ASSERT_EQ(miss.error(), 0);
  ASSERT_EQ(miss.as<k::fuse_entry_out>().nodeid, 0u);
  ASSERT_TRUE(table_.has_name(kRootId, "new"));
  const efuse_handler_answer& neg = table_.names.begin()->second.answer;
  EXPECT_EQ(neg.nodeid, kRootId) << "answers for the parent";
  k::fuse_mkdir_in mk{};
  mk.mode = S_IFDIR | 0755;
  ASSERT_EQ(h_.call(Op::Mkdir, kRootId, pod(mk) + cstr("new")).error(), 0);
  EXPECT_FALSE(table_.has_name(kRootId, "new"));
  // CREATE, MKNOD, SYMLINK, LINK and the target of a RENAME do the same.
  const uint64_t f = make_file("f");
  for (const char* n : {"c", "m", "s", "l", "r"}) {
    ASSERT_EQ(h_.call(Op::Lookup, kRootId, cstr(n)).error(), 0);
    ASSERT_TRUE(table_.has_name(kRootId, n)) << n;
  }
  k::fuse_create_in cr{};
  cr.flags = O_RDONLY | O_CREAT;
  cr.mode = S_IFREG | 0644;
  EXPECT_EQ(h_.call(Op::Create, kRootId, pod(cr) + cstr("c")).error(), 0);
  k::fuse_mknod_in mn{};
  mn.mode = S_IFIFO | 0644;
  EXPECT_EQ(h_.call(Op::Mknod, kRootId, pod(mn) + cstr("m")).error(), 0);
  EXPECT_EQ(h_.call(Op::Symlink, kRootId, cstr("s") + cstr("f")).error(), 0);
  EXPECT_EQ(h_.call(Op::Link, kRootId, pod(k::fuse_link_in{f}) + cstr("l")).error(), 0);
  EXPECT_EQ(h_.call(Op::Rename, kRootId, pod(k::fuse_rename_in{kRootId}) + cstr("f") +
                                             cstr("r")).error(), 0);
  EXPECT_TRUE(table_.names.empty());
  EXPECT_EQ(replies_before_drop_, 0u);
}

TEST_F(SessionAnswers, RemovingANameDropsTheNodeItLedTo) {
  const uint64_t f = make_file("f");
  ASSERT_TRUE(write_file(h_.src("g"), "y"));
  ASSERT_EQ(::link(h_.src("g").c_str(), h_.src("g2").c_str()), 0);
  const uint64_t g = h_.lookup(kRootId, "g").nodeid;
  stat_stored(f);
  stat_stored(g);
  stat_stored(kRootId);
  EXPECT_EQ(h_.call(Op::Unlink, kRootId, cstr("g2")).error(), 0);  // g2 never looked up
  EXPECT_TRUE(table_.attrs.contains(g)) << "not known to lead to g: kernel has no dentry";
  expect_current(kRootId);  // the directory's mtime: stored as read after the change
  ASSERT_EQ(::link(h_.src("g").c_str(), h_.src("g2").c_str()), 0);
  h_.lookup(kRootId, "g2");  // now the kernel knows g2 leads to g
  EXPECT_EQ(h_.call(Op::Unlink, kRootId, cstr("g2")).error(), 0);
  EXPECT_FALSE(table_.attrs.contains(g)) << "g's link count changed";
  // RENAME over f: the replaced node's attributes go too.
  stat_stored(f);
  EXPECT_EQ(h_.call(Op::Rename, kRootId, pod(k::fuse_rename_in{kRootId}) + cstr("g") +
                                             cstr("f")).error(), 0);
  EXPECT_FALSE(table_.attrs.contains(f));
  // RENAME_EXCHANGE swaps what the names lead to.
  const uint64_t a = make_file("a"), b = make_file("b");
  k::fuse_rename2_in ex{};
  ex.newdir = kRootId;
  ex.flags = RENAME_EXCHANGE;
  ASSERT_EQ(h_.call(Op::Rename2, kRootId, pod(ex) + cstr("a") + cstr("b")).error(), 0);
  stat_stored(a);
  stat_stored(b);
  EXPECT_EQ(h_.call(Op::Unlink, kRootId, cstr("a")).error(), 0);
  EXPECT_FALSE(table_.attrs.contains(b)) << "after the exchange, a leads to b's node";
  EXPECT_TRUE(table_.attrs.contains(a));
  EXPECT_EQ(replies_before_drop_, 0u);
}

// A change of a directory's entries drops its attributes before the reply (the kernel marks
// its own copy stale at that reply and asks again at the next path walk through the
// directory): they are stored again as read after the change, for both directories of a
// RENAME; a change that failed leaves them out. Without a GETATTR map nothing is read.
TEST_F(SessionAnswers, EntryChangesStoreTheDirectorysNewAttributes) {
  ASSERT_EQ(::mkdir(h_.src("d").c_str(), 0755), 0);
  const uint64_t d = h_.lookup(kRootId, "d").nodeid;
  const uint64_t f = make_file("f");
  k::fuse_create_in cr{};
  cr.flags = O_WRONLY | O_CREAT | O_EXCL;
  cr.mode = S_IFREG | 0644;
  k::fuse_mkdir_in mk{};
  mk.mode = S_IFDIR | 0755;
  struct Change {
    const char* what;
    Op op;
    uint64_t dir;
    std::string body;
    std::vector<uint64_t> dirs;  // whose attributes the change alters
  };
  for (const Change& c : {
           Change{"create", Op::Create, d, pod(cr) + cstr("c"), {d}},
           Change{"mkdir", Op::Mkdir, d, pod(mk) + cstr("sub"), {d}},  // nlink too
           Change{"symlink", Op::Symlink, d, cstr("s") + cstr("c"), {d}},
           Change{"link", Op::Link, d, pod(k::fuse_link_in{f}) + cstr("l"), {d}},
           Change{"unlink", Op::Unlink, d, cstr("l"), {d}},
           Change{"rename", Op::Rename, d, pod(k::fuse_rename_in{kRootId}) + cstr("c") +
                                               cstr("moved"), {d, kRootId}},
           Change{"rmdir", Op::Rmdir, d, cstr("sub"), {d}},
       }) {
    for (uint64_t dir : c.dirs) stat_stored(dir);
    const size_t drops = table_.drops;
    ASSERT_EQ(h_.call(c.op, c.dir, c.body).error(), 0) << c.what;
    EXPECT_GT(table_.drops, drops) << c.what << ": the attributes were not dropped first";
    for (uint64_t dir : c.dirs) expect_current(dir, c.what);
  }
  struct stat st;
  ASSERT_EQ(::stat(h_.src("d").c_str(), &st), 0);
  k::fuse_attr_out stored;
  std::memcpy(&stored, table_.attrs[d].answer.data, sizeof stored);
  EXPECT_EQ(stored.attr.nlink, st.st_nlink);
  EXPECT_EQ(stored.attr.mtime, static_cast<uint64_t>(st.st_mtim.tv_sec));
  EXPECT_EQ(stored.attr.mtimensec, static_cast<uint32_t>(st.st_mtim.tv_nsec));
  // A change that failed (the name exists): nothing is read back.
  stat_stored(d);
  EXPECT_EQ(h_.call(Op::Mkdir, d, pod(mk) + cstr("s")).error(), EEXIST);
  EXPECT_FALSE(table_.attrs.contains(d));
  // No GETATTR map: no GETATTR answer stored, and none read for one.
  table_.keeps_attrs_ = false;
  const uint64_t skipped = answers_.stats().stores_skipped;
  EXPECT_EQ(h_.call(Op::Mkdir, d, pod(mk) + cstr("sub2")).error(), 0);
  EXPECT_FALSE(table_.attrs.contains(d));
  EXPECT_EQ(answers_.stats().stores_skipped, skipped) << "a store was attempted";
  EXPECT_EQ(replies_before_drop_, 0u) << "a drop came after its request's reply";
}

// A STATFS reply is stored as sent, for the mount's statfs_timeout; with 0 it is not.
TEST_F(SessionAnswers, StatfsRepliesStoredForTheStatfsTimeout) {
  Reply r = h_.call(Op::Statfs, kRootId, "");
  ASSERT_EQ(r.error(), 0);
  ASSERT_TRUE(table_.statfs.contains(kRootId));
  const efuse_handler_answer& a = table_.statfs[kRootId].answer;
  ASSERT_EQ(a.size, r.payload.size());
  EXPECT_EQ(std::memcmp(a.data, r.payload.data(), a.size), 0) << "the exact reply";
  h_.session().set_statfs_timeout(0);
  const uint64_t f = make_file("f");
  ASSERT_EQ(h_.call(Op::Statfs, f, "").error(), 0);
  EXPECT_FALSE(table_.statfs.contains(f)) << "statfs_timeout 0";
}

// ACCESS replies (mounts without default_permissions) are stored per caller and mask with
// the error efused answered, and a chmod drops them before its reply.
TEST_F(SessionAnswers, AccessRepliesStoredPerCallerAndDroppedByAChmod) {
  const uint64_t f = make_file("f");  // mode 0644 (umask 022 at most): no one may execute it
  ASSERT_EQ(chmod(h_.src("f").c_str(), 0644), 0);
  stat_stored(f);  // efused sent an attribute validity
  k::fuse_access_in in{};
  in.mask = R_OK;
  ASSERT_EQ(h_.call(Op::Access, f, pod(in)).error(), 0);
  in.mask = X_OK;
  ASSERT_EQ(h_.call(Op::Access, f, pod(in)).error(), EACCES);
  ASSERT_TRUE(table_.access.contains(f));
  const efuse_handler_entry& e = table_.access[f];
  ASSERT_EQ(e.answer.size, 2 * sizeof(efuse_access_slot));
  efuse_access_slot slots[2];
  std::memcpy(slots, e.answer.data, sizeof slots);
  EXPECT_EQ(slots[0].uid, getuid());
  EXPECT_EQ(slots[0].gid, getgid());
  EXPECT_EQ(slots[0].mask, static_cast<uint32_t>(R_OK));
  EXPECT_EQ(slots[0].error, 0);
  EXPECT_EQ(slots[1].mask, static_cast<uint32_t>(X_OK));
  EXPECT_EQ(slots[1].error, -EACCES);
  k::fuse_setattr_in sa{};
  sa.valid = k::kFattrMode;
  sa.mode = S_IFREG | 0755;
  ASSERT_EQ(h_.call(Op::Setattr, f, pod(sa)).error(), 0);
  EXPECT_FALSE(table_.access.contains(f)) << "X_OK is granted now";
  EXPECT_EQ(replies_before_drop_, 0u) << "a drop came after its request's reply";
  EXPECT_EQ(h_.call(Op::Access, f, pod(in)).error(), 0);
}

TEST_F(SessionAnswers, ReaddirplusTeachesTheNamesAndForgetDropsTheNode) {
  ASSERT_TRUE(write_file(h_.src("d1"), "z"));
  const uint64_t dir = kRootId;
  const uint64_t dh = h_.opendir(dir);
  Reply r = h_.call(Op::Readdirplus, dir, read_body(dh, 0, 4096));
  ASSERT_EQ(r.error(), 0);
  uint64_t d1 = 0;
  std::vector<Dirent> ents;
  ASSERT_TRUE(parse_dirents(r.payload, true, &ents));
  for (const Dirent& d : ents)
    if (d.name == "d1") d1 = d.entry.nodeid;
  ASSERT_NE(d1, 0u);
  // Stored as the name's LOOKUP answer: the entry exactly as the listing sent it.
  ASSERT_TRUE(table_.has_name(dir, "d1"));
  for (const Dirent& d : ents) {
    if (d.name == "d1") {
      EXPECT_EQ(std::memcmp(table_.names[{dir, "d1"}].answer.data, &d.entry, sizeof d.entry), 0);
    }
  }
  stat_stored(d1);
  EXPECT_EQ(h_.call(Op::Unlink, kRootId, cstr("d1")).error(), 0);
  EXPECT_FALSE(table_.attrs.contains(d1)) << "readdirplus named it";
  const uint64_t f = make_file("f");
  stat_stored(f);
  h_.call_no_reply(Op::Forget, f, pod(k::fuse_forget_in{1}));
  EXPECT_FALSE(table_.attrs.contains(f));
}

// A request with the fh the module gives an open its OPEN handler answered.
constexpr uint64_t kernel_fh(uint64_t n) { return EFUSE_HANDLER_KERNEL_FH | n; }

std::string flock_body(uint64_t fh, uint32_t type) {
  k::fuse_lk_in in{};
  in.fh = fh;
  in.owner = fh;
  in.lk = {0, INT64_MAX, type, 0};
  in.lk_flags = k::kLkFlock;
  return pod(in);
}

TEST_F(SessionAnswers, ReadOnlyPassthroughOpenStoresOpenAndFlushAnswersAndHoldsTheId) {
  h_.connection().grant_backing_ids();
  efuse::fs::Policy fixed;  // io_path passthrough (auto would pick the cache for small files)
  fixed.adaptive_io = false;
  h_.fs().set_policy(fixed);
  const uint64_t f = make_file("f", "data");
  Reply r = h_.call(Op::Open, f, pod(k::fuse_open_in{O_RDONLY, 0}));
  ASSERT_EQ(r.error(), 0);
  const auto o = r.as<k::fuse_open_out>();
  ASSERT_NE(o.open_flags & k::kFopenPassthrough, 0u);
  ASSERT_TRUE(table_.opens.contains(f));
  k::fuse_open_out stored;
  std::memcpy(&stored, table_.opens[f].answer.data, sizeof stored);
  EXPECT_EQ(stored.backing_id, o.backing_id);
  EXPECT_EQ(stored.fh, 0u);
  EXPECT_TRUE(table_.flushes.contains(f));
  EXPECT_EQ(h_.session().kernel_open_holds(), 1u);
  h_.release(f, o.fh);
  EXPECT_TRUE(h_.connection().closed_backing_ids().empty()) << "held for kernel opens";
  // Opens the handler does not answer store nothing: for writing (and it drops the answer,
  // as every change of the node's attributes does), with O_TRUNC.
  const uint64_t w = h_.open(f, O_RDWR);
  EXPECT_FALSE(table_.opens.contains(f));
  h_.release(f, w);
  const uint64_t t = h_.open(f, O_RDONLY | O_TRUNC);
  EXPECT_FALSE(table_.opens.contains(f));
  h_.release(f, t);
  h_.release(f, h_.open(f, O_RDONLY));
  EXPECT_TRUE(table_.opens.contains(f)) << "stored anew";
  EXPECT_EQ(replies_before_drop_, 0u) << "a drop came after its request's reply";
}

TEST_F(SessionAnswers, KernelOpensRequestsAreServedWithEfusedsOwnHandles) {
  h_.connection().grant_backing_ids();
  efuse::fs::Policy fixed;
  fixed.adaptive_io = false;
  h_.fs().set_policy(fixed);
  const uint64_t f = make_file("f", "data");
  h_.release(f, h_.open(f, O_RDONLY));  // stores the answers, holds a handle
  ASSERT_TRUE(table_.flushes.contains(f));
  // FLUSH, FSYNC and LSEEK of a kernel open: served with the handle held for the node.
  k::fuse_flush_in fl{};
  fl.fh = kernel_fh(1);
  EXPECT_EQ(h_.call(Op::Flush, f, pod(fl)).error(), 0);
  EXPECT_EQ(h_.session().kernel_open_holds(), 1u);
  k::fuse_fsync_in fs{};
  fs.fh = kernel_fh(1);
  EXPECT_EQ(h_.call(Op::Fsync, f, pod(fs)).error(), 0);
  k::fuse_lseek_in ls{};
  ls.fh = kernel_fh(2);
  ls.whence = SEEK_DATA;
  Reply seek = h_.call(Op::Lseek, f, pod(ls));
  EXPECT_EQ(seek.error(), 0);
  EXPECT_EQ(seek.as<k::fuse_lseek_out>().offset, 0u);
  // A POSIX lock: FLUSH answers stop for the node.
  EXPECT_EQ(h_.call(Op::Setlk, f, lk_body(kernel_fh(1), 7, F_RDLCK)).error(), 0);
  EXPECT_FALSE(table_.flushes.contains(f));
  EXPECT_EQ(h_.call(Op::Flush, f, pod(fl)).error(), 0);
  // flock: two kernel opens are two descriptions; the RELEASE that undoes a flock frees it.
  EXPECT_EQ(h_.call(Op::Setlk, f, flock_body(kernel_fh(3), F_WRLCK)).error(), 0);
  EXPECT_EQ(h_.call(Op::Setlk, f, flock_body(kernel_fh(4), F_WRLCK)).error(), EAGAIN);
  k::fuse_release_in rel{};
  rel.fh = kernel_fh(3);
  rel.flags = O_RDONLY;
  rel.release_flags = k::kReleaseFlockUnlock;
  EXPECT_EQ(h_.call(Op::Release, f, pod(rel)).error(), 0);
  EXPECT_EQ(h_.call(Op::Setlk, f, flock_body(kernel_fh(4), F_WRLCK)).error(), 0);
  rel.fh = kernel_fh(4);
  EXPECT_EQ(h_.call(Op::Release, f, pod(rel)).error(), 0);
  // A RELEASE of a kernel open that holds nothing, and a forged handle of efused's.
  rel.fh = kernel_fh(5);
  rel.release_flags = 0;
  EXPECT_EQ(h_.call(Op::Release, f, pod(rel)).error(), 0);
  fl.fh = 12345;
  EXPECT_EQ(h_.call(Op::Flush, f, pod(fl)).error(), EBADF);
  // The node dropped (its FORGET): the answers, then the held handle and the id go.
  EXPECT_TRUE(h_.connection().closed_backing_ids().empty());
  h_.call_no_reply(Op::Forget, f, pod(k::fuse_forget_in{1}));
  EXPECT_EQ(h_.session().kernel_open_holds(), 0u);
  EXPECT_TRUE(table_.opens.empty());
  EXPECT_EQ(h_.connection().closed_backing_ids().size(), 1u);
}

// Negative LOOKUPs of new names: MKDIR through the session marks the new directory
// complete when the backend watches it (a watcher, as efused's mounts have), and every name
// made in it is in its index before the backend makes it.
class SessionCompleteDirs : public SessionAnswers {
 protected:
  struct NoKernel final : efuse::fs::Invalidator {
    efuse::Status inval_inode(uint64_t, bool) override { return {}; }
    efuse::Status inval_entry(uint64_t, std::string_view, bool) override { return {}; }
  };
  SessionCompleteDirs() {
    h_.fs().set_invalidator(&inv_);
    answers_.set_exact([this] { return h_.fs().sees_every_change(); });
  }
  ~SessionCompleteDirs() override { h_.fs().set_invalidator(nullptr); }
  uint64_t mkdir(uint64_t parent, const char* name) {
    k::fuse_mkdir_in mk{};
    mk.mode = S_IFDIR | 0755;
    Reply d = h_.call(Op::Mkdir, parent, pod(mk) + cstr(name));
    EXPECT_EQ(d.error(), 0);
    return d.error() == 0 ? d.as<k::fuse_entry_out>().nodeid : 0;
  }
  int create(uint64_t parent, const char* name) {
    k::fuse_create_in cr{};
    cr.flags = O_WRONLY | O_CREAT | O_EXCL;
    cr.mode = S_IFREG | 0644;
    return h_.call(Op::Create, parent, pod(cr) + cstr(name)).error();
  }
  NoKernel inv_;
};

TEST_F(SessionCompleteDirs, ANewDirectoryIsCompleteAndItsNamesGoInFirst) {
  ASSERT_TRUE(h_.fs().sees_every_change());
  const uint64_t d = mkdir(kRootId, "d");
  ASSERT_TRUE(table_.complete.contains(d));
  EXPECT_TRUE(table_.negative_for(d, "f") != nullptr);
  // Each name is in the index before the backend makes it.
  std::vector<std::string> seen;
  table_.on_put_dir_name = [&](uint64_t parent, const std::string& n) {
    EXPECT_EQ(parent, d);
    EXPECT_NE(::access(h_.src("d/" + n).c_str(), F_OK), 0) << n << " made before it went in";
    seen.push_back(n);
  };
  ASSERT_EQ(create(d, "f"), 0);
  const uint64_t sub = mkdir(d, "sub");
  k::fuse_mknod_in mn{};
  mn.mode = S_IFIFO | 0644;
  ASSERT_EQ(h_.call(Op::Mknod, d, pod(mn) + cstr("fifo")).error(), 0);
  ASSERT_EQ(h_.call(Op::Symlink, d, cstr("l") + cstr("f")).error(), 0);
  const uint64_t f = h_.lookup(d, "f").nodeid;
  k::fuse_link_in li{};
  li.oldnodeid = f;
  ASSERT_EQ(h_.call(Op::Link, d, pod(li) + cstr("hard")).error(), 0);
  EXPECT_EQ(seen, (std::vector<std::string>{"f", "sub", "fifo", "l", "hard"}));
  table_.on_put_dir_name = nullptr;
  EXPECT_TRUE(table_.complete.contains(sub)) << "made through the mount too";
  for (const char* n : {"f", "sub", "fifo", "l", "hard"})
    EXPECT_EQ(table_.negative_for(d, n), nullptr) << n << " exists";
  EXPECT_NE(table_.negative_for(d, "other"), nullptr);

  // Renamed out of d (into sub): out of d's index after, into sub's before.
  ASSERT_EQ(h_.call(Op::Rename, d, pod(k::fuse_rename_in{sub}) + cstr("hard") + cstr("moved"))
                .error(),
            0);
  EXPECT_NE(table_.negative_for(d, "hard"), nullptr);
  EXPECT_EQ(table_.negative_for(sub, "moved"), nullptr);
  // Unlinked: out of the index, so the next LOOKUP is answered negative.
  ASSERT_EQ(h_.call(Op::Unlink, d, cstr("l")).error(), 0);
  EXPECT_NE(table_.negative_for(d, "l"), nullptr);
  // RENAME_EXCHANGE: both names stay.
  k::fuse_rename2_in ex{};
  ex.newdir = sub;
  ex.flags = RENAME_EXCHANGE;
  ASSERT_EQ(h_.call(Op::Rename2, d, pod(ex) + cstr("f") + cstr("moved")).error(), 0);
  EXPECT_EQ(table_.negative_for(d, "f"), nullptr);
  EXPECT_EQ(table_.negative_for(sub, "moved"), nullptr);
  // A create that fails takes the mark away (efused cannot tell what the backend made).
  k::fuse_mkdir_in mk{};
  mk.mode = S_IFDIR | 0755;
  EXPECT_EQ(h_.call(Op::Mkdir, d, pod(mk) + cstr("sub")).error(), EEXIST);
  EXPECT_FALSE(table_.complete.contains(d));
  EXPECT_TRUE(table_.complete.contains(sub));
  // FORGET of the directory takes its mark away too.
  h_.call_no_reply(Op::Forget, sub, pod(k::fuse_forget_in{1}));
  EXPECT_FALSE(table_.complete.contains(sub));
}

TEST_F(SessionCompleteDirs, OnlyEmptyWatchedDirectoriesAreComplete) {
  const uint64_t d = mkdir(kRootId, "d");
  ASSERT_NE(d, 0u);
  EXPECT_TRUE(h_.fs().new_dir_complete(d));
  // Something made behind efused's back before the watch was in place: found.
  ASSERT_TRUE(write_file(h_.src("d/behind"), "x"));
  EXPECT_FALSE(h_.fs().new_dir_complete(d));
  EXPECT_FALSE(h_.fs().new_dir_complete(kRootId + 12345)) << "no such node";
  // Without a watcher (the backend does not see every change) nothing is complete.
  h_.fs().set_invalidator(nullptr);
  const uint64_t e = mkdir(kRootId, "e");
  EXPECT_FALSE(table_.complete.contains(e));
  EXPECT_FALSE(h_.fs().new_dir_complete(e));
}

}  // namespace
}  // namespace fuse::testing
