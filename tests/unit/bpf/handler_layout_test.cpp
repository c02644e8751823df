// The eBPF handlers for efuse.ko (bpf/handlers/) and the module share one layout,
// bpf/handlers/efuse_handler.h (kmod/build.sh refuses to build when the patch series'
// fs/fuse/efuse_handler.h differs from it). Here: the compiled handler's answer map holds
// exactly that header's answer, and the offsets the module and the tests rely on hold.
// Opening the object parses the ELF only: no privileges.
#include <bpf/libbpf.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <string>

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
  const MapLayout maps[] = {{"efuse_lookup_answers", sizeof(efuse_handler_name_key),
                             sizeof(efuse_handler_entry)}};
  std::string error;
  EXPECT_TRUE(check_layout(obj, maps, &error)) << error;
  bpf_object__close(obj);
}

TEST(BpfHandlerLayout, OffsetsTheModuleReads) {
  // tests/vm/guest_smoke.py packs answers as "<QiI256s".
  EXPECT_EQ(offsetof(efuse_handler_answer, nodeid), 0u);
  EXPECT_EQ(offsetof(efuse_handler_answer, error), 8u);
  EXPECT_EQ(offsetof(efuse_handler_answer, size), 12u);
  EXPECT_EQ(offsetof(efuse_handler_answer, data), 16u);
  EXPECT_EQ(offsetof(efuse_handler_ctx, out), 304u);
  EXPECT_EQ(offsetof(efuse_handler_out, answer), 8u);
  EXPECT_EQ(offsetof(efuse_handler_in, name), 48u);
  EXPECT_EQ(sizeof(efuse_handler_ctx), 304u + 8u + 16u + EFUSE_HANDLER_DATA_MAX);
}

}  // namespace
}  // namespace efuse::bpf
