#include "services/evaluation/suppression.h"

#include <algorithm>
#include <map>

namespace peerpath::evaluation {
namespace {

// Suppresses the unsuppressed part with the fewest people (ties: the lowest index, so the
// result is deterministic); the total when no part is left. Returns false when nothing was left.
bool SuppressSmallest(std::vector<SuppressionCell>& cells, const AdditiveGroup& group) {
  int best = -1;
  for (int part : group.parts) {
    if (cells[part].suppressed) continue;
    if (best < 0 || cells[part].people < cells[best].people) best = part;
  }
  if (best < 0) {
    if (group.total < 0 || cells[group.total].suppressed) return false;
    best = group.total;
  }
  cells[best].suppressed = true;
  return true;
}

}  // namespace

void Suppress(std::vector<SuppressionCell>& cells, const std::vector<AdditiveGroup>& groups,
              int64_t min_cell_size) {
  for (SuppressionCell& cell : cells) {
    for (int64_t size : cell.people_groups) {
      if (size < min_cell_size) cell.suppressed = true;
    }
  }
  std::map<std::string, std::vector<int>> shared;
  for (int i = 0; i < static_cast<int>(cells.size()); ++i) {
    if (!cells[i].shared_key.empty()) shared[cells[i].shared_key].push_back(i);
  }
  bool changed = true;
  while (changed) {
    changed = false;
    for (const auto& [key, members] : shared) {
      const bool any =
          std::any_of(members.begin(), members.end(), [&](int i) { return cells[i].suppressed; });
      if (!any) continue;
      for (int i : members) {
        if (!cells[i].suppressed) {
          cells[i].suppressed = true;
          changed = true;
        }
      }
    }
    for (const AdditiveGroup& group : groups) {
      int suppressed = 0;
      int64_t suppressed_part_people = 0;
      bool total_suppressed = group.total >= 0 && cells[group.total].suppressed;
      if (total_suppressed) ++suppressed;
      for (int part : group.parts) {
        if (!cells[part].suppressed) continue;
        ++suppressed;
        suppressed_part_people += cells[part].people;
      }
      if (suppressed == 0) continue;
      // One suppressed member is the total minus the others; suppressed parts under k people
      // bound each other too closely (their sum is the total minus the shown parts).
      const bool parts_suppressed = suppressed > (total_suppressed ? 1 : 0);
      if (suppressed == 1 || (parts_suppressed && suppressed_part_people < min_cell_size)) {
        if (SuppressSmallest(cells, group)) changed = true;
      }
    }
  }
}

}  // namespace peerpath::evaluation
