{{/*
One service's ServiceAccount, ConfigMap, Deployment, Service, PodDisruptionBudget and
NetworkPolicy: the objects of deploy/k8s/base/<service>.yaml. Called with
(dict "root" $ "name" "<service>"); the service's block of values is .Values.<service>.
*/}}
{{- define "peerpath.service" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $v := index $root.Values $name -}}
{{- $app := printf "peerpath-%s" $name -}}
{{- $image := printf "%s/%s:%s" $root.Values.image.repository $app $root.Values.image.tag -}}
{{- $np := $root.Values.networkPolicy -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $app }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "peerpath.labels" . | nindent 4 }}
# No PeerPath service talks to the Kubernetes API.
automountServiceAccountToken: false
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $app }}-config
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "peerpath.labels" . | nindent 4 }}
data:
  {{- include "peerpath.serviceConfig" . | nindent 2 }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $app }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "peerpath.labels" . | nindent 4 }}
spec:
  replicas: {{ $v.replicas }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  selector:
    matchLabels:
      app.kubernetes.io/name: {{ $app }}
  template:
    metadata:
      labels:
        {{- include "peerpath.podLabels" . | nindent 8 }}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $v.metricsPort | quote }}
        prometheus.io/path: /metrics
        # The environment comes from ConfigMaps: a change to them rolls the pods.
        checksum/config: {{ printf "%s|%s" (include "peerpath.commonConfig" $root) (include "peerpath.serviceConfig" .) | sha256sum }}
    spec:
      serviceAccountName: {{ $app }}
      automountServiceAccountToken: false
      # Service links would inject PEERPATH_<SERVICE>_PORT=tcp://... variables into the
      # PEERPATH_* namespace the binaries read their flags from.
      enableServiceLinks: false
      # Must exceed config.shutdownGrace (tools/check-deploy compares them).
      terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
      securityContext:
        runAsNonRoot: true
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
        seccompProfile:
          type: RuntimeDefault
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              app.kubernetes.io/name: {{ $app }}
      initContainers:
        # Applies pending migrations as the schema owner, then grants the runtime role its
        # privileges; the server container connects only as the runtime role.
        - name: migrate
          image: {{ $image }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["migrate"]
          env:
            - name: PEERPATH_DATABASE_URL
              valueFrom:
                secretKeyRef:
                  name: {{ $app }}-db-owner
                  key: url
            - name: PEERPATH_DATABASE_RUNTIME_ROLE
              value: peerpath_{{ $name }}
            - name: PEERPATH_DATABASE_WAIT
              value: 120s
            - name: PEERPATH_LOG_LEVEL
              value: info
          resources:
            requests:
              cpu: 50m
              memory: 64Mi
            limits:
              cpu: 500m
              memory: 128Mi
          {{- include "peerpath.containerSecurityContext" . | nindent 10 }}
      containers:
        - name: server
          image: {{ $image }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["serve"]
          ports:
            - name: grpc
              containerPort: {{ $v.grpcPort }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $v.metricsPort }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: peerpath-config
            - configMapRef:
                name: {{ $app }}-config
          env:
            - name: PEERPATH_DATABASE_URL
              valueFrom:
                secretKeyRef:
                  name: {{ $app }}-db
                  key: url
            # This service's own bearer token (role `service`) for its calls to other services.
            - name: PEERPATH_SERVICE_TOKEN_FILE
              value: /etc/peerpath/service-token/token
          volumeMounts:
            - name: jwt-keys
              mountPath: /etc/peerpath/jwt
              readOnly: true
            - name: tmp
              mountPath: /tmp
            # The whole Secret, not a subPath: a rotated token then reaches the running pod, and
            # the binary re-reads the file when it changes.
            - name: service-token
              mountPath: /etc/peerpath/service-token
              readOnly: true
            {{- if $root.Values.tls.enabled }}
            - name: tls
              mountPath: /etc/peerpath/tls
              readOnly: true
            {{- end }}
          {{- if $root.Values.tls.enabled }}
          # The kubelet's gRPC probe speaks plaintext without a client certificate: against the
          # mTLS port only a TCP check is possible (see deploy/k8s/components/mtls/probes.yaml).
          startupProbe:
            tcpSocket:
              port: grpc
            periodSeconds: 2
            failureThreshold: 60
          readinessProbe:
            tcpSocket:
              port: grpc
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 2
          livenessProbe:
            tcpSocket:
              port: grpc
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 6
          {{- else }}
          # Health is SERVING only while the database is reachable.
          startupProbe:
            grpc:
              port: {{ $v.grpcPort }}
            periodSeconds: 2
            failureThreshold: 60
          readinessProbe:
            grpc:
              port: {{ $v.grpcPort }}
              service: {{ $v.healthService }}
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 2
          # Tolerates a short database outage: restarting does not bring the database back.
          livenessProbe:
            grpc:
              port: {{ $v.grpcPort }}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 12
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          {{- include "peerpath.containerSecurityContext" . | nindent 10 }}
      volumes:
        - name: jwt-keys
          secret:
            secretName: {{ $root.Values.auth.jwtKeysSecret }}
            defaultMode: 0440
        - name: tmp
          emptyDir:
            medium: Memory
            sizeLimit: 16Mi
        - name: service-token
          secret:
            secretName: {{ $v.serviceTokenSecret }}
            optional: false
            defaultMode: 0440
            items:
              - key: token
                path: token
        {{- if $root.Values.tls.enabled }}
        - name: tls
          secret:
            secretName: {{ $app }}-tls
            defaultMode: 0440
        {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $app }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "peerpath.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    app.kubernetes.io/name: {{ $app }}
  ports:
    - name: grpc
      port: {{ $v.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ $v.metricsPort }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $app }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "peerpath.labels" . | nindent 4 }}
spec:
  {{- if ge (int $v.replicas) 2 }}
  minAvailable: {{ $root.Values.podDisruptionBudget.minAvailable }}
  {{- else }}
  # One replica: minAvailable would block every node drain.
  maxUnavailable: 1
  {{- end }}
  # A pod that never became ready must not block a node drain.
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      app.kubernetes.io/name: {{ $app }}
{{- if $np.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $app }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "peerpath.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ $app }}
  policyTypes: ["Ingress", "Egress"]
  ingress:
    # gRPC: the services that call this one, and the agency API gateway.
    - from:
        {{- range $caller := list "matching" "checkin" "consent" "escalation" "evaluation" }}
        {{- if has $name (index $root.Values $caller).calls }}
        - podSelector:
            matchLabels:
              app.kubernetes.io/name: peerpath-{{ $caller }}
        {{- end }}
        {{- end }}
        - namespaceSelector:
            matchLabels:
              {{- toYaml $np.gateway.namespaceLabels | nindent 14 }}
          podSelector:
            matchLabels:
              {{- toYaml $np.gateway.podLabels | nindent 14 }}
      ports:
        - port: {{ $v.grpcPort }}
          protocol: TCP
    # Metrics: Prometheus only.
    - from:
        - namespaceSelector:
            matchLabels:
              {{- toYaml $np.prometheus.namespaceLabels | nindent 14 }}
          podSelector:
            matchLabels:
              {{- toYaml $np.prometheus.podLabels | nindent 14 }}
      ports:
        - port: {{ $v.metricsPort }}
          protocol: TCP
  egress:
    # PostgreSQL (external).
    - to:
        - ipBlock:
            cidr: {{ $np.postgres.cidr }}
      ports:
        - port: {{ $np.postgres.port }}
          protocol: TCP
    # DNS (cluster DNS in kube-system).
    - to:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: kube-system
          podSelector:
            matchLabels:
              k8s-app: kube-dns
      ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
    {{- range $callee := $v.calls }}
    # {{ $callee }}
    - to:
        - podSelector:
            matchLabels:
              app.kubernetes.io/name: peerpath-{{ $callee }}
      ports:
        - port: {{ (index $root.Values $callee).grpcPort }}
          protocol: TCP
    {{- end }}
{{- end }}
{{- end -}}
