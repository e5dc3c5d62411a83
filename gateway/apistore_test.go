package gateway

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ztgate/ztgate/conf"
)

// TestAPIStoreSweepsLitter: the temporary files of a save a crash cut
// short are removed when the store is loaded; other files stay, also in a
// directory whose name a pattern of the state directory's path would match
// (a glob of "gw[1]/…" matched "gw1/…" and not its own files).
func TestAPIStoreSweepsLitter(t *testing.T) {
	for _, name := range []string{"state", "gw[1]", "gw*", `gw\?`} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			dir, sibling := filepath.Join(root, name), filepath.Join(root, "gw1")
			litter := filepath.Join(dir, "."+apiServicesFile+".tmp-123")
			keep := []string{filepath.Join(dir, "keep.txt"), filepath.Join(sibling, "."+apiServicesFile+".tmp-456")}
			for _, p := range append([]string{litter}, keep...) {
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := newAPIStore(dir).load(conf.ServiceContext{}); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(litter); !os.IsNotExist(err) {
				t.Errorf("the interrupted save's file is still there: %v", err)
			}
			for _, p := range keep {
				if _, err := os.Stat(p); err != nil {
					t.Errorf("another file went: %v", err)
				}
			}
		})
	}
}

// TestHeldAnswerAsNetHTTP: a held answer keeps what net/http would send:
// the first status (a later WriteHeader is ignored, a Write before any
// means 200), the headers set on it, and the body.
func TestHeldAnswerAsNetHTTP(t *testing.T) {
	for _, tc := range []struct {
		name string
		do   func(w http.ResponseWriter)
		want int
	}{
		{"first status kept", func(w http.ResponseWriter) { w.WriteHeader(201); w.WriteHeader(500); w.Write([]byte("x")) }, 201},
		{"write first is 200", func(w http.ResponseWriter) { w.Write([]byte("x")); w.WriteHeader(409) }, 200},
		{"status only", func(w http.ResponseWriter) { w.Header().Set("X-T", "1"); w.WriteHeader(404); w.Write([]byte("x")) }, 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := httptest.NewRecorder()
			tc.do(want)
			rec := httptest.NewRecorder()
			a := holdAnswer(rec)
			tc.do(a)
			a.send()
			if rec.Code != tc.want || want.Code != tc.want || rec.Body.String() != want.Body.String() || rec.Header().Get("X-T") != want.Header().Get("X-T") {
				t.Errorf("held: %d %q %v; net/http: %d %q %v; want status %d", rec.Code, rec.Body, rec.Header(), want.Code, want.Body, want.Header(), tc.want)
			}
		})
	}
}

// TestAPIStoreStateDirNotADirectory: a state_dir that cannot be a
// directory (a path through a file) stops a gateway attached to a relay at
// start; the error names state_dir and what to do, where it said only
// "open …/api-services.json: not a directory".
func TestAPIStoreStateDirNotADirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "afile")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(file, "state")
	_, err := newAPIStore(stateDir).load(conf.ServiceContext{AllowUnknownTenants: true})
	want := "state_dir " + stateDir + " must be a directory this user can read and write; fix it or set [gateway] state_dir to one"
	if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("load = %v, want ENOTDIR and %q", err, want)
	}
}
