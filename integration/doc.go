// Package integration holds ztgate's end-to-end tests and benchmark
// harness. They build real network namespaces joined by veth pairs on
// documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24), run
// the ztgate binary inside them with real TUN devices, and drive it with
// curl, socat, ping, dig and iperf3 as a user on a Linux router would.
//
// Safety rules the helpers enforce: every namespace, link and process a test
// creates is removed or stopped by the test (processes by PID); traffic to
// the VIP pool is only ever sent from inside a client namespace whose routes
// lead into the test's own TUN device; every wait is bounded. A test binary
// killed before its cleanup (a timeout, SIGKILL) takes its processes with it
// (each is started with a parent-death signal); the namespaces it left,
// named ztg<pid>.<n>-<role>, are deleted by the next run once that PID is
// gone.
//
// The tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces); they
// skip with a message without it.
package integration
