#pragma once

// The one start-up path of every PeerPath binary:
//
//   peerpath-<service> [serve]   start gRPC (domain service, operations, health, optional
//                                reflection) and metrics; connect to PostgreSQL and apply
//                                migrations in the background; report SERVING only then;
//                                on SIGTERM/SIGINT go NOT_SERVING, let in-flight calls finish
//                                within --shutdown_grace, exit 0.
//   peerpath-<service> migrate   apply pending migrations and exit (0 on success).

#include <grpcpp/impl/service_type.h>
#include <prometheus/registry.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/auth.h"
#include "common/config.h"
#include "common/db.h"
#include "common/migrations.h"
#include "common/stop_signal.h"

namespace peerpath {

// What a service's handlers may use; all of it outlives the handlers.
struct ServiceContext {
  const ServerConfig& config;
  Database& db;
  prometheus::Registry& metrics;
  const TokenVerifier& verifier;  // Turns a call's bearer token into the caller's Identity.
  // Notified when shutdown starts: long-lived streams end and background loops stop.
  const StopSignal& stopping;
};

struct ServiceDefinition {
  std::string name;           // "consent": binary suffix, schema name, log `service` field.
  std::string grpc_service;   // "peerpath.consent.v1.ConsentService": health service name.
  int default_grpc_port = 0;  // Loopback port used when --listen_address is not given.
  int default_metrics_port = 0;
  const std::vector<Migration>* migrations = nullptr;  // The service's own track.
  std::function<std::vector<std::unique_ptr<grpc::Service>>(ServiceContext&)> make_services;
};

// Runs the binary; returns the process exit code.
int RunService(const ServiceDefinition& definition, int argc, char** argv);

}  // namespace peerpath
