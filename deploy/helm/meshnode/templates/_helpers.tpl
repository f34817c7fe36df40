{{/* The CNI plugin exempts meshnode-system/meshnode-node-* pods: names are fixed. */}}
{{- define "meshnode.checkNamespace" -}}
{{- if ne .Release.Namespace "meshnode-system" -}}
{{- fail "install meshnode into the namespace meshnode-system (helm install -n meshnode-system): the CNI plugin exempts meshnode-system/meshnode-node-* pods from capture" -}}
{{- end -}}
{{- end -}}

{{/* What values.schema.json cannot say: relations between values. */}}
{{- define "meshnode.checkValues" -}}
{{- $p := .Values.metrics.ports -}}
{{- if ne (len (uniq (list (int $p.agent) (int $p.proxy) (int $p.controlplane) 15012 15021 15000))) 6 -}}
{{- fail (printf "metrics.ports: agent (%d), proxy (%d) and controlplane (%d) must differ from each other and from 15012 (the control plane's ADS), 15021 (the agent's debug HTTP) and 15000 (the proxy's admin port): all listen on the host network" (int $p.agent) (int $p.proxy) (int $p.controlplane)) -}}
{{- end -}}
{{- if le (float64 .Values.terminationGracePeriodSeconds) (float64 .Values.proxy.drainSeconds) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed proxy.drainSeconds (%v): the kubelet would kill the proxy before its connections drain" .Values.terminationGracePeriodSeconds .Values.proxy.drainSeconds) -}}
{{- end -}}
{{- end -}}

{{- define "meshnode.labels" -}}
app.kubernetes.io/part-of: meshnode
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* image.tag is a string (values.schema.json); "" = the chart's appVersion. */}}
{{- define "meshnode.tag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "meshnode.image" -}}
{{ printf "%s:%s" .Values.image.repository (include "meshnode.tag" .) }}
{{- end -}}

{{/* A pod template's labels: the workload's podLabels, then ours, which win (the selectors
match them). Args: name (app.kubernetes.io/name), extra (podLabels). */}}
{{- define "meshnode.podLabels" -}}
{{- $out := deepCopy (.extra | default dict) -}}
{{- $_ := set $out "app.kubernetes.io/name" .name -}}
{{- $_ := set $out "app.kubernetes.io/part-of" "meshnode" -}}
{{- toYaml $out -}}
{{- end -}}

{{/* A pod template's annotations: the workload's podAnnotations, then ours, which win:
Prometheus' scrape annotations (metrics.scrapeAnnotations) and, for the DaemonSets, the
config checksum that rolls them on a config change. "" when there are none.
Args: root, extra (podAnnotations), port (its metrics port), checksum (bool). */}}
{{- define "meshnode.podAnnotations" -}}
{{- $root := .root -}}
{{- $out := deepCopy (.extra | default dict) -}}
{{- if $root.Values.metrics.scrapeAnnotations -}}
{{- $_ := set $out "prometheus.io/scrape" "true" -}}
{{- $_ := set $out "prometheus.io/port" (toString .port) -}}
{{- $_ := set $out "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- if .checksum -}}
{{- $_ := set $out "checksum/config" (include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum) -}}
{{- end -}}
{{- if $out -}}{{ toYaml $out }}{{- end -}}
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

{{/* HOST:PORT of a metrics listener: metrics.bindAddress ([v6] bracketed) and port. */}}
{{- define "meshnode.metricsAddress" -}}
{{- $bind := .root.Values.metrics.bindAddress -}}
{{ printf "%s:%d" (ternary (printf "[%s]" $bind) $bind (contains ":" $bind)) (int .port) }}
{{- end -}}

{{/* The host an HTTP probe dials for a listener bound to metrics.bindAddress (0.0.0.0, ::,
127.0.0.1 or ::1): the loopback of its family (the kubelet runs on the node; hostNetwork). */}}
{{- define "meshnode.probeHost" -}}
{{ ternary "\"::1\"" "127.0.0.1" (contains ":" .) }}
{{- end -}}
