{{/* The CNI plugin exempts meshnode-system/meshnode-node-* pods: names are fixed. */}}
{{- define "meshnode.checkNamespace" -}}
{{- if ne .Release.Namespace "meshnode-system" -}}
{{- fail "install meshnode into the namespace meshnode-system (helm install -n meshnode-system): the CNI plugin exempts meshnode-system/meshnode-node-* pods from capture" -}}
{{- end -}}
{{- end -}}

{{- define "meshnode.labels" -}}
app.kubernetes.io/part-of: meshnode
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "meshnode.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}

{{/* host:port of the control plane the agents use, "" for none. */}}
{{- define "meshnode.controlplaneAddress" -}}
{{- if .Values.controlplane.enabled -}}
meshnode-controlplane.meshnode-system.svc:15012
{{- else -}}
{{ .Values.controlplane.externalAddress }}
{{- end -}}
{{- end -}}

{{- define "meshnode.ebpfMounts" -}}
{{- if or (eq .Values.capture.backend "ebpf") .Values.ebpf.kernelHeaders -}}true{{- end -}}
{{- end -}}
