{{/* The name of the release's objects: the release name, "ferrovia" for `helm install ferrovia`. */}}
{{- define "ferrovia.fullname" -}}
{{- .Release.Name | trunc 53 | trimSuffix "-" -}}
{{- end -}}

{{/* The namespace of the agent's objects: namespace.name, else the release namespace. */}}
{{- define "ferrovia.namespace" -}}
{{- default .Release.Namespace .Values.namespace.name -}}
{{- end -}}

{{/* The namespace of the agents' Leases. */}}
{{- define "ferrovia.leaseNamespace" -}}
{{- .Values.leaseNamespace -}}
{{- end -}}

{{- define "ferrovia.selectorLabels" -}}
app.kubernetes.io/name: ferrovia
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferrovia.labels" -}}
{{ include "ferrovia.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ferrovia.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* Where the agent finds the password of bgp.peers[i] (a Secret key mounted as a file). */}}
{{- define "ferrovia.passwordDir" -}}
/etc/ferrovia-peer-passwords
{{- end -}}
