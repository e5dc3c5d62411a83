package promreg

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRegisterNilRegistry(t *testing.T) {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "ztgate_test_total", Help: "h"})
	got, err := Register[prometheus.Counter](nil, c)
	if err != nil || got != c {
		t.Fatalf("Register(nil) = %v, %v; want c, nil", got, err)
	}
}

func TestRegisterReturnsExisting(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := prometheus.CounterOpts{Name: "ztgate_test_total", Help: "h"}
	first, err := Register(reg, prometheus.NewCounterVec(opts, []string{"l"}))
	if err != nil {
		t.Fatal(err)
	}
	second, err := Register(reg, prometheus.NewCounterVec(opts, []string{"l"}))
	if err != nil {
		t.Fatal(err)
	}
	if second != first {
		t.Fatal("second registration did not return the collector already registered")
	}
}

func TestRegisterErrors(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := prometheus.CounterOpts{Name: "ztgate_test_total", Help: "h"}
	if _, err := Register(reg, prometheus.NewCounter(opts)); err != nil {
		t.Fatal(err)
	}
	// The same descriptor, a collector of another type: not the existing one.
	c := prometheus.NewCounterVec(opts, nil)
	got, err := Register(reg, c)
	if err == nil || got != c {
		t.Fatalf("Register of another type = %v, %v; want c and an error", got, err)
	}
	if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); !ok {
		t.Errorf("error %v does not wrap AlreadyRegisteredError", err)
	}
	// Inconsistent help: not AlreadyRegistered at all.
	if _, err := Register(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: "ztgate_test_total", Help: "other"})); err == nil {
		t.Error("inconsistent registration accepted")
	}
}
