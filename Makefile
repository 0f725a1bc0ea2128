# tapswitch — see README.md. Every target runs as root on a Debian machine
# with Go; what it needs beyond that it installs itself (make deps).

GO      ?= go
PREFIX  ?= /usr/local
BIN     := bin
# Packages with goroutines of their own run under the race detector.
UNIT    := ./switch/... ./tap/... ./netstack/... ./ipam/... ./daemon/... ./cni/... ./internal/... ./cmd/...

.PHONY: all build test demo deps install clean fuzz bench bench-short bench-scale

all: build

build:
	$(GO) build -trimpath -o $(BIN)/ ./cmd/tapswitchd ./cmd/tapswitchctl

# All tests. Root-only tests run when root; in CI (CI set) they fail
# rather than skip without root.
# The bench's own test runs make bench in its short mode (1 round, 2 s a
# figure) so it cannot rot: it prints the numbers and checks their shape,
# never their size.
test: build deps
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
bench: build deps
	$(GO) run ./bench -go $(GO) $(BENCH_FLAGS)

bench-short: build deps
	$(GO) run ./bench -go $(GO) -short $(BENCH_FLAGS)

bench-scale: build
	$(GO) run ./bench -go $(GO) -scale $(BENCH_FLAGS)

# Debian packages the demo and the benchmarks use, installed when missing
# (ethtool: the bench records the pods' offload settings; curl: the demo).
DEB_DEPS := iperf3 iputils-ping ethtool iptables curl
deps:
	@missing=""; for p in $(DEB_DEPS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BIN)/tapswitchd $(BIN)/tapswitchctl $(DESTDIR)$(PREFIX)/bin/

clean:
	rm -rf $(BIN)
