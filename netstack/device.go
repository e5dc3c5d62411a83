package netstack

import "fmt"

// PacketSink receives the packets a device reads. A *Link is one; the agent
// routes them itself.
type PacketSink interface {
	// Deliver takes one packet; it may keep no reference to pkt.
	Deliver(pkt []byte)
}

// Flusher is a PacketSink that holds packets back to merge them (a Batch):
// a device calls Flush after delivering the packets of one read.
type Flusher interface {
	Flush()
}

// Device is a source and a sink of IP packets for one link: a TUN device in
// production, a client stack in tests.
type Device interface {
	Output
	// Run reads packets and hands them to sink until the device is closed;
	// it then returns nil. When sink is a Flusher, Run calls its Flush
	// after the packets of each read, before it waits for more.
	Run(sink PacketSink) error
	// Close stops Run and releases the device.
	Close() error
	// MTU is the largest packet in either direction.
	MTU() int
	// Headroom is the scratch space the device needs in front of every
	// packet given to WritePackets.
	Headroom() int
	// WriteCap is the capacity the device wants for every buffer given to
	// WritePackets (room to coalesce packets in place).
	WriteCap() int
	// BatchSize is the most packets the device takes in one WritePackets.
	BatchSize() int
}

// WholeSink is a PacketSink that also takes packets that must reach the
// stack as they are, without being merged with others first (Batch).
type WholeSink interface {
	PacketSink
	DeliverWhole(pkt []byte)
}

// AttachDevice creates a link whose packets come from and go to dev, and
// runs the device's reader. Closing the link does not close the device; the
// owner closes the device, then the link.
func (ns *Stack) AttachDevice(dev Device, cfg LinkConfig) (*Link, error) {
	cfg.Output = dev
	cfg.MTU = dev.MTU()
	cfg.Headroom = dev.Headroom()
	cfg.WriteCap = dev.WriteCap()
	cfg.BatchSize = dev.BatchSize()
	l, err := ns.NewLink(cfg)
	if err != nil {
		return nil, err
	}
	l.runWG.Add(1)
	go func() {
		defer l.runWG.Done()
		if err := dev.Run(l.NewBatch()); err != nil {
			ns.log.Error("device stopped", "link", cfg.Name, "err", fmt.Errorf("netstack: %w", err))
		}
	}()
	return l, nil
}
