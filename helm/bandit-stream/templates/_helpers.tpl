{{- define "bandit-stream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bandit-stream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "bandit-stream.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "bandit-stream.labels" -}}
app.kubernetes.io/name: {{ include "bandit-stream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "bandit-stream.selector" -}}
app.kubernetes.io/name: {{ include "bandit-stream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bandit-stream.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bandit-stream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "bandit-stream.image" -}}
{{- $registry := ((.Values.global).imageRegistry) | default "" -}}
{{- $repo := ternary (printf "%s/%s" $registry .Values.image.repository) .Values.image.repository (ne $registry "") -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The Service the ServiceMonitor scrapes carries this label; the headless one does not. */}}
{{- define "bandit-stream.metricsLabel" -}}
app.kubernetes.io/component: metrics
{{- end -}}

{{/* resources.limits.memory in MiB ("" without a limit): Kubernetes quantity suffixes. */}}
{{- define "bandit-stream.memoryLimitMiB" -}}
{{- $q := toString (dig "limits" "memory" "" (.Values.resources | default dict)) -}}
{{- if $q -}}
{{- $units := dict "" 1.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "k" 1000.0 "K" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $suffix := trimPrefix $num $q -}}
{{- if or (not $num) (not (hasKey $units $suffix)) -}}
{{- fail (printf "resources.limits.memory %q: expected a number with Ki, Mi, Gi, Ti, k, M, G or T" $q) -}}
{{- end -}}
{{- divf (mulf (float64 $num) (get $units $suffix)) 1048576.0 | floor | int -}}
{{- end -}}
{{- end -}}

{{/* Settings derived from the chart unless config sets them: the service trims its memory
at 85% of the container's limit and alerts at 75%, both before the kernel's OOM kill. */}}
{{- define "bandit-stream.derivedConfig" -}}
{{- $mib := include "bandit-stream.memoryLimitMiB" . -}}
{{- if $mib -}}
{{- if not (hasKey .Values.config "RL_MEMORY_LIMIT_MB") }}
RL_MEMORY_LIMIT_MB: {{ mulf (float64 $mib) 0.85 | floor | int | toString | quote }}
{{- end }}
{{- if not (hasKey .Values.config "RL_MEMORY_THRESHOLD_MB") }}
RL_MEMORY_THRESHOLD_MB: {{ mulf (float64 $mib) 0.75 | floor | int | toString | quote }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* A setting as the pod sees it: config, else derived, else the product's default. */}}
{{- define "bandit-stream.setting" -}}
{{- $ctx := index . 0 -}}
{{- $name := index . 1 -}}
{{- $derived := include "bandit-stream.derivedConfig" $ctx | fromYaml | default dict -}}
{{- $defaults := dict "RL_CHECKPOINT_INTERVAL_S" "30" "RL_LATENCY_THRESHOLD_MS" "50" "RL_MEMORY_THRESHOLD_MB" "1024" "RL_ERROR_RATE_THRESHOLD" "0.05" "RL_SHUTDOWN_TIMEOUT_S" "30" -}}
{{- toString (get $ctx.Values.config $name | default (get $derived $name) | default (get $defaults $name)) -}}
{{- end -}}

{{- define "bandit-stream.saslSecretKey" -}}
{{- ternary .Values.sasl.existingSecretKey "password" (ne .Values.sasl.existingSecret "") -}}
{{- end -}}

{{- define "bandit-stream.saslSecret" -}}
{{- default (printf "%s-sasl" (include "bandit-stream.fullname" .)) .Values.sasl.existingSecret -}}
{{- end -}}

{{/* The pod: shared by the StatefulSet and the Deployment. */}}
{{- define "bandit-stream.podTemplate" -}}
metadata:
  labels:
    {{- include "bandit-stream.selector" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "bandit-stream.serviceAccount" . }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
    {{- end }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  {{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
  {{- /* the service's own shutdown bound plus time for the kubelet's signal and exit */}}
  terminationGracePeriodSeconds: {{ add (ceil (float64 (include "bandit-stream.setting" (list . "RL_SHUTDOWN_TIMEOUT_S")))) 15 }}
  {{- else }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- end }}
  {{- if .Values.numbaCache.seedFrom }}
  initContainers:
    {{- /* The image's compiled kernels, copied where the read-only root lets numba use them:
    a start then loads them instead of compiling every kernel again. */}}
    - name: numba-cache
      image: {{ include "bandit-stream.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["sh", "-c", "cp -R \"$0\"/. /tmp/numba-cache/ || echo \"no compiled kernels in $0: the service compiles them at start\"", {{ .Values.numbaCache.seedFrom | quote }}]
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  {{- end }}
  containers:
    - name: bandit-stream
      image: {{ include "bandit-stream.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["run"]
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      envFrom:
        - configMapRef:
            name: {{ include "bandit-stream.fullname" . }}
        {{- with .Values.extraEnvFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      env:
        # Static membership: the pod's stable name, so a restart does not rebalance.
        - name: RL_INSTANCE_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: RL_STATE_DIR
          value: /var/lib/bandit-stream
        - name: RL_METRICS_PORT
          value: {{ .Values.metrics.port | quote }}
        - name: NUMBA_CACHE_DIR
          value: /tmp/numba-cache
        {{- if .Values.sasl.enabled }}
        - name: RL_KAFKA_SECURITY_PROTOCOL
          value: {{ ternary "SASL_SSL" "SASL_PLAINTEXT" .Values.tls.enabled | quote }}
        - name: RL_KAFKA_SASL_MECHANISM
          value: {{ .Values.sasl.mechanism | quote }}
        - name: RL_KAFKA_SASL_USERNAME
          value: {{ .Values.sasl.username | quote }}
        - name: RL_KAFKA_SASL_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ include "bandit-stream.saslSecret" . }}
              key: {{ include "bandit-stream.saslSecretKey" . }}
        {{- else if .Values.tls.enabled }}
        - name: RL_KAFKA_SECURITY_PROTOCOL
          value: "SSL"
        {{- end }}
        {{- if .Values.tls.enabled }}
        - name: RL_KAFKA_SSL_CA_LOCATION
          value: /etc/bandit-stream/tls/ca.crt
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        - name: state
          mountPath: /var/lib/bandit-stream
          {{- if and .Values.persistence.enabled .Values.persistence.existingClaim }}
          {{- /* one claim for every pod: each keeps its state in a directory of its own */}}
          subPathExpr: $(RL_INSTANCE_ID)
          {{- end }}
        - name: tmp
          mountPath: /tmp
        {{- if .Values.tls.enabled }}
        - name: tls
          mountPath: /etc/bandit-stream/tls
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir: {}
    {{- if not .Values.persistence.enabled }}
    - name: state
      emptyDir: {}
    {{- else if .Values.persistence.existingClaim }}
    - name: state
      persistentVolumeClaim:
        claimName: {{ .Values.persistence.existingClaim }}
    {{- end }}
    {{- if .Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ .Values.tls.caSecret }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
