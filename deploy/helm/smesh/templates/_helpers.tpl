{{/* The install namespace: fixed, because RBAC and the controller name its accounts. */}}
{{- define "smesh.namespace" -}}smesh-system{{- end -}}

{{- define "smesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "smesh.labels" -}}
app.kubernetes.io/part-of: smesh
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
