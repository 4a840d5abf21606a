#!/usr/bin/env bash
# Prints the development Secrets of the local overlay, as YAML for `kubectl apply -f -`:
#   peerpath-jwt-keys                  the public key of the development signing key
#   peerpath-<service>-service-token   per service, a development token (role `service`, 30 days)
#                                      for its calls to the other services
#   peerpath-<service>-tls             per service, a certificate from a development CA naming
#                                      peerpath-<service> and peerpath-<service>.<namespace>.svc
# (the database Secrets need your passwords: see kustomization.yaml).
#
#   deploy/k8s/overlays/local/dev-secrets.sh | kubectl apply -f -
#
# The signing key is tools/run-local's (.local/dev-keys; made here, the same way, when missing), so
# tokens minted for tools/run-local work against the cluster too. The CA and certificates are
# kept in .local/dev-tls/<namespace>. Run it again to renew the tokens (the services re-read the
# file; no restart); delete .local/dev-tls/<namespace> for new certificates (then restart the
# Deployments: certificates are read at start-up). Needs openssl, kubectl (used offline:
# `create secret --dry-run=client`) and peerpathctl from the build. Environment: NAMESPACE
# (peerpath-local), PEERPATH_BUILD (build), PEERPATH_LOCAL_DIR (.local).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../../.." && pwd)"
namespace="${NAMESPACE:-peerpath-local}"
build="${PEERPATH_BUILD:-$root/build}"
local_dir="${PEERPATH_LOCAL_DIR:-$root/.local}"
peerpathctl="$build/tools/peerpathctl/peerpathctl"
services=(matching checkin consent escalation evaluation)

for tool in openssl kubectl "$peerpathctl"; do
  command -v "$tool" >/dev/null || { echo "dev-secrets.sh: $tool not found" >&2; exit 2; }
done

keys="$local_dir/dev-keys"
if [ ! -f "$keys/signing-key.pem" ]; then
  mkdir -p "$keys" && chmod 700 "$keys"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$keys/signing-key.pem" 2>/dev/null
  openssl pkey -in "$keys/signing-key.pem" -pubout -out "$keys/public-keys.pem" 2>/dev/null
fi

tls="$local_dir/dev-tls/$namespace"
if [ ! -f "$tls/ca.crt" ]; then
  mkdir -p "$tls" && chmod 700 "$tls"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tls/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$tls/ca.key" -subj "/CN=PeerPath development CA ($namespace)" \
    -days 365 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -out "$tls/ca.crt" 2>/dev/null
fi

secret() { kubectl -n "$namespace" create secret generic "$@" --dry-run=client -o yaml; }

secret peerpath-jwt-keys --from-file=keys="$keys/public-keys.pem"
tokens="$(mktemp -d)"
trap 'rm -rf "$tokens"' EXIT
for s in "${services[@]}"; do
  app="peerpath-$s"
  "$peerpathctl" token --key="$keys/signing-key.pem" --agency=peerpath --role=service \
    --sub="$app" --ttl=720h >"$tokens/$s"
  echo "---"
  secret "$app-service-token" --from-file=token="$tokens/$s"
  if [ ! -f "$tls/$s.crt" ]; then
    # Server and client auth: the same certificate serves the service's port and its calls.
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tls/$s.key" 2>/dev/null
    openssl req -new -key "$tls/$s.key" -subj "/CN=$app" -out "$tls/$s.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth,clientAuth" \
      "subjectAltName=DNS:$app,DNS:$app.$namespace.svc,DNS:$app.$namespace.svc.cluster.local" \
      >"$tls/$s.ext"
    openssl x509 -req -in "$tls/$s.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
      -days 365 -extfile "$tls/$s.ext" -out "$tls/$s.crt" 2>/dev/null
    rm -f "$tls/$s.csr" "$tls/$s.ext"
  fi
  echo "---"
  secret "$app-tls" --type=kubernetes.io/tls --from-file=tls.crt="$tls/$s.crt" \
    --from-file=tls.key="$tls/$s.key" --from-file=ca.crt="$tls/ca.crt"
done
