package tunnel

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

// goldenMessages pins the JSON of every control message (docs/protocol.md).
var goldenMessages = []struct {
	name string
	msg  any
	json string
}{
	{"hello agent", &Hello{Type: MessageHello, Role: RoleAgent, Name: "laptop", Version: "1.0",
		InnerAddr: netip.MustParseAddr("100.64.0.1")},
		`{"type":"hello","role":"agent","name":"laptop","version":"1.0","inner_addr":"100.64.0.1"}`},
	{"hello gateway", &Hello{Type: MessageHello, Role: RoleGateway, Name: "gw1"},
		`{"type":"hello","role":"gateway","name":"gw1"}`},
	{"welcome v4", &Welcome{Type: MessageWelcome, Session: 42, Observed: netip.MustParseAddrPort("203.0.113.5:54321"), MaxPacket: 1280},
		`{"type":"welcome","session":42,"observed":"203.0.113.5:54321","max_packet":1280}`},
	{"welcome v6", &Welcome{Type: MessageWelcome, Session: 7, Observed: netip.MustParseAddrPort("[2001:db8::1]:443")},
		`{"type":"welcome","session":7,"observed":"[2001:db8::1]:443"}`},
	{"register", &Register{Type: MessageRegister, Services: []ServiceInfo{{
		Name: "web", Tenants: []string{"acme", "*"}, ICMP: true, Healthy: true,
		Ports: []PortInfo{{Name: "http", Protocol: "tcp", Port: 80}, {Protocol: "udp", Port: 53}},
		VIP:   netip.MustParseAddr("10.100.0.10"),
	}}, Candidates: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434")}},
		`{"type":"register","services":[{"name":"web","tenants":["acme","*"],"ports":[{"name":"http","protocol":"tcp","port":80},{"protocol":"udp","port":53}],"icmp":true,"healthy":true,"vip":"10.100.0.10"}],"candidates":["192.0.2.1:4434"]}`},
	{"register empty", &Register{Type: MessageRegister, Services: []ServiceInfo{}},
		`{"type":"register","services":[]}`},
	{"assign", &Assign{Type: MessageAssign, Zone: "ztna.internal.", TTL: 30,
		Pool: netip.MustParsePrefix("10.100.0.0/24"), Pool6: netip.MustParsePrefix("fd00::/64"),
		VIPs:     []VIPAssignment{{Service: "web", VIP: netip.MustParseAddr("10.100.0.10"), VIP6: netip.MustParseAddr("fd00::a")}},
		Rejected: []Rejection{{Service: "db", Reason: "not permitted"}}},
		`{"type":"assign","zone":"ztna.internal.","ttl":30,"pool":"10.100.0.0/24","pool6":"fd00::/64","vips":[{"service":"web","vip":"10.100.0.10","vip6":"fd00::a"}],"rejected":[{"service":"db","reason":"not permitted"}]}`},
	{"health", &Health{Type: MessageHealth, Services: map[string]bool{"web": true, "db": false}},
		`{"type":"health","services":{"db":false,"web":true}}`},
	{"tag_open", &TagOpen{Type: MessageTagOpen, Tag: 0xDEADBEEF, Service: "web", Tenant: "acme",
		Identity: "acme/agent/laptop", InnerAddr: netip.MustParseAddr("100.64.0.1")},
		`{"type":"tag_open","tag":3735928559,"service":"web","tenant":"acme","identity":"acme/agent/laptop","inner_addr":"100.64.0.1"}`},
	{"tag_close", &TagClose{Type: MessageTagClose, Tags: []uint32{1, 4294967295}},
		`{"type":"tag_close","tags":[1,4294967295]}`},
	{"directory", &Directory{Type: MessageDirectory, Zone: "ztna.internal.", TTL: 30,
		Pool: netip.MustParsePrefix("10.100.0.0/24"),
		Services: []DirectoryService{{Name: "web", VIP: netip.MustParseAddr("10.100.0.10"),
			Ports: []PortInfo{{Protocol: "tcp", Port: 80}}, ICMP: true, Healthy: true}}},
		`{"type":"directory","zone":"ztna.internal.","ttl":30,"pool":"10.100.0.0/24","services":[{"name":"web","vip":"10.100.0.10","ports":[{"protocol":"tcp","port":80}],"icmp":true,"healthy":true}]}`},
	{"error", &ErrorMessage{Type: MessageTypeError, Code: CodeUnknownType, Message: "what?", Ref: "frobnicate"},
		`{"type":"error","code":"unknown_type","message":"what?","ref":"frobnicate"}`},
	{"offer", &Offer{Type: MessageOffer, SessionID: 1<<53 - 1, Service: "web",
		Candidates: []netip.AddrPort{netip.MustParseAddrPort("203.0.113.5:54321"), netip.MustParseAddrPort("[2001:db8::1]:0")},
		Agent:      "acme/agent/laptop"},
		`{"type":"offer","session_id":9007199254740991,"service":"web","candidates":["203.0.113.5:54321","[2001:db8::1]:0"],"agent":"acme/agent/laptop"}`},
	{"offer full 64-bit id", &Offer{Type: MessageOffer, SessionID: 1<<64 - 1, Service: "web", Candidates: []netip.AddrPort{}},
		`{"type":"offer","session_id":18446744073709551615,"service":"web","candidates":[]}`},
	{"answer", &Answer{Type: MessageAnswer, SessionID: 7, Service: "web",
		Candidates: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434")}, Gateway: "ops/gateway/gw1"},
		`{"type":"answer","session_id":7,"service":"web","candidates":["192.0.2.1:4434"],"gateway":"ops/gateway/gw1"}`},
	{"result", &Result{Type: MessageResult, SessionID: 7, Success: true, Address: netip.MustParseAddrPort("192.0.2.1:4434")},
		`{"type":"result","session_id":7,"success":true,"address":"192.0.2.1:4434"}`},
	{"result failed", &Result{Type: MessageResult, SessionID: 7},
		`{"type":"result","session_id":7,"success":false}`},
	{"ping", &Ping{Type: MessagePing, Seq: 3}, `{"type":"ping","seq":3}`},
	{"pong", &Pong{Type: MessagePong, Seq: 3}, `{"type":"pong","seq":3}`},
	{"signaling error", &ErrorMessage{Type: MessageTypeError, Code: CodeBusy, Message: "16 sessions", SessionID: 9},
		`{"type":"error","code":"busy","message":"16 sessions","session_id":9}`},
}

func TestControlMessagesGolden(t *testing.T) {
	for _, tc := range goldenMessages {
		t.Run(tc.name, func(t *testing.T) {
			got, err := json.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.json {
				t.Errorf("encoded\n got %s\nwant %s", got, tc.json)
			}
			var frame bytes.Buffer
			if err := WriteMessage(&frame, tc.msg); err != nil {
				t.Fatal(err)
			}
			back, err := DecodeControl(NewReader(&frame).Next())
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, tc.msg) {
				t.Errorf("decoded %#v\nwant    %#v", back, tc.msg)
			}
		})
	}
}

func TestDecodeControlErrors(t *testing.T) {
	tests := []struct {
		name string
		typ  string
		body string
		want error
	}{
		{"unknown type", "frobnicate", `{"type":"frobnicate"}`, &UnknownTypeError{}},
		{"wrong field type", MessageHello, `{"type":"hello","role":5}`, ErrMalformedMessage},
		{"bad address", MessageHello, `{"type":"hello","inner_addr":"300.1.1.1"}`, ErrMalformedMessage},
		{"bad prefix", MessageAssign, `{"type":"assign","pool":"10.0.0.0/99"}`, ErrMalformedMessage},
		{"tag too large", MessageTagOpen, `{"type":"tag_open","tag":4294967296}`, ErrMalformedMessage},
		{"session id too large", MessageOffer, `{"type":"offer","session_id":18446744073709551616}`, ErrMalformedMessage},
		{"negative session id", MessageResult, `{"type":"result","session_id":-1}`, ErrMalformedMessage},
		{"bad candidate", MessageAnswer, `{"type":"answer","candidates":["192.0.2.1"]}`, ErrMalformedMessage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeControl(tc.typ, json.RawMessage(tc.body), nil)
			if ute, ok := tc.want.(*UnknownTypeError); ok {
				if !errors.As(err, &ute) || ute.Type != tc.typ {
					t.Fatalf("got %v, want unknown type %q", err, tc.typ)
				}
				if reply, ok := ReplyFor(err); !ok || reply.Code != CodeUnknownType {
					t.Errorf("reply %+v, %v", reply, ok)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDecodeControlIgnoresUnknownFields(t *testing.T) {
	msg, err := DecodeControl(MessageHello, json.RawMessage(`{"type":"hello","role":"agent","future":{"x":1}}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if h := msg.(*Hello); h.Role != RoleAgent {
		t.Errorf("role %q", h.Role)
	}
}

func FuzzControlMessages(f *testing.F) {
	for _, tc := range goldenMessages {
		f.Add(tc.json)
	}
	f.Add(`{"type":"health","services":null}`)
	f.Add(`{"type":"directory","services":[{"vip":""}]}`)
	f.Add(`{"type":"hello","inner_addr":"::ffff:1.2.3.4"}`)
	f.Add("{\"type\":\"hello\",\"name\":\"\xff\"}")
	f.Fuzz(func(t *testing.T, body string) {
		for _, typ := range MessageTypes() {
			msg, err := DecodeControl(typ, json.RawMessage(body), nil)
			if err != nil {
				if !errors.Is(err, ErrMalformedMessage) {
					t.Fatalf("%s: error %v does not wrap ErrMalformedMessage", typ, err)
				}
				continue
			}
			// What decodes encodes, and encodes the same after a round trip.
			once, err := json.Marshal(msg)
			if err != nil {
				t.Fatalf("%s: encode %#v: %v", typ, msg, err)
			}
			again, err := DecodeControl(typ, once, nil)
			if err != nil {
				t.Fatalf("%s: decode %s: %v", typ, once, err)
			}
			twice, _ := json.Marshal(again)
			if !bytes.Equal(once, twice) {
				t.Fatalf("%s: unstable encoding\n%s\n%s", typ, once, twice)
			}
		}
	})
}
