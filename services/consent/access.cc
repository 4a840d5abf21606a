#include "services/consent/access.h"

#include <algorithm>
#include <functional>

#include "absl/strings/str_cat.h"

namespace peerpath::consent {
namespace {

constexpr int kPart2 = v1::DATA_CATEGORY_SUBSTANCE_USE_TREATMENT_RECORDS;

std::string CategoryWords(int category) {
  switch (category) {
    case v1::DATA_CATEGORY_CHECK_IN_SUMMARIES:
      return "check-in summaries";
    case v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS:
      return "concerns and escalations";
    case v1::DATA_CATEGORY_APPOINTMENT_STATUS:
      return "appointment status";
    case v1::DATA_CATEGORY_RECOVERY_GOALS_AND_WARNING_SIGNS:
      return "recovery goals and warning signs";
    case v1::DATA_CATEGORY_CONTACT_DETAILS:
      return "contact details";
    case kPart2:
      return "substance-use treatment records";
    default:
      return "this data category";
  }
}

std::string Day(absl::Time t) { return absl::FormatTime("%Y-%m-%d", t, absl::UTCTimeZone()); }

bool IsPeerRole(const RecipientRef& recipient) {
  return recipient.kind == v1::RECIPIENT_KIND_ROLE && recipient.id == "peer_supporter";
}

bool HasCoordinationPurpose(const ConsentFacts& c) {
  return c.HasPurpose(v1::PURPOSE_CARE_COORDINATION) || c.HasPurpose(v1::PURPOSE_TREATMENT);
}

bool Ended(const ConsentFacts& c, absl::Time now) {
  return c.state == ConsentState::kExpired ||
         (c.state == ConsentState::kActive && c.valid_until <= now);
}

// Why nothing qualifying is in effect, among consents for which `qualifies` holds (ignoring their
// status and period): starts later, revoked, ended, or none at all.
void ExplainAbsence(const std::vector<ConsentFacts>& consents,
                    const std::function<bool(const ConsentFacts&)>& qualifies, absl::Time now,
                    GateOutcome& out) {
  const ConsentFacts* later = nullptr;
  const ConsentFacts* revoked = nullptr;
  const ConsentFacts* ended = nullptr;
  for (const ConsentFacts& c : consents) {
    if (!qualifies(c)) continue;
    if (c.state == ConsentState::kActive && c.valid_from > now) {
      if (later == nullptr || c.valid_from < later->valid_from) later = &c;
    } else if (c.state == ConsentState::kRevoked) {
      if (revoked == nullptr || c.revoked_at > revoked->revoked_at) revoked = &c;
    } else if (Ended(c, now)) {
      if (ended == nullptr || c.valid_until > ended->valid_until) ended = &c;
    }
  }
  if (later != nullptr) {
    out.reason = v1::GATE_REASON_CONSENT_NOT_YET_VALID;
    out.holds_from = later->valid_from;
    out.consent_ids = {later->id};
    out.message = absl::StrCat("the qualifying consent starts on ", Day(later->valid_from));
  } else if (revoked != nullptr) {
    out.reason = v1::GATE_REASON_CONSENT_REVOKED;
    out.consent_ids = {revoked->id};
    out.message = "the qualifying consent was revoked";
  } else if (ended != nullptr) {
    out.reason = v1::GATE_REASON_CONSENT_EXPIRED;
    out.consent_ids = {ended->id};
    out.message = "the qualifying consent has ended";
  } else {
    out.reason = v1::GATE_REASON_NO_CONSENT;
    out.message = "no qualifying consent was recorded";
  }
}

// True when an in-effect DENY consent to `recipient` covers (purpose, category); its id in `by`.
bool DeniedTo(const std::vector<ConsentFacts>& consents, const RecipientRef& recipient, int purpose,
              int category, absl::Time now, std::vector<std::string>* by) {
  bool denied = false;
  for (const ConsentFacts& d : consents) {
    if (d.directive != Directive::kDeny || !d.InEffect(now) || !(d.recipient == recipient) ||
        !d.HasPurpose(purpose) || !d.HasCategory(category)) {
      continue;
    }
    denied = true;
    if (by != nullptr && std::find(by->begin(), by->end(), d.id) == by->end()) by->push_back(d.id);
  }
  return denied;
}

void MarkHeld(GateOutcome& out, const std::vector<const ConsentFacts*>& holders,
              const std::string& message) {
  out.held = true;
  out.reason = v1::GATE_REASON_HELD;
  out.message = message;
  out.held_until = absl::InfinitePast();
  for (const ConsentFacts* c : holders) {
    out.consent_ids.push_back(c->id);
    out.held_until = std::max(out.held_until, c->valid_until);
  }
}

GateOutcome InformationSharing(const std::vector<ConsentFacts>& consents, absl::Time now) {
  GateOutcome out;
  out.gate = kGateInformationSharing;
  auto qualifies = [](const ConsentFacts& c) {
    return c.directive == Directive::kPermit && HasCoordinationPurpose(c);
  };
  std::vector<const ConsentFacts*> holders;
  std::vector<std::string> deny_ids;
  bool defeated = false;
  for (const ConsentFacts& c : consents) {
    if (!qualifies(c) || !c.InEffect(now)) continue;
    bool effective = false;
    for (int p : {v1::PURPOSE_CARE_COORDINATION, v1::PURPOSE_TREATMENT}) {
      if (!c.HasPurpose(p)) continue;
      for (int cat = 1; cat <= kPart2; ++cat) {
        if (c.HasCategory(cat) && !DeniedTo(consents, c.recipient, p, cat, now, &deny_ids)) {
          effective = true;
        }
      }
    }
    if (effective) {
      holders.push_back(&c);
    } else {
      defeated = true;
    }
  }
  if (!holders.empty()) {
    MarkHeld(out, holders, "a consent for care coordination or treatment is in effect");
  } else if (defeated) {
    out.reason = v1::GATE_REASON_DENIED_BY_DIRECTIVE;
    out.consent_ids = deny_ids;
    out.message = "a do-not-share directive defeats every information-sharing consent";
  } else {
    ExplainAbsence(consents, qualifies, now, out);
    if (out.reason == v1::GATE_REASON_NO_CONSENT) {
      out.message = "no consent for care coordination or treatment is in effect";
    }
  }
  return out;
}

GateOutcome PeerInvolvement(const std::vector<ConsentFacts>& consents, absl::Time now) {
  GateOutcome out;
  out.gate = kGatePeerInvolvement;
  std::vector<const ConsentFacts*> holders;
  std::vector<std::string> deny_ids;
  bool defeated = false;
  for (const ConsentFacts& c : consents) {
    if (!IsPeerAgreement(c) || !c.InEffect(now)) continue;
    bool denied = false;
    for (const ConsentFacts& d : consents) {
      if (d.directive == Directive::kDeny && d.InEffect(now) &&
          d.HasPurpose(v1::PURPOSE_PEER_SUPPORT) &&
          (d.recipient == c.recipient || IsPeerRole(d.recipient))) {
        denied = true;
        if (std::find(deny_ids.begin(), deny_ids.end(), d.id) == deny_ids.end()) {
          deny_ids.push_back(d.id);
        }
      }
    }
    if (denied) {
      defeated = true;
    } else {
      holders.push_back(&c);
    }
  }
  if (!holders.empty()) {
    MarkHeld(out, holders, "the participant's agreement to peer involvement is in effect");
  } else if (defeated) {
    out.reason = v1::GATE_REASON_DENIED_BY_DIRECTIVE;
    out.consent_ids = deny_ids;
    out.message = "a do-not-share directive for peer support defeats the agreement";
  } else {
    ExplainAbsence(consents, IsPeerAgreement, now, out);
    if (out.reason == v1::GATE_REASON_NO_CONSENT) {
      out.message = "no agreement to peer involvement is in effect";
    }
  }
  return out;
}

GateOutcome AlignedCommunication(const std::vector<ConsentFacts>& consents, absl::Time now) {
  GateOutcome out;
  out.gate = kGateAlignedCommunication;
  constexpr int kNeeded[] = {v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS,
                             v1::DATA_CATEGORY_APPOINTMENT_STATUS};
  auto qualifies = [](const ConsentFacts& c) {
    return c.directive == Directive::kPermit && HasCoordinationPurpose(c) &&
           !IsPeerRole(c.recipient) &&
           (c.HasCategory(v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS) ||
            c.HasCategory(v1::DATA_CATEGORY_APPOINTMENT_STATUS));
  };
  std::vector<RecipientRef> recipients;
  for (const ConsentFacts& c : consents) {
    if (qualifies(c) && c.InEffect(now) &&
        std::find(recipients.begin(), recipients.end(), c.recipient) == recipients.end()) {
      recipients.push_back(c.recipient);
    }
  }
  bool partial = false;
  bool partly_denied = false;
  bool defeated = false;
  std::vector<std::string> deny_ids;
  absl::Time best_until = absl::InfinitePast();
  std::vector<const ConsentFacts*> best_holders;
  for (const RecipientRef& r : recipients) {
    std::vector<const ConsentFacts*> holders;
    absl::Time until = absl::InfiniteFuture();
    int covered = 0;
    bool denied_one = false;  // A category this recipient's consents cover only a directive blocks.
    for (int cat : kNeeded) {
      absl::Time cat_until = absl::InfinitePast();
      bool ok = false;
      bool cat_defeated = false;
      for (const ConsentFacts& c : consents) {
        if (!qualifies(c) || !c.InEffect(now) || !(c.recipient == r) || !c.HasCategory(cat)) {
          continue;
        }
        bool undenied = false;
        for (int p : {v1::PURPOSE_CARE_COORDINATION, v1::PURPOSE_TREATMENT}) {
          if (c.HasPurpose(p) && !DeniedTo(consents, r, p, cat, now, &deny_ids)) undenied = true;
        }
        if (undenied) {
          ok = true;
          cat_until = std::max(cat_until, c.valid_until);
          if (std::find(holders.begin(), holders.end(), &c) == holders.end()) {
            holders.push_back(&c);
          }
        } else {
          defeated = true;
          cat_defeated = true;
        }
      }
      if (ok) {
        ++covered;
        until = std::min(until, cat_until);
      } else if (cat_defeated) {
        denied_one = true;
      }
    }
    if (covered == 2) {
      if (best_holders.empty() || until > best_until) {
        best_holders = holders;
        best_until = until;
      }
    } else if (covered == 1) {
      partial = true;
      partly_denied = partly_denied || denied_one;
    }
  }
  if (!best_holders.empty()) {
    MarkHeld(out, best_holders,
             "concerns and appointment status may be shared with the receiving team");
    out.held_until = best_until;
  } else if (partly_denied) {
    // The consents would cover both, but a directive blocks one of them.
    out.reason = v1::GATE_REASON_DENIED_BY_DIRECTIVE;
    out.consent_ids = deny_ids;
    out.message =
        "a do-not-share directive blocks one of concerns and appointment status for the "
        "receiving team";
  } else if (partial) {
    out.reason = v1::GATE_REASON_INCOMPLETE;
    out.message = "in-effect consents cover only one of concerns and appointment status";
  } else if (defeated) {
    out.reason = v1::GATE_REASON_DENIED_BY_DIRECTIVE;
    out.consent_ids = deny_ids;
    out.message = "a do-not-share directive defeats the communication consent";
  } else {
    ExplainAbsence(consents, qualifies, now, out);
    if (out.reason == v1::GATE_REASON_NO_CONSENT) {
      out.message = "no consent lets the peer and the receiving team talk about the transition";
    }
  }
  return out;
}

}  // namespace

bool IsPeerAgreement(const ConsentFacts& c) {
  return c.directive == Directive::kPermit && c.HasPurpose(v1::PURPOSE_PEER_SUPPORT) &&
         (IsPeerRole(c.recipient) || c.recipient.kind == v1::RECIPIENT_KIND_PERSON);
}

AccessDecision DecideAccess(const std::vector<ConsentFacts>& consents,
                            const std::vector<GrantFacts>& grants, const Accessor& accessor,
                            const AccessQuery& query, absl::Time now) {
  const int category = query.category;
  const int purpose = query.purpose;
  AccessDecision out;
  auto covers = [&](const ConsentFacts& c) {
    return c.HasPurpose(purpose) && c.HasCategory(category) && accessor.Matches(c.recipient);
  };
  // 1. An explicit denial beats everything; one naming someone the accessor may include, or a
  // group it may belong to, binds it too.
  for (const ConsentFacts& c : consents) {
    if (c.directive != Directive::kDeny || !c.InEffect(now)) continue;
    const bool unknown_member = accessor.MembershipUnknown(c.recipient.kind) &&
                                c.HasPurpose(purpose) && c.HasCategory(category);
    if (covers(c) || unknown_member) {
      out.reason = v1::ACCESS_REASON_DENIED_BY_DIRECTIVE;
      out.consent_id = c.id;
      out.message = absl::StrCat(
          "denied: the participant's directive of ", Day(c.valid_from), " forbids sharing ",
          CategoryWords(category), " with ",
          covers(c) ? "this recipient"
          : c.recipient.kind == v1::RECIPIENT_KIND_PERSON
              ? "a named person, who may be among this recipient's members (share with named "
                "people instead)"
              : "a role, team or organisation, and nothing shows the recipient is outside it "
                "(name a person with their roles and teams; a role or team as a whole may "
                "include its members)");
      return out;
    }
  }
  // 2. The covering permit that stays in effect longest.
  const ConsentFacts* permit = nullptr;
  for (const ConsentFacts& c : consents) {
    if (c.directive == Directive::kPermit && c.InEffect(now) && covers(c) &&
        (permit == nullptr || c.valid_until > permit->valid_until)) {
      permit = &c;
    }
  }
  if (permit != nullptr) {
    out.permit = true;
    out.reason = v1::ACCESS_REASON_PERMITTED_BY_CONSENT;
    out.consent_id = permit->id;
    out.permitted_until = permit->valid_until;
    out.redisclosure_notice_required = category == kPart2;
    out.message = absl::StrCat("permitted: the participant's consent covers ",
                               CategoryWords(category), " for this purpose");
    return out;
  }
  // 3. A live emergency access of this person, for treatment, never for Part 2 records.
  if (purpose == v1::PURPOSE_TREATMENT && category != kPart2 && !accessor.person_subject.empty()) {
    const GrantFacts* grant = nullptr;
    for (const GrantFacts& g : grants) {
      if (g.clinician_id == accessor.person_subject && g.Live(now) &&
          (g.categories & Bit(category)) != 0 &&
          (grant == nullptr || g.expires_at > grant->expires_at)) {
        grant = &g;
      }
    }
    if (grant != nullptr) {
      out.permit = true;
      out.reason = v1::ACCESS_REASON_PERMITTED_BY_EMERGENCY_ACCESS;
      out.emergency_access_id = grant->id;
      out.permitted_until = grant->expires_at;
      out.message = "permitted: emergency access (break-glass) for an open safety concern";
      return out;
    }
  }
  // 4. Deny by default, with the most specific reason.
  if (category == kPart2) {
    for (const ConsentFacts& c : consents) {
      if (c.directive == Directive::kPermit && c.InEffect(now) && c.HasPurpose(purpose) &&
          accessor.Matches(c.recipient)) {
        out.reason = v1::ACCESS_REASON_PART2_CATEGORY_NOT_NAMED;
        out.consent_id = c.id;
        out.message =
            "denied: substance-use treatment records need a consent that names that category";
        return out;
      }
    }
  }
  GateOutcome why;
  ExplainAbsence(
      consents,
      [&](const ConsentFacts& c) { return c.directive == Directive::kPermit && covers(c); }, now,
      why);
  out.consent_id = why.consent_ids.empty() ? "" : why.consent_ids.front();
  switch (why.reason) {
    case v1::GATE_REASON_CONSENT_NOT_YET_VALID:
      out.reason = v1::ACCESS_REASON_CONSENT_NOT_YET_VALID;
      out.not_before = why.holds_from;
      out.message = absl::StrCat("denied: the consent takes effect on ", Day(why.holds_from));
      break;
    case v1::GATE_REASON_CONSENT_REVOKED:
      out.reason = v1::ACCESS_REASON_CONSENT_REVOKED;
      out.message = "denied: the consent that covered this was revoked";
      break;
    case v1::GATE_REASON_CONSENT_EXPIRED:
      out.reason = v1::ACCESS_REASON_CONSENT_EXPIRED;
      out.message = "denied: the consent that covered this has ended";
      break;
    default:
      out.reason = v1::ACCESS_REASON_NO_CONSENT;
      out.message = absl::StrCat("denied: no consent covers sharing ", CategoryWords(category),
                                 " with this recipient for this purpose");
      break;
  }
  return out;
}

const std::vector<std::string>& KnownGates() {
  static const auto* const gates = new std::vector<std::string>{
      kGateInformationSharing, kGatePeerInvolvement, kGateAlignedCommunication};
  return *gates;
}

GateOutcome EvaluateGate(const std::string& gate, const std::vector<ConsentFacts>& consents,
                         absl::Time now) {
  if (gate == kGateInformationSharing) return InformationSharing(consents, now);
  if (gate == kGatePeerInvolvement) return PeerInvolvement(consents, now);
  if (gate == kGateAlignedCommunication) return AlignedCommunication(consents, now);
  GateOutcome out;
  out.gate = gate;
  out.reason = v1::GATE_REASON_NO_CONSENT;
  out.message = "unknown gate";
  return out;
}

}  // namespace peerpath::consent
