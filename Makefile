# ztgate — run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CONFIG ?= examples/gateway.toml
FUZZTIME ?= 30s
# go test minimizes each new input for up to 60 s by default; a target whose
# large inputs are slow to minimize (FuzzReceiveVirtio) then spends its whole
# FUZZTIME minimizing and finds nothing.
FUZZMINIMIZETIME ?= 5s
SOAKTIME ?= 10m
GOVULNCHECK ?= golang.org/x/vuln/cmd/govulncheck@latest
# make vuln VULNDB='-db file:///path/to/db': a local copy of the vulnerability database
VULNDB ?=
BENCHTIME ?= 5s

.PHONY: help build run tools bench-tools test test-unit test-integration lint bench fuzz soak vuln vuln-selftest clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## build bin/ztgate
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/ztgate ./cmd/ztgate

run: build ## run the gateway on $(CONFIG) (needs root: it creates a TUN device)
	$(SUDO) ./bin/ztgate gateway -config $(CONFIG)

test: tools test-unit test-integration ## run every test: unit and component tests with -race, then the namespace integration tests

tools: ## install the client tools the integration tests drive (apt, when any is missing), and unpack systemd-resolved for one of them
	@missing=; for t in ip tc ping curl dig socat iperf3 nft setpriv unshare nsenter pgrep gcc dbus-daemon; do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null; then $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$(cat .ci/packages); \
	  else echo "install: $$(cat .ci/packages)"; exit 1; fi; \
	fi
	@scripts/resolved-fetch.sh

test-unit: ## unit and in-process component tests, with the race detector
	scripts/quic-go-fork.sh check
	$(GO) test -race -shuffle=on -count=1 -timeout 15m $$($(GO) list ./... | grep -v /integration)
	@# without the race detector: every benchmark once, and the allocation
	@# tests (named *Allocs), which the race detector's own allocations skip
	@out=$$($(GO) test -v -count=1 -run='Allocs$$' -bench=. -benchtime=1x $$($(GO) list ./... | grep -v /integration) 2>&1) || { echo "$$out"; exit 1; }; \
	echo "$$out" | grep -c -- '^--- PASS: Test' | xargs printf '%s allocation tests and every benchmark passed without the race detector\n'

test-integration: ## end-to-end tests in network namespaces with real TUN devices (root)
	$(SUDO) env "PATH=$$PATH" $(GO) test -count=1 -timeout 20m ./integration/...

lint: ## gofmt, go vet and staticcheck (third_party/ is upstream's code: checked by scripts/quic-go-fork.sh instead)
	@out=$$(gofmt -l $$(git ls-files '*.go' ':!third_party')); if [ -n "$$out" ]; then echo "not gofmt-ed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

bench-tools: tools ## install the peers and load generators the benchmark suite runs (apt, when missing)
	@missing=; for t in iperf3 dnsperf unbound nft slirp4netns wg; do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$(cat .ci/bench-packages); fi

bench: bench-tools ## Go micro-benchmarks and the end-to-end suite against the kernel path and peers (root; writes bench-results/, table.md)
	mkdir -p bench-results
	rm -f bench-results/e2e.jsonl
	$(GO) test -run='^$$' -bench=. -benchmem -benchtime=$(BENCHTIME) $$($(GO) list ./... | grep -v /integration) | tee bench-results/micro.txt
	$(SUDO) env "PATH=$$PATH" ZTGATE_BENCH=1 $(GO) test -count=1 -timeout 30m -run='^TestBench' -v ./integration/ | tee bench-results/e2e.txt
	$(GO) run ./integration/benchreport -in bench-results/e2e.jsonl | tee bench-results/table.md

fuzz: ## run every fuzz target of every package for FUZZTIME each (default 30s)
	GO=$(GO) FUZZTIME=$(FUZZTIME) FUZZMINIMIZETIME=$(FUZZMINIMIZETIME) scripts/fuzz.sh

soak: ## soak test, not in CI: flows churned for SOAKTIME (default 10m) with reloads; curve in bench-results/soak-*.csv (root)
	mkdir -p bench-results
	$(SUDO) env "PATH=$$PATH" ZTGATE_SOAK=1 SOAKTIME=$(SOAKTIME) $(GO) test -count=1 -timeout 0 -run '^TestSoak$$' -v ./integration/

# govulncheck in two passes (scripts/vuln.sh): ztgate as built, then the
# upstream quic-go release that third_party/quic-go patches, whose directory
# replace gives the database no version to match.
vuln: ## govulncheck against vuln.go.dev: fails on a known vulnerability, warns when the database is unreachable
	@GOBIN=$(CURDIR)/bin $(GO) install $(GOVULNCHECK) || { echo "govulncheck could not be installed: not checked"; exit 0; }; \
	GO=$(GO) scripts/vuln.sh $(CURDIR)/bin/govulncheck $(VULNDB)

vuln-selftest: ## make vuln's check against two made-up databases, offline: it must fail on quic-go's, pass on the other
	@GOBIN=$(CURDIR)/bin $(GO) install $(GOVULNCHECK) || { echo "govulncheck could not be installed: not checked"; exit 0; }; \
	GO=$(GO) scripts/vuln-selftest.sh $(CURDIR)/bin/govulncheck

PKI_DIR ?= examples/pki

.PHONY: pki demo
pki: build ## create examples/pki/ (git-ignored): a CA and the certificates the example configurations name
	@if [ -e $(PKI_DIR)/ca.crt ]; then echo "$(PKI_DIR) already holds a CA: remove the directory to make a new one"; exit 0; fi; set -e; \
	./bin/ztgate pki init -dir $(PKI_DIR) -name "ztgate example CA"; \
	./bin/ztgate pki issue -dir $(PKI_DIR) -role relay -tenant infra -name relay1 -dns relay.example.net -out $(PKI_DIR)/relay; \
	./bin/ztgate pki issue -dir $(PKI_DIR) -role gateway -tenant infra -name gw-east -out $(PKI_DIR)/gateway; \
	./bin/ztgate pki issue -dir $(PKI_DIR) -role agent -tenant acme -name laptop -out $(PKI_DIR)/agent

demo: build ## the five-minute tour in network namespaces: relay, gateway, two backends, agents of two tenants (root)
	$(GO) build -o bin/testbackend ./integration/testbackend
	$(SUDO) scripts/demo.sh bin/ztgate bin/testbackend

clean: ## remove build and benchmark outputs
	rm -rf bin bench-results
