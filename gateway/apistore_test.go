package gateway

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/ztgate/ztgate/conf"
)

// TestAPIStoreSweepsLitter: the temporary files of a save a crash cut
// short are removed when the store is loaded; other files stay.
func TestAPIStoreSweepsLitter(t *testing.T) {
	dir := t.TempDir()
	litter := filepath.Join(dir, "."+apiServicesFile+".tmp-123")
	other := filepath.Join(dir, "keep.txt")
	for _, p := range []string{litter, other} {
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
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another file went: %v", err)
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
