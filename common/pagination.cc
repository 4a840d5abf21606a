#include "common/pagination.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace peerpath {

absl::StatusOr<int> ResolvePageSize(int requested, PageSizeLimits limits) {
  if (requested < 0) {
    return InvalidArgument(
        "page_size must not be negative",
        {{"page_size", absl::StrCat("must be 0 (default ", limits.default_size,
                                    ") or a positive number; got ", requested)}});
  }
  if (requested == 0) return limits.default_size;
  return std::min(requested, limits.max_size);
}

std::string EncodePageToken(absl::string_view list_name, absl::string_view cursor) {
  return absl::WebSafeBase64Escape(absl::StrCat("v1|", list_name, "|", cursor));
}

absl::StatusOr<std::string> DecodePageToken(absl::string_view list_name, absl::string_view token) {
  if (token.empty()) return std::string();
  std::string raw;
  const std::string prefix = absl::StrCat("v1|", list_name, "|");
  if (!absl::WebSafeBase64Unescape(token, &raw) || raw.rfind(prefix, 0) != 0) {
    return InvalidArgument("page_token is not valid for this list",
                           {{"page_token",
                             "use the next_page_token of a previous response of "
                             "the same list, or leave it empty for the first page"}});
  }
  return raw.substr(prefix.size());
}

}  // namespace peerpath
