// Package gateway is ztgate's gateway role: the service table, the
// classification of new flows by tenant and VIP, the choice of a healthy
// backend, the splice of TCP, UDP and ICMP echo flows to it, and the admin
// API. Packets reach it through the netstack from a TUN device (LAN
// clients) or from tunnel sessions (agents).
package gateway
