#pragma once

// The consent rules as plain functions over plain structs (no gRPC, no SQL): the access decision
// of CheckAccess / ShareInformation and the gates of CheckGates. Time is passed in.

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "peerpath/consent/v1/consent.pb.h"

namespace peerpath::consent {

using v1::AccessReason;
using v1::DataCategory;
using v1::GateReason;
using v1::Purpose;
using v1::RecipientKind;

// A recipient or one identity of an accessor: kind and id.
struct RecipientRef {
  RecipientKind kind = v1::RECIPIENT_KIND_UNSPECIFIED;
  std::string id;
  bool operator==(const RecipientRef&) const = default;
};

enum class Directive { kPermit, kDeny };
enum class ConsentState { kActive, kRevoked, kExpired };

// Bit i set: enum value i present.
inline uint32_t Bit(int value) { return 1u << value; }

// One consent as the rules see it.
struct ConsentFacts {
  std::string id;
  RecipientRef recipient;
  uint32_t purposes = 0;    // Bits of Purpose values.
  uint32_t categories = 0;  // Bits of DataCategory values.
  Directive directive = Directive::kPermit;
  absl::Time valid_from = absl::InfinitePast();
  absl::Time valid_until = absl::InfiniteFuture();  // InfiniteFuture: no end.
  ConsentState state = ConsentState::kActive;
  absl::Time revoked_at = absl::InfinitePast();
  absl::Time created_at = absl::InfinitePast();

  bool InEffect(absl::Time now) const {
    return state == ConsentState::kActive && valid_from <= now && now < valid_until;
  }
  bool HasPurpose(int p) const { return (purposes & Bit(p)) != 0; }
  bool HasCategory(int c) const { return (categories & Bit(c)) != 0; }
};

// A break-glass grant as the rules see it.
struct GrantFacts {
  std::string id;
  std::string clinician_id;
  uint32_t categories = 0;
  absl::Time granted_at = absl::InfinitePast();
  absl::Time expires_at = absl::InfinitePast();
  bool ended = false;

  bool Live(absl::Time now) const { return !ended && granted_at <= now && now < expires_at; }
};

// Who would receive the data: every identity it answers to (its PERSON subject, ROLEs, TEAMs,
// ORGANIZATION), and the subject an emergency access can belong to (empty: none).
// `unknown_memberships` holds the recipient kinds (bit 1 << kind) of which nothing shows the
// accessor is outside: every in-effect "do not share" directive naming one of those kinds, for
// the category and purpose, binds it (an explicit denial beats any permit, also one naming it):
//   - a person named by subject only: ROLE, TEAM and ORGANIZATION;
//   - the caller asking for itself: TEAM (its token names its roles, never its teams);
//   - a role or a team as a whole: PERSON, ROLE and TEAM (any member may be the person, or in
//     the role or team, a directive names);
//   - an organisation as a whole: PERSON.
struct Accessor {
  std::vector<RecipientRef> identities;
  std::string person_subject;
  uint32_t unknown_memberships = 0;

  void SetMembershipsUnknown(std::initializer_list<RecipientKind> kinds) {
    for (RecipientKind kind : kinds) unknown_memberships |= 1u << kind;
  }
  bool MembershipUnknown(RecipientKind kind) const {
    return (unknown_memberships & (1u << kind)) != 0;
  }
  bool Matches(const RecipientRef& recipient) const {
    for (const RecipientRef& identity : identities) {
      if (identity == recipient) return true;
    }
    return false;
  }
};

struct AccessQuery {
  DataCategory category = v1::DATA_CATEGORY_UNSPECIFIED;
  Purpose purpose = v1::PURPOSE_UNSPECIFIED;
};

struct AccessDecision {
  bool permit = false;
  AccessReason reason = v1::ACCESS_REASON_UNSPECIFIED;
  std::string consent_id;
  std::string emergency_access_id;
  absl::Time permitted_until = absl::InfiniteFuture();  // For a PERMIT; InfiniteFuture: no end.
  absl::Time not_before = absl::InfinitePast();         // For CONSENT_NOT_YET_VALID.
  bool redisclosure_notice_required = false;
  std::string message;  // One sentence, no personal data.
};

// Decides one request over all of a participant's consents and the accessor's grants (see
// CheckAccess in consent.proto for the rules and their order).
AccessDecision DecideAccess(const std::vector<ConsentFacts>& consents,
                            const std::vector<GrantFacts>& grants, const Accessor& accessor,
                            const AccessQuery& query, absl::Time now);

inline constexpr char kGateInformationSharing[] = "consent_information_sharing";
inline constexpr char kGatePeerInvolvement[] = "agreement_to_peer_involvement";
inline constexpr char kGateAlignedCommunication[] = "consent_aligned_communication";

// The known gate names, in their documented order.
const std::vector<std::string>& KnownGates();

struct GateOutcome {
  std::string gate;
  bool held = false;
  GateReason reason = v1::GATE_REASON_UNSPECIFIED;
  std::string message;
  std::vector<std::string> consent_ids;
  absl::Time held_until = absl::InfiniteFuture();  // When held; InfiniteFuture: no end.
  absl::Time holds_from = absl::InfinitePast();    // For CONSENT_NOT_YET_VALID.
};

// Evaluates one known gate (an unknown name is a caller error checked before).
GateOutcome EvaluateGate(const std::string& gate, const std::vector<ConsentFacts>& consents,
                         absl::Time now);

// True when `consent` is an agreement to peer involvement: PERMIT, purposes include PEER_SUPPORT,
// recipient the role peer_supporter or a PERSON.
bool IsPeerAgreement(const ConsentFacts& consent);

}  // namespace peerpath::consent
