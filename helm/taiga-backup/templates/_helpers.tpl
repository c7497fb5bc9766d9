{{/*
Names and labels.
*/}}
{{- define "taiga-backup.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "taiga-backup.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "taiga-backup.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "taiga-backup.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taiga-backup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "taiga-backup.labels" -}}
helm.sh/chart: {{ include "taiga-backup.chart" . }}
{{ include "taiga-backup.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: taiga
{{- end }}

{{- define "taiga-backup.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "taiga-backup.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The worker's image: by default the release's image for the chart's version and the server's
PostgreSQL major (.github/workflows/release.yml publishes <version>-pg<major> for each).
*/}}
{{- define "taiga-backup.image" -}}
{{- $tag := default (printf "%s-pg%d" .Chart.AppVersion (int .Values.image.pgMajor)) .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/*
The objects of the old procedure, or the ones this chart creates (secret.yaml, configmap.yaml).
*/}}
{{- define "taiga-backup.resticSecretName" -}}
{{- default (printf "%s-backup" (include "taiga-backup.fullname" .)) .Values.restic.existingSecret }}
{{- end }}

{{- define "taiga-backup.resticConfigMapName" -}}
{{- default (printf "%s-backup-config" (include "taiga-backup.fullname" .)) .Values.restic.existingConfigMap }}
{{- end }}

{{- define "taiga-backup.postgresSecretName" -}}
{{- default (printf "%s-postgres" (include "taiga-backup.fullname" .)) .Values.postgres.existingSecret }}
{{- end }}

{{- define "taiga-backup.postgresConfigMapName" -}}
{{- default (printf "%s-postgres-config" (include "taiga-backup.fullname" .)) .Values.postgres.existingConfigMap }}
{{- end }}

{{- define "taiga-backup.notifySecretName" -}}
{{- default (printf "%s-notify" (include "taiga-backup.fullname" .)) .Values.notify.existingSecret }}
{{- end }}

{{- /* The keys of the notify Secret the worker reads, one per line: an existing Secret's as listed in
notify.existingSecretKeys (the chart cannot look inside it), the chart's own as the URLs given. */ -}}
{{- define "taiga-backup.notifyKeys" -}}
{{- if .Values.notify.existingSecret }}
{{- range .Values.notify.existingSecretKeys }}
{{ . }}
{{- end }}
{{- else }}
{{- if .Values.notify.webhookUrl }}
notify-webhook-url
{{- end }}
{{- if .Values.notify.healthcheckPingUrl }}
healthcheck-ping-url
{{- end }}
{{- end }}
{{- end }}

{{- define "taiga-backup.priorityClass" -}}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{- define "taiga-backup.verifyDir" -}}
/var/lib/taiga-backup-verify
{{- end }}

{{/* XDG_CACHE_HOME of the image (docker/Dockerfile): restic's cache. */}}
{{- define "taiga-backup.cacheDir" -}}
/var/cache/taiga-backup
{{- end }}

{{- define "taiga-backup.redisName" -}}
{{- printf "%s-redis" (include "taiga-backup.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "taiga-backup.brokerSecretName" -}}
{{- if .Values.redis.bundled }}
{{- include "taiga-backup.redisName" . }}
{{- else }}
{{- default (printf "%s-broker" (include "taiga-backup.fullname" .)) .Values.redis.existingSecret }}
{{- end }}
{{- end }}

{{- define "taiga-backup.brokerSecretKey" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecretKey }}
{{- else -}}
broker-url
{{- end }}
{{- end }}

{{/*
The broker URL stored in the chart's broker Secret (external Redis, redis.existingSecret ""; the
bundled one's URL is in its own Secret, redis.yaml).
*/}}
{{- define "taiga-backup.brokerUrl" -}}
{{- required "redis.bundled is false: set redis.url or redis.existingSecret" .Values.redis.url }}
{{- end }}

{{/*
Consistency checks that the schema cannot express; included by deployment.yaml.
*/}}
{{- define "taiga-backup.validate" -}}
{{- if and .Values.redis.bundled (or .Values.redis.url .Values.redis.existingSecret) }}
{{- fail "redis.url / redis.existingSecret point at an external Redis: set redis.bundled=false" }}
{{- end }}
{{- if and .Values.redis.bundled .Values.redis.tlsSecret }}
{{- fail "the bundled Redis does not speak TLS: redis.tlsSecret needs an external Redis" }}
{{- end }}
{{- if and .Values.flower.enabled (not (or .Values.flower.basicAuth.existingSecret .Values.flower.basicAuth.credentials)) }}
{{- fail "flower.enabled needs flower.basicAuth.existingSecret or flower.basicAuth.credentials" }}
{{- end }}
{{- if and .Values.prometheusRule.enabled (not .Values.metrics.serviceMonitor.enabled) }}
{{- fail "prometheusRule.enabled needs metrics.serviceMonitor.enabled (the rules expect its target labels: namespace, service)" }}
{{- end }}
{{- if and .Values.dashboard.enabled (not .Values.metrics.service.enabled) }}
{{- fail "dashboard.enabled needs metrics.service.enabled (the dashboard shows the worker's metrics)" }}
{{- end }}
{{- if not .Values.quiesce.restore }}
{{- fail "quiesce.restore must name at least one deployment (an empty resourceNames list would grant all deployments)" }}
{{- end }}
{{- end }}

{{/*
Connection to the broker, shared by the worker and Flower: environment... (message signing is the
worker's alone: taiga-backup.signing*, on by default; Flower gets no key the worker trusts and runs
--read_only (flower.readOnly), so a login to Flower cannot queue a job)
*/}}
{{- define "taiga-backup.celeryEnv" -}}
- name: CELERY_BROKER_URL_FILE
  value: /var/run/secrets/celery-broker/{{ include "taiga-backup.brokerSecretKey" . }}
{{- if .Values.redis.tlsSecret }}
- name: CELERY_REDIS_CA_FILE
  value: /var/run/secrets/redis-tls/ca.crt
- name: CELERY_REDIS_CERT_FILE
  value: /var/run/secrets/redis-tls/tls.crt
- name: CELERY_REDIS_KEY_FILE
  value: /var/run/secrets/redis-tls/tls.key
{{- end }}
- name: LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: TAIGA_INSTANCE
  value: {{ .Values.instance | default .Release.Namespace | quote }}
{{- end }}

{{/*
...the volumes it needs...
*/}}
{{- define "taiga-backup.celeryVolumes" -}}
- name: celery-broker
  secret:
    secretName: {{ include "taiga-backup.brokerSecretName" . }}
    defaultMode: 0444
{{- if .Values.redis.tlsSecret }}
- name: redis-tls
  secret:
    secretName: {{ .Values.redis.tlsSecret }}
    defaultMode: 0444
{{- end }}
- name: tmp
  emptyDir: {}
- name: state
  emptyDir: {}
{{- end }}

{{/*
restic's cache (XDG_CACHE_HOME, mounted by celeryVolumeMounts) in the worker: an emptyDir, or a PVC
(restic.cache.persistence) so a restarted pod does not read every index and snapshot from the
repository again. Flower mounts an emptyDir of its own there.
*/}}
{{- define "taiga-backup.resticCacheClaim" -}}
{{- with .Values.restic.cache.persistence }}{{ if .enabled }}
{{- default (printf "%s-restic-cache" (include "taiga-backup.fullname" $)) .existingClaim }}
{{- end }}{{ end }}
{{- end }}

{{- define "taiga-backup.resticCacheVolume" -}}
- name: cache
{{- with include "taiga-backup.resticCacheClaim" . }}
  persistentVolumeClaim:
    claimName: {{ . }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}

{{/*
An init container that gives a fresh volume's root (root's) to the worker's user, and nothing else:
root with the CHOWN capability only. dict: root (the context), volume (its name), path.
*/}}
{{- define "taiga-backup.ownerInit" -}}
{{- $v := .root.Values }}
- name: {{ .volume }}-owner
  image: {{ include "taiga-backup.image" .root }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  command: ["chown", {{ printf "%v:%v" $v.podSecurityContext.runAsUser $v.podSecurityContext.runAsGroup | quote }}, {{ .path | quote }}]
  securityContext:
    runAsUser: 0
    runAsNonRoot: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
      add: ["CHOWN"]
  resources:
    requests:
      cpu: 10m
      memory: 16Mi
    limits:
      memory: 32Mi
  volumeMounts:
    - name: {{ .volume }}
      mountPath: {{ .path }}
{{- end }}

{{/*
...and where they are mounted. /var/lib/taiga-backup (working directory, Celery beat's schedule file)
and /var/cache/taiga-backup (XDG_CACHE_HOME: restic's cache) are the image's writable directories
(docker/Dockerfile); the root file system is read-only.
*/}}
{{- define "taiga-backup.celeryVolumeMounts" -}}
- name: celery-broker
  mountPath: /var/run/secrets/celery-broker
  readOnly: true
{{- if .Values.redis.tlsSecret }}
- name: redis-tls
  mountPath: /var/run/secrets/redis-tls
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
- name: state
  mountPath: /var/lib/taiga-backup
- name: cache
  mountPath: {{ include "taiga-backup.cacheDir" . }}
{{- end }}

{{/*
Message signing, for the worker only: on with a generated pair (signing.generate, signing.yaml) or
signing.existingSecret. Environment, volumes and mounts: the key and certificate, and the trust store
(a directory: the worker's own certificate and signing.trustedCertificates).
*/}}
{{- define "taiga-backup.signingOn" -}}
{{- if or .Values.signing.existingSecret .Values.signing.generate }}true{{ end }}
{{- end }}

{{- define "taiga-backup.signingSecretName" -}}
{{- default (printf "%s-signing" (include "taiga-backup.fullname" .)) .Values.signing.existingSecret }}
{{- end }}

{{- define "taiga-backup.signingEnv" -}}
{{- if include "taiga-backup.signingOn" . }}
- name: CELERY_SECURITY_KEY_FILE
  value: /var/run/secrets/celery-signing/tls.key
- name: CELERY_SECURITY_CERT_FILE
  value: /var/run/secrets/celery-signing/tls.crt
- name: CELERY_SECURITY_CERT_STORE
  value: /var/run/secrets/celery-trust
{{- end }}
{{- end }}

{{- define "taiga-backup.signingVolume" -}}
{{- if include "taiga-backup.signingOn" . }}
- name: celery-signing
  secret:
    secretName: {{ include "taiga-backup.signingSecretName" . }}
    defaultMode: 0444
- name: celery-trust
  projected:
    defaultMode: 0444
    sources:
      - secret:
          name: {{ include "taiga-backup.signingSecretName" . }}
          items:
            - key: tls.crt
              path: worker.crt
      {{- if .Values.signing.trustedCertificates }}
      - configMap:
          name: {{ include "taiga-backup.fullname" . }}-signing-trust
      {{- end }}
{{- end }}
{{- end }}

{{- define "taiga-backup.signingVolumeMount" -}}
{{- if include "taiga-backup.signingOn" . }}
- name: celery-signing
  mountPath: /var/run/secrets/celery-signing
  readOnly: true
- name: celery-trust
  mountPath: /var/run/secrets/celery-trust
  readOnly: true
{{- end }}
{{- end }}
