package gateway

import (
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestReloadStatus: POST /v1/reload tells a configuration its author must
// fix (400, with the errors) from a gateway that failed (500): a client
// must not be told to fix a valid file the gateway could not read, nor
// the state it could not save.
func TestReloadStatus(t *testing.T) {
	echo := startLineEcho(t, "echo")
	base := reloadConfig(echo, `"acme"`, "")
	// failRead makes the gateway's reads of its configuration fail with errno.
	failRead := func(errno syscall.Errno) func(t *testing.T, h *fileHarness, api http.Handler) {
		return func(t *testing.T, h *fileHarness, api http.Handler) {
			h.gw.reloadMu.Lock()
			defer h.gw.reloadMu.Unlock()
			h.gw.readFile = func(name string) ([]byte, error) {
				return nil, &fs.PathError{Op: "open", Path: name, Err: errno}
			}
		}
	}
	addAPIService := func(t *testing.T, api http.Handler, body string) {
		t.Helper()
		if status, answer := serveAPI(t, api, "POST", "/v1/services", body, ""); status != http.StatusCreated {
			t.Fatalf("add through the API: %d %s", status, answer)
		}
	}
	apiService := fmt.Sprintf(`{"name": "api1", "tenants": ["acme"], "vip": "10.100.0.20", "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 7, "target": %d}], "health": {"type": "none"}}`, echo)
	tests := []struct {
		name     string
		setup    func(t *testing.T, h *fileHarness, api http.Handler)
		status   int
		contains string
	}{
		{"valid", func(t *testing.T, h *fileHarness, api http.Handler) {
			h.write(t, base+webService(echo))
		}, http.StatusOK, `"added": [`},
		{"syntax error", func(t *testing.T, h *fileHarness, api http.Handler) {
			h.write(t, "[[service]\nbroken")
		}, http.StatusBadRequest, "gw.toml:2:"},
		{"invalid values", func(t *testing.T, h *fileHarness, api http.Handler) {
			h.write(t, base+"\n[[service]]\nname = \"broken\"\n")
		}, http.StatusBadRequest, "service[1]"},
		{"missing file", func(t *testing.T, h *fileHarness, api http.Handler) {
			must(t, os.Remove(h.path))
		}, http.StatusBadRequest, "no such file"},
		{"a service both in the file and the API", func(t *testing.T, h *fileHarness, api http.Handler) {
			addAPIService(t, api, apiService)
			h.write(t, base+tcpService("api1", `"acme"`, "10.100.0.21", "127.0.0.1", echo))
		}, http.StatusBadRequest, "defined in the file and through the API"},
		{"a pin on the VIP of an API service", func(t *testing.T, h *fileHarness, api http.Handler) {
			addAPIService(t, api, apiService)
			h.write(t, base+tcpService("web", `"acme"`, "10.100.0.20", "127.0.0.1", echo))
		}, http.StatusBadRequest, "10.100.0.20"},
		{"permission denied", failRead(syscall.EACCES), http.StatusInternalServerError, "permission denied"},
		{"I/O error", failRead(syscall.EIO), http.StatusInternalServerError, "input/output error"},
		{"a directory where the file was", func(t *testing.T, h *fileHarness, api http.Handler) {
			must(t, os.Remove(h.path))
			must(t, os.Mkdir(h.path, 0o755))
		}, http.StatusInternalServerError, "is a directory"},
		{"the VIP state cannot be saved", func(t *testing.T, h *fileHarness, api http.Handler) {
			state := filepath.Join(h.dir, "state")
			must(t, os.RemoveAll(state))
			must(t, os.WriteFile(state, nil, 0o600)) // a file: nothing can be made in it
			h.write(t, base+webService(echo))
		}, http.StatusInternalServerError, "save VIP state"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newFileHarness(t, base)
			api := h.gw.apiHandler("")
			tc.setup(t, h, api)
			status, body := serveAPI(t, api, "POST", "/v1/reload", "", "")
			if status != tc.status || !strings.Contains(body, tc.contains) {
				t.Fatalf("POST /v1/reload: %d %s; want %d containing %q", status, body, tc.status, tc.contains)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
