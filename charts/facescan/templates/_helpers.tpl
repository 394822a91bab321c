{{- define "facescan.name" -}}facescan{{- end -}}

{{- define "facescan.fullname" -}}
{{- if contains "facescan" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-facescan" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "facescan.labels" -}}
app.kubernetes.io/name: facescan-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: facescan
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "facescan.selectorLabels" -}}
app.kubernetes.io/name: facescan-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "facescan.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "facescan.secretNames" -}}
{{- if .Values.database.secretNames -}}
{{- toJson .Values.database.secretNames -}}
{{- else -}}
{{- toJson (list .Values.database.existingSecret) -}}
{{- end -}}
{{- end -}}

{{/* Rules the operator needs where FaceScans live: its Jobs, their Pods, Events, and
     reading the database Secret named by each FaceScan. */}}
{{- define "facescan.namespacedRules" -}}
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [""]
  resources: [secrets]
  resourceNames: {{ include "facescan.secretNames" . }}
  verbs: [get]
{{- end -}}
