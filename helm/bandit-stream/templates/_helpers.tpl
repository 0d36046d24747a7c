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

{{- define "bandit-stream.saslSecret" -}}
{{- default (printf "%s-sasl" (include "bandit-stream.fullname" .)) .Values.sasl.existingSecret -}}
{{- end -}}

{{/* The pod: shared by the StatefulSet and the Deployment. */}}
{{- define "bandit-stream.podTemplate" -}}
metadata:
  labels:
    {{- include "bandit-stream.selector" . | nindent 4 }}
  annotations:
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "bandit-stream.serviceAccount" . }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  {{- /* the service's own shutdown bound plus time for the kubelet's signal and exit */}}
  terminationGracePeriodSeconds: {{ add (ceil (float64 (default 30 (get .Values.config "RL_SHUTDOWN_TIMEOUT_S")))) 15 }}
  containers:
    - name: bandit-stream
      image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["run"]
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      envFrom:
        - configMapRef:
            name: {{ include "bandit-stream.fullname" . }}
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
              key: {{ ternary .Values.sasl.existingSecretKey "password" (ne .Values.sasl.existingSecret "") }}
        {{- else if .Values.tls.enabled }}
        - name: RL_KAFKA_SECURITY_PROTOCOL
          value: "SSL"
        {{- end }}
        {{- if .Values.tls.enabled }}
        - name: RL_KAFKA_SSL_CA_LOCATION
          value: /etc/bandit-stream/tls/ca.crt
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
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        - name: state
          mountPath: /var/lib/bandit-stream
        - name: tmp
          mountPath: /tmp
        {{- if .Values.tls.enabled }}
        - name: tls
          mountPath: /etc/bandit-stream/tls
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir: {}
    {{- if not .Values.persistence.enabled }}
    - name: state
      emptyDir: {}
    {{- end }}
    {{- if .Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ .Values.tls.caSecret }}
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
{{- end -}}
