// Package catalog is ztgate's shared model: services, their ports, backends
// and health settings, tenants, and the VIP pool allocator with its
// persistent state. Every role uses it; it imports nothing outside the
// standard library so that any building block may depend on it.
package catalog
