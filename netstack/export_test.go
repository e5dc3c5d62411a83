package netstack

import "golang.zx2c4.com/wireguard/tun"

// NewTUNOn wraps dev as a TUN without creating an interface, for tests of
// the batch read and write path with a fake device.
func NewTUNOn(dev tun.Device, mtu int) *TUN {
	return &TUN{dev: dev, name: "fake", mtu: mtu, batch: dev.BatchSize()}
}

// IPPackets returns gVisor's counts of IP packets the stack received and of
// those it found malformed.
func IPPackets(ns *Stack) (received, malformed uint64) {
	st := ns.s.Stats().IP
	return st.PacketsReceived.Value(), st.MalformedPacketsReceived.Value()
}
