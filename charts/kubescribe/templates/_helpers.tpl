{{/* Names and labels shared by every template. */}}
{{- define "kubescribe.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubescribe.labels" -}}
app.kubernetes.io/name: kubescribe
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubescribe.selectorLabels" -}}
app.kubernetes.io/name: kubescribe
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubescribe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubescribe.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubescribe.tlsSecret" -}}
{{- if .Values.certManager.enabled -}}
{{- printf "%s-serving" (include "kubescribe.fullname" .) -}}
{{- else -}}
{{- required "tls.existingSecret is required when certManager.enabled is false" .Values.tls.existingSecret -}}
{{- end -}}
{{- end -}}

{{/*
The webhook entries for one configuration, mirroring `kubescribe webhook-config`
(src/webhook.rs): one entry per rule, `<resource>/scale` next to each resource,
kube-system and the release namespace never sent, a catch-all rule leaving the
namespaces an earlier rule names to that rule, Fail only for rules that wait.
Called with a dict: root, path ("/validate" or "/mutate"), mutating (bool).
*/}}
{{- define "kubescribe.webhooks" -}}
{{- $root := .root -}}
{{- /* An empty list is not "unset": kubescribe reads it as no rules. */ -}}
{{- $rules := ternary $root.Values.config.rules (list (dict "name" "default")) (hasKey $root.Values.config "rules") -}}
{{- $claimed := list -}}
{{- $conditions := $root.Values.webhook.matchConditions -}}
{{- if eq (toString $conditions) "auto" -}}
{{- $conditions = semverCompare ">=1.28.0-0" $root.Capabilities.KubeVersion.Version -}}
{{- end -}}
{{- range $rule := $rules }}
{{- $wait := $rule.wait | default "none" -}}
{{- $namespaces := ternary $rule.namespaces (list "*") (hasKey $rule "namespaces") -}}
{{- $groups := ternary $rule.groups (list "*") (hasKey $rule "groups") -}}
{{- $ruleResources := ternary $rule.resources (list "*") (hasKey $rule "resources") -}}
{{- $label := regexReplaceAll "[^a-z0-9]" (lower $rule.name) "-" | trimAll "-" | trunc 40 | default "rule" -}}
{{- $resources := list -}}
{{- range $r := $ruleResources -}}
{{- $resources = append $resources $r -}}
{{- if and (not (contains "/" $r)) (not $.mutating) -}}
{{- $resources = append $resources (printf "%s/scale" $r) -}}
{{- end -}}
{{- end -}}
{{- $excluded := concat (list "kube-system" "kube-node-lease" $root.Release.Namespace) ($rule.excludeNamespaces | default list) $root.Values.webhook.excludeNamespaces -}}
{{- if has "*" $namespaces -}}
{{- $excluded = concat $excluded $claimed -}}
{{- end }}
- name: {{ printf "%s.%s.kubescribe.io" $label (ternary "annotate" (ternary "record" "hold" (eq $wait "none")) $.mutating) }}
  admissionReviewVersions: [v1]
  sideEffects: NoneOnDryRun
  failurePolicy: {{ ternary "Ignore" (ternary "Ignore" "Fail" (eq $wait "none")) $.mutating }}
  matchPolicy: Equivalent
  {{- if $.mutating }}
  reinvocationPolicy: IfNeeded
  {{- end }}
  timeoutSeconds: {{ ternary 5 (get (dict "none" 5 "commit" 10 "push" 15) $wait) $.mutating }}
  clientConfig:
    service:
      namespace: {{ $root.Release.Namespace }}
      name: {{ include "kubescribe.fullname" $root }}
      path: {{ $.path }}
      port: {{ $root.Values.service.port }}
    {{- if not $root.Values.certManager.enabled }}
    caBundle: {{ required "tls.caBundle is required when certManager.enabled is false" $root.Values.tls.caBundle }}
    {{- end }}
  rules:
  - apiGroups: {{ $groups | toJson }}
    apiVersions: ["*"]
    operations: {{ ternary (list "CREATE" "UPDATE") (list "CREATE" "UPDATE" "DELETE") $.mutating | toJson }}
    resources: {{ $resources | toJson }}
    scope: {{ ternary "*" "Namespaced" (has "*" $namespaces) | quote }}
  {{- if and $conditions (has "*" $ruleResources) }}
  matchConditions:
  - name: not-reviews-leases-events
    expression: {{ include "kubescribe.neverSent" . | quote }}
  {{- end }}
  namespaceSelector:
    matchExpressions:
    {{- if not (has "*" $namespaces) }}
    - key: kubernetes.io/metadata.name
      operator: In
      values: {{ $namespaces | toJson }}
    {{- end }}
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ $excluded | uniq | sortAlpha | toJson }}
{{- if and (not (has "*" $namespaces)) (has "*" $groups) (has "*" $ruleResources) -}}
{{- $claimed = concat $claimed $namespaces -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The CEL condition that keeps review resources, leases and events away from a
wildcard entry; the same list as webhook::NEVER_SENT.
*/}}
{{- define "kubescribe.neverSent" -}}
{{- $never := list "/events" "events.k8s.io/events" "coordination.k8s.io/leases" "authentication.k8s.io/tokenreviews" "authentication.k8s.io/selfsubjectreviews" "authorization.k8s.io/subjectaccessreviews" "authorization.k8s.io/selfsubjectaccessreviews" "authorization.k8s.io/selfsubjectrulesreviews" "authorization.k8s.io/localsubjectaccessreviews" -}}
{{- $quoted := list -}}
{{- range $never }}{{ $quoted = append $quoted (printf "'%s'" .) }}{{ end -}}
!(request.resource.group + '/' + request.resource.resource in [{{ join ", " $quoted }}])
{{- end }}

{{/*
"true" when every repository of the config has a remote, else empty.
*/}}
{{- define "kubescribe.allRemote" -}}
{{- $all := and .Values.config.repository .Values.config.repository.remote -}}
{{- range $name, $repo := (.Values.config.repositories | default dict) -}}
{{- if not (and $repo $repo.remote) }}{{ $all = false }}{{ end -}}
{{- end -}}
{{- if $all }}true{{ end -}}
{{- end }}

{{/*
"true" when the local repository goes on a PersistentVolumeClaim (see
persistence.enabled in values.yaml), else empty. Refuses what would lose history
or put two writers on one volume.
*/}}
{{- define "kubescribe.persistent" -}}
{{- $remote := include "kubescribe.allRemote" . -}}
{{- $commit := false -}}
{{- range (.Values.config.rules | default list) -}}
{{- if eq (toString (.wait | default "none")) "commit" }}{{ $commit = true }}{{ end -}}
{{- end -}}
{{- $enabled := .Values.persistence.enabled -}}
{{- $persistent := false -}}
{{- if eq (toString $enabled) "auto" -}}
{{- $persistent = or (not $remote) $commit -}}
{{- else if $enabled -}}
{{- $persistent = true -}}
{{- else if not $remote -}}
{{- fail "persistence.enabled=false keeps the repository on an emptyDir, so every pod replacement loses its history: give every repository a remote (config.repository.remote), or leave persistence on" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not $remote) -}}
{{- fail "replicaCount > 1 needs a remote on every repository (config.repository.remote): each replica keeps its own repository, and the remote is where they meet" -}}
{{- end -}}
{{- if $persistent }}true{{ end -}}
{{- end }}

{{/*
"true" when the pods are a StatefulSet: several replicas that each keep their own
repository on a volume of their own (volumeClaimTemplates), else empty.
*/}}
{{- define "kubescribe.statefulSet" -}}
{{- if and (include "kubescribe.persistent" .) (gt (int .Values.replicaCount) 1) }}true{{ end -}}
{{- end }}

{{/*
"true" when the reconciler is on (config.reconcile.enabled), else empty.
*/}}
{{- define "kubescribe.reconcile" -}}
{{- if and .Values.config.reconcile .Values.config.reconcile.enabled -}}true{{- end -}}
{{- end }}

{{/*
The kubescribe config: .Values.config, with server.clientAuth filled in from
.Values.clientAuth (the files the chart mounts); keys config sets itself win.
*/}}
{{- define "kubescribe.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $auth := dict -}}
{{- if .Values.clientAuth.certificate -}}
{{- if not .Values.certManager.enabled -}}
{{- fail "clientAuth.certificate needs certManager.enabled; without cert-manager, make the pair with `kubescribe certs` and set config.server.clientAuth.caFile" -}}
{{- end -}}
{{- if not .Values.clientAuth.allowedNames -}}
{{- fail "clientAuth.certificate needs clientAuth.allowedNames: the name of the client certificate the chart makes, and the only one kubescribe accepts" -}}
{{- end -}}
{{- $_ := set $auth "caFile" "/etc/kubescribe/tls/ca.crt" -}}
{{- $_ := set $auth "allowedNames" .Values.clientAuth.allowedNames -}}
{{- end -}}
{{- if .Values.clientAuth.tokenSecret -}}
{{- $_ := set $auth "tokenFile" "/etc/kubescribe/caller/token" -}}
{{- end -}}
{{- if .Values.clientAuth.allowUnauthenticated -}}
{{- $_ := set $auth "allowUnauthenticated" true -}}
{{- end -}}
{{- if $auth -}}
{{- $server := deepCopy (default (dict) $config.server) -}}
{{- /* The keys config.server.clientAuth sets itself win; the chart's fill in the rest. */ -}}
{{- $_ := set $server "clientAuth" (merge (deepCopy (default (dict) $server.clientAuth)) $auth) -}}
{{- $_ := set $config "server" $server -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
