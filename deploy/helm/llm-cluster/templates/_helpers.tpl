{{/* Names and labels. */}}
{{- define "llm-cluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llm-cluster.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llm-cluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-cluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "llm-cluster.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "llm-cluster.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "llm-cluster.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "llm-cluster.headService" -}}
{{- printf "%s-head-svc" (include "llm-cluster.fullname" .) -}}
{{- end -}}

{{/* Ports the processes listen on, from the cluster config (its defaults when unset). */}}
{{- define "llm-cluster.grpcPort" -}}{{ (.Values.cluster.router | default dict).grpc_port | default 50051 }}{{- end -}}
{{- define "llm-cluster.httpPort" -}}{{ (.Values.cluster.router | default dict).http_port | default 8000 }}{{- end -}}
{{- define "llm-cluster.routerMetricsPort" -}}{{ (.Values.cluster.router | default dict).metrics_port | default .Values.router.service.metricsPort }}{{- end -}}
{{- define "llm-cluster.controllerMetricsPort" -}}{{ (.Values.cluster.controller | default dict).metrics_port | default 9401 }}{{- end -}}

{{/* The worker group KEDA scales (empty value: the first group). */}}
{{- define "llm-cluster.kedaGroup" -}}
{{- if .Values.keda.enabled -}}
{{- default (first .Values.ray.workerGroups).name .Values.keda.workerGroup -}}
{{- end -}}
{{- end -}}

{{/* The model the autoscaler / KEDA scales (empty value: the first model). */}}
{{- define "llm-cluster.scaledModel" -}}
{{- default (first .Values.cluster.models).name .Values.autoscaler.model -}}
{{- end -}}

{{/* The autoscaler's Kubernetes target as the cluster config's KubernetesTarget (empty dict in ray mode). */}}
{{- define "llm-cluster.autoscalerTarget" -}}
{{- $t := .Values.autoscaler.actuator.target -}}
{{- $out := dict "kind" $t.kind "namespace" .Release.Namespace -}}
{{- if eq $t.kind "RayCluster" -}}
{{- $_ := set $out "name" (default (include "llm-cluster.fullname" .) $t.name) -}}
{{- $_ := set $out "worker_group" (default (first .Values.ray.workerGroups).name $t.workerGroup) -}}
{{- else -}}
{{- $_ := set $out "name" (required "autoscaler.actuator.target.name is required for a Deployment or StatefulSet target" $t.name) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Checks a JSON schema cannot express; each fails the render with a message naming the value. */}}
{{- define "llm-cluster.validate" -}}
{{- $models := .Values.cluster.models | default list -}}
{{- if not $models -}}
{{- fail "cluster.models: at least one model is required (name and source)" -}}
{{- end -}}
{{- $groupNames := list -}}
{{- range .Values.ray.workerGroups -}}
{{- if has .name $groupNames -}}
{{- fail (printf "ray.workerGroups: duplicate group name %q" .name) -}}
{{- end -}}
{{- $groupNames = append $groupNames .name -}}
{{- if or (lt (int .replicas) (int .minReplicas)) (gt (int .replicas) (int .maxReplicas)) -}}
{{- fail (printf "ray.workerGroups[%s]: replicas %d must lie within minReplicas..maxReplicas = %d..%d" .name (int .replicas) (int .minReplicas) (int .maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- $modelNames := list -}}
{{- range $models -}}
{{- $modelNames = append $modelNames .name -}}
{{- end -}}
{{- range $g := .Values.ray.workerGroups -}}
{{- range $g.models -}}
{{- if not (has . $modelNames) -}}
{{- fail (printf "ray.workerGroups[%s].models: unknown model %q (models: %s)" $g.name . (join ", " $modelNames)) -}}
{{- end -}}
{{- end -}}
{{- if gt (int $g.gpus) 0 -}}
{{- range $m := $models -}}
{{- if and (gt (float64 ($m.num_gpus_per_shard | default 0)) 0.0) (or (not $g.models) (has $m.name $g.models)) -}}
{{- $tp := int ($m.tensor_parallel_size | default 1) -}}
{{- if ne (mod (int $g.gpus) $tp) 0 -}}
{{- fail (printf "model %q: tensor_parallel_size %d does not divide the %d GPUs of worker group %q (a tensor-parallel replica must fit one pod; pick a TP size that divides the group's gpus, or list the model under another group's models)" $m.name $tp (int $g.gpus) $g.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaler.enabled .Values.keda.enabled -}}
{{- fail "autoscaler.enabled and keda.enabled are both true: pick one autoscaler (set autoscaler.enabled=false for KEDA mode)" -}}
{{- end -}}
{{- if .Values.autoscaler.model -}}
{{- if not (has .Values.autoscaler.model $modelNames) -}}
{{- fail (printf "autoscaler.model: unknown model %q (models: %s)" .Values.autoscaler.model (join ", " $modelNames)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaler.enabled (eq .Values.autoscaler.actuator.kind "kubernetes") (eq .Values.autoscaler.actuator.target.kind "RayCluster") .Values.autoscaler.actuator.target.workerGroup -}}
{{- if not (has .Values.autoscaler.actuator.target.workerGroup $groupNames) -}}
{{- fail (printf "autoscaler.actuator.target.workerGroup: no worker group %q (groups: %s)" .Values.autoscaler.actuator.target.workerGroup (join ", " $groupNames)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaler.enabled (eq .Values.autoscaler.actuator.kind "kubernetes") (eq .Values.autoscaler.actuator.target.kind "RayCluster") (not .Values.autoscaler.actuator.target.name) -}}
{{- $gname := default (first .Values.ray.workerGroups).name .Values.autoscaler.actuator.target.workerGroup -}}
{{- range .Values.ray.workerGroups -}}
{{- if eq .name $gname -}}
{{- $pol := $.Values.autoscaler.policy -}}
{{- if or (lt (int $pol.minReplicas) (int .minReplicas)) (gt (int $pol.maxReplicas) (int .maxReplicas)) -}}
{{- fail (printf "autoscaler.policy: minReplicas..maxReplicas = %d..%d must lie within worker group %q's minReplicas..maxReplicas = %d..%d (the actuator scales that group's pods)" (int $pol.minReplicas) (int $pol.maxReplicas) .name (int .minReplicas) (int .maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.keda.enabled .Values.keda.workerGroup -}}
{{- if not (has .Values.keda.workerGroup $groupNames) -}}
{{- fail (printf "keda.workerGroup: no worker group %q (groups: %s)" .Values.keda.workerGroup (join ", " $groupNames)) -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.modelStorage.type "pvc") (not .Values.modelStorage.pvc.existingClaim) (has "ReadWriteOnce" .Values.modelStorage.pvc.accessModes) (gt (len .Values.ray.workerGroups) 0) -}}
{{- fail "modelStorage.pvc.accessModes: ReadWriteOnce cannot be shared by the head and worker pods; use ReadWriteMany, an existingClaim, or modelStorage.type=hostPath" -}}
{{- end -}}
{{- end -}}

{{/* The cluster config the processes read: the user's `cluster` values plus what the chart knows. */}}
{{- define "llm-cluster.clusterConfig" -}}
{{- $cfg := deepCopy .Values.cluster -}}
{{- $router := deepCopy ($cfg.router | default dict) -}}
{{- $_ := set $router "host" "0.0.0.0" -}}
{{- if .Values.secrets.apiKeys.name -}}
{{- $auth := deepCopy ($router.auth | default dict) -}}
{{- $_ := set $auth "enabled" true -}}
{{- $_ := set $auth "key_file" "/etc/llm-cluster/auth/keys.yaml" -}}
{{- $_ := set $router "auth" $auth -}}
{{- end -}}
{{- if .Values.secrets.tls.router -}}
{{- $tls := deepCopy ($router.tls | default dict) -}}
{{- $_ := set $tls "cert_file" "/etc/llm-cluster/tls/router/tls.crt" -}}
{{- $_ := set $tls "key_file" "/etc/llm-cluster/tls/router/tls.key" -}}
{{- $_ := set $router "tls" $tls -}}
{{- end -}}
{{- $_ := set $cfg "router" $router -}}
{{- if .Values.secrets.tls.internal -}}
{{- $itls := deepCopy ($cfg.internal_tls | default dict) -}}
{{- $_ := set $itls "ca_file" "/etc/llm-cluster/tls/internal/ca.crt" -}}
{{- $_ := set $itls "cert_file" "/etc/llm-cluster/tls/internal/tls.crt" -}}
{{- $_ := set $itls "key_file" "/etc/llm-cluster/tls/internal/tls.key" -}}
{{- $_ := set $cfg "internal_tls" $itls -}}
{{- end -}}
{{- $ray := deepCopy ($cfg.ray | default dict) -}}
{{- $_ := set $ray "address" (printf "ray://%s:10001" (include "llm-cluster.headService" .)) -}}
{{- $_ := set $cfg "ray" $ray -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Volumes for model storage on the Ray pods. */}}
{{- define "llm-cluster.modelVolume" -}}
- name: models
{{- if eq .Values.modelStorage.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-models" (include "llm-cluster.fullname" .)) .Values.modelStorage.pvc.existingClaim }}
{{- else if eq .Values.modelStorage.type "hostPath" }}
  hostPath:
    path: {{ .Values.modelStorage.hostPath.path }}
    type: DirectoryOrCreate
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.modelStorage.emptyDir.sizeLimit }}
{{- end }}
- name: config
  configMap:
    name: {{ include "llm-cluster.fullname" . }}-config
- name: dshm
  emptyDir:
    medium: Memory
{{- with .Values.secrets.tls.internal }}
- name: internal-tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- if .Values.loraAdapters.enabled }}
- name: lora-adapters
{{- if .Values.loraAdapters.pvc.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.loraAdapters.pvc.existingClaim }}
    readOnly: true
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}
{{- end -}}

{{/* The init container that writes LoRA adapters into their emptyDir (loraAdapters.initContainer), if any. */}}
{{- define "llm-cluster.loraInit" -}}
{{- if and .Values.loraAdapters.enabled .Values.loraAdapters.initContainer (not .Values.loraAdapters.pvc.existingClaim) }}
initContainers:
  - name: lora-adapters
    {{- toYaml .Values.loraAdapters.initContainer | nindent 4 }}
    volumeMounts:
      - name: lora-adapters
        mountPath: {{ .Values.loraAdapters.mountPath }}
{{- end }}
{{- end -}}

{{/* Environment of the Ray containers. */}}
{{- define "llm-cluster.rayEnv" -}}
- name: HF_HOME
  value: {{ .Values.modelStorage.mountPath }}
- name: LLM_CLUSTER_CACHE
  value: {{ .Values.modelStorage.mountPath }}/llm-cluster
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- with .Values.secrets.hubToken.name }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.hubToken.key }}
{{- end }}
{{- end -}}

{{- define "llm-cluster.rayMounts" -}}
- name: models
  mountPath: {{ .Values.modelStorage.mountPath }}
- name: config
  mountPath: /etc/llm-cluster/config
  readOnly: true
- name: dshm
  mountPath: /dev/shm
{{- if .Values.secrets.tls.internal }}
- name: internal-tls
  mountPath: /etc/llm-cluster/tls/internal
  readOnly: true
{{- end }}
{{- if .Values.loraAdapters.enabled }}
- name: lora-adapters
  mountPath: {{ .Values.loraAdapters.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The pod template of one Ray worker group (RayCluster workerGroupSpec, or KEDA's StatefulSet). */}}
{{- define "llm-cluster.workerPod" -}}
{{- $root := .root -}}
{{- $g := .group -}}
metadata:
  labels:
    {{- include "llm-cluster.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: ray-worker
    llm-cluster/worker-group: {{ $g.name }}
spec:
  terminationGracePeriodSeconds: {{ $root.Values.ray.terminationGracePeriodSeconds }}
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- include "llm-cluster.loraInit" $root | nindent 2 }}
  containers:
    - name: ray-worker
      image: {{ include "llm-cluster.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      {{- if .standalone }}
      command: ["/bin/bash", "-c"]
      args:
        - >-
          exec ray start --address={{ include "llm-cluster.headService" $root }}:6379 --block --disable-usage-stats
          --num-gpus={{ $g.gpus }}{{ range $k, $v := $g.rayStartParams }} --{{ $k }}={{ $v }}{{ end }}
      {{- end }}
      env:
        {{- include "llm-cluster.rayEnv" $root | nindent 8 }}
      lifecycle:
        preStop:
          exec:
            # Give the router time to see the replicas go (endpoint watch) before Ray stops.
            command: ["/bin/sh", "-c", "sleep 5; ray stop --grace-period {{ sub (int $root.Values.ray.terminationGracePeriodSeconds) 10 }} || true"]
      resources:
        {{- $res := deepCopy ($g.resources | default dict) }}
        {{- if gt (int $g.gpus) 0 }}
        {{- $limits := merge (dict "nvidia.com/gpu" (int $g.gpus)) ($res.limits | default dict) }}
        {{- $requests := merge (dict "nvidia.com/gpu" (int $g.gpus)) ($res.requests | default dict) }}
        {{- $_ := set $res "limits" $limits }}
        {{- $_ := set $res "requests" $requests }}
        {{- end }}
        {{- toYaml $res | nindent 8 }}
      volumeMounts:
        {{- include "llm-cluster.rayMounts" $root | nindent 8 }}
  volumes:
    {{- include "llm-cluster.modelVolume" $root | nindent 4 }}
  {{- with $g.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $tolerations := $g.tolerations | default list }}
  {{- if and (gt (int $g.gpus) 0) (not $tolerations) }}
  {{- $tolerations = list (dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule") }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{/* Router workers: cluster.router.workers when set, else the router pod's CPU limit rounded up (at least 1):
     inside a container the router sees every core of the node, not its quota. */}}
{{- define "llm-cluster.routerWorkers" -}}
{{- $set := (.Values.cluster.router | default dict).workers -}}
{{- if $set -}}{{ $set }}{{- else -}}
{{- $cpu := toString (((.Values.router.resources | default dict).limits | default dict).cpu | default "1") -}}
{{- $cores := ternary (divf (trimSuffix "m" $cpu | float64) 1000) ($cpu | float64) (hasSuffix "m" $cpu) -}}
{{- max 1 (ceil $cores | int) -}}
{{- end -}}
{{- end -}}
