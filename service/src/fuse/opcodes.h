// One table of opcode names, used for logs and metric labels.
#pragma once

#include <cstdint>

namespace fuse {

// "unknown" for opcodes efused does not know.
const char* opcode_name(uint32_t opcode);

}  // namespace fuse
