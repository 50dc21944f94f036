{{/* The chart's name, overridable with nameOverride. */}}
{{- define "zeroth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the release's namespaced objects: the release name, suffixed with the chart's name unless it already holds it. */}}
{{- define "zeroth.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "zeroth.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "zeroth.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Name of the release's cluster-scoped objects (ClusterRole, ClusterRoleBinding). Release names are
unique per namespace only, so the namespace is part of it: two releases never share a ClusterRole.
*/}}
{{- define "zeroth.clusterScopedName" -}}
{{- printf "%s-%s" .Release.Namespace (include "zeroth.fullname" .) | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{- define "zeroth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selects the operator's pod. `component: operator` keeps it apart from a run's pods, which also carry
app.kubernetes.io/name=zeroth (and the run's name as instance, which may equal the release's).
*/}}
{{- define "zeroth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zeroth.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "zeroth.labels" -}}
{{ include "zeroth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "zeroth.chart" . | quote }}
{{- end -}}

{{- define "zeroth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "zeroth.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: the existing ServiceAccount to run as (serviceAccount.create is false)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "zeroth.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
