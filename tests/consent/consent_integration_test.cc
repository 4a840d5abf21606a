// The consent service as clients see it: the real peerpath-consent binary over gRPC against a
// real PostgreSQL database.
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/time_util.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "peerpath/consent/v1/consent.grpc.pb.h"
#include "peerpath/consent/v1/events.pb.h"
#include "peerpath/escalation/v1/escalation.grpc.pb.h"
#include "peerpath/escalation/v1/events.pb.h"
#include "peerpath/matching/v1/events.pb.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"
#include "tests/support/test_tokens.h"

namespace peerpath::testing {
namespace {

using namespace std::chrono_literals;
namespace v1 = peerpath::consent::v1;

constexpr char kAgency[] = "agency-a";

// Stands in for the escalation service's event log (the escalation service is built at the same
// time as this one): ListEvents over real gRPC, positions from 1.
class FakeEscalationLog final : public peerpath::escalation::v1::EscalationService::Service {
 public:
  FakeEscalationLog() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~FakeEscalationLog() override { server_->Shutdown(); }
  int port() const { return port_; }

  void Add(const std::string& agency, const google::protobuf::Message& payload) {
    std::lock_guard<std::mutex> lock(mu_);
    peerpath::common::v1::Event event;
    event.set_position(static_cast<int64_t>(events_.size()) + 1);
    event.set_agency_id(agency);
    event.set_type(payload.GetDescriptor()->full_name());
    event.mutable_payload()->PackFrom(payload);
    events_.push_back(event);
  }

  grpc::Status ListEvents(grpc::ServerContext*,
                          const peerpath::escalation::v1::ListEventsRequest* request,
                          peerpath::escalation::v1::ListEventsResponse* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& event : events_) {
      if (event.position() > request->after_position()) *response->add_events() = event;
    }
    response->set_head_position(static_cast<int64_t>(events_.size()));
    return grpc::Status::OK;
  }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::mutex mu_;
  std::vector<peerpath::common::v1::Event> events_;
};

class ConsentServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    StartConsent({});
  }

  void StartConsent(std::vector<std::string> flags) {
    server_.reset();
    if (std::none_of(flags.begin(), flags.end(), [](const std::string& f) {
          return f.starts_with("--consent_expiry_sweep_interval=");
        })) {
      flags.push_back("--consent_expiry_sweep_interval=200ms");
    }
    server_ = std::make_unique<ServiceProcess>("consent", db_->UrlFor("consent"), flags);
    ASSERT_TRUE(server_->WaitListening()) << server_->Log();
    ASSERT_TRUE(server_->WaitHealth(true)) << server_->Log();
    stub_ = v1::ConsentService::NewStub(server_->Channel());
  }

  // Starts a producer's real binary (sharing this database) and returns the flags that make the
  // consent service consume its log.
  std::vector<std::string> StartProducer(const std::string& service) {
    producer_ = std::make_unique<ServiceProcess>(service, db_->UrlFor(service));
    EXPECT_TRUE(producer_->WaitHealth(true)) << producer_->Log();
    token_file_ =
        std::make_unique<TokenFile>(kAgency, std::vector<std::string>{"service"}, "svc-consent");
    return {absl::StrCat("--", service, "_address=127.0.0.1:", producer_->grpc_port()),
            token_file_->Flag()};
  }

  // Restarts the consent service consuming `escalation`'s log, as a service identity.
  void StartConsentWith(const FakeEscalationLog& escalation) {
    token_file_ =
        std::make_unique<TokenFile>(kAgency, std::vector<std::string>{"service"}, "svc-consent");
    StartConsent(
        {absl::StrCat("--escalation_address=127.0.0.1:", escalation.port()), token_file_->Flag()});
  }

  // Commits an event into a producer's outbox the way its own transactions do.
  void Emit(const std::string& schema, const google::protobuf::Message& payload,
            const std::string& aggregate) {
    db_->WriteOutboxEvent(schema, kAgency, payload, aggregate);
  }

  static std::unique_ptr<grpc::ClientContext> As(const std::vector<std::string>& roles,
                                                 const std::string& subject = "staff-1",
                                                 const std::string& agency = kAgency) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + 10s);
    context->AddMetadata("authorization", "Bearer " + TokenFor(agency, roles, subject));
    return context;
  }

  static v1::Consent Consent(const std::string& participant, v1::RecipientKind kind,
                             const std::string& recipient, std::vector<v1::Purpose> purposes,
                             std::vector<v1::DataCategory> categories,
                             v1::ConsentDirective directive = v1::CONSENT_DIRECTIVE_PERMIT) {
    v1::Consent c;
    c.set_participant_id(participant);
    c.set_given_by(v1::CONSENT_GIVER_PARTICIPANT);
    c.mutable_recipient()->set_kind(kind);
    c.mutable_recipient()->set_id(recipient);
    for (auto p : purposes) c.add_purposes(p);
    for (auto k : categories) c.add_data_categories(k);
    c.set_directive(directive);
    c.set_obtained_method(v1::OBTAINED_METHOD_WRITTEN);
    c.set_form_reference("form-123");
    return c;
  }

  grpc::Status Record(const v1::Consent& consent, v1::RecordConsentResponse* response,
                      const std::vector<std::string>& roles = {"case_manager"},
                      const std::string& subject = "staff-1", const std::string& key = "") {
    v1::RecordConsentRequest request;
    *request.mutable_consent() = consent;
    request.set_idempotency_key(key.empty() ? absl::StrCat("k-", ++keys_) : key);
    return stub_->RecordConsent(As(roles, subject).get(), request, response);
  }

  std::string RecordOk(const v1::Consent& consent) {
    v1::RecordConsentResponse response;
    grpc::Status status = Record(consent, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.consent().consent_id();
  }

  v1::CheckAccessResponse Check(const std::string& participant, v1::Actor actor,
                                v1::DataCategory category, v1::Purpose purpose) {
    v1::CheckAccessRequest request;
    request.set_participant_id(participant);
    *request.mutable_actor() = std::move(actor);
    request.set_data_category(category);
    request.set_purpose(purpose);
    v1::CheckAccessResponse response;
    grpc::Status status =
        stub_->CheckAccess(As({"service"}, "svc-checkin").get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  static v1::Actor Person(const std::string& subject, std::vector<std::string> roles) {
    v1::Actor a;
    a.set_subject(subject);
    for (auto& r : roles) a.add_roles(r);
    return a;
  }

  // A share of one category of `participant`'s data with `to`, for treatment.
  static v1::ShareInformationRequest ShareForTreatment(const std::string& participant, v1::Actor to,
                                                       v1::DataCategory category,
                                                       const std::string& key) {
    v1::ShareInformationRequest share;
    share.set_participant_id(participant);
    *share.mutable_to_person() = std::move(to);
    share.set_purpose(v1::PURPOSE_TREATMENT);
    share.add_data_categories(category);
    share.set_idempotency_key(key);
    return share;
  }

  static std::set<std::string> ViolatedFields(const grpc::Status& status) {
    google::rpc::Status details;
    std::set<std::string> fields;
    if (!details.ParseFromString(status.error_details())) return fields;
    for (const auto& any : details.details()) {
      google::rpc::BadRequest bad;
      if (any.UnpackTo(&bad)) {
        for (const auto& v : bad.field_violations()) fields.insert(v.field());
      }
    }
    return fields;
  }

  int Count(const std::string& sql) { return db_->AdminQuery(sql)[0][0].as<int>(); }

  int Events(const std::string& type, const std::string& aggregate = "") {
    return Count(absl::StrCat(
        "SELECT count(*) FROM consent.outbox WHERE event_type = "
        "'peerpath.consent.v1.",
        type, "'", aggregate.empty() ? "" : " AND aggregate_id = '" + aggregate + "'"));
  }

  void Match(const std::string& supporter, const std::string& participant) {
    db_->AdminQuery(
        absl::StrCat("INSERT INTO consent.supporter_matches (agency_id, match_id, supporter_id, "
                     "supporter_subject, participant_id, started_at) VALUES ('",
                     kAgency, "', gen_random_uuid(), gen_random_uuid(), '", supporter, "', '",
                     participant, "', now())"));
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<TokenFile> token_file_;  // The consent service's, when it consumes a log.
  std::unique_ptr<ServiceProcess> producer_;
  std::unique_ptr<ServiceProcess> server_;
  std::unique_ptr<v1::ConsentService::Stub> stub_;
  int keys_ = 0;
};

TEST_F(ConsentServiceTest, TimesTheDatabaseCannotHoldAreNamedNotFailedInside) {
  v1::Consent c = Consent("p-times", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                          {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  c.mutable_valid_from()->set_seconds(-10000000000000);
  c.mutable_valid_until()->set_seconds(absl::ToUnixSeconds(absl::Now()) + 3600);
  c.mutable_valid_until()->set_nanos(-1);
  v1::RecordConsentResponse recorded;
  grpc::Status status = Record(c, &recorded, {"case_manager"}, "staff-1", "times-1");
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_EQ(ViolatedFields(status),
            (std::set<std::string>{"consent.valid_from", "consent.valid_until"}));
  c.mutable_valid_from()->set_seconds(absl::ToUnixSeconds(absl::Now()));
  c.mutable_valid_until()->set_seconds(300000000000);  // Year 11,476.
  c.mutable_valid_until()->set_nanos(0);
  status = Record(c, &recorded, {"case_manager"}, "staff-1", "times-2");
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_EQ(ViolatedFields(status), (std::set<std::string>{"consent.valid_until"}));
  EXPECT_EQ(Count("SELECT count(*) FROM consent.consents"), 0);

  v1::ListDisclosuresRequest list;
  list.set_participant_id("p-times");
  list.mutable_period()->mutable_start_time()->set_seconds(10000000000000);
  v1::ListDisclosuresResponse listed;
  status = stub_->ListDisclosures(As({"program_admin"}).get(), list, &listed);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_EQ(ViolatedFields(status), (std::set<std::string>{"period.start_time"}));

  v1::RequestEmergencyAccessRequest glass;
  glass.set_participant_id("p-times");
  glass.set_concern_id("11111111-1111-4111-8111-111111111111");
  glass.set_reason("participant unreachable after a crisis call");
  glass.add_data_categories(v1::DATA_CATEGORY_CONTACT_DETAILS);
  glass.set_idempotency_key("times-3");
  glass.mutable_duration()->set_nanos(500);  // Shorter than the microseconds stored.
  v1::RequestEmergencyAccessResponse granted;
  status = stub_->RequestEmergencyAccess(As({"clinician"}, "dr-1").get(), glass, &granted);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_EQ(ViolatedFields(status), (std::set<std::string>{"duration"}));
}

TEST_F(ConsentServiceTest, RecordConsentNamesEveryBadField) {
  v1::Consent bad;
  bad.add_purposes(v1::PURPOSE_TREATMENT);
  bad.add_purposes(v1::PURPOSE_TREATMENT);
  bad.add_data_categories(static_cast<v1::DataCategory>(77));
  bad.set_obtained_method(v1::OBTAINED_METHOD_VERBAL_WITNESSED);
  *bad.mutable_valid_from() = ToProtoTimestamp(absl::Now() + absl::Hours(2));
  *bad.mutable_valid_until() = ToProtoTimestamp(absl::Now() + absl::Hours(1));
  v1::RecordConsentResponse response;
  grpc::Status status = Record(bad, &response, {"case_manager"}, "staff-1", "bad key!");
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  const std::set<std::string> fields = ViolatedFields(status);
  for (const char* field :
       {"consent.participant_id", "consent.given_by", "consent.recipient", "consent.purposes[1]",
        "consent.data_categories[0]", "consent.directive", "consent.valid_until",
        "consent.witnessed_by", "idempotency_key"}) {
    EXPECT_TRUE(fields.contains(field)) << field;
  }
  EXPECT_EQ(Count("SELECT count(*) FROM consent.consents"), 0);
}

TEST_F(ConsentServiceTest, PeerSupporterRecordsOnlyAgreementToPeerInvolvementInActiveMatches) {
  const v1::Consent agreement =
      Consent("p-1", v1::RECIPIENT_KIND_PERSON, "peer-7", {v1::PURPOSE_PEER_SUPPORT},
              {v1::DATA_CATEGORY_CHECK_IN_SUMMARIES});
  v1::RecordConsentResponse response;
  // Not matched yet: refused and audited.
  EXPECT_EQ(Record(agreement, &response, {"peer_supporter"}, "peer-7").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  Match("peer-7", "p-1");
  grpc::Status status = Record(agreement, &response, {"peer_supporter"}, "peer-7");
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.consent().status(), v1::CONSENT_STATUS_ACTIVE);

  v1::Consent broader = agreement;
  broader.add_purposes(v1::PURPOSE_TREATMENT);
  EXPECT_EQ(Record(broader, &response, {"peer_supporter"}, "peer-7").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::Consent for_someone_else = agreement;
  for_someone_else.mutable_recipient()->set_id("peer-8");
  EXPECT_EQ(Record(for_someone_else, &response, {"peer_supporter"}, "peer-7").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::Consent deny = agreement;
  deny.set_directive(v1::CONSENT_DIRECTIVE_DENY);
  EXPECT_EQ(Record(deny, &response, {"peer_supporter"}, "peer-7").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.consents"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.audit_log WHERE decision = 'denied' AND action = "
                  "'peerpath.consent.v1.ConsentService.RecordConsent'"),
            4);

  // Outside their matches a peer supporter cannot read consents either.
  v1::ListConsentsRequest list;
  list.set_participant_id("p-2");
  v1::ListConsentsResponse listed;
  EXPECT_EQ(stub_->ListConsents(As({"peer_supporter"}, "peer-7").get(), list, &listed).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  list.set_participant_id("p-1");
  ASSERT_TRUE(stub_->ListConsents(As({"peer_supporter"}, "peer-7").get(), list, &listed).ok());
  EXPECT_EQ(listed.consents_size(), 1);

  // They revoke only what they could have recorded: not a broader consent naming them, which
  // also lets them share for treatment, nor another peer's agreement.
  const std::string broader_id = RecordOk(broader);
  const std::string other_peer_id = RecordOk(for_someone_else);
  auto revoke = [&](const std::string& id) {
    v1::RevokeConsentRequest r;
    r.set_consent_id(id);
    r.set_reason("participant asked their peer supporter");
    v1::RevokeConsentResponse revoked;
    return stub_->RevokeConsent(As({"peer_supporter"}, "peer-7").get(), r, &revoked);
  };
  const grpc::Status too_broad = revoke(broader_id);
  EXPECT_EQ(too_broad.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(too_broad.error_message().find("PEER_SUPPORT"), std::string::npos);
  EXPECT_EQ(revoke(other_peer_id).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.consents WHERE status = 'active'"), 3);
  ASSERT_TRUE(revoke(response.consent().consent_id()).ok());
  EXPECT_EQ(Count("SELECT count(*) FROM consent.consents WHERE status = 'active'"), 2);
}

// role × purpose × category × period × directive.
TEST_F(ConsentServiceTest, PermitDenyTable) {
  const absl::Time now = absl::Now();
  // p-table: clinicians may see appointment status and concerns for care coordination; the
  // county may see check-in summaries for treatment until yesterday (ended) and from tomorrow
  // (not yet valid); a directive forbids contact details to case managers.
  RecordOk(
      Consent("p-table", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_CARE_COORDINATION},
              {v1::DATA_CATEGORY_APPOINTMENT_STATUS, v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS}));
  v1::Consent later = Consent("p-table", v1::RECIPIENT_KIND_ROLE, "supervisor",
                              {v1::PURPOSE_TREATMENT}, {v1::DATA_CATEGORY_CHECK_IN_SUMMARIES});
  *later.mutable_valid_from() = ToProtoTimestamp(now + absl::Hours(24));
  const std::string later_id = RecordOk(later);
  v1::Consent ended = Consent("p-table", v1::RECIPIENT_KIND_ROLE, "supervisor",
                              {v1::PURPOSE_EVALUATION}, {v1::DATA_CATEGORY_CHECK_IN_SUMMARIES});
  *ended.mutable_valid_from() = ToProtoTimestamp(now - absl::Hours(48));
  *ended.mutable_valid_until() = ToProtoTimestamp(now + absl::Seconds(1));
  const std::string ended_id = RecordOk(ended);
  RecordOk(Consent("p-table", v1::RECIPIENT_KIND_ROLE, "case_manager",
                   {v1::PURPOSE_CARE_COORDINATION},
                   {v1::DATA_CATEGORY_CONTACT_DETAILS, v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  const std::string deny_id = RecordOk(
      Consent("p-table", v1::RECIPIENT_KIND_PERSON, "cm-2", {v1::PURPOSE_CARE_COORDINATION},
              {v1::DATA_CATEGORY_CONTACT_DETAILS}, v1::CONSENT_DIRECTIVE_DENY));
  std::this_thread::sleep_for(1500ms);  // `ended` is now past its end.

  struct Row {
    std::string subject;
    std::string role;
    v1::Purpose purpose;
    v1::DataCategory category;
    v1::AccessDecision decision;
    v1::AccessReason reason;
    std::string consent_id;  // Checked when set.
  };
  const std::vector<Row> table = {
      {"c-1", "clinician", v1::PURPOSE_CARE_COORDINATION, v1::DATA_CATEGORY_APPOINTMENT_STATUS,
       v1::ACCESS_DECISION_PERMIT, v1::ACCESS_REASON_PERMITTED_BY_CONSENT, ""},
      {"c-1", "clinician", v1::PURPOSE_TREATMENT, v1::DATA_CATEGORY_APPOINTMENT_STATUS,
       v1::ACCESS_DECISION_DENY, v1::ACCESS_REASON_NO_CONSENT, ""},
      {"c-1", "clinician", v1::PURPOSE_CARE_COORDINATION, v1::DATA_CATEGORY_CONTACT_DETAILS,
       v1::ACCESS_DECISION_DENY, v1::ACCESS_REASON_NO_CONSENT, ""},
      {"pe-1", "peer_supporter", v1::PURPOSE_CARE_COORDINATION,
       v1::DATA_CATEGORY_APPOINTMENT_STATUS, v1::ACCESS_DECISION_DENY, v1::ACCESS_REASON_NO_CONSENT,
       ""},
      {"s-1", "supervisor", v1::PURPOSE_TREATMENT, v1::DATA_CATEGORY_CHECK_IN_SUMMARIES,
       v1::ACCESS_DECISION_DENY, v1::ACCESS_REASON_CONSENT_NOT_YET_VALID, later_id},
      {"s-1", "supervisor", v1::PURPOSE_EVALUATION, v1::DATA_CATEGORY_CHECK_IN_SUMMARIES,
       v1::ACCESS_DECISION_DENY, v1::ACCESS_REASON_CONSENT_EXPIRED, ended_id},
      {"cm-1", "case_manager", v1::PURPOSE_CARE_COORDINATION, v1::DATA_CATEGORY_CONTACT_DETAILS,
       v1::ACCESS_DECISION_PERMIT, v1::ACCESS_REASON_PERMITTED_BY_CONSENT, ""},
      {"cm-2", "case_manager", v1::PURPOSE_CARE_COORDINATION, v1::DATA_CATEGORY_CONTACT_DETAILS,
       v1::ACCESS_DECISION_DENY, v1::ACCESS_REASON_DENIED_BY_DIRECTIVE, deny_id},
      {"cm-2", "case_manager", v1::PURPOSE_CARE_COORDINATION, v1::DATA_CATEGORY_APPOINTMENT_STATUS,
       v1::ACCESS_DECISION_PERMIT, v1::ACCESS_REASON_PERMITTED_BY_CONSENT, ""},
  };
  for (const Row& row : table) {
    SCOPED_TRACE(absl::StrCat(row.subject, " ", v1::Purpose_Name(row.purpose), " ",
                              v1::DataCategory_Name(row.category)));
    const v1::CheckAccessResponse r =
        Check("p-table", Person(row.subject, {row.role}), row.category, row.purpose);
    EXPECT_EQ(r.decision(), row.decision);
    EXPECT_EQ(r.reason(), row.reason);
    if (!row.consent_id.empty()) {
      EXPECT_EQ(r.consent_id(), row.consent_id);
    }
    EXPECT_FALSE(r.message().empty());
  }

  // Teams and organisations; a person named by subject only is bound by every directive naming
  // a role, team or organisation (nothing shows they are outside it), even against a permit
  // naming them.
  const std::string team_permit =
      RecordOk(Consent("p-table", v1::RECIPIENT_KIND_TEAM, "team-crisis", {v1::PURPOSE_TREATMENT},
                       {v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS}));
  const std::string role_deny =
      RecordOk(Consent("p-table", v1::RECIPIENT_KIND_ROLE, "supervisor", {v1::PURPOSE_TREATMENT},
                       {v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS}, v1::CONSENT_DIRECTIVE_DENY));
  const std::string person_permit =
      RecordOk(Consent("p-table", v1::RECIPIENT_KIND_PERSON, "s-9", {v1::PURPOSE_TREATMENT},
                       {v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS}));
  const std::string org_deny =
      RecordOk(Consent("p-table", v1::RECIPIENT_KIND_ORGANIZATION, "county-probation",
                       {v1::PURPOSE_CARE_COORDINATION}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS},
                       v1::CONSENT_DIRECTIVE_DENY));
  const std::string org_permit =
      RecordOk(Consent("p-table", v1::RECIPIENT_KIND_ORGANIZATION, "county-health",
                       {v1::PURPOSE_CARE_COORDINATION}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  auto in_team = [](const std::string& subject, const std::string& role) {
    v1::Actor a = Person(subject, {role});
    a.add_team_ids("team-crisis");
    return a;
  };
  auto recipient = [&](v1::RecipientKind kind, const std::string& id, v1::Purpose purpose,
                       v1::DataCategory category) {
    v1::CheckAccessRequest request;
    request.set_participant_id("p-table");
    request.mutable_recipient()->set_kind(kind);
    request.mutable_recipient()->set_id(id);
    request.set_data_category(category);
    request.set_purpose(purpose);
    v1::CheckAccessResponse response;
    EXPECT_TRUE(stub_->CheckAccess(As({"service"}, "svc-checkin").get(), request, &response).ok());
    return response;
  };
  struct Case {
    std::string name;
    v1::CheckAccessResponse response;
    v1::AccessReason reason;
    std::string consent_id;
  };
  const v1::Purpose treatment = v1::PURPOSE_TREATMENT;
  const v1::DataCategory concerns = v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS;
  const std::vector<Case> cases = {
      {"team member", Check("p-table", in_team("c-9", "clinician"), concerns, treatment),
       v1::ACCESS_REASON_PERMITTED_BY_CONSENT, team_permit},
      {"team member in a denied role",
       Check("p-table", in_team("s-8", "supervisor"), concerns, treatment),
       v1::ACCESS_REASON_DENIED_BY_DIRECTIVE, role_deny},
      // Its members may include supervisors, whom a directive excludes.
      {"the team as a whole",
       recipient(v1::RECIPIENT_KIND_TEAM, "team-crisis", treatment, concerns),
       v1::ACCESS_REASON_DENIED_BY_DIRECTIVE, role_deny},
      // The case managers may include cm-2, whom a directive excludes from contact details; their
      // appointment status no directive restricts.
      {"a role as a whole, a person's directive",
       recipient(v1::RECIPIENT_KIND_ROLE, "case_manager", v1::PURPOSE_CARE_COORDINATION,
                 v1::DATA_CATEGORY_CONTACT_DETAILS),
       v1::ACCESS_REASON_DENIED_BY_DIRECTIVE, deny_id},
      {"a role as a whole, no directive",
       recipient(v1::RECIPIENT_KIND_ROLE, "case_manager", v1::PURPOSE_CARE_COORDINATION,
                 v1::DATA_CATEGORY_APPOINTMENT_STATUS),
       v1::ACCESS_REASON_PERMITTED_BY_CONSENT, ""},
      {"named person with roles",
       Check("p-table", Person("s-9", {"clinician"}), concerns, treatment),
       v1::ACCESS_REASON_PERMITTED_BY_CONSENT, person_permit},
      {"named person by subject only",
       recipient(v1::RECIPIENT_KIND_PERSON, "s-9", treatment, concerns),
       v1::ACCESS_REASON_DENIED_BY_DIRECTIVE, role_deny},
      {"actor with neither roles nor teams",
       Check("p-table", Person("s-9", {}), concerns, treatment),
       v1::ACCESS_REASON_DENIED_BY_DIRECTIVE, role_deny},
      {"denied organisation",
       recipient(v1::RECIPIENT_KIND_ORGANIZATION, "county-probation", v1::PURPOSE_CARE_COORDINATION,
                 v1::DATA_CATEGORY_APPOINTMENT_STATUS),
       v1::ACCESS_REASON_DENIED_BY_DIRECTIVE, org_deny},
      {"permitted organisation",
       recipient(v1::RECIPIENT_KIND_ORGANIZATION, "county-health", v1::PURPOSE_CARE_COORDINATION,
                 v1::DATA_CATEGORY_APPOINTMENT_STATUS),
       v1::ACCESS_REASON_PERMITTED_BY_CONSENT, org_permit},
      {"person by subject only, organisation's directive",
       recipient(v1::RECIPIENT_KIND_PERSON, "cm-1", v1::PURPOSE_CARE_COORDINATION,
                 v1::DATA_CATEGORY_APPOINTMENT_STATUS),
       v1::ACCESS_REASON_DENIED_BY_DIRECTIVE, org_deny},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(c.response.reason(), c.reason) << c.response.message();
    if (!c.consent_id.empty()) {
      EXPECT_EQ(c.response.consent_id(), c.consent_id);
    }
    EXPECT_EQ(c.response.decision(), c.reason == v1::ACCESS_REASON_PERMITTED_BY_CONSENT
                                         ? v1::ACCESS_DECISION_PERMIT
                                         : v1::ACCESS_DECISION_DENY);
  }
}

TEST_F(ConsentServiceTest, RevokedConsentDeniesNextCheckUnderConcurrentChecks) {
  const std::string id =
      RecordOk(Consent("p-rev", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                       {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  ASSERT_EQ(Check("p-rev", Person("c-1", {"clinician"}), v1::DATA_CATEGORY_APPOINTMENT_STATUS,
                  v1::PURPOSE_TREATMENT)
                .decision(),
            v1::ACCESS_DECISION_PERMIT);
  std::atomic<bool> revoked_returned{false};
  std::atomic<bool> stop{false};
  std::atomic<int> permits_after_revoke{0};
  std::atomic<int> checks{0};
  std::vector<std::thread> checkers;
  for (int t = 0; t < 4; ++t) {
    checkers.emplace_back([&] {
      auto stub = v1::ConsentService::NewStub(server_->Channel());
      while (!stop) {
        // Read the flag before the call starts: a permit of a call started after the revoke
        // returned is a violation.
        const bool after = revoked_returned.load();
        v1::CheckAccessRequest request;
        request.set_participant_id("p-rev");
        *request.mutable_actor() = Person("c-1", {"clinician"});
        request.set_data_category(v1::DATA_CATEGORY_APPOINTMENT_STATUS);
        request.set_purpose(v1::PURPOSE_TREATMENT);
        v1::CheckAccessResponse response;
        if (stub->CheckAccess(As({"service"}, "svc").get(), request, &response).ok()) {
          ++checks;
          if (after && response.decision() == v1::ACCESS_DECISION_PERMIT) ++permits_after_revoke;
        }
      }
    });
  }
  std::this_thread::sleep_for(300ms);
  v1::RevokeConsentRequest revoke;
  revoke.set_consent_id(id);
  revoke.set_reason("participant withdrew consent by phone");
  v1::RevokeConsentResponse revoked;
  ASSERT_TRUE(stub_->RevokeConsent(As({"case_manager"}).get(), revoke, &revoked).ok());
  revoked_returned = true;
  const v1::CheckAccessResponse first =
      Check("p-rev", Person("c-1", {"clinician"}), v1::DATA_CATEGORY_APPOINTMENT_STATUS,
            v1::PURPOSE_TREATMENT);
  std::this_thread::sleep_for(300ms);
  stop = true;
  for (auto& t : checkers) t.join();
  EXPECT_EQ(first.decision(), v1::ACCESS_DECISION_DENY);
  EXPECT_EQ(first.reason(), v1::ACCESS_REASON_CONSENT_REVOKED);
  EXPECT_EQ(first.consent_id(), id);
  EXPECT_EQ(permits_after_revoke.load(), 0);
  EXPECT_GT(checks.load(), 10);
  EXPECT_EQ(revoked.consent().status(), v1::CONSENT_STATUS_REVOKED);

  // A repeated revocation returns it unchanged; history is kept; one event.
  v1::RevokeConsentRequest again = revoke;
  again.set_reason("second reason");
  v1::RevokeConsentResponse second;
  ASSERT_TRUE(stub_->RevokeConsent(As({"case_manager"}).get(), again, &second).ok());
  EXPECT_EQ(second.consent().revocation_reason(), "participant withdrew consent by phone");
  EXPECT_EQ(Events("ConsentRevokedEvent", id), 1);
  v1::GetConsentRequest get;
  get.set_consent_id(id);
  v1::GetConsentResponse got;
  ASSERT_TRUE(stub_->GetConsent(As({"clinician"}).get(), get, &got).ok());
  EXPECT_EQ(got.consent().status(), v1::CONSENT_STATUS_REVOKED);
  EXPECT_FALSE(got.consent().in_effect());
}

// How many CheckAccess decisions a server took from its cache or from the database.
double Decisions(const ServiceProcess& server, const std::string& inputs) {
  return MetricValue(HttpGet(server.metrics_port(), "/metrics"),
                     "peerpath_consent_access_decisions_total", {{"inputs", inputs}});
}

double CacheListeningGauge(const ServiceProcess& server) {
  return MetricValue(HttpGet(server.metrics_port(), "/metrics"),
                     "peerpath_consent_decision_cache_listening", {});
}

// Repeats `check` until one is answered from `server`'s cache (at most 20 times): the first read
// after a change may not be kept, when the change's notification arrives while it reads.
template <typename Check>
bool EventuallyCached(const ServiceProcess& server, Check check) {
  for (int i = 0; i < 20; ++i) {
    const double cached = Decisions(server, "cache");
    check();
    if (Decisions(server, "cache") == cached + 1) return true;
  }
  return false;
}

// Waits until a replica's decision cache listens (it starts once the triggers of migration 0006
// exist): until then every decision reads the database.
bool CacheListening(const ServiceProcess& server) {
  for (int i = 0; i < 100; ++i) {
    if (CacheListeningGauge(server) == 1) return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

// Two replicas over one database, each with its own decision cache: a revocation through one is
// seen by the very next check on the other, also while that one answers checks from its cache
// all along. Repeated, because a stale cache would show only now and then.
TEST_F(ConsentServiceTest, RevokeThroughOneReplicaDeniesTheNextCheckOnAnother) {
  ServiceProcess other("consent", db_->UrlFor("consent"));
  ASSERT_TRUE(other.WaitHealth(true)) << other.Log();
  ASSERT_TRUE(CacheListening(other)) << other.Log();
  auto other_stub = v1::ConsentService::NewStub(other.Channel());
  auto check_on_other = [&](const std::string& participant) {
    v1::CheckAccessRequest request;
    request.set_participant_id(participant);
    *request.mutable_actor() = Person("c-1", {"clinician"});
    request.set_data_category(v1::DATA_CATEGORY_APPOINTMENT_STATUS);
    request.set_purpose(v1::PURPOSE_TREATMENT);
    v1::CheckAccessResponse response;
    grpc::Status status =
        other_stub->CheckAccess(As({"service"}, "svc-checkin").get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  };
  int permits_after_revoke = 0;
  for (int round = 0; round < 10; ++round) {
    const std::string participant = absl::StrCat("p-two-", round);
    const std::string id =
        RecordOk(Consent(participant, v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                         {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
    // Recorded on one replica, permitted on the other at once, and then from its cache.
    ASSERT_EQ(check_on_other(participant).decision(), v1::ACCESS_DECISION_PERMIT);
    EXPECT_TRUE(EventuallyCached(other, [&] {
      EXPECT_EQ(check_on_other(participant).decision(), v1::ACCESS_DECISION_PERMIT);
    })) << "the repeat is not cached";

    std::atomic<bool> revoked_returned{false};
    std::atomic<bool> stop{false};
    std::atomic<int> late_permits{0};
    std::vector<std::thread> checkers;
    for (int t = 0; t < 3; ++t) {
      checkers.emplace_back([&] {
        while (!stop) {
          const bool after = revoked_returned.load();
          if (check_on_other(participant).decision() == v1::ACCESS_DECISION_PERMIT && after) {
            ++late_permits;
          }
        }
      });
    }
    std::this_thread::sleep_for(20ms);
    v1::RevokeConsentRequest revoke;
    revoke.set_consent_id(id);
    revoke.set_reason("participant withdrew consent");
    v1::RevokeConsentResponse revoked;
    ASSERT_TRUE(stub_->RevokeConsent(As({"case_manager"}).get(), revoke, &revoked).ok());
    revoked_returned = true;
    const v1::CheckAccessResponse next = check_on_other(participant);
    std::this_thread::sleep_for(20ms);
    stop = true;
    for (auto& t : checkers) t.join();
    EXPECT_EQ(next.decision(), v1::ACCESS_DECISION_DENY) << "round " << round;
    EXPECT_EQ(next.reason(), v1::ACCESS_REASON_CONSENT_REVOKED) << "round " << round;
    permits_after_revoke += late_permits;
  }
  EXPECT_EQ(permits_after_revoke, 0);
}

// The cache hears of every change to the decision inputs, also one made outside the service (an
// administrator's revocation or directive by hand), because the database itself announces them.
TEST_F(ConsentServiceTest, ChangesMadeOutsideTheServiceReachTheCache) {
  ASSERT_TRUE(CacheListening(*server_)) << server_->Log();
  const std::string id =
      RecordOk(Consent("p-sql", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                       {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  auto check = [&] {
    return Check("p-sql", Person("c-1", {"clinician"}), v1::DATA_CATEGORY_APPOINTMENT_STATUS,
                 v1::PURPOSE_TREATMENT);
  };
  ASSERT_TRUE(EventuallyCached(*server_,
                               [&] { EXPECT_EQ(check().decision(), v1::ACCESS_DECISION_PERMIT); }));

  // Revoked by hand.
  db_->AdminQuery(absl::StrCat(
      "UPDATE consent.consents SET status = 'revoked', revoked_at = now(), revoked_by = 'dba', "
      "revocation_reason = 'paper withdrawal entered by hand' WHERE id = '",
      id, "'"));
  const v1::CheckAccessResponse after_update = check();
  EXPECT_EQ(after_update.decision(), v1::ACCESS_DECISION_DENY);
  EXPECT_EQ(after_update.reason(), v1::ACCESS_REASON_CONSENT_REVOKED);

  // A directive inserted by hand beats a permit recorded since.
  RecordOk(Consent("p-sql", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                   {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  ASSERT_EQ(check().decision(), v1::ACCESS_DECISION_PERMIT);
  ASSERT_EQ(check().decision(), v1::ACCESS_DECISION_PERMIT);
  db_->AdminQuery(
      "INSERT INTO consent.consents (agency_id, participant_id, recipient_kind, recipient_id, "
      "purposes, data_categories, directive, valid_from, obtained_method, obtained_by, "
      "created_by) VALUES ('agency-a', 'p-sql', 'person', 'c-1', '{treatment}', "
      "'{appointment_status}', 'deny', now() - interval '1 minute', 'written', 'dba', 'dba')");
  const v1::CheckAccessResponse after_insert = check();
  EXPECT_EQ(after_insert.decision(), v1::ACCESS_DECISION_DENY);
  EXPECT_EQ(after_insert.reason(), v1::ACCESS_REASON_DENIED_BY_DIRECTIVE);
}

// A participant not cached is read from the database at once, without waiting for the cache's
// barrier (a round trip on its listening session): a miss costs one round trip, the read, which
// is authoritative. A cached participant waits for the barrier and reads nothing. Seen from
// PostgreSQL: the listening session runs a query for the hit, none for the miss.
TEST_F(ConsentServiceTest, AMissReadsTheDatabaseOnceAndAHitOnlyWaitsForTheBarrier) {
  ASSERT_TRUE(CacheListening(*server_)) << server_->Log();
  RecordOk(Consent("p-miss", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                   {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  auto listener_queries = [&] {
    const pqxx::result r = db_->AdminQuery(absl::StrCat(
        "SELECT coalesce(query_start::text, '') || query FROM pg_stat_activity WHERE datname = '",
        db_->name(), "' AND application_name LIKE '%decision-cache'"));
    EXPECT_EQ(r.size(), 1u);
    return r.empty() ? std::string() : r[0][0].as<std::string>();
  };
  auto check = [&] {
    return Check("p-miss", Person("c-1", {"clinician"}), v1::DATA_CATEGORY_APPOINTMENT_STATUS,
                 v1::PURPOSE_TREATMENT)
        .decision();
  };
  const std::string before = listener_queries();
  const double from_database = Decisions(*server_, "database");
  const double from_cache = Decisions(*server_, "cache");
  EXPECT_EQ(check(), v1::ACCESS_DECISION_PERMIT);
  EXPECT_EQ(Decisions(*server_, "database"), from_database + 1);
  EXPECT_EQ(listener_queries(), before);
  EXPECT_EQ(Decisions(*server_, "cache"), from_cache);
  // Cached from then on (a read may not be kept while the record's notification is in flight).
  EXPECT_TRUE(EventuallyCached(*server_, [&] { EXPECT_EQ(check(), v1::ACCESS_DECISION_PERMIT); }));
  EXPECT_NE(listener_queries(), before);
}

// Revoked consents and the accounting of disclosures are history: the database refuses to delete
// or rewrite them, also for an administrator; a consent's one ending is all that may change.
TEST_F(ConsentServiceTest, TheDatabaseKeepsTheHistory) {
  const std::string id =
      RecordOk(Consent("p-hist", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                       {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  const v1::ShareInformationRequest share = ShareForTreatment(
      "p-hist", Person("c-1", {"clinician"}), v1::DATA_CATEGORY_APPOINTMENT_STATUS, "hist-share");
  v1::ShareInformationResponse shared;
  ASSERT_TRUE(stub_->ShareInformation(As({"clinician"}, "dr-1").get(), share, &shared).ok());
  v1::RevokeConsentRequest revoke;
  revoke.set_consent_id(id);
  revoke.set_reason("participant withdrew");
  v1::RevokeConsentResponse revoked;
  ASSERT_TRUE(stub_->RevokeConsent(As({"case_manager"}).get(), revoke, &revoked).ok());
  auto snapshot = [&](const std::string& table, const std::string& where = "") {
    return db_
        ->AdminQuery(absl::StrCat("SELECT string_agg(t::text, '|' ORDER BY t::text) FROM ", table,
                                  " t", where))[0][0]
        .as<std::string>();
  };
  const std::string where = " WHERE id = '" + id + "'";
  const std::string consent = snapshot("consent.consents", where);
  const std::string disclosures = snapshot("consent.disclosures");
  auto refused = [&](const std::string& sql) {
    try {
      db_->AdminQuery(sql);
    } catch (const pqxx::sql_error& e) {
      return std::string(e.what()).find("refused") != std::string::npos;
    }
    return false;
  };
  EXPECT_TRUE(
      refused("UPDATE consent.consents SET status = 'active', revoked_at = NULL, "
              "revoked_by = NULL, revocation_reason = NULL" +
              where));
  EXPECT_TRUE(refused("UPDATE consent.consents SET revocation_reason = 'something else'" + where));
  EXPECT_TRUE(refused("UPDATE consent.consents SET data_categories = '{contact_details}'" + where));
  EXPECT_TRUE(refused("DELETE FROM consent.consents" + where));
  EXPECT_TRUE(refused("TRUNCATE consent.consents CASCADE"));
  EXPECT_TRUE(refused("UPDATE consent.disclosures SET recipient_id = 'someone-else'"));
  EXPECT_TRUE(refused("DELETE FROM consent.disclosures"));
  EXPECT_TRUE(refused("TRUNCATE consent.disclosures"));
  // An active consent is not rewritten either, only ended.
  const std::string active =
      RecordOk(Consent("p-hist", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                       {v1::DATA_CATEGORY_CONTACT_DETAILS}));
  EXPECT_TRUE(refused("UPDATE consent.consents SET recipient_id = 'case_manager' WHERE id = '" +
                      active + "'"));
  EXPECT_TRUE(
      refused("UPDATE consent.consents SET status = 'expired', expired_at = now(), "
              "revoked_by = 'x' WHERE id = '" +
              active + "'"));
  EXPECT_EQ(snapshot("consent.consents", where), consent);
  EXPECT_EQ(snapshot("consent.disclosures"), disclosures);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.consents WHERE status = 'active'"), 1);
}

// With the cache off every decision reads the database; a bad size stops the start.
TEST_F(ConsentServiceTest, DecisionCacheCanBeTurnedOffAndRefusesABadSize) {
  StartConsent({"--consent_decision_cache_participants=0"});
  RecordOk(Consent("p-nocache", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                   {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Check("p-nocache", Person("c-1", {"clinician"}), v1::DATA_CATEGORY_APPOINTMENT_STATUS,
                    v1::PURPOSE_TREATMENT)
                  .decision(),
              v1::ACCESS_DECISION_PERMIT);
  }
  EXPECT_EQ(Decisions(*server_, "database"), 3);
  EXPECT_EQ(Decisions(*server_, "cache"), 0);
  EXPECT_EQ(HttpGet(server_->metrics_port(), "/metrics")
                .find("peerpath_consent_decision_cache_listening"),
            std::string::npos);

  ServiceProcess bad("consent", db_->UrlFor("consent"),
                     {"--consent_decision_cache_participants=lots"});
  EXPECT_EQ(bad.WaitExit(10s), 2);
  EXPECT_NE(bad.Log().find("--consent_decision_cache_participants 'lots'"), std::string::npos)
      << bad.Log();
}

TEST_F(ConsentServiceTest, AConsentWhosePeriodEndedIsNotRevokedBeforeItsExpiryIsRecorded) {
  StartConsent({"--consent_expiry_sweep_interval=1h"});
  v1::Consent c = Consent("p-ended", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                          {v1::DATA_CATEGORY_CHECK_IN_SUMMARIES});
  *c.mutable_valid_until() = ToProtoTimestamp(absl::Now() + absl::Seconds(1));
  const std::string id = RecordOk(c);
  std::this_thread::sleep_for(1500ms);  // Ended; the sweeper has not run since.
  v1::RevokeConsentRequest revoke;
  revoke.set_consent_id(id);
  revoke.set_reason("participant withdrew");
  v1::RevokeConsentResponse ignored;
  EXPECT_EQ(stub_->RevokeConsent(As({"case_manager"}).get(), revoke, &ignored).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(db_->AdminQuery("SELECT status FROM consent.consents WHERE id = '" + id + "'")[0][0]
                .as<std::string>(),
            "active");
  EXPECT_EQ(Events("ConsentRevokedEvent", id), 0);
}

TEST_F(ConsentServiceTest, ExpiryIsNoticedWithoutACallAndEmittedOnce) {
  v1::Consent c = Consent("p-exp", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                          {v1::DATA_CATEGORY_CHECK_IN_SUMMARIES});
  *c.mutable_valid_until() = ToProtoTimestamp(absl::Now() + absl::Seconds(1));
  const std::string id = RecordOk(c);
  EXPECT_EQ(Check("p-exp", Person("c-1", {"clinician"}), v1::DATA_CATEGORY_CHECK_IN_SUMMARIES,
                  v1::PURPOSE_TREATMENT)
                .decision(),
            v1::ACCESS_DECISION_PERMIT);
  for (int i = 0; i < 100 && Events("ConsentExpiredEvent", id) == 0; ++i) {
    std::this_thread::sleep_for(100ms);
  }
  std::this_thread::sleep_for(600ms);  // Further sweeps emit nothing more.
  EXPECT_EQ(Events("ConsentExpiredEvent", id), 1);
  EXPECT_EQ(db_->AdminQuery("SELECT status FROM consent.consents WHERE id = '" + id + "'")[0][0]
                .as<std::string>(),
            "expired");
  const v1::CheckAccessResponse r =
      Check("p-exp", Person("c-1", {"clinician"}), v1::DATA_CATEGORY_CHECK_IN_SUMMARIES,
            v1::PURPOSE_TREATMENT);
  EXPECT_EQ(r.decision(), v1::ACCESS_DECISION_DENY);
  EXPECT_EQ(r.reason(), v1::ACCESS_REASON_CONSENT_EXPIRED);
  // An expired consent cannot be revoked.
  v1::RevokeConsentRequest revoke;
  revoke.set_consent_id(id);
  revoke.set_reason("too late");
  v1::RevokeConsentResponse ignored;
  EXPECT_EQ(stub_->RevokeConsent(As({"clinician"}).get(), revoke, &ignored).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ConsentServiceTest, SubstanceUseRecordsNeedAConsentNamingThem) {
  RecordOk(Consent("p-sud", v1::RECIPIENT_KIND_ORGANIZATION, "county", {v1::PURPOSE_TREATMENT},
                   {v1::DATA_CATEGORY_CHECK_IN_SUMMARIES, v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  v1::CheckAccessRequest request;
  request.set_participant_id("p-sud");
  request.mutable_recipient()->set_kind(v1::RECIPIENT_KIND_ORGANIZATION);
  request.mutable_recipient()->set_id("county");
  request.set_data_category(v1::DATA_CATEGORY_SUBSTANCE_USE_TREATMENT_RECORDS);
  request.set_purpose(v1::PURPOSE_TREATMENT);
  v1::CheckAccessResponse r;
  ASSERT_TRUE(stub_->CheckAccess(As({"clinician"}).get(), request, &r).ok());
  EXPECT_EQ(r.decision(), v1::ACCESS_DECISION_DENY);
  EXPECT_EQ(r.reason(), v1::ACCESS_REASON_PART2_CATEGORY_NOT_NAMED);

  const std::string named =
      RecordOk(Consent("p-sud", v1::RECIPIENT_KIND_ORGANIZATION, "county", {v1::PURPOSE_TREATMENT},
                       {v1::DATA_CATEGORY_SUBSTANCE_USE_TREATMENT_RECORDS}));
  ASSERT_TRUE(stub_->CheckAccess(As({"clinician"}).get(), request, &r).ok());
  EXPECT_EQ(r.decision(), v1::ACCESS_DECISION_PERMIT);
  EXPECT_TRUE(r.redisclosure_notice_required());
  EXPECT_EQ(r.consent_id(), named);

  // Shared with the notice, one disclosure per permitting consent.
  v1::ShareInformationRequest share;
  share.set_participant_id("p-sud");
  *share.mutable_to_recipient() = request.recipient();
  share.set_purpose(v1::PURPOSE_TREATMENT);
  share.add_data_categories(v1::DATA_CATEGORY_SUBSTANCE_USE_TREATMENT_RECORDS);
  share.add_data_categories(v1::DATA_CATEGORY_APPOINTMENT_STATUS);
  share.set_idempotency_key("share-sud-1");
  v1::ShareInformationResponse shared;
  grpc::Status status = stub_->ShareInformation(As({"clinician"}).get(), share, &shared);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(shared.disclosures_size(), 2);
  EXPECT_TRUE(shared.redisclosure_notice());
  EXPECT_NE(shared.redisclosure_notice_text().find("42 CFR part 2"), std::string::npos);
  EXPECT_TRUE(shared.disclosures(0).redisclosure_notice());
  EXPECT_EQ(shared.disclosures(0).consent_id(), named);
  EXPECT_FALSE(shared.disclosures(1).redisclosure_notice());
}

TEST_F(ConsentServiceTest, OtherAgenciesAndOperationsSeeNothing) {
  const std::string id =
      RecordOk(Consent("p-x", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                       {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  v1::GetConsentRequest get;
  get.set_consent_id(id);
  v1::GetConsentResponse got;
  EXPECT_EQ(
      stub_->GetConsent(As({"clinician"}, "staff-b", "agency-b").get(), get, &got).error_code(),
      grpc::StatusCode::NOT_FOUND);
  v1::RevokeConsentRequest revoke;
  revoke.set_consent_id(id);
  revoke.set_reason("not ours");
  v1::RevokeConsentResponse revoked;
  EXPECT_EQ(stub_->RevokeConsent(As({"clinician"}, "staff-b", "agency-b").get(), revoke, &revoked)
                .error_code(),
            grpc::StatusCode::NOT_FOUND);
  // The other agency's decision knows no consent at all.
  v1::CheckAccessRequest check;
  check.set_participant_id("p-x");
  *check.mutable_actor() = Person("c-1", {"clinician"});
  check.set_data_category(v1::DATA_CATEGORY_APPOINTMENT_STATUS);
  check.set_purpose(v1::PURPOSE_TREATMENT);
  v1::CheckAccessResponse decided;
  ASSERT_TRUE(stub_->CheckAccess(As({"service"}, "svc", "agency-b").get(), check, &decided).ok());
  EXPECT_EQ(decided.decision(), v1::ACCESS_DECISION_DENY);
  EXPECT_EQ(decided.reason(), v1::ACCESS_REASON_NO_CONSENT);
  EXPECT_EQ(stub_->GetConsent(As({"operations"}).get(), get, &got).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(stub_->CheckAccess(As({"operations"}).get(), check, &decided).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // Nor does another agency list the consent, hold a gate on it or share under it.
  v1::ListConsentsRequest list;
  list.set_participant_id("p-x");
  v1::ListConsentsResponse listed;
  ASSERT_TRUE(
      stub_->ListConsents(As({"clinician"}, "staff-b", "agency-b").get(), list, &listed).ok());
  EXPECT_EQ(listed.consents_size(), 0);
  RecordOk(
      Consent("p-x", v1::RECIPIENT_KIND_ROLE, "case_manager", {v1::PURPOSE_CARE_COORDINATION},
              {v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS, v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  v1::CheckGatesRequest gates;
  gates.set_participant_id("p-x");
  gates.add_gates("consent_information_sharing");
  v1::CheckGatesResponse held;
  ASSERT_TRUE(stub_->CheckGates(As({"clinician"}).get(), gates, &held).ok());
  ASSERT_TRUE(held.all_held()) << held.results(0).message();
  ASSERT_TRUE(stub_->CheckGates(As({"clinician"}, "staff-b", "agency-b").get(), gates, &held).ok());
  EXPECT_FALSE(held.all_held());
  // Each answer about the participant's consents is audited, in the asking agency.
  EXPECT_EQ(Count("SELECT count(*) FROM consent.audit_log WHERE action LIKE '%.CheckGates' AND "
                  "participant_id = 'p-x' AND decision = 'allowed' AND agency_id = '" +
                  std::string(kAgency) + "' AND actor = 'staff-1'"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.audit_log WHERE action LIKE '%.CheckGates' AND "
                  "participant_id = 'p-x' AND agency_id = 'agency-b' AND actor = 'staff-b'"),
            1);
  const v1::ShareInformationRequest share = ShareForTreatment(
      "p-x", Person("c-1", {"clinician"}), v1::DATA_CATEGORY_APPOINTMENT_STATUS, "share-b");
  v1::ShareInformationResponse shared;
  EXPECT_EQ(stub_->ShareInformation(As({"clinician"}, "staff-b", "agency-b").get(), share, &shared)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.disclosures"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.consents WHERE status = 'active'"), 2);
}

// `operations` sees no consent at all: every RPC of the service refuses it, before anything else
// (an empty request, which each would otherwise refuse as invalid).
TEST_F(ConsentServiceTest, OperationsIsRefusedByEveryRpc) {
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          v1::ConsentService::service_full_name());
  ASSERT_NE(service, nullptr);
  EXPECT_EQ(service->method_count(), 13);
  grpc::GenericStub generic(server_->Channel());
  for (int i = 0; i < service->method_count(); ++i) {
    const std::string method =
        absl::StrCat("/", service->full_name(), "/", service->method(i)->name());
    SCOPED_TRACE(method);
    auto context = As({"operations"}, "ops-1");
    grpc::Slice empty("");
    grpc::ByteBuffer request(&empty, 1), response;
    std::promise<grpc::Status> done;
    generic.UnaryCall(context.get(), method, grpc::StubOptions(), &request, &response,
                      [&](grpc::Status status) { done.set_value(std::move(status)); });
    EXPECT_EQ(done.get_future().get().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
}

TEST_F(ConsentServiceTest, PeerSupportersAndIntegrationsCheckOnlyForThemselves) {
  RecordOk(Consent("p-self", v1::RECIPIENT_KIND_ORGANIZATION, "county", {v1::PURPOSE_BILLING},
                   {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  v1::CheckAccessRequest request;
  request.set_participant_id("p-self");
  request.set_data_category(v1::DATA_CATEGORY_APPOINTMENT_STATUS);
  request.set_purpose(v1::PURPOSE_BILLING);
  v1::CheckAccessResponse response;
  // An integration caller is the organisation its subject names.
  ASSERT_TRUE(stub_->CheckAccess(As({"integration"}, "county").get(), request, &response).ok());
  EXPECT_EQ(response.decision(), v1::ACCESS_DECISION_PERMIT);
  ASSERT_TRUE(stub_->CheckAccess(As({"integration"}, "city").get(), request, &response).ok());
  EXPECT_EQ(response.decision(), v1::ACCESS_DECISION_DENY);
  // Asking about someone else is refused.
  *request.mutable_actor() = Person("c-1", {"clinician"});
  EXPECT_EQ(
      stub_->CheckAccess(As({"integration"}, "county").get(), request, &response).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  Match("peer-3", "p-self");
  EXPECT_EQ(
      stub_->CheckAccess(As({"peer_supporter"}, "peer-3").get(), request, &response).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  request.clear_actor();
  ASSERT_TRUE(stub_->CheckAccess(As({"peer_supporter"}, "peer-3").get(), request, &response).ok());
  EXPECT_EQ(response.decision(), v1::ACCESS_DECISION_DENY);
  // Outside their matches a peer supporter may not ask at all; a service must name the accessor.
  request.set_participant_id("p-unmatched");
  EXPECT_EQ(
      stub_->CheckAccess(As({"peer_supporter"}, "peer-3").get(), request, &response).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  grpc::Status no_accessor = stub_->CheckAccess(As({"service"}, "svc").get(), request, &response);
  EXPECT_EQ(no_accessor.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ViolatedFields(no_accessor), (std::set<std::string>{"accessor"}));
  // A caller's token names no teams: a directive naming a team binds it, whatever its permit.
  const std::string team_deny =
      RecordOk(Consent("p-self", v1::RECIPIENT_KIND_TEAM, "billing-team", {v1::PURPOSE_BILLING},
                       {v1::DATA_CATEGORY_APPOINTMENT_STATUS}, v1::CONSENT_DIRECTIVE_DENY));
  request.set_participant_id("p-self");
  ASSERT_TRUE(stub_->CheckAccess(As({"integration"}, "county").get(), request, &response).ok());
  EXPECT_EQ(response.decision(), v1::ACCESS_DECISION_DENY);
  EXPECT_EQ(response.reason(), v1::ACCESS_REASON_DENIED_BY_DIRECTIVE);
  EXPECT_EQ(response.consent_id(), team_deny);
}

TEST_F(ConsentServiceTest, IdempotentResubmissionRecordsOnce) {
  const v1::Consent c =
      Consent("p-idem", v1::RECIPIENT_KIND_TEAM, "on-call", {v1::PURPOSE_CARE_COORDINATION},
              {v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS});
  v1::RecordConsentResponse first;
  v1::RecordConsentResponse second;
  ASSERT_TRUE(Record(c, &first, {"case_manager"}, "staff-1", "same-key").ok());
  ASSERT_TRUE(Record(c, &second, {"case_manager"}, "staff-1", "same-key").ok());
  EXPECT_EQ(first.consent().consent_id(), second.consent().consent_id());
  v1::Consent changed = c;
  changed.set_participant_id("p-other");
  v1::RecordConsentResponse third;
  EXPECT_EQ(Record(changed, &third, {"case_manager"}, "staff-1", "same-key").error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.consents"), 1);
  EXPECT_EQ(Events("ConsentGrantedEvent"), 1);
}

// A retry whose consent period has ended since its first call (a client retrying after a lost
// answer) gets the first call's answer, not "valid_until is already past": it must not record
// the consent a second time under a new key. A first call with that period is refused, and so
// is another request under the key.
TEST_F(ConsentServiceTest, ARetryAfterItsPeriodEndedGetsItsFirstAnswer) {
  v1::Consent c =
      Consent("p-late", v1::RECIPIENT_KIND_TEAM, "on-call", {v1::PURPOSE_CARE_COORDINATION},
              {v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS});
  *c.mutable_valid_until() = ToProtoTimestamp(absl::Now() + absl::Milliseconds(1500));
  v1::RecordConsentResponse first;
  ASSERT_TRUE(Record(c, &first, {"case_manager"}, "staff-1", "late-key").ok());
  std::this_thread::sleep_for(2s);  // The period ends.
  v1::RecordConsentResponse retried;
  grpc::Status status = Record(c, &retried, {"case_manager"}, "staff-1", "late-key");
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(retried.SerializeAsString(), first.SerializeAsString());
  v1::RecordConsentResponse refused;
  status = Record(c, &refused, {"case_manager"}, "staff-1", "late-key-new");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ViolatedFields(status), std::set<std::string>{"consent.valid_until"});
  v1::Consent other = c;
  other.set_participant_id("p-late-other");
  EXPECT_EQ(Record(other, &refused, {"case_manager"}, "staff-1", "late-key").error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  // Another caller's retry of the key is not answered with this one's consent.
  EXPECT_EQ(Record(c, &refused, {"case_manager"}, "staff-2", "late-key").error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.consents"), 1);
  EXPECT_EQ(Events("ConsentGrantedEvent"), 1);
}

TEST_F(ConsentServiceTest, DisclosuresAreAccountedAndADeniedShareWritesOnlyTheAuditRow) {
  const std::string consent =
      RecordOk(Consent("p-share", v1::RECIPIENT_KIND_ORGANIZATION, "county",
                       {v1::PURPOSE_CARE_COORDINATION}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  v1::ShareInformationRequest share;
  share.set_participant_id("p-share");
  share.mutable_to_recipient()->set_kind(v1::RECIPIENT_KIND_ORGANIZATION);
  share.mutable_to_recipient()->set_id("county");
  share.set_purpose(v1::PURPOSE_CARE_COORDINATION);
  share.add_data_categories(v1::DATA_CATEGORY_APPOINTMENT_STATUS);
  share.add_data_categories(v1::DATA_CATEGORY_CONTACT_DETAILS);
  share.set_idempotency_key("share-denied");
  const int audit_before = Count("SELECT count(*) FROM consent.audit_log");
  v1::ShareInformationResponse shared;
  grpc::Status denied = stub_->ShareInformation(As({"case_manager"}).get(), share, &shared);
  ASSERT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(denied.error_details()));
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(details.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "ACCESS_DENIED");
  EXPECT_EQ(info.metadata().at("data_category"), "DATA_CATEGORY_CONTACT_DETAILS");
  EXPECT_EQ(info.metadata().at("access_reason"), "ACCESS_REASON_NO_CONSENT");
  EXPECT_EQ(Count("SELECT count(*) FROM consent.disclosures"), 0);
  EXPECT_EQ(Events("DisclosureRecordedEvent"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.audit_log"), audit_before + 1);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.audit_log WHERE decision = 'denied' AND "
                  "participant_id = 'p-share'"),
            1);

  // The same key after a consent is recorded is decided afresh.
  RecordOk(Consent("p-share", v1::RECIPIENT_KIND_ORGANIZATION, "county",
                   {v1::PURPOSE_CARE_COORDINATION}, {v1::DATA_CATEGORY_CONTACT_DETAILS}));
  grpc::Status ok = stub_->ShareInformation(As({"case_manager"}, "cm-9").get(), share, &shared);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  ASSERT_EQ(shared.disclosures_size(), 2);
  EXPECT_EQ(shared.disclosures(0).consent_id(), consent);
  EXPECT_EQ(shared.disclosures(0).disclosed_by(), "cm-9");
  EXPECT_FALSE(shared.redisclosure_notice());
  // A retry records nothing more.
  v1::ShareInformationResponse retried;
  ASSERT_TRUE(stub_->ShareInformation(As({"case_manager"}, "cm-9").get(), share, &retried).ok());
  EXPECT_EQ(retried.disclosures(0).disclosure_id(), shared.disclosures(0).disclosure_id());
  EXPECT_EQ(Count("SELECT count(*) FROM consent.disclosures"), 2);
  EXPECT_EQ(Events("DisclosureRecordedEvent"), 2);

  // The accounting, oldest first, paged.
  v1::ListDisclosuresRequest list;
  list.set_participant_id("p-share");
  list.set_page_size(1);
  v1::ListDisclosuresResponse page1;
  ASSERT_TRUE(stub_->ListDisclosures(As({"supervisor"}).get(), list, &page1).ok());
  ASSERT_EQ(page1.disclosures_size(), 1);
  ASSERT_FALSE(page1.next_page_token().empty());
  list.set_page_token(page1.next_page_token());
  v1::ListDisclosuresResponse page2;
  ASSERT_TRUE(stub_->ListDisclosures(As({"supervisor"}).get(), list, &page2).ok());
  ASSERT_EQ(page2.disclosures_size(), 1);
  EXPECT_TRUE(page2.next_page_token().empty());
  EXPECT_NE(page1.disclosures(0).disclosure_id(), page2.disclosures(0).disclosure_id());
  // A period that ended before the disclosures lists none; peer supporters may not list.
  v1::ListDisclosuresRequest old;
  old.set_participant_id("p-share");
  *old.mutable_period()->mutable_end_time() = ToProtoTimestamp(absl::Now() - absl::Hours(1));
  v1::ListDisclosuresResponse none;
  ASSERT_TRUE(stub_->ListDisclosures(As({"supervisor"}).get(), old, &none).ok());
  EXPECT_EQ(none.disclosures_size(), 0);
  EXPECT_EQ(stub_->ListDisclosures(As({"peer_supporter"}).get(), old, &none).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // The start of a period is inclusive: from the share's time both disclosures (one share),
  // from a microsecond later none.
  ASSERT_EQ(page1.disclosures(0).disclosed_at().SerializeAsString(),
            page2.disclosures(0).disclosed_at().SerializeAsString());
  v1::ListDisclosuresRequest from;
  from.set_participant_id("p-share");
  *from.mutable_period()->mutable_start_time() = page1.disclosures(0).disclosed_at();
  v1::ListDisclosuresResponse listed;
  ASSERT_TRUE(stub_->ListDisclosures(As({"supervisor"}).get(), from, &listed).ok());
  EXPECT_EQ(listed.disclosures_size(), 2);
  *from.mutable_period()->mutable_start_time() = ToProtoTimestamp(
      FromProtoTimestamp(page1.disclosures(0).disclosed_at()) + absl::Microseconds(1));
  ASSERT_TRUE(stub_->ListDisclosures(As({"supervisor"}).get(), from, &listed).ok());
  EXPECT_EQ(listed.disclosures_size(), 0);
  // Another agency's accounting of the same participant id is its own: empty.
  list.clear_page_token();
  v1::ListDisclosuresResponse elsewhere;
  ASSERT_TRUE(
      stub_->ListDisclosures(As({"supervisor"}, "sup-b", "agency-b").get(), list, &elsewhere).ok());
  EXPECT_EQ(elsewhere.disclosures_size(), 0);
}

TEST_F(ConsentServiceTest, EventsEmittedExactlyOncePerChange) {
  const std::string a =
      RecordOk(Consent("p-ev", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                       {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  const std::string b =
      RecordOk(Consent("p-ev", v1::RECIPIENT_KIND_ROLE, "clinician",
                       {v1::PURPOSE_CARE_COORDINATION}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  v1::RevokeConsentRequest revoke;
  revoke.set_consent_id(a);
  revoke.set_reason("withdrawn");
  v1::RevokeConsentResponse revoked;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(stub_->RevokeConsent(As({"clinician"}).get(), revoke, &revoked).ok());
  }
  EXPECT_EQ(Events("ConsentGrantedEvent", a), 1);
  EXPECT_EQ(Events("ConsentGrantedEvent", b), 1);
  EXPECT_EQ(Events("ConsentRevokedEvent"), 1);
  // Read back through the log RPC: payloads carry ids, never the reason.
  v1::ListEventsRequest request;
  v1::ListEventsResponse response;
  ASSERT_TRUE(stub_->ListEvents(As({"service"}, "svc").get(), request, &response).ok());
  ASSERT_EQ(response.events_size(), 3);
  v1::ConsentRevokedEvent event;
  ASSERT_TRUE(response.events(2).payload().UnpackTo(&event));
  EXPECT_EQ(event.consent_id(), a);
  EXPECT_EQ(event.participant_id(), "p-ev");
  EXPECT_EQ(response.events(2).payload().value().find("withdrawn"), std::string::npos);
}

TEST_F(ConsentServiceTest, GatesAnswerForTheCheckInService) {
  auto gates = [&](std::vector<std::string> names) {
    v1::CheckGatesRequest request;
    request.set_participant_id("p-gate");
    for (auto& n : names) request.add_gates(n);
    v1::CheckGatesResponse response;
    grpc::Status status =
        stub_->CheckGates(As({"service"}, "svc-checkin").get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  };
  v1::CheckGatesResponse none = gates({});
  ASSERT_EQ(none.results_size(), 3);
  EXPECT_FALSE(none.all_held());
  EXPECT_EQ(none.results(0).reason(), v1::GATE_REASON_NO_CONSENT);

  RecordOk(Consent("p-gate", v1::RECIPIENT_KIND_ROLE, "peer_supporter", {v1::PURPOSE_PEER_SUPPORT},
                   {v1::DATA_CATEGORY_CHECK_IN_SUMMARIES}));
  const std::string sharing = RecordOk(
      Consent("p-gate", v1::RECIPIENT_KIND_TEAM, "receiving-team", {v1::PURPOSE_CARE_COORDINATION},
              {v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS, v1::DATA_CATEGORY_APPOINTMENT_STATUS}));
  v1::CheckGatesResponse held = gates({});
  EXPECT_TRUE(held.all_held());

  v1::RevokeConsentRequest revoke;
  revoke.set_consent_id(sharing);
  revoke.set_reason("withdrawn");
  v1::RevokeConsentResponse revoked;
  ASSERT_TRUE(stub_->RevokeConsent(As({"clinician"}).get(), revoke, &revoked).ok());
  v1::CheckGatesResponse after =
      gates({"consent_aligned_communication", "agreement_to_peer_involvement"});
  ASSERT_EQ(after.results_size(), 2);
  EXPECT_FALSE(after.results(0).held());
  EXPECT_EQ(after.results(0).reason(), v1::GATE_REASON_CONSENT_REVOKED);
  EXPECT_TRUE(after.results(1).held());

  v1::CheckGatesRequest bad;
  bad.set_participant_id("p-gate");
  bad.add_gates("consent_information_sharing");
  bad.add_gates("made_up");
  bad.add_gates("consent_information_sharing");
  v1::CheckGatesResponse ignored;
  grpc::Status status = stub_->CheckGates(As({"service"}).get(), bad, &ignored);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ViolatedFields(status), (std::set<std::string>{"gates[1]", "gates[2]"}));
}

TEST_F(ConsentServiceTest, BreakGlassIsLimitedAuditedCountedAndReviewed) {
  v1::RequestEmergencyAccessRequest request;
  request.set_participant_id("p-bg");
  request.set_concern_id("6f1c2a52-7d4b-4a51-9a0e-1f2b3c4d5e6f");
  request.set_reason("participant unreachable after a crisis call");
  request.add_data_categories(v1::DATA_CATEGORY_CONTACT_DETAILS);
  request.set_idempotency_key("bg-1");
  v1::RequestEmergencyAccessResponse granted;
  // Not connected to the escalation service, nothing can confirm the concern: no grant at all.
  const grpc::Status unconfirmed =
      stub_->RequestEmergencyAccess(As({"clinician"}, "dr-1").get(), request, &granted);
  EXPECT_EQ(unconfirmed.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(unconfirmed.error_message().find("escalation"), std::string::npos)
      << unconfirmed.error_message();
  EXPECT_EQ(Count("SELECT count(*) FROM consent.emergency_accesses"), 0);
  FakeEscalationLog escalation;
  peerpath::escalation::v1::ConcernOpenedEvent opened;
  opened.set_concern_id(request.concern_id());
  opened.set_participant_id("p-bg");
  opened.set_category(peerpath::common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY);
  escalation.Add(kAgency, opened);
  StartConsentWith(escalation);
  v1::RequestEmergencyAccessRequest bad = request;
  bad.set_reason("short");
  bad.add_data_categories(v1::DATA_CATEGORY_SUBSTANCE_USE_TREATMENT_RECORDS);
  bad.set_concern_id("nope");
  grpc::Status invalid =
      stub_->RequestEmergencyAccess(As({"clinician"}, "dr-1").get(), bad, &granted);
  EXPECT_EQ(ViolatedFields(invalid),
            (std::set<std::string>{"reason", "data_categories[1]", "concern_id"}));
  EXPECT_EQ(
      stub_->RequestEmergencyAccess(As({"case_manager"}).get(), request, &granted).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(
      stub_->RequestEmergencyAccess(As({"clinician"}, "dr-1").get(), request, &granted).ok());
  v1::RequestEmergencyAccessResponse retried;
  ASSERT_TRUE(
      stub_->RequestEmergencyAccess(As({"clinician"}, "dr-1").get(), request, &retried).ok());
  EXPECT_EQ(retried.emergency_access().emergency_access_id(),
            granted.emergency_access().emergency_access_id());
  EXPECT_EQ(granted.emergency_access().state(), v1::EMERGENCY_ACCESS_STATE_ACTIVE);

  // Only dr-1, only treatment, only the granted category.
  auto check = [&](const std::string& subject, v1::DataCategory category, v1::Purpose purpose) {
    return Check("p-bg", Person(subject, {"clinician"}), category, purpose);
  };
  const v1::CheckAccessResponse permitted =
      check("dr-1", v1::DATA_CATEGORY_CONTACT_DETAILS, v1::PURPOSE_TREATMENT);
  EXPECT_EQ(permitted.reason(), v1::ACCESS_REASON_PERMITTED_BY_EMERGENCY_ACCESS);
  // Only that concern's data: the permit names it.
  EXPECT_EQ(permitted.concern_id(), request.concern_id());
  EXPECT_EQ(permitted.emergency_access_id(), granted.emergency_access().emergency_access_id());
  EXPECT_EQ(check("dr-2", v1::DATA_CATEGORY_CONTACT_DETAILS, v1::PURPOSE_TREATMENT).decision(),
            v1::ACCESS_DECISION_DENY);
  EXPECT_EQ(check("dr-1", v1::DATA_CATEGORY_APPOINTMENT_STATUS, v1::PURPOSE_TREATMENT).decision(),
            v1::ACCESS_DECISION_DENY);
  EXPECT_EQ(check("dr-1", v1::DATA_CATEGORY_CONTACT_DETAILS, v1::PURPOSE_BILLING).decision(),
            v1::ACCESS_DECISION_DENY);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.audit_log WHERE decision = 'break_glass'"), 2);
  EXPECT_EQ(MetricValue(HttpGet(server_->metrics_port(), "/metrics"),
                        "peerpath_break_glass_accesses_total", {}),
            1);
  EXPECT_EQ(Events("EmergencyAccessGrantedEvent"), 1);

  // The admin's review queue; nobody reviews their own grant.
  v1::ListEmergencyAccessesResponse queue;
  ASSERT_TRUE(stub_
                  ->ListEmergencyAccesses(As({"program_admin"}, "admin-1").get(),
                                          v1::ListEmergencyAccessesRequest(), &queue)
                  .ok());
  ASSERT_EQ(queue.emergency_accesses_size(), 1);
  EXPECT_EQ(queue.unreviewed_count(), 1);
  v1::ListEmergencyAccessesRequest others;
  others.set_clinician_id("dr-1");
  EXPECT_EQ(
      stub_->ListEmergencyAccesses(As({"clinician"}, "dr-2").get(), others, &queue).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  v1::ReviewEmergencyAccessRequest review;
  review.set_emergency_access_id(granted.emergency_access().emergency_access_id());
  review.set_outcome(v1::EMERGENCY_ACCESS_REVIEW_OUTCOME_INAPPROPRIATE);
  v1::ReviewEmergencyAccessResponse reviewed;
  EXPECT_EQ(ViolatedFields(stub_->ReviewEmergencyAccess(As({"program_admin"}, "admin-1").get(),
                                                        review, &reviewed)),
            (std::set<std::string>{"note"}));
  review.set_note("no consent was needed: the team could call the emergency contact");
  EXPECT_EQ(stub_
                ->ReviewEmergencyAccess(As({"program_admin", "clinician"}, "dr-1").get(), review,
                                        &reviewed)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(
      stub_->ReviewEmergencyAccess(As({"program_admin"}, "admin-1").get(), review, &reviewed).ok());
  EXPECT_EQ(reviewed.emergency_access().state(), v1::EMERGENCY_ACCESS_STATE_ENDED);
  // An inappropriate grant ends at once.
  EXPECT_EQ(check("dr-1", v1::DATA_CATEGORY_CONTACT_DETAILS, v1::PURPOSE_TREATMENT).decision(),
            v1::ACCESS_DECISION_DENY);
  review.set_outcome(v1::EMERGENCY_ACCESS_REVIEW_OUTCOME_APPROPRIATE);
  EXPECT_EQ(stub_->ReviewEmergencyAccess(As({"program_admin"}, "admin-1").get(), review, &reviewed)
                .error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ConsentServiceTest, ListConsentsPagesNewestFirstWithHistory) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(
        RecordOk(Consent("p-list", v1::RECIPIENT_KIND_ROLE, "clinician", {v1::PURPOSE_TREATMENT},
                         {v1::DATA_CATEGORY_APPOINTMENT_STATUS})));
  }
  v1::RevokeConsentRequest revoke;
  revoke.set_consent_id(ids[0]);
  revoke.set_reason("withdrawn");
  v1::RevokeConsentResponse revoked;
  ASSERT_TRUE(stub_->RevokeConsent(As({"clinician"}).get(), revoke, &revoked).ok());
  v1::ListConsentsRequest request;
  request.set_participant_id("p-list");
  request.set_page_size(2);
  std::vector<std::string> seen;
  for (int page = 0; page < 5; ++page) {
    v1::ListConsentsResponse response;
    ASSERT_TRUE(stub_->ListConsents(As({"service"}, "svc").get(), request, &response).ok());
    for (const auto& c : response.consents()) seen.push_back(c.consent_id());
    if (response.next_page_token().empty()) break;
    request.set_page_token(response.next_page_token());
  }
  EXPECT_EQ(seen, (std::vector<std::string>{ids[4], ids[3], ids[2], ids[1], ids[0]}));
  // A token with other filters is refused.
  request.add_statuses(v1::CONSENT_STATUS_REVOKED);
  v1::ListConsentsResponse response;
  EXPECT_EQ(stub_->ListConsents(As({"service"}, "svc").get(), request, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  request.clear_page_token();
  ASSERT_TRUE(stub_->ListConsents(As({"service"}, "svc").get(), request, &response).ok());
  ASSERT_EQ(response.consents_size(), 1);
  EXPECT_EQ(response.consents(0).consent_id(), ids[0]);
}

TEST_F(ConsentServiceTest, MatchingEventsGrantAndEndAPeerSupportersAccess) {
  StartConsent(StartProducer("matching"));
  RecordOk(Consent("p-m", v1::RECIPIENT_KIND_ROLE, "peer_supporter", {v1::PURPOSE_PEER_SUPPORT},
                   {v1::DATA_CATEGORY_CHECK_IN_SUMMARIES}));
  v1::ListConsentsRequest list;
  list.set_participant_id("p-m");
  auto list_code = [&] {
    v1::ListConsentsResponse response;
    return stub_->ListConsents(As({"peer_supporter"}, "peer-sub-1").get(), list, &response)
        .error_code();
  };
  auto wait_for = [&](grpc::StatusCode code) {
    for (int i = 0; i < 100 && list_code() != code; ++i) std::this_thread::sleep_for(100ms);
    return list_code();
  };
  EXPECT_EQ(list_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Ids as the matching service gives them (UUIDs).
  const std::string match_id = "6d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
  const std::string supporter_id = "7e2d3c4b-5f6a-4b7c-9d8e-0f1a2b3c4d5e";
  peerpath::matching::v1::MatchStartedEvent started;
  started.set_match_id(match_id);
  started.set_supporter_id(supporter_id);
  started.set_supporter_subject("peer-sub-1");
  started.set_participant_id("p-m");
  Emit("matching", started, match_id);
  EXPECT_EQ(wait_for(grpc::StatusCode::OK), grpc::StatusCode::OK) << server_->Log();
  peerpath::matching::v1::MatchEndedEvent ended;
  ended.set_match_id(match_id);
  ended.set_supporter_id(supporter_id);
  ended.set_supporter_subject("peer-sub-1");
  ended.set_participant_id("p-m");
  Emit("matching", ended, match_id);
  EXPECT_EQ(wait_for(grpc::StatusCode::PERMISSION_DENIED), grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(ConsentServiceTest, BreakGlassNeedsAnOpenImmediateSafetyConcernAndEndsWithIt) {
  FakeEscalationLog escalation;
  auto opened = [&](const std::string& id, const std::string& participant,
                    peerpath::common::v1::ConcernCategory category) {
    peerpath::escalation::v1::ConcernOpenedEvent event;
    event.set_concern_id(id);
    event.set_participant_id(participant);
    event.set_category(category);
    escalation.Add(kAgency, event);
  };
  const std::string safety = "11111111-1111-4111-8111-111111111111";
  const std::string other_kind = "22222222-2222-4222-8222-222222222222";
  const std::string other_person = "33333333-3333-4333-8333-333333333333";
  opened(safety, "p-c", peerpath::common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY);
  opened(other_kind, "p-c", peerpath::common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING);
  opened(other_person, "p-d", peerpath::common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY);
  StartConsentWith(escalation);

  auto request = [&](const std::string& concern, const std::string& key) {
    v1::RequestEmergencyAccessRequest r;
    r.set_participant_id("p-c");
    r.set_concern_id(concern);
    r.set_reason("participant unreachable after a crisis call");
    r.add_data_categories(v1::DATA_CATEGORY_CONTACT_DETAILS);
    r.set_idempotency_key(key);
    v1::RequestEmergencyAccessResponse response;
    return stub_->RequestEmergencyAccess(As({"clinician"}, "dr-1").get(), r, &response)
        .error_code();
  };
  EXPECT_EQ(request("44444444-4444-4444-8444-444444444444", "k1"), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(request(other_kind, "k2"), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(request(other_person, "k3"), grpc::StatusCode::FAILED_PRECONDITION);
  // Opened just before the call: found by catching up with the log.
  const std::string fresh = "55555555-5555-4555-8555-555555555555";
  opened(fresh, "p-c", peerpath::common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY);
  EXPECT_EQ(request(fresh, "k4"), grpc::StatusCode::OK);
  EXPECT_EQ(request(safety, "k5"), grpc::StatusCode::OK);
  EXPECT_EQ(Count("SELECT count(*) FROM consent.emergency_accesses"), 2);

  // Resolving the concerns ends their grants: no more break-glass permits.
  auto permit = [&] {
    return Check("p-c", Person("dr-1", {"clinician"}), v1::DATA_CATEGORY_CONTACT_DETAILS,
                 v1::PURPOSE_TREATMENT)
        .decision();
  };
  EXPECT_EQ(permit(), v1::ACCESS_DECISION_PERMIT);
  for (const std::string& id : {fresh, safety}) {
    peerpath::escalation::v1::ConcernResolvedEvent resolved;
    resolved.set_concern_id(id);
    resolved.set_participant_id("p-c");
    escalation.Add(kAgency, resolved);
  }
  for (int i = 0; i < 100 && permit() == v1::ACCESS_DECISION_PERMIT; ++i) {
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(permit(), v1::ACCESS_DECISION_DENY);
  EXPECT_EQ(request(safety, "k6"), grpc::StatusCode::FAILED_PRECONDITION);

  // A request made while the concern's closing is being written waits for it and is refused: it
  // never grants on the open row the closing is replacing.
  const std::string closing = "66666666-6666-4666-8666-666666666666";
  opened(closing, "p-c", peerpath::common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY);
  const std::string seen =
      "SELECT count(*) FROM consent.safety_concerns WHERE concern_id = '" + closing + "'";
  for (int i = 0; i < 100 && Count(seen) == 0; ++i) std::this_thread::sleep_for(100ms);
  ASSERT_EQ(Count(seen), 1);
  std::unique_ptr<pqxx::connection> admin = db_->Admin();
  pqxx::work close(*admin);
  close.exec0("UPDATE consent.safety_concerns SET closed_at = now() WHERE concern_id = '" +
              closing + "'");
  std::atomic<bool> answered = false;
  std::thread racing([&] {
    EXPECT_EQ(request(closing, "k7"), grpc::StatusCode::FAILED_PRECONDITION);
    answered = true;
  });
  std::this_thread::sleep_for(500ms);
  EXPECT_FALSE(answered) << "answered before the closing committed";
  close.commit();
  racing.join();
  EXPECT_EQ(Count("SELECT count(*) FROM consent.emergency_accesses WHERE concern_id::text = '" +
                  closing + "'"),
            0);
}

}  // namespace
}  // namespace peerpath::testing
