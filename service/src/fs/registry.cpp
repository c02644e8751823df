#include "fs/registry.h"

#include <system_error>

#include "fs/memory/memory_fs.h"
#include "fs/passthrough/passthrough_fs.h"

namespace efuse::fs {
namespace {

using Factory = std::unique_ptr<Filesystem> (*)(const BackendParams&);
using Reconfigure = void (*)(Filesystem&, const BackendParams&);

struct Backend {
  std::string_view name;
  Factory create;  // may throw std::system_error; create_backend() converts it
  Reconfigure reconfigure;  // called only with a Filesystem `create` made
};

constexpr Backend kBackends[] = {
    {"passthrough",
     [](const BackendParams& p) -> std::unique_ptr<Filesystem> {
       return std::make_unique<passthrough::PassthroughFs>(p.source, p.policy);
     },
     [](Filesystem& fs, const BackendParams& p) { fs.set_policy(p.policy); }},
    {"memory",
     [](const BackendParams& p) -> std::unique_ptr<Filesystem> {
       return std::make_unique<memory::MemoryFs>(p.memory, p.policy, /*store=*/true);
     },
     [](Filesystem& fs, const BackendParams& p) {
       auto& m = static_cast<memory::MemoryFs&>(fs);
       m.set_policy(p.policy);
       m.set_limits(p.memory);
     }},
};

const Backend* find(std::string_view name) {
  for (const Backend& b : kBackends)
    if (b.name == name) return &b;
  return nullptr;
}

}  // namespace

std::vector<std::string_view> backend_names() {
  std::vector<std::string_view> out;
  for (const Backend& b : kBackends) out.push_back(b.name);
  return out;
}

bool backend_known(std::string_view name) { return find(name) != nullptr; }

void reconfigure_backend(std::string_view name, Filesystem& fs, const BackendParams& params) {
  if (const Backend* b = find(name)) b->reconfigure(fs, params);
}

Result<std::unique_ptr<Filesystem>> create_backend(std::string_view name,
                                                   const BackendParams& params,
                                                   std::string* error) {
  const Backend* b = find(name);
  if (b == nullptr) {
    *error = "backend '" + std::string(name) + "' is not available";
    return Errno{EINVAL};
  }
  try {
    return b->create(params);
  } catch (const std::system_error& e) {
    *error = e.what();
    return Errno{e.code().value()};
  } catch (const std::bad_alloc&) {
    *error = "out of memory creating backend '" + std::string(name) + "'";
    return Errno{ENOMEM};
  }
}

}  // namespace efuse::fs
