package resolver

import "reflect"

// cached is a packed reply to a question asked in lower case, or the mark
// that such a question is forwarded.
type cached struct {
	reply   []byte
	rcode   int
	forward bool
}

// cache holds packed replies of one reader, so it needs no lock. It is keyed
// by View (an immutable snapshot) and the key parseQuery builds. It keeps
// two generations of at most max entries each: when the current one is
// full it becomes the old one and the older is dropped, so a hot entry
// (found in the old generation and moved forward) survives a flood of names
// that are asked once.
type cache struct {
	cur, old map[View]map[string]cached
	n, max   int
	zone     *zone // what the replies were answered from (SetPools replaces it)
}

// from empties the cache unless its replies were answered from z.
func (c *cache) from(z *zone) {
	if c.zone != z {
		clear(c.cur)
		clear(c.old)
		c.n, c.zone = 0, z
	}
}

func newCache(size int) *cache {
	if size <= 0 {
		return nil
	}
	return &cache{cur: map[View]map[string]cached{}, old: map[View]map[string]cached{}, max: size}
}

// cacheable reports whether v may be a map key: a View whose dynamic value
// is not comparable would make the map panic. Pointers, the common case,
// are decided without Value.Comparable, which allocates.
func cacheable(v View) bool {
	return v == nil || reflect.TypeOf(v).Kind() == reflect.Pointer || reflect.ValueOf(v).Comparable()
}

func (c *cache) get(v View, key []byte) (cached, bool) {
	if e, ok := c.cur[v][string(key)]; ok {
		return e, true
	}
	e, ok := c.old[v][string(key)]
	if ok {
		c.put(v, key, e)
	}
	return e, ok
}

func (c *cache) put(v View, key []byte, e cached) {
	if c.n >= c.max {
		c.old, c.cur = c.cur, c.old
		clear(c.cur)
		c.n = 0
	}
	m := c.cur[v]
	if m == nil {
		m = map[string]cached{}
		c.cur[v] = m
	}
	m[string(key)] = e
	c.n++
}
