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

{{/* Rules the operator needs where FaceScans live, each with who calls it (kopf, or
     the operator's own calls in facescan_operator/k8s/kube.py). */}}
{{- define "facescan.namespacedRules" -}}
# kopf: lists then watches FaceScans; adds and removes its finalizer and annotations
# by PATCH (merge and JSON patch), never PUT
- apiGroups: [facescan.io]
  resources: [facescans]
  verbs: [list, watch, patch]
# kopf: writes status (phase, conditions, counts) by PATCH on the subresource
- apiGroups: [facescan.io]
  resources: [facescans/status]
  verbs: [patch]
# API server: the operator's Jobs carry an ownerReference with blockOwnerDeletion to
# their FaceScan, which OwnerReferencesPermissionEnforcement allows only to who may
# update the owner's finalizers
- apiGroups: [facescan.io]
  resources: [facescans/finalizers]
  verbs: [update]
# operator: lists a FaceScan's Jobs by label, creates them, deletes ended ones
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, create, delete]
# operator: lists the pods of its Jobs by label (how each ended: OOMKilled, evicted)
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# kopf: posts Events on FaceScans (create); operator: lists Events to learn why a
# Job's pods are not created
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
# operator: reads the database URL from the Secret(s) a FaceScan names, by name only
- apiGroups: [""]
  resources: [secrets]
  resourceNames: {{ include "facescan.secretNames" . }}
  verbs: [get]
{{- end -}}

{{/* The HTTP API (api.enabled): its own name and component, so that neither Deployment
     selects the other's pods. */}}
{{- define "facescan.apiSelectorLabels" -}}
app.kubernetes.io/name: facescan-api
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "facescan.apiLabels" -}}
{{ include "facescan.apiSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: api
app.kubernetes.io/part-of: facescan
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
