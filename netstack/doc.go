// Package netstack is ztgate's userspace TCP/IP stack: a gVisor netstack fed
// by packet links (a TUN device, or datagrams of tunnel sessions) that
// terminates TCP, UDP and ICMP echo for every address of the VIP pools and
// hands each new flow to a Handler.
//
// It is the only package that imports gVisor and golang.zx2c4.com/wireguard/tun;
// no gVisor type appears in its exported API, so the rest of ztgate does not
// churn with gVisor's.
package netstack
