package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// statusService is what `status` reads of a service from a gateway's or a
// relay's GET /v1/services.
type statusService struct {
	Name        string   `json:"name"`
	VIP         string   `json:"vip"`
	VIP6        string   `json:"vip6"`
	Tenants     []string `json:"tenants"`
	Healthy     bool     `json:"healthy"`
	Source      string   `json:"source"`
	ActiveFlows int64    `json:"active_flows"`
	Ports       []struct {
		Name     string `json:"name"`
		Protocol string `json:"protocol"`
		Port     int    `json:"port"`
		Target   int    `json:"target"`
	} `json:"ports"`
	Backends []struct {
		Address     string `json:"address"`
		State       string `json:"state"`
		LastError   string `json:"last_error"`
		ActiveFlows int64  `json:"active_flows"`
	} `json:"backends"`
	Gateways []struct {
		Name    string `json:"name"`
		Healthy bool   `json:"healthy"`
	} `json:"gateways"`
}

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := fs.String("api", "http://127.0.0.1:7780", "admin API `URL` of a gateway (default) or a relay (e.g. http://127.0.0.1:7781)")
	asJSON := fs.Bool("json", false, "print the API's JSON instead of a table")
	tokenFile := fs.String("token-file", "", "`file` with the API's bearer token")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	client := &http.Client{Timeout: 5 * time.Second}
	token := ""
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintln(stderr, "ztgate status:", err)
			return 1
		}
		token = strings.TrimSpace(string(b))
	}
	get := func(path string) ([]byte, error) {
		req, err := http.NewRequest("GET", strings.TrimRight(*api, "/")+path, nil)
		if err != nil {
			return nil, err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
		}
		return body, nil
	}
	body, err := get("/v1/services")
	if err != nil {
		var uerr interface{ Timeout() bool }
		if errors.As(err, &uerr) || strings.Contains(err.Error(), "connection refused") {
			fmt.Fprintf(stderr, "ztgate status: nothing answers at %s: is the gateway or relay running, and is its [api] listen this address? (%v)\n", *api, err)
		} else {
			fmt.Fprintln(stderr, "ztgate status:", err)
		}
		return 1
	}
	if *asJSON {
		stdout.Write(body)
		return 0
	}
	var list struct {
		Services []statusService `json:"services"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		fmt.Fprintf(stderr, "ztgate status: %s does not look like a ztgate API: %v\n", *api, err)
		return 1
	}
	renderStatus(stdout, list.Services)
	return 0
}

func renderStatus(w io.Writer, services []statusService) {
	if len(services) == 0 {
		fmt.Fprintln(w, "no services")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tVIP\tPORTS\tTENANTS\tHEALTH\tFLOWS\tBACKENDS")
	for _, s := range services {
		ports := make([]string, 0, len(s.Ports))
		for _, p := range s.Ports {
			if p.Target != 0 && p.Target != p.Port {
				ports = append(ports, fmt.Sprintf("%s/%d→%d", p.Protocol, p.Port, p.Target))
			} else {
				ports = append(ports, fmt.Sprintf("%s/%d", p.Protocol, p.Port))
			}
		}
		health := "down"
		if s.Healthy {
			health = "up"
		}
		var backends []string
		for _, b := range s.Backends {
			e := fmt.Sprintf("%s %s (%d)", b.Address, b.State, b.ActiveFlows)
			if b.LastError != "" && b.State != "up" {
				e += ": " + b.LastError
			}
			backends = append(backends, e)
		}
		for _, g := range s.Gateways {
			state := "down"
			if g.Healthy {
				state = "up"
			}
			backends = append(backends, "gateway "+g.Name+" "+state)
		}
		vip := s.VIP
		if s.VIP6 != "" {
			vip += " " + s.VIP6
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", s.Name, vip, strings.Join(ports, ","),
			strings.Join(s.Tenants, ","), health, s.ActiveFlows, strings.Join(backends, "; "))
	}
	tw.Flush()
}
