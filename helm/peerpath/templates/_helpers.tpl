{{/*
Labels of every object of the release. Called with the root context.
*/}}
{{- define "peerpath.commonLabels" -}}
app.kubernetes.io/part-of: peerpath
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
Labels of one service's objects. Called with (dict "root" $ "name" "<service>").
Selectors use app.kubernetes.io/name only, as deploy/k8s does.
*/}}
{{- define "peerpath.labels" -}}
app.kubernetes.io/name: peerpath-{{ .name }}
app.kubernetes.io/component: {{ .name }}
{{ include "peerpath.commonLabels" .root }}
{{- end -}}

{{/*
The flags every service shares, as environment variables (ConfigMap peerpath-config).
*/}}
{{- define "peerpath.commonConfig" -}}
PEERPATH_JWT_KEYS_FILE: /etc/peerpath/jwt/keys
PEERPATH_JWT_ISSUER: {{ .Values.auth.jwtIssuer | quote }}
PEERPATH_JWT_AUDIENCE: {{ .Values.auth.jwtAudience | quote }}
PEERPATH_JWT_LEEWAY: {{ .Values.auth.jwtLeeway | quote }}
PEERPATH_ALLOW_DEV_TOKENS: {{ .Values.auth.allowDevTokens | quote }}
{{- if .Values.tls.enabled }}
PEERPATH_TLS_CERT_FILE: /etc/peerpath/tls/tls.crt
PEERPATH_TLS_KEY_FILE: /etc/peerpath/tls/tls.key
PEERPATH_TLS_CA_FILE: /etc/peerpath/tls/ca.crt
PEERPATH_ALLOW_PLAINTEXT: "false"
# Calls to the other services: TLS with the pod's own certificate as client certificate.
PEERPATH_CLIENT_TLS_CA_FILE: /etc/peerpath/tls/ca.crt
PEERPATH_CLIENT_TLS_CERT_FILE: /etc/peerpath/tls/tls.crt
PEERPATH_CLIENT_TLS_KEY_FILE: /etc/peerpath/tls/tls.key
{{- else }}
PEERPATH_ALLOW_PLAINTEXT: "true"
{{- end }}
PEERPATH_MIGRATE_ON_START: "false"
PEERPATH_SHUTDOWN_GRACE: {{ .Values.config.shutdownGrace | quote }}
PEERPATH_DB_POOL_SIZE: {{ .Values.config.dbPoolSize | quote }}
PEERPATH_MAX_CALL_DURATION: {{ .Values.config.maxCallDuration | quote }}
PEERPATH_ENABLE_REFLECTION: {{ .Values.config.enableReflection | quote }}
PEERPATH_LOG_LEVEL: {{ .Values.config.logLevel | quote }}
{{- end -}}

{{/*
The container security context of every PeerPath container.
*/}}
{{- define "peerpath.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  privileged: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/*
Labels of one service's pods: no chart version, so a chart upgrade alone does not roll them.
*/}}
{{- define "peerpath.podLabels" -}}
app.kubernetes.io/name: peerpath-{{ .name }}
app.kubernetes.io/component: {{ .name }}
app.kubernetes.io/part-of: peerpath
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}


{{/*
Where the other services call one service: its `address` value, or its Service in the release
namespace. Called with (dict "root" $ "name" "<service>").
*/}}
{{- define "peerpath.address" -}}
{{- $v := index .root.Values .name -}}
{{- default (printf "peerpath-%s:%v" .name $v.grpcPort) $v.address -}}
{{- end -}}

{{/*
One service's own flags (ConfigMap peerpath-<service>-config): its ports and the addresses of the
services it calls. Called with (dict "root" $ "name" "<service>").
*/}}
{{- define "peerpath.serviceConfig" -}}
{{- $root := .root -}}
{{- $v := index $root.Values .name -}}
PEERPATH_LISTEN_ADDRESS: {{ printf "0.0.0.0:%v" $v.grpcPort | quote }}
PEERPATH_METRICS_ADDRESS: {{ printf "0.0.0.0:%v" $v.metricsPort | quote }}
{{- range $callee := $v.calls }}
PEERPATH_{{ upper $callee }}_ADDRESS: {{ include "peerpath.address" (dict "root" $root "name" $callee) | quote }}
{{- end }}
{{- end -}}
