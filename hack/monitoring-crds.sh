#!/usr/bin/env bash
# Prints the path of the Prometheus Operator's PodMonitor CRD, taken from its Go module (the Go
# module proxy is reachable where project sites are not). Tests install it to check that the
# operator creates a PodMonitor per run where the monitoring.coreos.com API is served.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PROMETHEUS_OPERATOR_VERSION=0.85.0
# shellcheck source=hack/goenv.sh
source "$here/goenv.sh"
dir=$(cd "$here" && go mod download -json "github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
echo "$dir/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml"
