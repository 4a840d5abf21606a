#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "common/authorization.h"
#include "common/event_consumer.h"
#include "common/server.h"
#include "peerpath/evaluation/v1/evaluation.grpc.pb.h"
#include "services/evaluation/measures.h"

namespace peerpath::evaluation {

// The service's own settings (main.cc reads them from flags and the environment).
struct EvaluationOptions {
  // host:port of each producer whose event log feeds the read models; empty: not consumed.
  std::string checkin_address;
  std::string matching_address;
  std::string escalation_address;
  std::string consent_address;
  int min_cell_size = 11;  // k of small-cell suppression; never below 11.
  // Empties the read models and re-reads every log from position 0 before serving.
  bool replay = false;
  absl::Duration gauge_interval = absl::Seconds(15);
};

// What GetPipelineStatus reports of one source besides the stored position (kept by a wrapper
// around the consumer's fetcher).
struct SourceTracker {
  std::mutex mu;
  int64_t head = 0;
  std::optional<absl::Time> head_observed_at;
  std::optional<absl::Time> behind_since;  // First time a head above the applied position was seen.
  std::optional<absl::Time> caught_up_at;  // Last time the consumer was caught up.
  std::string last_error_code;
  std::optional<absl::Time> last_error_at;
  int64_t last_after = -1;  // Position of the previous fetch and whether it returned events:
  bool last_page_had_events = false;  // asked again from the same place means the page failed.
  bool blocked = false;
  bool connected = false;
};

// peerpath.evaluation.v1.EvaluationService: read models from the other services' event logs,
// county-reported outcomes, and small-cell-suppressed reports. It serves no event log.
class EvaluationService final : public v1::EvaluationService::Service {
 public:
  explicit EvaluationService(ServiceContext& context, EvaluationOptions options = {});
  ~EvaluationService() override;

  // Which roles may call each RPC (object-level rules come after, in the handlers).
  static const RoleRules& Rules();

  grpc::Status RecordServiceOutcome(grpc::ServerContext* context,
                                    const v1::RecordServiceOutcomeRequest* request,
                                    v1::RecordServiceOutcomeResponse* response) override;
  grpc::Status GetProgramReport(grpc::ServerContext* context,
                                const v1::GetProgramReportRequest* request,
                                v1::GetProgramReportResponse* response) override;
  grpc::Status ExportReport(grpc::ServerContext* context, const v1::ExportReportRequest* request,
                            grpc::ServerWriter<v1::ExportReportResponse>* writer) override;
  grpc::Status ListMeasureDefinitions(grpc::ServerContext* context,
                                      const v1::ListMeasureDefinitionsRequest* request,
                                      v1::ListMeasureDefinitionsResponse* response) override;
  grpc::Status GetPipelineStatus(grpc::ServerContext* context,
                                 const v1::GetPipelineStatusRequest* request,
                                 v1::GetPipelineStatusResponse* response) override;

  // The report of the caller's agency (public for tests and the benchmark).
  absl::Status BuildReport(const std::string& agency_id, const v1::ReportPeriod& period,
                           const std::string& program_id, const std::string& pathway_key,
                           v1::ProgramReport& report);

  // Updates the operations gauges once (the background loop calls it).
  absl::Status RefreshGauges();

 private:
  struct Source {
    std::string name;          // "checkin": the consumer_positions key.
    std::string service_name;  // "peerpath.checkin.v1.CheckInService".
    v1::EventSource source;
    std::shared_ptr<SourceTracker> tracker;
    std::unique_ptr<EventConsumer> consumer;  // Null when the address is not configured.
  };

  // Consumes `source`'s log at `address` (none when empty), keyed by its name.
  template <typename Service, typename ListRequest, typename ListResponse>
  void StartConsumer(Source& source, const std::string& address, EventHandler apply,
                     ConsumerOptions options);

  ServiceContext& context_;
  EvaluationOptions options_;
  Authorizer authorizer_;
  std::vector<Source> sources_;
  std::function<absl::Time()> now_ = [] { return absl::Now(); };
  std::thread gauge_thread_;
  prometheus::Family<prometheus::Gauge>* open_concerns_ = nullptr;
  prometheus::Family<prometheus::Gauge>* overdue_concerns_ = nullptr;
  prometheus::Gauge* active_enrollments_ = nullptr;
};

// Computes the suppressed report of `agency_id` from the read models (every scope suppressed
// together, then the requested one selected). data_as_of is left to the caller.
absl::Status BuildProgramReport(Database& db, const std::string& agency_id,
                                const v1::ReportPeriod& period, const std::string& program_id,
                                const std::string& pathway_key, int min_cell_size, absl::Time now,
                                v1::ProgramReport& report);

// The CSV of a report (ExportReport): the header row, then one row per cell.
std::string CsvHeader();
std::string CsvRow(const v1::ProgramReport& report, const v1::ReportCell& cell);

}  // namespace peerpath::evaluation
