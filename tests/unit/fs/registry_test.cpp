// Backends are created by name through the one registry, whose names the config schema's
// `backend` enum lists exactly.
#include "fs/registry.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../testing/temp_dir.h"
#include "daemon/config_schema.h"

namespace efuse::fs {
namespace {

TEST(BackendRegistry, CreatesByNameAndRefusesUnknownNames) {
  efuse::testing::TempDir tmp;
  std::string error;
  auto fs = create_backend("passthrough", {tmp.path(), Policy{}}, &error);
  ASSERT_TRUE(fs.ok()) << error;
  EXPECT_NE(fs->get(), nullptr);

  auto missing = create_backend("passthrough", {tmp.path() + "/missing", Policy{}}, &error);
  EXPECT_EQ(missing.error(), ENOENT);
  EXPECT_NE(error.find("missing"), std::string::npos) << error;

  auto unknown = create_backend("nosuch", {tmp.path(), Policy{}}, &error);
  EXPECT_EQ(unknown.error(), EINVAL);
  EXPECT_EQ(error, "backend 'nosuch' is not available");
  EXPECT_FALSE(backend_known("nosuch"));
  EXPECT_TRUE(backend_known("passthrough"));
  EXPECT_TRUE(backend_known("memory"));
  auto memory = create_backend("memory", {"", Policy{}, {1 << 20, 16}}, &error);
  ASSERT_TRUE(memory.ok()) << error;
}

TEST(BackendRegistry, TheConfigSchemaListsExactlyTheRegisteredBackends) {
  const nlohmann::json& schema = efuse::daemon::mounts_schema();
  const nlohmann::json* backend = nullptr;
  // definitions.mount.properties.backend, wherever the mount entry lives.
  std::vector<const nlohmann::json*> todo{&schema};
  while (!todo.empty() && backend == nullptr) {
    const nlohmann::json* j = todo.back();
    todo.pop_back();
    if (!j->is_object()) continue;
    if (j->contains("properties") && (*j)["properties"].contains("backend"))
      backend = &(*j)["properties"]["backend"];
    for (const auto& [key, value] : j->items()) todo.push_back(&value);
  }
  ASSERT_NE(backend, nullptr);
  std::vector<std::string> in_schema = (*backend)["enum"].get<std::vector<std::string>>();
  std::vector<std::string> registered;
  for (std::string_view n : backend_names()) registered.emplace_back(n);
  EXPECT_EQ(in_schema, registered);
}

}  // namespace
}  // namespace efuse::fs
