# smesh — every target does its own set-up, so a fresh Debian 12 machine needs only `make`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian's interpreter, so the venv is the same on every machine (and readable by any user).
SYSTEM_PYTHON := $(shell command -v /usr/bin/python3 || command -v python3)

# Build: clang for BPF C; libssl-dev and python3-dev for the native hot-path candidate. Run time: libbpf1, iproute2 and nftables. Tests and demo: real
# peers (curl, socat, openssl, tcpdump, iperf3). Benchmarks: the C tunnels to race, perf
# for `smesh bench --breakdown`.
# Kubernetes lab: the real CNI plugins (bridge, host-local) the lab kubelet calls. zsh: the
# shell whose completion script (`smesh completion zsh`) the tests load, as bash's.
APT_PACKAGES := make clang llvm libbpf-dev libbpf1 linux-libc-dev bpftool \
	iproute2 nftables iputils-ping procps util-linux kmod \
	python3 python3-venv python3-dev libssl-dev \
	curl socat openssl tcpdump iperf3 sockperf stunnel4 haproxy ca-certificates linux-perf \
	containernetworking-plugins zsh

BPF_SRC := $(wildcard bpf/*.bpf.c)
BPF_OBJ := $(patsubst bpf/%.bpf.c,build/bpf/%.bpf.o,$(BPF_SRC))
BPF_CFLAGS := -g -O2 -target bpf -Wall -Werror -I bpf \
	-I /usr/include/$(shell uname -m)-linux-gnu

.PHONY: all setup apt venv bpf native kubernetes coredns helm manifest image image-test test lint typecheck unit integration demo bench clean

all: setup kubernetes coredns helm

setup: apt venv bpf native

apt:
	@scripts/ensure-apt $(APT_PACKAGES)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | apt
	@test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $@

bpf: $(BPF_OBJ)

build/bpf/%.bpf.o: bpf/%.bpf.c $(wildcard bpf/*.h) | apt
	@mkdir -p $(@D)
	clang $(BPF_CFLAGS) -c $< -o $@ || { rm -f $@; exit 1; }

# The native hot-path candidate of `smesh bench` (model-native; issue 23): a CPython
# extension, loaded by path from build/ (smesh.bench.candidates.native), never installed.
NATIVE_SO := build/native/smesh_native.so
NATIVE_CFLAGS := -O2 -g -Wall -Werror -fPIC -shared -pthread \
	-I $(shell $(SYSTEM_PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')

native: $(NATIVE_SO)

$(NATIVE_SO): native/hotpath.c | apt
	@mkdir -p $(@D)
	clang $(NATIVE_CFLAGS) $< -o $@ -lssl -lcrypto || { rm -f $@; exit 1; }

# The real Kubernetes control plane (k8s/go.mod pins the release), compiled from the Go
# module proxy; nothing prebuilt is downloaded. Cold: about 26 CPU-minutes and 4 GiB of Go
# build cache; afterwards only a changed k8s/go.mod rebuilds.
K8S_BIN := build/kubernetes/bin
# Go may be installed outside a non-interactive shell's PATH (/usr/local/go on these machines).
GO := $(or $(shell command -v go),$(wildcard /usr/local/go/bin/go),go)
K8S_CMDS := kube-apiserver kube-controller-manager kube-scheduler kubectl kube-proxy
K8S_GO := GOTOOLCHAIN=local GOFLAGS=-mod=readonly
K8S_VERSION := $(shell sed -n 's/^\tk8s.io\/kubernetes v\([^ ]*\).*/\1/p' k8s/go.mod)
K8S_MINOR := $(word 2,$(subst ., ,$(K8S_VERSION)))
# What `hack/lib/version.sh` stamps into a release build: components compare versions.
K8S_STAMP := $(foreach pkg,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
	-X $(pkg).gitVersion=v$(K8S_VERSION) -X $(pkg).gitMajor=1 -X $(pkg).gitMinor=$(K8S_MINOR) \
	-X $(pkg).gitTreeState=clean)
K8S_LDFLAGS := -trimpath -ldflags='-s -w $(K8S_STAMP)'

# The stamp names the command list, so adding a command rebuilds once (the others relink
# from the warm Go cache in seconds).
K8S_BUILT := $(K8S_BIN)/.built-$(shell echo '$(K8S_CMDS)' | md5sum | cut -c1-8)

kubernetes: $(K8S_BUILT)

$(K8S_BUILT): k8s/go.mod k8s/go.sum
	@command -v $(GO) >/dev/null || { echo "make kubernetes: Go is not installed (needs Go 1.26)" >&2; exit 1; }
	@mkdir -p $(K8S_BIN)
	cd k8s && $(K8S_GO) $(GO) build $(K8S_LDFLAGS) -o $(CURDIR)/$(K8S_BIN)/ \
		$(addprefix k8s.io/kubernetes/cmd/,$(K8S_CMDS))
	cd k8s && $(K8S_GO) $(GO) build $(K8S_LDFLAGS) -o $(CURDIR)/$(K8S_BIN)/etcd go.etcd.io/etcd/server/v3
	@rm -f $(K8S_BIN)/.built $(K8S_BIN)/.built-*
	@touch $@

# CoreDNS for the lab's cluster DNS, from its own module (k8s/coredns: go.mod pins the
# release, main.go picks the plugins). Cold: about 3 CPU-minutes and 0.7 GiB of Go build
# cache; afterwards only a changed k8s/coredns rebuilds.
COREDNS_BIN := build/coredns/bin

coredns: $(COREDNS_BIN)/coredns

$(COREDNS_BIN)/coredns: k8s/coredns/go.mod k8s/coredns/go.sum k8s/coredns/main.go
	@command -v $(GO) >/dev/null || { echo "make coredns: Go is not installed (needs Go 1.26)" >&2; exit 1; }
	@mkdir -p $(COREDNS_BIN)
	cd k8s/coredns && $(K8S_GO) $(GO) build -trimpath -ldflags='-s -w' -o $(CURDIR)/$@.tmp .
	@mv $@.tmp $@

# Helm, for the chart in deploy/helm/smesh (its tests render it with `helm template`),
# compiled from the Go module proxy like Kubernetes above: `go install` of the pinned
# release into build/helm/bin. The stamp names the version, so changing it rebuilds.
HELM_VERSION := 4.3.2
HELM_BIN := build/helm/bin
HELM_LDFLAGS := -trimpath -ldflags='-s -w -X helm.sh/helm/v4/internal/version.version=v$(HELM_VERSION)'

helm: $(HELM_BIN)/.built-$(HELM_VERSION)

$(HELM_BIN)/.built-$(HELM_VERSION):
	@command -v $(GO) >/dev/null || { echo "make helm: Go is not installed (needs Go 1.26)" >&2; exit 1; }
	@mkdir -p $(HELM_BIN)
	GOBIN=$(CURDIR)/$(HELM_BIN) $(K8S_GO) $(GO) install $(HELM_LDFLAGS) helm.sh/helm/v4/cmd/helm@v$(HELM_VERSION)
	@rm -f $(HELM_BIN)/.built-*
	@touch $@

# deploy/smesh.yaml, the chart rendered with its defaults for `kubectl apply -f` (a unit
# test fails when it differs from what this renders: run `make manifest` after a change).
manifest: helm
	{ echo "# smesh: rendered by \`make manifest\` from deploy/helm/smesh with its default values; do not edit."; \
	  $(HELM_BIN)/helm template smesh deploy/helm/smesh --namespace smesh-system --include-crds; } \
	  > deploy/smesh.yaml.tmp && mv deploy/smesh.yaml.tmp deploy/smesh.yaml

# The OCI image of smesh (agent and controller) in build/image/smesh, from Debian packages
# (image/build.sh: mmdebstrap + umoci; no container runtime, no registry). `make test` checks
# it (tests/integration/image), so it is rebuilt when smesh's code, its BPF objects or the
# build script change: a cold build downloads a Debian base system (about 2 minutes here).
IMAGE_TAG := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_STAMP := build/image/.built-$(IMAGE_TAG)
IMAGE_INPUTS := image/build.sh pyproject.toml $(VENV)/.installed $(BPF_OBJ) \
	$(shell find src/smesh -name '*.py' -not -path '*/__pycache__/*')

image: $(IMAGE_STAMP)

$(IMAGE_STAMP): $(IMAGE_INPUTS)
	@scripts/ensure-apt mmdebstrap umoci
	image/build.sh build/image $(IMAGE_TAG)
	@rm -f build/image/.built-*
	@touch $@

image-test: image
	SMESH_IMAGE_TEST=1 $(VENV)/bin/pytest tests/integration/image

lint: venv
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

typecheck: venv
	$(VENV)/bin/mypy --strict src

unit: venv helm native
	$(VENV)/bin/pytest tests/unit

integration: setup kubernetes coredns helm image
	$(VENV)/bin/pytest tests/integration

# The test command of README.md and CI: lint, types, then every test, unit and integration.
test: setup kubernetes coredns helm image lint typecheck
	$(VENV)/bin/pytest tests

demo: setup
	$(VENV)/bin/smesh demo

bench: setup
	$(VENV)/bin/smesh bench --models

clean:
	rm -rf build $(VENV) .mypy_cache .ruff_cache .pytest_cache
