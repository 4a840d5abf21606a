#include "common/identifiers.h"

#include <openssl/rand.h>

#include <stdexcept>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace peerpath {

std::string RandomUuid() {
  unsigned char b[16];
  if (RAND_bytes(b, sizeof b) != 1) throw std::runtime_error("no randomness for a UUID");
  b[6] = (b[6] & 0x0F) | 0x40;  // Version 4.
  b[8] = (b[8] & 0x3F) | 0x80;  // RFC 4122 variant.
  const std::string hex =
      absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(b), sizeof b));
  return absl::StrCat(hex.substr(0, 8), "-", hex.substr(8, 4), "-", hex.substr(12, 4), "-",
                      hex.substr(16, 4), "-", hex.substr(20, 12));
}

}  // namespace peerpath
