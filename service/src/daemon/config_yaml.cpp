#include "daemon/config_yaml.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <regex>

#include "daemon/config.h"

namespace efuse::daemon {
namespace {

// Far beyond any valid configuration; they stop recursive aliases ("&a [*a]") and aliases
// that expand exponentially ("billion laughs") before to_json() tries to copy them.
constexpr size_t kMaxDepth = 16;
constexpr size_t kMaxNodes = 100000;

const char* kind_of(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: return "map";
    case YAML::NodeType::Sequence: return "list";
    case YAML::NodeType::Scalar: return "scalar";
    default: return "empty value";
  }
}

bool is_index(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// A plain integer, or nullopt when it does not fit in 64 bits.
std::optional<nlohmann::json> parse_integer(std::string_view digits, int base, bool negative) {
  uint64_t magnitude = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), magnitude, base);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  if (!negative) return nlohmann::json(magnitude);
  if (magnitude > uint64_t{1} << 63) return std::nullopt;
  return nlohmann::json(static_cast<int64_t>(0 - magnitude));
}

// A plain (unquoted) scalar typed by the YAML 1.2 core schema. ".nan" stays a string: it
// would pass every range check.
nlohmann::json plain_scalar(const std::string& s) {
  static const std::regex kNull("~|null|Null|NULL|");
  static const std::regex kTrue("true|True|TRUE");
  static const std::regex kFalse("false|False|FALSE");
  static const std::regex kDecimal("[-+]?[0-9]+");
  static const std::regex kOctal("0o[0-7]+");
  static const std::regex kHex("0x[0-9a-fA-F]+");
  static const std::regex kFloat("[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?");
  static const std::regex kInfinity("[-+]?\\.(inf|Inf|INF)");

  if (std::regex_match(s, kNull)) return nullptr;
  if (std::regex_match(s, kTrue)) return true;
  if (std::regex_match(s, kFalse)) return false;
  if (std::regex_match(s, kOctal))
    return parse_integer(std::string_view(s).substr(2), 8, false).value_or(s);
  if (std::regex_match(s, kHex))
    return parse_integer(std::string_view(s).substr(2), 16, false).value_or(s);
  if (std::regex_match(s, kDecimal)) {
    bool negative = s[0] == '-';
    auto digits = std::string_view(s).substr(s[0] == '-' || s[0] == '+' ? 1 : 0);
    if (auto v = parse_integer(digits, 10, negative)) return *v;
    return std::strtod(s.c_str(), nullptr);  // too big for an integer: a (large) number
  }
  if (std::regex_match(s, kFloat)) return std::strtod(s.c_str(), nullptr);
  if (std::regex_match(s, kInfinity)) {
    return s[0] == '-' ? -std::numeric_limits<double>::infinity()
                       : std::numeric_limits<double>::infinity();
  }
  return s;
}

nlohmann::json scalar_to_json(const YAML::Node& node) {
  // yaml-cpp tags quoted scalars "!"; explicit !!str is a string too.
  if (node.Tag() == "!" || node.Tag() == "tag:yaml.org,2002:str") return node.Scalar();
  return plain_scalar(node.Scalar());
}

// A node and the key it is the value of (the node itself for the root and list items).
struct Located {
  YAML::Node key;
  YAML::Node value;
  bool complete = true;  // false: `value` is the deepest node of the path that exists
};

// Follows `path` from `at` as far as it exists. Recursion rather than a loop: assigning one
// YAML::Node to another rewrites the tree.
Located walk(const Located& at, const YamlPath& path, size_t i = 0) {
  if (i == path.size()) return at;
  const YAML::Node& node = at.value;
  if (node.IsSequence() && is_index(path[i])) {
    size_t index = std::stoul(path[i]);
    if (index < node.size()) return walk(Located{node[index], node[index]}, path, i + 1);
  }
  if (node.IsMap()) {
    for (auto it = node.begin(); it != node.end(); ++it) {
      if (it->first.IsScalar() && it->first.Scalar() == path[i]) {
        return walk(Located{it->first, it->second}, path, i + 1);
      }
    }
  }
  return Located{at.key, at.value, false};
}

}  // namespace

int line_of(const YAML::Mark& mark) { return mark.line + 1; }

YamlDocument::YamlDocument(std::string_view text, std::string origin) : origin_(std::move(origin)) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(std::string(text));
  } catch (const YAML::Exception& e) {
    fail(e.mark, "YAML syntax error: " + e.msg);
  }
  if (docs.empty() || docs[0].IsNull()) {
    throw ConfigError(origin_, 1, 1,
                      "the configuration is empty; expected a map with a 'mounts' list");
  }
  if (docs.size() > 1)
    fail(docs[1].Mark(), "a second YAML document; the file must hold exactly one");
  root_.reset(docs[0]);
  if (!root_.IsMap()) {
    fail(root_.Mark(), std::string("the configuration must be a map with a 'mounts' list, not a ") +
                           kind_of(root_));
  }
  YamlPath path;
  size_t nodes = 0;
  check_keys(root_, path, nodes);
}

void YamlDocument::check_keys(const YAML::Node& node, YamlPath& path, size_t& nodes) const {
  if (path.size() > kMaxDepth)
    fail(node.Mark(),
         "more than " + std::to_string(kMaxDepth) + " levels of nesting (a recursive alias?)");
  if (++nodes > kMaxNodes)
    fail(node.Mark(),
         "more than " + std::to_string(kMaxNodes) + " values (aliases expanding too far?)");
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      path.push_back(std::to_string(i));
      check_keys(node[i], path, nodes);
      path.pop_back();
    }
    return;
  }
  if (!node.IsMap()) return;
  std::map<std::string, YAML::Mark> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    if (!it->first.IsScalar())
      fail(it->first.Mark(), "map keys must be strings, not a " + std::string(kind_of(it->first)));
    const std::string& key = it->first.Scalar();
    auto [first, inserted] = seen.emplace(key, it->first.Mark());
    if (!inserted) {
      fail(it->first.Mark(), "duplicate key '" + key + "' " + where(path) +
                                 " (first defined at line " +
                                 std::to_string(line_of(first->second)) + ")");
    }
    path.push_back(key);
    check_keys(it->second, path, nodes);
    path.pop_back();
  }
}

nlohmann::json YamlDocument::to_json() const { return to_json(root_); }

nlohmann::json YamlDocument::to_json(const YAML::Node& node) const {
  switch (node.Type()) {
    case YAML::NodeType::Scalar: return scalar_to_json(node);
    case YAML::NodeType::Sequence: {
      auto out = nlohmann::json::array();
      for (const auto& item : node) out.push_back(to_json(item));
      return out;
    }
    case YAML::NodeType::Map: {
      auto out = nlohmann::json::object();
      for (auto it = node.begin(); it != node.end(); ++it)
        out[it->first.Scalar()] = to_json(it->second);
      return out;
    }
    default: return nullptr;
  }
}

std::string YamlDocument::describe(const YamlPath& path) const {
  if (path.empty()) return "the top level";
  std::string out;
  YamlPath prefix;
  for (const auto& segment : path) {
    bool in_list = walk(Located{root_, root_}, prefix).value.IsSequence();
    prefix.push_back(segment);
    if (in_list) {
      out += "[" + segment + "]";
    } else {
      out += (out.empty() ? "" : ".") + segment;
    }
  }
  return out;
}

bool YamlDocument::has(const YamlPath& path) const {
  return walk(Located{root_, root_}, path).complete;
}

std::string YamlDocument::text(const YamlPath& path) const {
  Located found = walk(Located{root_, root_}, path);
  return found.complete && found.value.IsScalar() ? found.value.Scalar() : std::string();
}

std::vector<std::string> YamlDocument::keys(const YamlPath& path) const {
  std::vector<std::string> out;
  Located found = walk(Located{root_, root_}, path);
  if (!found.complete || !found.value.IsMap()) return out;
  for (auto it = found.value.begin(); it != found.value.end(); ++it)
    out.push_back(it->first.Scalar());
  return out;
}

std::string YamlDocument::where(const YamlPath& path) const {
  return path.empty() ? "at the top level" : "in " + describe(path);
}

YAML::Mark YamlDocument::value_mark(const YamlPath& path) const {
  Located found = walk(Located{root_, root_}, path);
  // An empty value's mark is wherever the next token starts, often the next line.
  return found.value.IsNull() ? found.key.Mark() : found.value.Mark();
}

YAML::Mark YamlDocument::key_mark(const YamlPath& path) const {
  return walk(Located{root_, root_}, path).key.Mark();
}

void YamlDocument::fail(const YAML::Mark& mark, const std::string& message) const {
  throw ConfigError(origin_, mark.line + 1, mark.column + 1, message);
}

}  // namespace efuse::daemon
