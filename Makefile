# tapswitch — see README.md. Every target runs as root on a Debian machine
# with Go; what it needs beyond that it installs itself (make deps, make
# cni-tools).
#
# Targets:
#   build        tapswitchd, tapswitchctl and the CNI plugin tapswitch into bin/
#   test         vet, unit tests (-race), end-to-end tests, the bench's short run
#   demo         the main job on embedded defaults (scripts/demo.sh)
#   bench        kernel bridge + veth against tapswitch (bench-short: CI
#                mode; bench-scale: 200 pods)
#   fuzz         a longer session of every fuzz target
#   deps         the Debian packages demo, test and bench run, when missing
#   cni-tools    cnitool and the reference plugins portmap, tuning,
#                bandwidth, loopback, bridge, host-local at pinned versions
#                into bin/cni-tools (for the tests and the bench's CNI
#                latency rows; nothing goes on the PATH)
#   install      binaries and, when asked, the conflist and the systemd unit
#   clean        remove bin/
#   help         this text
#
# Knobs (make VAR=value):
#   DESTDIR      staging root prefixed to every install path (default empty)
#   PREFIX       tapswitchd and tapswitchctl go to PREFIX/bin (/usr/local)
#   CNI_BIN_DIR  where the plugin goes (/opt/cni/bin)
#   CNI_CONF_DIR where CNI_CONF=1 puts the conflist (/etc/cni/net.d)
#   CNI_CONF=1   also install deploy/10-tapswitch.conflist; a different
#                file of that name already there stops the install
#   FORCE=1      replace that file all the same
#   SYSTEMD=1    also install deploy/tapswitchd.service to /etc/systemd/system
#   GO           the go command (go); BENCH_FLAGS: flags for make bench

GO      ?= go
PREFIX  ?= /usr/local
CNI_BIN_DIR  ?= /opt/cni/bin
CNI_CONF_DIR ?= /etc/cni/net.d
CNI_CONF ?=
FORCE    ?=
SYSTEMD  ?=
BIN     := bin
# Packages with goroutines of their own run under the race detector.
UNIT    := ./switch/... ./tap/... ./netstack/... ./ipam/... ./nodenet/... ./overlay/... ./daemon/... ./cni/... ./internal/... ./cmd/...

.PHONY: all build test demo deps cni-tools install clean fuzz bench bench-short bench-scale help

all: build

# The plugin is static (CGO_ENABLED=0), as the reference plugins are: a
# runtime runs it from /opt/cni/bin wherever it was built, and it needs
# nothing of libc (it only talks to the daemon's unix socket).
build:
	$(GO) build -trimpath -o $(BIN)/ ./cmd/tapswitchd ./cmd/tapswitchctl
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ ./cmd/tapswitch

# All tests. Root-only tests run when root; in CI (CI set) they fail
# rather than skip without root.
# The bench's own test runs make bench in its short mode (1 round, 2 s a
# figure) so it cannot rot: it prints the numbers and checks their shape,
# never their size.
test: build deps cni-tools
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 10m $(UNIT)
	$(GO) test -count=1 -timeout 10m ./test/...
	$(GO) test -v -count=1 -timeout 10m ./bench/

# A longer fuzzing session of every fuzz target (not part of make test,
# which runs their seed corpora).
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzForward -fuzztime 60s ./switch/
	$(GO) test -run '^$$' -fuzz FuzzDecodeVnetHdr -fuzztime 60s ./tap/
	$(GO) test -run '^$$' -fuzz FuzzParseReserve -fuzztime 60s ./ipam/
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 60s ./ipam/
	$(GO) test -run '^$$' -fuzz FuzzCheckPacket -fuzztime 60s ./overlay/
	$(GO) test -run '^$$' -fuzz FuzzWriteICMPError -fuzztime 60s ./switch/

# The main job on embedded defaults: daemon, pods, traffic, figures,
# clean-up (also on Ctrl-C and on failure).
demo: build deps
	./scripts/demo.sh

# The benchmark (bench/): kernel bridge + veth against tapswitch, in one
# run on this machine; prints a table and writes bench/results/latest.json.
# Pass flags with BENCH_FLAGS, e.g. BENCH_FLAGS="-rounds 5 -duration 20s".
# bench-short is the CI mode (1 round, 2 s per test), bench-scale the
# figures at 200 pods (bench/results/scale.json).
BENCH_FLAGS ?=
bench: build deps cni-tools
	$(GO) run ./bench -go $(GO) $(BENCH_FLAGS)

bench-short: build deps cni-tools
	$(GO) run ./bench -go $(GO) -short $(BENCH_FLAGS)

bench-scale: build
	$(GO) run ./bench -go $(GO) -scale $(BENCH_FLAGS)

# Debian packages the demo and the benchmarks use, installed when missing
# (ethtool: the bench records the pods' offload settings; curl: the demo;
# nftables: the nft command route mode writes the node's rules with;
# iptables: the bench's kernel NAT, and the tests' kube-proxy emulation and
# portmap chain).
DEB_DEPS := iperf3 iputils-ping ethtool iptables nftables curl
deps:
	@missing=""; for p in $(DEB_DEPS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# cnitool and the reference plugins the tests chain after tapswitch, built
# from source at pinned versions into bin/cni-tools: the same code on every
# machine, not whatever a distribution ships, and nothing in /opt/cni/bin or
# on the PATH of the machine running the tests. The stamp file records the
# versions; the tools are fetched again only when one is missing or the
# versions change.
CNITOOL_VERSION     := v1.3.1
CNI_PLUGINS_VERSION := v1.10.0
CNI_TOOLS_DIR       := $(abspath $(BIN))/cni-tools
CNI_TOOLS           := cnitool portmap tuning bandwidth loopback bridge host-local
CNI_TOOLS_STAMP     := cnitool@$(CNITOOL_VERSION) plugins@$(CNI_PLUGINS_VERSION)
cni-tools:
	@current=yes; \
	[ "$$(cat $(CNI_TOOLS_DIR)/.versions 2>/dev/null)" = "$(CNI_TOOLS_STAMP)" ] || current=no; \
	for t in $(CNI_TOOLS); do [ -x $(CNI_TOOLS_DIR)/$$t ] || current=no; done; \
	[ $$current = no ] || exit 0; \
	echo "installing $(CNI_TOOLS) ($(CNI_TOOLS_STAMP)) into $(CNI_TOOLS_DIR)"; \
	rm -f $(CNI_TOOLS_DIR)/.versions; \
	GOBIN=$(CNI_TOOLS_DIR) $(GO) install github.com/containernetworking/cni/cnitool@$(CNITOOL_VERSION) && \
	GOBIN=$(CNI_TOOLS_DIR) $(GO) install \
		github.com/containernetworking/plugins/plugins/meta/portmap@$(CNI_PLUGINS_VERSION) \
		github.com/containernetworking/plugins/plugins/meta/tuning@$(CNI_PLUGINS_VERSION) \
		github.com/containernetworking/plugins/plugins/meta/bandwidth@$(CNI_PLUGINS_VERSION) \
		github.com/containernetworking/plugins/plugins/main/loopback@$(CNI_PLUGINS_VERSION) \
		github.com/containernetworking/plugins/plugins/main/bridge@$(CNI_PLUGINS_VERSION) \
		github.com/containernetworking/plugins/plugins/ipam/host-local@$(CNI_PLUGINS_VERSION) && \
	echo "$(CNI_TOOLS_STAMP)" > $(CNI_TOOLS_DIR)/.versions

# Binaries always; the conflist only with CNI_CONF=1 (it changes which
# network a runtime uses) and never over a different file of the same name
# without FORCE=1 (checked before anything is installed); the systemd unit
# only with SYSTEMD=1, its ExecStart pointed at PREFIX. Nothing is started
# or reloaded: with DESTDIR this stages a tree for packaging.
CONFLIST := 10-tapswitch.conflist
install: build
ifeq ($(CNI_CONF),1)
	@dst="$(DESTDIR)$(CNI_CONF_DIR)/$(CONFLIST)"; \
	if [ -e "$$dst" ] && ! cmp -s deploy/$(CONFLIST) "$$dst" && [ "$(FORCE)" != 1 ]; then \
		echo "$$dst exists and differs from deploy/$(CONFLIST); not replacing it (FORCE=1 replaces it)" >&2; \
		exit 1; \
	fi
endif
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(CNI_BIN_DIR)
	install -m 0755 $(BIN)/tapswitchd $(BIN)/tapswitchctl $(DESTDIR)$(PREFIX)/bin/
	install -m 0755 $(BIN)/tapswitch $(DESTDIR)$(CNI_BIN_DIR)/
ifeq ($(CNI_CONF),1)
	install -d $(DESTDIR)$(CNI_CONF_DIR)
	install -m 0644 deploy/$(CONFLIST) $(DESTDIR)$(CNI_CONF_DIR)/$(CONFLIST)
endif
ifeq ($(SYSTEMD),1)
	install -d $(DESTDIR)/etc/systemd/system
	sed 's|/usr/local/bin/tapswitchd|$(PREFIX)/bin/tapswitchd|' deploy/tapswitchd.service > $(DESTDIR)/etc/systemd/system/tapswitchd.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/tapswitchd.service
	@[ -n "$(DESTDIR)" ] || echo "next: systemctl daemon-reload && systemctl enable --now tapswitchd"
endif

clean:
	rm -rf $(BIN)

help:
	@sed -n '1,/^$$/s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))
