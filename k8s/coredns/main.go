// CoreDNS for the Kubernetes lab: coremain from the pinned github.com/coredns/coredns
// module with the plugins of a kubeadm Corefile that stay inside the cluster, plus template
// (NXDOMAIN for outside names) and log. No forward plugin (the lab has no upstream) and no
// cloud plugins, so the build pulls in no cloud SDKs. `make coredns` builds it into
// build/coredns/bin.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/template"
)

func main() {
	coremain.Run()
}
