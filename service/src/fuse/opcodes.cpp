#include "fuse/opcodes.h"

#include <array>

#include "fuse/kernel.h"
#include "fuse/opcode_list.h"

namespace fuse {
namespace {

struct Info {
  const char* name = nullptr;
  bool served = false;
};

constexpr std::array<Info, kernel::kMaxOpcode + 1> kInfo = [] {
  std::array<Info, kernel::kMaxOpcode + 1> t{};
#define EFUSE_OPCODE_SERVED(E, n, name) t[n] = {#name, true};
#define EFUSE_OPCODE_KNOWN(E, n, name) t[n] = {#name, false};
  EFUSE_FUSE_OPCODES(EFUSE_OPCODE_SERVED, EFUSE_OPCODE_KNOWN)
#undef EFUSE_OPCODE_SERVED
#undef EFUSE_OPCODE_KNOWN
  return t;
}();

}  // namespace

const char* opcode_name(uint32_t opcode) {
  if (opcode > kernel::kMaxOpcode || kInfo[opcode].name == nullptr) return "unknown";
  return kInfo[opcode].name;
}

bool opcode_served(uint32_t opcode) {
  return opcode <= kernel::kMaxOpcode && kInfo[opcode].served;
}

}  // namespace fuse
