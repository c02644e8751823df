// Schema validation (valijson) and the translation of its errors into messages located in
// the YAML file. Messages are built from the schema itself (its type, enum, bounds,
// properties, required and description), so no key or limit is written down twice.
#include <algorithm>
#include <memory>
#include <tuple>

// GCC 12 at -O3 reports a false -Wrestrict overlap in valijson's json_pointer.hpp
// (std::string::replace inlined into replaceAllInPlace); silenced for valijson only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wrestrict"
#include <valijson/adapters/nlohmann_json_adapter.hpp>
#include <valijson/schema.hpp>
#include <valijson/schema_parser.hpp>
#include <valijson/validation_results.hpp>
#include <valijson/validator.hpp>
#pragma GCC diagnostic pop

#include "daemon/config.h"
#include "daemon/config_schema.h"

namespace efuse::daemon {
namespace {

using nlohmann::json;

const valijson::Schema& compiled_schema() {
  static const std::unique_ptr<valijson::Schema> schema = [] {
    auto s = std::make_unique<valijson::Schema>();
    valijson::SchemaParser parser(valijson::SchemaParser::kDraft7);
    valijson::adapters::NlohmannJsonAdapter adapter(mounts_schema());
    parser.populateSchema(adapter, *s);
    return s;
  }();
  return *schema;
}

// "$ref": "#/definitions/x" -> that entry; anything else stays as it is.
const json& follow_ref(const json& schema) {
  auto ref = schema.find("$ref");
  if (ref == schema.end() || !ref->is_string()) return schema;
  const std::string& target = ref->get_ref<const std::string&>();
  if (target.size() < 2 || target.compare(0, 2, "#/") != 0) return schema;
  return mounts_schema().at(json::json_pointer(target.substr(1)));
}

const json* child_schema(const json& parent, const std::string& segment) {
  const json& s = follow_ref(parent);
  if (auto props = s.find("properties"); props != s.end()) {
    if (auto p = props->find(segment); p != props->end()) return &*p;
  }
  if (auto items = s.find("items"); items != s.end() && items->is_object()) return &*items;
  if (auto extra = s.find("additionalProperties"); extra != s.end() && extra->is_object())
    return &*extra;
  return nullptr;
}

// The value at `path` in the document converted from YAML (which mirrors it exactly).
const json& value_at(const json& doc, const YamlPath& path) {
  const json* v = &doc;
  for (const auto& segment : path) {
    if (v->is_array()) {
      v = &v->at(std::stoul(segment));
    } else if (v->is_object() && v->contains(segment)) {
      v = &v->at(segment);
    } else {
      break;
    }
  }
  return *v;
}

// valijson's context {"<root>", "[mounts]", "[0]"} -> {"mounts", "0"}.
YamlPath path_of(const std::vector<std::string>& context) {
  YamlPath path;
  for (const auto& c : context) {
    if (c.size() >= 2 && c.front() == '[' && c.back() == ']')
      path.push_back(c.substr(1, c.size() - 2));
  }
  return path;
}

std::string a_type(const std::string& type) {
  if (type == "object") return "a map";
  if (type == "array") return "a list";
  if (type == "integer") return "an integer";
  if (type == "boolean") return "a boolean (true or false)";
  return "a " + type;
}

std::string a_type_of(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "an empty value";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    case json::value_t::array: return "a list";
    case json::value_t::object: return "a map";
    default: return "a string";
  }
}

std::string joined(const json& list, const std::string& separator) {
  std::string out;
  for (const auto& item : list)
    out +=
        (out.empty() ? "" : separator) + (item.is_string() ? item.get<std::string>() : item.dump());
  return out;
}

std::string joined(const std::vector<std::string>& list, const std::string& separator) {
  std::string out;
  for (const auto& item : list) out += (out.empty() ? "" : separator) + item;
  return out;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t substitute = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      diagonal = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, substitute});
    }
  }
  return row[b.size()];
}

// The closest allowed key within two edits, or "".
std::string closest(const std::string& key, const std::vector<std::string>& allowed) {
  constexpr size_t kMaxEdits = 2;
  std::string best;
  size_t best_distance = kMaxEdits + 1;
  for (const auto& candidate : allowed) {
    size_t d = edit_distance(key, candidate);
    if (d < best_distance && d < candidate.size()) {
      best = candidate;
      best_distance = d;
    }
  }
  return best;
}

std::vector<std::string> property_names(const json& schema) {
  std::vector<std::string> names;
  if (const json* props = schema_keyword(schema, "properties")) {
    for (const auto& [name, _] : props->items()) names.push_back(name);
  }
  return names;
}

// Which of several problems to report: the first in the file, a wrong type before anything
// else about the same value, and missing keys last (a misspelt key usually explains them).
enum class Rank { WrongType, Other, MissingKey };

struct Problem {
  YAML::Mark mark;
  std::string message;
  Rank rank = Rank::Other;
};

class ErrorExplainer {
 public:
  ErrorExplainer(const YamlDocument& doc, const json& value) : doc_(doc), value_(value) {}

  Problem explain(const valijson::ValidationResults::Error& error) const {
    YamlPath path = path_of(error.context);
    const json* schema = subschema_at(path);
    const std::string& d = error.description;
    auto starts = [&d](const char* prefix) { return d.rfind(prefix, 0) == 0; };
    if (schema != nullptr) {
      if (starts("Value type not permitted")) return wrong_type(path, *schema);
      if (starts("Failed to match against any enum")) return not_in_enum(path, *schema);
      if (starts("Expected number")) return out_of_range(path, *schema);
      if (starts("Failed to match regex")) return no_pattern_match(path, *schema);
      if (starts("Object contains a property")) return unknown_key(path, *schema);
      if (starts("Missing required property")) return missing_keys(path, *schema);
    }
    return {doc_.value_mark(path), doc_.describe(path) + ": " + d};
  }

 private:
  // The value as written in the file: quoted when it is a string.
  std::string shown(const YamlPath& path) const {
    std::string text = doc_.text(path);
    return value_at(value_, path).is_string() ? "'" + text + "'" : text;
  }

  Problem at_value(const YamlPath& path, const std::string& message) const {
    return {doc_.value_mark(path), doc_.describe(path) + " " + message};
  }

  Problem wrong_type(const YamlPath& path, const json& schema) const {
    const json* type = schema_keyword(schema, "type");
    std::string expected = type == nullptr ? "something else"
                                           : a_type(type->is_string() ? type->get<std::string>()
                                                                      : joined(*type, " or "));
    Problem p =
        at_value(path, "must be " + expected + ", not " + a_type_of(value_at(value_, path)));
    p.rank = Rank::WrongType;
    return p;
  }

  Problem not_in_enum(const YamlPath& path, const json& schema) const {
    const json* values = schema_keyword(schema, "enum");
    return at_value(path, "must be one of " + (values ? joined(*values, ", ") : std::string("?")) +
                              "; not " + shown(path));
  }

  Problem out_of_range(const YamlPath& path, const json& schema) const {
    const json* min = schema_keyword(schema, "minimum");
    const json* max = schema_keyword(schema, "maximum");
    std::string bounds = min && max ? "between " + min->dump() + " and " + max->dump()
                         : min      ? "at least " + min->dump()
                         : max      ? "at most " + max->dump()
                                    : "in range";
    return at_value(path, "must be " + bounds + ", not " + shown(path));
  }

  Problem no_pattern_match(const YamlPath& path, const json& schema) const {
    const json* description = schema_keyword(schema, "description");
    const json* pattern = schema_keyword(schema, "pattern");
    std::string expected = description
                               ? description->get<std::string>()
                               : "must match " + (pattern ? pattern->get<std::string>() : "?");
    return at_value(path, shown(path) + " is not valid: " + expected);
  }

  Problem unknown_key(const YamlPath& path, const json& schema) const {
    std::vector<std::string> allowed = property_names(schema);
    for (const auto& key : doc_.keys(path)) {
      if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
      YamlPath key_path = path;
      key_path.push_back(key);
      std::string hint = closest(key, allowed);
      hint = hint.empty() ? "; expected one of " + joined(allowed, ", ")
                          : "; did you mean '" + hint + "'?";
      return {doc_.key_mark(key_path), "unknown key '" + key + "' " + doc_.where(path) + hint};
    }
    return {doc_.value_mark(path), doc_.describe(path) + " has an unknown key"};
  }

  Problem missing_keys(const YamlPath& path, const json& schema) const {
    const json& map = value_at(value_, path);
    std::vector<std::string> missing;
    if (const json* required = schema_keyword(schema, "required")) {
      for (const auto& key : *required) {
        if (!map.contains(key.get<std::string>()))
          missing.push_back("'" + key.get<std::string>() + "'");
      }
    }
    std::string what = missing.size() == 1 ? "key " : "keys ";
    return {doc_.value_mark(path),
            "missing required " + what + joined(missing, ", ") + " " + doc_.where(path),
            Rank::MissingKey};
  }

  const YamlDocument& doc_;
  const json& value_;
};

// valijson also reports every enclosing property and item ("Failed to validate ...").
bool is_wrapper(const valijson::ValidationResults::Error& error) {
  return error.description.rfind("Failed to validate", 0) == 0;
}

}  // namespace

const json& mounts_schema() {
  static const json schema = json::parse(mounts_schema_text());
  return schema;
}

const json* schema_keyword(const json& schema, const char* keyword) {
  for (const json* s = &schema;;) {
    if (auto it = s->find(keyword); it != s->end()) return &*it;
    const json* next = &follow_ref(*s);
    if (next == s) return nullptr;
    s = next;
  }
}

const json* subschema_at(const YamlPath& path) {
  const json* schema = &mounts_schema();
  for (const auto& segment : path) {
    schema = child_schema(*schema, segment);
    if (schema == nullptr) return nullptr;
  }
  return schema;
}

void validate_against_schema(const YamlDocument& doc, const json& value) {
  valijson::Validator validator(valijson::Validator::kStrongTypes);
  valijson::ValidationResults results;
  if (validator.validate(compiled_schema(), valijson::adapters::NlohmannJsonAdapter(value),
                         &results))
    return;

  ErrorExplainer explainer(doc, value);
  std::vector<Problem> problems;
  valijson::ValidationResults::Error error;
  while (results.popError(error)) {
    if (!is_wrapper(error)) problems.push_back(explainer.explain(error));
  }
  if (problems.empty()) doc.fail(doc.root().Mark(), "the configuration does not match its schema");
  auto order = [](const Problem& p) {
    return std::tuple(p.rank == Rank::MissingKey, p.mark.line, p.mark.column, p.rank);
  };
  auto first =
      std::min_element(problems.begin(), problems.end(),
                       [&](const Problem& a, const Problem& b) { return order(a) < order(b); });
  doc.fail(first->mark, first->message);
}

}  // namespace efuse::daemon
