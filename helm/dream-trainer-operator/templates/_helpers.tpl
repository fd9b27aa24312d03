{{/* The chart name, overridable. */}}
{{- define "dto.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: used for every object the chart creates. */}}
{{- define "dto.fullname" -}}
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

{{- define "dto.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's pod; never change them (Deployment selectors are immutable). */}}
{{- define "dto.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dto.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "dto.labels" -}}
helm.sh/chart: {{ include "dto.chart" . }}
{{ include "dto.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: dream-trainer
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dto.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dto.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dto.image" -}}
{{- if eq .Values.image.tag "latest" }}
{{- fail "image.tag: use a version, not latest (an upgrade would not roll the Deployment, and nodes would run whatever they pulled last)" }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The rules for running DreamTrainJobs in a namespace: bound cluster-wide (ClusterRole) when
watchNamespaces is empty, else once per watched namespace (Role). Every verb is one the operator
uses; tests/test_helm.py runs the operator against the API emulator and checks that each request
it makes is allowed by these rules, and that each rule is used.
*/}}
{{- define "dto.jobRules" -}}
# DreamTrainJobs: kopf lists and watches them (the dream_jobs index and the event handler); the
# controller reads one before reconciling it (get), and deletes finished jobs past
# spec.runPolicy.ttlSecondsAfterFinished (delete). It never writes the spec.
- apiGroups: [dreamtrainer.dev]
  resources: [dreamtrainjobs]
  verbs: [get, list, watch, delete]
# The controller writes the status with a JSON merge patch (optimistic: resourceVersion).
- apiGroups: [dreamtrainer.dev]
  resources: [dreamtrainjobs/status]
  verbs: [patch]
# Worker pods: kopf lists and watches those labelled with their job (index + event handler); the
# controller creates them and deletes them (graceful, or forced for pods on lost nodes).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, delete]
# The headless Service of each job (worker hostnames). Created once; removed by the garbage
# collector through its ownerReference, so no delete.
- apiGroups: [""]
  resources: [services]
  verbs: [create]
# Events on jobs: the controller's (JobCreated, WorkerFailed, ...) and kopf's warnings; both post
# core v1 Events, never events.k8s.io ones.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/*
Cluster-scoped reads, needed in both modes.
*/}}
{{- define "dto.clusterRules" -}}
# Nodes: kopf lists and watches them for the dream_nodes index (a job restarts when a node it
# runs on goes NotReady or disappears).
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
# kopf watches CRDs to notice new or removed versions of DreamTrainJob after it started (without
# it kopf logs "Not enough permissions to watch for resources" and only scans at start-up).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
# With a namespace list kopf lists and watches namespaces, to start watching a listed namespace
# when it is created (cluster-wide mode does not need this).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}
