{{/* Names and labels shared by every object. */}}
{{- define "tessera.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "tessera.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* selectorLabels: (dict "ctx" $ "component" "gateway") */}}
{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tessera.image" -}}
{{ printf "%s:%s" .repository .tag }}
{{- end -}}

{{/* The worker apps' gRPC address: KubeRay's Serve Service of the RayService (head ports named serve-*). */}}
{{- define "tessera.workerAddress" -}}
{{ printf "%s-workers-serve-svc:%v" (include "tessera.fullname" .) (include "tessera.serveConfig" . | fromYaml).grpc_options.port }}
{{- end -}}

{{/* The apps enabled in values, in the Serve config's order. */}}
{{- define "tessera.enabledApps" -}}
{{- $apps := list -}}
{{- range $app := (.Files.Get "files/serve_config.yaml" | fromYaml).applications -}}
{{- $v := index $.Values.workers.apps $app.name | default dict -}}
{{- if $v.enabled -}}{{- $apps = append $apps $app.name -}}{{- end -}}
{{- end -}}
{{- toJson $apps -}}
{{- end -}}

{{/* Env that gives a process the Redis URL (TESSERA_REDIS_URL), from Secrets only. */}}
{{- define "tessera.redisEnv" -}}
{{- if .Values.redis.embedded.enabled }}
- name: REDIS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ .Values.redis.passwordSecret | default (printf "%s-redis" (include "tessera.fullname" .)) }}, key: password}}
- name: TESSERA_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s-redis:6379/0" (include "tessera.fullname" .) | quote }}
{{- else }}
- name: TESSERA_REDIS_URL
  valueFrom: {secretKeyRef: {name: {{ required "redis.external.urlSecret: name a Secret with key `url` (redis:// or rediss://) when redis.embedded.enabled is false" .Values.redis.external.urlSecret }}, key: url}}
{{- end }}
{{- end -}}

{{/* The worker API's credential (services/workers/protocol.py): Ray pods check it, callers send it. */}}
{{- define "tessera.workerTokenEnv" -}}
- name: TESSERA_WORKER_TOKEN
  valueFrom: {secretKeyRef: {name: {{ .Values.workers.tokenSecret | default (printf "%s-worker-token" (include "tessera.fullname" .)) }}, key: token}}
{{- end -}}

{{/* Pod security every Tessera container runs with: non-root, read-only root filesystem. */}}
{{- define "tessera.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* serveConfigV2: services/workers/serve_config.yaml (files/serve_config.yaml links to it) with, per
enabled app, values' args merged in, Serve autoscaling in place of num_replicas, and ray_actor_options
pinning its replicas to its worker group (the group's `tessera_<app>` resource) and one GPU each. */}}
{{- define "tessera.serveConfig" -}}
{{- $cfg := .Files.Get "files/serve_config.yaml" | fromYaml -}}
{{- $apps := list -}}
{{- range $app := $cfg.applications -}}
{{- $v := index $.Values.workers.apps $app.name | default dict -}}
{{- if $v.enabled -}}
{{- $args := mustMergeOverwrite (deepCopy ($app.args | default dict)) (deepCopy ($v.args | default dict)) -}}
{{- $device := (($args.model | default dict).device | default "cpu") | toString -}}
{{- if and (hasPrefix "cuda" $device) (eq (int $v.gpus) 0) -}}
{{- fail (printf "workers.apps.%s.gpus: the app's model runs on %q (workers.apps.%s.args.model.device), so its pool needs gpus >= 1" $app.name $device $app.name) -}}
{{- end -}}
{{- $deps := list -}}
{{- range $d := $app.deployments -}}
{{- $d = omit (deepCopy $d) "num_replicas" -}}
{{- $_ := set $d "autoscaling_config" (deepCopy $v.autoscaling) -}}
{{- $ray := dict "num_cpus" 1 "num_gpus" (ternary 1 0 (gt (int $v.gpus) 0)) "resources" (dict (printf "tessera_%s" $app.name) 1) -}}
{{- $_ := set $d "ray_actor_options" $ray -}}
{{- $deps = append $deps $d -}}
{{- end -}}
{{- $apps = append $apps (merge (dict "args" $args "deployments" $deps) (omit $app "args" "deployments")) -}}
{{- end -}}
{{- end -}}
{{- if not $apps -}}{{- fail "workers.apps: enable at least one app" -}}{{- end -}}
{{- $_ := set $cfg "applications" $apps -}}
{{- $_ := set $cfg "http_options" (dict "host" "0.0.0.0" "port" 8000) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Checks the schema cannot express (run by NOTES.txt, so every render runs them). */}}
{{- define "tessera.check" -}}
{{- range $name, $v := .Values.workers.apps -}}
{{- if gt (int $v.minReplicas) (int $v.maxReplicas) -}}
{{- fail (printf "workers.apps.%s.minReplicas (%v) must be <= workers.apps.%s.maxReplicas (%v)" $name $v.minReplicas $name $v.maxReplicas) -}}
{{- end -}}
{{- if gt (int $v.autoscaling.min_replicas) (int $v.autoscaling.max_replicas) -}}
{{- fail (printf "workers.apps.%s.autoscaling.min_replicas (%v) must be <= max_replicas (%v)" $name $v.autoscaling.min_replicas $v.autoscaling.max_replicas) -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.redis.embedded.enabled) (not .Values.redis.external.urlSecret) -}}
{{- fail "redis.external.urlSecret: name a Secret with key `url` (redis:// or rediss://) when redis.embedded.enabled is false" -}}
{{- end -}}
{{- if and .Values.gateway.pdb.enabled (ge (int .Values.gateway.pdb.minAvailable) (int .Values.gateway.replicas)) -}}
{{- fail (printf "gateway.pdb.minAvailable (%v) must be < gateway.replicas (%v), or no gateway pod could ever be drained" .Values.gateway.pdb.minAvailable .Values.gateway.replicas) -}}
{{- end -}}
{{- end -}}
