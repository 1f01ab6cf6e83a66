{{/*
Names are fixed, as in deploy/base: the operator is one per cluster (cluster-scoped RBAC, CRDs).
Helm refuses to install over objects of a `kubectl apply -k deploy/base` install (they carry no
release annotations): delete that install's Deployment, ServiceAccount and RBAC first (the CRDs and
the clusters stay), or annotate them for adoption (chart README, "Moving from kustomize").
*/}}

{{/* Helm's standard labels, on every object the chart creates. */}}
{{- define "ouroboros.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* Labels of the operator's objects: deploy/base's, and Helm's. */}}
{{- define "ouroboros.labels" -}}
app.kubernetes.io/name: etcd-operator
app.kubernetes.io/part-of: ouroboros
{{ include "ouroboros.helmLabels" . }}
{{- end }}

{{/* The operator Deployment's selector (immutable: the same as deploy/base's). */}}
{{- define "ouroboros.selectorLabels" -}}
app.kubernetes.io/name: etcd-operator
{{- end }}

{{/* Labels of the checkpointer's objects. */}}
{{- define "ouroboros.checkpointer.labels" -}}
app.kubernetes.io/name: etcd-checkpointer
app.kubernetes.io/part-of: ouroboros
{{ include "ouroboros.helmLabels" . }}
{{- end }}

{{/* The operator's image, also the checkpointer's. */}}
{{- define "ouroboros.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The backup sidecar's image. */}}
{{- define "ouroboros.sidecarImage" -}}
{{ .Values.sidecarImage.repository }}:{{ .Values.sidecarImage.tag | default .Chart.AppVersion }}
{{- end }}
