package netstack

import "golang.zx2c4.com/wireguard/tun"

// NewTUNOn wraps dev as a TUN without creating an interface, for tests of
// the batch read and write path with a fake device.
func NewTUNOn(dev tun.Device, mtu int) *TUN {
	return &TUN{dev: dev, name: "fake", mtu: mtu, batch: dev.BatchSize()}
}
