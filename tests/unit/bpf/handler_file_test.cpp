// Which handler objects efused accepts (bpf/handler_file.h, issue 20): files only their
// owner could have written, reached without symlinks, built for efused's handler ABI and
// for the opcode they are loaded for. No privileges: the owner checked is this test's own
// uid where root would be, and opening an object parses the ELF only.
#include "bpf/handler_file.h"

#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "bpf/handlers.h"
#include "efuse_handler.h"

namespace efuse::bpf {
namespace {

const uid_t kMe = ::geteuid();

std::string shipped(const char* object) { return shipped_object(EFUSE_BPF_HANDLER_DIR, object); }

// A private directory (mode 0700, ours) holding copies of objects.
class HandlerFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/efuse-handler-file-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }

  std::string copy(const std::string& from, const std::string& name, mode_t mode = 0644) {
    std::string to = dir_ + "/" + name;
    std::ifstream in(from, std::ios::binary);
    std::ofstream out(to, std::ios::binary);
    out << in.rdbuf();
    out.close();
    ::chmod(to.c_str(), mode);
    return to;
  }
  std::string refusal(const std::string& path, uint32_t opcode = 1, uid_t owner = kMe) {
    std::string why;
    OpenedHandler o = open_handler(path, opcode, true, owner, &why);
    if (o.obj == nullptr) return why;
    bpf_object__close(o.obj);
    return "";
  }

  std::string dir_;
};

TEST_F(HandlerFileTest, ShippedHandlersDeclareTheirOpcodeAndTheAbi) {
  for (const ShippedHandler& h : kShippedHandlers) {
    std::string path = copy(shipped(h.object), std::string(h.object) + ".bpf.o");
    std::string why;
    OpenedHandler o = open_handler(path, h.opcode, true, kMe, &why);
    ASSERT_NE(o.obj, nullptr) << h.object << ": " << why;
    EXPECT_EQ(o.abi, static_cast<uint32_t>(EFUSE_HANDLER_ABI_VERSION));
    bpf_object__close(o.obj);
  }
  // The counting programs answer no opcode, but are trusted and versioned the same way.
  for (const char* object : kCountingObjects) {
    std::string path = copy(shipped(object), std::string(object) + ".bpf.o");
    std::string why;
    OpenedHandler o = open_handler(path, 0, false, kMe, &why);
    ASSERT_NE(o.obj, nullptr) << object << ": " << why;
    EXPECT_EQ(o.abi, static_cast<uint32_t>(EFUSE_HANDLER_ABI_VERSION));
    bpf_object__close(o.obj);
  }
}

TEST_F(HandlerFileTest, ShippedTableCoversEveryAnsweringObjectOnce) {
  // One object per opcode (the xattr handlers are two objects), and the opcodes the module
  // lets handlers answer (kmod patches 0003, 0005, 0008, 0009, 0011-0015, 0017): LOOKUP,
  // GETATTR, OPEN, READ, STATFS, RELEASE, GETXATTR, LISTXATTR, FLUSH, ACCESS.
  std::vector<uint32_t> opcodes;
  for (const ShippedHandler& h : kShippedHandlers) opcodes.push_back(h.opcode);
  std::sort(opcodes.begin(), opcodes.end());
  EXPECT_EQ(opcodes, (std::vector<uint32_t>{1, 3, 14, 15, 17, 18, 22, 23, 25, 34}));
}

TEST_F(HandlerFileTest, XattrHandlerIsRefusedForTheOtherXattrOpcode) {
  EXPECT_EQ(refusal(copy(shipped("efuse_getxattr"), "gx.bpf.o"), 23),
            "answers opcode 22, not opcode 23");
  EXPECT_EQ(refusal(copy(shipped("efuse_listxattr"), "lx.bpf.o"), 22),
            "answers opcode 23, not opcode 22");
}

TEST_F(HandlerFileTest, ReadHandlerAttachesToItsOwnTracepoint) {
  EXPECT_STREQ(handler_section(15), "raw_tp.w/efuse_handler_read");
  EXPECT_STREQ(handler_section(3), "raw_tp.w/efuse_handler");
  EXPECT_EQ(refusal(copy(shipped("efuse_read"), "r.bpf.o"), 3), "answers opcode 15, not opcode 3");
  EXPECT_EQ(refusal(copy(shipped("efuse_read"), "r2.bpf.o"), 15), "");
}

TEST_F(HandlerFileTest, WrongOpcodeIsRefusedNamingBoth) {
  std::string path = copy(shipped("efuse_getattr"), "g.bpf.o");
  EXPECT_EQ(refusal(path, 1), "answers opcode 3, not opcode 1");
}

TEST_F(HandlerFileTest, OtherAbiIsRefusedNamingBothVersions) {
  std::string path = copy(EFUSE_VM_FIXTURE_DIR "/swap_lookup_abi1.bpf.o", "old.bpf.o");
  EXPECT_EQ(refusal(path), "built for handler ABI 1, efused speaks ABI " +
                               std::to_string(EFUSE_HANDLER_ABI_VERSION));
}

TEST_F(HandlerFileTest, ObjectWithoutAbiIsRefused) {
  std::string path = copy(EFUSE_VM_FIXTURE_DIR "/handler_bounds.bpf.o", "bounds.bpf.o");
  EXPECT_EQ(refusal(path).rfind("declares no handler ABI version", 0), 0u) << refusal(path);
}

TEST_F(HandlerFileTest, NotAnObjectIsRefused) {
  std::string path = dir_ + "/junk.bpf.o";
  std::ofstream(path) << "\x7f" "ELF but not really";
  ::chmod(path.c_str(), 0644);
  EXPECT_EQ(refusal(path).rfind("not a BPF object libbpf can open", 0), 0u) << refusal(path);
}

TEST_F(HandlerFileTest, GroupOrOtherWritableFileIsRefused) {
  std::string path = copy(shipped("efuse_lookup"), "l.bpf.o", 0664);
  EXPECT_EQ(refusal(path), "writable by group or other (mode 0664)");
  ::chmod(path.c_str(), 0646);
  EXPECT_EQ(refusal(path), "writable by group or other (mode 0646)");
  ::chmod(path.c_str(), 0444);
  EXPECT_EQ(refusal(path), "");
}

TEST_F(HandlerFileTest, FileOfAnotherOwnerIsRefused) {
  std::string path = copy(shipped("efuse_lookup"), "l.bpf.o");
  const uid_t other = kMe + 1;
  EXPECT_EQ(refusal(path, 1, other),
            "owned by uid " + std::to_string(kMe) + ", not uid " + std::to_string(other));
  if (kMe == 0) {
    ASSERT_EQ(::chown(path.c_str(), 65534, 65534), 0);
    EXPECT_EQ(refusal(path, 1, 0), "owned by uid 65534, not root");
  }
}

TEST_F(HandlerFileTest, SymlinkIsRefusedAndNotFollowed) {
  std::string target = copy(shipped("efuse_lookup"), "l.bpf.o");
  std::string link = dir_ + "/link.bpf.o";
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  EXPECT_EQ(refusal(link), link + " is a symlink (handler objects are opened without following "
                                  "symlinks)");
  // A symlinked directory on the way is refused the same way.
  std::string sub = dir_ + "/sub";
  ASSERT_EQ(::mkdir(sub.c_str(), 0755), 0);
  copy(target, "sub/l.bpf.o");
  std::string dirlink = dir_ + "/dirlink";
  ASSERT_EQ(::symlink(sub.c_str(), dirlink.c_str()), 0);
  EXPECT_EQ(refusal(dirlink + "/l.bpf.o").rfind(dirlink + " is a symlink", 0), 0u);
  EXPECT_EQ(refusal(sub + "/l.bpf.o"), "");
}

TEST_F(HandlerFileTest, WritableDirectoryOnTheWayIsRefusedUnlessSticky) {
  std::string sub = dir_ + "/open";
  ASSERT_EQ(::mkdir(sub.c_str(), 0755), 0);
  std::string path = copy(shipped("efuse_lookup"), "open/l.bpf.o");
  ASSERT_EQ(::chmod(sub.c_str(), 0777), 0);
  EXPECT_EQ(refusal(path), "directory " + sub + " is writable by group or other (mode 0777)");
  ASSERT_EQ(::chmod(sub.c_str(), 01777), 0);  // like /tmp: nobody else can replace our file
  EXPECT_EQ(refusal(path), "");
}

TEST_F(HandlerFileTest, RelativeDotDotAndDirectoryPathsAreRefused) {
  EXPECT_EQ(refusal("l.bpf.o"), "not an absolute path");
  EXPECT_EQ(refusal(dir_ + "/../l.bpf.o"), "'..' in the path");
  EXPECT_EQ(refusal(dir_ + "/"), "names a directory");
  EXPECT_EQ(refusal(dir_ + "/missing.bpf.o"), "No such file or directory");
  EXPECT_EQ(refusal(dir_), "not a regular file");
}

TEST_F(HandlerFileTest, VerifierFixtureIsAcceptedBeforeLoading) {
  // Everything efused checks before the kernel holds for it: only the verifier refuses it
  // (tests/vm guest_swap.py loads it).
  std::string path = copy(EFUSE_VM_FIXTURE_DIR "/swap_verifier_reject.bpf.o", "v.bpf.o");
  EXPECT_EQ(refusal(path), "");
}

}  // namespace
}  // namespace efuse::bpf
