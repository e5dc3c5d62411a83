package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
)

// Faults faultyWrite injects, one per call of the store's write.
const (
	writeOK     = ""       // write the file
	writeBefore = "before" // fail before the rename, as a full disk does: the file is untouched
	writeAfter  = "after"  // replace the file, then fail as a directory sync does
)

// faultyWrite is a write function for an apiStore whose calls fail as
// faults says, in order; calls past the end write.
func faultyWrite(faults ...string) func(string, []byte, os.FileMode) (bool, error) {
	call := 0
	return func(path string, data []byte, perm os.FileMode) (bool, error) {
		fault := writeOK
		if call < len(faults) {
			fault = faults[call]
		}
		call++
		switch fault {
		case writeBefore:
			return false, fmt.Errorf("write %s: %w", path, &fs.PathError{Op: "write", Path: path + ".tmp-1", Err: syscall.ENOSPC})
		case writeAfter:
			if _, err := catalog.WriteFileAtomic(path, data, perm); err != nil {
				return false, err
			}
			return true, fmt.Errorf("write %s: the file is replaced but may not survive a crash: %w",
				path, &fs.PathError{Op: "sync", Path: filepath.Dir(path), Err: syscall.EIO})
		}
		return catalog.WriteFileAtomic(path, data, perm)
	}
}

// TestAPIStoreSaveFault: a save that fails leaves the store and its file as
// they were, and so does the undo of a save; only a second fault while
// putting the file back leaves the change in it (and the next save drops it).
func TestAPIStoreSaveFault(t *testing.T) {
	tests := []struct {
		name     string
		existing bool     // the file holds service a before
		faults   []string // of the store's writes, in order
		undo     bool     // save succeeds and is undone
		wantErr  string   // "" : no error
		wantFile []string // the services a fresh load finds
	}{
		{"disk full", true, []string{writeBefore}, false, "no space left on device", []string{"a"}},
		{"disk full, no file yet", false, []string{writeBefore}, false, "no space left on device", nil},
		{"rename may not survive a crash", true, []string{writeAfter}, false, "input/output error", []string{"a"}},
		{"rename may not survive a crash, no file before", false, []string{writeAfter}, false, "input/output error", nil},
		{"rename may not survive a crash, putting back fails", true, []string{writeAfter, writeBefore}, false, "failed too", []string{"a", "b"}},
		{"saved, then undone", true, nil, true, "", []string{"a"}},
		{"saved, then undone, no file before", false, nil, true, "", nil},
		{"saved, undo fails", true, []string{writeOK, writeBefore}, true, "keeps the change", []string{"a", "b"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := newAPIStore(dir)
			if tc.existing {
				if _, err := s.save(s.with("a", apiBody("a"))); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := os.ReadFile(s.path)
			s.write = faultyWrite(tc.faults...)
			undo, err := s.save(s.with("b", apiBody("b")))
			if tc.undo {
				if err != nil {
					t.Fatalf("save: %v", err)
				}
				err = undo()
			}
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			want := map[bool][]string{true: {"a"}, false: nil}[tc.existing]
			if got := slices.Sorted(maps.Keys(s.bodies)); !slices.Equal(got, want) {
				t.Errorf("the store holds %q, want %q as before", got, want)
			}
			if got := loadNames(t, dir); !slices.Equal(got, tc.wantFile) {
				t.Errorf("the file holds %q, want %q", got, tc.wantFile)
			}
			if after, _ := os.ReadFile(s.path); tc.existing && slices.Equal(tc.wantFile, want) && !bytes.Equal(after, before) {
				t.Errorf("the file changed:\n%s\nwant\n%s", after, before)
			}
			if tmp, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*")); len(tmp) > 0 {
				t.Errorf("temporary files left: %q", tmp)
			}
			s.write = catalog.WriteFileAtomic
			if _, err := s.save(s.with("c", apiBody("c"))); err != nil {
				t.Fatal(err)
			}
			if got, want := loadNames(t, dir), append(want, "c"); !slices.Equal(got, want) {
				t.Errorf("after the next save the file holds %q, want %q", got, want)
			}
		})
	}
}

func apiBody(name string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"name": %q, "tenants": ["*"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 7}]}`, name))
}

// loadNames returns the names of the services stored in dir, as the next
// start loads them.
func loadNames(t *testing.T, dir string) []string {
	t.Helper()
	return loadNamesWith(t, dir, conf.ServiceContext{})
}

func loadNamesWith(t *testing.T, dir string, ctx conf.ServiceContext) []string {
	t.Helper()
	svcs, err := newAPIStore(dir).load(ctx)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	var names []string
	for _, s := range svcs {
		names = append(names, s.Name)
	}
	slices.Sort(names)
	return names
}

// TestAPIServiceChangeFault: a change through the API that fails — the
// store cannot be saved, or the change cannot be applied — answers 500 (409
// for a VIP conflict) and leaves the running services, the store and the
// file that the next start reads as they were.
func TestAPIServiceChangeFault(t *testing.T) {
	echo := startLineEcho(t, "echo")
	body := func(name, vip string) string {
		return fmt.Sprintf(`{"name": %q, "tenants": ["acme"], "vip": %q, "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 7, "target": %d}], "health": {"type": "none"}}`, name, vip, echo)
	}
	tests := []struct {
		name     string
		setup    func(t *testing.T, h *fileHarness, do func(method, path, body string) (int, string))
		faults   []string // of the store's writes during the request
		method   string
		path     string
		body     string
		status   int
		contains string
		want     []string // API services running, in memory and in the file afterwards
		wantFile []string // when the file differs from want
	}{
		{name: "add: disk full", faults: []string{writeBefore},
			method: "POST", path: "/v1/services", body: body("api2", ""),
			status: 500, contains: "no space left on device", want: []string{"api1"}},
		{name: "add: the rename may not survive a crash", faults: []string{writeAfter},
			method: "POST", path: "/v1/services", body: body("api2", ""),
			status: 500, contains: "may not survive a crash", want: []string{"api1"}},
		{name: "add: the VIP state cannot be saved", setup: func(t *testing.T, h *fileHarness, _ func(string, string, string) (int, string)) {
			// A directory where the VIP state is renamed to: the store's
			// file can still be written (and put back).
			state := filepath.Join(h.dir, "state", catalog.StateFileName)
			must(t, os.Remove(state))
			must(t, os.MkdirAll(filepath.Join(state, "x"), 0o755))
		}, method: "POST", path: "/v1/services", body: body("api2", ""),
			status: 500, contains: "save VIP state", want: []string{"api1"}},
		{name: "add: a pin on a held VIP, undone", setup: holdVIP(body("held", "10.100.0.30")),
			method: "POST", path: "/v1/services", body: body("api2", "10.100.0.30"),
			status: 409, contains: "10.100.0.30", want: []string{"api1"}},
		{name: "add: a pin on a held VIP, the undo fails", setup: holdVIP(body("held", "10.100.0.30")),
			faults: []string{writeOK, writeBefore},
			method: "POST", path: "/v1/services", body: body("api2", "10.100.0.30"),
			status: 500, contains: "keeps the change", want: []string{"api1"}, wantFile: []string{"api1", "api2"}},
		{name: "delete: disk full", faults: []string{writeBefore},
			method: "DELETE", path: "/v1/services/api1",
			status: 500, contains: "no space left on device", want: []string{"api1"}},
		{name: "delete: the rename may not survive a crash", faults: []string{writeAfter},
			method: "DELETE", path: "/v1/services/api1",
			status: 500, contains: "may not survive a crash", want: []string{"api1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newFileHarness(t, reloadConfig(echo, `"acme"`, ""))
			api := h.gw.apiHandler("")
			do := func(method, path, body string) (int, string) {
				t.Helper()
				return serveAPI(t, api, method, path, body, "")
			}
			if status, b := do("POST", "/v1/services", body("api1", "")); status != 201 {
				t.Fatalf("add api1: %d %s", status, b)
			}
			if tc.setup != nil {
				tc.setup(t, h, do)
			}
			h.gw.reloadMu.Lock()
			h.gw.apiStore.write = faultyWrite(tc.faults...)
			h.gw.reloadMu.Unlock()

			if status, b := do(tc.method, tc.path, tc.body); status != tc.status || !strings.Contains(b, tc.contains) {
				t.Fatalf("%s %s: %d %s; want %d containing %q", tc.method, tc.path, status, b, tc.status, tc.contains)
			}

			h.gw.reloadMu.Lock()
			defer h.gw.reloadMu.Unlock()
			var running []string
			for _, s := range h.gw.tbl.Load().byName {
				if s.spec.Source == "api" {
					running = append(running, s.spec.Name)
				}
			}
			slices.Sort(running)
			var kept []string
			for _, s := range h.gw.apiServices {
				kept = append(kept, s.Name)
			}
			for what, got := range map[string][]string{
				"running":        running,
				"the API's list": kept,
				"the store":      slices.Sorted(maps.Keys(h.gw.apiStore.bodies)),
			} {
				if !slices.Equal(got, tc.want) {
					t.Errorf("%s holds %q, want %q", what, got, tc.want)
				}
			}
			wantFile := tc.want
			if tc.wantFile != nil {
				wantFile = tc.wantFile
			}
			if got := loadNamesWith(t, filepath.Join(h.dir, "state"), h.gw.running.ServiceContext()); !slices.Equal(got, wantFile) {
				t.Errorf("the next start would find %q, want %q", got, wantFile)
			}
		})
	}
}

// holdVIP adds a service pinned on a VIP and deletes it: the VIP is held
// for the hold-down.
func holdVIP(body string) func(t *testing.T, h *fileHarness, do func(method, path, body string) (int, string)) {
	return func(t *testing.T, h *fileHarness, do func(method, path, body string) (int, string)) {
		t.Helper()
		if status, b := do("POST", "/v1/services", body); status != 201 {
			t.Fatalf("add: %d %s", status, b)
		}
		if status, b := do("DELETE", "/v1/services/held", ""); status != 204 {
			t.Fatalf("delete: %d %s", status, b)
		}
	}
}
