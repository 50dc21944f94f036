// Command coredns is CoreDNS (github.com/coredns/coredns, pinned in go.mod) with only the plugins the
// real node's cluster DNS uses: it answers cluster.local from the API (kubernetes) and has no plugin
// that could ask anything outside the machine (no forward, no etcd, no cloud DNS) compiled in.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order CoreDNS chains them in: upstream's plugin.cfg order, restricted to these.
var directives = []string{"ready", "health", "errors", "log", "cache", "kubernetes"}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
