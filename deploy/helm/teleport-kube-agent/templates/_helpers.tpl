{{- define "teleport-kube-agent.labels" -}}
app.kubernetes.io/name: teleport-kube-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "teleport-kube-agent.selectorLabels" -}}
app.kubernetes.io/name: teleport-kube-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "teleport-kube-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.name -}}{{ .Values.serviceAccount.name }}{{- else -}}{{ .Release.Name }}{{- end -}}
{{- end -}}

{{- define "teleport-kube-agent.secretName" -}}
{{- if .Values.joinTokenSecret.name -}}{{ .Values.joinTokenSecret.name }}{{- else -}}{{ .Release.Name }}-join-token{{- end -}}
{{- end -}}

{{- define "teleport-kube-agent.clusterRoleName" -}}
{{ .Release.Namespace }}-{{ .Release.Name }}
{{- end -}}

{{- define "teleport-kube-agent.checks" -}}
{{- if ne (toString .Values.roles) "kube" -}}
{{- fail (printf "roles: %q is not served by this chart; set roles=kube" (toString .Values.roles)) -}}
{{- end -}}
{{- if not .Values.proxyAddr -}}
{{- fail "proxyAddr: required, the proxy's public host:port (e.g. --set proxyAddr=teleport.example.com:443)" -}}
{{- end -}}
{{- if not .Values.kubeClusterName -}}
{{- fail "kubeClusterName: required, the name users see in tsh kube ls (e.g. --set kubeClusterName=my-cluster)" -}}
{{- end -}}
{{- if and .Values.joinTokenSecret.create (not .Values.authToken) -}}
{{- fail "authToken: required unless joinTokenSecret.create=false names an existing Secret (e.g. --set authToken=$(cat /tmp/kube-token))" -}}
{{- end -}}
{{- end -}}

{{- define "teleport-kube-agent.config" -}}
version: v3
teleport:
  data_dir: /var/lib/teleport
  proxy_server: {{ .Values.proxyAddr | quote }}
  join_params:
    method: token
    token_name: /etc/teleport-secrets/auth-token
  {{- with .Values.caPin }}
  ca_pin:
  {{- range (kindIs "string" . | ternary (list .) .) }}
  - {{ . | quote }}
  {{- end }}
  {{- end }}
  diag_addr: "0.0.0.0:{{ .Values.diagPort }}"
  shutdown_timeout: {{ .Values.shutdownTimeout | quote }}
auth_service:
  enabled: false
proxy_service:
  enabled: false
kubernetes_service:
  enabled: true
  kube_cluster_name: {{ .Values.kubeClusterName | quote }}
  record_exec_output: {{ .Values.recordExecOutput }}
  buffer_memory_limit: {{ .Values.bufferMemoryLimit | quote }}
  {{- with .Values.labels }}
  labels:
    {{- range $k, $v := . }}
    {{ $k | quote }}: {{ $v | quote }}
    {{- end }}
  {{- end }}
{{- end -}}
