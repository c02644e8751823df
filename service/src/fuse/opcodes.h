// Opcode names (logs and the `opcode` metric label) and which opcodes efused serves, from
// the one opcode table (opcode_list.h).
#pragma once

#include <cstdint>

namespace fuse {

// "unknown" for opcodes efused does not know.
const char* opcode_name(uint32_t opcode);
// Whether the session has a handler for `opcode` (others are answered ENOSYS).
bool opcode_served(uint32_t opcode);

}  // namespace fuse
