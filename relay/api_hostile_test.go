package relay

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/adminapi"
)

// TestAPISlowClient sends half a request to the relay's API: the server
// hangs up after its header timeout instead of holding the connection.
func TestAPISlowClient(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the API's header timeout")
	}
	t.Parallel()
	r := startRelay(t, newPKI(t).relayConfig(t.TempDir()))
	c, err := net.Dial("tcp", r.APIAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	io.WriteString(c, "GET /v1/services HTTP/1.1\r\nHost: x\r\n")
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, err = io.ReadAll(c)
	if d := time.Since(start); err != nil || d > adminapi.ReadHeaderTimeout+2*time.Second {
		t.Fatalf("connection held %v (header timeout %v): %v", d, adminapi.ReadHeaderTimeout, err)
	}
}
