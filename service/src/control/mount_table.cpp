#include "control/mount_table.h"

#include <algorithm>
#include <array>
#include <vector>

namespace efuse::control {

namespace {

constexpr size_t kColumns = 6;
using Row = std::array<std::string, kColumns>;
constexpr Row kHeader = {"NAME", "STATE", "MOUNTPOINT", "TRANSPORT", "TIER", "ERROR"};
constexpr const char* kEmptyCell = "-";

// One line, no control characters: error texts may span lines.
std::string cell(const nlohmann::json& mount, const char* key) {
  if (!mount.is_object()) return kEmptyCell;
  auto it = mount.find(key);
  if (it == mount.end() || it->is_null()) return kEmptyCell;
  std::string text = it->is_string() ? it->get<std::string>() : it->dump();
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return text.empty() ? kEmptyCell : text;
}

Row row_of(const nlohmann::json& mount) {
  return {cell(mount, "name"), cell(mount, "state"), cell(mount, "mountpoint"),
          cell(mount, "transport"), cell(mount, "tier"), cell(mount, "error")};
}

std::string render(const std::vector<Row>& rows) {
  std::array<size_t, kColumns> width{};
  for (const Row& row : rows) {
    for (size_t i = 0; i < kColumns; ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::string out;
  for (const Row& row : rows) {
    std::string line;
    for (size_t i = 0; i < kColumns; ++i) {
      line += row[i];
      if (i + 1 < kColumns) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    line.erase(line.find_last_not_of(' ') + 1);
    out += line + "\n";
  }
  return out;
}

size_t count_mounted(const nlohmann::json& mounts) {
  if (!mounts.is_array()) return 0;
  return std::count_if(mounts.begin(), mounts.end(),
                       [](const nlohmann::json& m) { return cell(m, "state") == "mounted"; });
}

void append_details(const nlohmann::json& object, const std::string& prefix, std::string* out) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    const std::string key = prefix + it.key();
    if (it->is_object()) {
      append_details(*it, key + ".", out);
      continue;
    }
    *out += key + ": " + cell(object, it.key().c_str()) + "\n";
  }
}

}  // namespace

std::string format_mount_details(const nlohmann::json& mount) {
  if (!mount.is_object()) return "(unexpected reply: not a mount)\n";
  std::string out;
  append_details(mount, "", &out);
  return out;
}

std::string format_mount_table(const nlohmann::json& mounts) {
  if (!mounts.is_array()) return "(unexpected reply: not a list of mounts)\n";
  if (mounts.empty()) return "(no mounts configured)\n";
  std::vector<Row> rows{kHeader};
  for (const nlohmann::json& mount : mounts) rows.push_back(row_of(mount));
  return render(rows);
}

std::string format_telemetry(const nlohmann::json& t) {
  auto text = [&t](const char* key) {
    auto it = t.find(key);
    return it != t.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  std::string out = "telemetry: " + (text("level").empty() ? "off" : text("level"));
  auto every = t.find("sample_every");
  if (!text("level").empty() && text("level") != "off" && every != t.end() &&
      every->is_number_integer() && every->get<int64_t>() > 0)
    out += every->get<int64_t>() == 1
               ? ", every request timed"
               : ", timed 1 in " + std::to_string(every->get<int64_t>()) + " of the time";
  std::string detail;
  if (!text("configured").empty() && text("configured") != text("level"))
    detail = "configured " + text("configured");
  if (!text("off").empty() && text("off") != "disabled")
    detail += (detail.empty() ? "" : "; ") + text("off") + ": " + text("reason");
  return out + (detail.empty() ? "" : " (" + detail + ")") + "\n";
}

std::string format_status(const std::string& version, uint32_t mount_count,
                          const nlohmann::json& mounts, const nlohmann::json& daemon,
                          const nlohmann::json& telemetry) {
  std::string out = "efused " + version + ", " + std::to_string(mount_count) +
                    (mount_count == 1 ? " mount" : " mounts") + " (" +
                    std::to_string(count_mounted(mounts)) + " mounted)\n";
  if (daemon.is_object() && daemon.contains("metrics")) {
    const nlohmann::json& m = daemon["metrics"];
    if (cell(m, "error") != kEmptyCell)
      out += "metrics: NOT SERVING: " + cell(m, "error") + "\n";
    else if (cell(m, "url") != kEmptyCell)
      out += "metrics: " + cell(m, "url") + "\n";
    else
      out += "metrics: off\n";
  }
  if (telemetry.is_object()) out += format_telemetry(telemetry);
  return out + "\n" + format_mount_table(mounts);
}

}  // namespace efuse::control
