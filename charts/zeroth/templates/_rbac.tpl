{{- /*
The operator's rights in the namespaces it serves: granted cluster-wide by the ClusterRole when
watchNamespaces is empty (every namespace), else by a Role in each listed namespace (roles.yaml),
and then they are all it holds.
Each rule says what uses it: kopf itself, or operator/handlers.py, which creates every child but
the pods once, when missing, reads one that already exists back for its owner only (a Secret never),
and never rewrites one (docs/operator.md lists the children). clusterrole.yaml lists what is left out on purpose.
*/}}
{{- define "zeroth.namespacedRules" -}}
# kopf lists and watches the runs (cluster-wide, or in each served namespace); each reconcile reads
# its run afresh, and the resync lists them. delete: a finished run with spec.ttlSecondsAfterFinished
# is deleted that long after its completionTime (with a uid precondition; the garbage collector
# then deletes its children).
- apiGroups: [zeroth.dev]
  resources: [reasoningruns]
  verbs: [get, list, watch, delete]
# The handlers patch status. get too, because each run's Role grants its ServiceAccount get and
# patch on its run's status: RBAC's escalation check lets the operator create that Role (and bind
# it) only if it holds every right the Role grants.
- apiGroups: [zeroth.dev]
  resources: [reasoningruns/status]
  verbs: [get, patch]
# Children carry ownerReferences with blockOwnerDeletion: true. Where the API server runs the
# OwnerReferencesPermissionEnforcement admission plugin, setting that needs update on the owner's
# finalizers. The subresource exists only for this check: it opens no write path to the run.
- apiGroups: [zeroth.dev]
  resources: [reasoningruns/finalizers]
  verbs: [update]
# Pods: kopf watches them (pod events reconcile their run; the watch carries a label selector, so
# only the operator's own pods are sent); the handlers list a run's pods, create them, and delete
# them on gang restart, suspend and completion. patch only for a queued run's pods, with one
# annotation (kueue.x-k8s.io/retriable-in-group: "false") when their Kueue pod group ends, so that
# Kueue releases the quota. get adds nothing to list. Never exec'd into or read from.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
# The run's frozen config: read once per run (and its owner checked), created when missing.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create]
# Created once each. For Secrets (the run's Ray token) this matters most: the token is random,
# and the pods take it by secretKeyRef, so the operator never reads it back (its name carries the
# run's uid, so an earlier run's token of the same name is never taken for the run's own).
# get/list/watch would let it read every Secret, patch rewrite them, delete remove them.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
# The other children: get only when a create finds one already there, to read its owner: one an
# earlier run of the same name still holds (being collected) is never adopted; the run waits.
- apiGroups: [""]
  resources: [serviceaccounts, services]
  verbs: [get, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create]
# Only where the Prometheus Operator's CRD is served (the handlers check discovery, open to all).
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [get, create]
# An Event at every phase change, and kopf's own warnings (core/v1, POST). list: a pod waiting on
# a node for a volume it cannot mount says why only in a FailedMount Event, which the operator
# reads (reason=FailedMount, the run's namespace, only while such a pod exists) into the run's status.
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
{{- end -}}
