// Package conf loads, strictly parses and validates the TOML configuration
// of the three ztgate roles (gateway, relay, agent) into the validated types
// of types.go, with every default filled in. It is the only importer of
// BurntSushi/toml.
//
// Parsing is strict and exhaustive: an unknown key, a value of the wrong type
// or a value that breaks a rule is an error naming its key path
// (service[2].health.interval), and all errors of a file are returned
// together as [Errors]. Syntax errors carry file:line:column; unknown keys and
// type mismatches carry file:line (keyLines).
//
// Decoding works in two passes. The TOML (or, for the admin API, JSON) text is
// first decoded into a generic tree, which is then walked against the raw
// structs of raw.go by reflection: unknown keys and type mismatches are found
// with their full paths without stopping at the first one, and the list of
// known keys is the set of toml tags, so it cannot drift from the schema. The
// validation pass then converts the raw strings (durations, addresses, enums)
// into the typed configuration, collecting every error.
//
// Address pools: an IPv4 pool is at least a /29 (eight addresses: five VIPs
// besides the network, gateway and broadcast addresses); an IPv6 pool is a /64 to a
// /126 (a /64 is the conventional subnet size, and nothing needs more VIPs;
// a /126 is the smallest pool with room for two). The network address (IPv6:
// the subnet-router anycast address), the first host (the gateway's own
// address) and, in IPv4, the broadcast address are never handed out, as in
// catalog's allocator.
//
// Names: service, tenant and port names are DNS labels and are lower-cased;
// the DNS zone is lower-cased and fully qualified. Relative file paths are
// resolved against the directory of the configuration file and stored as
// absolute paths. Files a configuration names (certificates, keys, CAs, the
// API token) must exist and be readable; such errors wrap fs.ErrNotExist or
// fs.ErrPermission, so callers can tell them apart with errors.Is.
package conf
