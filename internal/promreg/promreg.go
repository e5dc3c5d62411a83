// Package promreg registers Prometheus collectors so that a component
// rebuilt on reload keeps counting in the series it registered before. It
// is a leaf: the building blocks may import it, and it imports nothing of
// the module.
package promreg

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c with reg and returns it. When reg already holds a
// collector of the same type under the same descriptors, Register returns
// that one instead, so that counts continue. A nil reg registers nothing
// and returns c. Any other failure is returned, wrapped, with c.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("register metrics: %w", err)
}
