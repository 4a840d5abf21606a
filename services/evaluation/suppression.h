#pragma once

// Small-cell suppression of a report (evaluation.proto, ReportCell): pure, no database.
//
//   1. Primary: a cell is suppressed when any group of people it shows or implies counts fewer
//      than k distinct people (0 included).
//   2. Complementary: for every additive group (a total and the parts that add up to it; the
//      caller lists them: breakdown margins, the directions of a trend and their common
//      denominator, an agency's enrollments and its pathways'), more cells are suppressed, parts
//      with the fewest people first (the total only when no part is left), until no group has
//      exactly one suppressed member (which would be the total minus the shown parts) and the
//      suppressed parts of every group together count at least k people.
//   3. Cells that show the same group of people (the same `shared_key`) are suppressed together.
// Rules 2 and 3 are repeated until nothing changes, so a cell suppressed for one group is
// protected in every other group it belongs to.

#include <cstdint>
#include <string>
#include <vector>

namespace peerpath::evaluation {

struct SuppressionCell {
  // Sizes of every group of people the cell shows or implies (for a rate: the denominator's
  // people, the numerator's and the denominator's without the numerator's).
  std::vector<int64_t> people_groups;
  // The people behind the cell (orders complementary choices; counts toward a group's k).
  int64_t people = 0;
  // Cells with the same non-empty key show the same group of people.
  std::string shared_key;
  // Set by the caller for cells that show nothing anyway (an unavailable measure).
  bool suppressed = false;
};

struct AdditiveGroup {
  int total = -1;          // Index of the total cell.
  std::vector<int> parts;  // Indices of the parts; their values add up to the total's.
};

// Decides suppression in place (cell.suppressed); `min_cell_size` is k.
void Suppress(std::vector<SuppressionCell>& cells, const std::vector<AdditiveGroup>& groups,
              int64_t min_cell_size);

}  // namespace peerpath::evaluation
