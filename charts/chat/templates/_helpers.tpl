{{/*
Names, labels and the values several templates share.
*/}}

{{- define "chat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
Resource name prefix: "<release>-<chart>", or just the release name when it
already contains the chart name (release "chat" gives "chat", so the Secret is
"chat-secrets" and the Redis Service "chat-redis", as in examples/). Capped at
40 characters so every suffix ("-redis-cluster-init" is the longest) fits.
*/}}
{{- define "chat.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "chat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "chat.labels" -}}
helm.sh/chart: {{ include "chat.chart" . }}
app.kubernetes.io/name: {{ include "chat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chat
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include with (list $ "api"). */}}
{{- define "chat.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "chat.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one component: include with (list $ "api"). */}}
{{- define "chat.componentLabels" -}}
{{ include "chat.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Image reference: include with (list $ .Values.api.image). */}}
{{- define "chat.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* The Secret with jwtSecret, ticketSecret and internalSecret. */}}
{{- define "chat.secretName" -}}
{{- default (printf "%s-secrets" (include "chat.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "chat.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "chat.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Namespace whose ChatClusters the operator manages ("*": all). */}}
{{- define "chat.watchNamespace" -}}
{{- default .Release.Namespace .Values.operator.watchNamespace -}}
{{- end -}}

{{/* The leader-election Lease of this release's operator. */}}
{{- define "chat.operatorLeaseName" -}}
{{- printf "%s-operator" (include "chat.fullname" .) -}}
{{- end -}}

{{- define "chat.chatClusterName" -}}
{{- default (include "chat.fullname" .) .Values.chatCluster.name -}}
{{- end -}}

{{- define "chat.redisName" -}}
{{- printf "%s-redis" (include "chat.fullname" .) -}}
{{- end -}}

{{/*
CHAT_REDIS_URLS: comma-separated redis://host:port seed nodes. Used by the
API servers, the operator and the default ChatCluster (split back into a list).
Bundled: every pod's stable DNS name through the headless Service.
*/}}
{{- define "chat.redisUrls" -}}
{{- if eq .Values.redis.mode "bundled" -}}
{{- $name := include "chat.redisName" . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.redis.bundled.replicas) -}}
{{- $urls = append $urls (printf "redis://%s-%d.%s.%s.svc.%s:6379" $name $i $name $.Release.Namespace $.Values.clusterDomain) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- if not .Values.redis.external.urls -}}
{{- fail "redis.mode=external needs redis.external.urls" -}}
{{- end -}}
{{- join "," .Values.redis.external.urls -}}
{{- end -}}
{{- end -}}

{{/* The in-cluster URL of the REST API. */}}
{{- define "chat.apiUrl" -}}
{{- printf "http://%s-api.%s.svc.%s:%d" (include "chat.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.api.service.port) -}}
{{- end -}}

{{/* Pod security of every pod of the chart (not values: not negotiable). */}}
{{- define "chat.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security of every container of the chart. */}}
{{- define "chat.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment entry for one key of the chart Secret: (list $ "ENV" "key"). */}}
{{- define "chat.secretEnv" -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "chat.secretName" (index . 0) }}
      key: {{ index . 2 }}
{{- end -}}

{{/*
Redis access (docs/kubernetes.md, "Redis access").
The bundled Redis's Secret: keys password, urls (the seed URLs with the
password in them, for the ChatCluster's spec.redis.secretKeyRef: the operator
connects with spec.redis alone) and auth.conf (requirepass/masterauth,
included by redis.conf).
*/}}
{{- define "chat.redisAuthSecretName" -}}
{{- printf "%s-redis-auth" (include "chat.fullname" .) -}}
{{- end -}}

{{/* The Secret key holding the seed URLs, as (dict "name" "key"), or "" when the URLs are plain values. */}}
{{- define "chat.redisUrlsSecretRef" -}}
{{- if eq .Values.redis.mode "bundled" -}}
{{- dict "name" (include "chat.redisAuthSecretName" .) "key" "urls" | toJson -}}
{{- else if .Values.redis.external.urlsSecret.name -}}
{{- .Values.redis.external.urlsSecret | toJson -}}
{{- end -}}
{{- end -}}

{{/*
Redis TLS files of the API servers: CA bundle and client certificate, each
mounted read-only under /etc/chat/redis-tls. The chat server pods get the
same Secrets through the ChatCluster's spec.redis.tls (the operator mounts
them); a CA from a ConfigMap reaches the API servers only.
*/}}
{{- define "chat.redisTlsMountPath" -}}/etc/chat/redis-tls{{- end -}}

{{/*
Refuses Redis settings that cannot work with what the operator supports
today (it connects to Redis with the ChatCluster's spec.redis URLs only,
and chat server pods get no volumes from the spec).
*/}}
{{- define "chat.redisAccessChecks" -}}
{{- $x := .Values.redis.external -}}
{{- if eq .Values.redis.mode "external" -}}
{{- if and (or $x.passwordSecret.name $x.username) (not $x.urlsSecret.name) -}}
{{- fail "redis.external.passwordSecret/username: the operator connects to Redis with the ChatCluster's spec.redis URLs only and cannot use them; put the credentials in the URLs (rediss://user:password@host:port) in a Secret and name it in redis.external.urlsSecret (see docs/kubernetes.md, Redis access)" -}}
{{- end -}}
{{- if and .Values.chatCluster.enabled $x.tls.caConfigMap.name -}}
{{- fail "redis.external.tls.caConfigMap: the ChatCluster takes the Redis CA from a Secret only (spec.redis.tls.caSecretKeyRef); use redis.external.tls.caSecret, or chatCluster.enabled=false (see docs/kubernetes.md, Redis access)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Redis access environment of the API servers (and the ChatCluster's env, without the file variables). */}}
{{- define "chat.redisAuthEnv" -}}
{{- if eq .Values.redis.mode "bundled" -}}
- name: CHAT_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "chat.redisAuthSecretName" . }}
      key: password
{{- else -}}
{{- with .Values.redis.external.username }}
- name: CHAT_REDIS_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- with .Values.redis.external.passwordSecret }}
{{- if .name }}
- name: CHAT_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end -}}
{{- end -}}
