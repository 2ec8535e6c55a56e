{{/* Names */}}
{{- define "lipsync-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lipsync-operator.fullname" -}}
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

{{- define "lipsync-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lipsync-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lipsync-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lipsync-operator.labels" -}}
helm.sh/chart: {{ include "lipsync-operator.chart" . }}
{{ include "lipsync-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lipsync
{{- end }}

{{- define "lipsync-operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "lipsync-operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lipsync-operator.runnerServiceAccountName" -}}
{{- if and (not .Values.runner.serviceAccount.create) (not .Values.runner.serviceAccount.name) }}
{{- fail "runner.serviceAccount.name is needed when runner.serviceAccount.create is false: name the ServiceAccount that exists in each job namespace" }}
{{- end }}
{{- default (printf "%s-runner" (include "lipsync-operator.fullname" .) | trunc 63 | trimSuffix "-") .Values.runner.serviceAccount.name }}
{{- end }}

{{/* repository[:tag][@digest]; the tag defaults to the chart's appVersion */}}
{{- define "lipsync-operator.imageRef" -}}
{{- $img := index . 0 }}{{- $appVersion := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $appVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "lipsync-operator.image" -}}
{{- include "lipsync-operator.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{- define "lipsync-operator.runnerImage" -}}
{{- if .Values.runner.image.repository }}
{{- include "lipsync-operator.imageRef" (list .Values.runner.image (default .Chart.AppVersion .Values.image.tag)) }}
{{- else }}
{{- include "lipsync-operator.image" . }}
{{- end }}
{{- end }}

{{/* Namespaces that get the runner ServiceAccount (and the chart-made S3 Secret) */}}
{{- define "lipsync-operator.jobNamespaces" -}}
{{- $ns := .Values.runner.jobNamespaces | default (list .Release.Namespace) }}
{{- toJson (uniq $ns) }}
{{- end }}

{{- define "lipsync-operator.s3SecretName" -}}
{{- if and .Values.s3.existingSecret .Values.s3.createSecret }}
{{- fail "s3.existingSecret and s3.createSecret are exclusive: name your Secret, or let the chart create one" }}
{{- end }}
{{- if .Values.s3.existingSecret }}
{{- .Values.s3.existingSecret }}
{{- else if .Values.s3.createSecret }}
{{- printf "%s-s3" (include "lipsync-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The operator's RBAC rules: the ONE declared list, in Role-rule form, sorted by (apiGroup,
resource), verbs sorted. It must equal lipsync_operator.permissions.RULES (tests/test_chart.py
compares the rendered ClusterRole with it). kopf runs standalone (no peering objects) with
resource scanning off, so it needs no access to CRDs or namespaces.
*/}}
{{- define "lipsync-operator.rules" -}}
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "delete", "get", "list", "watch"]
- apiGroups: ["lipsync.dev"]
  resources: ["lipsyncjobs"]
  verbs: ["list", "patch", "watch"]
- apiGroups: ["lipsync.dev"]
  resources: ["lipsyncjobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["lipsync.dev"]
  resources: ["lipsyncjobs/status"]
  verbs: ["patch"]
{{- end }}
