#!/usr/bin/env bash
# Prints the paths of the Prometheus Operator's CRDs named by their plurals (default: podmonitors),
# one a line, taken from its Go module (the Go module proxy is reachable where project sites are
# not). Tests install the PodMonitor CRD to check that the operator creates a PodMonitor per run
# where the monitoring.coreos.com API is served, and validate the chart's PrometheusRule against
# the prometheusrules one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PROMETHEUS_OPERATOR_VERSION=0.85.0
# shellcheck source=hack/goenv.sh
source "$here/goenv.sh"
dir=$(cd "$here" && go mod download -json "github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
for plural in "${@:-podmonitors}"; do
  crd=$dir/example/prometheus-operator-crd/monitoring.coreos.com_$plural.yaml
  [ -f "$crd" ] || { echo "[monitoring-crds] no CRD $plural in $dir" >&2; exit 1; }
  echo "$crd"
done
