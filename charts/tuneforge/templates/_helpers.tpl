{{/* Name of the chart (object name suffix). */}}
{{- define "tuneforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every object of the release. */}}
{{- define "tuneforge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tuneforge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "tuneforge.labels" -}}
helm.sh/chart: {{ include "tuneforge.chart" . }}
{{ include "tuneforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tuneforge
{{- end }}

{{/* Labels that select the operator pods. */}}
{{- define "tuneforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tuneforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tuneforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tuneforge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to appVersion.
     Call with (list $image $root). */}}
{{- define "tuneforge.image" -}}
{{- $img := index . 0 }}{{- $root := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* The gate image: its own settings, or the operator image. */}}
{{- define "tuneforge.gateImage" -}}
{{- if .Values.images.gate.repository }}
{{- include "tuneforge.image" (list .Values.images.gate .) }}
{{- else }}
{{- include "tuneforge.image" (list .Values.images.operator .) }}
{{- end }}
{{- end }}

{{/*
The operator's rules inside the namespaces it watches: a ClusterRole's rules in cluster-wide mode,
each watched namespace's Role in namespaced mode. One list for both, so the modes cannot drift.
*/}}
{{- define "tuneforge.namespacedRules" -}}
# Our resources: watch them and write status. Neither kind is patched itself (the operator has
# no Kopf change handlers, so Kopf writes no annotations or finalizers); a ModelServe reads the
# FineTuneJob it follows with get. Status is patched (merge or JSON patch), never read alone.
- apiGroups: [tuneforge.dev]
  resources: [finetunejobs, modelserves]
  verbs: [list, watch]
- apiGroups: [tuneforge.dev]
  resources: [finetunejobs]
  verbs: [get]
- apiGroups: [tuneforge.dev]
  resources: [finetunejobs/status, modelserves/status]
  verbs: [patch]
# Children carry a controller reference with blockOwnerDeletion: true. Clusters that run the
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened clusters, the local
# cluster) let a client set it only with update on the owner's finalizers (review OP-1).
- apiGroups: [tuneforge.dev]
  resources: [finetunejobs/finalizers, modelserves/finalizers]
  verbs: [update]
# Children: create and clean up; Jobs are patched only to (un)suspend them (gate Jobs of a
# ModelServe are created and watched).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# A queued training Job's Kueue Workload (read-only): its QuotaReserved/Evicted conditions say why
# the FineTuneJob waits or was preempted. Without Kueue's CRD the operator watches nothing here.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, watch]
# get: on AlreadyExists the operator reads the existing child's controller reference (it adopts
# only its own children). list/delete: old per-version launcher ConfigMaps of a ModelServe.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get, list, delete]
# ModelServe children. Deployments and the HPA are server-side applied (patch, create when
# absent: the apiserver authorizes create inside the apply request); Services are created once
# and their selector patched on a switch; the PDB is applied too; InferencePools only where their
# CRD is installed (list discovers it). Deployments, Services and Jobs are watched: the operator
# keeps indexes of them. Applied kinds are never read by name (list/watch show what exists).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch]
# delete: a multi-node FineTuneJob revision's headless workers Service when it ends.
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, create, patch, delete]
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools]
  verbs: [list, create, patch, delete]
# KEDA's ScaledObject in place of the HPA where settings.prometheusUrl is set and KEDA's
# CRD is installed (list discovers it); KEDA, not the operator, writes the HPA then.
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [list, create, patch, delete]
# Progress: read the trainer's log lines (read-only); trainer pods get no token at all. A gate
# pod's termination message is read from its status (list).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# Pre-flight checks of what the schema cannot see. A Secret the spec sends to an endpoint the
# user chose is read (get, by name; never listed or watched) for its opt-in annotation
# tuneforge.dev/allowed-endpoints only (review OP-2).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Kopf posts each Event (core/v1, POST); it never patches or aggregates them.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/*
Cluster-wide in every mode because the resource itself is cluster-scoped: the PriorityClass a
FineTuneJob names (checked before its Job is created).
*/}}
{{- define "tuneforge.clusterRules" -}}
- apiGroups: [scheduling.k8s.io]
  resources: [priorityclasses]
  verbs: [get]
{{- end }}

{{/*
Cluster-wide mode only: Kopf watches the CRDs to notice kinds appearing or changing. With named
namespaces the operator turns that scanning off (and Kopf lists no namespaces), so the namespaced
mode needs neither.
*/}}
{{- define "tuneforge.discoveryRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/* Name of the leader Lease (in the release's namespace). */}}
{{- define "tuneforge.leaseName" -}}
{{- include "tuneforge.fullname" . }}
{{- end }}

{{/* The leader Lease, in the release's namespace only: created once (create cannot be limited
     to a name), then read and renewed by name. */}}
{{- define "tuneforge.leaseRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ include "tuneforge.leaseName" . }}]
  verbs: [get, update]
{{- end }}
