package catalog

import "testing"

func TestPortFor(t *testing.T) {
	s := &Service{Name: "web", Ports: []Port{
		{Name: "http", Protocol: TCP, Port: 80, Target: 8080},
		{Protocol: UDP, Port: 80, Target: 8081}, // same number, other protocol
		{Protocol: TCP, Port: 443, Target: 443},
	}}
	for _, tc := range []struct {
		name  string
		proto Protocol
		port  uint16
		want  Port
		ok    bool
	}{
		{"tcp mapped", TCP, 80, s.Ports[0], true},
		{"udp on the same number", UDP, 80, s.Ports[1], true},
		{"target equal to port", TCP, 443, s.Ports[2], true},
		{"udp not mapped", UDP, 443, Port{}, false},
		{"port not mapped", TCP, 8080, Port{}, false},
		{"port zero", TCP, 0, Port{}, false},
		{"unknown protocol", Protocol(0), 80, Port{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := s.PortFor(tc.proto, tc.port)
			if got != tc.want || ok != tc.ok {
				t.Errorf("PortFor(%v, %d) = %+v, %v; want %+v, %v", tc.proto, tc.port, got, ok, tc.want, tc.ok)
			}
		})
	}
	if _, ok := (&Service{}).PortFor(TCP, 80); ok {
		t.Error("a service without ports maps port 80")
	}
}
