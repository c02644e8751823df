// The eBPF handlers for efuse.ko (bpf/handlers/) and the module share one layout,
// bpf/handlers/efuse_handler.h (kmod/build.sh refuses to build when the patch series'
// fs/fuse/efuse_handler.h differs from it). Here: the compiled handler's answer map holds
// exactly that header's answer, and the offsets the module and the tests rely on hold.
// Opening the object parses the ELF only: no privileges.
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <iterator>
#include <string>
#include <vector>

#include "bpf/handlers.h"
#include "bpf/layout.h"
#include "efuse_handler.h"
#include "efuse_handler_maps.h"

namespace efuse::bpf {
namespace {

TEST(BpfHandlerLayout, GetattrAnswerMapHoldsTheSharedAnswer) {
  bpf_object* obj = bpf_object__open_file(EFUSE_BPF_HANDLER_DIR "/efuse_getattr.bpf.o", nullptr);
  ASSERT_NE(obj, nullptr) << "libbpf error " << errno;
  const MapLayout maps[] = {
      {"efuse_getattr_answers", sizeof(__u64), sizeof(efuse_handler_entry)}};
  std::string error;
  EXPECT_TRUE(check_layout(obj, maps, &error)) << error;
  bpf_object__close(obj);
}

TEST(BpfHandlerLayout, LookupAnswerMapHoldsTheSharedKeyAndAnswer) {
  bpf_object* obj = bpf_object__open_file(EFUSE_BPF_HANDLER_DIR "/efuse_lookup.bpf.o", nullptr);
  ASSERT_NE(obj, nullptr) << "libbpf error " << errno;
  // With the complete directories (nodeid -> the negative answer) and their names.
  const MapLayout maps[] = {
      {"efuse_lookup_answers", sizeof(efuse_handler_name_key), sizeof(efuse_handler_entry)},
      {"efuse_complete_dirs", sizeof(__u64), sizeof(efuse_handler_entry)},
      {"efuse_dir_names", sizeof(efuse_handler_name_key), sizeof(__u32)}};
  std::string error;
  EXPECT_TRUE(check_layout(obj, maps, &error)) << error;
  bpf_object__close(obj);
}

TEST(BpfHandlerLayout, XattrHandlersShareOneAnswerMapOfTheSharedKeyAndAnswer) {
  // GETXATTR and LISTXATTR are two objects (one opcode each, so each swaps on its own) that
  // declare the same map: a mount's objects share it by name (bpf::HandlerSet::swap).
  for (const char* object : {"/efuse_getxattr.bpf.o", "/efuse_listxattr.bpf.o"}) {
    const std::string path = std::string(EFUSE_BPF_HANDLER_DIR) + object;
    bpf_object* obj = bpf_object__open_file(path.c_str(), nullptr);
    ASSERT_NE(obj, nullptr) << path << ": libbpf error " << errno;
    const MapLayout maps[] = {{"efuse_xattr_answers", sizeof(efuse_handler_name_key),
                               sizeof(efuse_handler_entry)}};
    std::string error;
    EXPECT_TRUE(check_layout(obj, maps, &error)) << path << ": " << error;
    bpf_object__close(obj);
  }
}

TEST(BpfHandlerLayout, ReadHandlerUsesTheSharedBlockAndItsOwnTracepoint) {
  bpf_object* obj = bpf_object__open_file(EFUSE_BPF_HANDLER_DIR "/efuse_read.bpf.o", nullptr);
  ASSERT_NE(obj, nullptr) << "libbpf error " << errno;
  const MapLayout maps[] = {{"efuse_read_blocks", sizeof(__u32), sizeof(efuse_read_block)}};
  std::string error;
  EXPECT_TRUE(check_layout(obj, maps, &error)) << error;
  bpf_program* prog = bpf_object__next_program(obj, nullptr);
  ASSERT_NE(prog, nullptr);
  EXPECT_STREQ(bpf_program__section_name(prog), "raw_tp.w/efuse_handler_read");
  bpf_object__close(obj);
  // The module's READ buffer: the head every handler knows, then whole blocks.
  EXPECT_EQ(offsetof(efuse_handler_read_ctx, blocks), sizeof(efuse_handler_ctx));
  EXPECT_EQ(EFUSE_HANDLER_READ_MAX, 32768);
  // efused and the handler place a block in the same set.
  EXPECT_LT(efuse_read_set(12345, 3, 7), 7u);
  EXPECT_NE(efuse_read_set(2, 0, 1u << 20), efuse_read_set(2, 1, 1u << 20));
}

TEST(BpfHandlerLayout, EntryCountersAreNodeidToCount) {
  bpf_object* obj =
      bpf_object__open_file(EFUSE_BPF_HANDLER_DIR "/efuse_entry_counts.bpf.o", nullptr);
  ASSERT_NE(obj, nullptr) << "libbpf error " << errno;
  const MapLayout maps[] = {{"efuse_entry_lookups", sizeof(__u64), sizeof(__u64)}};
  std::string error;
  EXPECT_TRUE(check_layout(obj, maps, &error)) << error;
  const bpf_map* m = bpf_object__find_map_by_name(obj, "efuse_entry_lookups");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(bpf_map__max_entries(m), static_cast<__u32>(EFUSE_ENTRY_COUNTERS));
  bpf_object__close(obj);
}

TEST(BpfHandlerLayout, OutcomeCountersArePerOpcodeAndStat) {
  bpf_object* obj =
      bpf_object__open_file(EFUSE_BPF_HANDLER_DIR "/efuse_handler_stats.bpf.o", nullptr);
  ASSERT_NE(obj, nullptr) << "libbpf error " << errno;
  const MapLayout maps[] = {{"efuse_handler_outcomes", sizeof(__u32), sizeof(__u64)}};
  std::string error;
  EXPECT_TRUE(check_layout(obj, maps, &error)) << error;
  const bpf_map* m = bpf_object__find_map_by_name(obj, "efuse_handler_outcomes");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(bpf_map__max_entries(m), static_cast<__u32>(EFUSE_HANDLER_OUTCOME_SLOTS));
  bpf_object__close(obj);
}

TEST(BpfHandlerLayout, EveryShippedObjectTakesItsConnection) {
  // efused sets efuse_conn (efuse_handler.bpf.h) before loading each object for a mount.
  std::vector<const char*> objects(std::begin(kCountingObjects), std::end(kCountingObjects));
  for (const ShippedHandler& h : kShippedHandlers) objects.push_back(h.object);
  for (const char* name : objects) {
    const std::string path = std::string(EFUSE_BPF_HANDLER_DIR) + "/" + name + ".bpf.o";
    bpf_object* obj = bpf_object__open_file(path.c_str(), nullptr);
    ASSERT_NE(obj, nullptr) << path;
    const btf* b = bpf_object__btf(obj);
    ASSERT_NE(b, nullptr) << path;
    EXPECT_GT(btf__find_by_name_kind(b, "efuse_conn", BTF_KIND_VAR), 0) << path;
    // ... and efuse_slot (the gate of a hot swap) and the ABI it was built for.
    EXPECT_GT(btf__find_by_name_kind(b, "efuse_slot", BTF_KIND_VAR), 0) << path;
    EXPECT_GT(btf__find_by_name_kind(b, "efuse_handler_abi", BTF_KIND_VAR), 0) << path;
    bpf_object__close(obj);
  }
}

TEST(BpfHandlerLayout, OffsetsTheModuleReads) {
  // tests/vm/guest_smoke.py packs answers as "<QiI256s".
  EXPECT_EQ(offsetof(efuse_handler_answer, nodeid), 0u);
  EXPECT_EQ(offsetof(efuse_handler_answer, error), 8u);
  EXPECT_EQ(offsetof(efuse_handler_answer, size), 12u);
  EXPECT_EQ(offsetof(efuse_handler_answer, data), 16u);
  EXPECT_EQ(offsetof(efuse_handler_ctx, out), 304u);
  EXPECT_EQ(offsetof(efuse_handler_out, answer), 8u);
  EXPECT_EQ(offsetof(efuse_handler_out, turn), 4u);  // the handlers' own word (hot swap)
  EXPECT_EQ(offsetof(efuse_handler_in, name), 48u);
  EXPECT_EQ(sizeof(efuse_handler_ctx), 304u + 8u + 16u + EFUSE_HANDLER_DATA_MAX);
}

}  // namespace
}  // namespace efuse::bpf
