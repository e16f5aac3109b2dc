{{/* Names, labels and the pieces every llnm pod shares. */}}

{{- define "llnm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llnm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "llnm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "llnm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "llnm.selectorLabels" (dict "ctx" $ "component" "worker") */}}
{{- define "llnm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llnm.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "llnm.componentLabels" -}}
{{ include "llnm.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "llnm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "llnm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "llnm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "llnm.spoolClaimName" -}}
{{- default (printf "%s-spool" (include "llnm.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{- define "llnm.redisHost" -}}
{{- printf "%s-redis" (include "llnm.fullname" .) -}}
{{- end -}}

{{/* The Secret and key holding the in-chart Redis password. */}}
{{- define "llnm.redisPasswordSecret" -}}
{{- default (printf "%s-redis" (include "llnm.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/* The Secret and key holding LLNM_BROKER_URL of an external Redis. */}}
{{- define "llnm.brokerUrlSecret" -}}
{{- default (printf "%s-broker" (include "llnm.fullname" .)) .Values.redis.external.existingSecret -}}
{{- end -}}

{{/* The Secret and key holding LLNM_DESTINATIONS (DICOMweb URLs may carry credentials). */}}
{{- define "llnm.destinationsSecret" -}}
{{- default (printf "%s-destinations" (include "llnm.fullname" .)) .Values.destinations.existingSecret -}}
{{- end -}}

{{/* Secrets read into environment variables: a process reads those only at start. Reloader restarts
     the pods when one changes (reloader.enabled); TLS files are re-read by the services themselves. */}}
{{- define "llnm.envSecrets" -}}
{{- $names := list -}}
{{- if .Values.redis.enabled -}}
{{- $names = append $names (include "llnm.redisPasswordSecret" .) -}}
{{- else -}}
{{- $names = append $names (include "llnm.brokerUrlSecret" .) -}}
{{- end -}}
{{- if or .Values.destinations.value .Values.destinations.existingSecret -}}
{{- $names = append $names (include "llnm.destinationsSecret" .) -}}
{{- end -}}
{{- if and .Values.console.enabled .Values.console.existingSecret -}}
{{- $names = append $names .Values.console.existingSecret -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{/* Metrics port of worker process i (0-based) in the listener pod: right after metricsPort. */}}
{{- define "llnm.workerMetricsPort" -}}
{{- add .ctx.Values.metricsPort 1 .index -}}
{{- end -}}

{{/* NetworkPolicy port entries of every metrics port of the listener pod. */}}
{{- define "llnm.metricsPortRefs" -}}
- port: metrics
  protocol: TCP
{{- range $i, $_ := until (int .Values.worker.processes) }}
- port: metrics-w{{ $i }}
  protocol: TCP
{{- end }}
{{- if .Values.console.enabled }}
- port: metrics-console
  protocol: TCP
{{- end }}
{{- end -}}

{{- define "llnm.tlsSecret" -}}
{{- default (printf "%s-tls" (include "llnm.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{- define "llnm.tritonUrl" -}}
{{- if eq .Values.triton.protocol "grpc" -}}
{{- printf "grpc://%s-triton:8001" (include "llnm.fullname" .) -}}
{{- else -}}
{{- printf "http://%s-triton:8000" (include "llnm.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Checks of value combinations that cannot work (types and names: values.schema.json); rendered
     once, from the ConfigMap. */}}
{{- define "llnm.validate" -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) -}}
{{- fail "redis.enabled=false needs redis.external.url or redis.external.existingSecret (the broker URL)" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (or (not .Values.tls.cert) (not .Values.tls.key)) -}}
{{- fail "tls.enabled needs tls.existingSecret, or tls.cert and tls.key" -}}
{{- end -}}
{{- if and .Values.tls.enabled .Values.tls.requireClientCert (not .Values.tls.existingSecret) (not .Values.tls.ca) -}}
{{- fail "tls.requireClientCert needs tls.ca (or ca.crt in tls.existingSecret)" -}}
{{- end -}}
{{- if and (eq .Values.triton.modelRepository.source "pvc") (not .Values.triton.modelRepository.existingClaim) -}}
{{- fail "triton.modelRepository.source=pvc needs triton.modelRepository.existingClaim" -}}
{{- end -}}
{{- if and .Values.triton.autoscaling.enabled (not .Values.triton.enabled) -}}
{{- fail "triton.autoscaling.enabled needs triton.enabled (without Triton the workers run the models in-process)" -}}
{{- end -}}
{{- if and .Values.triton.autoscaling.enabled (lt (int .Values.triton.autoscaling.maxReplicas) (int .Values.triton.autoscaling.minReplicas)) -}}
{{- fail "triton.autoscaling.maxReplicas must be at least triton.autoscaling.minReplicas" -}}
{{- end -}}
{{- if and .Values.listener.requireAllowList (not (trim (toString (default "" .Values.config.LLNM_ALLOWED_AES)))) -}}
{{- fail "listener.requireAllowList: set config.LLNM_ALLOWED_AES to the calling AE titles (optionally AE@IP) of the PACS and modalities that may send, e.g. \"PACS@10.20.0.15\"" -}}
{{- end -}}
{{- if eq .Values.persistence.accessMode "ReadWriteMany" -}}
{{- fail "persistence.accessMode=ReadWriteMany is not supported: the spool holds the SQLite (WAL) audit trail, which network file systems do not lock safely; the listener and its workers share one pod, so ReadWriteOnce or ReadWriteOncePod is all they need (docs/operations.md, \"Topology\")" -}}
{{- end -}}
{{- $last := int (include "llnm.workerMetricsPort" (dict "ctx" . "index" (sub (int .Values.worker.processes) 1))) -}}
{{- if and (le (int .Values.metricsPort) (int .Values.dicomPort)) (ge $last (int .Values.dicomPort)) -}}
{{- fail (printf "dicomPort %v falls among the metrics ports %v-%v (metricsPort, then one per worker process): move one of them" .Values.dicomPort .Values.metricsPort $last) -}}
{{- end -}}
{{- if gt $last 65535 -}}
{{- fail "metricsPort + worker.processes is above 65535" -}}
{{- end -}}
{{- range $k, $v := .Values.config -}}
{{- if has $k (list "LLNM_DATA_DIR" "LLNM_BROKER_URL" "LLNM_INFERENCE_BACKEND" "LLNM_TRITON_URL" "LLNM_PORT" "LLNM_METRICS_PORT" "LLNM_TLS_CERT" "LLNM_TLS_KEY" "LLNM_TLS_CA" "LLNM_WORKER_CONCURRENCY" "LLNM_CONSOLE_PORT" "LLNM_CONSOLE_BIND_ADDRESS" "LLNM_CONSOLE_SECURE_COOKIES" "LLNM_CONSOLE_USERS_FILE") -}}
{{- fail (printf "config.%s is set by the chart; use the structured values instead (see values.yaml)" $k) -}}
{{- end -}}
{{- if eq $k "LLNM_DESTINATIONS" -}}
{{- fail "config.LLNM_DESTINATIONS is set by the chart from a Secret (DICOMweb URLs may carry credentials): use destinations.value or destinations.existingSecret" -}}
{{- end -}}
{{- /* secrets: the ConfigMap holds them in clear text */ -}}
{{- if eq $k "LLNM_CONSOLE_OIDC_CLIENT_SECRET" -}}
{{- fail "config.LLNM_CONSOLE_OIDC_CLIENT_SECRET is a secret (the ConfigMap is clear text): put it in console.existingSecret, key oidc-client-secret" -}}
{{- end -}}
{{- if eq $k "LLNM_CONSOLE_SECRET_KEY" -}}
{{- fail "config.LLNM_CONSOLE_SECRET_KEY is a secret (the ConfigMap is clear text): put it in console.existingSecret, key secret-key" -}}
{{- end -}}
{{- if eq $k "LLNM_NOTIFY_SMTP_URL" -}}
{{- fail "config.LLNM_NOTIFY_SMTP_URL may carry a password (the ConfigMap is clear text): give it to the workers, which send the e-mail, from a Secret with worker.extraEnv ({name: LLNM_NOTIFY_SMTP_URL, valueFrom: {secretKeyRef: {name: ..., key: ...}}})" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment of the listener and worker containers, beyond the ConfigMap (each container adds its
     own LLNM_METRICS_PORT). */}}
{{- define "llnm.env" -}}
- name: LLNM_DATA_DIR
  value: /var/lib/llnm
- name: LLNM_PORT
  value: {{ .Values.dicomPort | quote }}
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "llnm.redisPasswordSecret" . }}
      key: {{ .Values.redis.auth.existingSecretPasswordKey }}
- name: LLNM_BROKER_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "llnm.redisHost" .) | quote }}
{{- else }}
- name: LLNM_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "llnm.brokerUrlSecret" . }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- end }}
{{- if .Values.triton.enabled }}
- name: LLNM_INFERENCE_BACKEND
  value: triton
- name: LLNM_TRITON_URL
  value: {{ include "llnm.tritonUrl" . | quote }}
{{- else }}
- name: LLNM_INFERENCE_BACKEND
  value: onnxruntime
{{- end }}
{{- if .Values.tls.enabled }}
- name: LLNM_TLS_CERT
  value: /etc/llnm/tls/tls.crt
- name: LLNM_TLS_KEY
  value: /etc/llnm/tls/tls.key
{{- if .Values.tls.requireClientCert }}
{{- /* the listener: require client certificates signed by it (the workers: llnm.senderTlsCaEnv) */}}
- name: LLNM_TLS_CA
  value: /etc/llnm/tls/ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{/* LLNM_TLS_CA of the workers without mutual TLS (with it, llnm.env sets it): their sender verifies the
     PACS's certificate against it, a private CA included. From the chart's Secret when tls.ca is set; a
     Secret of the site's is known to hold ca.crt only with requireClientCert. */}}
{{- define "llnm.senderTlsCaEnv" -}}
{{- if and .Values.tls.enabled (not .Values.tls.requireClientCert) .Values.tls.ca (not .Values.tls.existingSecret) }}
- name: LLNM_TLS_CA
  value: /etc/llnm/tls/ca.crt
{{- end }}
{{- end -}}

{{/* LLNM_DESTINATIONS of the workers and the console (its re-send); the listener sends nothing: it does
     not get them. */}}
{{- define "llnm.destinationsEnv" -}}
{{- if or .Values.destinations.value .Values.destinations.existingSecret }}
- name: LLNM_DESTINATIONS
  valueFrom:
    secretKeyRef:
      name: {{ include "llnm.destinationsSecret" . }}
      key: {{ .Values.destinations.existingSecretKey }}
{{- end }}
{{- end -}}

{{/* Volumes of the listener and worker pods. */}}
{{- define "llnm.volumes" -}}
- name: spool
{{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "llnm.spoolClaimName" . }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "llnm.tlsSecret" . }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "llnm.volumeMounts" -}}
- name: spool
  mountPath: /var/lib/llnm
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/llnm/tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Liveness, readiness and startup probes on a container's metrics port (its name: .port).
     /healthz fails when the process stops answering or, in the listener, when its accept loop or
     completion loop falls silent; /readyz holds only the spool (a Redis or Triton outage never takes
     the pod out of the DICOM Service: the listener keeps receiving and spooling). */}}
{{- define "llnm.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: 5
  failureThreshold: 60
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}
